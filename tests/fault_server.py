"""FaultInjectingLLMServer: a test double that speaks just enough of the OpenAI chat API to inject faults.

This is a test double, used only to inject faults (HTTP errors, 429 with ``Retry-After``, hangs, garbage bodies,
dropped connections) into the LLM client's retry, timeout, circuit-breaker and concurrency paths, which a real
server cannot produce on demand. It is not a model and answers nothing meaningful: the real LLM path is tested
against a real vLLM server, in the tests marked ``llm``.

Each ``POST /v1/chat/completions`` request gets one behaviour: ``rules(body)`` if given and not ``None``, else
the next entry of ``script``, else ``default``::

    with FaultInjectingLLMServer(script=[Status(code=503), Hang(seconds=5)], default=Ok()) as srv:
        client = make_client(base_url=srv.base_url)  # "http://127.0.0.1:PORT/v1"
        ...
        assert srv.calls == 3

``GET /v1/models`` and ``GET /health`` always answer normally. Every request is recorded (``srv.requests``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, TypedDict

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"
DEFAULT_MODEL_NAME = "fault-injecting-llm"
# How often serve_forever() checks for shutdown; short so stop() returns promptly.
_POLL_INTERVAL_S = 0.05
# Backstop for joining threads in stop(); every blocking wait in a handler already wakes on stop().
_JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class Ok:
    """A valid ``chat.completion`` answer.

    Attributes:
        text: Message content. ``None`` answers ``"echo:" + sha1(last user message)[:12]``, so tests can tell
            answers to different prompts apart and the same prompt always gets the same answer.
        finish_reason: ``choices[0].finish_reason``, e.g. ``"stop"`` or ``"length"``.
        prompt_tokens: ``usage.prompt_tokens``; ``None`` counts whitespace-separated words in all messages.
        completion_tokens: ``usage.completion_tokens``; ``None`` counts whitespace-separated words in ``text``.
        delay_s: Seconds to wait before answering (cut short, without an answer, when the server stops).
        logprobs: If given, sent as ``choices[0].logprobs = {"content": logprobs}``.
    """

    text: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay_s: float = 0.0
    logprobs: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ValueError(f"Ok.delay_s must be >= 0, got {self.delay_s}")


@dataclass(frozen=True, kw_only=True)
class Status:
    """An HTTP error status, e.g. 400, 429, 500 or 503.

    Attributes:
        code: HTTP status code.
        body: Response body; ``None`` sends an OpenAI-style ``{"error": {...}}`` JSON object.
        retry_after: If given, sent as the ``Retry-After`` header (seconds; integral values without a fraction).
    """

    code: int
    body: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if not 100 <= self.code <= 599:
            raise ValueError(f"Status.code must be an HTTP status (100-599), got {self.code}")


@dataclass(frozen=True, kw_only=True)
class Hang:
    """Read the request, send nothing for ``seconds`` (or until the server stops), then close the connection.

    Attributes:
        seconds: How long to stay silent; a client with a shorter read timeout sees a timeout.
    """

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"Hang.seconds must be >= 0, got {self.seconds}")


@dataclass(frozen=True, kw_only=True)
class Garbage:
    """A response the client cannot use: unparseable JSON by default, or see ``missing_choices()``.

    Attributes:
        body: Raw response body.
        content_type: ``Content-Type`` header.
        status: HTTP status code.
    """

    body: str = "not json{"
    content_type: str = "application/json"
    status: int = 200

    @classmethod
    def missing_choices(cls) -> Garbage:
        """Valid JSON that looks like a completion but has no ``choices``."""
        return cls(body=json.dumps({"id": "chatcmpl-fault", "object": "chat.completion", "model": "x"}))


@dataclass(frozen=True, kw_only=True)
class Disconnect:
    """Read the request, then close the connection without sending any response."""


Behaviour = Ok | Status | Hang | Garbage | Disconnect
Rule = Callable[[dict[str, Any]], Behaviour | None]


@dataclass(frozen=True)
class Wait:
    """One delay (``Ok.delay_s``) or hang that ended: for which call, how long it was, whether ``stop()`` cut it."""

    call: int
    seconds: float
    cut_by_stop: bool


class RecordedRequest(TypedDict):
    """One request as the server received it.

    Keys:
        method: ``"GET"`` or ``"POST"``.
        path: Request path, e.g. ``"/v1/chat/completions"``.
        headers: Header names lower-cased.
        body: Parsed JSON body, or ``None`` when there is none or it is not JSON.
        behaviour: The behaviour a chat-completion request got; ``None`` for other requests.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    behaviour: Behaviour | None


