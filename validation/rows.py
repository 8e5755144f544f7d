"""Row-level expectations as Spark predicates, so accepted and rejected rows split in one Spark pass; a few
table-level ones (row count, column mean) as aggregates over the accepted rows in that same pass.

great_expectations computes a map expectation's unexpected count but not, on Spark, a per-row verdict we can
route; translating the *same* expectation objects into ``Column`` predicates keeps one definition of each rule.
Semantics follow great_expectations: null values are not "unexpected" except for ``not_be_null``, and
``mostly`` is the share of the non-null values that must pass. ``tests/test_validation.py`` checks every
translation against great_expectations' own counts and verdicts.

The table-level ones are here for cost, not for want of great_expectations: on Spark it spends one or two
jobs per such metric (~0.2 s each, whatever the table's size), while our pass already scans the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from great_expectations.expectations.expectation import Expectation
from pyspark.sql import Column, Window
from pyspark.sql import functions as F

from kar.contracts.errors import DataError
from validation.suites import expectation_name

FAILED = "failed_expectations"


@dataclass(frozen=True)
class RowRule:
    """One row-level expectation as Spark columns.

    Attributes:
        name: The expectation's name (what a quarantined row lists).
        failed: True where the row breaks the rule (never null).
        counted: True where the row is in the rule's domain (the denominator of ``mostly``).
        mostly: Share of counted rows that must pass for the batch to pass.
        helpers: Columns ``failed`` reads that must be added to the frame first (a window function cannot sit
            inside the aggregate that counts failures).
    """

    name: str
    failed: Column
    counted: Column
    mostly: float
    helpers: dict[str, Column] = field(default_factory=dict)


def _between(value: Column, kw: dict) -> Column:
    ok = F.lit(True)
    if kw.get("min_value") is not None:
        low = F.lit(kw["min_value"])
        ok = ok & (value > low if kw.get("strict_min") else value >= low)
    if kw.get("max_value") is not None:
        high = F.lit(kw["max_value"])
        ok = ok & (value < high if kw.get("strict_max") else value <= high)
    return ok


def _column_rule(kind: str, kw: dict) -> tuple[Column, Column, dict[str, Column]]:
    """(passes, counted, helpers) for single-column map expectations."""
    col = F.col(kw["column"])
    present = col.isNotNull()
    if kind == "expect_column_values_to_not_be_null":
        return present, F.lit(True), {}
    if kind == "expect_column_values_to_be_null":
        return ~present, F.lit(True), {}
    if kind == "expect_column_values_to_be_unique":
        # As great_expectations does on Spark: every row of a repeated value is unexpected, not all but one.
        helper = f"_rows_with_same_{kw['column']}"
        return F.col(helper) <= 1, present, {helper: F.count(F.lit(1)).over(Window.partitionBy(col))}
    checks: dict[str, Callable[[], Column]] = {
        "expect_column_values_to_be_between": lambda: _between(col, kw),
        "expect_column_values_to_be_in_set": lambda: col.isin(list(kw["value_set"])),
        "expect_column_values_to_not_be_in_set": lambda: ~col.isin(list(kw["value_set"])),
        "expect_column_values_to_match_regex": lambda: col.rlike(kw["regex"]),
        "expect_column_values_to_not_match_regex": lambda: ~col.rlike(kw["regex"]),
        "expect_column_values_to_not_match_regex_list": lambda: (
            ~F.greatest(*[col.rlike(r) for r in kw["regex_list"]], F.lit(False))
        ),
        "expect_column_value_lengths_to_be_between": lambda: _between(F.length(col), kw),
        "expect_column_value_lengths_to_equal": lambda: F.length(col) == F.lit(kw["value"]),
    }
    if kind not in checks:
        raise DataError(f"{kind} cannot be checked per row; mark it batch-level (no row_level meta)")
    return checks[kind](), present, {}


def _pair_rule(kind: str, kw: dict) -> tuple[Column, Column, dict[str, Column]]:
    a, b = F.col(kw["column_A"]), F.col(kw["column_B"])
    ignore = kw.get("ignore_row_if") or "both_values_are_missing"
    counted = {
        "both_values_are_missing": a.isNotNull() | b.isNotNull(),
        "either_value_is_missing": a.isNotNull() & b.isNotNull(),
        "neither": F.lit(True),
    }[ignore]
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return (a >= b if kw.get("or_equal") else a > b), counted, {}
    if kind == "expect_column_pair_values_to_be_equal":
        return a == b, counted, {}
    raise DataError(f"{kind} cannot be checked per row; mark it batch-level (no row_level meta)")


def row_rule(expectation: Expectation) -> RowRule:
    """Translate one map expectation into a :class:`RowRule`.

    Raises:
        DataError: The expectation type has no per-row translation.
    """
    kind = expectation.expectation_type
    kw = expectation.configuration.kwargs
    passes, counted, helpers = _pair_rule(kind, kw) if "column_A" in kw else _column_rule(kind, kw)
    # A null verdict (e.g. comparing with null) is "not failed": great_expectations ignores such rows too.
    failed = counted & ~F.coalesce(passes, F.lit(True))
    return RowRule(
        name=expectation_name(expectation),
        failed=F.coalesce(failed, F.lit(False)),
        counted=F.coalesce(counted, F.lit(False)),
        mostly=float(kw.get("mostly", 1.0) if kw.get("mostly") is not None else 1.0),
        helpers=helpers,
    )


@dataclass(frozen=True)
class TableRule:
    """One table-level expectation as an aggregate over the rows the row rules accept.

    Attributes:
        name: The expectation's name.
        value: Builds the aggregate from the "row accepted" predicate.
        check: The expectation's verdict on the aggregated value.
    """

    name: str
    value: Callable[[Column], Column]
    check: Callable[[Any], bool]


def _in_range(value: Any, kw: dict) -> bool:
    if value is None:
        return False
    low, high = kw.get("min_value"), kw.get("max_value")
    if low is not None and (value <= low if kw.get("strict_min") else value < low):
        return False
    return not (high is not None and (value >= high if kw.get("strict_max") else value > high))


_TABLE_AGGREGATES: dict[str, Callable[[dict, Column], Column]] = {
    "expect_table_row_count_to_be_between": lambda kw, ok: F.count_if(ok),
    # avg skips nulls, as great_expectations' column mean does.
    "expect_column_mean_to_be_between": lambda kw, ok: F.avg(F.when(ok, F.col(kw["column"]))),
}


def is_table_rule(expectation: Expectation) -> bool:
    """Whether the gate computes this batch-level expectation in its own pass."""
    return expectation.expectation_type in _TABLE_AGGREGATES


def table_rule(expectation: Expectation) -> TableRule:
    """Translate a row-count or column-mean expectation into a :class:`TableRule`."""
    kw = dict(expectation.configuration.kwargs)
    aggregate = _TABLE_AGGREGATES[expectation.expectation_type]
    return TableRule(
        name=expectation_name(expectation),
        value=lambda ok: aggregate(kw, ok),
        check=lambda value: _in_range(value, kw),
    )


def failed_column(rules: list[RowRule]) -> Column:
    """``array<string>`` of the names of the rules a row breaks (empty when it breaks none)."""
    if not rules:
        return F.array().cast("array<string>")
    return F.array_compact(F.array(*[F.when(r.failed, F.lit(r.name)) for r in rules]))
