"""Train/val/test splits and per-user knowledge histories.

Four protocols:

* ``time`` (default): one global time split, train < t1 <= val < t2 <= test, with t1/t2 at timestamp
  quantiles. A user's knowledge history is taken from their train-period interactions only, so knowledge
  never sees validation or test behaviour.
* ``kar``: the protocol of KAR (Xi et al.). Per user, in (timestamp, item_id) order, the first
  ``min((n + 1) // 2, 30)`` interactions are the knowledge history (prompt input only) and the rest become
  CTR samples. Users are split 9:1 into train/test with ``numpy.random.RandomState(seed)``, and — unlike KAR,
  which selected models on test AUC — a validation set is carved from the train users with the same rng.
* ``cold-items``: where knowledge should pay, items with no training interaction. Items (not users) are split
  8:1:1 into train/val/test with ``numpy.random.RandomState(seed)``, and every interaction with a val or test
  item is a val or test sample. A user's knowledge history is the first ``min((n + 1) // 2, 30)`` of their
  interactions with *train* items, so nothing about a held-out item reaches a prompt. A held-out item's sample
  can precede its user's cutoff: it then joins no user knowledge (point in time), and the "sample after the
  cutoff" rule applies to train samples only.

* ``rolling``: knowledge that is refreshed as users keep interacting, the protocol of ``kar refresh``. Every
  interaction is a CTR sample, split by time as in ``time``. A user's knowledge is regenerated every
  ``cutoff_every`` interactions: the N-th, 2N-th, ... interaction in sequence order closes a cutoff, moved to the
  last interaction of its timestamp so a cutoff never splits a tie. The cutoff's history is everything up to it
  (the prompt shows the last ``history_max``), and the cutoff is stamped one microsecond after that last
  interaction, so a sample joins (point in time, ``as_of <= event_timestamp``) only knowledge that never read
  it. A cutoff depends only on the user's log up to it: appending a later batch of interactions adds cutoffs
  and never moves one, so a refresh and a rebuild on all data agree.

In all of them, a sample's behaviour feature is the user's previous ``behaviour_len`` items (knowledge-history
items included: a production ranker sees all past behaviour), and the knowledge cutoff is the timestamp of
the last history interaction. Ties in timestamp are common (948 samples on ML-100K share the second of
their user's cutoff), so "after the cutoff" means later in sequence order and ``ts >= cutoff``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from kar.contracts.errors import DataError

Protocol = Literal["time", "kar", "cold-items", "rolling"]
PROTOCOLS: tuple[str, ...] = ("time", "kar", "cold-items", "rolling")


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """How to split prepared interactions.

    Attributes:
        protocol: ``time``, ``kar``, ``cold-items`` or ``rolling`` (see module docstring).
        seed: Seed of the KAR user permutation and of the cold-items item permutation.
        history_max: Cap on the knowledge history length.
        behaviour_len: Length of the previous-items behaviour feature.
        test_users: Share of users held out for test (``kar``).
        val_users: Share of train users used for validation (``kar``).
        t1_quantile: Timestamp quantile that ends train (``time``).
        t2_quantile: Timestamp quantile that ends validation (``time``).
        val_items: Share of items held out for validation (``cold-items``).
        test_items: Share of items held out for test (``cold-items``).
        cutoff_every: Interactions between two knowledge cutoffs of a user (``rolling``).
    """

    protocol: Protocol = "time"
    seed: int = 1234
    history_max: int = 30
    behaviour_len: int = 10
    test_users: float = 0.1
    val_users: float = 0.1
    t1_quantile: float = 0.8
    t2_quantile: float = 0.9
    val_items: float = 0.1
    test_items: float = 0.1
    cutoff_every: int = 20

    def __post_init__(self) -> None:
        if self.cutoff_every < 1:
            raise DataError(f"cutoff_every must be at least 1, got {self.cutoff_every}")


@dataclass(frozen=True)
class Splits:
    """Outputs of a split: CTR samples, the interactions kept for prompts, and per-user cutoffs.

    All three come from one windowed sequence, cached so it is computed once for the three writes; call
    :meth:`release` once they are written.
    """

    samples: DataFrame
    history: DataFrame
    cutoffs: DataFrame
    boundaries: dict[str, object]
    sequence: DataFrame | None = None

    def release(self) -> None:
        if self.sequence is not None:
            self.sequence.unpersist()


def kar_user_split(user_ids: Sequence[int], *, seed: int, test_users: float, val_users: float) -> dict[int, str]:
    """Assign each user to train/val/test exactly as the KAR protocol with a carved-out validation set.

    ``perm = rng.permutation(sorted ids)``; the first ``round((1 - test) * n)`` are train, the rest test;
    then ``perm2 = rng.permutation(sorted(train))`` with the same rng and the first ``round(val * n_train)``
    of it become validation.
    """
    users = np.array(sorted(user_ids), dtype=np.int64)
    rng = np.random.RandomState(seed)
    perm = rng.permutation(users)
    n_train = round((1.0 - test_users) * len(users))
    train, test = perm[:n_train], perm[n_train:]
    perm2 = rng.permutation(np.sort(train))
    val = set(perm2[: round(val_users * n_train)].tolist())
    assignment = {int(u): "test" for u in test}
    assignment.update({int(u): ("val" if int(u) in val else "train") for u in train})
    return assignment


def cold_item_split(item_ids: Sequence[int], *, seed: int, val_items: float, test_items: float) -> dict[int, str]:
    """Assign each item to train/val/test for the cold-items protocol.

    ``perm = RandomState(seed).permutation(sorted ids)``: the first ``round((1 - val - test) * n)`` are train,
    the next ``round(val * n)`` val, the rest test.
    """
    items = np.array(sorted(item_ids), dtype=np.int64)
    perm = np.random.RandomState(seed).permutation(items)
    n_train = round((1.0 - val_items - test_items) * len(items))
    n_val = round(val_items * len(items))
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (len(items) - n_train - n_val)
    return {int(item): name for item, name in zip(perm, names, strict=True)}


def _sequenced(interactions: DataFrame, behaviour_len: int) -> DataFrame:
    order = Window.partitionBy("user_id").orderBy("event_timestamp", "item_id")
    previous = order.rowsBetween(-behaviour_len, -1)
    return interactions.withColumns(
        {
            "position": F.row_number().over(order) - 1,
            "hist_item_ids": F.collect_list("item_id").over(previous),
        }
    )


def _history_length(eligible: Column, history_max: int) -> Column:
    """Per user, ``min((n_eligible + 1) // 2, history_max)``: how many interactions the history keeps."""
    n_eligible = F.sum(eligible.cast("int")).over(Window.partitionBy("user_id"))
    return F.least(F.floor((n_eligible + 1) / 2), F.lit(history_max)).cast("int")


def _with_history_flag(seq: DataFrame, eligible: Column, history_max: int) -> DataFrame:
    """Mark the first ``min((n_eligible + 1) // 2, history_max)`` interactions of each user as history (the
    eligible ones come first in sequence order)."""
    return seq.withColumn("is_history", F.col("position") < _history_length(eligible, history_max))


def _split_frame(spark: SparkSession, assignment: dict[int, str], *, key: str) -> tuple[DataFrame, dict[str, int]]:
    """The ``key -> <entity>_split`` assignment as a broadcastable frame, and the entities per split."""
    column = f"{key.removesuffix('_id')}_split"
    schema = StructType([StructField(key, LongType(), False), StructField(column, StringType(), False)])
    counts = {name: sum(1 for s in assignment.values() if s == name) for name in ("train", "val", "test")}
    return spark.createDataFrame(sorted(assignment.items()), schema), counts


def _outputs(seq: DataFrame, split_col: Column, boundaries: dict[str, object]) -> Splits:
    # Three writes read it: without the cache, Spark sorts and windows every user's log three times.
    seq = seq.withColumn("split", split_col).persist()
    history = seq.where("is_history").select("user_id", "item_id", "rating", "label", "event_timestamp", "position")
    cutoffs = history.groupBy("user_id").agg(
        F.max("event_timestamp").alias("knowledge_cutoff"),
        F.count("*").cast("int").alias("n_history"),
        F.max("position").cast("int").alias("last_position"),
    )
    samples = seq.where(~F.col("is_history")).select(
        "user_id", "item_id", "rating", "label", "event_timestamp", "split", "hist_item_ids"
    )
    return Splits(samples=samples, history=history, cutoffs=cutoffs, boundaries=boundaries, sequence=seq)


def split_kar(interactions: DataFrame, config: SplitConfig) -> Splits:
    """KAR protocol: per-user history/sample cut, users split train/val/test by a seeded permutation."""
    spark = interactions.sparkSession
    user_ids = [row.user_id for row in interactions.select("user_id").distinct().collect()]
    if len(user_ids) < 3:
        raise DataError(f"kar protocol needs at least 3 users to split, found {len(user_ids)}")
    assignment = kar_user_split(user_ids, seed=config.seed, test_users=config.test_users, val_users=config.val_users)
    user_split, counts = _split_frame(spark, assignment, key="user_id")
    seq = _sequenced(interactions, config.behaviour_len)
    seq = _with_history_flag(seq, F.lit(True), config.history_max).join(F.broadcast(user_split), "user_id")
    return _outputs(seq, F.col("user_split"), {"protocol": "kar", "seed": config.seed, "users": counts})


def split_cold_items(interactions: DataFrame, config: SplitConfig) -> Splits:
    """Cold-items protocol: items split train/val/test by a seeded permutation, histories from train items only."""
    spark = interactions.sparkSession
    item_ids = [row.item_id for row in interactions.select("item_id").distinct().collect()]
    if len(item_ids) < 3:
        raise DataError(f"cold-items protocol needs at least 3 items to split, found {len(item_ids)}")
    assignment = cold_item_split(item_ids, seed=config.seed, val_items=config.val_items, test_items=config.test_items)
    item_split, counts = _split_frame(spark, assignment, key="item_id")
    seq = _sequenced(interactions, config.behaviour_len).join(F.broadcast(item_split), "item_id")
    eligible = F.col("item_split") == "train"
    # The history is the first k of the user's train-item interactions, however held-out ones interleave: rank
    # among the eligible rows, not by position.
    order = Window.partitionBy("user_id").orderBy("event_timestamp", "item_id")
    before = F.coalesce(F.sum(eligible.cast("int")).over(order.rowsBetween(Window.unboundedPreceding, -1)), F.lit(0))
    seq = seq.withColumn("is_history", eligible & (before < _history_length(eligible, config.history_max)))
    return _outputs(seq, F.col("item_split"), {"protocol": "cold-items", "seed": config.seed, "items": counts})


def _time_boundaries(interactions: DataFrame, config: SplitConfig) -> tuple[Column, Column, dict[str, object]]:
    """The ``t1``/``t2`` timestamp quantiles as literals, the split column they define, and their ISO forms."""
    seconds = interactions.select(F.unix_micros("event_timestamp").alias("us"))
    t1_us, t2_us = seconds.approxQuantile("us", [config.t1_quantile, config.t2_quantile], 0.0)
    t1, t2 = F.timestamp_micros(F.lit(int(t1_us))), F.timestamp_micros(F.lit(int(t2_us)))
    ts = F.col("event_timestamp")
    split_col = F.when(ts < t1, "train").when(ts < t2, "val").otherwise("test")
    first = interactions.sparkSession.range(1).select(t1.alias("t1"), t2.alias("t2")).first()
    return ts < t1, split_col, {"t1": first.t1.isoformat(), "t2": first.t2.isoformat()}


def split_time(interactions: DataFrame, config: SplitConfig) -> Splits:
    """Global time split at timestamp quantiles; history only from the train period."""
    in_train, split_col, boundaries = _time_boundaries(interactions, config)
    seq = _with_history_flag(_sequenced(interactions, config.behaviour_len), in_train, config.history_max)
    return _outputs(seq, split_col, {"protocol": "time", **boundaries})


def rolling_cutoffs(seq: DataFrame, cutoff_every: int) -> DataFrame:
    """Per user, a cutoff after every ``cutoff_every`` interactions of ``seq`` (``_sequenced`` rows).

    Returns:
        ``user_id, knowledge_cutoff, n_history, last_position``: the cutoff is one microsecond after the last
        interaction read, ``last_position`` that interaction's position (moved to the last one sharing its
        timestamp) and ``n_history`` the interactions read.
    """
    marks = seq.where((F.col("position") + 1) % cutoff_every == 0).select("user_id", "event_timestamp")
    # A cutoff closes at the last interaction of its second: a tied one is read with it, never after it.
    ends = seq.groupBy("user_id", "event_timestamp").agg(F.max("position").alias("last_position"))
    closed = marks.join(ends, ["user_id", "event_timestamp"]).distinct()
    return closed.select(
        "user_id",
        F.timestamp_micros(F.unix_micros("event_timestamp") + 1).alias("knowledge_cutoff"),
        (F.col("last_position") + 1).cast("int").alias("n_history"),
        F.col("last_position").cast("int"),
    )


def split_rolling(interactions: DataFrame, config: SplitConfig) -> Splits:
    """Every interaction a sample (time split); knowledge cutoffs every ``cutoff_every`` interactions."""
    _, split_col, boundaries = _time_boundaries(interactions, config)
    seq = _sequenced(interactions, config.behaviour_len).withColumn("split", split_col).persist()
    cutoffs = rolling_cutoffs(seq, config.cutoff_every)
    read = cutoffs.groupBy("user_id").agg(F.max("last_position").alias("_read"))
    history = (
        seq.join(read, "user_id")
        .where(F.col("position") <= F.col("_read"))
        .select("user_id", "item_id", "rating", "label", "event_timestamp", "position")
    )
    samples = seq.select("user_id", "item_id", "rating", "label", "event_timestamp", "split", "hist_item_ids")
    boundaries = {"protocol": "rolling", "cutoff_every": config.cutoff_every, **boundaries}
    return Splits(samples=samples, history=history, cutoffs=cutoffs, boundaries=boundaries, sequence=seq)


def make_splits(interactions: DataFrame, config: SplitConfig) -> Splits:
    """Split by ``config.protocol``; ``interactions`` needs user_id, item_id, rating, label, event_timestamp."""
    if config.protocol == "kar":
        return split_kar(interactions, config)
    if config.protocol == "time":
        return split_time(interactions, config)
    if config.protocol == "cold-items":
        return split_cold_items(interactions, config)
    if config.protocol == "rolling":
        return split_rolling(interactions, config)
    raise DataError(f"unknown split protocol {config.protocol!r} (use {', '.join(map(repr, PROTOCOLS))})")
