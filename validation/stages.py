"""Each stage's suites run on a data folder as it is on disk: ``kar validate STAGE --data DIR`` and the demo.

Nothing is moved here: rows that break a row-level rule are counted (and named in the JSON results), not
quarantined; the jobs' own gates do that while they write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from kar.contracts import storage, tables
from kar.contracts.errors import DataError
from kar.contracts.storage import Folder
from spark_jobs import schema
from validation import hallucination, suites
from validation.frames import (
    samples_with_cutoffs,
    split_stats,
    vector_spread,
    vector_spread_frame,
    vector_stats,
    vector_stats_frame,
)
from validation.gate import VALIDATION_DIR, ValidationReport, Validator

# Up to this many vectors (~75 MB at 384-d) the embeddings gate reads the table into numpy instead of Spark.
SMALL_VECTOR_ROWS = 50_000


def _read(spark: SparkSession, path: Folder, *, fix: str) -> Any:
    if not storage.is_dir(path):
        raise DataError(f"{path}: not found; {fix}")
    return spark.read.parquet(str(path))


def _protocol(data_dir: Path) -> str:
    summary = data_dir / tables.SUMMARY_FILE
    return json.loads(summary.read_text()).get("split", {}).get("protocol", "time") if summary.is_file() else "time"


def raw(spark: SparkSession, data_dir: Path, v: Validator) -> dict[str, Any]:
    fix = f"run `kar prepare --out {data_dir}` first"
    v.validate(_read(spark, data_dir / tables.INTERACTIONS_DIR, fix=fix), suites.raw_interactions())
    v.validate(_read(spark, data_dir / tables.USERS_DIR, fix=fix), suites.raw_users())
    v.validate(_read(spark, data_dir / tables.ITEMS_DIR, fix=fix), suites.raw_items())
    return {}


def prepared(spark: SparkSession, data_dir: Path, v: Validator) -> dict[str, Any]:
    fix = f"run `kar prepare --out {data_dir}` first"
    samples = _read(spark, data_dir / tables.SAMPLES_DIR, fix=fix)
    cutoffs = _read(spark, data_dir / tables.CUTOFFS_DIR, fix=fix)
    protocol = _protocol(data_dir)
    v.validate(samples_with_cutoffs(samples, cutoffs, protocol=protocol), suites.prepared_samples())
    v.validate(split_stats(samples), suites.prepared_splits(protocol=protocol))
    return {}


def prompts(spark: SparkSession, data_dir: Path, v: Validator) -> dict[str, Any]:
    from spark_jobs.knowledge import prompts as builders
    from spark_jobs.knowledge.config import load_scenario, scenario_for_dataset

    dataset = json.loads((data_dir / tables.SUMMARY_FILE).read_text())["dataset"]
    scenario = load_scenario(scenario_for_dataset(dataset))
    # No tokenizer: token counts are the builders' estimate, as in a knowledge run without the served model.
    v.validate(builders.user_prompts(spark, data_dir, scenario=scenario), suites.prompts("user"))
    v.validate(builders.item_prompts(spark, data_dir, scenario=scenario), suites.prompts("item"))
    return {}


def answers(spark: SparkSession, data_dir: Path, v: Validator) -> dict[str, Any]:
    knowledge = data_dir / "knowledge"
    fix = f"run `kar knowledge --data {data_dir}` first"
    extra: dict[str, Any] = {}
    for kind in tables.KINDS:
        ok = _gate_answers(spark, knowledge, v, kind=kind, table=kind, fix=fix)
        if kind == "item":
            items = _read(spark, data_dir / tables.ITEMS_DIR, fix=fix)
            table = v.out_dir / hallucination.OUTPUT_DIR / "item" if v.out_dir else None
            report = hallucination.check_item_facts(ok, items, out=table)
            extra["item_facts"] = report.as_dict()
    if (knowledge / tables.KEREC_DIR).is_dir():
        kerec_answers(spark, knowledge, v)
    return extra


def _gate_answers(spark: SparkSession, knowledge: Path, v: Validator, *, kind: str, table: str, fix: str) -> Any:
    """One kind's usable answers (``knowledge/<table>``) and the statuses of all its prompts, the quarantined
    ones included, through the answer suites; returns the usable answers."""
    ok = _read(spark, knowledge / table, fix=fix)
    v.validate(ok, suites.answers(kind))
    statuses = ok.select("status")
    for bad in (knowledge / "quarantine" / table, knowledge / "quarantine" / "answers" / table):
        if bad.is_dir():
            statuses = statuses.unionByName(spark.read.parquet(str(bad)).select("status"))
    v.validate(statuses, suites.answer_statuses(kind))
    return ok


def kerec_answers(spark: SparkSession, knowledge: Path, v: Validator) -> None:
    """LLM-KERec's steps as the knowledge job gates them: entity and pair answers, verdicts, graph, texts."""
    from spark_jobs.knowledge import kerec
    from spark_jobs.knowledge.job import TABLES

    fix = f"run `kar knowledge --data {knowledge.parent} --kind kerec` first"
    for step in ("entity", "pair"):
        ok = _gate_answers(spark, knowledge, v, kind=step, table=TABLES[step], fix=fix)
        if step == "pair":
            v.validate(kerec.judge_pairs(ok), suites.kerec_judgements())
    v.validate(_read(spark, knowledge / "kerec_graph", fix=fix), suites.kerec_graph())
    v.validate(_read(spark, knowledge / tables.KEREC_DIR, fix=fix), suites.kerec_knowledge())


