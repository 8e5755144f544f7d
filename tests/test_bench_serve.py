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
    result = CliRunner().invoke(
        app, ["bench", "serve", "--out", str(out), "--items", "20", "--requests", "12", "--backend", "sqlite"]
    )
    assert result.exit_code == 0, result.output
    assert "goal p99 ≤ 20 ms at concurrency 1" in result.output
    written = json.loads(out.read_text())
    assert (tmp_path / "serve.png").is_file() and written["plot"] == "serve.png"
    (row,) = written["results"]
    assert row["backend"] == "sqlite"
    for way in ("bare fetch", "bare forward", "library", "http c=1", "http c=8"):
        assert row[way]["requests"] == 12 and 0 < row[way]["p50_ms"] <= row[way]["p99_ms"], way
    for level in ("http c=1", "http c=8"):
        assert row[level]["errors"] == 0 and row[level]["requests_per_s"] > 0
        assert row[level]["server_fetch_p50_ms"] > 0 and row[level]["server_model_p50_ms"] > 0
    floor = row["bare fetch"]["p50_ms"] + row["bare forward"]["p50_ms"]
    assert row["overhead_p50"] == pytest.approx(row["http c=1"]["p50_ms"] / floor, rel=0.01)
    assert written["goal_met"] is (row["http c=1"]["p99_ms"] <= 20.0)
