"""The knowledge job: prompt frames → cache lookup → Spark tasks calling the LLM → knowledge tables.

For one kind (``user``, ``item``) or the two-step LLM-KERec flow (``kerec``: entity extraction per item,
then complementary judgements per candidate entity pair):

1. prompts are built in Spark and keyed by ``sha256(model, params, prompt hash)``;
2. keys already answered in the cache are skipped (a rerun makes no LLM call);
3. the rest is spread over Spark tasks; each task runs an async client with bounded concurrency and
   appends answers to the cache as they arrive, so ``kill -9`` at any moment loses at most a few seconds;
4. prompts are joined with the cache: usable answers go to ``OUT/<table>``, the rest (error, empty,
   refused, truncated, over budget) to ``OUT/quarantine/<table>`` with the reason; ``OUT/summary.json``
   gets counts by status, tokens, wall time, prompts/s and an estimated cost.

Data-quality gates (``validation.suites``, every kind and LLM-KERec's two steps): prompts that break a
row-level rule (empty message, no history) go to ``OUT/quarantine/prompts/<table>`` and are not sent; usable
answers that break one (too short or long, refusal/boilerplate) go to ``OUT/quarantine/answers/<table>``; item
answers' year/genre claims are scored against the item table (``OUT/hallucination/item``). LLM-KERec's judged
pairs must mostly carry a readable verdict, its graph a probability per edge, and ``OUT/kerec`` one text of
1..12 targets per item. A batch-level failure (e.g. more than 5% empty answers) stops the job after the tables
and the summary are written, with one line naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import LongType, StringType, StructField, StructType

from kar.contracts import storage, tables
from kar.contracts.errors import DataError, EndpointDown, EndpointRejected, error_class
from kar.contracts.progress import Progress
from kar.contracts.results import KerecSummary, KnowledgeSummary
from kar.contracts.storage import Folder
from kar.contracts.timing import StageTimes
from spark_jobs.knowledge import kerec, prompts
from spark_jobs.knowledge.config import (
    Kind,
    PromptFields,
    PromptSpec,
    Scenario,
    load_scenario,
    scenario_for_dataset,
)
from spark_jobs.llm.cache import ANSWER_SCHEMA, AnswerCache
from spark_jobs.llm.client import Endpoint, LLMClient, Request, answer_all
from validation import hallucination, suites
from validation.gate import VALIDATION_DIR, Validator

JobKind = Literal["user", "item", "kerec"]
JOB_KINDS: tuple[JobKind, ...] = ("user", "item", "kerec")
ID_COLUMNS: dict[Kind, list[str]] = {
    "user": ["user_id"],
    "item": ["item_id"],
    "entity": ["item_id"],
    "pair": ["source", "target"],
}
TABLES: dict[Kind, str] = {"user": "user", "item": "item", "entity": "kerec_entity_answers", "pair": "kerec_pairs"}
# Prompt text is kept for audit and for the no-LLM control; the fixed system prompt is in the config.
DROPPED_PROMPT_COLUMNS = ("system", "json_schema", "key", "over_budget")
# Prompts at or below which the answer-status gate runs on pandas rebuilt from the status counts: on a handful
# of rows great_expectations' own Spark jobs cost seconds.
SMALL_STATUS_ROWS = 50_000
TASK_STATS = StructType(
    [
        StructField("calls", LongType()),
        StructField("tokens_in", LongType()),
        StructField("tokens_out", LongType()),
        StructField("aborted", StringType()),
        StructField("error", StringType()),
    ]
)


@dataclass(frozen=True, kw_only=True)
class Pricing:
    """Dollars per million tokens, for the cost estimate (default: a small hosted model's list price)."""

    usd_per_mtok_in: float = 0.15
    usd_per_mtok_out: float = 0.60

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return round((tokens_in * self.usd_per_mtok_in + tokens_out * self.usd_per_mtok_out) / 1e6, 6)


@dataclass(frozen=True, kw_only=True)
class KnowledgeJob:
    """What to generate and where.

    Attributes:
        data_dir: Prepared folder (``kar prepare``).
        out: Output folder for knowledge tables, quarantine and summary.
        endpoint: The OpenAI-compatible server to call.
        model: Model id to request (resolved from the server when the endpoint names none).
        scenario: Scenario name or YAML path; default from the prepared dataset.
        cache_dir: Answer cache (default ``OUT/cache``); share it between runs and datasets freely.
        tokenizer: The served model's ``tokenizer.json`` or folder, for exact token budgets.
        limit: Only N entities (users, items, pairs) of each kind, a fixed sample spread over the ids, for trials.
        pricing: Prices for the cost estimate.
        tasks: Spark tasks for the LLM step (default: the cluster's parallelism).
        kerec_max_pairs: Candidate entity pairs LLM-KERec sends for judgement.
        validation_dir: Where the gates' JSON results and Data Docs go (default ``DATA/validation``).
    """

    data_dir: Folder
    out: Folder
    endpoint: Endpoint
    model: str
    scenario: str | Path | None = None
    cache_dir: Folder | None = None
    tokenizer: str | Path | None = None
    limit: int | None = None
    pricing: Pricing = field(default_factory=Pricing)
    tasks: int | None = None
    kerec_max_pairs: int = 500
    validation_dir: Folder | None = None

    def validation_out(self) -> Folder:
        """JSON results and Data Docs of the gates (default ``DATA/validation``, beside the prepare job's)."""
        return self.validation_dir or self.data_dir / VALIDATION_DIR

    def load_scenario(self) -> Scenario:
        return scenario_for(self.data_dir, self.scenario)

    def cache(self) -> AnswerCache:
        return AnswerCache(self.cache_dir or self.out / "cache")


def scenario_for(data_dir: Folder, scenario: str | Path | None = None) -> Scenario:
    """``scenario`` (a bundled name or a YAML path), else the prepared dataset's default scenario."""
    if scenario is not None:
        return load_scenario(scenario)
    summary = storage.location(data_dir) / tables.SUMMARY_FILE
    dataset = json.loads(storage.read_text(summary))["dataset"] if storage.is_file(summary) else "synthetic"
    return load_scenario(scenario_for_dataset(dataset))


def with_keys(prompts: DataFrame, *, model: str, spec: PromptSpec) -> DataFrame:
    """Add ``prompt_hash`` (system, message, schema) and the cache ``key`` (model, params, prompt hash)."""
    sep = "\x1f"  # unit separator: cannot occur in cleaned prompt text, so fields cannot run together
    prompt_hash = F.sha2(F.concat_ws(sep, "system", "prompt", F.coalesce("json_schema", F.lit(""))), 256)
    params = spec.sampling.canonical()
    return (
        prompts.withColumn("prompt_hash", prompt_hash)
        .withColumn("params", F.lit(params))
        .withColumn("key", F.sha2(F.concat_ws(sep, F.lit(model), F.lit(params), F.col("prompt_hash")), 256))
    )


def cached_answers(spark: SparkSession, cache: AnswerCache) -> DataFrame:
    """The cache as a Spark DataFrame, one row per key (a usable answer beats an error, newest wins)."""
    parts = cache.parts()
    answer_schema = from_arrow_schema(ANSWER_SCHEMA)
    if not parts:
        return spark.createDataFrame([], answer_schema)
    answers = spark.read.schema(answer_schema).parquet(*(storage.spark_path(cache.root, p) for p in parts))
    order = Window.partitionBy("key").orderBy((F.col("status") == "error").asc(), F.col("created_at").desc())
    return answers.withColumn("_n", F.row_number().over(order)).filter("_n = 1").drop("_n")


def _answer_tasks(
    *, endpoint: Endpoint, model: str, params: Mapping[str, Any], cache_root: str
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each Spark task runs: answer its prompts, append them to the cache, yield task stats."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        requests = (
            Request(
                key=row.key,
                prompt_hash=row.prompt_hash,
                system=row.system,
                prompt=row.prompt,
                params=params,
                json_schema=row.json_schema,
            )
            for batch in batches
            for row in batch.itertuples(index=False)
        )
        stats = {"calls": 0, "tokens_in": 0, "tokens_out": 0, "aborted": None, "error": None}

        def keep(answer: dict[str, Any]) -> None:
            writer.add(answer)
            stats["calls"] += 1
            stats["tokens_in"] += answer["tokens_in"] or 0
            stats["tokens_out"] += answer["tokens_out"] or 0

        async def go() -> None:
            async with LLMClient(endpoint=endpoint, model=model) as client:
                await answer_all(requests, client=client, on_answer=keep)

        with AnswerCache(cache_root).writer() as writer:
            try:
                asyncio.run(go())
            except (EndpointDown, EndpointRejected) as exc:
                # Not raised through Spark: the driver raises it again, as its class, after the others finish.
                stats["aborted"], stats["error"] = str(exc), type(exc).__name__
        yield pd.DataFrame([stats])

    return run


class _CacheWatcher:
    """Reports answers landing in the cache while Spark tasks run (tasks report nothing until they end)."""

    def __init__(self, cache: AnswerCache, *, total: int, label: str, progress: Progress) -> None:
        self._cache, self._total, self._label, self._progress = cache, total, label, progress
        self._before = set(cache.parts())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.perf_counter()

    def __enter__(self) -> _CacheWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        detail = getattr(self._progress, "detail", None)
        while not self._stop.wait(2.0):
            if detail is None:
                continue
            try:
                done = self._cache.count_rows([p for p in self._cache.parts() if p not in self._before])
            except OSError:  # a part renamed or compacted under us: try again next tick
                continue
            rate = done / max(time.perf_counter() - self._started, 1e-9)
            detail(f"{done}/{self._total} {self._label} answers, {rate:.2f} prompts/s")


def answer_prompts(
    spark: SparkSession, prompts: DataFrame, *, kind: Kind, spec: PromptSpec, job: KnowledgeJob, progress: Progress
) -> tuple[DataFrame, dict[str, Any]]:
    """Answer a prompt frame (cache first, then the LLM) and join every prompt with its answer.

    Returns:
        The prompt rows with answer columns (``status`` is ``over_budget`` for prompts never sent and
        ``missing`` for prompts a stopped job did not reach), and the run's LLM statistics.
    """
    cache = job.cache()
    keyed = with_keys(prompts, model=job.model, spec=spec).cache()
    done = cached_answers(spark, cache).filter(F.col("status") != "error").select("key").distinct()
    marked = keyed.join(done.withColumn("_cached", F.lit(True)), "key", "left")
    to_send = ~F.col("over_budget") & F.col("_cached").isNull()
    # One job counts both: on a refresh-sized run each Spark job costs more than its rows.
    counts = marked.agg(F.count("*").alias("total"), F.count(F.when(to_send, 1)).alias("todo")).first()
    total, n_todo = int(counts["total"]), int(counts["todo"])
    todo = marked.filter(to_send).select("key", "prompt_hash", "system", "prompt", "json_schema")
    tasks = max(1, min(n_todo, job.tasks or spark.sparkContext.defaultParallelism))
    started = time.perf_counter()
    stats = {"prompts": total, "cached": total - n_todo, "calls": 0, "tokens_in": 0, "tokens_out": 0}
    if n_todo:
        progress(f"asking the LLM for {n_todo} {kind} answers ({total - n_todo} cached)")
        # The key is read from the driver's environment here: a cluster's executors do not inherit it.
        endpoint = dataclasses.replace(job.endpoint, api_key=job.endpoint.key())
        runner = _answer_tasks(
            endpoint=endpoint, model=job.model, params=spec.sampling.to_request(), cache_root=cache.uri
        )
        with _CacheWatcher(cache, total=n_todo, label=kind, progress=progress):
            # Round-robin, not by key: equal task sizes, so no task idles its slots while another still queues.
            task_stats = todo.repartition(tasks).mapInPandas(runner, TASK_STATS).collect()
        for row in task_stats:
            for name in ("calls", "tokens_in", "tokens_out"):
                stats[name] += row[name]
        aborted = [row for row in task_stats if row["aborted"]]
        if aborted:
            kept = cache.count_rows()
            raise error_class(aborted[0]["error"])(
                f"LLM at {job.endpoint.base_url} failed: {aborted[0]['aborted']}. {stats['calls']} answers of this "
                f"run are kept in {cache.root} ({kept} cached in all); rerun the same command to resume"
            )
    stats["llm_seconds"] = round(time.perf_counter() - started, 2)
    stats["prompts_per_s"] = round(stats["calls"] / stats["llm_seconds"], 3) if stats["calls"] else None
    answers = cached_answers(spark, cache).drop("prompt_hash", "params")
    joined = keyed.join(answers, "key", "left").withColumn(
        "status",
        F.when(F.col("over_budget"), F.lit("over_budget")).otherwise(F.coalesce("status", F.lit("missing"))),
    )
    return joined, stats


def _reason() -> F.Column:
    return F.concat_ws(": ", F.col("status"), F.coalesce(F.col("error"), F.col("finish_reason")))


def write_answers(joined: DataFrame, *, kind: Kind, out: Folder, validator: Validator | None = None) -> None:
    """Usable answers to ``OUT/<table>``, the rest to ``OUT/quarantine/<table>``.

    With a ``validator``, usable answers that break a row-level rule of ``validation.suites.answers`` go to
    ``OUT/quarantine/answers/<table>`` instead (they keep status ``ok`` there; the failed rules say why).
    """
    table = TABLES[kind]
    kept = joined.drop(*DROPPED_PROMPT_COLUMNS)
    ok = kept.filter(F.col("status") == "ok")
    if validator is not None:
        ok, _ = validator.validate(ok, suites.answers(kind), quarantine=out / "quarantine" / "answers" / table)
    ok = ok.orderBy(*ID_COLUMNS[kind])
    ok.write.mode("overwrite").parquet(str(out / table))
    bad = kept.filter(F.col("status") != "ok").withColumn("reason", _reason())
    bad.write.mode("overwrite").parquet(str(out / "quarantine" / table))


@dataclass(frozen=True, kw_only=True)
class StatusTotals:
    """Prompts per answer status, with the tokens of those answers (one Spark job over the joined rows)."""

    rows: int
    tokens_in: int
    tokens_out: int
    flagged: int

    @classmethod
    def of(cls, joined: DataFrame) -> dict[str, StatusTotals]:
        sums = [F.sum(c).alias(c) for c in ("tokens_in", "tokens_out", "n_flagged")]
        totals = joined.groupBy("status").agg(F.count("*").alias("rows"), *sums).collect()
        return {
            r["status"]: cls(rows=r["rows"], tokens_in=int(r["tokens_in"] or 0), tokens_out=int(r["tokens_out"] or 0),
                             flagged=int(r["n_flagged"] or 0))
            for r in totals
        }  # fmt: skip


def gate_statuses(validator: Validator, joined: DataFrame, counts: Mapping[str, int], *, kind: Kind) -> None:
    """The answer-status suite; on few prompts over a pandas frame rebuilt from ``counts`` (the same statuses,
    the same expectations), else over the joined rows in Spark."""
    if sum(counts.values()) > SMALL_STATUS_ROWS:
        validator.validate(joined, suites.answer_statuses(kind))
        return
    statuses = [status for status, n in sorted(counts.items()) for _ in range(n)]
    validator.validate_pandas(pd.DataFrame({"status": statuses}), suites.answer_statuses(kind))


def _limited(prompts: DataFrame, kind: Kind, limit: int | None) -> DataFrame:
    """A trial's sample: the N prompts whose ids hash lowest, so the same N every run, spread over the id space
    (the first N ids of a log are often its oldest or a test account's)."""
    if not limit:
        return prompts
    ids = [F.col(c) for c in ID_COLUMNS[kind]]
    return prompts.orderBy(F.xxhash64(*ids), *ids).limit(limit)


def _run_kind(
    spark: SparkSession,
    prompts: DataFrame,
    *,
    kind: Kind,
    scenario: Scenario,
    job: KnowledgeJob,
    progress: Progress,
    validator: Validator | None = None,
) -> tuple[DataFrame, dict[str, Any]]:
    progress(f"building {kind} prompts")
    frame = _limited(prompts, kind, job.limit)
    gated = validator is not None
    if gated:
        progress(f"gating the {kind} prompts")
        frame = frame.cache()
        quarantine = job.out / "quarantine" / "prompts" / TABLES[kind]
        frame, report = validator.validate(frame, suites.prompts(kind), quarantine=quarantine)
        if not report.passed:
            validator.finish()
            report.raise_for_failures(kept="no prompt of this kind was sent to the LLM")
    progress(f"looking up cached {kind} answers")
    joined, stats = answer_prompts(spark, frame, kind=kind, spec=scenario.spec(kind), job=job, progress=progress)
    joined = joined.cache()
    progress(f"writing {kind} answers and their quarantine")
    write_answers(joined, kind=kind, out=job.out, validator=validator)
    progress(f"counting the {kind} answers and their tokens")
    totals = StatusTotals.of(joined)
    stats["status"] = {status: t.rows for status, t in totals.items()}
    if gated:
        progress(f"gating the {kind} answer statuses")
        gate_statuses(validator, joined, stats["status"], kind=kind)
    items = spark.read.parquet(str(job.data_dir / tables.ITEMS_DIR)) if kind == "item" else None
    # Year and genre claims can only be checked against a catalogue that has years and genres.
    if gated and items is not None and {"year", "genres"} <= set(items.columns):
        progress("checking the item answers' year and genre claims")
        answers = spark.read.parquet(str(job.out / TABLES[kind]))
        facts = hallucination.check_item_facts(answers, items, out=job.out / hallucination.OUTPUT_DIR / "item")
        stats["item_facts"] = facts.as_dict()
    answered = [t for status, t in totals.items() if status != "over_budget"]
    stats["answer_tokens_in"] = sum(t.tokens_in for t in answered)
    stats["answer_tokens_out"] = sum(t.tokens_out for t in answered)
    stats["prompts_flagged_injection"] = sum(t.flagged for t in answered)
    stats["usd_estimate_this_run"] = job.pricing.cost(stats["tokens_in"], stats["tokens_out"])
    stats["usd_estimate_all_answers"] = job.pricing.cost(stats["answer_tokens_in"], stats["answer_tokens_out"])
    return joined, stats


def generate_knowledge(
    spark: SparkSession, *, kind: JobKind, job: KnowledgeJob, progress: Progress | None = None
) -> KnowledgeSummary | KerecSummary:
    """Generate one kind of knowledge (see module docstring) and return its summary entry.

    Raises:
        DataError: Missing prepared tables or a bad scenario config.
        KarError: The LLM endpoint failed past retries (answers so far are kept; rerun resumes).
    """
    if kind not in JOB_KINDS:
        raise DataError(f"unknown knowledge kind {kind!r}; use one of {', '.join(JOB_KINDS)}")
    started = time.perf_counter()
    times = StageTimes()
    step = times.steps(progress)
    step("checking the scenario against the tables")
    scenario = job.load_scenario()
    _require_prepared(job.data_dir)
    fields = prompts.prompt_fields_for(job.data_dir, scenario)
    validator = Validator(out_dir=storage.local_folder(job.validation_out()), name=f"knowledge-{kind}")
    if kind == "user":
        frame = prompts.user_prompts(spark, job.data_dir, scenario=scenario, tokenizer=job.tokenizer, fields=fields)
        _, summary = _run_kind(
            spark, frame, kind="user", scenario=scenario, job=job, progress=step, validator=validator
        )
    elif kind == "item":
        frame = prompts.item_prompts(spark, job.data_dir, scenario=scenario, tokenizer=job.tokenizer, fields=fields)
        _, summary = _run_kind(
            spark, frame, kind="item", scenario=scenario, job=job, progress=step, validator=validator
        )
    else:
        summary = _run_kerec(spark, scenario=scenario, job=job, progress=step, fields=fields, validator=validator)
    summary.update(
        kind=kind,
        scenario=scenario.name,
        prompt_fields=fields.as_dict(),
        model=job.model,
        endpoint=job.endpoint.base_url,
        endpoint_host=endpoint_host(job.endpoint.base_url),
        limit=job.limit,
        wall_seconds=round(time.perf_counter() - started, 2),
    )
    if validator.reports:
        step("validation results, Data Docs")
        validator.finish()
        summary["validation"] = {r.suite: r.as_dict() for r in validator.reports}
    step.done()
    summary["stage_seconds"] = times.as_dict()
    result = (KerecSummary if kind == "kerec" else KnowledgeSummary).from_dict(summary)
    write_summary(job.out, kind, result.to_dict())
    for report in validator.reports:
        report.raise_for_failures(kept=f"answers and summary are written in {job.out}; the cache keeps every answer")
    return result


def endpoint_host(base_url: str) -> str:
    """``host:port`` of an endpoint, for summaries (no path, no credentials)."""
    parsed = urlparse(base_url)
    return f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)


