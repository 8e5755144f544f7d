"""Rankers with knowledge: the adaptor trains jointly, knowledge carries signal, pre-adapted scoring is equal."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


KEREC_FIELDS = ("user_knowledge", "item_knowledge", "kerec_knowledge")


def _vector_folder(root: Path, kind: str, vectors: np.ndarray) -> None:
    from kar.contracts import storage
    from spark_jobs.encoding.schema import vector_table

    n = len(vectors)
    table = vector_table(
        entity_id=pa.array(np.arange(1, n + 1), pa.int64()),
        as_of=pa.array([pd.Timestamp("2024-01-01", tz="UTC")] * n, pa.timestamp("us", tz="UTC")),
        vectors=vectors,
        n_chunks=pa.array([1] * n, pa.int32()),
        text_hash=pa.array([f"h{i}" for i in range(n)]),
        kind=kind,
        model="test",
        created_at_us=0,
    )
    storage.write_parquet(root / kind / "part-0.parquet", table)


def test_kerec_knowledge_is_a_third_expert_group_trained_and_exported_like_the_others(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """``kerec_knowledge`` (LLM-KERec's complementary entities per item) joins a bundled experiment that does not
    list it, gets its own specific experts and gate beside the shared ones, and is exported to ``adapted/kerec``
    (the ``kerec_knowledge_adapted`` view) with scores equal to the raw path."""
    from adaptors.export import export_adapted

    with_kerec = frame.assign(kerec_knowledge=frame["item_knowledge"], has_kerec_knowledge=frame["has_item_knowledge"])
    config = load_config("deepfm_synthetic").with_knowledge(KEREC_FIELDS, adaptor="hea")
    config = replace(config, train=replace(config.train, epochs=2, batch_size=512, num_threads=1))
    assert [f.name for f in config.features.dense] == list(KEREC_FIELDS) and config.knowledge.fields == KEREC_FIELDS
    with pytest.raises(DataError, match="'other_knowledge' is not a knowledge field"):
        load_config("deepfm_synthetic").with_knowledge(("other_knowledge",), adaptor="hea")

    run = tmp_path / "run"
    train_experiment(with_kerec, config, run)
    ranker = load_ranker(run)
    adaptor = ranker.model.adaptor
    assert adaptor.types == KEREC_FIELDS and len(adaptor.shared) == 2
    assert {name: len(experts) for name, experts in adaptor.specific.items()} == dict.fromkeys(KEREC_FIELDS, 2)

    rng = np.random.default_rng(0)
    dim = adaptor.inputs["kerec_knowledge"]
    for kind in ("user", "item", "kerec"):
        _vector_folder(tmp_path / "vectors", kind, rng.standard_normal((4, dim)).astype(np.float32))
    exported = export_adapted(run_dir=run, vectors_dir=tmp_path / "vectors", out=tmp_path / "adapted")
    assert [(e.field, e.path.name, e.rows) for e in exported] == [
        ("user_knowledge", "user", 4), ("item_knowledge", "item", 4), ("kerec_knowledge", "kerec", 4)
    ]  # fmt: skip
    raw = pq.read_table(tmp_path / "vectors" / "kerec")
    adapted = pq.read_table(tmp_path / "adapted" / "kerec")
    with torch.no_grad():
        expected = adaptor.adapt(
            "kerec_knowledge",
            torch.from_numpy(np.stack(raw["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)),
        )
    np.testing.assert_allclose(np.stack(adapted["vector"].to_numpy(zero_copy_only=False)), expected.numpy(), atol=1e-6)

    test = with_kerec[with_kerec["split"] == "test"]
    vectors = torch.from_numpy(ranker.encoder.transform(test)["kerec_knowledge"])
    with torch.no_grad():
        pre = adaptor.adapt("kerec_knowledge", vectors).numpy()
    serving = test.drop(columns=["kerec_knowledge"]).assign(**{adapted_name("kerec_knowledge"): list(pre)})
    np.testing.assert_allclose(ranker.predict(serving), ranker.predict(test), atol=1e-6)
