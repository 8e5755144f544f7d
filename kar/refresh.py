"""``kar refresh``: append a batch of interactions and bring knowledge up to date, paying only for what changed.

A folder prepared with ``--protocol rolling`` gives each user a knowledge cutoff every ``cutoff_every``
interactions (``spark_jobs.splits``); a cutoff depends only on the log before it. A refresh therefore:

1. re-runs ``prepare`` on every batch read so far plus the new one (validated and quarantined like any
   prepare; Spark's cost, no LLM): the new batch adds cutoffs to users whose history grew by ``cutoff_every``
   and never moves an older one, so every older vector still joins the samples before the new cutoffs;
2. runs the knowledge kinds the folder already has: prompts of older cutoffs and unchanged items are answered
   from the answer cache, so only new cutoffs and new items reach the LLM;
3. encodes only the new answers (the encode job skips texts it already has);
4. with ``run``, adapts only the new vectors and appends them to ``adapted/`` (``adaptors.export``);
5. with ``repo``, materializes from the earliest new cutoff on: older rows are already online and the newest
   row per entity can only have changed from there;
6. writes ``DATA/refresh.json`` (:class:`kar.contracts.results.RefreshReport`).

The batch list is recorded in ``DATA/refresh/pending.json`` before anything is rewritten, so a refresh killed at
any point reruns to the same tables: the prepare is redone from the same batches, and the cache and the
encode/export rules make the later stages idempotent.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kar.contracts import storage, tables
from kar.contracts.errors import DataError
from kar.contracts.paths import Location, is_uri, local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.results import KnowledgeSummary, RefreshReport
from kar.contracts.timing import StageTimes

REFRESH_FILE = "refresh.json"
STATE_DIR = "refresh"
PENDING_FILE = "pending.json"
KNOWLEDGE_KINDS = ("user", "item")


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
    recorded = {
        "batch": batch,
        "batches": [*previous, batch],
        "spec": spec,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written last and atomically: from here on a rerun resumes this refresh instead of starting another.
    storage.write_text(pending, json.dumps(recorded, indent=2))
    return recorded


def _knowledge_options(data_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """The kinds the folder's knowledge run generated and its options (scenario, limit), to rerun them alike."""
    path = data_dir / "knowledge" / tables.SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{data_dir}: no knowledge yet; run `kar knowledge --data {data_dir}` before a refresh")
    summary = json.loads(path.read_text())
    kinds = [k for k in KNOWLEDGE_KINDS if k in summary]
    first = summary[kinds[0]] if kinds else {}
    return kinds, {"limit": first.get("limit"), "scenario": first.get("scenario")}


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
    kinds, options = _knowledge_options(data)
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
    with times.stage("knowledge"):
        knowledge = run_knowledge(
            kinds=kinds,
            data_dir=data,
            out=data / "knowledge",
            base_url=base_url,
            model=model,
            api_key=api_key,
            scenario=options["scenario"],
            limit=options["limit"],
            master=master,
            progress=step,
        )
    with times.stage("encode"):
        encoded = run_encode(data_dir=data, kinds=kinds, master=master, progress=step)
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


def _materialize(data: Path, *, repo: Location | None, service: str | None, step: Progress) -> str | None:
    """Load the online store from the earliest new cutoff on (older rows are online already)."""
    from kar.serving import store

    new = _new_cutoffs(data)
    if new.empty:
        step("materialize: no new cutoff")
        return None
    start = pd.Timestamp(int(new["cutoff_us"].min()), unit="us", tz="UTC").to_pydatetime()
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
    knowledge: dict[str, Any],
    encoded: dict[str, int],
    exported: dict[str, int],
    materialized_from: str | None,
    stage_seconds: dict[str, float],
    wall_seconds: float,
) -> RefreshReport:
    new_cutoffs = _new_cutoffs(data)
    items_before = set(pd.read_parquet(data / STATE_DIR / "items_before.parquet")["item_id"].tolist())
    items_now = set(pd.read_parquet(data / tables.ITEMS_DIR, columns=["item_id"])["item_id"].tolist())
    runs = {kind: s for kind, s in knowledge.items() if isinstance(s, KnowledgeSummary)}
    return RefreshReport(
        batch=pending["batch"],
        batches=list(pending["batches"]),
        interactions=prepared_rows.get(tables.INTERACTIONS_DIR, 0),
        users_refreshed=int(new_cutoffs["user_id"].nunique()),
        new_cutoffs=len(new_cutoffs),
        new_items=len(items_now - items_before),
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
