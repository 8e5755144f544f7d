"""`kar bench online` and the online CLI on a small generated store."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kar.bench.online import bench_online, generate_store
from kar.cli import app


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_bench_online_writes_percentiles_for_both_ways(tmp_path, backend, request):
    if backend == "redis":
        request.getfixturevalue("redis_server")  # skips/fails with the install hint when redis-server is missing
    out = tmp_path / "online.json"
    result = bench_online(out=out, items=10, requests=5, rounds=2, backends=[backend], services=["ranking_serving"])
    written = json.loads(out.read_text())
    assert written["results"] == result["results"] and (tmp_path / "online.png").is_file()
    (row,) = written["results"]
    assert row["backend"] == backend and row["service"] == "ranking_serving"
    for way in ("feast", "kar"):
        assert row[way]["requests"] == 10 and 0 < row[way]["p50_ms"] <= row[way]["p99_ms"]
    assert written["goal_met"] is (backend == "redis" and written["goal"]["worst_redis_p99_ms"] <= 5.0)


@pytest.mark.redis
def test_cli_materializes_into_redis_and_reads_one_user_and_items(tmp_path, redis_server):
    data = generate_store(tmp_path / "prepared", n_users=5, n_items=8)
    runner = CliRunner()
    for args in (
        ["feast", "apply", "--data", str(data)],
        ["feast", "materialize", "--data", str(data), "--redis", redis_server.connection_string],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["feast", "online", "--data", str(data), "--redis", redis_server.connection_string,
              "--user", "3", "--items", "1,7,999"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("user: user_id=3") and "user_knowledge_adapted=32-d [" in lines[0]
    assert "has_user_knowledge_adapted=True" in lines[0]
    assert len(lines) == 4 and "item_id=999" in lines[3] and "has_item_knowledge_adapted=False" in lines[3]
    # The SQLite online store was never materialized: the values above really came from Redis.
    result = runner.invoke(app, ["feast", "online", "--data", str(data), "--user", "3", "--items", "1"])
    assert result.exit_code == 0 and "has_user_knowledge_adapted=False" in result.output
