"""KAR pre-storage: exported adapted vectors equal the adaptor's output, and a ranker scoring from the Feast
online store (adapted views) matches its offline score (raw vectors through the adaptor)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from adaptors import load_adaptor
from ctr import load_ranker
from kar.cli import app
from kar.contracts.errors import DataError
from kar.pipeline import run_adapt_export
from kar.serving import store
from kar.serving.online import OnlineLookup
from tests.conftest import ADAPTED_DIM, KNOWLEDGE_FIELDS

pytestmark = pytest.mark.spark
ADAPTED, FIELDS = ADAPTED_DIM, KNOWLEDGE_FIELDS


def test_export_writes_one_adapted_vector_per_entity_and_cutoff(knowledge_run: dict) -> None:
    root = knowledge_run["root"]
    assert [(t.field, t.dim) for t in knowledge_run["exported"]] == [(name, ADAPTED) for name in FIELDS]
    adaptor, _ = load_adaptor(knowledge_run["run"])
    for kind, field in zip(("user", "item"), FIELDS, strict=True):
        raw = pq.read_table(root / "vectors" / kind).to_pandas().sort_values("entity_id")
        adapted = pq.read_table(root / "adapted" / kind).to_pandas().sort_values("entity_id")
        assert adapted["entity_id"].tolist() == raw["entity_id"].tolist()
        assert (adapted["as_of"].to_numpy() == raw["as_of"].to_numpy()).all()
        with torch.no_grad():
            expected = adaptor.adapt(field, torch.from_numpy(np.stack(raw["vector"]))).numpy()
        np.testing.assert_allclose(np.stack(adapted["vector"]), expected, atol=1e-6)
        assert set(adapted["dim"]) == {ADAPTED} and adapted["model"].str.startswith("hea@").all()


def test_export_reads_and_writes_file_uris_with_a_space(knowledge_run: dict, tmp_path: Path) -> None:
    root = knowledge_run["root"]
    shutil.copytree(root / "vectors", tmp_path / "with space" / "vectors")
    uri = f"file://{tmp_path}/with space"
    exported = run_adapt_export(
        run_dir=knowledge_run["run"], data_dir=root, vectors_dir=f"{uri}/vectors", out=f"{uri}/adapted"
    )
    assert [str(t.path) for t in exported] == [f"{uri}/adapted/user", f"{uri}/adapted/item"]
    for kind in ("user", "item"):
        written = pq.read_table(tmp_path / "with space" / "adapted" / kind).to_pandas().sort_values("entity_id")
        default = pq.read_table(root / "adapted" / kind).to_pandas().sort_values("entity_id")
        np.testing.assert_array_equal(np.stack(written["vector"]), np.stack(default["vector"]))
    assert sorted(p.name for p in (tmp_path / "with space" / "adapted").iterdir()) == ["item", "user"]


@pytest.mark.parametrize("online", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_feast_online_vectors_equal_the_adaptor_and_scores_equal_offline(
    knowledge_run: dict, online: str, request: pytest.FixtureRequest
) -> None:
    online_store = request.getfixturevalue("redis_server").feast_config() if online == "redis" else None
    feature_store = store.materialize(data_dir=knowledge_run["root"], online_store=online_store)
    ranker = load_ranker(knowledge_run["run"])
    adaptor = ranker.model.adaptor
    frame = knowledge_run["frame"]
    # Online holds each entity's latest knowledge: compare the samples that joined it offline too (each user has
    # one cutoff here), and the user without knowledge (zeros both ways).
    test = frame[frame["has_user_knowledge"] | (frame["user_id"] == knowledge_run["no_user"])].head(60)
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


def test_export_of_a_run_without_knowledge_is_a_clear_error(knowledge_run: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(knowledge_run["run"], run, ignore=shutil.ignore_patterns("adaptor.*"))
    with pytest.raises(DataError, match=r"no adaptor\.json; train a ranker with a `knowledge:` section"):
        run_adapt_export(run_dir=run, data_dir=knowledge_run["root"])


def test_cli_export_reports_each_table(knowledge_run: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "adapt",
            "export",
            "--run",
            str(knowledge_run["run"]),
            "--data",
            str(knowledge_run["root"]),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "user_knowledge:" in result.output and f"({ADAPTED}-d)" in result.output
    assert (tmp_path / "item" / "part-0.parquet").is_file()


def test_a_run_with_kerec_knowledge_exports_it_and_serves_the_offline_scores(
    knowledge_run: dict, tmp_path: Path
) -> None:
    """LLM-KERec end to end: ``vectors/kerec`` → the ``kerec_knowledge`` view in training → a ranker with a third
    expert group → ``adapted/kerec`` → ``kerec_knowledge_adapted`` in serving → online scores = offline scores."""
    from dataclasses import replace

    import pandas as pd

    from ctr import train_experiment
    from ctr.config import load_config
    from tests.conftest import _vector_table

    root = tmp_path / "prepared"
    shutil.copytree(knowledge_run["root"], root, ignore=shutil.ignore_patterns("feast", "adapted"))
    items = sorted(pd.read_parquet(root / "items")["item_id"].tolist())[2:]  # two items without kerec knowledge
    kerec = _vector_table(items, [pd.Timestamp("2000-01-01", tz="UTC")] * len(items), kind="kerec", seed=7)
    (root / "vectors" / "kerec").mkdir()
    pq.write_table(kerec, root / "vectors" / "kerec" / "part-0.parquet")
    store.apply(data_dir=root)
    frame = store.training_frame(data_dir=root)
    assert frame["has_kerec_knowledge"].any() and (~frame["has_kerec_knowledge"]).any()

    fields = (*FIELDS, "kerec_knowledge")
    config = load_config("deepfm_synthetic").with_knowledge(fields, adaptor="hea")
    config = replace(config, train=replace(config.train, epochs=1, batch_size=64, num_threads=1))
    run = tmp_path / "run"
    train_experiment(frame, config, run)
    exported = run_adapt_export(run_dir=run, data_dir=root)
    assert [t.field for t in exported] == list(fields) and (root / "adapted" / "kerec").is_dir()
    store.apply(data_dir=root)
    feature_store = store.materialize(data_dir=root)
    serving = [p.name for p in feature_store.get_feature_service(store.SERVING_SERVICE).feature_view_projections]
    assert "kerec_knowledge_adapted" in serving

    ranker = load_ranker(run)
    test = frame[frame["has_user_knowledge"]].head(40)
    assert test["has_kerec_knowledge"].any() and (~test["has_kerec_knowledge"]).any()
    offline_scores = ranker.predict(test)
    lookup = OnlineLookup(feature_store, service=store.SERVING_SERVICE)
    for user_id, rows in test.groupby("user_id"):
        found = lookup.fetch(user_id=int(user_id), item_ids=rows["item_id"].tolist())
        assert found.items["has_kerec_knowledge_adapted"].tolist() == rows["has_kerec_knowledge"].tolist()
        for i, hist in enumerate(rows["hist_item_ids"]):
            scores = ranker.predict(found.candidates_frame(hist_item_ids=list(hist)).iloc[[i]])
            np.testing.assert_allclose(scores, offline_scores[test.index.get_loc(rows.index[i])], atol=1e-5)
