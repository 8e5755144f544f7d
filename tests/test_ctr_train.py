"""End-to-end training on a planted-signal frame: DeepFM and XGBoost learn it, runs are repeatable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ctr import ProgressEvent, load_ranker, train_experiment
from ctr.config import ExperimentConfig, load_config
from ctr.features import DenseField, Encoder, SparseField
from ctr.frame import split_frame
from ctr.metrics import binary_metrics
from ctr.testing import planted_frame
from kar.contracts.results import TrainMetrics

# Timings differ between runs; everything else in metrics.json must not.
TIMING_KEYS = {"seconds", "samples_per_sec"}


def _experiment(model: str, *, dense: bool = False, **train: Any) -> ExperimentConfig:
    config = load_config(f"{model}_synthetic")
    # The bundled batch size suits real data; tiny frames need more, smaller steps.
    config = replace(config, train=replace(config.train, **({"batch_size": 256, "lr": 1e-2} | train)))
    config = config.with_knowledge()  # the knowledge path is tested in test_ctr_knowledge.py
    if not dense:
        return config
    features = replace(
        config.features,
        sparse=(*config.features.sparse, SparseField(name="has_user_knowledge")),
        dense=(DenseField(name="user_knowledge"),),
    )
    return replace(config, features=features)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return planted_frame(n_users=100, n_items=60, n_rows=6000, seed=0)


@pytest.fixture(scope="module")
def deepfm_run(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out_dir = tmp_path_factory.mktemp("deepfm")
    events: list[ProgressEvent] = []
    metrics = train_experiment(frame, _experiment("deepfm"), out_dir, progress=events.append)
    return out_dir, metrics, events


def _assert_metrics_file(out_dir: Path, metrics: TrainMetrics, model: str) -> None:
    written = json.loads((out_dir / "metrics.json").read_text())
    assert written == metrics.to_dict() and TrainMetrics.from_dict(written) == metrics
    assert written["model"] == model
    for split in ("val", "test"):
        assert set(written[split]) == {"auc", "logloss"}
        assert all(isinstance(value, float) for value in written[split].values())
    assert written["n_train"] == 4800 and written["n_val"] == 600 and written["n_test"] == 600
    assert {"config.yaml", "encoder.json"} <= {path.name for path in out_dir.iterdir()}


def test_deepfm_learns_planted_signal(deepfm_run: tuple[Path, dict, list]) -> None:
    out_dir, metrics, _events = deepfm_run
    _assert_metrics_file(out_dir, metrics, "deepfm")
    assert metrics.test["auc"] > 0.75
    assert 1 <= metrics.best_epoch <= metrics.epochs_run


def test_deepfm_run_reloads_for_serving(frame: pd.DataFrame, deepfm_run: tuple[Path, dict, list]) -> None:
    out_dir, metrics, _events = deepfm_run
    test = split_frame(frame)["test"]
    probs = load_ranker(out_dir).predict(test.drop(columns=["label", "split"]))
    assert binary_metrics(test["label"].to_numpy(), probs) == pytest.approx(metrics.test)


def test_progress_reports_every_batch_and_each_validation(deepfm_run: tuple[Path, dict, list]) -> None:
    _out_dir, metrics, events = deepfm_run
    validated = [event for event in events if event.val]
    assert [event.epoch for event in validated] == list(range(1, metrics.epochs_run + 1))
    assert validated[metrics.best_epoch - 1].val == metrics.val
    steps = events[0].steps
    assert steps == 4800 // 256 + 1
    assert len(events) == metrics.epochs_run * (steps + 1)


def test_same_seed_gives_identical_metrics(frame: pd.DataFrame, tmp_path: Path) -> None:
    config = _experiment("deepfm", epochs=2)
    first = train_experiment(frame, config, tmp_path / "first")
    second = train_experiment(frame, config, tmp_path / "second")
    untimed = {name: 0.0 for name in TIMING_KEYS}
    assert dataclasses.replace(first, **untimed) == dataclasses.replace(second, **untimed)


def test_xgboost_learns_planted_signal_and_is_repeatable(frame: pd.DataFrame, tmp_path: Path) -> None:
    config = _experiment("xgboost")
    metrics = train_experiment(frame, config, tmp_path / "first")
    again = train_experiment(frame, config, tmp_path / "second")

    _assert_metrics_file(tmp_path / "first", metrics, "xgboost")
    assert (tmp_path / "first" / "model.ubj").exists()
    assert metrics.test["auc"] > 0.75
    assert (metrics.val, metrics.test) == (again.val, again.test)


@pytest.mark.parametrize("model", ["deepfm", "xgboost"])
def test_dense_vector_field_is_added_by_config_only(model: str, tmp_path: Path) -> None:
    frame = planted_frame(n_users=100, n_items=60, n_rows=3000, dense_dim=8, seed=1)
    config = _experiment(model, dense=True, epochs=2)
    if model == "xgboost":
        # 6 genres are multi-hot; the 60-item history is summarised by 4 statistics.
        config = replace(config, model_params=config.model_params | {"multi_hot_max": 10})
    metrics = train_experiment(frame, config, tmp_path)

    assert Encoder.load(tmp_path / "encoder.json").layout.dense == {"user_knowledge": 8}
    assert np.isfinite(metrics.test["auc"])
    if model == "xgboost":
        assert metrics.n_features == 8 + 6 + 4 + 8  # sparse, genres, history, vector
