"""A team's own tables as a dataset: ``kar prepare --dataset table --spec SPEC.yaml``.

The spec names the interactions table and, optionally, user and item tables (CSV with a header, parquet, or
JSON lines; a file, a folder of such files, or a URI Spark reads) and maps their columns to the canonical
ones::

    name: shop                         # optional; the dataset's name in summaries and default experiments
    interactions:
      path: events/clicks.csv          # relative paths are relative to this file
      user_id: customer_id
      item_id: sku
      timestamp: ts                    # epoch seconds or milliseconds, ISO-8601 text, or a timestamp column
      label: clicked                   # a 0/1 column …
      # rating: stars                  # … or a rating column and the rating above which a row is positive
      # positive_above: 3
      # rating_range: [1, 5]
    users:                             # optional: without it, users are the ids the interactions name
      path: customers.parquet
      id: customer_id
      attributes: [segment, country]   # columns copied into the prepared users table ({name: type} to cast)
      prompt_fields: [segment]         # the attributes LLM prompts may use (default: none; never ids)
    items:
      path: products.jsonl
      id: sku
      attributes: {title: string, category: string, price: double}
      prompt_fields: [title, category] # default: every attribute (catalogue data)

Ids may be strings: each gets a stable int64 id (a 64-bit hash, the same in every run; a collision is an
error), and the mapping is written to ``id_maps/`` so ids coming back in (``kar serve``, ``kar feast online``)
can be the team's own. No user attribute is required. Rows that break a rule go to quarantine with their file,
row and reason, as for the bundled datasets.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial, reduce
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType

from kar.contracts.config_files import load_yaml
from kar.contracts.errors import DataError
from kar.contracts.paths import is_uri
from spark_jobs.datasets.base import MIN_TIMESTAMP, RawTables
from spark_jobs.fields import REASON, FieldSpec, add_reason, apply_field_specs
from spark_jobs.records import META_COLUMNS, TextFormat, read_records

FORMATS = ("csv", "parquet", "json")
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "json"}
# Types an attribute can be cast to; "auto" keeps a typed source's type (parquet) and text as text.
ATTRIBUTE_TYPES = ("auto", "string", "int", "bigint", "double", "float", "boolean", "array<string>")
# Epoch values at or above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
MILLIS_FROM = 100_000_000_000
_INT64_MAX = (1 << 63) - 1


# ---------------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where a table is: a local file or folder (absolute) or a URI, and its format."""

    location: str
    format: str

    @property
    def name(self) -> str:
        """The file or folder name, for messages and quarantine rows."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return not is_uri(self.location)


@dataclass(frozen=True, kw_only=True)
class LabelSpec:
    """How a row's 0/1 label is found: a 0/1 ``column``, or ``rating`` above ``positive_above``."""

    column: str | None = None
    rating: str | None = None
    positive_above: float | None = None
    rating_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.column is None) == (self.rating is None):
            raise DataError("interactions: give either `label: COLUMN` (0/1) or `rating:` with `positive_above:`")
        if self.rating is not None and self.positive_above is None:
            raise DataError(f"interactions: rating column {self.rating!r} needs `positive_above:` to make labels")


@dataclass(frozen=True, kw_only=True)
class InteractionsSpec:
    """The interaction log's columns."""

    source: Source
    user_id: str
    item_id: str
    timestamp: str
    label: LabelSpec
    timestamp_unit: str = "auto"

    @property
    def columns(self) -> tuple[str, ...]:
        rating = (self.label.rating,) if self.label.rating else ()
        label = (self.label.column,) if self.label.column else ()
        return _unique((self.user_id, self.item_id, self.timestamp, *label, *rating))


