"""Run a stage's suite on a Spark (or pandas) DataFrame: quarantine bad rows, fail the batch loudly.

One :class:`Validator` per job holds an in-memory great_expectations context. Per suite:

1. every row-level expectation (``validation.rows``) with its counts, and the row-count and column-mean
   expectations over the rows they accept, are Spark aggregates, computed in one aggregation of the gate's own
   (``Validator.validate``) or, for small tables, observed while the job writes the accepted rows
   (``Validator.observe`` and :attr:`Check.accepted`, Spark's ``DataFrame.observe``: no pass of the gate's own);
2. when a row broke any row rule, rejected rows are written to ``quarantine/<stage>/<table>`` with a
   ``failed_expectations`` array;
3. one great_expectations ``Batch.validate`` over the accepted rows checks the other batch-level expectations
   (in the jobs these read only the schema: no Spark job, no copy, no ``toPandas``);
4. a :class:`ValidationReport` merges both; ``raise_for_failures`` turns a failed expectation into a one-line
   ``DataError`` naming the suite, the expectation and the observed value. The merged result is also kept as
   great_expectations' own ``ExpectationSuiteValidationResult``, so Data Docs show every expectation of the
   suite, those our pass judged included.

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
from datetime import UTC, datetime
from functools import cached_property, reduce
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from kar.contracts import storage
from kar.contracts.errors import QualityGateFailed
from kar.contracts.storage import Folder
from validation.rows import FAILED, failed_column, is_table_rule, row_rule, table_rule
from validation.suites import expectation_name, is_row_level, min_rows

VALIDATION_DIR = "validation"
# Prefix of the gate's aggregates (observed metrics share a namespace with a job's other observations).
_KEY = "_gate_"
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
    seconds: float = 0.0  # the gate's own time; counting observed during a job's action is not in it
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
        """Raise a one-line ``QualityGateFailed`` when any expectation failed; ``kept`` says what output stays."""
        if self.passed:
            return
        first = next(o for o in self.outcomes if not o.success)
        more = f" (and {len(self.failed) - 1} more)" if len(self.failed) > 1 else ""
        where = f"; rejected rows in {self.quarantine}" if self.quarantine and self.rejected else ""
        raise QualityGateFailed(
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


def _evr(expectation: Any, success: bool, result: dict[str, Any]) -> ExpectationValidationResult:
    """great_expectations' result record for an expectation our own pass judged (what Data Docs render)."""
    return ExpectationValidationResult(success=success, expectation_config=expectation.configuration, result=result)


def _finished(observation: Observation) -> bool:
    """Whether an action has filled the observation (``Observation.get`` would block forever otherwise)."""
    jvm = getattr(observation, "_jo", None)  # pyspark exposes no non-blocking test; its JVM object's future does
    return jvm is not None and bool(jvm.future().isCompleted())