def unused_port() -> int:
    """A local TCP port with nothing listening on it, for "server down" tests (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _content_text(content: Any) -> str:
    """Text of a message's ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [message for message in messages if isinstance(message, dict)]


def echo_text(body: dict[str, Any]) -> str:
    """The answer ``Ok(text=None)`` gives to a request body: ``"echo:" + sha1(last user message)[:12]``."""
    user_texts = [_content_text(m.get("content")) for m in _messages(body) if m.get("role") == "user"]
    last = user_texts[-1] if user_texts else ""
    return "echo:" + hashlib.sha1(last.encode("utf-8")).hexdigest()[:12]


def _word_count(text: str) -> int:
    return len(text.split())


def chat_completion(behaviour: Ok, body: dict[str, Any], *, completion_id: str, model: str) -> dict[str, Any]:
    """The ``chat.completion`` object that ``behaviour`` answers to ``body``."""
    text = behaviour.text if behaviour.text is not None else echo_text(body)
    prompt_tokens = behaviour.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = sum(_word_count(_content_text(m.get("content"))) for m in _messages(body))
    completion_tokens = behaviour.completion_tokens
    if completion_tokens is None:
        completion_tokens = _word_count(text)
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": behaviour.finish_reason,
    }
    if behaviour.logprobs is not None:
        choice["logprobs"] = {"content": behaviour.logprobs}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error_body(code: int, message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "fault_injection", "param": None, "code": code}})


