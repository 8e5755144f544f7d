"""The CLI as a user meets it: one-line errors with exit code 2, the Java check, the full demo."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kar.errors import EnvironmentProblem
from spark_jobs import session

KAR = [sys.executable, "-m", "kar"]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KAR, *args], capture_output=True, text=True, timeout=timeout, env=env)


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
def test_demo_end_to_end(tmp_path, llm_base_url):
    """What `make demo` runs, defaults included: every stage, real Spark, vLLM and Feast.

    ~10 min alone on 2 cores (the LLM stage is most of it); the limit leaves room for a loaded machine.
    """
    env = {**os.environ, "KAR_SPARK_MASTER": "local[2]", "KAR_LLM_BASE_URL": llm_base_url}
    result = _run("demo", "--out", str(tmp_path), env=env, timeout=1400)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
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
