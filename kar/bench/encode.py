"""``kar bench encode``: the Spark encoding job against bare ``SentenceTransformer.encode`` on the same texts.

The question is what the job costs on top of the model: reading the knowledge, the anti-join that makes
reruns free, Arrow transfer to Python workers, chunk checks, part writes, quarantine and summary. Both sides
encode the same texts with the same model and batch size, in the same run:

* ``bare``: one ``encode`` call over every text in this process, with torch's default threads (all cores),
  the model loaded once beforehand (its import and load times are reported apart);
* ``ours``: ``encode_knowledge`` over a knowledge folder holding exactly those texts, into a fresh output
  folder each round (every text is encoded): one Spark task per core with ``spark.task.cpus`` threads each,
  or, for a kind with at most ``DRIVER_MAX_TEXTS`` texts (the small input), the driver with its own threads.
  Each input reports where it was encoded (``encoded_on``).

Start-up is measured once, apart: the JVM start and the first job, whose Python workers import
sentence-transformers and load the model. Spark kills Python workers idle for a minute (a fixed timeout),
and a bare round can take longer than that, so every measured job round is preceded by a tiny unmeasured job
that brings the workers back with the model loaded; each round reports the model loads it still saw.

Texts longer than the model's window are chunked by the job but truncated by bare ``encode``, so on them the
job does more work; ``chunked`` counts them (ML-100K answers have none).

Rounds alternate which side goes first, each side's rate is the median over rounds, and
``ratio = ours / bare`` (sentences/s). A cached rerun of the last round (0 texts encoded) closes the run, and
the job's vectors are compared with the bare ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shlex
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from kar.bench.report import Panel, machine, median, ratio, write_report
from kar.contracts.errors import DataError, KarError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.results import EncodeSummary
from kar.contracts.tables import KINDS
from spark_jobs.encoding.job import ID_COLUMNS, encode_knowledge
from spark_jobs.encoding.model import resolve_model
from spark_jobs.session import get_spark

GOAL = 0.9
SIDES = ("bare", "ours")
GENERATED_TEXTS = 512
# The large input: enough texts that encoding dominates (ML-100K's answers are ~1,800).
LARGE_TEXTS = 2048
# Texts of the unmeasured job that keeps Spark's Python workers (and their loaded model) alive before a round.
KEEPALIVE_TEXTS = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class Text:
    """One knowledge answer to encode, with the identity the job writes it under."""

    kind: str
    entity_id: int
    as_of: datetime
    text: str


def knowledge_folder(data_dir: Path) -> Path:
    """``data_dir`` itself when it holds ``user/`` or ``item/`` knowledge, else ``data_dir/knowledge``."""
    for folder in (data_dir, data_dir / "knowledge"):
        if any((folder / kind).is_dir() for kind in KINDS):
            return folder
    raise DataError(f"{data_dir}: no knowledge tables (user/, item/) here or in knowledge/; run `kar knowledge` first")


def read_texts(knowledge_dir: Path, *, limit: int | None = None) -> list[Text]:
    """The usable answers (status ``ok``, not blank) of a knowledge folder: users then items, by id."""
    texts = []
    for kind in KINDS:
        if not (knowledge_dir / kind).is_dir():
            continue
        table = ds.dataset(knowledge_dir / kind, format="parquet").to_table(
            columns=[ID_COLUMNS[kind], "as_of", "status", "text"]
        )
        for row in sorted(table.to_pylist(), key=lambda r: (r[ID_COLUMNS[kind]], r["as_of"])):
            if row["status"] == "ok" and row["text"] and row["text"].strip():
                texts.append(Text(kind=kind, entity_id=row[ID_COLUMNS[kind]], as_of=row["as_of"], text=row["text"]))
    if not texts:
        raise DataError(f"{knowledge_dir}: no usable knowledge answers to benchmark")
    return texts[:limit] if limit else texts


# Vocabulary of the generated answers: their content does not matter to speed, only their length.
_WORDS = (
    "film", "story", "director", "cast", "drama", "comedy", "thriller", "audience", "critics", "award", "score",
    "sequel", "classic", "character", "plot", "viewers", "enjoy", "prefer", "rated", "highly", "genre", "romance",
    "action", "animation", "documentary", "mystery", "era", "studio", "release", "performance", "soundtrack",
    "visual", "style", "theme", "family", "adventure", "science", "fiction", "horror", "western", "musical",
)  # fmt: skip


def generate_texts(n: int, *, seed: int = 0) -> list[Text]:
    """``n`` answer-like texts (40–110 words, within MiniLM's window), half users and half items."""
    rng = random.Random(seed)
    when = datetime(2024, 1, 1, tzinfo=UTC)
    texts = []
    for index in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(40, 110))]
        sentence = " ".join(words).capitalize() + "."
        texts.append(Text(kind=KINDS[index % 2], entity_id=index, as_of=when, text=sentence))
    return texts


