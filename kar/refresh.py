"""``kar refresh``: append a batch of interactions and bring knowledge up to date, paying only for what changed.

A folder prepared with ``--protocol rolling`` gives each user a knowledge cutoff every ``cutoff_every``
interactions (``spark_jobs.splits``); a cutoff depends only on the log before it. A refresh therefore:

1. re-runs ``prepare`` on every batch read so far plus the new one (validated and quarantined like any
   prepare; Spark's cost, no LLM): the new batch adds cutoffs to users whose history grew by ``cutoff_every``
   and never moves an older one, so every older vector still joins the samples before the new cutoffs;
2. runs the knowledge kinds the folder already has, with the options their first run recorded: prompts of older
   cutoffs and unchanged items are answered from the answer cache, so only new cutoffs and new items reach the
   LLM. LLM-KERec (``kerec``) mines its candidate pairs again from the grown histories: entity answers of older
   items and judgements of pairs already judged come from the cache, so only new items and new pairs are sent;
   its graph and per-item texts are then rebuilt from those answers, as a full run would;
3. encodes only the new answers (the encode job skips texts it already has). A ``kerec`` text that changed (its
   graph did, or the newest pair it lists) is a new row with its own ``as_of``, and the encode job drops the row
   it replaces, so ``vectors/kerec`` holds the rows a full rebuild would;
4. with ``run``, adapts only the new vectors and appends them to ``adapted/`` (``adaptors.export``);
5. with ``repo``, materializes from the earliest new cutoff or new ``kerec`` row on: older rows are already online
   and the newest row per entity can only have changed from there (a changed ``kerec`` row may be older than
   every new cutoff, its ``as_of`` being the newest pair it lists);
6. writes ``DATA/refresh.json`` (:class:`kar.contracts.results.RefreshReport`).

The batch list is recorded in ``DATA/refresh/pending.json`` before anything is rewritten, so a refresh killed at
any point reruns to the same tables: the prepare is redone from the same batches, and the cache and the
encode/export rules make the later stages idempotent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kar.contracts import storage, tables
from kar.contracts.errors import DataError
from kar.contracts.paths import Location, is_uri, local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.results import AnswerStats, KerecSummary, KnowledgeSummary, RefreshReport
from kar.contracts.timing import StageTimes

REFRESH_FILE = "refresh.json"
STATE_DIR = "refresh"
PENDING_FILE = "pending.json"
# LLM-KERec's kind: its ``knowledge/summary.json`` entry and its ``vectors/kerec`` table.
KEREC = "kerec"
KNOWLEDGE_KINDS = ("user", "item", KEREC)
# The folder's LLM-KERec vector keys before the refresh: a row not among them is new or changed.
KEREC_BEFORE = "kerec_before.parquet"


def dataset_log(*, dataset: str, path: str | None, spec: str | None) -> str:
    """The interaction file a folder was first prepared from (before any batch was appended)."""
    from spark_jobs.datasets import BATCHED, TableSpec
    from spark_jobs.datasets.base import find_one

    if dataset not in BATCHED:
        raise DataError(f"{dataset}: kar refresh appends batches to {', '.join(BATCHED)} folders only")
    if dataset == "table":
        if spec is None:
            raise DataError("table: the folder's summary names no spec; pass --spec SPEC.yaml")
        return TableSpec.load(spec).interactions.source.location
    folder = Path(path or "")
    if dataset == "movielens-100k":
        return str(folder / "u.data")
    return str(find_one(folder, ("ratings.dat", "ratings*.dat"), what="ratings"))


def _entity_keys(data_dir: Path) -> tuple[set[tuple[int, int]], set[int]]:
    """The folder's ``(user_id, cutoff)`` pairs and item ids, before the prepare rewrites them."""
    cutoffs = pd.read_parquet(data_dir / tables.CUTOFFS_DIR, columns=["user_id", "knowledge_cutoff"])
    items = pd.read_parquet(data_dir / tables.ITEMS_DIR, columns=["item_id"])
    stamps = cutoffs["knowledge_cutoff"].astype("int64")
    return set(zip(cutoffs["user_id"].tolist(), stamps.tolist(), strict=True)), set(items["item_id"].tolist())


