"""The encoding job: knowledge tables (``kar knowledge``) → one vector per answer in ``OUT/<kind>``.

For each kind (``user``, ``item``, and ``kerec`` when asked for: one text per item, keyed like ``item``):

1. the knowledge rows are read in Spark; rows whose status is not ``ok`` or whose text is empty, blank or
   missing go to ``OUT/quarantine/<kind>`` with the reason (rewritten every run, so it tells the truth about
   the current knowledge);
2. a text's identity is ``(entity_id, as_of, sha256(text))``; identities already encoded with the same model
   are skipped by an anti-join against the vector table, so an unchanged rerun encodes nothing;
3. the rest is spread round-robin over one Spark task per core; each task loads the model once per Python
   worker, encodes in batches (long texts chunked, never truncated) and appends whole parquet parts as it
   goes, so ``kill -9`` loses at most the batch in flight and a rerun picks up the rest; NaN/inf vectors are
   quarantined instead of written. A few texts (``driver_max_texts``, what an incremental run brings) are
   encoded the same way by the driver itself: a Spark job's scheduling and its workers' model loads would
   cost more than the encoding;
4. after the new parts are complete: parts of another model are deleted (a model change re-encodes
   everything first), and older parts are rewritten without rows whose knowledge changed or went away,
   so the table holds exactly one vector per current text;
5. ``OUT/summary.json`` gets the counts, model, dimension, time and sentences/s per kind;
6. the embeddings gate (``validation.suites.embeddings``) checks the written tables: one dimension, finite
   values, norms in range, vectors not collapsed (mean pairwise cosine); a failure stops the job with one line
   after the vectors and summary are written. JSON results go to ``OUT/../validation``, and Data Docs too when
   a suite fails (``kar validate embeddings`` renders them any time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType, StringType, StructField, StructType

from kar.contracts import storage, tables
from kar.contracts.errors import DataError, EnvironmentProblem, ModelUnavailable
from kar.contracts.progress import Progress, silent
from kar.contracts.results import EncodeSummary
from kar.contracts.storage import Folder
from kar.contracts.timing import StageTimes
from spark_jobs.encoding.model import (
    DEFAULT_BATCH_SIZE,
    ModelRef,
    SentenceEncoder,
    finite_rows,
    load_model,
    resolve_model,
    set_threads,
    torch_threads,
)
from spark_jobs.encoding.parts import PartTable
from spark_jobs.encoding.schema import KEY_COLUMNS, QUARANTINE_SCHEMA, UTC_MICROS, VECTOR_SCHEMA, vector_table
from spark_jobs.id_maps import IdMap, read_id_map
from spark_jobs.knowledge.job import write_summary
from spark_jobs.schema import parquet_rows

KINDS: tuple[str, ...] = tables.ALL_KINDS
"""Kinds the job can encode; ``kerec`` (optional knowledge) only when asked for."""
DEFAULT_KINDS: tuple[str, ...] = tables.KINDS
ID_COLUMNS = {kind: tables.ID_COLUMNS[tables.ENTITY_OF[kind]] for kind in KINDS}
# Up to this many knowledge rows per kind the job plans on the driver with pyarrow (counts, quarantine, what is
# already encoded) and sends only the texts to encode through Spark.
SMALL_KNOWLEDGE_ROWS = 50_000
# Texts to encode at or below which the driver encodes them: Spark's fixed cost (a job, a Python worker per
# core, each loading the model) is seconds, the driver's rate on its own cores is the bare library's.
DRIVER_MAX_TEXTS = 1000
# Rows per written part: ~25 s of encoding per task here, the most a kill -9 can cost.
DEFAULT_FLUSH_ROWS = 1024
EMPTY_TEXT = "empty text"
NON_FINITE = "non-finite vector"
TASK_STATS = StructType(
    [
        StructField("encoded", LongType()),
        StructField("non_finite", LongType()),
        StructField("chunked", LongType()),
        StructField("windows", LongType()),
        StructField("model_loads", LongType()),
        StructField("load_seconds", DoubleType()),
        StructField("encode_seconds", DoubleType()),
        StructField("dim", IntegerType()),
        StructField("aborted", StringType()),
    ]
)
PRUNE_STATS = StructType([StructField("dropped", LongType()), StructField("deleted", BooleanType())])


# What can be encoded: the LLM's answer, or the prompt's data (the no-LLM control).
TEXT_COLUMNS = ("text", "prompt")


@dataclass(frozen=True, kw_only=True)
class EncodeJob:
    """What to encode, with which model, and where.

    Attributes:
        knowledge_dir: Folder written by ``kar knowledge`` (holds ``user/`` and ``item/``).
        out: Output folder: ``OUT/<kind>`` vectors, ``OUT/quarantine/<kind>``, ``OUT/summary.json``.
        model: sentence-transformers model name or folder (default: the shipped all-MiniLM-L6-v2).
        kinds: Which knowledge tables to encode (``user``, ``item``, ``kerec``).
        batch_size: Texts (chunks) per forward pass.
        tasks: Spark tasks that encode (default: the cluster's parallelism).
        threads: Torch threads per task (default: ``spark.task.cpus``, i.e. one per core a task holds).
        flush_rows: Rows per written part: the most work a crash can lose per task.
        fault_block_after_parts: Fault injection for tests only: each writer (a Spark task, or the driver) blocks
            for good once it has written this many vector parts, so a kill test kills at a known point.
        fault_nan_entity_ids: Fault injection for tests only: these entities' vectors are replaced by NaN
            after encoding, to exercise the non-finite quarantine with a real model.
        text_column: The column encoded: ``text`` (the LLM's answer) or ``prompt`` (the data the LLM was given:
            the no-LLM control of the quality benchmark). Rows are selected by the answer's status either way,
            so both cover the same entities.
        id_maps_of: The prepared folder whose ``id_maps/`` give each vector its ``entity_key`` (the dataset's own
            id); None or no maps: the int64 id as text.
        compact: Leave each table as one file once the job is done (Feast's file offline store needs it); False
            keeps the parts as the tasks wrote them (what a crash leaves, for tests).
        driver_max_texts: Texts to encode (per kind) at or below which the driver encodes them with its own
            torch threads instead of Spark tasks (same parts, same resume rules); 0: always Spark.
    """

    knowledge_dir: Folder
    out: Folder
    model: str | None = None
    kinds: tuple[str, ...] = DEFAULT_KINDS
    batch_size: int = DEFAULT_BATCH_SIZE
    tasks: int | None = None
    threads: int | None = None
    flush_rows: int = DEFAULT_FLUSH_ROWS
    fault_nan_entity_ids: frozenset[int] = frozenset()
    fault_block_after_parts: int | None = None
    text_column: str = "text"
    id_maps_of: Folder | None = None
    compact: bool = True
    driver_max_texts: int = DRIVER_MAX_TEXTS

    def vectors(self, kind: str) -> PartTable:
        return PartTable(self.out / kind, schema=VECTOR_SCHEMA)

    def quarantine(self, kind: str) -> PartTable:
        return PartTable(self.out / "quarantine" / kind, schema=QUARANTINE_SCHEMA)

    def check(self) -> None:
        """Fail before any Spark work on bad settings or missing input, with the command that fixes it."""
        for name, value in (("batch_size", self.batch_size), ("flush_rows", self.flush_rows)):
            if value < 1:
                raise DataError(f"encode: {name} must be at least 1, got {value}")
        for name, value in (("tasks", self.tasks), ("threads", self.threads)):
            if value is not None and value < 1:
                raise DataError(f"encode: {name} must be at least 1, got {value}")
        if self.driver_max_texts < 0:
            raise DataError(f"encode: driver_max_texts must be 0 or more, got {self.driver_max_texts}")
        if self.text_column not in TEXT_COLUMNS:
            raise DataError(f"encode: text column {self.text_column!r} is not one of {', '.join(TEXT_COLUMNS)}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise DataError(f"encode: unknown kind(s) {', '.join(unknown)}; use {', '.join(KINDS)}")
        if not storage.is_dir(self.knowledge_dir):
            raise DataError(f"{self.knowledge_dir}: no knowledge folder; {knowledge_fix(self.knowledge_dir)}")
        for kind in self.kinds:
            _require_table(self.knowledge_dir, kind)


def knowledge_fix(knowledge_dir: Folder, kind: str | None = None) -> str:
    """The ``kar knowledge`` command that writes ``knowledge_dir`` (or one kind of it)."""
    # `kar knowledge --data DATA` writes DATA/knowledge unless told otherwise.
    default = knowledge_dir.name == "knowledge"
    where = f"--data {knowledge_dir.parent}" if default else f"--data DATA --out {knowledge_dir}"
    return f"run `kar knowledge {where}{f' --kind {kind}' if kind else ''}` first"


def _require_table(knowledge_dir: Folder, kind: str) -> Folder:
    path = knowledge_dir / kind
    names = storage.list_names(path)
    if not any(n.endswith(".parquet") and not n.startswith(("_", ".")) for n in names):
        raise DataError(f"{path}: no {kind} knowledge table; {knowledge_fix(knowledge_dir, kind)}")
    return path


def knowledge_table(knowledge_dir: Folder, kind: str, *, text_column: str = "text") -> tuple[ds.Dataset, list[str]]:
    """One kind's knowledge table (pyarrow, schema from the footers: no data read) and the columns the job reads.

    Raises:
        DataError: The table is missing, empty of files, or lacks a column the job needs.
    """
    path = _require_table(knowledge_dir, kind)
    dataset = storage.parquet_dataset(path)
    needed = list(dict.fromkeys((ID_COLUMNS[kind], "as_of", "status", "text", text_column)))
    missing = [c for c in needed if c not in dataset.schema.names]
    if missing:
        fix = knowledge_fix(knowledge_dir, kind)
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected a `kar knowledge` table ({fix})")
    return dataset, needed


def read_knowledge(
    spark: SparkSession,
    *,
    knowledge_dir: Folder,
    kind: str,
    text_column: str = "text",
    id_maps_of: Folder | None = None,
) -> DataFrame:
    """One kind's knowledge rows with ``entity_id``, ``entity_key``, ``text_hash`` and ``reason`` (null =
    encodable). ``entity_key`` is the dataset's own id from the prepared folder ``id_maps_of`` (its id maps),
    else the int64 id as text.

    Raises:
        DataError: The table is missing, empty of files, or lacks a column the job needs.
    """
    knowledge_table(knowledge_dir, kind, text_column=text_column)
    rows = spark.read.parquet(str(knowledge_dir / kind))
    id_column = ID_COLUMNS[kind]
    status, text = F.col("status"), F.col(text_column)
    reason = (
        F.when(F.col(id_column).isNull(), F.lit(f"missing {id_column}"))
        .when(F.col("as_of").isNull(), F.lit("missing as_of"))
        .when(status.isNull() | (status != "ok"), F.concat(F.lit("status: "), F.coalesce(status, F.lit("null"))))
        # (?U): Unicode whitespace too, as Python's str.strip sees it; a blank answer carries no knowledge.
        .when(text.isNull() | ~text.rlike(r"(?U)\S"), F.lit(EMPTY_TEXT))
    )
    selected = rows.select(
        F.col(id_column).cast("long").alias("entity_id"),
        F.lit(kind).alias("kind"),
        F.col("as_of").cast("timestamp").alias("as_of"),
        status.cast("string").alias("status"),
        text.cast("string").alias("text"),
        F.sha2(text.cast("string"), 256).alias("text_hash"),
        reason.alias("reason"),
    )
    id_map = read_id_map(spark, id_maps_of, tables.ENTITY_OF[kind]) if id_maps_of is not None else None
    if id_map is None:
        return selected.withColumn("entity_key", F.col("entity_id").cast("string"))
    keyed = selected.join(F.broadcast(id_map), "entity_id", "left")
    return keyed.withColumn("entity_key", F.coalesce("entity_key", F.col("entity_id").cast("string")))


def _now(n: int) -> pa.Array:
    return pa.array(np.full(n, time.time_ns() // 1000, dtype=np.int64)).cast(UTC_MICROS)


def _vector_rows(frame: pd.DataFrame, vectors: np.ndarray, n_chunks: np.ndarray, *, kind: str, model: str) -> pa.Table:
    return vector_table(
        entity_id=pa.array(frame["entity_id"].to_numpy(), pa.int64()),
        entity_key=pa.array(frame["entity_key"].tolist(), pa.string()),
        as_of=pa.array(frame["as_of_us"].to_numpy(), pa.int64()),
        vectors=vectors,
        n_chunks=pa.array(n_chunks, pa.int32()),
        text_hash=pa.array(frame["text_hash"].to_numpy(), pa.string()),
        kind=kind,
        model=model,
        created_at_us=time.time_ns() // 1000,
    )


def _non_finite_rows(frame: pd.DataFrame, *, kind: str, model: str) -> pa.Table:
    n = len(frame)
    return pa.table(
        {
            "entity_id": pa.array(frame["entity_id"].to_numpy(), pa.int64()),
            "kind": pa.array([kind] * n, pa.string()),
            "as_of": pa.array(frame["as_of_us"].to_numpy(), pa.int64()).cast(UTC_MICROS),
            "status": pa.array(["ok"] * n, pa.string()),
            "text": pa.array(frame["text"].tolist(), pa.string()),
            "text_hash": pa.array(frame["text_hash"].to_numpy(), pa.string()),
            "model": pa.array([model] * n, pa.string()),
            "reason": pa.array([NON_FINITE] * n, pa.string()),
            "created_at": _now(n),
        },
        schema=QUARANTINE_SCHEMA,
    )


def _encode_tasks(
    job: EncodeJob, *, kind: str, ref: ModelRef, threads: int | None
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each Spark task (or the driver) runs: encode its rows, append vector parts, yield one row of
    task stats. ``threads``: torch threads to set first (None: the process's own setting)."""
    vectors_root, quarantine_root = job.vectors(kind).uri, job.quarantine(kind).uri
    batch_size, flush_rows, faulty = job.batch_size, job.flush_rows, job.fault_nan_entity_ids
    block_after = job.fault_block_after_parts

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        stats: dict[str, Any] = dict.fromkeys(("encoded", "non_finite", "chunked", "windows", "model_loads"), 0)
        stats.update(load_seconds=0.0, encode_seconds=0.0, dim=None, aborted=None)
        try:
            model, load_seconds = load_model(ref)
        except EnvironmentProblem as exc:
            # Not raised through Spark (a JVM stack trace): the driver turns it into one clear error.
            stats["aborted"] = str(exc)
            yield pd.DataFrame([stats])
            return
        if load_seconds is not None:
            stats.update(model_loads=1, load_seconds=load_seconds)
        if threads is not None:
            set_threads(threads)
        encoder = SentenceEncoder(model=model, batch_size=batch_size)
        stats["dim"] = encoder.dim
        vectors_table = PartTable(vectors_root, schema=VECTOR_SCHEMA)
        quarantine = PartTable(quarantine_root, schema=QUARANTINE_SCHEMA)
        parts_written = 0
        for batch in batches:
            for start in range(0, len(batch), flush_rows):
                frame = batch.iloc[start : start + flush_rows]
                started = time.perf_counter()
                encoded = encoder.encode(frame["text"].tolist())
                stats["encode_seconds"] += time.perf_counter() - started
                if faulty:
                    encoded.vectors[frame["entity_id"].isin(faulty).to_numpy()] = np.nan
                ok = finite_rows(encoded.vectors)
                if ok.any():
                    rows = _vector_rows(frame[ok], encoded.vectors[ok], encoded.n_chunks[ok], kind=kind, model=ref.name)
                    vectors_table.append(rows, tag=ref.tag)
                    parts_written += 1
                    if block_after is not None and parts_written >= block_after:
                        threading.Event().wait()  # until killed: the test's known point
                if not ok.all():
                    quarantine.append(_non_finite_rows(frame[~ok], kind=kind, model=ref.name), tag=ref.tag)
                stats["encoded"] += int(ok.sum())
                stats["non_finite"] += int((~ok).sum())
                stats["chunked"] += int((encoded.n_chunks[ok] > 1).sum())
                stats["windows"] += int(encoded.n_chunks.sum())
        yield pd.DataFrame([stats])

    return run


class _PartWatcher:
    """Reports rows landing in new parts while the Spark tasks run (tasks report nothing until they end)."""

    def __init__(self, table: PartTable, *, tag: str, total: int, label: str, progress: Progress) -> None:
        self._table, self._tag, self._total, self._label = table, tag, total, label
        self._detail = getattr(progress, "detail", None)
        self._before = set(table.parts(tag))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.perf_counter()

    def __enter__(self) -> _PartWatcher:
        if self._detail is not None:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                done = self._table.count_rows(p for p in self._table.parts(self._tag) if p not in self._before)
            except OSError:  # a part renamed under us: try again next tick
                continue
            rate = done / max(time.perf_counter() - self._started, 1e-9)
            self._detail(f"{done}/{self._total} {self._label} texts, {rate:.1f} sentences/s")  # type: ignore[misc]


def _row_key() -> Column:
    """A row's identity as one string, built the same way here and by ``_prune_tasks`` from a part."""
    return F.concat_ws("|", F.col("entity_id").cast("string"), F.unix_micros("as_of").cast("string"), "text_hash")


def _prune_tasks(table_root: str, tag: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Each task rewrites its parts without the listed rows: new part first, then the old one is deleted."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        table = PartTable(table_root, schema=VECTOR_SCHEMA)
        for batch in batches:
            for path, drop in zip(batch["_file"], batch["_drop"], strict=True):
                part = table.read(path)
                keys = pc.binary_join_element_wise(
                    pc.cast(part["entity_id"], pa.string()),
                    pc.cast(pc.cast(part["as_of"], pa.int64()), pa.string()),
                    part["text_hash"],
                    "|",
                )
                keep = pc.invert(pc.is_in(keys, value_set=pa.array(list(drop), pa.string())))
                kept = part.filter(keep)
                if kept.num_rows:
                    table.append(kept, tag=tag)
                # A crash between the append and this delete leaves duplicates; the next run drops them.
                table.delete([path])
                yield pd.DataFrame({"dropped": [part.num_rows - kept.num_rows], "deleted": [True]})

    return run


def prune(spark: SparkSession, *, table: PartTable, parts: Sequence[str], current: DataFrame, tag: str) -> int:
    """Rewrite ``parts`` without stale rows (not in ``current`` keys any more) or duplicates; returns rows dropped.

    Duplicates only arise when a crash hits a rewrite between writing the new part and deleting the old one.
    """
    if not parts:
        return 0
    schema = from_arrow_schema(VECTOR_SCHEMA)
    existing = (
        spark.read.schema(schema)
        .parquet(*(storage.spark_path(table.root, p) for p in parts))
        .select(*KEY_COLUMNS, "created_at", F.input_file_name().alias("_file"))
    )
    newest_first = Window.partitionBy(*KEY_COLUMNS).orderBy(F.col("created_at").desc(), F.col("_file"))
    marked = current.select(*KEY_COLUMNS).distinct().withColumn("_current", F.lit(True))
    drop = (
        existing.withColumn("_n", F.row_number().over(newest_first))
        .join(marked, list(KEY_COLUMNS), "left")
        .filter(F.col("_current").isNull() | (F.col("_n") > 1))
        .groupBy("_file")
        .agg(F.collect_list(_row_key()).alias("_drop"))
    )
    n_files = drop.count()
    if not n_files:
        return 0
    tasks = max(1, min(n_files, spark.sparkContext.defaultParallelism))
    done = drop.repartition(tasks).mapInPandas(_prune_tasks(table.uri, tag), PRUNE_STATS).collect()
    return sum(r["dropped"] for r in done)


def _first_dim(table: PartTable, parts: Sequence[str]) -> int | None:
    for path in parts:
        dims = table.read(path, columns=["dim"]).column("dim")
        if len(dims):
            return int(dims[0].as_py())
    return None


def _other_models(table: PartTable, parts: Sequence[str]) -> list[str]:
    names: set[str] = set()
    for path in parts:
        names.update(v for v in table.read(path, columns=["model"]).column("model").unique().to_pylist() if v)
    return sorted(names)


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """What one kind's run has to do: counts by reject reason, texts to encode, the current keys.

    Attributes:
        by_reason: Input rows by reject reason (None: encodable).
        n_distinct: Encodable texts, one per key.
        n_cached: Of those, already encoded with this model.
        todo: The texts to encode (``entity_id, entity_key, as_of_us, text, text_hash``), as a Spark DataFrame.
        todo_frame: The same texts as pandas, for the driver to encode.
        current: Every encodable key, as a Spark DataFrame (what pruning keeps).
        release: Frees what the plan cached.
    """

    by_reason: dict[str | None, int]
    n_distinct: int
    n_cached: int
    todo: Callable[[], DataFrame]
    todo_frame: Callable[[], pd.DataFrame]
    current: Callable[[], DataFrame]
    release: Callable[[], None]


def _plan_in_spark(
    spark: SparkSession, *, job: EncodeJob, kind: str, ref: ModelRef, mine: Sequence[str], times: StageTimes
) -> _Plan:
    """The plan computed in Spark: for knowledge tables too large to read on the driver."""
    with times.stage("read"):
        rows = read_knowledge(
            spark, knowledge_dir=job.knowledge_dir, kind=kind, text_column=job.text_column, id_maps_of=job.id_maps_of
        ).cache()
        by_reason = {r["reason"]: r["n"] for r in rows.groupBy("reason").agg(F.count("*").alias("n")).collect()}
    # Rewritten every run: it lists what the current knowledge lacks; the tasks add non-finite vectors to it.
    with times.stage("quarantine"):
        bad = rows.filter(F.col("reason").isNotNull()).withColumns(
            {"model": F.lit(ref.name), "created_at": F.current_timestamp()}
        )
        bad.select(*QUARANTINE_SCHEMA.names).write.mode("overwrite").parquet(job.quarantine(kind).uri)
    encodable = rows.filter(F.col("reason").isNull()).dropDuplicates(list(KEY_COLUMNS))
    with times.stage("already_encoded"):
        if mine:
            paths = [storage.spark_path(job.vectors(kind).root, p) for p in mine]
            done = spark.read.schema(from_arrow_schema(VECTOR_SCHEMA)).parquet(*paths).select(*KEY_COLUMNS).distinct()
            marked = encodable.join(done.withColumn("_done", F.lit(True)), list(KEY_COLUMNS), "left")
        else:
            marked = encodable.withColumn("_done", F.lit(None).cast("boolean"))
        counts = marked.agg(F.count("*").alias("n"), F.count("_done").alias("cached")).first()
    todo_columns = ("entity_id", "entity_key", F.unix_micros("as_of").alias("as_of_us"), "text", "text_hash")
    todo = marked.filter(F.col("_done").isNull()).select(*todo_columns)
    return _Plan(
        by_reason=by_reason,
        n_distinct=int(counts["n"]),
        n_cached=int(counts["cached"]),
        todo=lambda: todo,
        todo_frame=todo.toPandas,
        current=lambda: encodable,
        release=rows.unpersist,
    )


def _plan_in_arrow(
    spark: SparkSession, *, job: EncodeJob, kind: str, ref: ModelRef, mine: Sequence[str], times: StageTimes
) -> _Plan:
    """The same plan computed with pyarrow on the driver: on a table this small, each Spark job (count, write,
    anti-join) costs more than its work. Only the encoding itself goes to Spark."""
    with times.stage("read"):
        rows = read_knowledge_arrow(
            knowledge_dir=job.knowledge_dir, kind=kind, text_column=job.text_column, id_maps_of=job.id_maps_of
        )
        by_reason = {(None if pd.isna(k) else k): int(n) for k, n in rows["reason"].value_counts(dropna=False).items()}
    with times.stage("quarantine"):
        bad = rows[rows["reason"].notna()]
        quarantine = job.quarantine(kind)
        quarantine.replace(_quarantine_rows(bad, model=ref.name), tag=ref.tag)
    encodable = rows[rows["reason"].isna()].drop_duplicates(list(KEY_COLUMNS))
    with times.stage("already_encoded"):
        table = job.vectors(kind)
        done = pa.concat_tables([table.read(p, columns=list(KEY_COLUMNS)) for p in mine]) if mine else None
        keys = encodable.assign(as_of_us=encodable["as_of"].astype("datetime64[us, UTC]").astype("int64"))
        if done is not None:
            done_keys = pd.DataFrame(
                {
                    "entity_id": done["entity_id"].to_numpy(),
                    "as_of_us": pc.cast(done["as_of"], pa.int64()).to_numpy(),
                    "text_hash": done["text_hash"].to_numpy(zero_copy_only=False),
                }
            ).drop_duplicates()
            keys = keys.merge(done_keys.assign(_done=True), on=["entity_id", "as_of_us", "text_hash"], how="left")
        else:
            keys = keys.assign(_done=pd.NA)
    todo = keys[keys["_done"].isna()][["entity_id", "entity_key", "as_of_us", "text", "text_hash"]]
    schema = "entity_id long, entity_key string, as_of_us long, text string, text_hash string"
    current_schema = "entity_id long, as_of timestamp, text_hash string"
    return _Plan(
        by_reason=by_reason,
        n_distinct=len(keys),
        n_cached=int(keys["_done"].notna().sum()),
        todo=lambda: spark.createDataFrame(todo, schema),
        todo_frame=lambda: todo,
        current=lambda: spark.createDataFrame(encodable[list(KEY_COLUMNS)], current_schema),
        release=lambda: None,
    )


def read_knowledge_arrow(
    *, knowledge_dir: Folder, kind: str, text_column: str = "text", id_maps_of: Folder | None = None
) -> pd.DataFrame:
    """:func:`read_knowledge` with pyarrow, as pandas: the same columns and reasons (``as_of`` in UTC).

    Raises:
        DataError: The table is missing, empty of files, or lacks a column the job needs.
    """
    dataset, needed = knowledge_table(knowledge_dir, kind, text_column=text_column)
    id_column = ID_COLUMNS[kind]
    frame = dataset.to_table(columns=needed).to_pandas()
    text = frame[text_column].astype("string")
    status = frame["status"].astype("string")
    blank = text.isna() | ~text.fillna("").str.contains(r"\S", regex=True)
    reason = pd.Series([None] * len(frame), dtype="object")
    reason[blank] = EMPTY_TEXT
    bad_status = status.isna() | (status != "ok")
    reason[bad_status] = "status: " + status[bad_status].fillna("null")
    reason[frame["as_of"].isna()] = "missing as_of"
    reason[frame[id_column].isna()] = f"missing {id_column}"
    ids = frame[id_column].astype("Int64")
    out = pd.DataFrame(
        {
            "entity_id": ids,
            "kind": kind,
            "as_of": pd.to_datetime(frame["as_of"], utc=True).astype("datetime64[us, UTC]"),
            "status": status,
            "text": text,
            # object, even with no row: an empty list would be float64, which no merge on text hashes accepts.
            "text_hash": pd.Series(
                [None if t is pd.NA else hashlib.sha256(t.encode()).hexdigest() for t in text], dtype="object"
            ),
            "reason": reason,
        }
    )
    id_map = IdMap.load(id_maps_of, tables.ENTITY_OF[kind]) if id_maps_of is not None else None

    def entity_key(entity_id: Any) -> str | None:
        if pd.isna(entity_id):
            return None
        raw = id_map.to_raw.get(int(entity_id)) if id_map is not None else None
        return raw if raw is not None else str(int(entity_id))

    out["entity_key"] = [entity_key(i) for i in ids]
    return out


def _strings(values: pd.Series) -> pa.Array:
    """A text column as Arrow strings, pandas' missing markers as nulls."""
    return pa.array([None if pd.isna(v) else str(v) for v in values], pa.string())


def _quarantine_rows(bad: pd.DataFrame, *, model: str) -> pa.Table:
    n = len(bad)
    return pa.table(
        {
            "entity_id": pa.array(bad["entity_id"].astype("float64").to_numpy(), pa.float64()).cast(pa.int64()),
            "kind": _strings(bad["kind"]),
            "as_of": pa.array(bad["as_of"]).cast(UTC_MICROS),
            "status": _strings(bad["status"]),
            "text": _strings(bad["text"]),
            "text_hash": _strings(bad["text_hash"]),
            "model": pa.array([model] * n, pa.string()),
            "reason": _strings(bad["reason"]),
            "created_at": _now(n),
        },
        schema=QUARANTINE_SCHEMA,
    )


def _encode_on_driver(
    todo: pd.DataFrame, *, job: EncodeJob, kind: str, ref: ModelRef
) -> tuple[list[dict[str, Any]], int]:
    """What one Spark task does, done by the driver with all its torch threads (or ``job.threads``): the stats
    row and the threads it used."""
    with torch_threads(job.threads) as threads:
        runner = _encode_tasks(job, kind=kind, ref=ref, threads=None)
        rows = [row for frame in runner(iter([todo])) for row in frame.to_dict("records")]
    return rows, threads


@dataclass(kw_only=True)
class _Encoded:
    """What the encoding tasks (or the driver) reported, summed over tasks."""

    where: str | None = None  # "driver", "spark", or None when nothing was encoded
    tasks: int = 0
    threads: int = 1
    encoded: int = 0
    non_finite: int = 0
    chunked: int = 0
    windows: int = 0
    model_loads: int = 0
    load_seconds: float = 0.0  # the slowest task's: tasks load in parallel
    task_seconds: list[float] = field(default_factory=list)
    dims: set[int] = field(default_factory=set)

    def add(self, row: Mapping[str, Any]) -> None:
        for name in ("encoded", "non_finite", "chunked", "windows", "model_loads"):
            setattr(self, name, getattr(self, name) + row[name])
        self.load_seconds = max(self.load_seconds, row["load_seconds"])
        self.task_seconds.append(round(row["encode_seconds"], 2))
        self.dims.add(row["dim"])


def _encode_todo(
    spark: SparkSession, plan: _Plan, *, job: EncodeJob, kind: str, ref: ModelRef, table: PartTable, step: Progress
) -> _Encoded:
    """Encode what the plan lacks on the driver (a few texts) or in Spark tasks, writing parts as it goes."""
    n_todo = plan.n_distinct - plan.n_cached
    threads = job.threads or int(spark.conf.get("spark.task.cpus", "1") or 1)
    if not n_todo:
        return _Encoded(threads=threads)
    on_driver = n_todo <= job.driver_max_texts
    tasks = 1 if on_driver else max(1, min(n_todo, job.tasks or spark.sparkContext.defaultParallelism))
    where = "the driver" if on_driver else f"{tasks} Spark task{'s' if tasks > 1 else ''}"
    step(f"encoding {n_todo} {kind} texts ({plan.n_cached} cached) with {ref.name} on {where}")
    with _PartWatcher(table, tag=ref.tag, total=n_todo, label=kind, progress=step):
        if on_driver:
            task_stats, threads = _encode_on_driver(plan.todo_frame(), job=job, kind=kind, ref=ref)
        else:
            runner = _encode_tasks(job, kind=kind, ref=ref, threads=threads)
            # Round-robin, not by key: equal task sizes, so no core idles while another still encodes.
            task_stats = plan.todo().repartition(tasks).mapInPandas(runner, TASK_STATS).collect()
    aborted = [r["aborted"] for r in task_stats if r["aborted"]]
    if aborted:
        raise ModelUnavailable(f"encode {kind}: {aborted[0]}")
    encoded = _Encoded(where="driver" if on_driver else "spark", tasks=tasks, threads=threads)
    for row in task_stats:
        encoded.add(row)
    return encoded


def _commit(
    spark: SparkSession,
    plan: _Plan,
    *,
    job: EncodeJob,
    ref: ModelRef,
    table: PartTable,
    mine: list[str],
    others: list[str],
    times: StageTimes,
) -> tuple[int, int]:
    """With every new vector written, drop what is stale: other models' parts, then vectors of texts no longer
    in the knowledge table. Returns (parts removed, rows pruned)."""
    started = time.perf_counter()
    removed_parts = table.delete(others)
    with times.stage("prune"):
        pruned = prune(spark, table=table, parts=mine, current=plan.current(), tag=ref.tag) if mine else 0
    table.remove_leftovers()
    # One file per table: Feast's file offline store fails to sort a multi-file source whose point-in-time join
    # leaves some rows without a match ("Divisions calculation failed for non-numeric column 'created_at'").
    if job.compact:
        table.compact(ref.tag)
    if not table.parts(ref.tag):
        # An empty table with the schema: Feast can still register a source for a kind with no knowledge yet.
        table.append(VECTOR_SCHEMA.empty_table(), tag=ref.tag)
    plan.release()
    times.add("commit", time.perf_counter() - started - times.seconds["prune"])
    return removed_parts, pruned


def encode_kind(
    spark: SparkSession, *, kind: str, job: EncodeJob, ref: ModelRef, progress: Progress | None = None
) -> EncodeSummary:
    """Encode one kind (see the module docstring) and return its summary entry.

    Raises:
        DataError: The kind's knowledge table is missing or malformed.
        KarError: The model could not be loaded in the Spark tasks (parts written so far are kept).
    """
    step = progress or silent
    started = time.perf_counter()
    times = StageTimes()
    table = job.vectors(kind)
    mine = table.parts(ref.tag)
    others = [p for p in table.parts() if p not in set(mine)]
    small = parquet_rows(_require_table(job.knowledge_dir, kind)) <= SMALL_KNOWLEDGE_ROWS
    plan = (_plan_in_arrow if small else _plan_in_spark)(spark, job=job, kind=kind, ref=ref, mine=mine, times=times)
    rejected = {reason: n for reason, n in plan.by_reason.items() if reason is not None}
    replaced = _other_models(table, others) if others else []
    if replaced:
        step(
            f"{kind}: the vector table holds {', '.join(replaced)} vectors; re-encoding all with {ref.name} "
            "(old parts are removed once the new ones are complete)"
        )
    with times.stage("encode"):
        encoded = _encode_todo(spark, plan, job=job, kind=kind, ref=ref, table=table, step=step)
    encode_seconds = times.seconds["encode"]
    removed_parts, pruned = _commit(spark, plan, job=job, ref=ref, table=table, mine=mine, others=others, times=times)
    if replaced:
        step(f"{kind}: removed {removed_parts} parts of {', '.join(replaced)}")
    seconds = time.perf_counter() - started
    return EncodeSummary(
        input=sum(plan.by_reason.values()),
        encoded=encoded.encoded,
        skipped_cached=plan.n_cached,
        empty=rejected.get(EMPTY_TEXT, 0),
        not_ok=sum(n for reason, n in rejected.items() if reason.startswith("status: ")),
        rejected=rejected,
        duplicate=plan.by_reason.get(None, 0) - plan.n_distinct,
        non_finite=encoded.non_finite,
        chunked=encoded.chunked,
        windows=encoded.windows,
        rows=table.count_rows(table.parts(ref.tag)),
        model=ref.name,
        dim=encoded.dims.pop() if len(encoded.dims) == 1 else _first_dim(table, table.parts(ref.tag)),
        batch_size=job.batch_size,
        encoded_on=encoded.where,
        tasks=encoded.tasks,
        threads_per_task=encoded.threads,
        model_loads=encoded.model_loads,
        model_load_seconds=round(encoded.load_seconds, 2),
        replaced_models=replaced,
        removed_parts=removed_parts,
        pruned_rows=pruned,
        encode_seconds=round(encode_seconds, 2),
        # Model time per task: unequal values mean a core idled while the slowest task finished.
        task_encode_seconds=sorted(encoded.task_seconds),
        seconds=round(seconds, 2),
        # End to end (reading, anti-join, model loads, writes); encode_* is the encoding stage alone.
        sentences_per_s=round(encoded.encoded / seconds, 2) if encoded.encoded else None,
        encode_sentences_per_s=round(encoded.encoded / encode_seconds, 2) if encoded.encoded else None,
        stage_seconds=times.as_dict(),
    )


def encode_knowledge(
    spark: SparkSession,
    *,
    knowledge_dir: Folder,
    out: Folder,
    model: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    kinds: Sequence[str] = DEFAULT_KINDS,
    tasks: int | None = None,
    threads: int | None = None,
    flush_rows: int = DEFAULT_FLUSH_ROWS,
    fault_nan_entity_ids: Sequence[int] = (),
    fault_block_after_parts: int | None = None,
    text_column: str = "text",
    id_maps_of: Folder | None = None,
    compact: bool = True,
    driver_max_texts: int | None = None,
    progress: Progress | None = None,
) -> dict[str, EncodeSummary]:
    """Encode the knowledge of each kind into ``out/<kind>`` (see the module docstring and ``EncodeJob``).

    Returns:
        The summary entry of each kind (also written to ``out/summary.json``).

    Raises:
        DataError: Unknown kind, bad setting, or a missing/malformed knowledge folder or table (checked for
            every kind before any is encoded).
        KarError: The model could not be loaded.
    """
    job = EncodeJob(
        knowledge_dir=storage.location(knowledge_dir),
        out=storage.location(out),
        model=model,
        kinds=tuple(kinds),
        batch_size=batch_size,
        tasks=tasks,
        threads=threads,
        flush_rows=flush_rows,
        fault_nan_entity_ids=frozenset(int(i) for i in fault_nan_entity_ids),
        fault_block_after_parts=fault_block_after_parts,
        text_column=text_column,
        id_maps_of=id_maps_of,
        compact=compact,
        driver_max_texts=DRIVER_MAX_TEXTS if driver_max_texts is None else driver_max_texts,
    )
    job.check()
    ref = resolve_model(model)
    for kind in job.kinds:  # every table's columns, before any work
        knowledge_table(job.knowledge_dir, kind, text_column=job.text_column)
    summaries = {}
    for kind in job.kinds:
        summary = encode_kind(spark, kind=kind, job=job, ref=ref, progress=progress)
        write_summary(job.out, kind, summary.to_dict())
        summaries[kind] = summary
    # Imported here: the gate's great_expectations import is only paid by jobs that get this far.
    from validation import stages
    from validation.gate import VALIDATION_DIR, Validator

    gate_started = time.perf_counter()
    # Docs only on a failure: a small incremental run would spend as long rendering them as encoding.
    reports = storage.local_folder(job.out.parent / VALIDATION_DIR)
    validator = Validator(out_dir=reports, name="encode", docs_on_pass=False)
    stages.embeddings(spark, None, validator, vectors_dir=job.out, kinds=job.kinds)
    validator.finish()
    gate_seconds = time.perf_counter() - gate_started
    for kind in job.kinds:
        # The gate checks every kind in one pass: each kind's summary carries its share.
        stages_seconds = dict(summaries[kind].stage_seconds, gate=round(gate_seconds / len(job.kinds), 3))
        stages_seconds["total"] += stages_seconds["gate"]
        summaries[kind] = dataclasses.replace(
            summaries[kind],
            validation={r.suite: r.as_dict() for r in validator.reports if r.suite.startswith(f"embeddings.{kind}")},
            stage_seconds=stages_seconds,
        )
        write_summary(job.out, kind, summaries[kind].to_dict())
    for report in validator.reports:
        report.raise_for_failures(kept=f"vectors and summary are written in {job.out}")
    return summaries
