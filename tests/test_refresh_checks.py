"""``kar refresh`` refuses, in one sentence and before Spark starts, what it cannot refresh."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kar.contracts.errors import DataError
from kar.contracts.results import PrepareSummary
from kar.refresh import run_refresh


def _folder(tmp_path: Path, *, protocol: str, interactions: list[str]) -> Path:
    data = tmp_path / "prepared"
    (data / "knowledge").mkdir(parents=True)
    summary = PrepareSummary(dataset="movielens-100k", path=str(tmp_path), split={"protocol": protocol},
                             interactions=interactions)  # fmt: skip
    (data / "summary.json").write_text(json.dumps(summary.to_dict()))
    (data / "knowledge" / "summary.json").write_text(json.dumps({"user": {"limit": None, "scenario": "movies"}}))
    cutoffs = pd.DataFrame({"user_id": [1], "knowledge_cutoff": [pd.Timestamp("2024-01-01", tz="UTC")]})
    cutoffs.to_parquet(data / "knowledge_cutoffs")
    pd.DataFrame({"item_id": [1]}).to_parquet(data / "items")
    return data


def test_a_folder_not_prepared_rolling_is_refused(tmp_path):
    data = _folder(tmp_path, protocol="time", interactions=[])
    with pytest.raises(DataError, match="--protocol time; kar refresh needs --protocol rolling"):
        run_refresh(data_dir=data, interactions=tmp_path / "batch.tsv")
    assert not (data / "refresh" / "pending.json").exists()


def test_a_batch_already_read_is_refused(tmp_path):
    batch = str(tmp_path / "batch-1.tsv")
    data = _folder(tmp_path, protocol="rolling", interactions=[str(tmp_path / "u.data"), batch])
    with pytest.raises(DataError, match="already read"):
        run_refresh(data_dir=data, interactions=batch)


def test_an_unfinished_refresh_must_finish_before_another_batch(tmp_path):
    data = _folder(tmp_path, protocol="rolling", interactions=[str(tmp_path / "u.data")])
    (data / "refresh").mkdir()
    pending = {"batch": str(tmp_path / "batch-1.tsv"), "batches": [], "spec": None}
    (data / "refresh" / "pending.json").write_text(json.dumps(pending))
    with pytest.raises(DataError, match=r"batch-1.tsv did not finish; rerun it before appending .*batch-2.tsv"):
        run_refresh(data_dir=data, interactions=tmp_path / "batch-2.tsv")


def test_kerec_knowledge_without_its_recorded_max_pairs_is_refused(tmp_path):
    data = _folder(tmp_path, protocol="rolling", interactions=[str(tmp_path / "u.data")])
    # A kerec entry as summaries had it before max_pairs was recorded: the cap the refresh would mine with is unknown.
    summary = {"user": {"limit": None, "scenario": "movies"}, "kerec": {"limit": None, "scenario": "movies"}}
    (data / "knowledge" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataError, match=r"kerec: max_pairs not recorded .* --kind kerec"):
        run_refresh(data_dir=data, interactions=tmp_path / "batch-1.tsv")
    assert not (data / "refresh" / "pending.json").exists()
