"""Hallucination check beyond the prompt's anchors: do an item answer's year and genre claims match the item table?

The item prompt shows title, year and genres, so a model that contradicts them is not reading its input, and
one that adds genres the catalogue does not list is inventing. Per answer (all in Spark, no ``toPandas``):

* **asserted years**: four-digit years 1800–2099 in the text; the year claim holds when one of them is within
  ``YEAR_TOLERANCE`` of the item's year (release vs production year), and is *contradicted* when years are
  asserted but none is close;
* **asserted genres**: genres of the catalogue's own vocabulary (every genre in the item table, with a few
  spelling variants such as "science fiction" for Sci-Fi) found as words in the text; genre precision is the
  share of asserted genres the item really has;
* **consistency** = mean of the checkable claims (year claim 1/0, genre precision); null when the answer
  asserts neither, so it is not counted either way.

The dataset-level rate is the mean consistency over answers with at least one checkable claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

YEAR_PATTERN = r"\b(1[89]\d\d|20\d\d)\b"
YEAR_TOLERANCE = 1
# Ways answers spell catalogue genres (MovieLens and the synthetic generator use these names).
GENRE_VARIANTS = {
    "sci-fi": ("sci-fi", "science fiction", "science-fiction", "scifi"),
    "film-noir": ("film-noir", "film noir", "noir"),
    "children's": ("children's", "childrens", "children", "kids"),
    "children": ("children's", "childrens", "children", "kids"),
    "romance": ("romance", "romantic"),
    "comedy": ("comedy", "comedies", "comedic"),
    "animation": ("animation", "animated"),
    "documentary": ("documentary", "documentaries"),
    "musical": ("musical", "musicals"),
    "western": ("western", "westerns"),
    "thriller": ("thriller", "thrillers"),
    "mystery": ("mystery", "mysteries"),
    "fantasy": ("fantasy", "fantasies"),
    "adventure": ("adventure", "adventures"),
    "crime": ("crime",),
    "drama": ("drama", "dramas", "dramatic"),
    "horror": ("horror",),
    "war": ("war",),
    "action": ("action",),
}
OUTPUT_DIR = "hallucination"


def genre_pattern(genre: str) -> str:
    """A case-insensitive Java regex matching ``genre`` or a known variant as whole words."""
    variants = GENRE_VARIANTS.get(genre.lower(), (genre.lower(),))
    alternatives = "|".join(re.escape(v) for v in sorted(set(variants), key=len, reverse=True))
    return rf"(?i)(?<![\w-])({alternatives})(?![\w-])"


def asserted_genres(text: Column, vocabulary: list[str]) -> Column:
    """``array<string>`` of the vocabulary genres the text names."""
    if not vocabulary:
        return F.array().cast("array<string>")
    return F.array_compact(F.array(*[F.when(text.rlike(genre_pattern(g)), F.lit(g)) for g in vocabulary]))


def score_answers(answers: DataFrame, items: DataFrame, *, vocabulary: list[str] | None = None) -> DataFrame:
    """Per answer: ``item_id, year, genres, asserted_years, asserted_genres, year_consistent, genre_precision,
    consistency``.

    Args:
        answers: Item answers with ``item_id`` and ``text``.
        items: The item table (``item_id``, ``year``, ``genres``).
        vocabulary: Genres to look for (default: every genre in ``items``).
    """
    if vocabulary is None:
        vocabulary = sorted(
            r["g"] for r in items.select(F.explode_outer("genres").alias("g")).distinct().collect() if r["g"]
        )
    joined = answers.select("item_id", "text").join(items.select("item_id", "year", "genres"), "item_id", "left")
    years = F.transform(F.regexp_extract_all(F.col("text"), F.lit(YEAR_PATTERN), 1), lambda y: y.cast("int"))
    lowered = F.transform(F.coalesce(F.col("genres"), F.array().cast("array<string>")), F.lower)
    scored = joined.withColumns(
        {"asserted_years": years, "asserted_genres": asserted_genres(F.col("text"), vocabulary)}
    )
    year_claim = F.size("asserted_years") > 0
    year_ok = F.exists("asserted_years", lambda y: F.abs(y - F.col("year")) <= YEAR_TOLERANCE)
    right = F.size(F.filter("asserted_genres", lambda g: F.array_contains(lowered, F.lower(g))))
    scored = scored.withColumns(
        {
            "year_consistent": F.when(year_claim & F.col("year").isNotNull(), year_ok),
            "genre_precision": F.when(
                (F.size("asserted_genres") > 0) & F.col("genres").isNotNull(),
                right / F.size("asserted_genres"),
            ),
        }
    )
    parts = [F.col("year_consistent").cast("double"), F.col("genre_precision")]
    present = sum((F.when(p.isNotNull(), 1).otherwise(0) for p in parts), F.lit(0))
    total = sum((F.coalesce(p, F.lit(0.0)) for p in parts), F.lit(0.0))
    return scored.withColumn("consistency", F.when(present > 0, total / present))


@dataclass(frozen=True)
class HallucinationReport:
    """Dataset-level view of :func:`score_answers`."""

    answers: int
    checkable: int
    consistency_rate: float | None
    year_claims: int
    year_contradicted: int
    genre_claims: int
    genre_unsupported: int

    def summary_line(self) -> str:
        rate = "n/a" if self.consistency_rate is None else f"{self.consistency_rate:.1%}"
        return (
            f"item facts vs item table: consistency {rate} over {self.checkable:,} of {self.answers:,} answers "
            f"with year/genre claims; year contradicted in {self.year_contradicted:,} of {self.year_claims:,}, "
            f"{self.genre_unsupported:,} of {self.genre_claims:,} asserted genres not in the item's genres"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "summary": self.summary_line()}


def summarize(scored: DataFrame) -> HallucinationReport:
    """One aggregation over :func:`score_answers`' output."""
    row = scored.agg(
        F.count("*").alias("answers"),
        F.count("consistency").alias("checkable"),
        F.avg("consistency").alias("rate"),
        F.count("year_consistent").alias("year_claims"),
        F.sum((~F.col("year_consistent")).cast("long")).alias("year_bad"),
        F.sum(F.size("asserted_genres")).alias("genre_claims"),
        F.sum(F.round(F.size("asserted_genres") * (1 - F.coalesce("genre_precision", F.lit(1.0)))).cast("long")).alias(
            "genre_bad"
        ),
    ).first()
    return HallucinationReport(
        answers=int(row["answers"]),
        checkable=int(row["checkable"]),
        consistency_rate=None if row["rate"] is None else round(float(row["rate"]), 4),
        year_claims=int(row["year_claims"]),
        year_contradicted=int(row["year_bad"] or 0),
        genre_claims=int(row["genre_claims"] or 0),
        genre_unsupported=int(row["genre_bad"] or 0),
    )


def check_item_facts(answers: DataFrame, items: DataFrame, *, out: Path | None) -> HallucinationReport:
    """Score item answers, write the per-item table to ``out`` (parquet) and return the dataset-level report."""
    scored = score_answers(answers, items).cache()
    if out is not None:
        scored.write.mode("overwrite").parquet(str(out))
    report = summarize(scored)
    scored.unpersist()
    return report
