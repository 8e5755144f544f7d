"""``kar bench quality``: variant configs, the paired-by-seed summary, and one small end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kar.bench.quality import (
    DEFAULT_VARIANTS,
    VARIANTS,
    Job,
    bench_quality,
    item_slices,
    job_config,
    slice_scores,
    summarize,
    variants_for,
)
from kar.contracts.errors import DataError


def _variant(name: str):
    return next(v for v in VARIANTS if v.name == name)


def _job(model: str, variant: str, seed: int = 0) -> Job:
    return Job(model=model, variant=_variant(variant), seed=seed, dataset="movielens-100k", run_dir=Path("x"))


def test_variant_configs_keep_only_the_chosen_knowledge() -> None:
    none = job_config(_job("deepfm", "none", seed=2))
    assert none.knowledge is None and [f.name for f in none.features.dense] == []
    assert none.seed == 2 and none.train.num_threads == 1
    user = job_config(_job("wukong", "user"))
    assert user.knowledge.fields == ("user_knowledge",) and user.knowledge.adaptor == "hea"
    assert [f.name for f in user.features.dense] == ["user_knowledge"]
    moe = job_config(_job("dcnv2", "both-moe"))
    assert moe.knowledge.fields == ("user_knowledge", "item_knowledge") and moe.knowledge.expert_counts == (4, 0)
    # Trees read raw vectors: no adaptor, and no adaptor ablations.
    xgb = job_config(_job("xgboost", "both"))
    assert xgb.knowledge is None and [f.name for f in xgb.features.dense] == ["user_knowledge", "item_knowledge"]
    assert [v.name for v in variants_for("xgboost", [v.name for v in VARIANTS])] == [
        "none", "both", "text", "canary", "both+kerec"
    ]  # fmt: skip


def test_both_plus_kerec_adds_a_third_expert_group_and_runs_only_when_named() -> None:
    kerec = job_config(_job("deepfm", "both+kerec"))
    fields = ("user_knowledge", "item_knowledge", "kerec_knowledge")
    assert kerec.knowledge.fields == fields and kerec.knowledge.adaptor == "hea"
    assert [f.name for f in kerec.features.dense] == list(fields)
    assert _variant("both+kerec").knowledge == "both+kerec" and _variant("both").knowledge == "both"
    assert "both+kerec" not in DEFAULT_VARIANTS and set(DEFAULT_VARIANTS) == {v.name for v in VARIANTS} - {"both+kerec"}
    xgb = job_config(_job("xgboost", "both+kerec"))
    assert xgb.knowledge is None and [f.name for f in xgb.features.dense] == list(fields)


def test_summary_pairs_the_auc_change_by_seed() -> None:
    rows = [
        {"model": "m", "variant": "none", "seed": 0, "test_auc": 0.70, "test_logloss": 0.6},
        {"model": "m", "variant": "none", "seed": 1, "test_auc": 0.72, "test_logloss": 0.6},
        {"model": "m", "variant": "both", "seed": 0, "test_auc": 0.71, "test_logloss": 0.5},
        {"model": "m", "variant": "both", "seed": 1, "test_auc": 0.74, "test_logloss": 0.5},
    ]
    both = next(r for r in summarize(rows) if r["variant"] == "both")
    assert both["seeds"] == 2
    assert both["test_auc_mean"] == pytest.approx(0.725)
    assert both["delta_auc_mean"] == pytest.approx(0.015)
    assert both["delta_auc_std"] == pytest.approx(np.std([0.01, 0.02], ddof=1))


def test_test_items_are_sliced_by_their_training_samples() -> None:
    train = [1] * 60 + [2] * 20 + [3] * 5
    frame = pd.DataFrame(
        {
            "item_id": [*train, 1, 2, 3, 4, 4],
            "split": ["train"] * len(train) + ["test"] * 5,
        }
    )
    assert item_slices(frame).tolist() == ["head", "torso", "tail", "cold", "cold"]


def test_slice_scores_are_per_slice_and_say_when_a_slice_has_one_class() -> None:
    labels = np.array([1, 0, 1, 0, 1, 1])
    probs = np.array([0.9, 0.2, 0.6, 0.7, 0.8, 0.3])
    slices = np.array(["head", "head", "head", "head", "cold", "cold"])
    scores = slice_scores(labels, probs, slices)
    assert set(scores) == {"head", "cold"} and scores["head"]["n"] == 4
    assert scores["head"]["test_auc"] == pytest.approx(0.75)
    assert scores["cold"]["test_auc"] is None and scores["cold"]["test_logloss"] > 0


def test_summary_pairs_the_change_within_each_slice() -> None:
    rows = [
        {"model": "m", "variant": v, "seed": s, "slice": sl, "n": 10, "test_auc": auc, "test_logloss": 0.6}
        for v, s, sl, auc in [
            ("none", 0, "all", 0.70), ("both", 0, "all", 0.71),
            ("none", 0, "cold", 0.50), ("both", 0, "cold", 0.58),
            ("none", 0, "tail", None), ("both", 0, "tail", None),
        ]
    ]  # fmt: skip
    summary = {(r["variant"], r["slice"]): r for r in summarize(rows)}
    assert summary[("both", "all")]["delta_auc_mean"] == pytest.approx(0.01)
    assert summary[("both", "cold")]["delta_auc_mean"] == pytest.approx(0.08)
    assert summary[("both", "tail")]["test_auc_mean"] is None and summary[("both", "tail")]["delta_auc_mean"] is None


def test_unknown_dataset_or_variant_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset 'ml-20m'"):
        bench_quality(dataset="ml-20m", out=tmp_path)
    with pytest.raises(DataError, match="unknown model or variant 'tiny'"):
        bench_quality(dataset="movielens-100k", out=tmp_path, variants=["tiny"])


@pytest.mark.spark
def test_small_run_writes_quality_json_and_plot(tiny_prepared: Path, tmp_path: Path) -> None:
    from tests.conftest import _vector_table

    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data, ignore=shutil.ignore_patterns("feast", "vectors", "adapted"))
    summary = json.loads((data / "summary.json").read_text())
    (data / "summary.json").write_text(json.dumps({**summary, "dataset": "movielens-100k"}))
    cutoffs = pd.read_parquet(data / "knowledge_cutoffs")
    items = sorted(pd.read_parquet(data / "items")["item_id"].tolist())
    tables = {
        "user": _vector_table(cutoffs["user_id"].tolist(), cutoffs["knowledge_cutoff"].tolist(), kind="user", seed=1),
        "item": _vector_table(items, [pd.Timestamp("2000-01-01", tz="UTC")] * len(items), kind="item", seed=2),
    }
    for kind, table in tables.items():
        (data / "vectors" / kind).mkdir(parents=True)
        pq.write_table(table, data / "vectors" / kind / "part-0.parquet")

    out = tmp_path / "bench"
    result = bench_quality(
        dataset="movielens-100k", out=out, data_dir=data, models=["deepfm"], variants=["none", "both"], seeds=2, jobs=1
    )
    written = json.loads((out / "quality.json").read_text())
    assert written["dataset"] == "movielens-100k" and (out / "quality.png").stat().st_size > 0
    keys = {"model", "knowledge", "adaptor", "seed", "slice", "n", "test_auc", "test_logloss"}
    assert all(keys <= set(row) for row in written["results"])
    whole = [r for r in written["results"] if r["slice"] == "all"]
    # The slices partition the test set, and the whole-set row is the run's own metrics.
    for run in {r["run"] for r in written["results"]}:
        parts = [r["n"] for r in written["results"] if r["run"] == run and r["slice"] != "all"]
        assert sum(parts) == next(r["n"] for r in whole if r["run"] == run)
    assert sorted((r["knowledge"], r["adaptor"], r["seed"]) for r in whole) == [
        ("both", "hea", 0),
        ("both", "hea", 1),
        ("none", "none", 0),
        ("none", "none", 1),
    ]
    assert written["knowledge_coverage"]["llm"]["train"]["user_knowledge"] > 0
    assert [(r["variant"], r["slice"]) for r in result["summary"]].count(("both", "all")) == 1
    # A rerun reuses the finished runs (same configs) and gives the same numbers.
    again = bench_quality(
        dataset="movielens-100k", out=out, data_dir=data, models=["deepfm"], variants=["none", "both"], seeds=2, jobs=1
    )
    assert [r["test_auc"] for r in again["results"]] == [r["test_auc"] for r in result["results"]]
    # both+kerec on a folder without LLM-KERec vectors would train its third group on zeros: refused.
    with pytest.raises(DataError, match=r"no training sample has kerec_knowledge; .*`--kind kerec`"):
        bench_quality(dataset="movielens-100k", out=tmp_path / "nokerec", data_dir=data, variants=["both+kerec"])
    # With them (item-keyed, as `kar encode --kind kerec` writes), the variant trains and is reported.
    kerec = _vector_table(items, [pd.Timestamp("2000-01-01", tz="UTC")] * len(items), kind="kerec", seed=3)
    (data / "vectors" / "kerec").mkdir(parents=True)
    pq.write_table(kerec, data / "vectors" / "kerec" / "part-0.parquet")
    with_kerec = bench_quality(
        dataset="movielens-100k", out=tmp_path / "kerec", data_dir=data, models=["deepfm"], variants=["both+kerec"],
        seeds=1, jobs=1,
    )  # fmt: skip
    assert with_kerec["knowledge_coverage"]["llm"]["train"]["kerec_knowledge"] > 0
    assert {(r["variant"], r["knowledge"], r["adaptor"]) for r in with_kerec["results"]} == {
        ("both+kerec", "both+kerec", "hea")
    }
    shutil.rmtree(data / "vectors" / "kerec")
    # LLM variants on a folder without vectors would train on zeros: refused, naming the folder.
    shutil.rmtree(data / "vectors" / "user")
    with pytest.raises(DataError, match=r"vectors: no training sample has user_knowledge; run `kar knowledge`"):
        bench_quality(dataset="movielens-100k", out=tmp_path / "empty", data_dir=data, variants=["user"], seeds=1)


@pytest.mark.spark
def test_text_control_and_canary_run_without_any_llm_run(tiny_prepared: Path, tmp_path: Path) -> None:
    """No knowledge/ and no vectors/: the prompts are built from the prepared tables and encoded; the canary's
    user prompts see each user's whole log, test items included, and join every sample."""
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data, ignore=shutil.ignore_patterns("feast", "vectors", "adapted", "knowledge"))
    out = tmp_path / "bench"
    variants = ["none", "text", "canary"]
    result = bench_quality(dataset="synthetic", out=out, data_dir=data, models=["deepfm"], variants=variants, seeds=1)
    prompts = pd.read_parquet(out / "control" / "prompts" / "user")
    assert len(prompts) == pd.read_parquet(data / "knowledge_cutoffs")["user_id"].nunique()
    assert (prompts["status"] == "ok").all() and prompts["prompt"].str.len().min() > 0
    assert result["knowledge_coverage"]["text"]["train"]["user_knowledge"] > 0
    assert sorted(r["variant"] for r in result["results"] if r["slice"] == "all") == ["canary", "none", "text"]

    samples = pd.read_parquet(data / "samples")
    test_pairs = set(zip(*samples.loc[samples["split"] == "test", ["user_id", "item_id"]].T.to_numpy(), strict=True))
    leaked = pd.read_parquet(out / "canary" / "knowledge_history")
    honest = pd.read_parquet(data / "knowledge_history")
    assert test_pairs <= set(zip(leaked["user_id"], leaked["item_id"], strict=True))
    assert not test_pairs & set(zip(honest["user_id"], honest["item_id"], strict=True))
    assert result["knowledge_coverage"]["leak"]["test"]["user_knowledge"] == 1.0
    stamped = pd.read_parquet(out / "canary" / "prompts" / "user-restamped")["as_of"]
    assert (stamped < pd.read_parquet(data / "interactions")["event_timestamp"].min()).all()
    # Synthetic data: the planted themes are probed in the encoded item vectors and in each run's adapted ones.
    probes = result["theme_probe"]
    assert set(probes["encoded"]) == {"text", "leak"} and probes["encoded"]["text"]["items"] == 12
    assert [(r["model"], r["variant"]) for r in probes["adapted"]] == [("deepfm", "canary"), ("deepfm", "text")]


@pytest.mark.spark
def test_synthetic_data_is_generated_cold_items_and_reused_for_the_same_config(spark, tmp_path: Path) -> None:
    from kar.bench.quality import SYNTHETIC_CONFIG_FILE, generated_folder
    from spark_jobs.datasets.synthetic import SyntheticConfig

    config = SyntheticConfig(n_users=12, n_items=16, min_interactions=3, mean_interactions=5, theme_weight=0.0)
    steps: list[str] = []
    folder = generated_folder(tmp_path / "data", config, progress=steps.append)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["dataset"] == "synthetic" and summary["split"]["protocol"] == "cold-items"
    assert json.loads((folder / SYNTHETIC_CONFIG_FILE).read_text())["theme_weight"] == 0.0
    steps.clear()
    assert generated_folder(tmp_path / "data", config, progress=steps.append) == folder and steps == []
