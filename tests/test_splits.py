"""Split invariants for the three protocols, and the KAR split pinned on the real ML-100K."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from spark_jobs.datasets.synthetic import SyntheticConfig
from spark_jobs.prepare import prepare
from spark_jobs.splits import SplitConfig, cold_item_split, kar_user_split, make_splits
from tests.conftest import NOW, shared_dataset


def test_kar_user_split_is_a_seeded_partition():
    users = list(range(1, 101))
    first = kar_user_split(users, seed=1234, test_users=0.1, val_users=0.1)
    assert first == kar_user_split(list(reversed(users)), seed=1234, test_users=0.1, val_users=0.1)
    counts = pd.Series(first).value_counts().to_dict()
    assert counts == {"train": 81, "val": 9, "test": 10}
    assert first != kar_user_split(users, seed=1, test_users=0.1, val_users=0.1)


def test_cold_item_split_is_a_seeded_8_1_1_partition_of_items():
    items = list(range(1, 101))
    first = cold_item_split(items, seed=1234, val_items=0.1, test_items=0.1)
    assert first == cold_item_split(list(reversed(items)), seed=1234, val_items=0.1, test_items=0.1)
    assert pd.Series(first).value_counts().to_dict() == {"train": 80, "val": 10, "test": 10}
    assert first != cold_item_split(items, seed=1, val_items=0.1, test_items=0.1)


def _interactions(spark, n_users: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for user in range(1, n_users + 1):
        n = int(rng.integers(3, 70))
        offsets = np.sort(rng.integers(0, 90 * 86400, size=n))
        offsets[1] = offsets[0]  # a same-second tie, as in real logs
        items = rng.choice(500, size=n, replace=False) + 1
        for offset, item in zip(offsets, items, strict=True):
            rating = float(rng.integers(1, 6))
            rows.append((user, int(item), rating, int(rating > 3), start + timedelta(seconds=int(offset))))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "label", "event_timestamp"])
    return spark.createDataFrame(frame)


def _collect(splits):
    return splits.samples.toPandas(), splits.history.toPandas(), splits.cutoffs.toPandas()


@pytest.mark.spark
@pytest.mark.parametrize("protocol", ["kar", "time"])
def test_split_invariants(spark, protocol):
    interactions = _interactions(spark)
    config = SplitConfig(protocol=protocol, test_users=0.25, val_users=0.2)
    samples, history, cutoffs = _collect(make_splits(interactions, config))
    everything = interactions.toPandas()
    # Every interaction is either history or a sample, never both.
    assert len(samples) + len(history) == len(everything)
    # Samples come after the cutoff: later in (timestamp, item_id) order, never earlier in time.
    joined = samples.merge(cutoffs, on="user_id", how="left")
    with_cutoff = joined.dropna(subset=["knowledge_cutoff"])
    assert (with_cutoff["event_timestamp"] >= with_cutoff["knowledge_cutoff"]).all()
    last_hist = history.groupby("user_id")["position"].max()
    first_sample = (
        samples.merge(
            everything.sort_values(["user_id", "event_timestamp", "item_id"]).assign(
                position=lambda d: d.groupby("user_id").cumcount()
            ),
            on=["user_id", "item_id"],
        )
        .groupby("user_id")["position"]
        .min()
    )
    common = last_hist.index.intersection(first_sample.index)
    assert (first_sample[common] > last_hist[common]).all()
    # History size is min((n_eligible + 1) // 2, 30).
    assert (cutoffs["n_history"] <= 30).all()
    # Behaviour feature: at most 10 previous items, all strictly before in the user's sequence.
    assert samples["hist_item_ids"].map(len).max() <= 10
    if protocol == "kar":
        per_user = samples.groupby("user_id")["split"].nunique()
        assert (per_user == 1).all(), "a user appears in two KAR splits"
        n = everything.groupby("user_id").size()
        assert (
            cutoffs.set_index("user_id")["n_history"] == np.minimum((n + 1) // 2, 30)[cutoffs["user_id"]].values
        ).all()
    else:
        bounds = samples.groupby("split")["event_timestamp"].agg(["min", "max"])
        assert (
            bounds.loc["train", "max"]
            < bounds.loc["val", "min"]
            <= bounds.loc["val", "max"]
            < bounds.loc["test", "min"]
        )
        # Knowledge history never reaches into the validation or test period.
        assert history["event_timestamp"].max() < bounds.loc["val", "min"]


@pytest.mark.spark
def test_behaviour_feature_is_previous_items(spark):
    samples, history, _ = _collect(make_splits(_interactions(spark, n_users=3), SplitConfig(protocol="kar")))
    seq = pd.concat(
        [samples[["user_id", "item_id", "event_timestamp"]], history[["user_id", "item_id", "event_timestamp"]]]
    )
    seq = seq.sort_values(["user_id", "event_timestamp", "item_id"])
    for user, group in seq.groupby("user_id"):
        items = group["item_id"].tolist()
        for _, row in samples[samples["user_id"] == user].iterrows():
            pos = items.index(row["item_id"])
            assert list(row["hist_item_ids"]) == items[max(0, pos - 10) : pos]


@pytest.mark.spark
@pytest.mark.slow
def test_kar_protocol_reproduces_reference_numbers_on_ml100k(spark, tmp_path):
    src = shared_dataset("ml-100k")
    summary = prepare(
        spark=spark, dataset="movielens-100k", path=src, out=tmp_path, split=SplitConfig(protocol="kar"), now=NOW
    )
    splits = summary.splits
    assert {s: splits[s]["users"] for s in splits} == {"train": 764, "val": 85, "test": 94}
    assert {s: splits[s]["samples"] for s in splits} == {"train": 64_073, "val": 6_497, "test": 6_707}
    assert {s: splits[s]["label_rate"] for s in splits} == {"train": 0.5366, "val": 0.598, "test": 0.5229}
    assert summary.rows["interactions"] == 100_000
    assert summary.quarantine["interactions"]["rejected"] == 0


@pytest.mark.spark
def test_cold_items_hold_items_out_of_training_and_out_of_every_knowledge_history(spark):
    interactions = _interactions(spark, n_users=20)
    samples, history, cutoffs = _collect(make_splits(interactions, SplitConfig(protocol="cold-items")))
    everything = interactions.toPandas().sort_values(["user_id", "event_timestamp", "item_id"])
    item_split = cold_item_split(everything["item_id"].unique().tolist(), seed=1234, val_items=0.1, test_items=0.1)
    assert len(samples) + len(history) == len(everything)
    # Every sample is in its item's split: a val or test item never trains the ranker.
    assert (samples["split"] == samples["item_id"].map(item_split)).all()
    assert set(samples["split"]) == {"train", "val", "test"}
    # Histories hold train items only: nothing about a held-out item reaches a prompt.
    assert (history["item_id"].map(item_split) == "train").all()
    # The history is the first min((n + 1) // 2, 30) of the user's train-item interactions, in order.
    train_items = everything[everything["item_id"].map(item_split) == "train"]
    for user, group in train_items.groupby("user_id"):
        k = min((len(group) + 1) // 2, 30)
        expected = group["item_id"].head(k).tolist()
        got = history[history["user_id"] == user].sort_values(["event_timestamp", "item_id"])["item_id"].tolist()
        assert got == expected, user
    last = history.groupby("user_id")["event_timestamp"].max()
    assert cutoffs.set_index("user_id")["knowledge_cutoff"].to_dict() == last.to_dict()
    # Train samples come after their user's cutoff (held-out ones may precede it and then join no knowledge).
    train = samples[samples["split"] == "train"].merge(cutoffs, on="user_id")
    assert (train["event_timestamp"] >= train["knowledge_cutoff"]).all()


@pytest.mark.spark
def test_prepare_with_cold_items_passes_its_gates_and_reports_items_per_split(spark, tmp_path):
    config = SyntheticConfig(n_users=40, n_items=60, mean_interactions=25)
    split = SplitConfig(protocol="cold-items")
    summary = prepare(spark=spark, dataset="synthetic", out=tmp_path, synthetic=config, split=split, now=NOW)
    assert summary.boundaries["protocol"] == "cold-items"
    assert summary.boundaries["items"] == {"train": 48, "val": 6, "test": 6}
    items = {split: stats["items"] for split, stats in summary.splits.items()}
    assert sum(items.values()) <= 60 and items["test"] <= 6 and items["val"] <= 6
    assert all(report["passed"] for report in summary.validation.values())
    assert summary.quarantine.get("samples", {}).get("rejected", 0) == 0


@pytest.mark.spark
def test_rolling_cutoffs_close_every_n_interactions_and_never_split_a_tie(spark):
    interactions = _interactions(spark)
    config = SplitConfig(protocol="rolling", cutoff_every=5)
    samples, history, cutoffs = _collect(make_splits(interactions, config))
    everything = interactions.toPandas().sort_values(["user_id", "event_timestamp", "item_id"])
    assert len(samples) == len(everything)  # every interaction is a sample
    for user, log in everything.groupby("user_id"):
        stamps = log["event_timestamp"].reset_index(drop=True)
        # The N-th, 2N-th, ... interaction closes a cutoff, moved to the last one of its second.
        expected = sorted({int(stamps[stamps == stamps[k - 1]].index.max()) for k in range(5, len(log) + 1, 5)})
        mine = cutoffs[cutoffs["user_id"] == user].sort_values("last_position")
        assert mine["last_position"].tolist() == expected
        assert (mine["n_history"] == mine["last_position"] + 1).all()
        for row in mine.itertuples():
            last_read = stamps[row.last_position]
            assert row.knowledge_cutoff == last_read + pd.Timedelta(microseconds=1)
            # A sample joins (as_of <= its timestamp) only a cutoff that never read it, and every later one can.
            joins = stamps >= row.knowledge_cutoff
            assert joins.tolist() == [i > row.last_position for i in range(len(stamps))]
    read = history.groupby("user_id")["position"].max()
    assert read.to_dict() == cutoffs.groupby("user_id")["last_position"].max().to_dict()


@pytest.mark.spark
def test_rolling_cutoffs_of_a_batch_stay_when_a_later_batch_is_appended(spark):
    interactions = _interactions(spark, n_users=20, seed=3).toPandas()
    boundary = interactions["event_timestamp"].quantile(0.7)
    first = spark.createDataFrame(interactions[interactions["event_timestamp"] < boundary])
    config = SplitConfig(protocol="rolling", cutoff_every=4)
    before = make_splits(first, config).cutoffs.toPandas()
    after = make_splits(spark.createDataFrame(interactions), config).cutoffs.toPandas()
    keys = ["user_id", "knowledge_cutoff", "n_history", "last_position"]
    kept = before.merge(after, on=keys, how="left", indicator=True)["_merge"]
    assert (kept == "both").all()
    assert len(after) > len(before)  # the appended batch added cutoffs
