"""Amazon Review Data (2018) 5-core loader: ``<Category>_5.json[.gz]`` reviews + ``meta_<Category>.json[.gz]``.

Amazon ids are strings; they are mapped to dense int64 ids (ordered by the raw id, so the mapping is
reproducible) and the mapping is returned for the job to persist.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

from spark_jobs.datasets.base import (
    MIN_TIMESTAMP,
    QUARANTINE_INPUT,
    RawTables,
    canonical_items,
    find_one,
    require_dir,
)
from spark_jobs.fields import REASON, FieldSpec, apply_field_specs
from spark_jobs.records import TextFormat, read_records

REVIEW_KEYS = ("reviewerID", "asin", "overall", "unixReviewTime")
META_KEYS = ("asin", "title", "brand", "category", "description")
_STRINGS = ArrayType(StringType())


def dense_ids(df: DataFrame, raw_col: str, id_col: str) -> DataFrame:
    """Map each distinct ``raw_col`` value to 1..n in sorted order (zipWithIndex scales past one partition)."""
    spark = df.sparkSession
    distinct = df.select(raw_col).where(F.col(raw_col).isNotNull()).distinct().orderBy(raw_col)
    pairs = distinct.rdd.zipWithIndex().map(lambda pair: (pair[0][0], pair[1] + 1))
    schema = StructType([StructField(raw_col, StringType(), False), StructField(id_col, LongType(), False)])
    return spark.createDataFrame(pairs, schema)


def load_amazon(spark: SparkSession, *, path: Path | None, max_timestamp: int) -> RawTables:
    """Load one category's 5-core reviews and metadata from ``path``."""
    folder = require_dir(path, dataset="amazon")
    reviews_file = find_one(folder, ("*_5.json.gz", "*_5.json"), what="5-core reviews")
    meta_file = find_one(folder, ("meta_*.json.gz", "meta_*.json"), what="metadata")

    reviews = read_records(spark, reviews_file, TextFormat(columns=REVIEW_KEYS))
    reviews = apply_field_specs(
        reviews,
        [
            FieldSpec(name="reviewerID"),
            FieldSpec(name="asin"),
            FieldSpec(name="overall", dtype="double", min_value=1, max_value=5),
            FieldSpec(name="unixReviewTime", dtype="bigint", min_value=MIN_TIMESTAMP, max_value=max_timestamp),
        ],
    )
    meta = read_records(spark, meta_file, TextFormat(columns=META_KEYS))
    meta = apply_field_specs(meta, [FieldSpec(name="asin"), FieldSpec(name="title", required=False)])

    user_ids = dense_ids(reviews.where(F.col(REASON).isNull()), "reviewerID", "user_id").persist()
    item_ids = dense_ids(meta.where(F.col(REASON).isNull()), "asin", "item_id").persist()

    # An interaction whose asin has no metadata keeps item_id null and is quarantined as an unknown item later.
    interactions = (
        reviews.join(user_ids, "reviewerID", "left")
        .join(item_ids, "asin", "left")
        .withColumn("user_id", F.coalesce("user_id", F.lit(-1).cast("bigint")))
        .withColumn("item_id", F.coalesce("item_id", F.lit(-1).cast("bigint")))
        .select(
            "user_id",
            "item_id",
            F.col("overall").alias("rating"),
            F.col("unixReviewTime").alias("timestamp"),
            *QUARANTINE_INPUT,
        )
    )
    users = user_ids.select(
        "user_id",
        F.lit(None).cast("string").alias("gender"),
        F.lit(None).cast("int").alias("age"),
        F.lit(None).cast("string").alias("occupation"),
        F.lit(None).cast("string").alias("zip_code"),
        F.lit(None).cast("string").alias(REASON),
        F.lit(reviews_file.name).alias("_file"),
        F.lit(0).cast("bigint").alias("_line"),
        F.col("reviewerID").alias("_raw"),
        F.lit(None).cast("string").alias("_error"),
    )
    items = canonical_items(
        meta.join(item_ids, "asin", "left"),
        item_id=F.coalesce("item_id", F.lit(-1).cast("bigint")),
        genres=F.from_json("category", _STRINGS),
        year=F.lit(None).cast("int"),
        description=F.array_join(F.from_json("description", _STRINGS), " "),
        brand=F.col("brand"),
    )
    return RawTables(
        users=users,
        items=items,
        interactions=interactions,
        positive_threshold=4.0,
        notes={"reviews_file": reviews_file.name, "meta_file": meta_file.name},
        id_maps={"users": user_ids, "items": item_ids},
    )