def write_knowledge(texts: Sequence[Text], folder: Path) -> Path:
    """A knowledge folder (as ``kar knowledge`` writes it, only the columns the job reads) holding ``texts``.

    Only kinds that have texts get a table, so the job is not timed on an empty kind.
    """
    for kind in KINDS:
        rows = [t for t in texts if t.kind == kind]
        if not rows:
            continue
        table = pa.table(
            {
                ID_COLUMNS[kind]: pa.array([t.entity_id for t in rows], pa.int64()),
                "as_of": pa.array([t.as_of for t in rows], pa.timestamp("us", tz="UTC")),
                "status": pa.array(["ok"] * len(rows), pa.string()),
                "text": pa.array([t.text for t in rows], pa.string()),
            }
        )
        (folder / kind).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / kind / "part-00000.parquet")
    return folder


@dataclasses.dataclass(frozen=True, kw_only=True)
class BareModel:
    """The model as a plain user loads it, with what loading cost."""

    model: Any
    import_seconds: float
    load_seconds: float
    threads: int

    @classmethod
    def load(cls, source: str) -> BareModel:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        started = time.perf_counter()
        import torch
        from sentence_transformers import SentenceTransformer

        imported = time.perf_counter()
        model = SentenceTransformer(source, device="cpu")
        loaded = time.perf_counter()
        return cls(
            model=model,
            import_seconds=imported - started,
            load_seconds=loaded - imported,
            threads=torch.get_num_threads(),
        )

    def encode(self, texts: Sequence[str], *, batch_size: int) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=False)
        return time.perf_counter() - started, np.asarray(vectors, dtype=np.float32)


def _job_stats(summaries: Mapping[str, EncodeSummary]) -> dict[str, Any]:
    """Totals over kinds of one ``encode_knowledge`` run."""
    stages: dict[str, float] = {}
    for summary in summaries.values():
        for stage, seconds in summary.stage_seconds.items():
            stages[stage] = round(stages.get(stage, 0.0) + seconds, 3)
    return {
        name: sum(getattr(s, name) for s in summaries.values())
        for name in ("encoded", "skipped_cached", "chunked", "windows", "model_loads")
    } | {
        "encoded_on": sorted({s.encoded_on for s in summaries.values() if s.encoded_on}),
        "encode_seconds": round(sum(s.encode_seconds for s in summaries.values()), 3),
        # Per kind, the slowest task's load (tasks load in parallel), as the job's summary reports it.
        "model_load_seconds": round(sum(s.model_load_seconds for s in summaries.values()), 3),
        "stage_seconds": stages,
    }