def embeddings(
    spark: SparkSession,
    data_dir: Path | None,
    v: Validator,
    *,
    vectors_dir: Folder | None = None,
    kinds: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """``kinds`` defaults to user and item, and the optional kinds (LLM-KERec) the folder has vectors of."""
    vectors_dir = vectors_dir or Path(data_dir or ".") / "vectors"
    if kinds is None:
        kinds = tables.KINDS + tuple(k for k in tables.OPTIONAL_KINDS if storage.is_dir(vectors_dir / k))
    for kind in kinds:
        path = vectors_dir / kind
        fix = f"run `kar encode --data {data_dir}` first"
        if not storage.is_dir(path):
            raise DataError(f"{path}: not found; {fix}")
        if schema.parquet_rows(path) <= SMALL_VECTOR_ROWS:
            # In numpy: for a table this small, Spark's job scheduling costs ~30× the arithmetic.
            table = storage.parquet_dataset(path).to_table(columns=["vector", "dim"])
            v.validate_pandas(vector_stats_frame(table), suites.embeddings(kind))
            if table.num_rows >= 2:  # a spread needs two vectors
                v.validate_pandas(vector_spread_frame(table), suites.embedding_spread(kind))
            continue
        vectors = _read(spark, path, fix=fix).cache()
        v.validate(vector_stats(vectors), suites.embeddings(kind))
        if vectors.limit(2).count() == 2:
            v.validate(vector_spread(vectors), suites.embedding_spread(kind))
        vectors.unpersist()
    return {}


def features(spark: SparkSession, data_dir: Path, v: Validator) -> dict[str, Any]:
    fix = f"run `kar prepare --out {data_dir}` first"
    newest = _read(spark, data_dir / tables.INTERACTIONS_DIR, fix=fix).agg(F.max("event_timestamp")).first()[0]
    found = False
    for table in tables.VECTOR_TABLES + tables.OPTIONAL_VECTOR_TABLES:
        if (data_dir / table).is_dir():
            found = True
            v.validate(spark.read.parquet(str(data_dir / table)), suites.features(table, newest_event=newest))
    if not found:
        raise DataError(f"{data_dir}: no knowledge feature source (vectors/, adapted/); run `kar encode` first")
    return {}


def training(frame: pd.DataFrame, v: Validator) -> dict[str, Any]:
    """The training frame's suite; the caller builds the frame (Feast's point-in-time join lives above here)."""
    knowledge = tuple(k for k in tables.ALL_KINDS if f"has_{k}_knowledge" in frame.columns)
    v.validate_pandas(frame, suites.training(knowledge=knowledge))
    return {}


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "raw": raw,
    "prepared": prepared,
    "prompts": prompts,
    "answers": answers,
    "embeddings": embeddings,
    "features": features,
}
TRAINING_STAGE = "training"
"""The stage that validates the Feast training frame: ``validate_stage`` needs the frame's loader for it."""
STAGE_NAMES = (*STAGES, TRAINING_STAGE)


def validate_stage(
    spark: SparkSession,
    stage: str,
    *,
    data_dir: Path,
    out_dir: Path | None = None,
    training_frame: Callable[[Path], pd.DataFrame] | None = None,
) -> tuple[list[ValidationReport], dict[str, Any]]:
    """Run ``stage``'s suites on ``data_dir``; JSON results and Data Docs go to ``out_dir`` (default
    ``DATA/validation``, docs under ``docs/validate-<stage>``).

    Args:
        training_frame: For the ``training`` stage: builds the training frame of a prepared folder
            (``kar.serving.store.training_frame``, a Feast point-in-time join, which this layer cannot import).

    Returns:
        The reports and stage extras (``item_facts`` for answers).
    """
    if stage not in STAGE_NAMES:
        raise DataError(f"unknown stage {stage!r}; use one of {', '.join(STAGE_NAMES)}")
    if stage == TRAINING_STAGE and training_frame is None:
        raise ValueError("the training stage needs training_frame, the loader of the Feast training frame")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: folder not found")
    v = Validator(out_dir=out_dir or data_dir / VALIDATION_DIR, name=f"validate-{stage}")
    extra = training(training_frame(data_dir), v) if stage == TRAINING_STAGE else STAGES[stage](spark, data_dir, v)
    v.finish()
    return v.reports, extra


def stage_line(stage: str, reports: list[dict[str, Any]]) -> str:
    """One line for a stage from its reports' dicts (``ValidationReport.as_dict``), as the demo prints it."""
    failed = [name for r in reports for name in r["failed"]]
    passed = sum(r["passed"] for r in reports)
    rows = sum(r["rows"] for r in reports)
    rejected = sum(r["rejected"] for r in reports)
    verdict = "passed" if not failed else f"FAILED ({'; '.join(failed)})"
    return (
        f"validation {stage}: {verdict}, {passed}/{len(reports)} suites, {rows:,} rows checked, "
        f"{rejected:,} rejected by row rules"
    )


def stage_lines(reports: list[dict[str, Any]]) -> list[str]:
    """One line per stage, in pipeline order."""
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        by_stage.setdefault(report["stage"], []).append(report)
    return [stage_line(stage, by_stage[stage]) for stage in suites.STAGES if stage in by_stage]
