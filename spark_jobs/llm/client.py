"""An async client for OpenAI-compatible chat servers (vLLM, llama.cpp's server, hosted APIs) built for batch jobs.

Each Spark task runs one ``LLMClient``: a bounded pool of concurrent requests, a timeout per request,
retries with exponential backoff and full jitter on 429/5xx/timeouts/garbage (honouring ``Retry-After``),
and a circuit breaker that pauses every request once the server keeps failing and gives up with
``EndpointDown`` when it does not come back. Every prompt ends as exactly one answer row (``ANSWER_FIELDS``)
whose ``status`` says whether the text is usable knowledge.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from kar.contracts.errors import EndpointDown, EndpointRejected

Status = Literal["ok", "truncated", "refused", "empty", "error"]
STATUSES: tuple[Status, ...] = ("ok", "truncated", "refused", "empty", "error")
ANSWER_FIELDS = (
    "key",
    "prompt_hash",
    "model",
    "params",
    "text",
    "finish_reason",
    "tokens_in",
    "tokens_out",
    "latency_s",
    "status",
    "error",
    "attempts",
    "logprobs",
    "created_at",
)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Answers that open like this are refusals, not knowledge (checked on the first 80 characters only, so a
# movie description that quotes "I can't" later on is not flagged).
REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can not|i'?m unable|i am unable|as an ai\b"
    r"|i'?m not able|i am not able|i won'?t be able)",
    re.IGNORECASE,
)
API_KEY_ENVS = ("KAR_LLM_API_KEY", "OPENAI_API_KEY")


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where and how to call the LLM.

    Attributes:
        base_url: OpenAI-compatible base URL ending in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``).
        model: Model id to request; ``None`` takes the first one the server lists.
        api_key: Bearer token; ``None`` reads ``$KAR_LLM_API_KEY`` or ``$OPENAI_API_KEY``.
        timeout_s: Per-attempt timeout (connect + whole response).
        max_concurrency: Requests in flight per client (one client per Spark task).
        max_retries: Retries after the first attempt on retryable failures.
        backoff_s: Base of the exponential backoff.
        backoff_max_s: Cap on one backoff sleep (and on a server's ``Retry-After``).
        breaker_failures: Consecutive failed attempts that open the circuit breaker.
        breaker_cooldown_s: How long an open breaker pauses requests before one probe goes through.
        breaker_trips: Failed probes in a row after which the endpoint is declared down.
        structured_output: Send ``response_format`` JSON schemas (vLLM, OpenAI, llama.cpp support it).
    """

    base_url: str
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 300.0
    max_concurrency: int = 8
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0
    breaker_failures: int = 6
    breaker_cooldown_s: float = 5.0
    breaker_trips: int = 3
    structured_output: bool = True

    def key(self) -> str | None:
        return self.api_key or next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)

    def headers(self) -> dict[str, str]:
        key = self.key()
        return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True, kw_only=True)
class Request:
    """One prompt to answer. ``params`` is the request-body part from ``Sampling.to_request()``."""

    key: str
    prompt_hash: str
    system: str
    prompt: str
    params: Mapping[str, Any]
    json_schema: str | None = None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitBreaker:
    """Counts consecutive failed attempts; when open, every caller waits for one probe to succeed.

    A batch job gains nothing from failing fast: a request that waits out a restart of the server is
    an answer instead of an error row. So an open breaker pauses callers; after ``trips`` failed probes
    the endpoint is declared down and the job stops with its finished answers kept.
    """

    def __init__(self, *, failures: int, cooldown_s: float, trips: int) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._max_trips = trips
        self._consecutive = 0
        self._trips = 0
        self._open_until = 0.0
        self._probing = False
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._consecutive >= self._threshold

    async def admit(self) -> bool:
        """Wait until a request may go out; True when it is the one probe of an open breaker.

        Raises:
            EndpointDown: ``trips`` probes in a row failed.
        """
        while self.is_open:
            if self._trips >= self._max_trips:
                raise EndpointDown(
                    f"{self._consecutive} requests in a row failed, then {self._trips} probes "
                    f"{self._cooldown_s:g} s apart failed too (last error: {self.last_error})"
                )
            wait = self._open_until - time.monotonic()
            if wait <= 0 and not self._probing:
                self._probing = True
                return True
            await asyncio.sleep(max(wait, 0.05))
        return False

    def abandon_probe(self) -> None:
        self._probing = False

    def record(self, *, ok: bool, probe: bool, error: str = "") -> None:
        """Count one finished attempt (``probe`` as returned by ``admit``)."""
        if probe:
            self._probing = False
        if ok:
            self._consecutive = self._trips = 0
            return
        self.last_error = error
        self._consecutive += 1
        if probe:
            self._trips += 1
            self._open_until = time.monotonic() + self._cooldown_s
        elif self._consecutive == self._threshold:
            self._open_until = time.monotonic() + self._cooldown_s