def summarize(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per side and ``ratio`` = median(ours sentences/s) / median(bare sentences/s)."""
    sides = {
        side: {"sentences_per_s": round(median([r[side]["sentences_per_s"] for r in rounds]), 3)} for side in SIDES
    }
    value = ratio(sides["ours"]["sentences_per_s"], sides["bare"]["sentences_per_s"])
    return {**sides, "ratio": None if value is None else round(value, 4)}


def max_abs_diff(texts: Sequence[Text], bare: np.ndarray, vectors_dir: Path) -> float:
    """Largest difference between the job's vector and the bare vector of any text (same texts, same model)."""
    index = {(t.kind, t.entity_id): i for i, t in enumerate(texts)}
    worst = 0.0
    for kind in KINDS:
        if not (vectors_dir / kind).is_dir():
            continue
        table = ds.dataset(vectors_dir / kind, format="parquet").to_table(columns=["entity_id", "vector"])
        for entity_id, vector in zip(table["entity_id"].to_pylist(), table["vector"].to_pylist(), strict=True):
            expected = bare[index[(kind, entity_id)]]
            worst = max(worst, float(np.abs(np.asarray(vector, dtype=np.float32) - expected).max()))
    return worst


def command_line(
    *, out: Path, data_dir: Path | None, texts: int | None, large: int, rounds: int, batch_size: int
) -> str:
    """The ``kar bench encode`` line that reruns this benchmark."""
    args = ["kar", "bench", "encode", "--out", str(out)]
    options = {"--data": data_dir, "--texts": texts, "--large": large, "--rounds": rounds, "--batch-size": batch_size}
    for flag, value in options.items():
        if value is not None:
            args += [flag, str(value)]
    return shlex.join(args)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _chart(result: Mapping[str, Any]) -> tuple[str, list[Panel], str]:
    inputs = result["inputs"]
    panels = [
        Panel(
            title=f"{name} input: {m['texts']} texts",
            unit="sentences/s",
            bars={side: [r[side]["sentences_per_s"] for r in m["rounds"]] for side in SIDES},
        )
        for name, m in inputs.items()
    ]
    panels.append(
        Panel(
            title="job time per stage (median)",
            unit="seconds",
            bars={
                stage: [m["stage_seconds"].get(stage, 0.0) for m in inputs.values()]
                for stage in inputs["small"]["stage_seconds"]
                if stage != "total"
            },
        )
    )
    cold = result["start_up"]
    panels.append(
        Panel(
            title="start-up, once",
            unit="seconds",
            bars={"JVM": [cold["jvm_seconds"]], "first job": [cold["first_run_seconds"]]},
        )
    )
    ratios = " · ".join(
        f"{name} {_shown(m['ratio'])} (on {' and '.join(m['encoded_on'])})" for name, m in inputs.items()
    )
    note = (
        f"ours/bare: {ratios} (goal ≥ {GOAL}) · batch {result['batch_size']}, Spark {result['tasks']} tasks × "
        f"{result['threads_per_task']} thread, driver and bare {result['bare_threads']} threads"
    )
    return f"kar bench encode: {result['model']}", panels, note


def bench_encode(
    *,
    out: Location,
    data_dir: Location | None = None,
    texts: int | None = None,
    large: int = LARGE_TEXTS,
    rounds: int = 3,
    batch_size: int = 64,
    master: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Benchmark the encoding job against bare ``SentenceTransformer.encode`` (see the module docstring).

    Two inputs are measured in the same run: a small one (its fixed cost matters, as in an incremental run)
    and a large one (throughput matters). Each gets its own ratio and the job's time per stage.

    Args:
        out: JSON result file; the chart goes next to it as ``<stem>.png``.
        data_dir: A knowledge folder (or a prepared folder holding ``knowledge/``) whose usable answers are
            encoded; ``None`` generates answer-like texts.
        texts: Texts of the small input (users, then items, by id); default all of ``data_dir``, or 512
            generated.
        large: Texts of the large input (0: none); generated, or the first of ``data_dir`` when it has enough.
        rounds: Measured rounds per side and input.
        batch_size: Texts per forward pass, both sides.
        master: Spark master (default: env or ``local[*]``).
        progress: Step callback.

    Returns:
        The result as written to ``out``: the small input's figures at the top level (as before), both inputs
        under ``inputs``.

    Raises:
        DataError: Bad arguments or no usable texts.
        KarError: A cached rerun still encoded texts.
    """
    out = local_path(out, what="out")
    data_dir = optional_local_path(data_dir, what="data")
    for name, value in (("texts", texts), ("rounds", rounds), ("batch-size", batch_size)):
        if value is not None and value < 1:
            raise DataError(f"bench encode: --{name} must be at least 1, got {value}")
    if large < 0:
        raise DataError(f"bench encode: --large must be 0 or more, got {large}")
    step = progress or silent
    started_at, started = datetime.now(UTC), time.perf_counter()
    source = str(knowledge_folder(data_dir)) if data_dir is not None else "generated"
    inputs = _inputs(data_dir, texts=texts, large=large)
    ref = resolve_model(None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent)))
        step(f"loading {ref.name} in this process (bare side)")
        bare_model = BareModel.load(ref.source)
        step("starting Spark")
        jvm_running = SparkSession.getActiveSession() is not None
        jvm_started = time.perf_counter()
        spark = get_spark(app_name="kar-bench-encode", master=master)
        jvm_seconds = time.perf_counter() - jvm_started
        bench = _Bench(spark=spark, bare=bare_model, scratch=scratch, batch_size=batch_size, step=step)
        small = inputs["small"]
        step(f"first job run: Python workers start and load the model ({len(small)} texts)")
        cold_seconds, cold = bench.ours(small, "cold")
        measured = {name: bench.measure(name, selected, rounds=rounds) for name, selected in inputs.items()}
        tasks = spark.sparkContext.defaultParallelism
        threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
    strings = [t.text for t in small]
    lengths = bare_model.model.tokenizer(strings, add_special_tokens=True)["input_ids"]
    tokens = np.array([len(ids) for ids in lengths])
    head = measured["small"]
    result = {
        "benchmark": "encode",
        "model": ref.name,
        "dim": int(bare_model.model.get_embedding_dimension()),
        "data": source,
        "texts": len(small),
        "kinds": {kind: sum(t.kind == kind for t in small) for kind in KINDS},
        "tokens": {"median": int(np.median(tokens)), "p90": int(np.percentile(tokens, 90)), "max": int(tokens.max())},
        "chunked": cold["chunked"],
        "batch_size": batch_size,
        "tasks": tasks,
        "threads_per_task": threads,
        "bare_threads": bare_model.threads,
        "model_load": {
            "import_seconds": round(bare_model.import_seconds, 3),
            "load_seconds": round(bare_model.load_seconds, 3),
        },
        "start_up": {
            "jvm_seconds": round(jvm_seconds, 3),
            "jvm_already_running": jvm_running,
            "first_run_seconds": round(cold_seconds, 3),
            "worker_model_load_seconds": cold["model_load_seconds"],
            "worker_model_loads": cold["model_loads"],
            "sentences_per_s_including_jvm": round(len(small) / (jvm_seconds + cold_seconds), 3),
            "sentences_per_s_including_workers": round(len(small) / cold_seconds, 3),
        },
        **{key: head[key] for key in ("rounds", "bare", "ours", "ratio", "stage_seconds", "cached_rerun")},
        "max_abs_diff_vs_bare": max(m["max_abs_diff_vs_bare"] for m in measured.values()),
        "inputs": measured,
        "ratio_large": measured["large"]["ratio"] if "large" in measured else None,
        "goal": GOAL,
        "machine": machine(),
        "command": command_line(
            out=out, data_dir=data_dir, texts=texts, large=large, rounds=rounds, batch_size=batch_size
        ),
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    ratios = [m["ratio"] for m in measured.values()]
    result["meets_goal"] = all(r is not None and r >= GOAL for r in ratios)
    title, panels, note = _chart(result)
    written = write_report(out, result, title=title, panels=panels, note=note)
    for name, m in measured.items():
        if m["cached_rerun"]["encoded"]:
            raise KarError(f"bench encode: the cached rerun of the {name} input still encoded texts (see {out})")
    return written


def _inputs(data_dir: Path | None, *, texts: int | None, large: int) -> dict[str, list[Text]]:
    """The small input and, when asked for, the large one (from the data when it has enough texts)."""
    if data_dir is None:
        generated = generate_texts(max(texts or GENERATED_TEXTS, large))
        small = generated[: texts or GENERATED_TEXTS]
        return {"small": small, **({"large": generated[:large]} if large else {})}
    available = read_texts(knowledge_folder(data_dir))
    small = available[:texts] if texts else available
    if not large:
        return {"small": small}
    return {"small": small, "large": available[:large] if len(available) >= large else generate_texts(large)}


@dataclasses.dataclass
class _Bench:
    """The two sides on one input, in one Spark session and one process."""

    spark: Any
    bare: BareModel
    scratch: Path
    batch_size: int
    step: Progress

    def ours(self, selected: Sequence[Text], name: str, *, folder: Path | None = None) -> tuple[float, dict[str, Any]]:
        folder = folder or write_knowledge(selected, self.scratch / f"{name}-knowledge")
        began = time.perf_counter()
        kinds = [kind for kind in KINDS if (folder / kind).is_dir()]
        summaries = encode_knowledge(
            self.spark, knowledge_dir=folder, out=self.scratch / name, kinds=kinds, batch_size=self.batch_size
        )
        return time.perf_counter() - began, _job_stats(summaries)

    def measure(self, label: str, selected: Sequence[Text], *, rounds: int) -> dict[str, Any]:
        strings = [t.text for t in selected]
        knowledge = write_knowledge(selected, self.scratch / f"{label}-knowledge")
        keepalive = write_knowledge(selected[:KEEPALIVE_TEXTS], self.scratch / f"{label}-keepalive")
        measured = []
        for index in range(rounds):
            order = SIDES if index % 2 == 0 else SIDES[::-1]
            row: dict[str, Any] = {"round": index + 1, "order": list(order)}
            for side in order:
                self.step(f"{label} input, round {index + 1}/{rounds}: {'bare encode' if side == 'bare' else 'job'}")
                if side == "bare":
                    seconds, bare_vectors = self.bare.encode(strings, batch_size=self.batch_size)
                    row["bare"] = {"seconds": round(seconds, 3), "sentences_per_s": round(len(strings) / seconds, 3)}
                else:
                    self.ours(selected, f"{label}-keepalive-{index + 1}", folder=keepalive)
                    seconds, stats = self.ours(selected, f"{label}-round-{index + 1}", folder=knowledge)
                    rate = round(len(strings) / seconds, 3)
                    row["ours"] = {"seconds": round(seconds, 3), "sentences_per_s": rate, **stats}
            measured.append(row)
        self.step(f"{label} input: cached rerun (nothing to encode)")
        cached_seconds, cached = self.ours(selected, f"{label}-round-{rounds}", folder=knowledge)
        stages = {
            stage: round(median([r["ours"]["stage_seconds"][stage] for r in measured]), 3)
            for stage in measured[0]["ours"]["stage_seconds"]
        }
        return {
            "texts": len(selected),
            "rounds": measured,
            **summarize(measured),
            # Where the job's time goes (median per stage over rounds; outside them: summaries, the gate's set-up).
            "stage_seconds": stages,
            "encoded_on": measured[0]["ours"]["encoded_on"],
            "cached_rerun": {"seconds": round(cached_seconds, 3), "encoded": cached["encoded"]},
            "max_abs_diff_vs_bare": max_abs_diff(selected, bare_vectors, self.scratch / f"{label}-round-{rounds}"),
        }
