"""`kar bench serve` on a generated store and an untrained model: every level measured, nothing failed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kar.bench.online import generate_store
from kar.bench.serve import _server_timing, bench_serve, generated_run
from kar.cli import app
from kar.contracts.errors import KarError


def test_server_timing_header_parses() -> None:
    assert _server_timing("fetch;dur=1.250, model;dur=3.5") == {"fetch": 1.25, "model": 3.5}


def test_generated_run_loads_as_a_ranker_with_the_adaptor(tmp_path) -> None:
    from ctr import load_ranker

    data = generate_store(tmp_path / "prepared", n_users=20, n_items=30)
    ranker = load_ranker(generated_run(data, tmp_path / "run"))
    assert ranker.config.knowledge is not None
    assert ranker.encoder.layout.tables["item_id"] == 31  # every generated item has an id, plus index 0


def test_model_and_data_go_together(tmp_path) -> None:
    with pytest.raises(KarError, match="pass --model and --data together"):
        bench_serve(out=tmp_path / "serve.json", model_dir=tmp_path)


def test_cli_bench_serve_writes_levels_breakdown_and_plot(tmp_path) -> None:
    out = tmp_path / "serve.json"
    args = ["--out", str(out), "--items", "20", "--requests", "12", "--backend", "sqlite", "--processes", "1,2"]
    result = CliRunner().invoke(app, ["bench", "serve", *args])
    assert result.exit_code == 0, result.output
    assert "goal p99 ≤ 20 ms at concurrency 1" in result.output
    written = json.loads(out.read_text())
    assert (tmp_path / "serve.png").is_file() and written["plot"] == "serve.png"
    (row,) = written["results"]
    assert row["backend"] == "sqlite"
    levels = ("http c=1", "http c=8", "http p=2 c=1", "http p=2 c=8")
    for way in ("bare fetch", "bare forward", "library", *levels):
        assert row[way]["requests"] == 12 and 0 < row[way]["p50_ms"] <= row[way]["p99_ms"], way
    for level in levels:
        assert row[level]["errors"] == 0 and row[level]["requests_per_s"] > 0
        assert row[level]["server_fetch_p50_ms"] > 0 and row[level]["server_model_p50_ms"] > 0
    floor = row["bare fetch"]["p50_ms"] + row["bare forward"]["p50_ms"]
    assert row["overhead_p50"] == pytest.approx(row["http c=1"]["p50_ms"] / floor, rel=0.01)
    assert written["goal_met"] is (row["http c=1"]["p99_ms"] <= 20.0)
    # Processes 1 and 2 compared at concurrency 8: rates per count, their ratio against the goal.
    assert [e["processes"] for e in row["processes"]] == [1, 2]
    rates = [e["requests_per_s_c8"] for e in row["processes"]]
    assert rates == [row["http c=8"]["requests_per_s"], row["http p=2 c=8"]["requests_per_s"]]
    assert row["processes"][1]["p99_ms_c1"] == row["http p=2 c=1"]["p99_ms"]
    assert row["rps_c8_ratio"] == pytest.approx(rates[1] / rates[0], abs=0.01)
    assert written["rps_c8_ratio"] == row["rps_c8_ratio"] and written["goal"]["rps_c8_ratio_min"] == 1.7
    assert written["rps_goal_met"] is (row["rps_c8_ratio"] >= 1.7)
    assert "req/s at concurrency 8 by processes 1:" in result.output


def test_processes_must_be_distinct_positive_counts(tmp_path) -> None:
    with pytest.raises(KarError, match="--processes takes distinct positive counts"):
        bench_serve(out=tmp_path / "serve.json", processes=[1, 1])
