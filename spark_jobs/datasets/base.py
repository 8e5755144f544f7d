"""What every dataset loader returns: typed raw tables that still carry file/line and a reject reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from kar.contracts.errors import DataError
from spark_jobs.fields import REASON, add_reason
from spark_jobs.records import META_COLUMNS

# The profile columns of the bundled (MovieLens-shaped) datasets.
USER_COLUMNS = ("gender", "age", "occupation", "zip_code")
ITEM_COLUMNS = ("title", "genres", "year", "description", "brand")
# What their prompts may use: no zip code (nothing a prompt needs, and it narrows a user down).
PROMPT_FIELDS = {"user": ["gender", "age", "occupation"], "item": list(ITEM_COLUMNS)}

# Unix seconds; anything outside is an impossible timestamp for an interaction log.
MIN_TIMESTAMP = 1  # 1970-01-01T00:00:01Z: zero/negative means "missing" in most exports
YEAR_PATTERN = r"\((\d{4})\)\s*$"


@dataclass(frozen=True, kw_only=True)
class RawTables:
    """Typed tables before cross-table checks.

    Attributes:
        users: ``user_id`` + ``user_columns`` + ``_reason`` and meta columns.
        items: ``item_id`` + ``item_columns`` + ``_reason`` and meta columns.
        interactions: ``user_id, item_id, rating, timestamp`` (unix seconds; ``label`` too when
            ``label_given``) + ``_reason`` and meta columns.
        positive_threshold: A rating above this is a positive label (unless ``label_given``).
        notes: Facts about the input worth reporting (e.g. which users a partial ratings file covers).
        id_maps: For datasets with string ids, ``raw id -> int64 id`` tables to persist (``users``, ``items``).
        user_columns: The user attributes the prepared users table keeps (MovieLens demographics by default).
        item_columns: The item attributes the prepared items table keeps.
        label_given: The interactions carry their own 0/1 ``label`` (``rating`` may then be null).
        rating_range: Valid ratings, checked by the data-quality gate (None: not checked).
        catalogue_rules: Whether the MovieLens-shaped profile rules apply (age, gender, title, year).
        id_types: Type of the source's raw ids per role (``int64`` or ``string``), e.g. for Feast join keys.
        prompt_fields: Per role, the attributes LLM prompts may use (None: the dataset's bundled defaults).
    """

    users: DataFrame
    items: DataFrame
    interactions: DataFrame
    positive_threshold: float = 3.0
    notes: dict[str, object] = field(default_factory=dict)
    id_maps: dict[str, DataFrame] = field(default_factory=dict)
    user_columns: tuple[str, ...] = USER_COLUMNS
    item_columns: tuple[str, ...] = ITEM_COLUMNS
    label_given: bool = False
    rating_range: tuple[float, float] | None = (1.0, 5.0)
    catalogue_rules: bool = True
    id_types: dict[str, str] = field(default_factory=lambda: {"user": "int64", "item": "int64"})
    prompt_fields: dict[str, list[str]] | None = None


# What --path must contain, per file-based dataset (said in every "not found" message).
EXPECTED_INPUTS = {
    "movielens-100k": "u.data, u.user, u.item, u.genre",
    "movielens-1m": "ratings*.dat, users.dat, movies.dat",
    "amazon": "<Category>_5.json[.gz] and meta_<Category>.json[.gz]",
}


def require_dir(path: Path | None, *, dataset: str) -> Path:
    """The input folder of a file-based dataset, or a one-line error saying what it should contain."""
    expected = EXPECTED_INPUTS[dataset]
    if path is None:
        raise DataError(f"{dataset}: --path is required (a folder with {expected})")
    if not path.is_dir():
        raise DataError(f"{path}: folder not found (expected {expected} for {dataset})")
    return path


def find_one(folder: Path, patterns: tuple[str, ...], *, what: str) -> Path:
    """The single file in ``folder`` matching the first pattern that matches anything."""
    for pattern in patterns:
        matches = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise DataError(f"{folder}: several {what} files match {pattern!r} ({names}); keep one")
    raise DataError(f"{folder}: no {what} file (looked for {', '.join(patterns)})")


# Every loader keeps these through its projections so a rejected row can be traced to its file and line.
QUARANTINE_INPUT = (REASON, *META_COLUMNS)


def canonical_items(
    df: DataFrame,
    *,
    genres: Column,
    year: Column,
    description: Column | None = None,
    brand: Column | None = None,
    item_id: Column | str = "item_id",
) -> DataFrame:
    """Project a loader's typed item rows onto the canonical item columns, keeping what quarantine needs."""
    no_text = F.lit(None).cast("string")
    return df.select(
        F.col(item_id).alias("item_id") if isinstance(item_id, str) else item_id.alias("item_id"),
        "title",
        genres.alias("genres"),
        year.alias("year"),
        (no_text if description is None else description).alias("description"),
        (no_text if brand is None else brand).alias("brand"),
        *QUARANTINE_INPUT,
    )


def require_gender(users: DataFrame) -> DataFrame:
    """Reject a user whose gender is neither M nor F (both MovieLens releases use exactly these)."""
    bad = F.concat(F.lit("gender: not M/F ("), F.coalesce("gender", F.lit("")), F.lit(")"))
    return add_reason(users, F.col("gender").isNotNull() & ~F.col("gender").isin("M", "F"), bad)


def year_from_title(title: Column) -> Column:
    year = F.regexp_extract(title, YEAR_PATTERN, 1)
    return F.when(year != F.lit(""), year.cast("int"))
