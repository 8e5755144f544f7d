"""``kar bench refresh``: the fixed cost of every stage on a refresh-sized input.

An incremental refresh sends each stage a few new users and items; what it pays is then the stage's fixed
cost, not its per-row work. This benchmark runs the stages a refresh chains on a generated dataset of that
size (default 10 users × 10 items) and times each one:

``prepare`` (Spark: validate, quarantine, split) → ``knowledge`` (every answer from the answer cache, the
LLM server already up) → ``encode`` → ``feast apply`` → ``export`` (the adaptor's vectors) → ``materialize``.

Set-up is done once and not measured: the Spark session (the goal counts from "Spark is up"), the LLM server
(the embedded one, or ``--base-url``), and a warm-up round that fills the answer cache and trains the DeepFM
run the export reads. Every measured round then writes a fresh folder, so each stage does its whole work for
that input: nothing is skipped as already done, except the LLM calls the cache answers.
"""

from __future__ import annotations

import contextlib
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kar.bench.report import Panel, machine, median, write_report
from kar.contracts import tables
from kar.contracts.errors import DataError, KarError
from kar.contracts.paths import Location, local_path
from kar.contracts.progress import Progress, silent
from kar.pipeline import llm_endpoint

GOAL_SECONDS = 60.0
STAGES = ("prepare", "knowledge", "encode", "feast_apply", "export", "materialize")


@dataclass(frozen=True, kw_only=True)
class RefreshRound:
    """One measured round: seconds per stage and what the knowledge stage took from the cache."""

    seconds: dict[str, float]
    prompts: int
    cached: int

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass(frozen=True, kw_only=True)
class _Stages:
    """The chain of stages on one folder, as a refresh runs them."""

    synthetic: Any
    base_url: str
    model: str
    cache_dir: Path
    progress: Progress

    def run(self, folder: Path, *, ranker: Path | None) -> RefreshRound:
        """Every stage into ``folder/prepared``; ``ranker`` None trains one there (the warm-up) before export."""
        from kar.pipeline import run_adapt_export, run_encode, run_knowledge, run_prepare, run_train
        from kar.serving import store

        data = folder / "prepared"
        seconds: dict[str, float] = {}

        def timed(stage: str, work: Callable[[], Any]) -> Any:
            self.progress(f"{folder.name}: {stage}")
            started = time.perf_counter()
            done = work()
            seconds[stage] = round(time.perf_counter() - started, 3)
            return done

        timed("prepare", lambda: run_prepare(dataset="synthetic", out=data, synthetic=self.synthetic))
        knowledge = timed(
            "knowledge",
            lambda: run_knowledge(
                kinds=tables.KINDS,
                data_dir=data,
                out=data / "knowledge",
                base_url=self.base_url,
                model=self.model,
                cache_dir=self.cache_dir,
            ),
        )
        timed("encode", lambda: run_encode(data_dir=data))
        timed("feast_apply", lambda: store.apply(data_dir=data))
        if ranker is None:
            ranker = folder / "deepfm"
            self.progress(f"{folder.name}: training DeepFM for the export (set-up, not measured)")
            run_train(model="deepfm", data_dir=data, out=ranker)
        timed("export", lambda: run_adapt_export(run_dir=ranker, data_dir=data))
        timed("materialize", lambda: store.materialize(data_dir=data))
        return RefreshRound(
            seconds=seconds,
            prompts=sum(knowledge[kind].prompts for kind in tables.KINDS),
            cached=sum(knowledge[kind].cached for kind in tables.KINDS),
        )


def command_line(*, out: Path, users: int, items: int, rounds: int, base_url: str | None) -> str:
    parts = ["kar", "bench", "refresh", "--out", str(out), "--users", str(users), "--items", str(items)]
    parts += ["--rounds", str(rounds)] + (["--base-url", base_url] if base_url else [])
    return shlex.join(parts)


