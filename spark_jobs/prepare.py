"""The prepare job: raw dataset → validated canonical tables → splits, written as parquet.

Layout of the output folder (names in ``spark_jobs.schema``)::

    interactions/ users/ items/          canonical tables (Feast sources for profiles)
    samples/                             CTR samples with split and behaviour feature (Feast entity rows)
    knowledge_history/ knowledge_cutoffs/  what later knowledge prompts may see, and as of when
    quarantine/<table>/                  rejected rows with file, line and reason
    quarantine/<stage>/<table>/          rows that broke a row-level expectation (``validation.suites``)
    validation/                          JSON result per suite and Data Docs HTML (``docs/prepare``)
    id_maps/<users|items>/               raw string id -> int64 id (datasets with string ids)
    summary.json                         counts of everything above
    <table>.unpublished/                 a gated table whose batch failed (the job stopped; never read downstream)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from kar.contracts import storage, tables
from kar.contracts.errors import DataError
from kar.contracts.progress import Progress
from kar.contracts.results import PrepareSummary
from kar.contracts.storage import Folder
from kar.contracts.timing import StageTimes
from spark_jobs.datasets import RawTables, TableSpec, load_dataset
from spark_jobs.datasets.base import PROMPT_FIELDS
from spark_jobs.fields import REASON, add_reason
from spark_jobs.quarantine import QuarantineReport, split_quarantine
from spark_jobs.splits import SplitConfig, make_splits
from validation import suites
from validation.frames import samples_with_cutoffs, split_stats
from validation.gate import VALIDATION_DIR, Check, ValidationReport, Validator

# Suites are built only when the gates run: building one needs great_expectations' context.
SuiteBuilder = Callable[[], Any]
# Row counts in the summary are read back from what was written (parquet metadata), not recomputed.
# A gated table is written here first and renamed into place once its batch passed.
UNPUBLISHED = ".unpublished"
_COUNTED = (
    tables.INTERACTIONS_DIR,
    tables.USERS_DIR,
    tables.ITEMS_DIR,
    tables.SAMPLES_DIR,
    tables.HISTORY_DIR,
    tables.CUTOFFS_DIR,
)


def _dedupe(df: DataFrame, keys: list[str], what: str) -> DataFrame:
    """Reject every row after the first (by file, line) that repeats ``keys``, naming the line it repeats."""
    window = Window.partitionBy(*keys).orderBy("_file", "_line")
    ranked = df.withColumns({"_rank": F.row_number().over(window), "_first": F.first("_line").over(window)})
    message = F.concat(F.lit(f"duplicate {what}, first at line "), F.col("_first").cast("string"))
    return add_reason(ranked, F.col("_rank") > 1, message).drop("_rank", "_first")


def _reject_unknown(interactions: DataFrame, known: DataFrame, key: str, source: str) -> DataFrame:
    flagged = interactions.join(F.broadcast(known.select(key).withColumn("_known", F.lit(True))), key, "left")
    # Datasets with their own ids (a team's strings) name the id as the user wrote it, not its int64 form.
    shown = F.col(f"raw_{key}") if f"raw_{key}" in interactions.columns else F.col(key).cast("string")
    message = F.concat(F.lit(f"{key}: "), shown, F.lit(f" not in {source}"))
    return add_reason(flagged, F.col("_known").isNull(), message).drop("_known")


def _clean_tables(
    raw: RawTables, quarantine_dir: Folder
) -> tuple[DataFrame, DataFrame, DataFrame, list[QuarantineReport]]:
    users = _dedupe(raw.users, ["user_id"], "user_id")
    items = _dedupe(raw.items, ["item_id"], "item_id")
    users, users_report = split_quarantine(users, table="users", out_dir=quarantine_dir)
    items, items_report = split_quarantine(items, table="items", out_dir=quarantine_dir)
    interactions = _dedupe(raw.interactions, ["user_id", "item_id", "timestamp"], "(user_id, item_id, timestamp)")
    interactions = _reject_unknown(interactions, users, "user_id", ", ".join(users_report.files))
    interactions = _reject_unknown(interactions, items, "item_id", ", ".join(items_report.files))
    interactions, inter_report = split_quarantine(interactions, table="interactions", out_dir=quarantine_dir)
    return users, items, interactions, [users_report, items_report, inter_report]


def _write(df: DataFrame, path: Folder) -> None:
    df.write.mode("overwrite").parquet(str(path))


def _interaction_stats(interactions: DataFrame) -> Row:
    return interactions.agg(
        F.count("*").alias("rows"), F.min("event_timestamp").alias("first"), F.max("event_timestamp").alias("last"),
        F.countDistinct("user_id").alias("users"), F.countDistinct("item_id").alias("items"),
        F.min("user_id").alias("min_user"), F.max("user_id").alias("max_user"),
    ).first()  # fmt: skip


def _label_rates(stats: DataFrame) -> dict[str, dict[str, float]]:
    return {
        r["split"]: {
            "samples": r["samples"],
            "users": r["users"],
            **({"items": r["items"]} if "items" in stats.columns else {}),
            "label_rate": round(r["label_rate"], 4),
        }
        for r in stats.collect()
    }


class _Unchecked:
    """What ``_Gates.observe`` returns with the gates off: the batch as it is."""

    def __init__(self, df: DataFrame) -> None:
        self.accepted = df

    def report(self) -> tuple[DataFrame, None]:
        return self.accepted, None


class _Gates:
    """The prepare job's data-quality gates, or nothing when ``validate=False`` (the benchmark's baseline).

    Small tables (profiles) are counted during their own write (``Validator.observe``); large ones in one pass of
    the gate's own. A table whose batch is judged after its write is written aside first (:func:`_staged`) and
    published (renamed into place) only when it passes (write-audit-publish): a failed batch never sits where
    the next stage reads.
    """

    def __init__(self, out: Folder, *, enabled: bool) -> None:
        self.out = out
        # Data Docs are files great_expectations writes itself: kept for local folders, in summary.json elsewhere.
        reports = storage.local_folder(out / VALIDATION_DIR)
        self.validator = Validator(out_dir=reports, name="prepare") if enabled else None

    def observe(self, df: DataFrame, build: SuiteBuilder, *, table: str) -> Check | _Unchecked:
        """Attach ``build()``'s suite to ``df``; rows breaking a row-level rule go to ``quarantine/<stage>/<table>``."""
        if self.validator is None:
            return _Unchecked(df)
        suite = build()
        quarantine = self.out / tables.QUARANTINE_DIR / suite.meta["stage"] / table
        return self.validator.observe(df, suite, quarantine=quarantine)

    def settle(self, check: Check | _Unchecked, *, kept: str = "") -> tuple[DataFrame, ValidationReport | None]:
        """The check's verdict once the job's action ran; a failed batch stops the job."""
        accepted, report = check.report()
        if report is not None and not report.passed:
            self.finish()
            report.raise_for_failures(kept=f"{kept}; " * bool(kept) + f"tables written so far stay in {self.out}")
        return accepted, report

    def publish(self, check: Check | _Unchecked, path: Folder, *, shape: Callable[[DataFrame], DataFrame]) -> None:
        """Write ``shape(check.accepted)`` to ``path``; with the gates on, aside first and renamed once it passes."""
        if self.validator is None:
            _write(shape(check.accepted), path)
            return
        staged = _staged(path)
        _write(shape(check.accepted), staged)
        self.settle(check, kept=f"the failed batch is in {staged}")
        storage.replace_tree(staged, path)

    def check_frame(self, frame: DataFrame, build: SuiteBuilder, *, kept: str = "") -> None:
        """Validate a small derived frame (batch-level only) in a pass of its own."""
        if self.validator is not None:
            self.settle(self.validator.observe(frame, build()), kept=kept)

    def finish(self) -> dict[str, dict[str, object]]:
        if self.validator is None:
            return {}
        self.validator.finish()
        return {r.suite: r.as_dict() for r in self.validator.reports}


