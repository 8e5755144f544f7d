"""Typed parsing of raw string fields with a human-readable reject reason per row.

Spark 4 runs in ANSI mode, where a bad cast fails the whole job; ``try_cast`` instead yields null, which we
turn into a reason naming the field and the offending value. The reasons of all fields are joined into
``_reason``; a row with a reason goes to quarantine, never silently away.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

REASON = "_reason"


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One typed field of a raw table.

    Attributes:
        name: Column name (same before and after typing).
        dtype: Spark SQL type to cast to, e.g. ``bigint``, ``double``, ``int``, ``string``.
        required: Whether a missing/empty value rejects the row.
        min_value: Inclusive lower bound, for numeric types.
        max_value: Inclusive upper bound, for numeric types.
    """

    name: str
    dtype: str = "string"
    required: bool = True
    min_value: float | None = None
    max_value: float | None = None


def _reasons_for(spec: FieldSpec) -> tuple[Column, list[Column]]:
    raw = F.trim(F.col(spec.name).cast("string"))
    missing = raw.isNull() | (raw == F.lit(""))
    typed = F.when(missing, F.lit(None)).otherwise(raw.try_cast(spec.dtype))
    reasons = [
        F.when(missing & F.lit(spec.required), F.lit(f"{spec.name}: missing")),
        F.when(
            ~missing & typed.isNull(),
            F.concat(F.lit(f"{spec.name}: not a valid {spec.dtype} ("), raw, F.lit(")")),
        ),
    ]
    if spec.min_value is not None or spec.max_value is not None:
        low = F.lit(True) if spec.min_value is None else typed >= F.lit(spec.min_value)
        high = F.lit(True) if spec.max_value is None else typed <= F.lit(spec.max_value)
        bounds = f"[{_fmt(spec.min_value)}, {_fmt(spec.max_value)}]"
        reasons.append(
            F.when(
                typed.isNotNull() & ~(low & high),
                F.concat(F.lit(f"{spec.name}: "), raw, F.lit(f" outside {bounds}")),
            )
        )
    return typed, reasons


def _fmt(value: float | None) -> str:
    if value is None:
        return "…"
    return str(int(value)) if float(value).is_integer() else str(value)


def apply_field_specs(df: DataFrame, specs: Iterable[FieldSpec]) -> DataFrame:
    """Cast each field to its type and append the reasons it fails to ``_reason``.

    Rows whose line could not even be split (``_error`` set) keep that error as their only reason, since their
    fields are all empty and would otherwise add noise.
    """
    typed_cols: dict[str, Column] = {}
    reasons: list[Column] = []
    for spec in specs:
        typed, field_reasons = _reasons_for(spec)
        typed_cols[spec.name] = typed
        reasons.extend(field_reasons)
    field_reason = F.concat_ws("; ", *reasons)
    reason = F.when(F.col("_error").isNotNull(), F.col("_error")).otherwise(
        F.when(field_reason != F.lit(""), field_reason)
    )
    # One projection: the reasons must see the raw strings, not the typed columns that replace them.
    return df.withColumns({**typed_cols, REASON: reason})


def add_reason(df: DataFrame, condition: Column, message: Column | str) -> DataFrame:
    """Append ``message`` to ``_reason`` on rows where ``condition`` holds."""
    msg = F.lit(message) if isinstance(message, str) else message
    current = F.col(REASON)
    appended = F.when(current.isNull(), msg).otherwise(F.concat_ws("; ", current, msg))
    return df.withColumn(REASON, F.when(F.coalesce(condition, F.lit(False)), appended).otherwise(current))
