"""The CLI as a user meets it: one-line errors, the Java check, the full demo as the README runs it (every other
command with relative paths runs at the end of tests/test_plugin.py's flow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kar.contracts.errors import EnvironmentProblem
from spark_jobs import session

KAR = [sys.executable, "-m", "kar"]
REPO = Path(__file__).resolve().parents[1]


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KAR, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def test_bad_path_is_one_line_without_traceback(tmp_path):
    result = _run("prepare", "--dataset", "movielens-1m", "--path", str(tmp_path / "missing"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'missing'}: folder not found "
        "(expected ratings*.dat, users.dat, movies.dat for movielens-1m)"
    ]


def test_train_without_prepared_data_says_what_to_run(tmp_path):
    result = _run("train", "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "run `kar prepare" in result.stderr and "Traceback" not in result.stderr


def _fake_java(tmp_path: Path, version: str) -> Path:
    home = tmp_path / f"jdk-{version}"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2020-01-01' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return home


def test_old_java_gets_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, "11.0.2")))
    assert session.java_major_version() == 11
    with pytest.raises(EnvironmentProblem, match=r"Spark needs Java 17\+ but found Java 11: install it with"):
        session.check_java()
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, "1.8.0_292")))
    assert session.java_major_version() == 8


def test_missing_java_gets_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(EnvironmentProblem, match="no `java` was found"):
        session.check_java()


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.llm
@pytest.mark.timeout(1500)
def test_demo_end_to_end_as_the_readme_runs_it(llm_base_url):
    """`make demo` from the repository root, defaults included (its relative `runs/demo`): every stage, real
    Spark, vLLM and Feast. Only the LLM server is the session's (one vLLM process for the suite).

    ~10 min alone on 2 cores (the LLM stage is most of it); the limit leaves room for a loaded machine.
    """
    env = {**os.environ, "KAR_SPARK_MASTER": "local[2]", "KAR_LLM_BASE_URL": llm_base_url}
    result = subprocess.run(readme_demo_command(), capture_output=True, text=True, timeout=1400, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    out = REPO / DEMO_OUT
    assert f"metrics → {out / 'metrics.json'}" in result.stdout.replace("\n", "")
    metrics = json.loads((out / "metrics.json").read_text())
    for kind in ("user", "item"):
        answered = metrics["knowledge"][kind]["status"]
        assert sum(answered.values()) == metrics["knowledge"][kind]["prompts"] > 0
        assert answered.get("ok", 0) > 0, answered
    assert metrics["knowledge"]["kerec"]["graph_edges"] > 0
    assert metrics["knowledge_sample"]["text"]
    for model in ("deepfm", "xgboost"):
        assert metrics["models"][model]["test"]["auc"] > 0.55, metrics["models"][model]
    for kind in ("user", "item"):
        encoded = metrics["encode"][kind]
        assert encoded["rows"] == metrics["knowledge"][kind]["status"]["ok"] and encoded["dim"] == 384, encoded
    assert 0 < metrics["knowledge_coverage"]["user_knowledge"] <= 1
    assert metrics["adapted_export"]["user_knowledge"]["dim"] == 32
    assert metrics["adapted_export"]["user_knowledge"]["rows"] == metrics["encode"]["user"]["rows"]
    lookup = metrics["online_lookup"]  # serving: profiles + the exported adapted vectors
    assert lookup["user"]["occupation"] and lookup["user"]["has_user_knowledge_adapted"] is True
    assert lookup["user"]["user_knowledge_adapted"].startswith("32-d [") and len(lookup["items"]) == 3
    ranking = metrics["online_ranking"]
    assert len(ranking["items"]) == 3 and ranking["max_abs_diff_vs_raw"] < 1e-5
    assert "DeepFM ranking for user" in result.stdout
    served = metrics["service"]  # `kar serve` started, one POST /rank over HTTP, stopped
    assert served["status"] == 200 and len(served["items"]) == 4
    assert [i["fallback"] for i in served["items"] if i["item_id"] == -1] == [True]
    assert served["max_abs_diff_vs_in_process"] < 1e-5 and "fetch;dur=" in served["server_timing"]
    assert "kar serve (started in" in result.stdout
    assert "test AUC" in result.stdout and "user: user_id=" in result.stdout


# --- the README's main command, exactly -------------------------------------------------------------------------

DEMO_OUT = "runs/demo"  # the Makefile's DEMO_OUT and `kar demo`'s default


def readme_demo_command() -> list[str]:
    """`make demo` when this interpreter is the Makefile's venv (as under `make test` and CI); else the exact
    command `make demo` runs, with this interpreter."""
    if shutil.which("make") and Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return ["make", "--no-print-directory", "demo"]
    return [*KAR, "demo", "--out", DEMO_OUT]


def test_make_demo_runs_kar_demo_on_the_relative_default_folder():
    if not shutil.which("make"):
        pytest.skip("make not installed")
    dry = subprocess.run(["make", "-n", "demo"], capture_output=True, text=True, cwd=REPO, check=True)
    assert f".venv/bin/kar demo --out {DEMO_OUT}" in dry.stdout.splitlines()


# --- errors nobody foresaw ---------------------------------------------------------------------------------------

_FAULT_INJECTED_PREPARE = textwrap.dedent(
    """
    import sys
    import kar.pipeline

    def fault_injected_prepare(**kwargs):  # fails the way a library bug would, after one step
        kwargs["progress"]("splitting (time protocol)")
        raise ValueError("base_directory must be an absolute path if root_directory is not provided")

    kar.pipeline.run_prepare = fault_injected_prepare
    from kar.cli import app
    app(sys.argv[1:], prog_name="kar")
    """
)


def _run_fault_injected(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _FAULT_INJECTED_PREPARE, *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_an_unexpected_error_is_one_line_naming_the_step_with_the_traceback_in_the_output_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KAR_DEBUG"}
    result = _run_fault_injected("prepare", "--out", "rel-out", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    log = tmp_path / "rel-out" / "kar-error.log"
    assert errors == [
        "error: kar prepare failed while splitting (time protocol): ValueError: base_directory must be an absolute "
        f"path if root_directory is not provided (full traceback in {log}; --debug prints it)"
    ]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "fault_injected_prepare" in text


_SIGTERM_THEN_CLEANUP_FAILS = textwrap.dedent(
    """
    import os, signal, sys
    import kar.pipeline

    def prepare_stopped_mid_job(**kwargs):  # what a SIGTERM to the job's group does to a Spark job
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises Terminated here
        finally:
            raise ConnectionRefusedError("the JVM the same signal stopped is gone")  # cleanup fails on it

    kar.pipeline.run_prepare = prepare_stopped_mid_job
    from kar.cli import app
    app(sys.argv[1:], prog_name="kar")
    """
)


def test_sigterm_whose_unwinding_fails_on_the_stopped_jvm_still_exits_as_stopped(tmp_path):
    result = subprocess.run([sys.executable, "-c", _SIGTERM_THEN_CLEANUP_FAILS, "prepare", "--out", "out"],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "kar prepare: stopped by SIGTERM" in result.stderr and "ConnectionRefusedError" not in result.stderr


@pytest.mark.parametrize("how", [["--debug"], ["KAR_DEBUG=1"]])
def test_debug_prints_the_traceback(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if k != "KAR_DEBUG"}
    args = ["prepare", "--out", "out"]
    if how == ["--debug"]:
        args = ["--debug", *args]
    else:
        env["KAR_DEBUG"] = "1"
    result = _run_fault_injected(*args, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "fault_injected_prepare" in result.stderr
