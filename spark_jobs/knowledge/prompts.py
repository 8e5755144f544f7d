"""Prompt tables built from a prepared folder: one row per user (KAR preference reasoning) or per item.

User prompts reason over the user's knowledge history as of their knowledge cutoff (KAR, Xi et al.); item
prompts ask for factual knowledge (KAR) or, with ``kind="entity"``, for entities (LLM-KERec step 1). Each row
holds the kind's fixed system instruction, the rendered user message and its token count, so the knowledge
job can send it as-is and hash it into a cache key. Rendering is pure and ordered (history by position), so
the same input gives the same prompts byte for byte.

Every inserted value passes through ``text.clean`` (length cap, no ``<data>`` fence tags) and is counted in
``n_flagged`` when it looks like a prompt injection. User histories that exceed the kind's token budget are
cut oldest-first; item fields are only capped, and an item still over budget is flagged ``over_budget``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, IntegerType, LongType, StringType, StructField, StructType, TimestampType

from kar.contracts import storage, tables
from kar.contracts.errors import DataError
from kar.contracts.storage import Folder
from spark_jobs.datasets.base import ITEM_COLUMNS as ITEM_COLUMNS_DEFAULT
from spark_jobs.datasets.base import PROMPT_FIELDS
from spark_jobs.datasets.base import USER_COLUMNS as USER_COLUMNS_DEFAULT
from spark_jobs.knowledge.config import PromptFields, PromptSpec, Scenario, resolve_prompt_fields, template_fields
from spark_jobs.knowledge.text import (
    CHAT_OVERHEAD_TOKENS,
    UNKNOWN,
    TokenCounter,
    clean,
    fit_history,
    looks_like_injection,
    token_counter,
)

ItemKind = Literal["item", "entity"]

# The attributes prompts may show are the run's ``PromptFields`` (the scenario's allow-list within the dataset's);
# templates also get {attributes} ("name: value" for every allowed attribute), user templates {history}, and
# history lines the item attributes plus {rating} and {label}. A field a template names outside those is an
# error when the scenario is checked, never a silent "unknown".
EMPTY_HISTORY = "none"
Words = Mapping[str, Mapping[str, str]]
# The bundled datasets' attributes: what a prompt built without a prepared folder (a unit test) may show.
DEFAULT_FIELDS = PromptFields(user=USER_COLUMNS_DEFAULT, item=ITEM_COLUMNS_DEFAULT)

# What the Python workers return; kind, system and json_schema are added afterwards as literal columns.
_USER_ROWS = StructType(
    [
        StructField("user_id", LongType(), False),
        StructField("as_of", TimestampType(), False),
        StructField("prompt", StringType(), False),
        StructField("prompt_tokens", IntegerType(), False),
        StructField("n_history", IntegerType(), False),
        StructField("n_history_cut", IntegerType(), False),
        StructField("n_flagged", IntegerType(), False),
        StructField("over_budget", BooleanType(), False),
    ]
)
_ITEM_ROWS = StructType(
    [
        StructField("item_id", LongType(), False),
        StructField("as_of", TimestampType(), False),
        StructField("prompt", StringType(), False),
        StructField("prompt_tokens", IntegerType(), False),
        StructField("n_flagged", IntegerType(), False),
        StructField("over_budget", BooleanType(), False),
    ]
)
USER_COLUMNS = (
    "kind",
    "user_id",
    "as_of",
    "system",
    "prompt",
    "json_schema",
    "prompt_tokens",
    "n_history",
    "n_history_cut",
    "n_flagged",
    "over_budget",
)
ITEM_COLUMNS = (
    "kind",
    "item_id",
    "as_of",
    "system",
    "prompt",
    "json_schema",
    "prompt_tokens",
    "n_flagged",
    "over_budget",
)


class _Fields(dict):
    """Template values where a field with no value renders as ``unknown``."""

    def __missing__(self, key: str) -> str:
        return UNKNOWN


# ---------------------------------------------------------------------------------------------- pure helpers


def format_number(value: object) -> object:
    """An integral number without a trailing ``.0`` (4.0 → 4); missing stays ``None`` for ``clean``."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else round(value, 2)
    return value


