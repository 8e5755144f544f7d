"""Run a stage's suite on a Spark (or pandas) DataFrame: quarantine bad rows, fail the batch loudly.

One :class:`Validator` per job holds an in-memory great_expectations context. ``validate`` does, per suite:

1. one Spark aggregation evaluates every row-level expectation (``validation.rows``) with its counts, and
   the row-count and column-mean expectations over the rows they accept; when a row broke any row rule,
   rejected rows are written to ``quarantine/<stage>/<table>`` with a ``failed_expectations`` array and the
   accepted rows are returned;
2. one ``ValidationDefinition.run`` of great_expectations over the accepted rows checks the other batch-level
   expectations (a clean batch is passed through untouched: no copy, no ``toPandas``);
3. a :class:`ValidationReport` merges both; ``raise_for_failures`` turns a failed expectation into a one-line
   ``DataError`` naming the suite, the expectation and the observed value.

``finish`` writes each report as JSON and builds great_expectations' Data Docs HTML under the run folder.
"""

from __future__ import annotations

import json
import logging
import operator
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from kar.errors import DataError
from validation.rows import FAILED, failed_column, is_table_rule, row_rule, table_rule
from validation.suites import expectation_name, is_row_level, min_rows

VALIDATION_DIR = "validation"
DOCS_DIR = "docs"


@dataclass(frozen=True)
class Outcome:
    """One expectation's verdict on a batch.

    Attributes:
        name: ``expectation_type(columns)``.
        success: Whether the batch meets it.
        observed: What was measured (a value, or ``"12 of 1,000 rows (1.2%)"`` for per-row rules).
        row_level: Checked per row by our Spark pass (rows breaking it are quarantined).
        unexpected: Rows that broke it (per-row and map expectations).
    """

    name: str
    success: bool
    observed: Any
    row_level: bool = False
    unexpected: int | None = None