class Check:
    """A suite attached to a batch; its counts come from the job's own write where that is cheaper.

    Every row rule's failure count, the rejected-row count and the table aggregates are Spark aggregates. They
    reach the gate in one of two ways:

    * :attr:`accepted`: Spark's observable metrics (``DataFrame.observe``) count them while the job writes the
      accepted rows, with no pass of the gate's own. Observed metrics are slow per row (the raw interactions suite
      observed on 996,600 cached rows took 7–10 s, its own pass 0.6–0.7 s): this is for small tables, where a
      pass costs its fixed ~0.3 s of job scheduling rather than its rows;
    * otherwise :meth:`report` runs one aggregation of its own (``Validator.validate``).

    :meth:`report` then writes the quarantine (only when rows were rejected: that path reads the batch again), runs
    great_expectations on what the pass does not cover, and returns the verdict. Built by
    :meth:`Validator.observe`.
    """

    def __init__(
        self, *, validator: Validator, df: DataFrame, suite: gx.ExpectationSuite, quarantine: Folder | None
    ) -> None:
        self._validator, self._df, self._suite, self._quarantine = validator, df, suite, quarantine
        self._row_expectations = [e for e in suite.expectations if is_row_level(e)]
        self._table_expectations = [e for e in suite.expectations if is_table_rule(e)]
        self._rules = [row_rule(e) for e in self._row_expectations]
        self._table_rules = [table_rule(e) for e in self._table_expectations]
        # An OR of the predicates, not the array of names: no per-row array on the clean path.
        self._rejects = reduce(operator.or_, (r.failed for r in self._rules)) if self._rules else F.lit(False)
        self._helpers = {name: column for rule in self._rules for name, column in rule.helpers.items()}
        self._frame = df.withColumns(self._helpers) if self._helpers else df
        self._observation: Observation | None = None
        self._result: tuple[DataFrame, ValidationReport] | None = None

    def _aggregates(self) -> list[Column]:
        aggs = [F.count(F.lit(1)).alias(f"{_KEY}rows"), F.count_if(self._rejects).alias(f"{_KEY}rejected")]
        for i, rule in enumerate(self._rules):
            aggs += [F.count_if(rule.failed).alias(f"{_KEY}f{i}"), F.count_if(rule.counted).alias(f"{_KEY}c{i}")]
        return aggs + [rule.value(~self._rejects).alias(f"{_KEY}t{i}") for i, rule in enumerate(self._table_rules)]

    @cached_property
    def accepted(self) -> DataFrame:
        """The batch without the rows that break a row rule, observed: the gate counts while the job writes it."""
        self._observation = Observation()
        observed = self._frame.observe(self._observation, *self._aggregates())
        return observed.where(~self._rejects).drop(*self._helpers)

    def _outcomes(self, counts: dict[str, Any]) -> list[tuple[Outcome, ExpectationValidationResult]]:
        judged = []
        for i, (rule, expectation) in enumerate(zip(self._rules, self._row_expectations, strict=True)):
            failed, counted = int(counts[f"{_KEY}f{i}"] or 0), int(counts[f"{_KEY}c{i}"] or 0)
            ok = counted == 0 or (counted - failed) / counted >= rule.mostly
            outcome = Outcome(
                name=rule.name, success=ok, observed=_share(failed, counted), row_level=True, unexpected=failed
            )
            result = {"element_count": counted, "unexpected_count": failed, "partial_unexpected_list": [],
                      "unexpected_percent": 100.0 * failed / counted if counted else 0.0}  # fmt: skip
            judged.append((outcome, _evr(expectation, ok, result)))
        for i, (rule, expectation) in enumerate(zip(self._table_rules, self._table_expectations, strict=True)):
            value = counts[f"{_KEY}t{i}"]
            outcome = Outcome(name=rule.name, success=rule.check(value), observed=value)
            judged.append((outcome, _evr(expectation, outcome.success, {"observed_value": _jsonable(value)})))
        return judged

    def _count(self) -> dict[str, Any]:
        if self._observation is not None and _finished(self._observation):
            return self._observation.get
        return self._frame.agg(*self._aggregates()).first().asDict()

    def report(self) -> tuple[DataFrame, ValidationReport]:
        """The accepted rows and the verdict (never raises on failures); call it after the job's action.

        The accepted rows are the batch itself when no row was rejected (no filter or observation left in later
        plans), else the batch without the rejected rows.
        """
        if self._result is not None:
            return self._result
        started = time.perf_counter()
        counts = self._count()
        rows, rejected = int(counts[f"{_KEY}rows"]), int(counts[f"{_KEY}rejected"] or 0)
        judged = self._outcomes(counts)
        accepted, where = self._df, None
        if self._quarantine is not None and not rejected:
            storage.remove_tree(self._quarantine)  # rewritten every run: it tells the truth about the current data
        if rejected:
            if self._quarantine is not None:
                marked = self._frame.withColumn(FAILED, failed_column(self._rules)).where(F.size(FAILED) > 0)
                marked.drop(*self._helpers).write.mode("overwrite").parquet(str(self._quarantine))
                where = str(self._quarantine)
            accepted = self._frame.where(~self._rejects).drop(*self._helpers)
        judged += self._validator._run_ge(
            accepted, self._suite, "spark", rows=rows - rejected, ours=lambda e: is_row_level(e) or is_table_rule(e)
        )
        report = self._validator._record(
            self._suite, judged, rows=rows, rejected=rejected, quarantine=where, seconds=time.perf_counter() - started
        )
        self._result = accepted, report
        return self._result


