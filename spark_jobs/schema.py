"""Canonical tables every dataset loader produces, and the prepared-data layout.

All ids are int64 so Feast entities are uniform across datasets; a loader whose source ids are strings
(Amazon) keeps them in a ``raw_*_id`` column. Timestamps are UTC, microsecond precision (Feast's Spark
offline store rejects nanosecond parquet).
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from kar.contracts import storage
from kar.contracts.paths import Location

INTERACTIONS = StructType(
    [
        StructField("user_id", LongType(), False),
        StructField("item_id", LongType(), False),
        StructField("rating", DoubleType(), False),
        StructField("label", IntegerType(), False),
        StructField("event_timestamp", TimestampType(), False),
    ]
)

USERS = StructType(
    [
        StructField("user_id", LongType(), False),
        StructField("gender", StringType(), True),
        StructField("age", IntegerType(), True),
        StructField("occupation", StringType(), True),
        StructField("zip_code", StringType(), True),
        StructField("event_timestamp", TimestampType(), False),
    ]
)

ITEMS = StructType(
    [
        StructField("item_id", LongType(), False),
        StructField("title", StringType(), True),
        StructField("genres", ArrayType(StringType()), True),
        StructField("year", IntegerType(), True),
        StructField("description", StringType(), True),
        StructField("event_timestamp", TimestampType(), False),
    ]
)

# The prepared folder's table names live in ``kar.contracts.tables``.
HISTORY_LEN = 10
SPLITS = ("train", "val", "test")


def parquet_rows(path: Location) -> int:
    """Rows of a parquet table (a file or folder), from the files' footers: no data is read.

    Jobs use it to pick their plan: a small table is cheaper on the driver than as Spark jobs.
    """
    return storage.parquet_dataset(path).count_rows()