@dataclass(frozen=True, kw_only=True)
class ProfileSpec:
    """A user or item table: its id column and the attributes to copy (name → type)."""

    source: Source
    id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    prompt_fields: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return _unique((self.id, *self.attributes))


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """A team's tables mapped to kar-feast's canonical ones (see the module docstring for the YAML)."""

    name: str
    path: Path
    interactions: InteractionsSpec
    users: ProfileSpec | None = None
    items: ProfileSpec | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TableSpec:
        """Read and check a spec file; relative table paths are resolved against its folder.

        Raises:
            DataError: One sentence naming the file and the key that is wrong.
        """
        spec_path = Path(os.path.abspath(path))
        if not spec_path.is_file():
            raise DataError(f"{spec_path}: spec file not found")
        raw = load_yaml(spec_path)
        try:
            return _parse_spec(raw, spec_path)
        except DataError as exc:
            raise DataError(f"{spec_path}: {exc}") from None

    def check(self) -> None:
        """Before Spark starts: every local table exists and has the columns the spec names.

        Raises:
            DataError: A missing file or column, naming the table, the column and the columns it has.
        """
        tables = [("interactions", self.interactions.source, self.interactions.columns)]
        tables += [(role, spec.source, spec.columns) for role, spec in (("users", self.users), ("items", self.items))
                   if spec is not None]  # fmt: skip
        for role, source, columns in tables:
            if not source.is_local:
                continue  # checked when Spark reads it
            found = local_columns(source)
            missing = [c for c in columns if c not in found]
            if missing:
                raise DataError(
                    f"{self.path}: {role} table {source.location} has no column {missing[0]!r} "
                    f"(it has: {', '.join(found)})"
                )

    @property
    def user_attributes(self) -> tuple[str, ...]:
        return tuple(self.users.attributes) if self.users else ()

    @property
    def item_attributes(self) -> tuple[str, ...]:
        return tuple(self.items.attributes) if self.items else ()

    def prompt_fields(self) -> dict[str, list[str]]:
        """The attributes prompts may use, per role (users: only those listed; items: listed, else all)."""
        users = list(self.users.prompt_fields) if self.users else []
        items = list(self.items.prompt_fields or self.items.attributes) if self.items else []
        return {"user": users, "item": items}


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _mapping(raw: Any, where: str, *, allowed: Sequence[str], required: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: expected a mapping, got {raw!r}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(allowed)})")
    missing = [k for k in required if k not in raw]
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r}")
    return raw


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
        raise DataError(f"{where}.{key}: expected a column name, got {value!r}")
    return str(value)