def _retry_after_header(seconds: float) -> str:
    # RFC 9110 wants whole seconds; keep a fraction only when the test asked for one.
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its owner and keeps connection errors out of test output."""

    # Concurrency tests open many connections at once; the default backlog of 5 would delay some by a SYN retry.
    request_queue_size = 128

    def __init__(self, owner: FaultInjectingLLMServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn does not track daemon threads, so its server_close() would not wait for them; the owner
        # tracks them instead. Daemon, so a test that forgets stop() cannot block interpreter exit.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="fault-llm-handler", daemon=True
        )
        self.owner._add_thread(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up is the normal case here, not an error worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # Keep-alive like vLLM, so clients that pool connections behave as they would in production.
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""

    def do_GET(self) -> None:
        """Serve ``/v1/models`` and ``/health``."""
        owner = self.server.owner
        owner._record(self._new_record(body=None))
        if self.path == MODELS_PATH:
            models = {"object": "list", "data": [{"id": owner.model_name, "object": "model"}]}
            self._send(200, json.dumps(models))
        elif self.path == HEALTH_PATH:
            self._send(200, "")
        else:
            self._send(404, _error_body(404, f"no route {self.path}"))

    def do_POST(self) -> None:
        """Serve ``/v1/chat/completions`` with the next behaviour."""
        raw = self._read_body()
        if self.path != CHAT_PATH:
            self.server.owner._record(self._new_record(body=_parse_json(raw)))
            self._send(404, _error_body(404, f"no route {self.path}"))
            return
        self.server.owner._serve_chat(self, raw)

    def _new_record(self, *, body: Any, behaviour: Behaviour | None = None) -> RecordedRequest:
        headers = {name.lower(): value for name, value in self.headers.items()}
        return RecordedRequest(method=self.command, path=self.path, headers=headers, body=body, behaviour=behaviour)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self, status: int, body: str, *, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        payload = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self) -> None:
        """End the exchange without a response; socketserver then closes the socket."""
        self.close_connection = True


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


class FaultInjectingLLMServer:
    """Test double: an OpenAI-compatible chat endpoint on 127.0.0.1 that answers with scripted faults.

    Thread-safe: requests are served concurrently, each on its own thread. ``rules`` is called from those
    threads, possibly concurrently, and may block (e.g. on a barrier) while the request counts as in flight.

    Args:
        script: Behaviours for successive chat-completion requests, consumed in order.
        default: Behaviour once ``script`` is exhausted; ``Ok()`` if not given.
        rules: Consulted first for every chat-completion request with its parsed JSON body; a non-``None``
            result is used and leaves ``script`` untouched.
        model_name: The model ``/v1/models`` lists (answers echo the request's ``model`` instead).
    """

    def __init__(
        self,
        *,
        script: Iterable[Behaviour] = (),
        default: Behaviour | None = None,
        rules: Rule | None = None,
        model_name: str = DEFAULT_MODEL_NAME,
    ) -> None:
        self.model_name = model_name
        self._script: deque[Behaviour] = deque(script)
        self._default: Behaviour = default if default is not None else Ok()
        self._rules = rules
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        self._calls = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._waits: list[Wait] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread.

        Returns:
            The server itself, for chaining.

        Raises:
            RuntimeError: If the server was already started (a stopped server cannot be restarted).
        """
        if self._started:
            raise RuntimeError("FaultInjectingLLMServer can be started only once")
        self._started = True
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"fault-llm-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hung and delayed requests, close every connection and join all threads.

        Idempotent. Requests still in flight end without a response.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        httpd.shutdown()
        # Idle keep-alive connections block their handler thread in a read; shutting the sockets down wakes it.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown_socket(connection)
        httpd.server_close()
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        with self._lock:
            threads = [thread, *self._handler_threads]
        for each in threads:
            each.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._httpd is None:
            raise RuntimeError("FaultInjectingLLMServer is not started")
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``/health`` lives here)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what an OpenAI client takes as its base URL."""
        return f"{self.root_url}/v1"

    # -- observations ----------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> int:
        """Number of chat-completion requests received."""
        with self._lock:
            return self._calls

    @property
    def in_flight(self) -> int:
        """Chat-completion requests being served right now."""
        with self._lock:
            return self._in_flight

    @property
    def waits(self) -> list[Wait]:
        """Every delay or hang that has ended, in the order they ended: waited out, or cut short by ``stop()``."""
        with self._lock:
            return list(self._waits)

    @property
    def max_in_flight(self) -> int:
        """Peak number of chat-completion requests served at the same time."""
        with self._lock:
            return self._max_in_flight

    @property
    def pending(self) -> int:
        """Scripted behaviours not consumed yet."""
        with self._lock:
            return len(self._script)

    # -- serving (called from handler threads) ---------------------------------------------------------------

    def _add_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            # Drop finished threads so a long test does not accumulate them.
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
        # A connection accepted just before stop() snapshotted the set must not keep its handler reading.
        if self._stopping.is_set():
            _shutdown_socket(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _serve_chat(self, handler: _Handler, raw: bytes) -> None:
        with self._lock:
            self._calls += 1
            call = self._calls
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            body = _parse_json(raw)
            if not isinstance(body, dict):
                # A real server rejects this too; not a scripted fault, so the script is left untouched.
                self._record(handler._new_record(body=body))
                handler._send(400, _error_body(400, "request body is not a JSON object"))
                return
            behaviour = self._choose(body)
            self._record(handler._new_record(body=body, behaviour=behaviour))
            self._act(handler, behaviour, body, call)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _choose(self, body: dict[str, Any]) -> Behaviour:
        # Outside the lock: a rule may block, and other requests must keep flowing meanwhile.
        if self._rules is not None:
            chosen = self._rules(body)
            if chosen is not None:
                return chosen
        with self._lock:
            return self._script.popleft() if self._script else self._default

    def _wait(self, seconds: float, *, call: int) -> bool:
        """Wait ``seconds`` unless stopped first; record which, and return True when stopped."""
        stopped = self._stopping.wait(seconds)
        with self._lock:
            self._waits.append(Wait(call=call, seconds=seconds, cut_by_stop=stopped))
        return stopped

    def _act(self, handler: _Handler, behaviour: Behaviour, body: dict[str, Any], call: int) -> None:
        match behaviour:
            case Ok():
                if behaviour.delay_s and self._wait(behaviour.delay_s, call=call):
                    handler._drop()
                    return
                model = body.get("model") if isinstance(body.get("model"), str) else self.model_name
                answer = chat_completion(behaviour, body, completion_id=f"chatcmpl-fault-{call}", model=model)
                handler._send(200, json.dumps(answer))
            case Status():
                body_text = behaviour.body
                if body_text is None:
                    body_text = _error_body(behaviour.code, f"injected fault: HTTP {behaviour.code}")
                headers = {}
                if behaviour.retry_after is not None:
                    headers["Retry-After"] = _retry_after_header(behaviour.retry_after)
                handler._send(behaviour.code, body_text, headers=headers)
            case Hang():
                self._wait(behaviour.seconds, call=call)
                handler._drop()
            case Garbage():
                handler._send(behaviour.status, behaviour.body, content_type=behaviour.content_type)
            case Disconnect():
                handler._drop()
            case _:
                raise TypeError(f"not a fault-server behaviour: {behaviour!r}")


def _shutdown_socket(connection: socket.socket) -> None:
    # OSError: its handler already closed it.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