def _run_kerec(
    spark: SparkSession,
    *,
    scenario: Scenario,
    job: KnowledgeJob,
    progress: Progress,
    fields: PromptFields,
    validator: Validator,
) -> dict[str, Any]:
    entity_frame = prompts.item_prompts(
        spark, job.data_dir, scenario=scenario, kind="entity", tokenizer=job.tokenizer, fields=fields
    )
    entity_answers, entity_stats = _run_kind(
        spark, entity_frame, kind="entity", scenario=scenario, job=job, progress=progress, validator=validator
    )
    progress("LLM-KERec: entities and candidate pairs")
    items = spark.read.parquet(str(job.data_dir / tables.ITEMS_DIR))
    entities = kerec.item_entities(entity_answers, items).cache()
    entities.write.mode("overwrite").parquet(str(job.out / "kerec_entities"))
    history = spark.read.parquet(str(job.data_dir / tables.HISTORY_DIR))
    candidates = kerec.pair_candidates(history, entities, max_pairs=job.kerec_max_pairs)
    pair_frame = kerec.pair_prompts(candidates, scenario=scenario, tokenizer=job.tokenizer)
    pair_answers, pair_stats = _run_kind(
        spark, pair_frame, kind="pair", scenario=scenario, job=job, progress=progress, validator=validator
    )
    progress("LLM-KERec: the complementary graph and its gates")
    judged = kerec.judge_pairs(pair_answers.where(F.col("status") == kerec.OK)).cache()
    validator.validate(judged, suites.kerec_judgements())
    graph = judged.where(F.col("status") == kerec.OK)
    graph.write.mode("overwrite").parquet(str(job.out / "kerec_graph"))
    graph = spark.read.parquet(str(job.out / "kerec_graph"))
    validator.validate(graph, suites.kerec_graph())
    # The graph as a third knowledge type, in the answers' shape, so `kar encode --kind kerec` reads it as it
    # reads user/ and item/ (no LLM call: it is derived from the answers above).
    complements = kerec.complementary_knowledge(entities, graph)
    complements.write.mode("overwrite").parquet(str(job.out / tables.KEREC_DIR))
    validator.validate(spark.read.parquet(str(job.out / tables.KEREC_DIR)), suites.kerec_knowledge())
    judged.unpersist()
    edges = graph.agg(F.count("*").alias("n"), F.sum(F.col("complementary").cast("int")).alias("yes")).first()
    return {
        "entity": entity_stats,
        "pair": pair_stats,
        "entities": entities.count(),
        "graph_edges": int(edges["n"] or 0),
        "complementary_edges": int(edges["yes"] or 0),
        "knowledge_items": spark.read.parquet(str(job.out / tables.KEREC_DIR)).count(),
        # Recorded so `kar refresh` mines the same number of candidates again.
        "max_pairs": job.kerec_max_pairs,
    }