def _source(raw: Mapping[str, Any], where: str, folder: Path) -> Source:
    location = _text(raw, "path", where)
    if not is_uri(location):
        location = os.path.normpath(os.path.join(folder, os.path.expanduser(location)))
    fmt = raw.get("format")
    if fmt is None:
        fmt = _guess_format(location)
    if fmt not in FORMATS:
        raise DataError(f"{where}.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    source = Source(location=location, format=fmt)
    if source.is_local and not Path(location).exists():
        raise DataError(f"{where}.path: {location} not found")
    return source


def _guess_format(location: str) -> str:
    path = Path(location.split("://", 1)[-1])
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for candidate in files:
        suffixes = [s for s in candidate.suffixes if s not in (".gz", ".bz2")]
        if suffixes and suffixes[-1].lower() in _SUFFIXES:
            return _SUFFIXES[suffixes[-1].lower()]
    raise DataError(f"{location}: cannot tell the format from the file name; add `format: csv|parquet|json`")


def _attributes(raw: Any, where: str, *, id_column: str) -> dict[str, str]:
    if raw is None:
        return {}
    items = {str(name): "auto" for name in raw} if isinstance(raw, list) else raw
    if not isinstance(items, Mapping):
        raise DataError(f"{where}: expected a list of columns or a mapping of column to type, got {raw!r}")
    attributes = {}
    for name, dtype in items.items():
        if dtype not in ATTRIBUTE_TYPES:
            raise DataError(f"{where}.{name}: type {dtype!r} is not one of {', '.join(ATTRIBUTE_TYPES)}")
        if name == id_column:
            raise DataError(f"{where}: {name!r} is the id column; ids are never attributes")
        attributes[str(name)] = str(dtype)
    return attributes


def _profile(raw: Any, where: str, folder: Path) -> ProfileSpec:
    raw = _mapping(raw, where, allowed=("path", "format", "id", "attributes", "prompt_fields"), required=("path", "id"))
    id_column = _text(raw, "id", where)
    attributes = _attributes(raw.get("attributes"), f"{where}.attributes", id_column=id_column)
    prompt_fields = tuple(str(name) for name in raw.get("prompt_fields") or ())
    unknown = [name for name in prompt_fields if name not in attributes]
    if unknown:
        raise DataError(f"{where}.prompt_fields: {unknown[0]!r} is not one of the attributes ({', '.join(attributes)})")
    return ProfileSpec(source=_source(raw, where, folder), id=id_column, attributes=attributes,
                       prompt_fields=prompt_fields)  # fmt: skip


def _label(raw: Mapping[str, Any]) -> LabelSpec:
    rating_range = raw.get("rating_range")
    if rating_range is not None:
        if not (isinstance(rating_range, list) and len(rating_range) == 2):
            raise DataError(f"interactions.rating_range: expected [low, high], got {rating_range!r}")
        rating_range = (float(rating_range[0]), float(rating_range[1]))
    above = raw.get("positive_above")
    return LabelSpec(
        column=_text(raw, "label", "interactions") if "label" in raw else None,
        rating=_text(raw, "rating", "interactions") if "rating" in raw else None,
        positive_above=None if above is None else float(above),
        rating_range=rating_range,
    )


def _parse_spec(raw: Any, spec_path: Path) -> TableSpec:
    folder = spec_path.parent
    raw = _mapping(raw, "spec", allowed=("name", "interactions", "users", "items"), required=("interactions",))
    inter = _mapping(
        raw["interactions"],
        "interactions",
        allowed=(
            "path",
            "format",
            "user_id",
            "item_id",
            "timestamp",
            "timestamp_unit",
            "label",
            "rating",
            "positive_above",
            "rating_range",
        ),
        required=("path", "user_id", "item_id", "timestamp"),
    )
    unit = inter.get("timestamp_unit", "auto")
    if unit not in ("auto", "s", "ms", "iso"):
        raise DataError(f"interactions.timestamp_unit: {unit!r} is not one of auto, s, ms, iso")
    interactions = InteractionsSpec(
        source=_source(inter, "interactions", folder),
        user_id=_text(inter, "user_id", "interactions"),
        item_id=_text(inter, "item_id", "interactions"),
        timestamp=_text(inter, "timestamp", "interactions"),
        timestamp_unit=unit,
        label=_label(inter),
    )
    name = str(raw.get("name") or spec_path.stem)
    users = _profile(raw["users"], "users", folder) if raw.get("users") is not None else None
    items = _profile(raw["items"], "items", folder) if raw.get("items") is not None else None
    return TableSpec(name=name, path=spec_path, interactions=interactions, users=users, items=items)


def local_columns(source: Source) -> list[str]:
    """The column names of a local table, read from its header, schema or first JSON line (no Spark)."""
    files = _files(source)
    if not files:
        raise DataError(f"{source.location}: no {source.format} file in this folder")
    first = files[0]
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(first).names)
    with _open_text(first) as handle:
        line = next((line for line in handle if line.strip()), "")
    if source.format == "csv":
        return next(csv.reader([line]), [])
    try:
        return list(json.loads(line)) if line else []
    except json.JSONDecodeError as exc:
        raise DataError(f"{first} line 1: not JSON ({exc.msg}); is it JSON lines?") from None


def _files(source: Source) -> list[Path]:
    path = Path(source.location)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        import gzip

        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")  # type: ignore[return-value]
    return path.open(encoding="utf-8")  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- reading


def _csv_line(line: str, *, positions: Sequence[int], width: int) -> list[str | None]:
    row = next(csv.reader([line]))
    if len(row) != width:
        raise ValueError(f"expected {width} comma-separated fields (as the header), found {len(row)}")
    return [row[i] for i in positions]