def _staged(path: Folder) -> Folder:
    """Where a gated table is written before its batch passed."""
    return path.with_name(path.name + UNPUBLISHED)


def _publish_samples(spark: SparkSession, gates: _Gates, out: Folder, *, protocol: str) -> dict[str, dict[str, float]]:
    """Validate the samples written to ``samples.unpublished`` and publish them; returns per-split statistics.

    The samples are judged beside their user's knowledge cutoff, then per split. Rows that break a row rule stay
    out of the published table (they are in ``quarantine/prepared/samples``); a failed batch stays unpublished.
    """
    path = out / tables.SAMPLES_DIR
    staged = _staged(path)
    samples = spark.read.parquet(str(staged))
    kept = f"the failed batch is in {staged}"
    judged = samples
    if gates.validator is not None:
        cutoffs = spark.read.parquet(str(out / tables.CUTOFFS_DIR))
        judged = samples_with_cutoffs(samples, cutoffs, protocol=protocol).select(*samples.columns, "knowledge_cutoff")
    accepted, report = gates.settle(gates.observe(judged, suites.prepared_samples, table=tables.SAMPLES_DIR), kept=kept)
    rejected = report is not None and report.rejected
    per_split = split_stats(accepted if rejected else samples).cache()
    rates = _label_rates(per_split)
    gates.check_frame(per_split, partial(suites.prepared_splits, protocol=protocol), kept=kept)
    per_split.unpersist()
    if rejected:
        _write(accepted.drop("knowledge_cutoff"), path)
        storage.remove_tree(staged)
    else:
        storage.replace_tree(staged, path)
    return rates


