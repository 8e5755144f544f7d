"""`kar bench validate` on a small generated log: both sides measured, overhead computed from them, report written."""

from __future__ import annotations

import json

import pytest

from kar.bench.validate import bench_validate
from spark_jobs.datasets.synthetic import SyntheticConfig

pytestmark = pytest.mark.spark


def test_bench_validate_measures_both_sides_and_reports_per_suite_time(spark, tmp_path) -> None:
    out = tmp_path / "validate.json"
    small = SyntheticConfig(n_users=60, n_items=80, mean_interactions=30)
    result = bench_validate(out=out, rounds=1, synthetic=small, work_dir=tmp_path)
    assert json.loads(out.read_text())["overhead"] == result["overhead"]
    assert out.with_suffix(".png").is_file()
    assert [len(result["seconds"][side]) for side in ("plain", "gated")] == [1, 1]
    assert result["overhead"] == pytest.approx(result["gated_seconds"] / result["plain_seconds"] - 1, abs=1e-4)
    assert result["meets_goal"] == (result["overhead"] <= 0.2)
    assert result["interactions"] > 0
    assert result["ge_import_seconds_once_per_process"] > 0  # measured, in a fresh process
    expected = {"raw.interactions", "raw.users", "raw.items", "prepared.samples", "prepared.splits"}
    assert set(result["suites"]) == set(result["suite_seconds_median"]) == expected
    # Only the measured gated run counts (not the warm-up), and the gates take part of that run's time.
    assert len(result["validation_seconds_in_gated_runs"]) == 1
    assert 0 < result["validation_seconds_in_gated_runs"][0] < result["gated_seconds"]
    assert not list(tmp_path.glob("kar-bench-validate-*")), "prepared folders are removed after the run"