def read_table(spark: SparkSession, source: Source, columns: Sequence[str]) -> DataFrame:
    """The ``columns`` of a table plus ``_file, _line, _raw, _error`` (CSV/JSON as text, parquet typed).

    Raises:
        DataError: A missing file, folder or column.
    """
    if source.format == "parquet":
        df = _read_spark(spark, source)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{source.location}: no column {missing[0]!r} (it has: {', '.join(df.columns)})")
        # Parquet has no lines: the row number within its file says where a rejected row is.
        return df.select(
            F.col("_metadata.file_name").alias("_file"),
            (F.col("_metadata.row_index") + 1).alias("_line"),
            F.to_json(F.struct(*[F.col(c) for c in columns])).alias("_raw"),
            F.lit(None).cast("string").alias("_error"),
            *[F.col(c) for c in columns],
        )
    parts = []
    for path in _text_files(spark, source):
        if source.format == "csv":
            header = local_columns(Source(location=str(path), format="csv")) if source.is_local else columns
            positions = [header.index(c) for c in columns]
            parse = partial(_csv_line, positions=positions, width=len(header))
            df = read_records(spark, path, TextFormat(columns=tuple(columns), sep=","), parser=parse)
            parts.append(df.where(F.col("_line") > 1))  # the header
        else:
            parts.append(read_records(spark, path, TextFormat(columns=tuple(columns))))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _read_spark(spark: SparkSession, source: Source) -> DataFrame:
    from pyspark.errors import AnalysisException

    try:
        return spark.read.parquet(source.location)
    except AnalysisException as exc:
        raise DataError(f"{source.location}: cannot read as parquet ({str(exc).splitlines()[0]})") from None


def _text_files(spark: SparkSession, source: Source) -> list[Any]:
    if source.is_local:
        return _files(source)
    return [source.location]  # a URI: Spark lists it


# ---------------------------------------------------------------------------------------------------- typing


def stable_id(raw: Column) -> Column:
    """A stable int64 id ≥ 1 for a raw id of any type: the same in every run and on every machine."""
    return (F.pmod(F.xxhash64(raw.cast("string")), F.lit(_INT64_MAX)) + F.lit(1)).cast("bigint")


def _epoch_seconds(value: Column, unit: str, *, native: str) -> Column:
    if native == "timestamp":
        return F.unix_timestamp(value).cast("bigint")
    text = F.trim(value.cast("string"))
    number = text.try_cast("double")
    if unit == "iso":
        number = F.lit(None).cast("double")
    seconds = number if unit == "s" else number / 1000 if unit == "ms" else (
        F.when(number >= MILLIS_FROM, number / 1000).otherwise(number))  # fmt: skip
    iso = F.unix_timestamp(F.try_to_timestamp(text)).cast("double") if unit in ("auto", "iso") else None
    parsed = seconds if iso is None else F.coalesce(seconds, iso)
    return F.floor(parsed).cast("bigint")


def _flag(value: Column) -> Column:
    """0/1 from 0/1, true/false, yes/no (any case); null for anything else."""
    text = F.lower(F.trim(value.cast("string")))
    return (
        F.when(text.isin("1", "1.0", "true", "yes", "y"), F.lit(1))
        .when(text.isin("0", "0.0", "false", "no", "n"), F.lit(0))
        .cast("int")
    )


def _typed(df: DataFrame, name: str, dtype: str) -> tuple[Column, Column | None]:
    """The attribute cast to ``dtype`` and, where a present value does not cast, a reject reason."""
    column, native = F.col(name), dict(df.dtypes)[name]
    if dtype == "auto":
        return column, None
    if dtype == "array<string>":
        if native.startswith("array"):
            return column.cast("array<string>"), None
        text = column.cast("string")
        parsed = F.when(F.trim(text).startswith("["), F.from_json(text, ArrayType(StringType()))).otherwise(
            F.split(text, r"\|")
        )
        return parsed, None
    typed = column.cast("string").try_cast(dtype) if native == "string" else column.try_cast(dtype)
    bad = column.isNotNull() & (F.trim(column.cast("string")) != "") & typed.isNull()
    reason = F.when(bad, F.concat(F.lit(f"{name}: not a valid {dtype} ("), column.cast("string"), F.lit(")")))
    return typed, reason