@dataclass(frozen=True, kw_only=True)
class PromptPlan:
    """What one kind would send, without sending it (``kar knowledge --dry-run``).

    Attributes:
        kind: ``user``, ``item`` or ``entity`` (LLM-KERec's first step; its pairs depend on the answers).
        prompts: Prompts that would be built (after ``limit``).
        over_budget: Of those, prompts over the token budget (never sent).
        prompt_tokens: Tokens of the prompts that would be sent (system + message + chat overhead).
        max_answer_tokens: Upper bound of the answers' tokens (``max_tokens`` per sent prompt).
        usd_estimate_max: Cost of all of that at the job's prices.
        prompt_fields: The attributes the prompts show, per role.
        samples: A few ``(system, message)`` pairs as they would be sent.
    """

    kind: str
    prompts: int
    over_budget: int
    prompt_tokens: int
    max_answer_tokens: int
    usd_estimate_max: float
    prompt_fields: dict[str, list[str]]
    samples: tuple[tuple[str, str], ...]


def plan_prompts(
    spark: SparkSession,
    *,
    kind: Literal["user", "item", "entity"],
    data_dir: Folder,
    scenario: Scenario,
    limit: int | None = None,
    tokenizer: str | Path | None = None,
    pricing: Pricing | None = None,
    samples: int = 2,
) -> PromptPlan:
    """Build one kind's prompts as the job would, count them and their tokens, and keep a few; no LLM call."""
    fields = prompts.prompt_fields_for(data_dir, scenario)
    if kind == "user":
        frame = prompts.user_prompts(spark, data_dir, scenario=scenario, tokenizer=tokenizer, fields=fields)
    else:
        frame = prompts.item_prompts(spark, data_dir, scenario=scenario, kind=kind, tokenizer=tokenizer, fields=fields)
    frame = _limited(frame, kind, limit).cache()
    sent = ~F.col("over_budget")
    totals = frame.agg(
        F.count("*").alias("n"),
        F.sum((~sent).cast("int")).alias("over"),
        F.sum(F.when(sent, F.col("prompt_tokens"))).alias("tokens"),
    ).first()
    shown = frame.where(sent).orderBy(F.xxhash64(*ID_COLUMNS[kind])).select("system", "prompt").limit(samples)
    n_sent = int(totals["n"] or 0) - int(totals["over"] or 0)
    answer_tokens = n_sent * scenario.spec(kind).sampling.max_tokens
    prompt_tokens = int(totals["tokens"] or 0)
    plan = PromptPlan(
        kind=kind,
        prompts=int(totals["n"] or 0),
        over_budget=int(totals["over"] or 0),
        prompt_tokens=prompt_tokens,
        max_answer_tokens=answer_tokens,
        usd_estimate_max=(pricing or Pricing()).cost(prompt_tokens, answer_tokens),
        prompt_fields=fields.as_dict(),
        samples=tuple((row["system"], row["prompt"]) for row in shown.collect()),
    )
    frame.unpersist()
    return plan


