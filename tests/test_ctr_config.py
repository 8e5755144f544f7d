"""Experiment YAMLs: bundled ones are valid, mistakes are reported with file and key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ctr import check_experiment
from ctr.config import ExperimentConfig, bundled_experiments, load_config
from kar.contracts.errors import DataError


def test_bundled_experiments_cover_models_and_datasets() -> None:
    names = set(bundled_experiments())
    for model in ("deepfm", "xgboost"):
        for dataset in ("synthetic", "movielens-100k", "movielens-1m"):
            assert f"{model}_{dataset}" in names


@pytest.mark.parametrize("name", bundled_experiments())
def test_bundled_experiment_is_valid(name: str) -> None:
    config = load_config(name)
    assert name == f"{config.model}_{config.dataset}"
    check_experiment(config)


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("dcnv9", {}, "model 'dcnv9' is not known"),
        ("deepfm", {"hidden": [8]}, "unexpected keyword argument 'hidden'"),
        ("xgboost", {"max_deep": 3}, "model_params: unknown key 'max_deep'"),
    ],
)
def test_check_experiment_rejects_unknown_models_and_params(model: str, params: dict, message: str) -> None:
    config = replace(load_config("deepfm_synthetic"), model=model, model_params=params)
    with pytest.raises(DataError, match=message):
        check_experiment(config)


def test_save_load_round_trip(tmp_path: Path) -> None:
    config = load_config("deepfm_movielens-1m")
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


MINIMAL = "model: deepfm\nfeatures: {sparse: [user_id]}\n"


def test_defaults_and_exponent_without_dot(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 as a string; the loader accepts it as a float.
    config = load_config(_write(tmp_path, MINIMAL + "train: {lr: 1e-3}\n"))
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.patience == ExperimentConfig(model="m", features=config.features).train.patience


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "train: {learning_rate: 0.1}\n",
            r"experiment\.yaml: config\.train: unknown key 'learning_rate'",
        ),
        (MINIMAL + "train: {epochs: ten}\n", r"config\.train\.epochs: expected int, got 'ten'"),
        (MINIMAL + "seed: true\n", r"config\.seed: expected int"),
        (MINIMAL + "train: {epochs: 0}\n", r"train\.epochs: must be at least 1"),
        ("features: {sparse: [user_id]}\n", "missing key 'model'"),
        (MINIMAL + "train: [1, 2\n", r"experiment\.yaml:4: invalid YAML"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_config(_write(tmp_path, text))


def test_unknown_experiment_lists_bundled_ones() -> None:
    with pytest.raises(DataError, match="deepfm_synthetic"):
        load_config("no-such-experiment")
