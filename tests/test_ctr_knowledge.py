"""Rankers with knowledge: the adaptor trains jointly, knowledge carries signal, pre-adapted scoring is equal."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adaptors import AdaptorConfig
from ctr import load_ranker, train_experiment
from ctr.config import ExperimentConfig, load_config
from ctr.features import DenseField, FeatureSpec, SparseField
from ctr.models import KnowledgeAugmented, adapted_name
from ctr.runs import TORCH_MODEL_FILE
from ctr.testing import planted_frame
from kar.contracts.errors import DataError

KNOWLEDGE = AdaptorConfig(fields=("user_knowledge",), out_dim=8, hidden=(16,))


def _experiment(*, knowledge: bool, adaptor: str = "hea") -> ExperimentConfig:
    config = load_config("deepfm_synthetic")
    # Only the item and (optionally) the knowledge vector: the user's taste group is visible through knowledge
    # alone, so the knowledge run must beat the run without it.
    features = FeatureSpec(
        sparse=(SparseField(name="item_id"),), dense=(DenseField(name="user_knowledge"),) if knowledge else ()
    )
    return replace(
        config,
        features=features,
        knowledge=replace(KNOWLEDGE, adaptor=adaptor) if knowledge else None,
        train=replace(config.train, batch_size=256, lr=1e-2, epochs=8, num_threads=1),
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return planted_frame(n_users=100, n_items=60, n_rows=6000, dense_dim=24, seed=0)


@pytest.fixture(scope="module")
def knowledge_run(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("knowledge")
    return out_dir, train_experiment(frame, _experiment(knowledge=True), out_dir)


def test_knowledge_through_the_adaptor_beats_no_knowledge(
    frame: pd.DataFrame, knowledge_run: tuple[Path, dict], tmp_path: Path
) -> None:
    without = train_experiment(frame, _experiment(knowledge=False), tmp_path)
    with_knowledge = knowledge_run[1]
    assert with_knowledge.test["auc"] > without.test["auc"] + 0.1
    assert with_knowledge.test["auc"] > 0.8


@pytest.mark.parametrize("adaptor", ["mlp", "moe"])
def test_ablation_adaptors_train(frame: pd.DataFrame, adaptor: str, tmp_path: Path) -> None:
    metrics = train_experiment(frame, _experiment(knowledge=True, adaptor=adaptor), tmp_path)
    assert metrics.test["auc"] > 0.8


def test_reloaded_run_has_the_adaptor_and_scores_pre_adapted_vectors_identically(
    frame: pd.DataFrame, knowledge_run: tuple[Path, dict]
) -> None:
    ranker = load_ranker(knowledge_run[0])
    assert isinstance(ranker.model, KnowledgeAugmented)
    assert ranker.config.knowledge == KNOWLEDGE
    test = frame[frame["split"] == "test"]
    raw_scores = ranker.predict(test)

    vectors = torch.from_numpy(ranker.encoder.transform(test)["user_knowledge"])
    with torch.no_grad():
        adapted = ranker.model.adaptor.adapt("user_knowledge", vectors).numpy()
    serving = test.drop(columns=["user_knowledge"]).assign(**{adapted_name("user_knowledge"): list(adapted)})
    np.testing.assert_allclose(ranker.predict(serving), raw_scores, atol=1e-6)


def test_knowledge_field_must_be_a_dense_field() -> None:
    with pytest.raises(DataError, match="'item_knowledge' is not a dense field"):
        replace(_experiment(knowledge=True), knowledge=AdaptorConfig(fields=("item_knowledge",)))


def test_config_round_trips_the_knowledge_section(tmp_path: Path) -> None:
    config = _experiment(knowledge=True)
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_weights_of_another_layout_are_refused_with_the_file_named(
    knowledge_run: tuple[Path, dict], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(knowledge_run[0], run)
    weights = torch.load(run / TORCH_MODEL_FILE, weights_only=True)
    # A parameter under a name this version does not have, as in a DeepFM saved before its first-order
    # weights moved into the embedding tables.
    name = next(name for name in weights if name.endswith("bias"))
    weights[name.replace("bias", "linear.bias")] = weights.pop(name)
    torch.save(weights, run / TORCH_MODEL_FILE)

    with pytest.raises(DataError, match=rf"{TORCH_MODEL_FILE}: these weights do not fit .* retrain"):
        load_ranker(run)