def write_prompt_tables(
    spark: SparkSession, *, data_dir: Folder, out: Folder, scenario: Scenario, tokenizer: str | Path | None = None
) -> dict[str, int]:
    """The no-LLM control's input, with no LLM call: each user's and item's prompt as a knowledge table.

    ``out/user`` and ``out/item`` have the columns ``kar encode`` reads (id, ``as_of``, ``status`` = ``ok``,
    ``text`` empty, ``prompt``), so ``kar encode --text-column prompt`` encodes the prompts' own content: the
    data the LLM would see, with no knowledge added. Prompts over the token budget are left out, as the job
    never sends them. Returns the rows written per kind.

    Raises:
        DataError: ``data_dir`` is not a prepared folder, or the scenario names a field it may not show.
    """
    _require_prepared(data_dir)
    fields = prompts.prompt_fields_for(data_dir, scenario)
    written = {}
    for kind in ("user", "item"):
        build = prompts.user_prompts if kind == "user" else prompts.item_prompts
        frame = build(spark, data_dir, scenario=scenario, tokenizer=tokenizer, fields=fields)
        table = frame.where(~F.col("over_budget")).select(
            *ID_COLUMNS[kind],
            "as_of",
            "prompt",
            F.lit("ok").alias("status"),
            F.lit(None).cast("string").alias("text"),
        )
        table.write.mode("overwrite").parquet(str(out / kind))
        written[kind] = spark.read.parquet(str(out / kind)).count()
    return written


def _require_prepared(data_dir: Folder) -> None:
    missing = [
        d
        for d in (tables.USERS_DIR, tables.ITEMS_DIR, tables.HISTORY_DIR, tables.CUTOFFS_DIR)
        if not storage.is_dir(data_dir / d)
    ]
    if missing:
        raise DataError(
            f"{data_dir}: missing prepared table(s) {', '.join(missing)}; run `kar prepare --out {data_dir}` first"
        )


def write_summary(out: Folder, kind: str, entry: Mapping[str, Any]) -> None:
    """Set ``kind``'s entry in ``out/summary.json``, keeping the other kinds' entries."""
    path = out / tables.SUMMARY_FILE
    summary = json.loads(storage.read_text(path)) if storage.is_file(path) else {}
    summary[kind] = entry
    storage.write_text(path, json.dumps(summary, indent=2, default=str))