def _profile_table(spark: SparkSession, spec: ProfileSpec, *, key: str) -> tuple[DataFrame, str]:
    """``<key>, raw_<key>, attributes…`` with reasons and meta columns; also the raw id's Spark type."""
    df = read_table(spark, spec.source, spec.columns)
    raw_type = dict(df.dtypes)[spec.id]
    id_text = F.trim(F.col(spec.id).cast("string"))
    df = df.withColumn(REASON, F.col("_error"))
    df = add_reason(df, id_text.isNull() | (id_text == ""), f"{spec.id}: missing")
    columns: dict[str, Column] = {}
    for name, dtype in spec.attributes.items():
        typed, reason = _typed(df, name, dtype)
        columns[name] = typed
        if reason is not None:
            df = add_reason(df, reason.isNotNull(), reason)
    out = df.select(
        stable_id(id_text).alias(key), id_text.alias(f"raw_{key}"), *[c.alias(n) for n, c in columns.items()],
        REASON, *META_COLUMNS,
    )  # fmt: skip
    return out, raw_type


def _interactions(spark: SparkSession, spec: InteractionsSpec, *, max_timestamp: int) -> tuple[DataFrame, str, str]:
    df = read_table(spark, spec.source, spec.columns)
    natives = dict(df.dtypes)
    df = df.withColumn(REASON, F.col("_error"))
    user_text, item_text = (F.trim(F.col(c).cast("string")) for c in (spec.user_id, spec.item_id))
    df = add_reason(df, user_text.isNull() | (user_text == ""), f"{spec.user_id}: missing")
    df = add_reason(df, item_text.isNull() | (item_text == ""), f"{spec.item_id}: missing")
    seconds = _epoch_seconds(F.col(spec.timestamp), spec.timestamp_unit, native=natives[spec.timestamp])
    ts_text = F.col(spec.timestamp).cast("string")
    df = df.withColumn("_seconds", seconds)
    df = add_reason(df, F.col(spec.timestamp).isNull(), f"{spec.timestamp}: missing")
    df = add_reason(
        df,
        F.col(spec.timestamp).isNotNull() & F.col("_seconds").isNull(),
        F.concat(F.lit(f"{spec.timestamp}: not epoch seconds/milliseconds or ISO-8601 ("), ts_text, F.lit(")")),
    )
    df = add_reason(
        df,
        (F.col("_seconds") < MIN_TIMESTAMP) | (F.col("_seconds") > max_timestamp),
        F.concat(F.lit(f"{spec.timestamp}: "), ts_text, F.lit(" is not a time between 1970 and now")),
    )
    label = spec.label
    if label.column is not None:
        flag = _flag(F.col(label.column))
        df = df.withColumns({"label": flag, "rating": F.lit(None).cast("double")})
        bad = F.concat(F.lit(f"{label.column}: not 0/1 ("), F.coalesce(F.col(label.column).cast("string"), F.lit("")),
                       F.lit(")"))  # fmt: skip
        df = add_reason(df, F.col("label").isNull(), bad)
    else:
        df = apply_field_specs(
            df.withColumn("rating", F.col(label.rating)),
            [FieldSpec(name="rating", dtype="double",
                       min_value=label.rating_range[0] if label.rating_range else None,
                       max_value=label.rating_range[1] if label.rating_range else None)],
        )  # fmt: skip
        df = df.withColumn("label", (F.col("rating") > F.lit(label.positive_above)).cast("int"))
    out = df.select(
        stable_id(user_text).alias("user_id"), stable_id(item_text).alias("item_id"), "rating", "label",
        F.col("_seconds").alias("timestamp"), user_text.alias("raw_user_id"), item_text.alias("raw_item_id"),
        REASON, *META_COLUMNS,
    )  # fmt: skip
    return out, natives[spec.user_id], natives[spec.item_id]