def bench_refresh(
    *,
    out: Location,
    users: int = 10,
    items: int = 10,
    rounds: int = 2,
    base_url: str | None = None,
    master: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time every stage of a refresh-sized run; write ``out`` (JSON) and its plot.

    Returns:
        The result: seconds per stage per round, their medians, the end-to-end median and whether it meets the
        goal (under ``GOAL_SECONDS`` once Spark is up).

    Raises:
        DataError: Bad arguments.
        KarError: A measured round sent prompts to the LLM (the cache should answer all of them).
    """
    out = local_path(out, what="out")
    for name, value in (("users", users), ("items", items), ("rounds", rounds)):
        if value < 1:
            raise DataError(f"bench refresh: --{name} must be at least 1, got {value}")
    step = progress or silent
    from spark_jobs.datasets.synthetic import SyntheticConfig
    from spark_jobs.session import get_spark

    # A few interactions per user, as new users bring (and few enough for a catalogue of 10 items).
    synthetic = SyntheticConfig(
        n_users=users, n_items=items, min_interactions=min(3, items // 2), mean_interactions=min(5, items // 2)
    )
    started_at, started = datetime.now(UTC), time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent)))
        step("starting Spark (set-up, not measured)")
        spark_started = time.perf_counter()
        get_spark(app_name="kar-bench-refresh", master=master)
        spark_seconds = time.perf_counter() - spark_started
        # Started once for the whole benchmark (set-up, not measured), as a team's server would be up already.
        endpoint, model, _tokenizer = stack.enter_context(llm_endpoint(base_url=base_url, progress=step))
        url = endpoint.base_url
        cache = scratch / "cache"
        stages = _Stages(synthetic=synthetic, base_url=url, model=model, cache_dir=cache, progress=step)
        warm_up = stages.run(scratch / "warm-up", ranker=None)
        ranker = scratch / "warm-up" / "deepfm"
        measured = [stages.run(scratch / f"round-{i + 1}", ranker=ranker) for i in range(rounds)]
    result = _result(measured, warm_up=warm_up, spark_seconds=spark_seconds, users=users, items=items)
    result.update(
        command=command_line(out=out, users=users, items=items, rounds=rounds, base_url=base_url),
        machine=machine(),
        started_at=started_at.isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 1),
    )
    written = write_report(out, result, title="kar bench refresh", panels=_panels(measured), note=_note(result))
    sent = [r.prompts - r.cached for r in measured]
    if any(sent):
        raise KarError(f"bench refresh: measured rounds sent {sent} prompts to the LLM; the cache should answer all")
    return written


def _result(
    measured: Sequence[RefreshRound], *, warm_up: RefreshRound, spark_seconds: float, users: int, items: int
) -> dict[str, Any]:
    stage_median = {stage: round(median([r.seconds[stage] for r in measured]), 3) for stage in STAGES}
    total = round(median([r.total for r in measured]), 3)
    return {
        "benchmark": "refresh",
        "users": users,
        "items": items,
        "stages": list(STAGES),
        "rounds": [
            {"seconds": r.seconds, "total": round(r.total, 3), "prompts": r.prompts, "cached": r.cached}
            for r in measured
        ],
        "stage_seconds": stage_median,
        "total_seconds": total,
        "goal_seconds": GOAL_SECONDS,
        "meets_goal": total < GOAL_SECONDS,
        "set_up": {
            "spark_seconds": round(spark_seconds, 3),
            "warm_up": {"seconds": warm_up.seconds, "prompts": warm_up.prompts, "cached": warm_up.cached},
        },
    }


def _panels(measured: Sequence[RefreshRound]) -> list[Panel]:
    return [
        Panel(
            title="seconds per stage, each round",
            unit="seconds",
            bars={stage: [r.seconds[stage] for r in measured] for stage in STAGES},
        ),
        Panel(title="end to end, each round", unit="seconds", bars={"total": [r.total for r in measured]}),
    ]


def _note(result: dict[str, Any]) -> str:
    return (
        f"{result['users']} users × {result['items']} items, answers cached, Spark up · median end to end "
        f"{result['total_seconds']:.1f} s (goal < {GOAL_SECONDS:.0f} s)"
    )