def _canonical(interactions: DataFrame, raw: RawTables) -> DataFrame:
    """The interactions table as every later job reads it: a 0/1 label (given, or rating above the dataset's
    threshold) and an event timestamp."""
    label = F.col("label") if raw.label_given else (F.col("rating") > F.lit(raw.positive_threshold)).cast("int")
    return interactions.select(
        "user_id",
        "item_id",
        F.col("rating").cast("double").alias("rating"),
        label.alias("label"),
        F.timestamp_seconds("timestamp").alias("event_timestamp"),
    )


def _publish_profiles(
    gates: _Gates, raw: RawTables, users: DataFrame, items: DataFrame, *, out: Folder, valid_from: Column
) -> None:
    """Write the user and item profiles through their gates, each valid from ``valid_from``."""

    def with_valid_from(profiles: DataFrame) -> DataFrame:
        return profiles.withColumn("event_timestamp", valid_from)

    # Profiles are small: the gate counts while they are written (observed metrics), with no pass of its own.
    users_suite = partial(suites.raw_users, demographics=raw.catalogue_rules)
    gates.publish(
        gates.observe(users, users_suite, table=tables.USERS_DIR), out / tables.USERS_DIR, shape=with_valid_from
    )
    items_suite = partial(suites.raw_items, catalogue=raw.catalogue_rules)
    gates.publish(
        gates.observe(items, items_suite, table=tables.ITEMS_DIR), out / tables.ITEMS_DIR, shape=with_valid_from
    )


def _write_splits(interactions: DataFrame, split: SplitConfig, *, out: Folder) -> dict[str, object]:
    """Write the samples (staged until their gate passes), the knowledge histories and cutoffs; returns the
    split's boundaries."""
    splits = make_splits(interactions, split)
    _write(splits.samples, _staged(out / tables.SAMPLES_DIR))
    _write(splits.history, out / tables.HISTORY_DIR)
    _write(splits.cutoffs, out / tables.CUTOFFS_DIR)
    splits.release()
    return splits.boundaries


