"""The LLM client's fault handling, driven by the fault-injecting test double (no model involved)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kar.contracts.errors import EndpointDown, EndpointRejected
from spark_jobs.llm.client import (
    Endpoint,
    LLMClient,
    Request,
    answer_all,
    backoff_delay,
    classify,
    resolve_model,
)
from tests.fault_server import Disconnect, FaultInjectingLLMServer, Garbage, Hang, Ok, Status, unused_port

FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "breaker_cooldown_s": 0.1}


def request(n: int = 0, *, schema: str | None = None) -> Request:
    return Request(
        key=f"k{n}",
        prompt_hash=f"h{n}",
        system="fixed instruction",
        prompt=f"prompt {n}",
        params={"temperature": 0.0, "max_tokens": 16},
        json_schema=schema,
    )


def ask(
    base_url: str, requests: list[Request], *, slept: list[float] | None = None, **endpoint: Any
) -> list[dict[str, Any]]:
    """Answer ``requests``; with ``slept``, backoffs are recorded there (in seconds) and not waited out."""
    rows: list[dict[str, Any]] = []

    async def record(seconds: float) -> None:
        assert slept is not None
        slept.append(seconds)

    async def go() -> None:
        client = LLMClient(
            endpoint=Endpoint(base_url=base_url, **{**FAST, **endpoint}),
            model="m",
            sleep=asyncio.sleep if slept is None else record,
        )
        async with client:
            await answer_all(requests, client=client, on_answer=rows.append)

    asyncio.run(go())
    return rows


def test_ok_answer_row_has_every_field() -> None:
    with FaultInjectingLLMServer() as srv:
        (row,) = ask(srv.base_url, [request()])
    assert row["status"] == "ok"
    assert row["text"].startswith("echo:")
    assert row["finish_reason"] == "stop"
    assert row["tokens_in"] > 0 and row["tokens_out"] == 1
    assert row["attempts"] == 1 and row["error"] is None
    assert row["key"] == "k0" and row["prompt_hash"] == "h0" and row["model"] == "m"
    assert json.loads(row["params"]) == {"max_tokens": 16, "temperature": 0.0}
    body = srv.requests[0]["body"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]  # fixed part first: prefix caching


@pytest.mark.parametrize(
    "fault",
    [Status(code=500), Status(code=503), Status(code=429), Garbage(), Garbage.missing_choices(), Disconnect()],
    ids=["500", "503", "429", "garbage", "no-choices", "disconnect"],
)
def test_transient_fault_is_retried(fault: Any) -> None:
    with FaultInjectingLLMServer(script=[fault]) as srv:
        (row,) = ask(srv.base_url, [request()])
    assert row["status"] == "ok" and row["attempts"] == 2
    assert srv.calls == 2


def test_hang_times_out_and_is_retried() -> None:
    slept: list[float] = []
    with FaultInjectingLLMServer(script=[Hang(seconds=30)]) as srv:
        (row,) = ask(srv.base_url, [request()], timeout_s=0.5, slept=slept)
    # The second attempt answered: the first was cut by the timeout, not waited out for 30 s.
    assert row["status"] == "ok" and row["attempts"] == 2 and srv.calls == 2
    assert len(slept) == 1 and slept[0] <= FAST["backoff_max_s"]


def test_retry_after_is_honoured() -> None:
    slept: list[float] = []
    with FaultInjectingLLMServer(script=[Status(code=429, retry_after=0.6)]) as srv:
        (row,) = ask(srv.base_url, [request()], backoff_max_s=5.0, slept=slept)
    assert row["status"] == "ok" and row["attempts"] == 2
    assert slept == [0.6], "the backoff waits what the server asked for"


def test_persistent_failure_becomes_an_error_row_after_bounded_retries() -> None:
    with FaultInjectingLLMServer(default=Status(code=500)) as srv:
        (row,) = ask(srv.base_url, [request()], max_retries=2, breaker_failures=100)
    assert row["status"] == "error" and row["attempts"] == 3
    assert "HTTP 500" in row["error"]
    assert srv.calls == 3


def test_bad_request_is_not_retried() -> None:
    def reject_prompt_0(body: dict) -> Status | None:
        # By content, not by arrival order: the two requests race.
        return Status(code=400) if body["messages"][-1]["content"] == "prompt 0" else None

    with FaultInjectingLLMServer(rules=reject_prompt_0) as srv:
        rows = ask(srv.base_url, [request(0), request(1)])
    by_key = {r["key"]: r for r in rows}
    assert by_key["k0"]["status"] == "error" and "HTTP 400" in by_key["k0"]["error"]
    assert by_key["k1"]["status"] == "ok"
    assert srv.calls == 2


def test_auth_failure_stops_the_job() -> None:
    with FaultInjectingLLMServer(default=Status(code=401)) as srv, pytest.raises(EndpointRejected, match="401"):
        ask(srv.base_url, [request(n) for n in range(5)])


def test_server_down_is_a_clear_error_once_the_breaker_gives_up() -> None:
    # Bounded by the breaker's count of failed probes, not by a clock (a hang would hit pytest's timeout).
    with pytest.raises(EndpointDown, match=r"in a row failed, then 3 probes"):
        ask(f"http://127.0.0.1:{unused_port()}/v1", [request(n) for n in range(20)], breaker_failures=4,
            breaker_trips=3, slept=[])  # fmt: skip


def test_breaker_waits_out_an_outage_instead_of_failing_rows() -> None:
    outage = [Status(code=503)] * 6
    with FaultInjectingLLMServer(script=outage) as srv:
        rows = ask(
            srv.base_url,
            [request(n) for n in range(10)],
            max_concurrency=2,
            breaker_failures=3,
            breaker_trips=7,  # any split of the 6 failures between in-flight attempts and probes stays below it
            max_retries=7,
        )
    assert len(rows) == 10
    assert all(r["status"] == "ok" for r in rows)


def test_concurrency_is_bounded() -> None:
    with FaultInjectingLLMServer(default=Ok(delay_s=0.1)) as srv:
        rows = ask(srv.base_url, [request(n) for n in range(24)], max_concurrency=4)
    assert len(rows) == 24 and {r["key"] for r in rows} == {f"k{n}" for n in range(24)}
    assert 2 <= srv.max_in_flight <= 4


def test_structured_output_sends_the_json_schema() -> None:
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})
    with FaultInjectingLLMServer() as srv:
        ask(srv.base_url, [request(schema=schema)])
        ask(srv.base_url, [request(schema=schema)], structured_output=False)
    with_schema, without = (r["body"] for r in srv.requests if r["path"].endswith("/completions"))
    assert with_schema["response_format"]["json_schema"]["schema"] == json.loads(schema)
    assert "response_format" not in without


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        (Ok(finish_reason="length"), "truncated"),
        (Ok(text="   "), "empty"),
        (Ok(text="I'm sorry, but I can't help with that."), "refused"),
        (Ok(text="A heist thriller. Critics said: I can't look away."), "ok"),
    ],
)
def test_answer_status(behaviour: Ok, status: str) -> None:
    with FaultInjectingLLMServer(script=[behaviour]) as srv:
        (row,) = ask(srv.base_url, [request()])
    assert row["status"] == status


def test_classify_prefers_explicit_refusal_field() -> None:
    assert classify("anything", "stop", refusal="policy") == "refused"


def test_backoff_is_jittered_capped_and_respects_retry_after() -> None:
    delays = [backoff_delay(10, base_s=0.5, max_s=3.0) for _ in range(200)]
    assert max(delays) <= 3.0 and len(set(delays)) > 100
    assert backoff_delay(0, base_s=0.5, max_s=3.0, retry_after=10) == 3.0


def test_resolve_model_checks_the_served_list() -> None:
    with FaultInjectingLLMServer(model_name="served") as srv:
        assert resolve_model(Endpoint(base_url=srv.base_url)) == "served"
        with pytest.raises(EndpointRejected, match="does not serve"):
            resolve_model(Endpoint(base_url=srv.base_url, model="other"))
    with pytest.raises(EndpointDown, match="kar llm serve"):
        resolve_model(Endpoint(base_url=f"http://127.0.0.1:{unused_port()}/v1", timeout_s=1))