class Validator:
    """Runs suites for one job and keeps their reports for JSON results and Data Docs.

    Args:
        out_dir: ``<run folder>/validation``: JSON results and ``docs/<name>/index.html`` go here (None: keep
            nothing on disk, e.g. in the benchmark's plain measurement).
        name: Job name; Data Docs of this job go to ``docs/<name>``.
        docs_on_pass: Build Data Docs when every suite passed too. Off for jobs whose runs are small and
            frequent (the encode job), where rendering them (~0.5 s) costs as much as the work; the JSON results
            are written either way and ``kar validate STAGE`` renders the docs on demand.
    """

    def __init__(self, *, out_dir: Path | None, name: str, docs_on_pass: bool = True) -> None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        # great_expectations' file stores refuse relative folders, and a relative one would move with the cwd.
        self.out_dir, self.name = (None if out_dir is None else Path(out_dir).absolute()), name
        self.docs_on_pass = docs_on_pass
        self.reports: list[ValidationReport] = []
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._sources: dict[str, Any] = {}
        self._run_id = RunIdentifier(run_name=name, run_time=datetime.now(UTC))

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
    ) -> list[tuple[Outcome, ExpectationValidationResult]]:
        """Run the suite's expectations that ``ours`` does not claim (our own pass evaluates those)."""
        theirs = [e for e in suite.expectations if not ours(e)]
        if not theirs:
            return []
        copy = gx.ExpectationSuite(name=suite.name, meta=suite.meta)
        for expectation in theirs:
            copy.add_expectation(expectation.copy(update={"id": None}))
        # Batch.validate stores nothing: the gate records one result per suite, ours and these merged (_record).
        batch = self._batch_definition(engine, suite.name).get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(copy, result_format="BASIC")
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
            r.success = success
            outcome = Outcome(
                name=expectation_name(expectation), success=success, observed=observed,
                unexpected=res.get("unexpected_count"),
            )  # fmt: skip
            outcomes.append((outcome, r))
        return outcomes

    def _record(
        self, suite: gx.ExpectationSuite, judged: list[tuple[Outcome, ExpectationValidationResult]], **report: Any
    ) -> ValidationReport:
        """Keep the report, and the suite's whole result (every expectation, ours too) for Data Docs."""
        outcomes = [outcome for outcome, _ in judged]
        made = ValidationReport(
            suite=suite.name, stage=suite.meta["stage"], version=int(suite.meta["version"]), outcomes=outcomes,
            **report,
        )  # fmt: skip
        self.reports.append(made)
        passed = sum(o.success for o in outcomes)
        result = ExpectationSuiteValidationResult(
            success=made.passed, results=[r for _, r in judged], suite_name=suite.name,
            statistics={"evaluated_expectations": len(outcomes), "successful_expectations": passed,
                        "unsuccessful_expectations": len(outcomes) - passed,
                        "success_percent": 100.0 * passed / len(outcomes) if outcomes else None},
            meta={"run_id": self._run_id, "batch_spec": {"rows": made.rows, "rejected_by_row_rules": made.rejected},
                  "active_batch_definition": {"datasource_name": "kar", "data_connector_name": self.name,
                                              "data_asset_name": suite.name, "batch_identifiers": {}}},
        )  # fmt: skip
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
            run_id=self._run_id,
            batch_identifier=f"{suite.name}.{len(self.reports)}",
        )
        self._context.validation_results_store.set(key, result)
        return made

    def observe(self, df: DataFrame, suite: gx.ExpectationSuite, *, quarantine: Folder | None = None) -> Check:
        """Attach ``suite`` to ``df``: when the job writes :attr:`Check.accepted`, its row rules and table
        aggregates are counted during that write, with no pass of the gate's own (for small tables: see
        :class:`Check`); else :meth:`Check.report` counts in a pass of its own.

        Args:
            df: The batch.
            suite: The stage's suite (``validation.suites``).
            quarantine: Folder for rows that break a row-level expectation (``quarantine/<stage>/<table>``);
                None keeps them out of the accepted rows without writing them.

        Returns:
            The pending check; call :meth:`Check.report` after the action (it counts on its own if none ran).
        """
        return Check(validator=self, df=df, suite=suite, quarantine=quarantine)

    def validate(
        self, df: DataFrame, suite: gx.ExpectationSuite, *, quarantine: Folder | None = None
    ) -> tuple[DataFrame, ValidationReport]:
        """Validate a Spark DataFrame now, in a pass of its own; returns the accepted rows and the report (never
        raises on failures). Prefer :meth:`observe` where the job reads the batch anyway.

        Args:
            df: The batch. The gate reads it twice (our pass, then great_expectations, which reads only the
                schema for the expectations it runs in the jobs): cache it first when it is expensive to compute.
            suite: The stage's suite (``validation.suites``).
            quarantine: As in :meth:`observe`.
        """
        return self.observe(df, suite, quarantine=quarantine).report()

    def validate_pandas(self, frame: Any, suite: gx.ExpectationSuite) -> ValidationReport:
        """Validate a pandas frame (the training set lives in pandas); every expectation runs in great_expectations."""
        started = time.perf_counter()
        judged = self._run_ge(frame, suite, "pandas", rows=len(frame), ours=lambda _e: False)
        return self._record(suite, judged, rows=len(frame), rejected=0, seconds=time.perf_counter() - started)

    def add(self, report: ValidationReport) -> None:
        """Keep a report computed elsewhere (e.g. the hallucination check) for the JSON results."""
        self.reports.append(report)

    def finish(self) -> Path | None:
        """Write every report to ``<out_dir>/<suite>.json`` and build Data Docs (unless every suite passed and
        ``docs_on_pass`` is off); returns the docs index, or None when no docs were built."""
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for report in self.reports:
            (self.out_dir / f"{report.suite}.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
        docs = self.out_dir / DOCS_DIR / self.name
        if not self.docs_on_pass and all(report.passed for report in self.reports):
            shutil.rmtree(docs, ignore_errors=True)  # an older run's docs would show failures that are gone
            return None
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        if "kar" not in (self._context.get_config().data_docs_sites or {}):
            self._context.add_data_docs_site(site_name="kar", site_config=site)
        self._context.build_data_docs(site_names=["kar"])
        return docs / "index.html"
