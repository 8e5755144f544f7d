"""Commands that start child services, stopped the way schedulers stop them: nothing is left behind.

`kar knowledge` starts the embedded vLLM server; `kar demo` starts `kar serve`. Each is killed at a known point
(answers in the cache; the service process started) with SIGTERM to its process group (what `timeout`,
cron wrappers, Airflow and Kubernetes send) or SIGKILL; within 10 s no process it started may be left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kar.processes import port_open
from spark_jobs.llm.cache import AnswerCache

REPO = Path(__file__).resolve().parents[1]
KAR = [sys.executable, "-m", "kar"]
LEFT_WITHIN_S = 10  # the bound for a child outliving its parent
# SIGTERM to the job's process group, as `timeout`, cron wrappers and Airflow send it; SIGKILL to the job's
# process alone, as the OOM killer does: then nothing but the guard can stop what it started.
KILLS = [(signal.SIGTERM, "group"), (signal.SIGKILL, "process")]
KILL_IDS = ["sigterm-group", "sigkill-process"]


def _kill(victim: subprocess.Popen, signum: int, target: str) -> None:
    if target == "group":
        os.killpg(victim.pid, signum)
    else:
        os.kill(victim.pid, signum)
    victim.wait(timeout=120)


def _stat(pid: int) -> tuple[int, str, str] | None:
    """``(parent pid, start time, state)`` of a process from /proc, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19], fields[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every process below ``root`` now: pid → (start time, command line). Start times tell a reused pid apart."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        found = _stat(int(stat.parent.name))
        if found is not None:
            children.setdefault(found[0], []).append(int(stat.parent.name))
    found_pids, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            stat = _stat(child)
            if stat is not None:
                found_pids[child] = (stat[1], _cmdline(child))
                todo.append(child)
    return found_pids


def _left_after(processes: dict[int, tuple[str, str]], seconds: float) -> list[str]:
    """The command lines of ``processes`` still running (not zombies) ``seconds`` after now, at most."""
    deadline = time.monotonic() + seconds
    while True:
        left = []
        for pid, (started, command) in processes.items():
            stat = _stat(pid)
            if stat is not None and stat[1] == started and stat[2] != "Z":
                left.append(f"{pid}: {command[:160]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _wait_for(condition, *, what: str, victim: subprocess.Popen, limit_s: float = 900) -> None:
    """Poll ``condition`` until it holds (the known point to kill at); fail if the victim ended first."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if victim.poll() is not None:
            raise AssertionError(f"the command exited with {victim.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {limit_s:.0f} s")
        time.sleep(0.2)


def _answered_ids(out: Path, kind: str, column: str) -> list[int]:
    ids = [pd.read_parquet(out / t)[column] for t in (kind, f"quarantine/{kind}") if (out / t).is_dir()]
    return sorted(pd.concat(ids).tolist()) if ids else []


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(1500)
@pytest.mark.parametrize(("signum", "target"), KILLS, ids=KILL_IDS)
def test_knowledge_killed_mid_run_leaves_no_server_and_resumes(signum, target, tiny_prepared, llm_base_url, tmp_path):
    out = tmp_path / "knowledge"
    command = [*KAR, "knowledge", "--data", str(tiny_prepared), "--out", str(out), "--kind", "user",
               "--concurrency", "2"]  # fmt: skip
    env = {**os.environ, "KAR_SPARK_MASTER": "local[2]"}
    env.pop("KAR_LLM_BASE_URL", None)  # the job starts its own embedded server: that is what must not leak
    victim = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    cache = AnswerCache(out / "cache")
    _wait_for(lambda: cache.count_rows() >= 2, what="two answers in the cache", victim=victim)
    started = _descendants(victim.pid)
    servers = [pid for pid, (_, cmd) in started.items() if "vllm.entrypoints.openai.api_server" in cmd]
    assert servers, "the job should run its own vLLM server"
    port = int(re.search(r"--port (\d+)", started[servers[0]][1]).group(1))  # type: ignore[union-attr]
    assert any("java" in cmd for _, cmd in started.values()), "and its Spark JVM"

    _kill(victim, signum, target)
    assert _left_after(started, LEFT_WITHIN_S) == []
    assert not port_open("127.0.0.1", port)
    if signum == signal.SIGTERM:
        assert victim.returncode == 128 + signal.SIGTERM
        assert "kar knowledge: stopped by SIGTERM" in victim.stderr.read()  # type: ignore[union-attr]
        return  # the resume is checked after SIGKILL, the harder case: no cleanup ran at all
    before = cache.count_rows()

    # The rerun asks the session's server (same model, so the same cache keys) for what is missing only.
    rerun = subprocess.run([*command, "--endpoint", llm_base_url], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())["user"]
    users = sorted(pd.read_parquet(tiny_prepared / "knowledge_cutoffs")["user_id"])
    assert _answered_ids(out, "user", "user_id") == users  # exactly one answer per prompt
    assert summary["cached"] >= before - 1 and summary["calls"] == len(users) - summary["cached"]


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("signum", "target"), KILLS, ids=KILL_IDS)
def test_demo_killed_while_its_service_is_up_leaves_no_service(signum, target, tmp_path):
    out = tmp_path / "demo"
    command = [*KAR, "demo", "--out", str(out), "--no-knowledge", "--users", "30", "--items", "120"]
    env = {**os.environ, "KAR_SPARK_MASTER": "local[2]"}
    victim = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    service: dict[str, int] = {}

    def service_started() -> bool:
        # The service process itself, not only its guard; it loads for seconds before it binds its port,
        # and the demo stops it one request after that, so its start is the known point that is wide enough.
        for pid, (_, cmd) in _descendants(victim.pid).items():
            if "guard.py" not in cmd and (match := re.search(r"-m kar serve .*--port (\d+)", cmd)):
                service.update(pid=pid, port=int(match.group(1)))
        return bool(service)

    _wait_for(service_started, what="`kar serve` started", victim=victim)
    started = _descendants(victim.pid)
    _kill(victim, signum, target)
    assert _left_after(started, LEFT_WITHIN_S) == []
    assert not port_open("127.0.0.1", service["port"])


@pytest.mark.spark
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_while_spark_starts_leaves_no_jvm(signum, tmp_path):
    """Regression: stopped while its JVM started (the known point: the JVM process exists, its gateway not yet
    up), a job left the JVM running forever. The stop is now held until the JVM is up, which then exits with it."""
    victim = subprocess.Popen([*KAR, "prepare", "--dataset", "synthetic", "--out", str(tmp_path / "out")],
                              cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip

    def jvm_started() -> bool:
        return any("java" in cmd for _, cmd in _descendants(victim.pid).values())

    _wait_for(jvm_started, what="the Spark JVM", victim=victim, limit_s=120)
    started = _descendants(victim.pid)
    os.kill(victim.pid, signum)
    victim.wait(timeout=120)
    assert _left_after(started, LEFT_WITHIN_S) == []