def _pending(data_dir: Path, *, batch: str, spec: str | None) -> dict[str, Any]:
    """The refresh in progress: resumed if one was killed, else started with the folder's state before it."""
    from kar.pipeline import read_summary

    state = data_dir / STATE_DIR
    pending = state / PENDING_FILE
    if pending.is_file():
        recorded = json.loads(pending.read_text())
        if recorded["batch"] != batch:
            raise DataError(
                f"{data_dir}: a refresh with {recorded['batch']} did not finish; rerun it before appending {batch}"
            )
        return recorded
    summary = read_summary(data_dir)
    if summary.split.get("protocol") != "rolling":
        raise DataError(
            f"{data_dir}: prepared with --protocol {summary.split.get('protocol')}; kar refresh needs --protocol "
            "rolling (cutoffs every N interactions, which a later batch never moves)"
        )
    spec = spec or summary.spec
    previous = summary.interactions or [dataset_log(dataset=summary.dataset, path=summary.path, spec=spec)]
    if batch in previous:
        raise DataError(f"{batch}: already read by {data_dir} (its summary lists it)")
    cutoffs, items = _entity_keys(data_dir)
    state.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(sorted(cutoffs), columns=["user_id", "cutoff_us"]).to_parquet(state / "cutoffs_before.parquet")
    pd.DataFrame(sorted(items), columns=["item_id"]).to_parquet(state / "items_before.parquet")
    if _kerec_vectors(data_dir).is_dir():
        _vector_keys(_kerec_vectors(data_dir)).to_parquet(state / KEREC_BEFORE)
    else:
        (state / KEREC_BEFORE).unlink(missing_ok=True)  # left by an earlier refresh, before these vectors went
    recorded = {
        "batch": batch,
        "batches": [*previous, batch],
        "spec": spec,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written last and atomically: from here on a rerun resumes this refresh instead of starting another.
    storage.write_text(pending, json.dumps(recorded, indent=2))
    return recorded


@dataclass(frozen=True, kw_only=True)
class KnowledgeRerun:
    """One ``run_knowledge`` call of a refresh: the kinds a folder's knowledge runs generated with these options.

    Attributes:
        kinds: ``user``, ``item`` and/or ``kerec``.
        scenario: The prompt scenario the kinds were generated with.
        limit: The sample size they were limited to (None: all).
        kerec_max_pairs: The candidate pairs LLM-KERec could judge (None when ``kinds`` has no ``kerec``).
    """

    kinds: tuple[str, ...]
    scenario: str | None
    limit: int | None
    kerec_max_pairs: int | None = None

    def options(self) -> dict[str, Any]:
        """``run_knowledge``'s keyword arguments for these kinds (its default cap when there is no ``kerec``)."""
        cap = {} if self.kerec_max_pairs is None else {"kerec_max_pairs": self.kerec_max_pairs}
        return {"kinds": self.kinds, "scenario": self.scenario, "limit": self.limit, **cap}


def _knowledge_reruns(data_dir: Path) -> list[KnowledgeRerun]:
    """The kinds the folder's knowledge runs generated, grouped by their recorded options, to rerun them alike.

    Raises:
        DataError: No knowledge summary, or a ``kerec`` entry written before its ``max_pairs`` was recorded.
    """
    path = data_dir / "knowledge" / tables.SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{data_dir}: no knowledge yet; run `kar knowledge --data {data_dir}` before a refresh")
    summary = json.loads(path.read_text())
    groups: dict[tuple[str | None, int | None], list[str]] = {}
    for kind in (k for k in KNOWLEDGE_KINDS if k in summary):
        groups.setdefault((summary[kind].get("scenario"), summary[kind].get("limit")), []).append(kind)
    max_pairs = _kerec_max_pairs(path, summary[KEREC]) if KEREC in summary else None
    return [
        KnowledgeRerun(
            kinds=tuple(kinds),
            scenario=scenario,
            limit=limit,
            kerec_max_pairs=max_pairs if KEREC in kinds else None,
        )
        for (scenario, limit), kinds in groups.items()
    ]


def _kerec_max_pairs(path: Path, entry: dict[str, Any]) -> int:
    """The ``kerec_max_pairs`` the folder's LLM-KERec run used: another value would mine other candidates."""
    if entry.get("max_pairs") is None:
        # Not guessed: the pairs judged are at most the cap, so they do not tell it, and a larger guess sends
        # new pairs to the LLM that a full rebuild with the first run's cap would never send.
        raise DataError(
            f"{path}: kerec: max_pairs not recorded (written before kar recorded it); rerun `kar knowledge "
            f"--data {path.parent.parent} --kind kerec` (or run_knowledge with the first run's kerec_max_pairs; "
            "every answer comes from the cache) before a refresh"
        )
    return int(entry["max_pairs"])


def run_refresh(
    *,
    data_dir: Location,
    interactions: str | Path,
    spec: Location | None = None,
    run: Location | None = None,
    repo: Location | None = None,
    service: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    master: str | None = None,
    progress: Progress | None = None,
) -> RefreshReport:
    """Append ``interactions`` to a rolling prepared folder and refresh its knowledge incrementally.

    Args:
        data_dir: A folder prepared with ``--protocol rolling`` whose knowledge was generated and encoded.
        interactions: The new batch, in the format the folder's log was read in (the spec's table, ``u.data``).
        spec: For ``table`` folders, the spec (default: the one the folder was prepared with).
        run: A ranker run whose adaptor exported ``DATA/adapted``: the new vectors are adapted and appended.
        repo: A Feast repo (the team's, or the folder's example repo when ``service`` is set without it) whose
            online store gets the new rows.
        service: Feature service whose views are materialized.
        base_url: OpenAI-compatible endpoint (default: the embedded server, started only if a prompt is new).
        model: Model id at the endpoint.
        api_key: The endpoint's key.
        master: Spark master.
        progress: Step callback.

    Returns:
        The report, also written to ``DATA/refresh.json``.
    """
    from kar.pipeline import read_summary, run_adapt_export, run_encode, run_knowledge
    from spark_jobs.datasets import TableSpec
    from spark_jobs.prepare import prepare
    from spark_jobs.session import get_spark
    from spark_jobs.splits import SplitConfig

    step = progress or silent
    started = time.perf_counter()
    data = local_path(data_dir, what="data")
    batch = _batch_path(interactions)
    reruns = _knowledge_reruns(data)
    spec_path = str(local_path(spec, what="spec")) if spec is not None else None
    pending = _pending(data, batch=batch, spec=spec_path)
    summary = read_summary(data)
    times = StageTimes()
    with times.stage("prepare"):
        step("starting Spark")
        spark = get_spark(app_name="kar-refresh", master=master)
        step(f"prepare: {len(pending['batches'])} batches")
        prepared = prepare(
            spark=spark,
            dataset=summary.dataset,
            out=data,
            path=Path(summary.path) if summary.path else None,
            split=SplitConfig(**summary.split),
            spec=TableSpec.load(pending["spec"]) if pending["spec"] else None,
            interactions=pending["batches"],
            progress=step,
        )
        # The tables were rewritten in place: a session that read them before must not reuse its file listings.
        spark.catalog.clearCache()
        spark.catalog.refreshByPath(str(data))
    knowledge: dict[str, KnowledgeSummary | KerecSummary] = {}
    with times.stage("knowledge"):
        for rerun in reruns:
            knowledge |= run_knowledge(
                **rerun.options(),
                data_dir=data,
                out=data / "knowledge",
                base_url=base_url,
                model=model,
                api_key=api_key,
                master=master,
                progress=step,
            )
    with times.stage("encode"):
        encoded = run_encode(data_dir=data, kinds=_encoded_kinds(data, knowledge), master=master, progress=step)
    exported: dict[str, int] = {}
    if run is not None:
        with times.stage("export"):
            step("adapting the new vectors")
            for table in run_adapt_export(run_dir=run, data_dir=data, incremental=True):
                exported[table.field] = table.rows
    materialized_from = None
    if repo is not None or service is not None:
        with times.stage("materialize"):
            materialized_from = _materialize(data, repo=repo, service=service, step=step)
    report = _report(
        data,
        pending=pending,
        prepared_rows=prepared.rows,
        knowledge=knowledge,
        encoded={kind: s.encoded for kind, s in encoded.items()},
        exported=exported,
        materialized_from=materialized_from,
        stage_seconds=times.as_dict(),
        wall_seconds=time.perf_counter() - started,
    )
    storage.write_text(data / REFRESH_FILE, json.dumps(report.to_dict(), indent=2, default=str))
    (data / STATE_DIR / PENDING_FILE).unlink()
    return report


def _batch_path(interactions: str | Path) -> str:
    text = str(interactions)
    return text if is_uri(text) else str(Path(text).resolve())


def _encoded_kinds(data: Path, generated: Iterable[str]) -> list[str]:
    """The kinds to encode: user and item when generated; ``kerec`` only when the folder encoded it before (it is
    optional knowledge: a folder that never encoded it gets no ``kerec`` views by surprise)."""
    return [k for k in generated if k in tables.KINDS or (k == KEREC and _kerec_vectors(data).is_dir())]


def _kerec_vectors(data: Path) -> Path:
    return data / "vectors" / KEREC


def _vector_keys(table: Path) -> pd.DataFrame:
    """``entity_id, as_of_us, text_hash`` of a vector table: a row's identity (``spark_jobs.encoding``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from spark_jobs.encoding.schema import VECTOR_SCHEMA

    keys = storage.parquet_dataset(table, schema=VECTOR_SCHEMA).to_table(columns=["entity_id", "as_of", "text_hash"])
    return pd.DataFrame(
        {
            "entity_id": keys["entity_id"].to_numpy(),
            # The schema stores microseconds: the integers compare exactly, whatever unit pandas would pick.
            "as_of_us": pc.cast(keys["as_of"], pa.int64()).to_numpy(),
            "text_hash": keys["text_hash"].to_pylist(),
        }
    )


def _new_kerec_rows(data: Path) -> pd.DataFrame:
    """The LLM-KERec vectors the folder did not have before the refresh (new items, changed texts or ``as_of``)."""
    if not _kerec_vectors(data).is_dir():
        return pd.DataFrame(columns=["entity_id", "as_of_us", "text_hash"])
    after = _vector_keys(_kerec_vectors(data))
    before_path = data / STATE_DIR / KEREC_BEFORE
    if not before_path.is_file():
        return after  # no LLM-KERec vectors before (or a refresh begun before they were tracked): all are new
    merged = after.merge(pd.read_parquet(before_path), how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge")


def _materialize_start(data: Path) -> datetime | None:
    """The earliest new cutoff or new LLM-KERec row, or None when there is neither."""
    news = (_new_cutoffs(data)["cutoff_us"], _new_kerec_rows(data)["as_of_us"])
    starts = [int(new.min()) for new in news if len(new)]
    return pd.Timestamp(min(starts), unit="us", tz="UTC").to_pydatetime() if starts else None


def _materialize(data: Path, *, repo: Location | None, service: str | None, step: Progress) -> str | None:
    """Load the online store from the earliest new cutoff or LLM-KERec row on (older rows are online already)."""
    from kar.serving import store

    start = _materialize_start(data)
    if start is None:
        step("materialize: no new cutoff and no new LLM-KERec row")
        return None
    step(f"materializing from {start.isoformat()}")
    store.materialize(data_dir=data, repo=repo, service=service, start=start)
    return start.isoformat()


def _new_cutoffs(data: Path) -> pd.DataFrame:
    before = pd.read_parquet(data / STATE_DIR / "cutoffs_before.parquet")
    after = pd.read_parquet(data / tables.CUTOFFS_DIR, columns=["user_id", "knowledge_cutoff"])
    after = pd.DataFrame({"user_id": after["user_id"], "cutoff_us": after["knowledge_cutoff"].astype("int64")})
    # Parquet timestamps may come back in ns or us: compare in microseconds.
    if after["cutoff_us"].abs().max() > 10**17:
        after["cutoff_us"] //= 1000
    merged = after.merge(before, on=["user_id", "cutoff_us"], how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge")


def _report(
    data: Path,
    *,
    pending: dict[str, Any],
    prepared_rows: dict[str, int],
    knowledge: dict[str, KnowledgeSummary | KerecSummary],
    encoded: dict[str, int],
    exported: dict[str, int],
    materialized_from: str | None,
    stage_seconds: dict[str, float],
    wall_seconds: float,
) -> RefreshReport:
    new_cutoffs = _new_cutoffs(data)
    items_before = set(pd.read_parquet(data / STATE_DIR / "items_before.parquet")["item_id"].tolist())
    items_now = set(pd.read_parquet(data / tables.ITEMS_DIR, columns=["item_id"])["item_id"].tolist())
    runs: dict[str, AnswerStats] = {
        name: stats for summary in knowledge.values() for name, stats in summary.answer_steps().items()
    }
    return RefreshReport(
        batch=pending["batch"],
        batches=list(pending["batches"]),
        interactions=prepared_rows.get(tables.INTERACTIONS_DIR, 0),
        users_refreshed=int(new_cutoffs["user_id"].nunique()),
        new_cutoffs=len(new_cutoffs),
        new_items=len(items_now - items_before),
        new_kerec_rows=len(_new_kerec_rows(data)),
        prompts={kind: s.prompts for kind, s in runs.items()},
        prompts_sent={kind: s.calls for kind, s in runs.items()},
        prompts_cached={kind: s.cached for kind, s in runs.items()},
        tokens_in=sum(s.tokens_in for s in runs.values()),
        tokens_out=sum(s.tokens_out for s in runs.values()),
        usd_estimate=round(sum(s.usd_estimate_this_run for s in runs.values()), 6),
        encoded=encoded,
        exported=exported,
        materialized_from=materialized_from,
        stage_seconds=stage_seconds,
        wall_seconds=round(wall_seconds, 2),
    )


__all__ = ["REFRESH_FILE", "dataset_log", "run_refresh"]
