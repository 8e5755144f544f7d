"""MovieLens 100K and 1M loaders (GroupLens formats, Latin-1 text)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from kar.contracts.errors import DataError
from spark_jobs.datasets.base import (
    MIN_TIMESTAMP,
    RawTables,
    canonical_items,
    find_one,
    require_dir,
    require_gender,
    year_from_title,
)
from spark_jobs.fields import FieldSpec, add_reason, apply_field_specs
from spark_jobs.records import TextFormat, read_records

ENCODING = "latin-1"
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
ML1M_AGES = (1, 18, 25, 35, 45, 50, 56)


def _interaction_specs(max_timestamp: int) -> list[FieldSpec]:
    return [
        FieldSpec(name="user_id", dtype="bigint", min_value=1),
        FieldSpec(name="item_id", dtype="bigint", min_value=1),
        FieldSpec(name="rating", dtype="double", min_value=1, max_value=5),
        FieldSpec(name="timestamp", dtype="bigint", min_value=MIN_TIMESTAMP, max_value=max_timestamp),
    ]


def _read(spark: SparkSession, path: Path, columns: tuple[str, ...], sep: str) -> DataFrame:
    return read_records(spark, path, TextFormat(columns=columns, sep=sep, encoding=ENCODING))


def _ml100k_genres(folder: Path) -> list[str]:
    path = folder / "u.genre"
    if not path.is_file():
        raise DataError(f"{path}: file not found (movielens-100k needs it to name the genre flags of u.item)")
    names = []
    for line_no, line in enumerate(path.read_text(encoding=ENCODING).splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.partition("|")
        if not sep or not index.strip().isdigit() or int(index) != len(names):
            raise DataError(f"{path} line {line_no}: expected 'name|index' with index {len(names)}, got {line!r}")
        names.append(name)
    return names


def _ratings(spark: SparkSession, files: Sequence[Path], sep: str, *, max_timestamp: int) -> DataFrame:
    """The ratings of ``files`` (one format), typed and checked; each row keeps its own file and line."""
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: ratings file not found")
    frames = [_read(spark, file, ("user_id", "item_id", "rating", "timestamp"), sep) for file in files]
    return apply_field_specs(reduce(DataFrame.unionByName, frames), _interaction_specs(max_timestamp))


def load_movielens_100k(
    spark: SparkSession, *, path: Path | None, max_timestamp: int, interactions: Sequence[Path] = ()
) -> RawTables:
    """Load ``u.data``, ``u.user``, ``u.item`` (and ``u.genre`` for genre names) from ``path``.

    ``interactions``: rating files in ``u.data``'s format read instead of it (batches of one log).
    """
    folder = require_dir(path, dataset="movielens-100k")
    genres = _ml100k_genres(folder)
    flags = tuple(f"g{i}" for i in range(len(genres)))

    interactions = _ratings(spark, interactions or [folder / "u.data"], "\t", max_timestamp=max_timestamp)

    users = _read(spark, folder / "u.user", ("user_id", "age", "gender", "occupation", "zip_code"), "|")
    users = apply_field_specs(
        users,
        [
            FieldSpec(name="user_id", dtype="bigint", min_value=1),
            FieldSpec(name="age", dtype="int", min_value=1, max_value=120),
            FieldSpec(name="gender"),
            FieldSpec(name="occupation"),
            FieldSpec(name="zip_code", required=False),
        ],
    )
    users = require_gender(users)

    item_cols = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *flags)
    items = _read(spark, folder / "u.item", item_cols, "|")
    items = apply_field_specs(
        items,
        [
            FieldSpec(name="item_id", dtype="bigint", min_value=1),
            FieldSpec(name="title"),
        ],
    )
    # One rule over all flags: a spec per flag generates more code than Janino compiles into one method.
    flag_string = F.concat_ws("", *[F.col(flag) for flag in flags])
    items = add_reason(
        items,
        ~flag_string.rlike(f"^[01]{{{len(flags)}}}$"),
        F.concat(F.lit(f"genre flags: expected {len(flags)} values of 0/1, got "), flag_string),
    )
    genre_array = F.filter(
        F.array(*[F.when(F.col(flag) == "1", F.lit(name)) for flag, name in zip(flags, genres, strict=True)]),
        lambda g: g.isNotNull(),
    )
    release_year = F.regexp_extract("release_date", r"(\d{4})$", 1)
    items = canonical_items(
        items,
        genres=genre_array,
        year=F.coalesce(year_from_title(F.col("title")), F.when(release_year != "", release_year.cast("int"))),
    )
    return RawTables(users=users, items=items, interactions=interactions)


def load_movielens_1m(
    spark: SparkSession, *, path: Path | None, max_timestamp: int, interactions: Sequence[Path] = ()
) -> RawTables:
    """Load ``ratings*.dat``, ``users.dat``, ``movies.dat`` (``::``-separated) from ``path``.

    Any ratings file name is accepted (``ratings.dat`` first), since partial copies are common; the prepare
    summary reports which users it covers. ``interactions``: rating files in that format read instead.
    """
    folder = require_dir(path, dataset="movielens-1m")
    ratings_file = find_one(folder, ("ratings.dat", "ratings*.dat"), what="ratings")
    interactions = _ratings(spark, interactions or [ratings_file], "::", max_timestamp=max_timestamp)

    users = _read(spark, folder / "users.dat", ("user_id", "gender", "age", "occupation_code", "zip_code"), "::")
    users = apply_field_specs(
        users,
        [
            FieldSpec(name="user_id", dtype="bigint", min_value=1),
            FieldSpec(name="gender"),
            FieldSpec(name="age", dtype="int"),
            FieldSpec(name="occupation_code", dtype="int", min_value=0, max_value=len(ML1M_OCCUPATIONS) - 1),
            FieldSpec(name="zip_code", required=False),
        ],
    )
    users = require_gender(users)
    users = add_reason(
        users,
        F.col("age").isNotNull() & ~F.col("age").isin(*ML1M_AGES),
        F.concat(F.lit("age: not an ML-1M age bucket ("), F.col("age").cast("string"), F.lit(")")),
    )
    occupations = F.array(*[F.lit(name) for name in ML1M_OCCUPATIONS])
    users = users.withColumn("occupation", F.element_at(occupations, F.col("occupation_code") + 1)).drop(
        "occupation_code"
    )

    items = _read(spark, folder / "movies.dat", ("item_id", "title", "genre_list"), "::")
    items = apply_field_specs(
        items,
        [
            FieldSpec(name="item_id", dtype="bigint", min_value=1),
            FieldSpec(name="title"),
            FieldSpec(name="genre_list"),
        ],
    )
    items = canonical_items(items, genres=F.split("genre_list", r"\|"), year=year_from_title(F.col("title")))
    return RawTables(users=users, items=items, interactions=interactions, notes={"ratings_file": ratings_file.name})