def _sequence(value: object) -> object:
    """Arrow hands array columns to pandas as numpy arrays; ``clean`` comma-joins lists and tuples only."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def attribute_values(
    row: Mapping[str, Any], *, fields: Sequence[str], max_chars: int, words: Words | None = None, sep: str = "\n"
) -> dict[str, str]:
    """Cleaned values of ``fields`` from a row (coded values spelled out by ``words``), plus ``attributes``:
    every field as ``name: value`` joined by ``sep`` (missing ones left out). Missing values are ``unknown``.
    """
    values = {}
    for name in fields:
        value = format_number(_sequence(row.get(name)))
        if words and isinstance(value, str):
            value = words.get(name, {}).get(value, value)
        values[name] = clean(value, max_chars=max_chars)
    known = [f"{name.replace('_', ' ')}: {value}" for name, value in values.items() if value != UNKNOWN]
    return {**values, "attributes": sep.join(known) if known else UNKNOWN}


def item_values(
    row: Mapping[str, Any], *, max_chars: int, fields: Sequence[str] = ITEM_COLUMNS_DEFAULT, words: Words | None = None
) -> dict[str, str]:
    """Cleaned item attributes (by default the bundled datasets' title, year, genres, description, brand)."""
    return attribute_values(row, fields=fields, max_chars=max_chars, words=words)


def user_values(
    row: Mapping[str, Any], *, max_chars: int, fields: Sequence[str] = USER_COLUMNS_DEFAULT, words: Words | None = None
) -> dict[str, str]:
    """Cleaned user attributes (by default the bundled demographics); a missing profile is ``unknown``."""
    return attribute_values(row, fields=fields, max_chars=max_chars, words=words)


def history_values(
    row: Mapping[str, Any], *, max_chars: int, fields: Sequence[str] = ITEM_COLUMNS_DEFAULT, words: Words | None = None
) -> dict[str, str]:
    """Cleaned fields of one history line: the item's attributes but its description, the rating and label."""
    # A description per history line would crowd out the history itself.
    kept = [name for name in fields if name != "description"]
    item = attribute_values(row, fields=kept, max_chars=max_chars, words=words, sep="; ")
    return {
        **item,
        "rating": clean(format_number(row.get("rating")), max_chars=max_chars),
        "label": clean(format_number(row.get("label")), max_chars=max_chars),
    }


def count_flagged(values: Mapping[str, str], *, fields: frozenset[str]) -> int:
    """How many of the values a template inserts look like prompt injections."""
    return sum(looks_like_injection(values[name]) for name in fields if name in values)


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a template; fields the values lack render as ``unknown``."""
    return template.format_map(_Fields(values))


def render_user(*, template: str, profile: Mapping[str, str], lines: Sequence[str]) -> str:
    """The user message: profile fields plus the history lines (oldest first), or ``none`` without any."""
    return render(template, {**profile, "history": "\n".join(lines) if lines else EMPTY_HISTORY})


def check_spec(spec: PromptSpec, *, kind: str, scenario: str) -> None:
    """Render the templates with placeholder values so a broken template fails on the driver in one line.

    Raises:
        DataError: A template that ``str.format`` rejects, or a user prompt without ``history_line``.
    """
    if kind == "user" and spec.history_line is None:
        raise DataError(f"scenario {scenario}: {kind}.history_line is required for user prompts")
    templates = {"template": spec.template, "history_line": spec.history_line}
    for name, template in templates.items():
        if template is None:
            continue
        try:
            render(template, {})
        except (ValueError, IndexError, AttributeError, TypeError, KeyError) as exc:
            raise DataError(f"scenario {scenario}: {kind}.{name} is not a valid format template ({exc})") from None


# ---------------------------------------------------------------------------------------------- per-row builders


def build_user_prompt(
    *,
    spec: PromptSpec,
    profile_row: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    max_chars: int,
    count: TokenCounter,
    system_tokens: int,
    fields: PromptFields = DEFAULT_FIELDS,
    words: Words | None = None,
) -> dict[str, Any]:
    """One user's message and its bookkeeping.

    Args:
        spec: The user prompt spec (``template`` and ``history_line``).
        profile_row: The user's attributes; absent or null ones are ``unknown``.
        history: Items with ``position`` (0 = oldest), ``item_id``, item attributes, ``rating`` and ``label``,
            in any order.
        max_chars: Cap on each inserted value.
        count: Token counter.
        system_tokens: Tokens of the system instruction.
        fields: The attributes the prompt may show, per role.
        words: Words for coded values (the scenario's ``values``).

    Returns:
        ``prompt``, ``prompt_tokens``, ``n_history``, ``n_history_cut``, ``n_flagged`` and ``over_budget``.
    """
    profile = user_values(profile_row, max_chars=max_chars, fields=fields.user, words=words)
    line_template = spec.history_line or ""
    line_fields = template_fields(line_template)
    ordered = sorted(history, key=lambda h: (h["position"], h["item_id"]))
    values = [history_values(h, max_chars=max_chars, fields=fields.item, words=words) for h in ordered]
    lines = [render(line_template, v) for v in values]
    message, n_cut = fit_history(
        lines=lines,
        render=lambda kept: render_user(template=spec.template, profile=profile, lines=kept),
        budget=spec.max_prompt_tokens - system_tokens,
        count=count,
    )
    flagged = count_flagged(profile, fields=template_fields(spec.template))
    flagged += sum(count_flagged(v, fields=line_fields) for v in values[n_cut:])
    tokens = system_tokens + count(message) + CHAT_OVERHEAD_TOKENS
    return {
        "prompt": message,
        "prompt_tokens": tokens,
        "n_history": len(lines),
        "n_history_cut": n_cut,
        "n_flagged": flagged,
        "over_budget": tokens > spec.max_prompt_tokens,
    }


def build_item_prompt(
    *,
    spec: PromptSpec,
    row: Mapping[str, Any],
    max_chars: int,
    count: TokenCounter,
    system_tokens: int,
    fields: PromptFields = DEFAULT_FIELDS,
    words: Words | None = None,
) -> dict[str, Any]:
    """One item's message (fields capped, never cut) with ``prompt_tokens``, ``n_flagged`` and ``over_budget``."""
    values = item_values(row, max_chars=max_chars, fields=fields.item, words=words)
    message = render(spec.template, values)
    tokens = system_tokens + count(message) + CHAT_OVERHEAD_TOKENS
    return {
        "prompt": message,
        "prompt_tokens": tokens,
        "n_flagged": count_flagged(values, fields=template_fields(spec.template)),
        "over_budget": tokens > spec.max_prompt_tokens,
    }


# ---------------------------------------------------------------------------------------------- Spark jobs


def table_columns(data_dir: Folder, name: str, *, key: str) -> list[str]:
    """A prepared table's attribute columns (its id and timestamp left out), from the parquet schema alone."""

    path = storage.location(data_dir) / name
    if not storage.is_dir(path):
        raise DataError(f"{path}: table not found; run `kar prepare --out {data_dir}` first")
    schema = storage.parquet_dataset(path).schema
    return [c for c in schema.names if c not in (key, "event_timestamp")]


def prompt_fields_for(data_dir: Folder, scenario: Scenario) -> PromptFields:
    """What ``scenario``'s prompts may show for the prepared folder: the scenario's allow-list within the
    dataset's ``prompt_fields`` (``summary.json``; the bundled datasets' defaults for older folders).

    Raises:
        DataError: A template field no table provides or no allow-list lets through.
    """
    summary_path = storage.location(data_dir) / tables.SUMMARY_FILE
    summary = json.loads(storage.read_text(summary_path)) if storage.is_file(summary_path) else {}
    columns = {
        "user": table_columns(data_dir, tables.USERS_DIR, key="user_id"),
        "item": table_columns(data_dir, tables.ITEMS_DIR, key="item_id"),
    }
    return resolve_prompt_fields(scenario, allowed=summary.get("prompt_fields") or PROMPT_FIELDS, columns=columns)


def _read(spark: SparkSession, data_dir: Folder, name: str) -> DataFrame:
    path = storage.location(data_dir) / name
    if not storage.is_dir(path):
        raise DataError(f"{path}: table not found; run `kar prepare --out {data_dir}` first")
    return spark.read.parquet(str(path))


def _select(df: DataFrame, names: Sequence[str]) -> DataFrame:
    """Select columns, adding absent optional ones as nulls (folders prepared before ``brand`` existed)."""
    present = set(df.columns)
    return df.select(*[F.col(n) if n in present else F.lit(None).cast("string").alias(n) for n in names])


def _constant_columns(*, kind: str, spec: PromptSpec) -> dict[str, Any]:
    schema_text = json.dumps(spec.json_schema, sort_keys=True) if spec.json_schema is not None else None
    return {
        "kind": F.lit(kind),
        "system": F.lit(spec.system),
        "json_schema": F.lit(schema_text).cast("string"),
    }


def _records(frame: pd.DataFrame, names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts; nulls arrive as None or NaN, which ``format_number`` and ``clean`` both treat as missing."""
    return frame[list(names)].to_dict("records")


def _user_mapper(
    *, spec: PromptSpec, max_chars: int, tokenizer: str | None, fields: PromptFields, words: Words
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def build(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Resolved in the worker: the counter (and a loaded tokenizer) is cached per process and path.
        count = token_counter(tokenizer)
        system_tokens = count(spec.system)
        for batch in batches:
            rows = []
            for record in _records(batch, ["user_id", "as_of", "history", *fields.user]):
                history = [] if record["history"] is None else list(record["history"])
                built = build_user_prompt(
                    spec=spec,
                    profile_row=record,
                    history=history,
                    max_chars=max_chars,
                    count=count,
                    system_tokens=system_tokens,
                    fields=fields,
                    words=words,
                )
                rows.append({"user_id": record["user_id"], "as_of": record["as_of"], **built})
            yield pd.DataFrame(rows, columns=_USER_ROWS.fieldNames())

    return build


def _item_mapper(
    *, spec: PromptSpec, max_chars: int, tokenizer: str | None, fields: PromptFields, words: Words
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def build(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        count = token_counter(tokenizer)
        system_tokens = count(spec.system)
        for batch in batches:
            rows = []
            for record in _records(batch, ["item_id", "as_of", *fields.item]):
                built = build_item_prompt(
                    spec=spec,
                    row=record,
                    max_chars=max_chars,
                    count=count,
                    system_tokens=system_tokens,
                    fields=fields,
                    words=words,
                )
                rows.append({"item_id": record["item_id"], "as_of": record["as_of"], **built})
            yield pd.DataFrame(rows, columns=_ITEM_ROWS.fieldNames())

    return build


def _tokenizer_arg(tokenizer: str | Path | None) -> str | None:
    # A plain string pickles into the workers; they resolve file vs. folder themselves.
    return None if tokenizer is None else str(tokenizer)


def read_keys(cutoffs: DataFrame) -> list[str]:
    """What one history is read for: a cutoff (``user_id, as_of``), or the user in folders with one cutoff each
    written before cutoffs named their last position."""
    return ["user_id", "as_of"] if "last_position" in cutoffs.columns else ["user_id"]


def _history_max(data_dir: Folder) -> int:
    """The folder's cap on history lines a prompt shows (its split config; 30 for older folders)."""
    summary_path = storage.location(data_dir) / tables.SUMMARY_FILE
    summary = json.loads(storage.read_text(summary_path)) if storage.is_file(summary_path) else {}
    return int(summary.get("split", {}).get("history_max", 30))


def _history_as_of(history: DataFrame, cutoffs: DataFrame, *, history_max: int) -> DataFrame:
    """Per cutoff, the last ``history_max`` history rows up to its ``last_position``.

    A user with several cutoffs (the ``rolling`` protocol) gets one history per cutoff, each read only up to it;
    with one cutoff per user this keeps every row (the split already capped the history).
    """
    if "last_position" not in cutoffs.columns:
        return history
    read = history.join(cutoffs.select("user_id", "as_of", "last_position"), "user_id")
    latest_first = Window.partitionBy("user_id", "as_of").orderBy(F.col("position").desc())
    read = read.where(F.col("position") <= F.col("last_position")).withColumn(
        "_rank", F.row_number().over(latest_first)
    )
    return read.where(F.col("_rank") <= history_max).drop("last_position", "_rank")


def user_prompts(
    spark: SparkSession,
    data_dir: Folder,
    *,
    scenario: Scenario,
    tokenizer: str | Path | None = None,
    fields: PromptFields | None = None,
) -> DataFrame:
    """Per-user preference-reasoning prompts over each user's knowledge history as of their cutoff.

    Every user in ``knowledge_cutoffs`` gets one row; a user missing from ``users`` has ``unknown``
    profile fields, and a history item missing from ``items`` has ``unknown`` item fields.

    Args:
        spark: The session.
        data_dir: A prepared folder (``users``, ``items``, ``knowledge_history``, ``knowledge_cutoffs``).
        scenario: Prompts and caps (see ``spark_jobs.knowledge.config``).
        tokenizer: The served model's ``tokenizer.json`` or its folder; ``None`` (or a missing file) uses the
            conservative character heuristic.
        fields: What the prompts may show (default: :func:`prompt_fields_for` the folder and scenario).

    Returns:
        Columns ``USER_COLUMNS``: kind, user_id, as_of (= knowledge_cutoff), system, prompt, json_schema,
        prompt_tokens, n_history, n_history_cut, n_flagged, over_budget.

    Raises:
        DataError: A missing table or a broken template.
    """
    spec = scenario.user
    check_spec(spec, kind="user", scenario=scenario.name)
    fields = fields or prompt_fields_for(data_dir, scenario)
    line_items = [name for name in fields.item if name != "description"]
    items = _select(_read(spark, data_dir, tables.ITEMS_DIR), ["item_id", *line_items])
    history = _select(_read(spark, data_dir, tables.HISTORY_DIR), ["user_id", "item_id", "position", "rating", "label"])
    line = F.struct("position", "item_id", "rating", "label", *line_items)
    cutoffs = _read(spark, data_dir, tables.CUTOFFS_DIR).withColumnRenamed("knowledge_cutoff", "as_of")
    read = _history_as_of(history, cutoffs, history_max=_history_max(data_dir))
    keys = read_keys(cutoffs)
    histories = read.join(items, "item_id", "left").groupBy(*keys).agg(F.collect_list(line).alias("history"))
    users = _select(_read(spark, data_dir, tables.USERS_DIR), ["user_id", *fields.user])
    inputs = cutoffs.select("user_id", "as_of").join(users, "user_id", "left").join(histories, keys, "left")
    mapper = _user_mapper(
        spec=spec,
        max_chars=scenario.field_max_chars,
        tokenizer=_tokenizer_arg(tokenizer),
        fields=fields,
        words=scenario.values,
    )
    built = inputs.mapInPandas(mapper, _USER_ROWS)
    return built.withColumns(_constant_columns(kind="user", spec=spec)).select(*USER_COLUMNS)


def item_prompts(
    spark: SparkSession,
    data_dir: Folder,
    *,
    scenario: Scenario,
    kind: ItemKind = "item",
    tokenizer: str | Path | None = None,
    fields: PromptFields | None = None,
) -> DataFrame:
    """Per-item prompts: factual knowledge (``kind="item"``, KAR) or entity extraction (``"entity"``, LLM-KERec).

    Args:
        spark: The session.
        data_dir: A prepared folder (``items``).
        scenario: Prompts and caps.
        kind: Which item spec to render.
        tokenizer: As for ``user_prompts``.
        fields: As for ``user_prompts``.

    Returns:
        Columns ``ITEM_COLUMNS``: kind, item_id, as_of (= the item's event_timestamp), system, prompt,
        json_schema, prompt_tokens, n_flagged, over_budget.

    Raises:
        DataError: An unknown kind, a missing table or a broken template.
    """
    if kind not in ("item", "entity"):
        raise DataError(f"item prompts: kind must be 'item' or 'entity', got {kind!r}")
    spec = scenario.spec(kind)
    check_spec(spec, kind=kind, scenario=scenario.name)
    fields = fields or prompt_fields_for(data_dir, scenario)
    items = _read(spark, data_dir, tables.ITEMS_DIR).withColumnRenamed("event_timestamp", "as_of")
    inputs = _select(items, ["item_id", "as_of", *fields.item])
    mapper = _item_mapper(
        spec=spec,
        max_chars=scenario.field_max_chars,
        tokenizer=_tokenizer_arg(tokenizer),
        fields=fields,
        words=scenario.values,
    )
    built = inputs.mapInPandas(mapper, _ITEM_ROWS)
    return built.withColumns(_constant_columns(kind=kind, spec=spec)).select(*ITEM_COLUMNS)


__all__ = [
    "ITEM_COLUMNS",
    "USER_COLUMNS",
    "build_item_prompt",
    "build_user_prompt",
    "item_prompts",
    "user_prompts",
]
