"""Child services never outlive the process that started them: SIGTERM unwinds, SIGKILL is caught by the guard,
and a leftover of a run that died anyway is found on the next start (reused when it is ours, else stopped).

The service here is a test double for fault injection (``tests.fake_service``): an HTTP server that forks a
grandchild, like vLLM's engine core, so "the whole group is gone" is checked, not just the direct child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kar.llm import LLMServer
from kar.processes import group_alive, port_open
from tests.fake_service import fake_python

# A parent that starts the double as an LLMServer and reports it, then works until it is killed.
PARENT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from kar.llm import LLMServer
    from kar.processes import sigterm_raises

    wrapper, state, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    with sigterm_raises():
        server = LLMServer(model=model, served_name="fake", python=wrapper, startup_timeout_s=60, stop_grace_s=2,
                           log_path=state.parent / "fake.log", state_dir=state)
        with server:
            print(json.dumps({"pgid": server.pid, "port": server.port}), flush=True)
            while True:
                time.sleep(1)
    """
)


def _start_parent(tmp_path: Path, *, model: str = "fake") -> tuple[subprocess.Popen[str], dict]:
    """The parent in its own process group (as a shell or scheduler starts a job), once its service is up."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(fake_python(tmp_path)), str(tmp_path / "servers"), model],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()  # the known point: the service answered and the parent said so
    assert line, f"parent exited {parent.wait()} before its service was up"
    return parent, json.loads(line)


def _gone_within(pgid: int, port: int, seconds: float) -> bool:
    """Whether group ``pgid`` is gone and ``port`` closed within ``seconds`` (the issue's bound: 10 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not group_alive(pgid) and not port_open("127.0.0.1", port):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_to_the_parents_group_stops_the_service(tmp_path):
    parent, service = _start_parent(tmp_path)
    os.killpg(parent.pid, signal.SIGTERM)  # what `timeout`, cron wrappers and Kubernetes send
    assert parent.wait(timeout=30) != 0
    assert _gone_within(service["pgid"], service["port"], 10)
    assert list((tmp_path / "servers").glob("*.json")) == [], "a clean stop removes its record"


def test_sigkill_to_the_parent_is_caught_by_the_guard(tmp_path):
    parent, service = _start_parent(tmp_path)
    os.killpg(parent.pid, signal.SIGKILL)  # no handler, no atexit: only the guard can clean up
    parent.wait(timeout=30)
    assert _gone_within(service["pgid"], service["port"], 10)


def _orphan(tmp_path: Path, *, model: str = "fake") -> dict:
    """A service whose parent and guard both died (e.g. the OOM killer took both): left running, recorded."""
    parent, service = _start_parent(tmp_path, model=model)
    os.kill(service["pgid"], signal.SIGKILL)  # the guard first, so nothing stops the group
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    assert group_alive(service["pgid"]) and port_open("127.0.0.1", service["port"])
    return service


def _server(tmp_path: Path, said: list[str]) -> LLMServer:
    """This run's server, looking for leftovers in the records the parents wrote."""
    return LLMServer(
        model="fake", served_name="fake", python=fake_python(tmp_path), stop_grace_s=2,
        state_dir=tmp_path / "servers", log_path=tmp_path / "new.log", progress=said.append,
    )  # fmt: skip


def test_a_healthy_leftover_of_ours_is_reused_and_then_stopped(tmp_path):
    leftover = _orphan(tmp_path)
    said: list[str] = []
    with _server(tmp_path, said) as server:
        assert server.pid == leftover["pgid"] and server.port == leftover["port"]
        assert said == [f"reusing the fake server left running by an earlier run (pid {leftover['pgid']})"]
    assert _gone_within(leftover["pgid"], leftover["port"], 10)


def test_a_leftover_of_another_model_is_stopped_with_one_line(tmp_path):
    leftover = _orphan(tmp_path, model="other")
    said: list[str] = []
    with _server(tmp_path, said) as server:
        assert server.pid != leftover["pgid"]
        assert not group_alive(leftover["pgid"])
    assert said == [
        f"stopped a server left running by an earlier run (pid {leftover['pgid']}, port {leftover['port']}: "
        "another model)"
    ]


def test_a_live_jobs_server_is_left_alone(tmp_path):
    parent, other = _start_parent(tmp_path)
    try:
        said: list[str] = []
        with _server(tmp_path, said) as server:
            assert server.pid != other["pgid"] and said == []
        assert group_alive(other["pgid"])
    finally:
        os.killpg(parent.pid, signal.SIGTERM)
        parent.wait(timeout=30)


def test_the_guard_passes_the_exit_code_of_a_service_that_ends_on_its_own():
    from kar.processes import spawn_guarded

    process = spawn_guarded([sys.executable, "-c", "raise SystemExit(7)"])
    assert process.wait(timeout=30) == 7


@pytest.mark.redis
def test_redis_server_dies_with_its_parent(tmp_path):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    script = textwrap.dedent(
        """
        import json, time
        from kar.redis_server import RedisServer
        with RedisServer() as redis:
            print(json.dumps({"pgid": redis.pid, "port": redis.port}), flush=True)
            while True:
                time.sleep(1)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    service = json.loads(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=30)
    assert _gone_within(service["pgid"], service["port"], 10)


@pytest.mark.redis
def test_a_cluster_node_starts_on_a_port_above_55535():
    """Regression (CI): the default bus port, port + 10000, overflows for ports the OS hands out above 55535."""
    import shutil

    from kar.processes import port_open
    from kar.redis_server import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = next(p for p in range(60000, 65535) if not port_open("127.0.0.1", p))
    with RedisServer(cluster=True, port=port) as node:
        assert node.port > 55535


def test_a_server_this_process_runs_is_not_a_leftover(tmp_path):
    """Regression: a second server of one process (the test session's and a module's) must not adopt the first."""
    said: list[str] = []
    with _server(tmp_path, said) as first, _server(tmp_path, said) as second:
        assert second.pid != first.pid and said == []
        assert first.running
