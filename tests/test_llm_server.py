"""The LLM server as the pipeline meets it: a real vLLM process answering OpenAI-style requests, then gone.

The first run builds the vLLM CPU venv (~4 min) and converts the embedded model (~1 min) into
``$KAR_CACHE_DIR`` (default ``~/.cache/kar``); later runs reuse both. Process-group and crash handling are
also checked against a test double (``tests.fake_service``), which needs no vLLM and runs in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kar.bench.llm import prefix_cache_counters
from kar.contracts.errors import EnvironmentProblem, KarError
from kar.llm import EMBEDDED_SERVED_NAME, LLMServer, ensure_vllm_env, serve_embedded, serve_forever, serve_model
from kar.llm.server import EMBEDDED_BLOCK_SIZE
from kar.processes import port_open
from tests.fake_service import fake_python


def _post(url: str, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in a process group, read from /proc independently of the module."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _assert_gone(server_pgid: int, pids: list[int], host: str, port: int) -> None:
    assert not port_open(host, port), f"port {port} still open after stop()"
    assert _group_members(server_pgid) == []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "Z", f"process {pid} of the server group survived stop() in state {state}"


def _fake(tmp_path: Path, **env: str) -> LLMServer:
    return LLMServer(
        model="fake", served_name="fake", python=fake_python(tmp_path), env=env, startup_timeout_s=30,
        stop_grace_s=2, log_path=tmp_path / "fake.log", tmp_dir=tmp_path / "scratch",
    )  # fmt: skip


def test_stop_kills_the_whole_group_even_if_sigterm_is_ignored(tmp_path):
    server = _fake(tmp_path, FAKE_IGNORE_TERM="1").start()
    pgid = server.pid
    assert pgid is not None
    deadline = time.monotonic() + 5
    while len(_group_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = _group_members(pgid)
    assert len(members) >= 2, "the double should run a server and a grandchild"
    server.stop()  # SIGTERM is ignored: only the escalation to SIGKILL after the grace ends the group
    _assert_gone(pgid, members, server.host, server.port)
    assert list((tmp_path / "scratch").iterdir()) == [], "the server's TMPDIR should be removed"
    server.stop()  # idempotent


def test_process_that_dies_at_start_raises_with_log_tail(tmp_path):
    server = _fake(tmp_path, FAKE_CRASH="1")
    # The exit is noticed as such: waiting out the 30 s start-up timeout would raise "not ready after" instead.
    with pytest.raises(EnvironmentProblem, match="exited with code 3") as info:
        server.start()
    assert "config.json not found in /no/such/model" in str(info.value)
    assert not server.running


def test_keyboard_interrupt_during_start_leaves_no_process(tmp_path, monkeypatch):
    server = _fake(tmp_path)

    def interrupted(_began: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert server.pid is None


def test_serve_forever_stops_the_server_on_sigterm(tmp_path):
    server = _fake(tmp_path)
    seen: dict[str, Any] = {}
    handler_before = signal.getsignal(signal.SIGTERM)

    def ready(started: LLMServer) -> None:
        seen["pgid"] = started.pid
        seen["members"] = _group_members(started.pid)
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill <kar llm serve pid>` does

    serve_forever(server, on_ready=ready)
    assert seen["members"]
    _assert_gone(seen["pgid"], seen["members"], server.host, server.port)
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_serve_forever_reports_a_server_that_dies(tmp_path):
    server = _fake(tmp_path)

    def ready(started: LLMServer) -> None:
        assert started.pid is not None
        os.killpg(started.pid, signal.SIGKILL)

    with pytest.raises(EnvironmentProblem, match="exited on its own"):
        serve_forever(server, on_ready=ready)
    assert server.pid is None


# ---- the real thing: vLLM CPU serving the embedded SmolLM2-135M-Instruct ----


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    server = serve_embedded(log_path=tmp_path_factory.mktemp("llm") / "vllm.log")
    server.start()
    yield server
    server.stop()


@pytest.mark.llm
@pytest.mark.slow
def test_chat_completions_answer_with_usage(embedded):
    questions = ["Name a fruit that is yellow.", "Suggest a movie genre for a rainy evening."]
    for question in questions:
        reply = _post(
            f"{embedded.base_url}/chat/completions",
            {
                "model": EMBEDDED_SERVED_NAME,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 40,
                "temperature": 0,
            },
        )
        text = reply["choices"][0]["message"]["content"]
        assert text and text.strip(), reply
        usage = reply["usage"]
        assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 40
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.llm
@pytest.mark.slow
def test_json_schema_structured_output_parses(embedded):
    schema = {
        "type": "object",
        "properties": {"complementary": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 200}},
        "required": ["complementary", "reason"],
        "additionalProperties": False,
    }
    reply = _post(
        f"{embedded.base_url}/chat/completions",
        {
            "model": EMBEDDED_SERVED_NAME,
            "messages": [
                {"role": "user", "content": "Are a tennis racket and tennis balls complementary products? "
                 "Answer in JSON with fields complementary and reason."},
            ],
            "max_tokens": 120,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "pair", "schema": schema}},
        },
    )  # fmt: skip
    answer = json.loads(reply["choices"][0]["message"]["content"])
    assert set(answer) == {"complementary", "reason"}
    assert isinstance(answer["complementary"], bool) and isinstance(answer["reason"], str)


@pytest.mark.llm
@pytest.mark.slow
def test_prompts_sharing_a_system_instruction_hit_the_prefix_cache_by_whole_blocks(embedded):
    """The embedded server's 32-token KV blocks let a ~100-token shared instruction be reused (vLLM's CPU
    default of 128 never filled one); the hits are read from its /metrics as `kar bench llm` reads them."""
    assert embedded.extra_args[embedded.extra_args.index("--block-size") + 1] == str(EMBEDDED_BLOCK_SIZE) == "32"
    system = " ".join(["You are a careful film critic who answers briefly and never invents facts."] * 6)

    def ask(question: str) -> None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        _post(
            f"{embedded.base_url}/chat/completions",
            {"model": EMBEDDED_SERVED_NAME, "messages": messages, "max_tokens": 1, "temperature": 0},
        )

    ask("Name one comedy.")
    before = prefix_cache_counters(embedded.base_url)
    ask("Name one western from the fifties.")
    after = prefix_cache_counters(embedded.base_url)
    assert before is not None and after is not None
    hits = after[1] - before[1]
    assert hits >= 2 * EMBEDDED_BLOCK_SIZE and hits % EMBEDDED_BLOCK_SIZE == 0, (before, after)


@pytest.mark.llm
@pytest.mark.slow
def test_models_endpoint_lists_served_name(embedded):
    with urllib.request.urlopen(f"{embedded.base_url}/models", timeout=10) as response:
        ids = [m["id"] for m in json.loads(response.read())["data"]]
    assert ids == [EMBEDDED_SERVED_NAME]


@pytest.mark.llm
@pytest.mark.slow
def test_stop_leaves_no_process_and_closes_port(embedded):
    # Runs last in this module on purpose: it stops the shared server (the fixture's stop() is then a no-op).
    pgid = embedded.pid
    assert pgid is not None
    members = _group_members(pgid)
    assert len(members) >= 2, "vLLM runs its engine core as a second process in the group"
    embedded.stop()
    _assert_gone(pgid, members, embedded.host, embedded.port)
    assert embedded.tmp_dir is not None
    assert list(embedded.tmp_dir.glob(f"{embedded.port}-*")) == [], "vLLM's socket files should be removed"


@pytest.mark.llm
@pytest.mark.slow
def test_bogus_model_path_fails_fast_with_log_tail(tmp_path):
    # A folder that passes the config.json pre-check but holds no weights: vLLM itself must die.
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    server = serve_model(
        model=str(model),
        python=ensure_vllm_env(),
        dtype="float32",
        env={"HF_HUB_OFFLINE": "1"},
        log_path=tmp_path / "vllm.log",
    )
    server.startup_timeout_s = 180
    # Noticed as an exit, not by the 180 s start-up timeout (whose error says "not ready after").
    with pytest.raises(KarError, match="exited with code") as info:
        server.start()
    last_line = (tmp_path / "vllm.log").read_text().strip().splitlines()[-1]
    assert last_line in str(info.value)
    assert "Error" in str(info.value).splitlines()[0], "the first line should name the cause"
    assert not server.running
    assert server.pid is None


def test_missing_local_model_folder_fails_before_starting(tmp_path):
    server = LLMServer(model=tmp_path / "nowhere", served_name="x", python=Path("/nonexistent/python"))
    with pytest.raises(EnvironmentProblem, match=r"no config\.json"):
        server.start()
    assert server.pid is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed in this env")
def test_serve_model_without_vllm_says_how_to_get_it():
    with pytest.raises(EnvironmentProblem, match=r"kar-feast\[vllm\]"):
        serve_model(model="Qwen/Qwen2.5-7B-Instruct")
