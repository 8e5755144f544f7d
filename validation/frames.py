"""Derived frames some expectations are stated on (a per-split table, samples beside their cutoff)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# Below this many samples a split's label rate says nothing (two samples are often both positive).
MIN_SPLIT_SAMPLES = 100


def split_stats(samples: DataFrame, *, min_samples: int = MIN_SPLIT_SAMPLES) -> DataFrame:
    """One row per split: ``split, samples, users, label_rate, checked_label_rate, users_in_several_splits``, and
    ``items, items_in_several_splits`` when the samples have ``item_id``.

    ``checked_label_rate`` is the label rate of splits with at least ``min_samples`` samples (null otherwise,
    which great_expectations skips).

    A user in two splits counts once in the total of distinct users but once per split, so the difference of the
    two sums is the number of users found in more than one split (0 under the KAR protocol); items likewise
    (0 under the cold-items protocol).
    """
    keys = {"users": "user_id", **({"items": "item_id"} if "item_id" in samples.columns else {})}
    per_split = samples.groupBy("split").agg(
        F.count("*").alias("samples"),
        *(F.countDistinct(column).alias(name) for name, column in keys.items()),
        F.avg("label").alias("label_rate"),
    )
    per_split = per_split.withColumn("checked_label_rate", F.when(F.col("samples") >= min_samples, F.col("label_rate")))
    for name, column in keys.items():
        distinct = samples.agg(F.countDistinct(column).alias("_all"))
        shared = per_split.agg(F.sum(name).alias("_sum")).crossJoin(distinct)
        several = (F.col("_sum") - F.col("_all")).alias(f"{name}_in_several_splits")
        per_split = per_split.crossJoin(shared.select(several))
    return per_split


def samples_with_cutoffs(samples: DataFrame, cutoffs: DataFrame, *, protocol: str = "time") -> DataFrame:
    """Samples with their user's ``knowledge_cutoff`` (null for a user without knowledge history).

    Under the ``cold-items`` protocol a held-out item's sample may precede its user's cutoff (the history holds
    train items only; the sample then joins no user knowledge), so only train samples carry a cutoff to check.
    Under the ``rolling`` protocol every interaction is a sample and a user has many cutoffs: a sample joins the
    latest one before it, which by construction never read it (``spark_jobs.splits.rolling_cutoffs``), so no
    sample carries one.
    """
    if protocol == "rolling":
        return samples.withColumn("knowledge_cutoff", F.lit(None).cast("timestamp"))
    joined = samples.join(F.broadcast(cutoffs.select("user_id", "knowledge_cutoff")), "user_id", "left")
    if protocol == "cold-items":
        joined = joined.withColumn("knowledge_cutoff", F.when(F.col("split") == "train", F.col("knowledge_cutoff")))
    return joined


def vector_stats(vectors: DataFrame) -> DataFrame:
    """Vectors with ``n_values`` (length), ``norm`` (L2) and ``n_nonfinite`` (NaN/inf values)."""
    values = F.col("vector")
    return vectors.withColumns(
        {
            "n_values": F.size(values),
            "norm": F.sqrt(F.aggregate(values, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x)),
            "n_nonfinite": F.size(F.filter(values, lambda x: F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))),
        }
    )


def vector_spread(vectors: DataFrame) -> DataFrame:
    """One row: ``vectors`` and ``mean_pairwise_cosine`` over all pairs of distinct rows.

    With unit vectors u_i and S = Σ u_i, Σ_{i≠j} u_i·u_j = |S|² − n, so the mean over the n(n−1) pairs needs one
    sum per dimension, not n² products.
    """
    norm = F.sqrt(F.aggregate("vector", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    unit = vectors.where(F.size("vector") > 0).select(
        F.posexplode(F.transform("vector", lambda x: x / norm)).alias("pos", "value")
    )
    sums = unit.groupBy("pos").agg(F.sum("value").alias("s"))
    n = vectors.where(F.size("vector") > 0).agg(F.count("*").alias("n"))
    total = sums.agg(F.sum(F.col("s") * F.col("s")).alias("s2")).crossJoin(n)
    return total.select(
        F.col("n").alias("vectors"),
        F.when(F.col("n") > 1, (F.col("s2") - F.col("n")) / (F.col("n") * (F.col("n") - 1))).alias(
            "mean_pairwise_cosine"
        ),
    )


# --- the same frames in numpy, for tables small enough that a Spark job costs more than the work ------------


def _vector_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lengths, values, row of each value)`` of a table's ``vector`` column."""
    vectors = table.column("vector").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(vectors), 0).to_numpy().astype(np.int64)
    values = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float64)
    return lengths, values, np.repeat(np.arange(len(lengths)), lengths)


def vector_stats_frame(table: pa.Table) -> pd.DataFrame:
    """:func:`vector_stats` of a pyarrow table (``vector``, ``dim``) as pandas."""
    lengths, values, rows = _vector_rows(table)
    finite = np.isfinite(values)
    squares = np.bincount(rows, weights=np.where(finite, values * values, np.nan), minlength=len(lengths))
    return pd.DataFrame(
        {
            "dim": table.column("dim").to_numpy(zero_copy_only=False),
            "n_values": lengths,
            "norm": np.sqrt(squares),
            "n_nonfinite": np.bincount(rows, weights=~finite, minlength=len(lengths)).astype(np.int64),
        }
    )


def vector_spread_frame(table: pa.Table) -> pd.DataFrame:
    """:func:`vector_spread` of a pyarrow table as pandas (rows of the most common length; the stats catch the
    others)."""
    lengths, values, _rows = _vector_rows(table)
    kept = lengths > 0
    if not kept.any():
        return pd.DataFrame({"vectors": [0], "mean_pairwise_cosine": [None]})
    dim = int(np.bincount(lengths[kept]).argmax())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths == dim]
    matrix = values[starts[:, None] + np.arange(dim)]
    units = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    n = len(units)
    total = units.sum(axis=0)
    mean = (float(total @ total) - n) / (n * (n - 1)) if n > 1 else None
    return pd.DataFrame({"vectors": [n], "mean_pairwise_cosine": [mean]})
