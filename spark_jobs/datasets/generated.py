"""Spark side of the synthetic dataset: generate, persist the raw tables, and read them like any other input.

The generated frames go through the same typed rules and cross-table checks as real files, so the demo
exercises the same code path users run on their logs.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from kar.contracts import storage
from kar.contracts.errors import DataError
from kar.contracts.storage import Folder
from spark_jobs.datasets.base import MIN_TIMESTAMP, RawTables
from spark_jobs.datasets.synthetic import SyntheticConfig, generate
from spark_jobs.fields import FieldSpec, apply_field_specs

RAW_DIR = "raw"


def _write_raw(frame: pd.DataFrame, path: Folder) -> None:
    # Row numbers stand in for line numbers, so a rejected generated row is as traceable as a file line.
    frame = frame.reset_index(drop=True)
    frame.insert(0, "_line", frame.index.astype("int64") + 1)
    storage.write_parquet(path, pa.Table.from_pandas(frame, preserve_index=False))


def _read_raw(spark: SparkSession, path: Folder) -> DataFrame:
    return spark.read.parquet(str(path)).withColumns(
        {"_file": F.lit(path.name), "_raw": F.lit(None).cast("string"), "_error": F.lit(None).cast("string")}
    )


def write_synthetic(work_dir: Folder, config: SyntheticConfig | None = None) -> Folder:
    """Generate the synthetic dataset into ``work_dir/raw`` (parquet with row numbers); returns that folder."""
    data = generate(config or SyntheticConfig())
    raw = work_dir / RAW_DIR
    for name, frame in (("users", data.users), ("items", data.items), ("interactions", data.interactions)):
        _write_raw(frame, raw / f"{name}.parquet")
    _write_raw(data.truth, raw / "truth.parquet")
    return raw


def load_synthetic(
    spark: SparkSession,
    *,
    work_dir: Folder,
    max_timestamp: int,
    config: SyntheticConfig | None = None,
    raw_dir: Folder | None = None,
) -> RawTables:
    """Load the synthetic dataset as typed raw tables.

    Args:
        spark: The session.
        work_dir: Generated tables go to ``work_dir/raw``.
        max_timestamp: Latest valid event time (seconds).
        config: Generator config.
        raw_dir: A ``raw`` folder written before (``write_synthetic``): read it instead of generating again.
    """
    if raw_dir is None:
        raw = write_synthetic(work_dir, config)
    else:
        raw = raw_dir
        missing = [n for n in ("users", "items", "interactions") if not storage.is_file(raw / f"{n}.parquet")]
        if missing:
            raise DataError(f"{raw}: no {', '.join(n + '.parquet' for n in missing)}; pass a generated raw/ folder")

    interactions = apply_field_specs(
        _read_raw(spark, raw / "interactions.parquet"),
        [
            FieldSpec(name="user_id", dtype="bigint", min_value=1),
            FieldSpec(name="item_id", dtype="bigint", min_value=1),
            FieldSpec(name="rating", dtype="double", min_value=1, max_value=5),
            FieldSpec(name="timestamp", dtype="bigint", min_value=MIN_TIMESTAMP, max_value=max_timestamp),
        ],
    )
    users = apply_field_specs(
        _read_raw(spark, raw / "users.parquet"),
        [
            FieldSpec(name="user_id", dtype="bigint", min_value=1),
            FieldSpec(name="gender"),
            FieldSpec(name="age", dtype="int", min_value=1, max_value=120),
            FieldSpec(name="occupation"),
            FieldSpec(name="zip_code", required=False),
        ],
    )
    items = apply_field_specs(
        _read_raw(spark, raw / "items.parquet"),
        [
            FieldSpec(name="item_id", dtype="bigint", min_value=1),
            FieldSpec(name="title"),
            FieldSpec(name="year", dtype="int", required=False, min_value=1800, max_value=2100),
            FieldSpec(name="description", required=False),
        ],
    ).withColumn("brand", F.lit(None).cast("string"))
    notes = {"generator": repr(config)} if raw_dir is None else {"generated_raw": str(raw_dir)}
    return RawTables(users=users, items=items, interactions=interactions, notes=notes)
