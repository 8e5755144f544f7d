"""Rows that break a row-level rule go to ``quarantine/<table>`` with their reason, never silently away."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from kar.contracts.errors import DataError
from kar.contracts.storage import Folder
from spark_jobs.fields import REASON
from spark_jobs.records import META_COLUMNS

QUARANTINE_COLUMNS = ("table", "file", "line", "reason", "raw")
# When more than this share of a file's rows is rejected, the input is wrong as a whole (separator, encoding,
# columns): stop with one clear sentence instead of quarantining the whole file.
MAX_REJECT_FRACTION = 0.5


@dataclass(frozen=True)
class QuarantineReport:
    """What one table lost to quarantine."""

    table: str
    total: int
    rejected: int
    top_reasons: dict[str, int]
    files: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total, "rejected": self.rejected, "top_reasons": self.top_reasons}


def _reason_kind(reason: str) -> str:
    # "rating: 7 outside [1, 5]" and "rating: 9 outside [1, 5]" are the same kind of problem.
    head = reason.split(";")[0]
    field, _, rest = head.partition(":")
    words = rest.strip().split(" ")
    return f"{field}: {' '.join(w for w in words if not any(c.isdigit() for c in w))}".strip()


def split_quarantine(
    df: DataFrame,
    *,
    table: str,
    out_dir: Folder,
    max_reject_fraction: float = MAX_REJECT_FRACTION,
) -> tuple[DataFrame, QuarantineReport]:
    """Write rejected rows of ``df`` to ``out_dir/<table>`` and return the accepted rows without meta columns.

    Args:
        df: Rows with ``_reason`` (null = accepted) and the meta columns of ``read_records``.
        table: Table name used for the quarantine folder and messages.
        out_dir: The quarantine root folder.
        max_reject_fraction: Above this share of rejected rows the whole input is deemed wrong.

    Raises:
        DataError: Too many rows were rejected; names the first bad file/line and its reason.
    """
    df = df.persist()
    counts = df.agg(
        F.count("*").alias("total"),
        F.count(REASON).alias("rejected"),
        F.sort_array(F.collect_set("_file")).alias("files"),
    ).first()
    total, rejected = counts["total"], counts["rejected"]
    top: dict[str, int] = {}
    if rejected:
        bad = df.where(F.col(REASON).isNotNull())
        if total == 0 or rejected / total > max_reject_fraction:
            first = bad.orderBy("_file", "_line").select("_file", "_line", REASON).first()
            raise DataError(
                f"{first['_file']} line {first['_line']}: {first[REASON]} — {rejected:,} of {total:,} {table} rows "
                "rejected; check the file's separator, encoding and columns"
            )
        path = out_dir / table
        bad.select(
            F.lit(table).alias("table"),
            F.col("_file").alias("file"),
            F.col("_line").alias("line"),
            F.col(REASON).alias("reason"),
            F.col("_raw").alias("raw"),
        ).write.mode("overwrite").parquet(str(path))
        # Counted from the small written table rather than by recomputing the input.
        for row in df.sparkSession.read.parquet(str(path)).groupBy("reason").count().collect():
            kind = _reason_kind(row["reason"])
            top[kind] = top.get(kind, 0) + row["count"]
    good = df.where(F.col(REASON).isNull()).drop(REASON, *META_COLUMNS)
    report = QuarantineReport(
        table=table, total=total, rejected=rejected, top_reasons=top, files=tuple(counts["files"])
    )
    return good, report