def classify(text: str, finish_reason: str | None, refusal: str | None = None) -> Status:
    """Whether an answer is usable knowledge: ``ok``, or why not."""
    if refusal:
        return "refused"
    if finish_reason == "length":
        return "truncated"
    if not text.strip():
        return "empty"
    if REFUSAL.match(text[:80]):
        return "refused"
    return "ok"


def backoff_delay(attempt: int, *, base_s: float, max_s: float, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff (AWS architecture blog), or the server's ``Retry-After`` when given."""
    if retry_after is not None:
        return min(retry_after, max_s)
    return random.uniform(0, min(max_s, base_s * 2**attempt))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class LLMClient:
    """Answers prompts against one endpoint; use as ``async with LLMClient(endpoint=..., model=...)``.

    Args:
        endpoint: The server and its retry, backoff and breaker settings.
        model: Model id sent with every request.
        sleep: How a backoff waits (``asyncio.sleep``); tests pass one that records the delays asked for.
    """

    def __init__(
        self, *, endpoint: Endpoint, model: str, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self._sleep = sleep
        self.breaker = CircuitBreaker(
            failures=endpoint.breaker_failures, cooldown_s=endpoint.breaker_cooldown_s, trips=endpoint.breaker_trips
        )
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> LLMClient:
        limits = httpx.Limits(max_connections=self.endpoint.max_concurrency, max_keepalive_connections=None)
        self._http = httpx.AsyncClient(
            base_url=self.endpoint.base_url.rstrip("/"),
            headers=self.endpoint.headers(),
            timeout=httpx.Timeout(self.endpoint.timeout_s, connect=min(10.0, self.endpoint.timeout_s)),
            limits=limits,
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    def body(self, request: Request) -> dict[str, Any]:
        """The chat-completions request body: fixed system message first, for prefix caching."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.prompt},
            ],
            **request.params,
        }
        if request.json_schema and self.endpoint.structured_output:
            schema = json.loads(request.json_schema)
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        return body

    async def answer(self, request: Request) -> dict[str, Any]:
        """Answer one prompt: retries transient failures, returns an answer row (never raises per-row errors).

        Raises:
            EndpointDown: The circuit breaker gave up on the server.
            EndpointRejected: 401/403/404: the key, model or URL is wrong for every prompt.
        """
        assert self._http is not None, "use LLMClient as an async context manager"
        body = self.body(request)
        started = time.perf_counter()
        error = ""
        for attempt in range(self.endpoint.max_retries + 1):
            probe = await self.breaker.admit()
            try:
                payload = await self._post(body)
            except _Retryable as exc:
                error = str(exc)
                self.breaker.record(ok=False, probe=probe, error=error)
                if attempt < self.endpoint.max_retries:
                    delay = backoff_delay(
                        attempt,
                        base_s=self.endpoint.backoff_s,
                        max_s=self.endpoint.backoff_max_s,
                        retry_after=exc.retry_after,
                    )
                    await self._sleep(delay)
                continue
            except _Final as exc:
                self.breaker.record(ok=True, probe=probe)  # the server answered; the prompt itself is bad
                return self._row(request, started, attempt + 1, status="error", error=str(exc))
            except BaseException:
                if probe:  # cancelled or rejected: let another caller probe
                    self.breaker.abandon_probe()
                raise
            self.breaker.record(ok=True, probe=probe)
            return self._row(request, started, attempt + 1, **_parse(payload))
        return self._row(request, started, self.endpoint.max_retries + 1, status="error", error=error)

    async def _post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        try:
            response = await self._http.post("/chat/completions", json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.endpoint.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc or 'connection failed'}") from None
        if response.status_code in (401, 403, 404):
            raise EndpointRejected(
                f"{self.endpoint.base_url} answered {response.status_code} for model {self.model!r}: "
                f"{response.text[:200]} (check the URL, model name and API key)"
            )
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}", _retry_after(response))
        if response.status_code != 200:
            raise _Final(f"HTTP {response.status_code}: {response.text[:300]}")
        try:
            payload = response.json()
            payload["choices"][0]["message"]  # shape check: raises on a body without choices
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"unparseable response: {response.text[:200]!r}") from None
        return payload

    def _row(self, request: Request, started: float, attempts: int, **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "key": request.key,
            "prompt_hash": request.prompt_hash,
            "model": self.model,
            "params": json.dumps(dict(request.params), sort_keys=True, separators=(",", ":")),
            "text": None,
            "finish_reason": None,
            "tokens_in": None,
            "tokens_out": None,
            "latency_s": round(time.perf_counter() - started, 4),
            "error": None,
            "attempts": attempts,
            "logprobs": None,
            "created_at": datetime.now(UTC),
        }
        row.update(fields)
        return row


class _Final(Exception):
    """A non-retryable answer for this prompt only (e.g. 400: prompt longer than the model's context)."""


def _parse(payload: Mapping[str, Any]) -> dict[str, Any]:
    choice = payload["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    finish_reason = choice.get("finish_reason")
    usage = payload.get("usage") or {}
    logprobs = (choice.get("logprobs") or {}).get("content")
    return {
        "text": text,
        "finish_reason": finish_reason,
        "tokens_in": usage.get("prompt_tokens"),
        "tokens_out": usage.get("completion_tokens"),
        "status": classify(text, finish_reason, message.get("refusal")),
        "logprobs": json.dumps(logprobs) if logprobs else None,
    }


async def answer_all(
    requests: Iterable[Request],
    *,
    client: LLMClient,
    on_answer: Callable[[dict[str, Any]], None],
) -> None:
    """Answer every request with at most ``max_concurrency`` in flight, calling ``on_answer`` per row.

    Workers pull from one iterator, so a partition of any size holds only ``max_concurrency`` requests in
    memory. The first ``EndpointDown``/``EndpointRejected`` cancels the rest and propagates; the answers
    already passed to ``on_answer`` are kept by the caller.
    """
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            on_answer(await client.answer(request))

    workers = [asyncio.create_task(worker()) for _ in range(client.endpoint.max_concurrency)]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def list_models(endpoint: Endpoint, *, attempts: int = 3) -> list[str]:
    """Model ids the server serves (``GET /models``); a short retry covers a server still starting.

    Raises:
        EndpointDown: The server did not answer.
        EndpointRejected: It answered with an error status.
    """
    url = endpoint.base_url.rstrip("/") + "/models"
    last = ""
    for attempt in range(attempts):
        try:
            response = httpx.get(url, headers=endpoint.headers(), timeout=min(endpoint.timeout_s, 30.0))
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(backoff_delay(attempt, base_s=1.0, max_s=5.0))
            continue
        if response.status_code != 200:
            raise EndpointRejected(f"{url} answered {response.status_code}: {response.text[:200]}")
        return [m["id"] for m in response.json().get("data", [])]
    raise EndpointDown(f"no LLM server answers at {endpoint.base_url} ({last}); start one with `kar llm serve`")


def resolve_model(endpoint: Endpoint) -> str:
    """The model to request: the configured one (checked against the server's list) or the server's first."""
    served = list_models(endpoint)
    if endpoint.model is None:
        if not served:
            raise EndpointRejected(f"{endpoint.base_url} serves no model")
        return served[0]
    if served and endpoint.model not in served:
        raise EndpointRejected(f"{endpoint.base_url} does not serve {endpoint.model!r}; it serves {', '.join(served)}")
    return endpoint.model