@dataclass
class ValidationReport:
    """What one suite found on one batch."""

    suite: str
    stage: str
    version: int
    rows: int
    rejected: int
    outcomes: list[Outcome]
    quarantine: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.success]

    def summary_line(self) -> str:
        ok = sum(o.success for o in self.outcomes)
        line = (
            f"validation {self.suite} v{self.version}: {'passed' if self.passed else 'FAILED'}, "
            f"{ok}/{len(self.outcomes)} expectations, {self.rows:,} rows, {self.rejected:,} rejected by row rules"
        )
        if not self.passed:
            line += "; failed " + "; ".join(
                f"{o.name} (observed {_fmt(o.observed)})" for o in self.outcomes if not o.success
            )
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "stage": self.stage,
            "version": self.version,
            "passed": self.passed,
            "rows": self.rows,
            "rejected": self.rejected,
            "quarantine": self.quarantine,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "outcomes": [
                {"name": o.name, "success": o.success, "observed": _jsonable(o.observed), "row_level": o.row_level,
                 "unexpected": o.unexpected}
                for o in self.outcomes
            ],
            **self.extra,
        }  # fmt: skip

    def raise_for_failures(self, *, kept: str = "") -> None:
        """Raise a one-line ``DataError`` when any expectation failed; ``kept`` says what output stays."""
        if self.passed:
            return
        first = next(o for o in self.outcomes if not o.success)
        more = f" (and {len(self.failed) - 1} more)" if len(self.failed) > 1 else ""
        where = f"; rejected rows in {self.quarantine}" if self.quarantine and self.rejected else ""
        raise DataError(
            f"validation {self.suite} failed: {first.name} observed {_fmt(first.observed)}{more}{where}"
            + (f"; {kept}" if kept else "")
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _share(n: int, total: int) -> str:
    return f"{n:,} of {total:,} rows ({n / total:.1%})" if total else "0 rows"


class Validator:
    """Runs suites for one job and keeps their reports for JSON results and Data Docs.

    Args:
        out_dir: ``<run folder>/validation``: JSON results and ``docs/<name>/index.html`` go here (None: keep
            nothing on disk, e.g. in the benchmark's plain measurement).
        name: Job name; Data Docs of this job go to ``docs/<name>``.
    """

    def __init__(self, *, out_dir: Path | None, name: str) -> None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.out_dir, self.name = out_dir, name
        self.reports: list[ValidationReport] = []
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._sources: dict[str, Any] = {}

    def _batch_definition(self, engine: str, suite_name: str) -> Any:
        if engine not in self._sources:
            add = self._context.data_sources.add_spark if engine == "spark" else self._context.data_sources.add_pandas
            # persist=False: callers cache what they validate; a second copy in memory would only cost time.
            self._sources[engine] = add(name=engine, persist=False) if engine == "spark" else add(name=engine)
        source = self._sources[engine]
        asset = source.add_dataframe_asset(name=f"{suite_name}.{len(self.reports)}")
        return asset.add_batch_definition_whole_dataframe("whole")

    def _run_ge(
        self, frame: Any, suite: gx.ExpectationSuite, engine: str, *, rows: int, ours: Callable[[Any], bool]
    ) -> list[Outcome]:
        """Run the suite's expectations that ``ours`` does not claim (our own pass evaluates those)."""
        theirs = [e for e in suite.expectations if not ours(e)]
        if not theirs:
            return []
        copy = gx.ExpectationSuite(name=f"{suite.name}.{len(self.reports)}", meta=suite.meta)
        for expectation in theirs:
            copy.add_expectation(expectation.copy(update={"id": None}))
        copy = self._context.suites.add(copy)
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=copy.name, data=self._batch_definition(engine, suite.name), suite=copy)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="BASIC")
        outcomes = []
        for r in result.results:
            expectation = r.expectation_config.to_domain_obj()
            res = r.result or {}
            observed = res.get("observed_value")
            if observed is None and "unexpected_count" in res:
                observed = _share(res["unexpected_count"], res.get("element_count") or 0)
            success = bool(r.success)
            if r.exception_info and r.exception_info.get("raised_exception"):
                observed = f"error: {r.exception_info.get('exception_message')}"
            elif rows < min_rows(expectation):
                success, observed = True, f"{observed}; not judged below {min_rows(expectation)} rows"
            outcomes.append(
                Outcome(name=expectation_name(expectation), success=success, observed=observed,
                        unexpected=res.get("unexpected_count"))
            )  # fmt: skip
        return outcomes

    def validate(
        self, df: DataFrame, suite: gx.ExpectationSuite, *, quarantine: Path | None = None
    ) -> tuple[DataFrame, ValidationReport]:
        """Validate a Spark DataFrame; returns the accepted rows and the report (never raises on failures).

        Args:
            df: The batch. The gate reads it twice (our pass, then great_expectations): cache it first when it is
                expensive to compute; a parquet read is better left uncached, since each pass reads only the
                columns its rules name (caching the prepared samples with their history arrays cost more than
                both reads).
            suite: The stage's suite (``validation.suites``).
            quarantine: Folder for rows that break a row-level expectation (``quarantine/<stage>/<table>``);
                None keeps them out of the returned rows without writing them (``kar validate`` on data
                already written).
        """
        started = time.perf_counter()
        rules = [row_rule(e) for e in suite.expectations if is_row_level(e)]
        table_rules = [table_rule(e) for e in suite.expectations if is_table_rule(e)]
        # An OR of the predicates, not the array of names: no per-row array on the clean path.
        rejects = reduce(operator.or_, (r.failed for r in rules)) if rules else F.lit(False)
        aggs = [F.count(F.lit(1)).alias("_rows"), F.count_if(rejects).alias("_rejected")]
        for i, rule in enumerate(rules):
            aggs += [F.count_if(rule.failed).alias(f"_f{i}"), F.count_if(rule.counted).alias(f"_c{i}")]
        aggs += [rule.value(~rejects).alias(f"_t{i}") for i, rule in enumerate(table_rules)]
        helpers = {name: column for rule in rules for name, column in rule.helpers.items()}
        frame = df.withColumns(helpers) if helpers else df
        counts = frame.agg(*aggs).first()
        rows, rejected = int(counts["_rows"]), int(counts["_rejected"] or 0)
        outcomes = []
        for i, rule in enumerate(rules):
            failed, counted = int(counts[f"_f{i}"] or 0), int(counts[f"_c{i}"] or 0)
            ok = counted == 0 or (counted - failed) / counted >= rule.mostly
            outcomes.append(
                Outcome(name=rule.name, success=ok, observed=_share(failed, counted), row_level=True, unexpected=failed)
            )
        for i, rule in enumerate(table_rules):
            value = counts[f"_t{i}"]
            outcomes.append(Outcome(name=rule.name, success=rule.check(value), observed=value))
        accepted, where = df, None
        if quarantine is not None and quarantine.exists() and not rejected:
            shutil.rmtree(quarantine)  # rewritten every run: it tells the truth about the current data
        if rejected:
            marked = frame.withColumn(FAILED, failed_column(rules))
            if quarantine is not None:
                marked.where(F.size(FAILED) > 0).drop(*helpers).write.mode("overwrite").parquet(str(quarantine))
                where = str(quarantine)
            accepted = marked.where(F.size(FAILED) == 0).drop(FAILED, *helpers)
        outcomes += self._run_ge(
            accepted, suite, "spark", rows=rows - rejected, ours=lambda e: is_row_level(e) or is_table_rule(e)
        )
        report = ValidationReport(
            suite=suite.name, stage=suite.meta["stage"], version=int(suite.meta["version"]), rows=rows,
            rejected=rejected, outcomes=outcomes, quarantine=where, seconds=time.perf_counter() - started,
        )  # fmt: skip
        self.reports.append(report)
        return accepted, report

    def validate_pandas(self, frame: Any, suite: gx.ExpectationSuite) -> ValidationReport:
        """Validate a pandas frame (the training set lives in pandas); every expectation runs in great_expectations."""
        started = time.perf_counter()
        outcomes = self._run_ge(frame, suite, "pandas", rows=len(frame), ours=lambda _e: False)
        report = ValidationReport(
            suite=suite.name, stage=suite.meta["stage"], version=int(suite.meta["version"]), rows=len(frame),
            rejected=0, outcomes=outcomes, seconds=time.perf_counter() - started,
        )  # fmt: skip
        self.reports.append(report)
        return report

    def add(self, report: ValidationReport) -> None:
        """Keep a report computed elsewhere (e.g. the hallucination check) for the JSON results."""
        self.reports.append(report)

    def finish(self) -> Path | None:
        """Write every report to ``<out_dir>/<suite>.json`` and build Data Docs; returns the docs index."""
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for report in self.reports:
            (self.out_dir / f"{report.suite}.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
        docs = self.out_dir / DOCS_DIR / self.name
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        if "kar" not in (self._context.get_config().data_docs_sites or {}):
            self._context.add_data_docs_site(site_name="kar", site_config=site)
        self._context.build_data_docs(site_names=["kar"])
        return docs / "index.html"
