"""``kar serve``: an HTTP ranking service over :class:`kar.serving.scorer.OnlineScorer` (FastAPI + uvicorn).

Endpoints:

* ``POST /rank`` ``{"user_id": 1, "item_ids": [3, 5, 7], "context": {"hist_item_ids": [2, 4]}}`` →
  ``{"user_id": 1, "items": [{"item_id", "score", "has_knowledge", "fallback"}, ...], "user": {...}}``,
  best first. A ``Server-Timing`` header splits the time into the feature fetch and the model.
* ``GET /healthz``: liveness, what is loaded and which process answered (``pid``); no auth, for probes.
* ``GET /metrics``: Prometheus text: requests by status, latency histograms, fallbacks.

Processes: ``processes=1`` (the default) serves in this process. ``processes=N`` runs uvicorn's supervisor, which
binds the port once and starts N worker processes that share it; each loads its own model, encoder and feature
store (:func:`app_from_env`, from a config file :func:`serve` writes). ``/healthz`` and ``/metrics`` answer for
the process that accepted the connection: metrics are per process, ``pid`` says which.

Security defaults: a bearer token is required on ``/rank`` and ``/metrics`` (from ``$KAR_SERVE_TOKEN`` or a
file); ``--no-auth`` is refused unless the service binds a loopback address. Bodies over ``max_body_bytes``
get 413, more than ``max_candidates`` items or malformed JSON get 422, a request slower than ``timeout_s``
gets 504. Unknown users and items are scored with fallback features (see ``kar.serving.scorer``), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from kar.contracts.errors import EnvironmentProblem, KarError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.processes import free_port, spawn_guarded, stop_group

if TYPE_CHECKING:
    from kar.serving.scorer import OnlineScorer, Ranking

TOKEN_ENV = "KAR_SERVE_TOKEN"
# Set by serve() for its worker processes only: the path of the ServeConfig file app_from_env() loads.
CONFIG_ENV = "KAR_SERVE_CONFIG"
APP_FACTORY = "kar.serving.service:app_from_env"
# uvicorn's exit code for "failed before serving": its supervisor stops instead of restarting the worker.
STARTUP_FAILURE = 3
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Latency buckets in seconds: fine below 50 ms, where a ranking service lives.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INT64 = 2**63
MAX_ID_CHARS = 256

log = logging.getLogger("kar.serving.service")


@dataclass(frozen=True, kw_only=True)
class ServiceLimits:
    """What one request may ask for.

    Attributes:
        max_candidates: Items per request.
        max_body_bytes: Request body size; larger bodies get 413 before they are parsed.
        timeout_s: A request not answered within this gets 504.
        workers: Requests scored at once per process (threads).
        threads: torch CPU threads per forward pass, in each worker thread of each process.
        processes: Server processes sharing the port, each with its own model, encoder and ``workers`` threads.
            One process serialises its Python work on the GIL; keep ``processes × threads`` at most the cores.
    """

    max_candidates: int = 1000
    max_body_bytes: int = 256 * 1024
    timeout_s: float = 1.0
    workers: int = 2
    threads: int = 1
    processes: int = 1

    def __post_init__(self) -> None:
        values = (
            self.max_candidates,
            self.max_body_bytes,
            self.timeout_s,
            self.workers,
            self.threads,
            self.processes,
        )
        if min(values) <= 0:
            raise KarError(f"service limits must be positive: {self}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(*, token_file: Path | None = None, no_auth: bool = False, host: str = DEFAULT_HOST) -> str | None:
    """The bearer token the service requires, or None when auth is off.

    Args:
        token_file: A file holding the token (first line); ``$KAR_SERVE_TOKEN`` is read otherwise.
        no_auth: Turn auth off; allowed only on a loopback ``host``.
        host: The address the service binds.

    Raises:
        KarError: ``no_auth`` on a non-loopback host, or auth on with no token configured.
    """
    if no_auth:
        if not is_loopback(host):
            raise KarError(f"--no-auth is only allowed on a loopback address, not {host!r}; set ${TOKEN_ENV}")
        return None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise KarError(f"{token_file}: cannot read the token file ({exc.strerror})") from None
        if not token:
            raise KarError(f"{token_file}: the token file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise KarError(f"no token: set ${TOKEN_ENV} or pass --token-file (or --no-auth on a loopback address)")
    return token


STATUS_CODES = ("200", "401", "413", "422", "504")


@contextlib.contextmanager
def _in_process_values() -> Iterator[None]:
    """Metric values held in this process's memory while metrics are created.

    Importing ``feast.metrics`` switches prometheus_client to its multiprocess mode for the whole process (for
    Feast's Gunicorn feature server): values then live in shared files keyed by metric name, so two registries
    with a metric of one name would count together. This service is one process with its own registry.
    """
    from prometheus_client import values

    previous = values.ValueClass
    values.ValueClass = values.MutexValue
    try:
        yield
    finally:
        values.ValueClass = previous


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    Every label value is created up front, so each series shows from the first scrape (at 0) and is created
    with in-process values (see :func:`_in_process_values`).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        with _in_process_values():
            self.requests = Counter(
                "kar_rank_requests", "POST /rank requests by HTTP status", ["code"], registry=self.registry
            )
            self.latency = Histogram(
                "kar_rank_request_seconds", "POST /rank latency", buckets=LATENCY_BUCKETS, registry=self.registry
            )
            self.stages = Histogram(
                "kar_rank_stage_seconds",
                "Time per stage of a ranked request (fetch: online store; model: frame, encoding, forward)",
                ["stage"],
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            )
            self.fallbacks = Counter(
                "kar_rank_fallbacks",
                "Entities scored with fallback features (not in the online store)",
                ["entity"],
                registry=self.registry,
            )
            self.candidates = Counter("kar_rank_candidates", "Candidate items scored", registry=self.registry)
            self._codes = {code: self.requests.labels(code) for code in STATUS_CODES}
            self._stages = {stage: self.stages.labels(stage) for stage in ("fetch", "model")}
            self._fallbacks = {entity: self.fallbacks.labels(entity) for entity in ("user", "item")}

    def count(self, status: int, seconds: float) -> None:
        self.latency.observe(seconds)
        code = str(status)
        if code not in self._codes:  # not a status /rank answers with; counted all the same
            with _in_process_values():
                self._codes[code] = self.requests.labels(code)
        self._codes[code].inc()

    def observe(self, ranking: Ranking) -> None:
        self._stages["fetch"].observe(ranking.fetch_ms / 1e3)
        self._stages["model"].observe(ranking.model_ms / 1e3)
        self._fallbacks["user"].inc(int(ranking.user_fallback))
        self._fallbacks["item"].inc(ranking.item_fallbacks)
        self.candidates.inc(len(ranking.items))


def _entity_id(value: Any) -> int | str:
    """An id is an int64 or a non-empty string of at most 256 characters (bools and floats are not ids)."""
    if isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64:
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    raise ValueError(f"an id is an int64 or a string of 1 to {MAX_ID_CHARS} characters")


def _rank_request_model(max_candidates: int) -> type:
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

    # A team's own ids may be text ("C-0042"); kar's are int64. One check, so an error names the field alone.
    EntityId = Annotated[Any, AfterValidator(_entity_id)]

    class RankRequest(BaseModel):
        """Body of ``POST /rank``."""

        model_config = ConfigDict(extra="forbid")

        user_id: EntityId
        item_ids: list[EntityId] = Field(min_length=1, max_length=max_candidates)
        context: dict[str, Any] = Field(default_factory=dict)

        @field_validator("item_ids")
        @classmethod
        def _distinct(cls, ids: list[int | str]) -> list[int | str]:
            seen: set[int | str] = set()
            for item_id in ids:
                if item_id in seen:
                    raise ValueError(f"item {item_id} is listed twice")
                seen.add(item_id)
            return ids

    return RankRequest


def _error(status: int, message: str, **headers: str) -> Response:
    return JSONResponse({"detail": message}, status_code=status, headers=headers or None)


def _ranking_json(ranking: Ranking) -> dict[str, Any]:
    return {
        "user_id": ranking.user_id,
        "items": [
            {"item_id": i.item_id, "score": i.score, "has_knowledge": i.has_knowledge, "fallback": i.fallback}
            for i in ranking.items
        ],
        "user": {"fallback": ranking.user_fallback, "has_knowledge": ranking.user_has_knowledge},
    }


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(*, scorer: OnlineScorer, token: str | None, limits: ServiceLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``scorer``.

    Args:
        scorer: Loaded once; every request scores its candidates in one batch.
        token: The bearer token ``/rank`` and ``/metrics`` require; None turns auth off.
        limits: Request limits; the defaults when None.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import ValidationError

    limits = limits or ServiceLimits()
    metrics = _Metrics()
    request_model = _rank_request_model(limits.max_candidates)
    # torch's thread count is per calling thread: set it where the forward passes run.
    executor = ThreadPoolExecutor(
        max_workers=limits.workers,
        thread_name_prefix="kar-rank",
        initializer=_torch_threads,
        initargs=(limits.threads,),
    )
    expected = f"Bearer {token}".encode() if token else None

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="kar-feast ranking", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def answer(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        body = await _read_body(request, limits.max_body_bytes)
        if body is None:
            return _error(413, f"request body over {limits.max_body_bytes:,} bytes")
        try:
            payload = request_model.model_validate_json(body)
        except ValidationError as exc:
            # Without the offending input: a 1,000-id list need not come back to the caller.
            errors = json.loads(exc.json(include_url=False, include_input=False))
            return JSONResponse({"detail": errors}, status_code=422)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(executor, _rank, scorer, payload.user_id, payload.item_ids, payload.context)
        try:
            ranking = await asyncio.wait_for(job, timeout=limits.timeout_s)
        except TimeoutError:
            return _error(504, f"not ranked within {limits.timeout_s:g} s")
        except KarError as exc:  # e.g. a context field the model does not read
            return _error(422, str(exc))
        metrics.observe(ranking)
        timing = f"fetch;dur={ranking.fetch_ms:.3f}, model;dur={ranking.model_ms:.3f}"
        return JSONResponse(_ranking_json(ranking), headers={"Server-Timing": timing})

    @app.post("/rank")
    async def rank(request: Request) -> Response:
        started = time.perf_counter()
        response = await answer(request)
        metrics.count(response.status_code, time.perf_counter() - started)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": scorer.ranker.config.model,
            "service": scorer.service,
            "context_fields": list(scorer.context_fields),
            "auth": expected is not None,
            # With processes > 1 each process answers for itself (metrics too): the pid says which one did.
            "pid": os.getpid(),
            "processes": limits.processes,
        }

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def _rank(scorer: OnlineScorer, user_id: Any, item_ids: list[Any], context: dict[str, Any]) -> Ranking:
    return scorer.rank(user_id=user_id, item_ids=item_ids, context=context)


class WorkerFailed(RuntimeError):
    """A worker process of ``kar serve --processes N`` failed to start with an error that is not a KarError."""


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What a serving process loads: the run, the feature store and the limits (JSON-safe, for worker processes).

    Attributes:
        model_dir: A run written by ``kar train`` (absolute path).
        data_dir: The prepared folder (absolute path).
        repo: The team's Feast repo; the folder's example repo when None.
        online_store: Replaces the online store config in memory; the repo's own when None.
        service: Feature service to read; the repo's default serving service when None.
        token_file: File with the bearer token; ``$KAR_SERVE_TOKEN`` otherwise.
        no_auth: Serve without auth (loopback only).
        host: The address the service binds (auth policy depends on it).
        limits: Request limits, scoring threads and processes.
    """

    model_dir: str
    data_dir: str
    repo: str | None = None
    online_store: dict[str, Any] | None = None
    service: str | None = None
    token_file: str | None = None
    no_auth: bool = False
    host: str = DEFAULT_HOST
    limits: ServiceLimits = ServiceLimits()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        fields = json.loads(text)
        return cls(**{**fields, "limits": ServiceLimits(**fields["limits"])})


def load_app(config: ServeConfig) -> FastAPI:
    """Resolve the token, open the feature store, load the ranker and build the app (once per process).

    Raises:
        KarError: Auth misconfigured, or the model and the feature service do not fit together.
    """
    from kar.serving import store
    from kar.serving.scorer import OnlineScorer

    token_file = None if config.token_file is None else Path(config.token_file)
    token = resolve_token(token_file=token_file, no_auth=config.no_auth, host=config.host)
    feature_store = store.open_store(data_dir=config.data_dir, repo=config.repo, online_store=config.online_store)
    service = config.service or store.default_service(config.repo, serving=True)
    scorer = OnlineScorer.from_run(
        model_dir=config.model_dir, store=feature_store, service=service, data_dir=config.data_dir
    )
    return create_app(scorer=scorer, token=token, limits=config.limits)


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker process of ``kar serve --processes N`` (``APP_FACTORY``).

    Reads the :class:`ServeConfig` file named by ``$KAR_SERVE_CONFIG`` (written by :func:`serve`, which started
    uvicorn's supervisor) and loads this process's own model, encoder and store. A failure is written next to
    the config file for :func:`serve` to report, and exits with uvicorn's start-up failure code, so the
    supervisor stops instead of restarting the worker forever.
    """
    path = Path(os.environ[CONFIG_ENV])
    # The supervisor is our parent; SIGKILLed, it cannot stop us and the port would stay taken.
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="kar-parent-watch", daemon=True).start()
    try:
        return load_app(ServeConfig.from_json(path.read_text()))
    except Exception as exc:
        # One report for serve() to raise, not a traceback per worker on the console.
        failure = {
            "kar_error": isinstance(exc, KarError),
            "message": str(exc) if isinstance(exc, KarError) else f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        (path.parent / f"failed-{os.getpid()}.json").write_text(json.dumps(failure))
        raise SystemExit(STARTUP_FAILURE) from None


def _exit_with_parent(parent: int) -> None:
    """SIGTERM this process (uvicorn's graceful stop) once the process that started it is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(
    *,
    model_dir: Location,
    data_dir: Location,
    repo: Location | None = None,
    online_store: dict[str, Any] | None = None,
    service: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token_file: Location | None = None,
    no_auth: bool = False,
    limits: ServiceLimits | None = None,
) -> None:
    """Load the ranker and the feature store, then serve until interrupted (what ``kar serve`` runs).

    With ``limits.processes`` > 1, uvicorn's supervisor binds the port and starts that many worker processes,
    each loading its own ranker and store (:func:`app_from_env`). Ctrl-C or SIGTERM to this process stops them
    all; so does stopping its process group, as :class:`ServiceProcess` does; a worker whose parent is killed
    stops itself.

    Args:
        model_dir: A run written by ``kar train`` (torch, an imported torch model, or XGBoost).
        data_dir: The prepared folder (its id maps turn the team's ids into the ranker's).
        repo: The team's Feast repo (default: the folder's example repo, ``DIR/feast/repo``).
        online_store: Replaces the online store config (e.g. Redis) in memory; the repo's own when None.
        service: Feature service to read; ``ranking_serving`` (example repo) or ``kar_serving`` (team repo).
        host: Address to bind; loopback by default.
        port: Port to bind.
        token_file: File with the bearer token; ``$KAR_SERVE_TOKEN`` otherwise.
        no_auth: Serve without auth (loopback only).
        limits: Request limits, scoring threads and processes.

    Raises:
        KarError: Auth misconfigured, or the model and the feature service do not fit together (with several
            processes: raised here once a worker process failed to start for that reason).
        WorkerFailed: With several processes, a worker process failed to start with any other error.
    """
    import uvicorn

    limits = limits or ServiceLimits()
    model_dir, data_dir = local_path(model_dir, what="model"), local_path(data_dir, what="data")
    token_file = optional_local_path(token_file, what="token file")
    # Before the slow loading: a misconfigured token fails in a second.
    resolve_token(token_file=token_file, no_auth=no_auth, host=host)
    config = ServeConfig(
        model_dir=str(model_dir),
        data_dir=str(data_dir),
        repo=None if repo is None else os.fspath(repo),
        online_store=online_store,
        service=service,
        token_file=None if token_file is None else str(token_file),
        no_auth=no_auth,
        host=host,
        limits=limits,
    )
    cores = os.cpu_count() or 1
    if limits.processes * limits.threads > cores:
        log.warning(
            "kar serve: %d processes × %d torch threads exceed the %d cores; forward passes will compete",
            limits.processes,
            limits.threads,
            cores,
        )
    if limits.processes == 1:
        uvicorn.run(load_app(config), host=host, port=port, log_level="warning", access_log=False)
        return
    with tempfile.TemporaryDirectory(prefix="kar-serve-") as scratch:
        path = Path(scratch) / "config.json"
        path.write_text(config.to_json())
        previous = os.environ.get(CONFIG_ENV)
        os.environ[CONFIG_ENV] = str(path)  # the worker processes inherit it; this process never reads it
        try:
            uvicorn.run(
                APP_FACTORY,
                factory=True,
                workers=limits.processes,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
            )
        finally:
            if previous is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = previous
        failures = sorted(Path(scratch).glob("failed-*.json"))
        if failures:
            failure = json.loads(failures[0].read_text())
            message = f"a kar serve worker process failed to start: {failure['message']}"
            if failure["kar_error"]:
                raise KarError(message)
            # The worker's traceback goes into the message's later lines: the CLI prints the first line and
            # writes the whole of it to kar-error.log.
            raise WorkerFailed(f"{message}\n\nin the worker process:\n{failure['traceback']}")


class ServiceProcess:
    """``kar serve`` started as its own process on a free loopback port, with a fresh token; a context manager.

    The demo, the benchmark and the tests use it: the service runs exactly as a user starts it.

    Args:
        model_dir: A torch run written by ``kar train``.
        data_dir: The prepared folder with an applied and materialized Feast store.
        redis: ``HOST:PORT`` of a Redis online store; SQLite under ``data_dir`` when None.
        extra_args: More ``kar serve`` options (e.g. ``["--timeout", "0.5"]``).
        processes: ``kar serve --processes``; ``start`` returns once ``/healthz`` has answered from that many
            distinct processes (each loads its own model).
        start_timeout: Seconds to wait for ``/healthz``.

    The service and its worker processes run in a process group of their own (under :mod:`kar.guard`);
    ``stop`` ends the whole group.
    """

    def __init__(
        self,
        *,
        model_dir: Location,
        data_dir: Location,
        redis: str | None = None,
        extra_args: list[str] | None = None,
        processes: int = 1,
        start_timeout: float = 120.0,
    ) -> None:
        self.host = DEFAULT_HOST
        self.port = free_port(self.host)
        self.token = secrets.token_urlsafe(24)
        # Absolute: the child may be started from another directory than the caller's paths are relative to.
        model_dir, data_dir = local_path(model_dir, what="model"), local_path(data_dir, what="data")
        self._args = ["--model", str(model_dir), "--data", str(data_dir), *(["--redis", redis] if redis else [])]
        self._args += ["--processes", str(processes), *(extra_args or [])]
        self.processes = processes
        # The worker pids /healthz answered from while starting (kept after stop, to check they are gone).
        self.pids: set[int] = set()
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def group(self) -> int | None:
        """The process group of the service and its worker processes; None when not running."""
        return None if self._process is None else self._process.pid

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header the service expects."""
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> ServiceProcess:
        import httpx

        command = [sys.executable, "-m", "kar", "serve", *self._args, "--host", self.host, "--port", str(self.port)]
        env = {**os.environ, TOKEN_ENV: self.token}
        self.pids = set()
        # A file, not a pipe: nobody reads the service's log while it runs, and a full pipe would block it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process = spawn_guarded(command, env=env, stdout=self._log, stderr=subprocess.STDOUT, grace_s=5.0)
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EnvironmentProblem(f"kar serve exited with {self._process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                # A new connection each time: the kernel hands it to whichever worker accepts first.
                health = httpx.get(f"{self.url}/healthz", timeout=1.0)
                if health.status_code == 200:
                    self.pids.add(int(health.json()["pid"]))
                    if len(self.pids) >= self.processes:
                        return self
            time.sleep(0.2)
        self.stop()
        raise EnvironmentProblem(
            f"kar serve did not answer /healthz on {self.url} from {self.processes} process(es) within "
            f"{self._start_timeout:g} s (answered from {len(self.pids)})"
        )

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the service's output (errors at start-up land here)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-chars:]

    def stop(self) -> None:
        if self._process is None:
            return
        stop_group(self._process, grace_s=15)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
