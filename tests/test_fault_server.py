"""The fault-injecting test double does what each behaviour says, records what it saw, and stops promptly."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fault_server import (
    Behaviour,
    Disconnect,
    FaultInjectingLLMServer,
    Garbage,
    Hang,
    Ok,
    Status,
    Wait,
    unused_port,
)

# Bound for "returns promptly": far below the 60 s hangs used here, far above a loaded CI machine's scheduling delays.
PROMPT_S = 10.0
HANG_S = 60.0
# Only the read is short: a short connect timeout could fire first on a loaded machine, which is another fault.
SHORT_READ = httpx.Timeout(PROMPT_S, read=0.2)


def _body(text: str, *, model: str = "tiny-model", system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages}


def _chat(client: httpx.Client, srv: FaultInjectingLLMServer, text: str = "hello", **kwargs: Any) -> httpx.Response:
    return client.post(f"{srv.base_url}/chat/completions", json=_body(text, **kwargs))


def _wait_until(predicate: Callable[[], bool], *, timeout_s: float = PROMPT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_base_url_is_loopback_v1_and_health_and_models_answer():
    with FaultInjectingLLMServer(model_name="served-name") as srv, httpx.Client() as client:
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert client.get(f"{srv.root_url}/health").status_code == 200
        models = client.get(f"{srv.base_url}/models")
        assert models.status_code == 200
        assert models.json() == {"object": "list", "data": [{"id": "served-name", "object": "model"}]}
        assert client.get(f"{srv.base_url}/nothing-here").status_code == 404
        assert srv.calls == 0, "only chat completions count as calls"


def test_ok_default_is_a_valid_chat_completion_echoing_model_and_hashing_the_last_user_message():
    with FaultInjectingLLMServer() as srv, httpx.Client() as client:
        response = _chat(client, srv, "one two three", model="my-model", system="be brief please")
        assert response.status_code == 200
        data = response.json()
        assert data["object"] == "chat.completion"
        assert data["id"] and isinstance(data["created"], int)
        assert data["model"] == "my-model"
        choice = data["choices"][0]
        expected = "echo:" + hashlib.sha1(b"one two three").hexdigest()[:12]
        assert choice["message"] == {"role": "assistant", "content": expected}
        assert choice["finish_reason"] == "stop"
        assert "logprobs" not in choice
        # Whitespace words: 3 in the system message + 3 in the user message; the echo is one word.
        assert data["usage"] == {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}


def test_ok_default_answers_are_deterministic_per_prompt():
    with FaultInjectingLLMServer() as srv, httpx.Client() as client:
        first, again, other = (_chat(client, srv, text).json() for text in ("user 1", "user 1", "user 2"))
    content = [d["choices"][0]["message"]["content"] for d in (first, again, other)]
    assert content[0] == content[1]
    assert content[0] != content[2]


def test_ok_with_explicit_text_tokens_finish_reason_and_logprobs():
    logprobs = [{"token": "Yes", "logprob": -0.1, "top_logprobs": []}]
    behaviour = Ok(text="Yes indeed", finish_reason="length", prompt_tokens=11, completion_tokens=4, logprobs=logprobs)
    with FaultInjectingLLMServer(script=[behaviour]) as srv, httpx.Client() as client:
        choice_and_usage = _chat(client, srv).json()
    choice = choice_and_usage["choices"][0]
    assert choice["message"]["content"] == "Yes indeed"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] == {"content": logprobs}
    assert choice_and_usage["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


def test_ok_delay_is_waited_out_and_trips_a_shorter_client_timeout():
    with FaultInjectingLLMServer(script=[Ok(delay_s=0.3), Ok(delay_s=2.0)]) as srv, httpx.Client() as client:
        assert _chat(client, srv).status_code == 200
        assert srv.waits == [Wait(call=1, seconds=0.3, cut_by_stop=False)]  # answered after the whole delay
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{srv.base_url}/chat/completions", json=_body("x"), timeout=SHORT_READ)


@pytest.mark.parametrize("code", [400, 429, 500, 503])
def test_status_sends_the_code_with_an_openai_style_error_body(code):
    with FaultInjectingLLMServer(script=[Status(code=code)]) as srv, httpx.Client() as client:
        response = _chat(client, srv)
    assert response.status_code == code
    assert response.json()["error"]["code"] == code
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (2.0, "2"), (0.5, "0.5")])
def test_status_429_carries_retry_after(retry_after, header):
    with FaultInjectingLLMServer(script=[Status(code=429, retry_after=retry_after)]) as srv, httpx.Client() as c:
        response = _chat(c, srv)
    assert response.status_code == 429
    assert response.headers["retry-after"] == header


def test_status_custom_body_is_sent_verbatim():
    with FaultInjectingLLMServer(script=[Status(code=500, body="boom")]) as srv, httpx.Client() as client:
        assert _chat(client, srv).text == "boom"


def test_hang_times_out_a_client_with_a_shorter_timeout():
    with FaultInjectingLLMServer(script=[Hang(seconds=HANG_S)]) as srv, httpx.Client(timeout=SHORT_READ) as client:
        with pytest.raises(httpx.ReadTimeout):  # the client's 0.2 s read timeout, long before the 60 s hang ends
            _chat(client, srv)
        # On a loaded machine the client can give up before the server thread has read the request.
        _wait_until(lambda: srv.calls == 1)
        assert srv.pending == 0


def test_hang_ends_by_closing_the_connection_without_a_response():
    with FaultInjectingLLMServer(script=[Hang(seconds=0.2)]) as srv, httpx.Client(timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            _chat(client, srv)
        assert srv.waits == [Wait(call=1, seconds=0.2, cut_by_stop=False)]  # dropped after the whole hang


def test_garbage_is_a_200_whose_body_is_not_json():
    with FaultInjectingLLMServer(script=[Garbage()]) as srv, httpx.Client() as client:
        response = _chat(client, srv)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == "not json{"
    with pytest.raises(ValueError):
        response.json()


def test_garbage_missing_choices_is_json_without_choices():
    garbage = [Garbage.missing_choices(), Garbage(body="<html>", content_type="text/html", status=502)]
    with FaultInjectingLLMServer(script=garbage) as srv, httpx.Client() as client:
        no_choices, html = _chat(client, srv), _chat(client, srv)
    assert no_choices.status_code == 200
    assert "choices" not in no_choices.json()
    assert (html.status_code, html.headers["content-type"], html.text) == (502, "text/html", "<html>")


def test_disconnect_raises_a_transport_error():
    with FaultInjectingLLMServer(script=[Disconnect()]) as srv, httpx.Client() as client:
        with pytest.raises(httpx.TransportError):
            _chat(client, srv)
        assert _chat(client, srv).status_code == 200, "the server keeps serving after a dropped connection"


def test_unused_port_refuses_connections():
    with httpx.Client(timeout=2) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{unused_port()}/health")


def test_script_is_consumed_in_order_then_default_forever():
    script: list[Behaviour] = [Status(code=500), Ok(text="a"), Status(code=429)]
    with FaultInjectingLLMServer(script=script, default=Status(code=503)) as srv, httpx.Client() as client:
        assert srv.pending == 3
        codes = [_chat(client, srv).status_code for _ in range(5)]
        assert codes == [500, 200, 429, 503, 503]
        assert srv.pending == 0
        assert srv.calls == 5
        assert [r["behaviour"] for r in srv.requests] == [*script, Status(code=503), Status(code=503)]


def test_rules_fail_one_prompt_forever_and_leave_the_script_to_the_others():
    def fail_user_7(body: dict[str, Any]) -> Behaviour | None:
        return Status(code=500) if "user 7" in body["messages"][-1]["content"] else None

    with (
        FaultInjectingLLMServer(script=[Ok(text="scripted")], rules=fail_user_7) as srv,
        httpx.Client() as client,
    ):
        assert _chat(client, srv, "about user 7").status_code == 500
        assert srv.pending == 1, "a rule's answer must not consume the script"
        assert _chat(client, srv, "about user 3").json()["choices"][0]["message"]["content"] == "scripted"
        assert _chat(client, srv, "about user 7").status_code == 500
        assert _chat(client, srv, "about user 4").status_code == 200


def test_every_request_is_recorded_with_path_headers_and_body():
    with FaultInjectingLLMServer() as srv, httpx.Client(headers={"Authorization": "Bearer k"}) as client:
        client.get(f"{srv.root_url}/health")
        _chat(client, srv, "record me", model="m1")
        client.post(f"{srv.base_url}/chat/completions", content=b"{broken", headers={"X-Test": "1"})
        requests = srv.requests
    assert [(r["method"], r["path"]) for r in requests] == [
        ("GET", "/health"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
    ]
    assert requests[1]["body"] == _body("record me", model="m1")
    assert requests[1]["headers"]["authorization"] == "Bearer k"
    assert requests[1]["behaviour"] == Ok()
    assert requests[2]["body"] is None and requests[2]["headers"]["x-test"] == "1"
    assert requests[2]["behaviour"] is None, "a malformed request gets a 400, not a scripted behaviour"
    assert srv.calls == 2


def test_malformed_json_gets_400_and_leaves_the_script_alone():
    with FaultInjectingLLMServer(script=[Status(code=503)]) as srv, httpx.Client() as client:
        assert client.post(f"{srv.base_url}/chat/completions", content=b"[1, 2]").status_code == 400
        assert srv.pending == 1


def test_max_in_flight_is_one_for_sequential_requests():
    with FaultInjectingLLMServer() as srv, httpx.Client() as client:
        for _ in range(3):
            _chat(client, srv)
        assert (srv.max_in_flight, srv.in_flight) == (1, 0)


def test_max_in_flight_counts_concurrent_requests():
    n = 5
    # Every request waits at the barrier inside the server, so all n are provably in flight at once.
    barrier = threading.Barrier(n, timeout=2 * PROMPT_S)

    def wait_for_all(body: dict[str, Any]) -> Behaviour | None:
        barrier.wait()
        return None

    async def fire(srv: FaultInjectingLLMServer) -> list[int]:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=20) as client:
            responses = await asyncio.gather(
                *(client.post("/chat/completions", json=_body(f"user {i}")) for i in range(n))
            )
        return [r.status_code for r in responses]

    with FaultInjectingLLMServer(rules=wait_for_all) as srv:
        assert asyncio.run(fire(srv)) == [200] * n
        assert srv.max_in_flight == n
        assert srv.in_flight == 0
        assert srv.calls == n


def test_max_in_flight_reflects_a_bounded_client():
    async def fire(srv: FaultInjectingLLMServer, limit: int) -> None:
        gate = asyncio.Semaphore(limit)
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=20) as client:

            async def one(i: int) -> None:
                async with gate:
                    (await client.post("/chat/completions", json=_body(f"user {i}"))).raise_for_status()

            await asyncio.gather(*(one(i) for i in range(8)))

    with FaultInjectingLLMServer(default=Ok(delay_s=0.05)) as srv:
        asyncio.run(fire(srv, limit=2))
        assert 1 <= srv.max_in_flight <= 2
        assert srv.calls == 8


def _threads_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]


def _chat_in_background(srv: FaultInjectingLLMServer) -> tuple[threading.Thread, list[object]]:
    """Start one chat request on a thread; its response or httpx error lands in the returned list."""
    outcome: list[object] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=2 * HANG_S) as client:
                outcome.append(_chat(client, srv))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    return caller, outcome


@pytest.mark.parametrize("behaviour", [Hang(seconds=HANG_S), Ok(delay_s=HANG_S)], ids=["hang", "delayed-ok"])
def test_stop_with_a_request_in_flight_returns_promptly_and_leaves_no_threads(behaviour):
    before = set(_threads_alive())
    srv = FaultInjectingLLMServer(script=[behaviour]).start()
    caller, outcome = _chat_in_background(srv)
    _wait_until(lambda: srv.in_flight == 1)
    srv.stop()
    assert srv.waits == [Wait(call=1, seconds=HANG_S, cut_by_stop=True)]  # stop() ended the 60 s wait
    caller.join(timeout=PROMPT_S)
    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError), outcome
    assert set(_threads_alive()) <= before, "stop() left server threads running"
    srv.stop()  # idempotent


def test_stop_with_an_idle_keep_alive_connection_returns_promptly():
    before = set(_threads_alive())
    with httpx.Client() as client:
        srv = FaultInjectingLLMServer().start()
        assert _chat(client, srv).status_code == 200  # the client now holds an idle pooled connection
        srv.stop()
        # The handler thread blocked on that connection ended: stop() closed it rather than waiting on it.
        assert set(_threads_alive()) <= before, "stop() left server threads running"
        assert srv.in_flight == 0


def test_lifecycle_errors_and_argument_checks():
    srv = FaultInjectingLLMServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.base_url
    srv.stop()  # stopping a never-started server is a no-op
    with srv, pytest.raises(RuntimeError, match="only once"):
        srv.start()
    with pytest.raises(ValueError, match=r"Status\.code"):
        Status(code=42)
    with pytest.raises(ValueError, match=r"Hang\.seconds"):
        Hang(seconds=-1)
    with pytest.raises(ValueError, match=r"Ok\.delay_s"):
        Ok(delay_s=-0.1)
    with pytest.raises(TypeError):
        Hang(5)  # type: ignore[misc]  # keyword-only, like every behaviour