def _ids_only(interactions: DataFrame, key: str, table: str) -> DataFrame:
    """A profile table of just the ids the (valid) interactions name, for a role the spec gives no table for."""
    return (
        interactions.where(F.col(REASON).isNull())
        .select(key, f"raw_{key}")
        .dropDuplicates([key])
        .select(
            key, f"raw_{key}", F.lit(None).cast("string").alias(REASON), F.lit(table).alias("_file"),
            F.lit(0).cast("bigint").alias("_line"), F.col(f"raw_{key}").alias("_raw"),
            F.lit(None).cast("string").alias("_error"),
        )
    )  # fmt: skip


def _check_collisions(profiles: DataFrame, key: str, where: str) -> None:
    """Two raw ids with one hashed id would merge two entities: say which, and stop."""
    clash = (
        profiles.where(F.col(REASON).isNull())
        .groupBy(key)
        .agg(F.countDistinct(f"raw_{key}").alias("n"), F.collect_set(f"raw_{key}").alias("raw"))
        .where(F.col("n") > 1)
        .first()
    )
    if clash is not None:
        raise DataError(f"{where}: ids {clash['raw'][0]!r} and {clash['raw'][1]!r} hash to the same int64 id")


def _id_type(native: str) -> str:
    return "int64" if native in ("bigint", "int", "smallint", "tinyint") else "string"


def batch_source(path: str | Path, spec: InteractionsSpec) -> Source:
    """A batch of the spec's interactions table at ``path`` (a file, folder or URI; same columns, format guessed
    from the name unless it is the spec's own)."""
    location = str(path)
    if not is_uri(location):
        location = os.path.abspath(location)
        if not Path(location).exists():
            raise DataError(f"{location}: interactions batch not found")
    try:
        fmt = _guess_format(location)
    except DataError:
        fmt = spec.source.format
    return Source(location=location, format=fmt)


def _batches(
    spark: SparkSession, spec: InteractionsSpec, batches: Sequence[str | Path], *, max_timestamp: int
) -> tuple[DataFrame, str, str]:
    """The interactions of ``batches`` (default: the spec's own table) as one frame, with the first's id types."""
    specs = [dataclasses.replace(spec, source=batch_source(b, spec)) for b in batches] if batches else [spec]
    read = [_interactions(spark, s, max_timestamp=max_timestamp) for s in specs]
    return reduce(DataFrame.unionByName, [r[0] for r in read]), read[0][1], read[0][2]


def load_table(
    spark: SparkSession, *, spec: TableSpec, max_timestamp: int, interactions: Sequence[str | Path] = ()
) -> RawTables:
    """Read a team's tables as typed raw tables (ids hashed to stable int64, mapping kept for ``id_maps/``).

    ``interactions``: batches of the interactions table (same columns) read instead of the spec's ``path``.
    """
    interactions, user_native, item_native = _batches(
        spark, spec.interactions, interactions, max_timestamp=max_timestamp
    )
    interactions = interactions.persist()
    profiles = {}
    id_types = {"user": _id_type(user_native), "item": _id_type(item_native)}
    for role, key, table in (("user", "user_id", spec.users), ("item", "item_id", spec.items)):
        if table is None:
            profiles[role] = _ids_only(interactions, key, spec.interactions.source.name)
        else:
            profiles[role], native = _profile_table(spark, table, key=key)
            id_types[role] = _id_type(native)
        profiles[role] = profiles[role].persist()
        _check_collisions(profiles[role], key, f"{role} ids")
    return RawTables(
        users=profiles["user"],
        items=profiles["item"],
        interactions=interactions,
        user_columns=spec.user_attributes,
        item_columns=spec.item_attributes,
        label_given=True,
        rating_range=spec.interactions.label.rating_range,
        catalogue_rules=False,
        notes={"spec": str(spec.path), "name": spec.name},
        id_maps={
            "users": profiles["user"]
            .where(F.col(REASON).isNull())
            .select(F.col("raw_user_id").alias("raw_id"), "user_id"),
            "items": profiles["item"]
            .where(F.col(REASON).isNull())
            .select(F.col("raw_item_id").alias("raw_id"), "item_id"),
        },
        id_types=id_types,
        prompt_fields=spec.prompt_fields(),
    )


__all__ = ["TableSpec", "load_table", "local_columns", "read_table", "stable_id"]
