"""``kar bench validate``: what the data-quality gates add to the prepare job.

Both sides run the whole prepare job (``spark_jobs.prepare.prepare``) on the same input in the same Spark
session, into a fresh folder each round: ``plain`` with ``validate=False``, ``gated`` with the raw and
prepared suites (row-level rules in our Spark pass, batch-level rules through great_expectations, JSON results
and Data Docs written). The synthetic input is generated once, before any measurement, and both sides read
those raw files: generating it is not part of the job whose time the gates add to. Rounds alternate which
side goes first after one unmeasured warm-up run per side (the JVM's JIT keeps speeding the job up over the
first runs); each side's time is the median over rounds and ``overhead = gated / plain - 1`` (goal ≤ 0.2).
Importing great_expectations is a fixed cost per process, not per row: it is measured apart, in a fresh
interpreter, and reported next to the ratio.

The default input is the synthetic generator sized to ML-1M (6,040 users, 3,706 items, ~1M ratings): the
shared ML-1M copy holds only 487,650 of its ratings (``--dataset movielens-1m --path`` measures that instead).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kar.bench.report import Panel, machine, median, write_report
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.results import PrepareSummary
from spark_jobs.datasets.generated import write_synthetic
from spark_jobs.datasets.synthetic import SyntheticConfig
from spark_jobs.prepare import prepare
from spark_jobs.session import get_spark
from spark_jobs.splits import SplitConfig

GOAL = 0.2
SIDES = ("plain", "gated")
# ML-1M's shape: 6,040 users, 3,706 rated movies, 1,000,209 ratings (165.6 per user).
ML1M_LIKE = SyntheticConfig(n_users=6040, n_items=3706, mean_interactions=165)


# Run in a fresh interpreter: what importing great_expectations adds once the prepare job's own libraries are in.
_IMPORT_PROBE = (
    "import time, pyspark.sql, pandas, pyarrow, validation; t = time.perf_counter(); import great_expectations; "
    "print(time.perf_counter() - t)"
)


def import_seconds() -> float:
    """Seconds a fresh process spends importing great_expectations (paid once per job, not per row)."""
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 2)


def bench_validate(
    *,
    out: Location,
    dataset: str = "synthetic",
    path: Location | None = None,
    protocol: str = "kar",
    rounds: int = 3,
    master: str | None = None,
    work_dir: Location | None = None,
    synthetic: SyntheticConfig = ML1M_LIKE,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the prepare job with and without its gates; write ``out`` (JSON) and the plot next to it.

    Args:
        out: JSON result file.
        dataset: Input dataset (see ``kar prepare``).
        path: Input folder for file datasets.
        protocol: Split protocol.
        rounds: Measured rounds per side.
        master: Spark master.
        work_dir: Where the prepared folders go (default: a temporary folder, removed after).
        synthetic: Generator config for ``synthetic``.
        progress: Step callback.
    """
    out = local_path(out, what="out")
    path = optional_local_path(path, what="path")
    work_dir = optional_local_path(work_dir, what="work dir")
    step = progress or silent
    spark = get_spark(app_name="kar-bench-validate", master=master)
    split = SplitConfig(protocol=protocol)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    temp = Path(tempfile.mkdtemp(prefix="kar-bench-validate-", dir=work_dir))
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    validation_seconds: list[float] = []
    suite_seconds: dict[str, list[float]] = {}
    summary: PrepareSummary | None = None
    suites: list[str] = []

    source = path  # the synthetic input's raw folder once generated

    def run(side: str, label: str) -> float:
        target = temp / label
        started = time.perf_counter()
        result = prepare(
            spark=spark, dataset=dataset, path=source, out=target, split=split, now=now, validate=side == "gated"
        )
        elapsed = time.perf_counter() - started
        nonlocal summary
        summary = result
        if side == "gated":
            suites[:] = sorted(result.validation)
            validation_seconds.append(sum(r["seconds"] for r in result.validation.values()))
            for suite, report in result.validation.items():
                suite_seconds.setdefault(suite, []).append(report["seconds"])
        shutil.rmtree(target, ignore_errors=True)
        return elapsed

    try:
        if dataset == "synthetic":
            step("generating the input (not measured)")
            source = write_synthetic(temp / "input", synthetic)
        for side in SIDES:
            step(f"warm-up: {side} (not measured)")
            run(side, f"warmup-{side}")
        validation_seconds.clear()
        suite_seconds.clear()
        for index in range(rounds):
            order = SIDES if index % 2 == 0 else SIDES[::-1]
            for side in order:
                step(f"round {index + 1}/{rounds}: {side}")
                seconds[side].append(round(run(side, f"{side}-{index}"), 2))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert summary is not None  # the warm-up runs set it
    plain, gated = median(seconds["plain"]), median(seconds["gated"])
    overhead = gated / plain - 1
    result = {
        "benchmark": "validate",
        "dataset": dataset,
        "path": str(path) if path else None,
        "synthetic": repr(synthetic) if dataset == "synthetic" else None,
        "protocol": protocol,
        "interactions": summary.rows["interactions"],
        "samples": summary.rows["samples"],
        "rounds": rounds,
        "seconds": seconds,
        "plain_seconds": plain,
        "gated_seconds": gated,
        "validation_seconds_in_gated_runs": [round(s, 2) for s in validation_seconds],
        "suite_seconds_median": {suite: round(median(times), 3) for suite, times in suite_seconds.items()},
        "overhead": round(overhead, 4),
        "goal": GOAL,
        "meets_goal": overhead <= GOAL,
        "suites": suites,
        "ge_import_seconds_once_per_process": import_seconds(),
        "machine": machine(),
    }
    note = (
        f"overhead {overhead:+.1%} (goal ≤ {GOAL:.0%}) on {result['interactions']:,} interactions; "
        f"+{result['ge_import_seconds_once_per_process']} s to import great_expectations once per process"
    )
    panels = [Panel(title="prepare job", unit="seconds", bars={side: seconds[side] for side in SIDES})]
    return write_report(out, result, title="kar bench validate", panels=panels, note=note)