def prepare(
    *,
    spark: SparkSession,
    dataset: str,
    out: Folder,
    path: Path | None = None,
    split: SplitConfig | None = None,
    synthetic=None,
    spec: TableSpec | None = None,
    interactions: Sequence[str | Path] = (),
    progress: Progress | None = None,
    now: datetime | None = None,
    validate: bool = True,
    timings: StageTimes | None = None,
) -> PrepareSummary:
    """Run the prepare job and return its summary (also written to ``out/summary.json``).

    Args:
        spark: The session (see ``spark_jobs.session.get_spark``).
        dataset: One of ``spark_jobs.datasets.DATASETS``.
        out: Output folder; existing tables in it are overwritten.
        path: Input folder for file-based datasets.
        split: Split protocol and its parameters.
        synthetic: ``SyntheticConfig`` for the synthetic dataset.
        spec: The tables and column mapping of the ``table`` dataset.
        interactions: Interaction files in the dataset's own format read instead of its log, in order (the
            batches ``kar refresh`` appends); recorded in the summary.
        progress: Called with a short description as each step starts.
        now: Reference time for "timestamp in the future" checks (tests pin it).
        validate: Run the data-quality gates (``validation.suites`` raw and prepared); off only to measure
            their cost.
        timings: Stage times the caller started (e.g. with the Spark start); the job adds its steps.

    Raises:
        DataError: Missing files, an input so broken that most rows fail (wrong separator/encoding), or a
            failed batch-level expectation (tables written before it stay).
    """
    split = split or SplitConfig()
    times = timings or StageTimes()
    step = times.steps(progress)
    started = time.perf_counter()
    storage.make_dirs(out)
    now = now or datetime.now(UTC)
    max_timestamp = int((now + timedelta(days=1)).timestamp())
    gates = _Gates(out, enabled=validate)
    batches = [str(p) for p in interactions]

    step("reading raw files")
    raw = load_dataset(
        spark,
        dataset,
        path=path,
        work_dir=out,
        max_timestamp=max_timestamp,
        synthetic=synthetic,
        spec=spec,
        interactions=batches,
    )
    step("validating rows")
    users, items, interactions, reports = _clean_tables(raw, out / tables.QUARANTINE_DIR)

    canonical = _canonical(interactions, raw).persist()
    step("validating canonical tables")
    stats = _interaction_stats(canonical)  # materializes the cached canonical table
    interactions_suite = partial(suites.raw_interactions, now=now, rating_range=raw.rating_range)
    interactions, report = gates.settle(gates.observe(canonical, interactions_suite, table=tables.INTERACTIONS_DIR))
    if report is not None and report.rejected:
        stats = _interaction_stats(interactions)
    if stats["rows"] == 0:
        raise DataError(f"{dataset}: no interactions left after validation")
    # Profiles are a static snapshot valid from the first logged event, so every sample can join them.
    valid_from = F.lit(stats["first"]).cast("timestamp")

    step("writing canonical tables")
    _write(interactions, out / tables.INTERACTIONS_DIR)
    users_out = users.select("user_id", *raw.user_columns)
    items_out = items.select("item_id", *raw.item_columns)
    _publish_profiles(gates, raw, users_out, items_out, out=out, valid_from=valid_from)
    for name, id_map in raw.id_maps.items():
        _write(id_map, out / "id_maps" / name)

    step(f"splitting ({split.protocol} protocol)")
    boundaries = _write_splits(interactions, split, out=out)
    step("validating splits")
    label_rates = _publish_samples(spark, gates, out, protocol=split.protocol)
    step("counting what was written, Data Docs")
    written = {name: spark.read.parquet(str(out / name)) for name in _COUNTED}
    with ThreadPoolExecutor(max_workers=1) as pool:
        validation = pool.submit(gates.finish)  # JSON results and Data Docs, rendered while Spark counts rows
        counts = {name: table.count() for name, table in written.items()}
    step.done()

    summary = PrepareSummary(
        dataset=dataset,
        path=str(path) if path else None,
        spec=str(spec.path) if spec is not None else None,
        interactions=batches,
        split=asdict(split),
        boundaries=boundaries,
        notes={**raw.notes, "user_id_range": [stats["min_user"], stats["max_user"]]},
        rows={
            **counts,
            "interacting_users": stats["users"],
            "interacting_items": stats["items"],
        },
        quarantine={r.table: r.as_dict() for r in reports},
        profiles={"users": dict(users_out.dtypes[1:]), "items": dict(items_out.dtypes[1:])},
        prompt_fields=raw.prompt_fields or PROMPT_FIELDS,
        id_types=raw.id_types,
        id_maps=sorted(raw.id_maps),
        splits=label_rates,
        validation=validation.result(),
        time_range=[stats["first"].isoformat(), stats["last"].isoformat()],
        seconds=round(time.perf_counter() - started, 2),
        # Wall seconds per step (and the Spark start when the caller timed it): the job's fixed cost, named.
        stage_seconds=times.as_dict(),
    )
    storage.write_text(out / tables.SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, default=str))
    canonical.unpersist()
    return summary


__all__ = ["REASON", "prepare"]
