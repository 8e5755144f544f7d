"""KAR pre-storage: exported adapted vectors equal the adaptor's output, and a ranker scoring from the Feast
online store (adapted views) matches its offline score (raw vectors through the adaptor)."""

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
from typer.testing import CliRunner

from adaptors import AdaptorConfig, load_adaptor
from ctr import load_ranker, train_experiment
from ctr.config import load_config
from ctr.features import DenseField
from kar import store
from kar.cli import app
from kar.errors import DataError
from kar.online import OnlineLookup
from kar.pipeline import run_adapt_export

pytestmark = pytest.mark.spark
DIM, ADAPTED = 384, 32
FIELDS = ("user_knowledge", "item_knowledge")


def _vector_table(ids: list[int], as_of: list[pd.Timestamp], *, kind: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pa.table(
        {
            "entity_id": ids,
            "kind": [kind] * n,
            "as_of": as_of,
            "model": ["test"] * n,
            "dim": [DIM] * n,
            "vector": list(rng.standard_normal((n, DIM)).astype(np.float32)),
            "n_chunks": [1] * n,
            "text_hash": [f"{kind}{i}" for i in ids],
            "has_knowledge": [True] * n,
            "created_at": [pd.Timestamp("2030-01-01", tz="UTC")] * n,
        },
        schema=store.VECTOR_SCHEMA,
    )


@pytest.fixture(scope="module")
def trained(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny prepared folder with vectors for all but one user and all but one item, a DeepFM trained with
    knowledge on its Feast training frame, and the adapted vectors exported and applied."""
    root = tmp_path_factory.mktemp("adapt") / "prepared"
    shutil.copytree(tiny_prepared, root, ignore=shutil.ignore_patterns("feast", "vectors", "adapted"))
    cutoffs = pd.read_parquet(root / "knowledge_cutoffs").sort_values("user_id")
    users = cutoffs.iloc[1:]  # the first user has no knowledge
    items = sorted(pd.read_parquet(root / "items")["item_id"].tolist())[1:]
    for kind, table in {
        "user": _vector_table(users["user_id"].tolist(), users["knowledge_cutoff"].tolist(), kind="user", seed=1),
        "item": _vector_table(items, [pd.Timestamp("2000-01-01", tz="UTC")] * len(items), kind="item", seed=2),
    }.items():
        (root / "vectors" / kind).mkdir(parents=True)
        pq.write_table(table, root / "vectors" / kind / "part-0.parquet")
    store.apply(data_dir=root)
    frame = store.training_frame(data_dir=root)

    config = load_config("deepfm_synthetic")
    features = replace(config.features, dense=tuple(DenseField(name=name) for name in FIELDS))
    config = replace(
        config,
        features=features,
        knowledge=AdaptorConfig(fields=FIELDS, out_dim=ADAPTED, hidden=(16,)),
        train=replace(config.train, epochs=2, batch_size=64, num_threads=1),
    )
    run = root.parent / "run"
    train_experiment(frame, config, run)
    exported = run_adapt_export(run_dir=run, data_dir=root)
    store.apply(data_dir=root)
    return {"root": root, "run": run, "frame": frame, "exported": exported, "no_user": int(cutoffs.iloc[0]["user_id"])}


def test_export_writes_one_adapted_vector_per_entity_and_cutoff(trained: dict) -> None:
    root = trained["root"]
    assert [(t.field, t.dim) for t in trained["exported"]] == [(name, ADAPTED) for name in FIELDS]
    adaptor, _ = load_adaptor(trained["run"])
    for kind, field in zip(("user", "item"), FIELDS, strict=True):
        raw = pq.read_table(root / "vectors" / kind).to_pandas().sort_values("entity_id")
        adapted = pq.read_table(root / "adapted" / kind).to_pandas().sort_values("entity_id")
        assert adapted["entity_id"].tolist() == raw["entity_id"].tolist()
        assert (adapted["as_of"].to_numpy() == raw["as_of"].to_numpy()).all()
        with torch.no_grad():
            expected = adaptor.adapt(field, torch.from_numpy(np.stack(raw["vector"]))).numpy()
        np.testing.assert_allclose(np.stack(adapted["vector"]), expected, atol=1e-6)
        assert set(adapted["dim"]) == {ADAPTED} and adapted["model"].str.startswith("hea@").all()


@pytest.mark.parametrize("online", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_feast_online_vectors_equal_the_adaptor_and_scores_equal_offline(
    trained: dict, online: str, request: pytest.FixtureRequest
) -> None:
    online_store = request.getfixturevalue("redis_server").feast_config() if online == "redis" else None
    feature_store = store.materialize(data_dir=trained["root"], online_store=online_store)
    ranker = load_ranker(trained["run"])
    adaptor = ranker.model.adaptor
    frame = trained["frame"]
    # Online holds each entity's latest knowledge: compare the samples that joined it offline too (each user has
    # one cutoff here), and the user without knowledge (zeros both ways).
    test = frame[frame["has_user_knowledge"] | (frame["user_id"] == trained["no_user"])].head(60)
    assert test["has_user_knowledge"].any() and (~test["has_user_knowledge"]).any()
    assert (~test["has_item_knowledge"]).any()
    offline_scores = ranker.predict(test)

    serving = OnlineLookup(feature_store, service=store.SERVING_SERVICE)
    for user_id, rows in test.groupby("user_id"):
        found = serving.fetch(user_id=int(user_id), item_ids=rows["item_id"].tolist())
        # The online adapted vector is the adaptor's output for the raw vector the training frame joined.
        with torch.no_grad():
            expected = adaptor.adapt("user_knowledge", torch.from_numpy(rows["user_knowledge"].iloc[0][None]))
        np.testing.assert_allclose(found.user["user_knowledge_adapted"], expected[0].numpy(), atol=1e-6)
        assert found.user["has_user_knowledge_adapted"] == bool(rows["has_user_knowledge"].iloc[0])
        for i, hist in enumerate(rows["hist_item_ids"]):
            candidates = found.candidates_frame(hist_item_ids=list(hist))
            scores = ranker.predict(candidates.iloc[[i]])
            np.testing.assert_allclose(scores, offline_scores[test.index.get_loc(rows.index[i])], atol=1e-5)


def test_export_of_a_run_without_knowledge_is_a_clear_error(trained: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("adaptor.*"))
    with pytest.raises(DataError, match=r"no adaptor\.json; train a ranker with a `knowledge:` section"):
        run_adapt_export(run_dir=run, data_dir=trained["root"])


def test_cli_export_reports_each_table(trained: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["adapt", "export", "--run", str(trained["run"]), "--data", str(trained["root"]), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "user_knowledge:" in result.output and f"({ADAPTED}-d)" in result.output
    assert (tmp_path / "item" / "part-0.parquet").is_file()
