"""Read raw text files into Spark with the file name and line number kept on every row.

Keeping ``_file``/``_line`` lets every rejected row, and every one-line error, point at the exact place a user
can open in an editor. Lines are read as bytes and decoded in Python with the dataset's declared encoding, so a
wrong encoding is reported per line instead of silently becoming replacement characters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from kar.contracts.errors import DataError
from kar.contracts.paths import is_uri

# A parser turns one decoded line into string fields, or raises ValueError with a reason.
LineParser = Callable[[str], Sequence[str | None]]

META_COLUMNS = ("_file", "_line", "_raw", "_error")


@dataclass(frozen=True, kw_only=True)
class TextFormat:
    """How to split one line of a delimited or JSON-lines file into named string fields.

    Attributes:
        columns: Field names in file order (delimited) or keys to extract (JSON lines).
        sep: Field separator for delimited files; None means JSON lines.
        encoding: The file's text encoding.
    """

    columns: tuple[str, ...]
    sep: str | None = None
    encoding: str = "utf-8"

    @property
    def describe(self) -> str:
        if self.sep is None:
            return "JSON lines"
        return f"{len(self.columns)} fields separated by {self.sep!r} ({', '.join(self.columns)})"


def split_delimited(line: str, *, sep: str, n_fields: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n_fields:
        raise ValueError(f"expected {n_fields} fields separated by {sep!r}, found {len(parts)}")
    return parts


def _json_value(value: object) -> str | None:
    if value is None:
        return None
    # Lists/objects stay JSON so Spark can parse them with from_json; scalars become plain strings.
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def split_json(line: str, *, keys: Sequence[str]) -> list[str | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("a JSON line must be an object")
    return [_json_value(obj.get(key)) for key in keys]


def _decode_and_parse(
    indexed: tuple[bytes, int], *, file: str, fmt: TextFormat, parse: LineParser
) -> tuple[str | None, ...]:
    raw_bytes, index = indexed
    line_no = index + 1
    empty: tuple[None, ...] = (None,) * len(fmt.columns)
    try:
        text = raw_bytes.decode(fmt.encoding)
    except UnicodeDecodeError as exc:
        reason = f"not valid {fmt.encoding} at byte {exc.start} (wrong encoding?)"
        return (file, line_no, raw_bytes.decode("latin-1"), reason, *empty)
    text = text.rstrip("\r")
    if "\x00" in text:
        return (file, line_no, text, f"contains NUL bytes (not {fmt.encoding} text?)", *empty)
    try:
        fields = parse(text)
    except ValueError as exc:
        return (file, line_no, text, str(exc), *empty)
    return (file, line_no, text, None, *fields)


def read_records(
    spark: SparkSession, path: Path | str, fmt: TextFormat, *, parser: LineParser | None = None
) -> DataFrame:
    """Read one text file (plain or compressed) into a DataFrame of string fields plus meta columns.

    Args:
        spark: The session.
        path: The file (a local path, or a URI Spark reads); ``.gz``/``.bz2`` are decompressed by Hadoop.
        fmt: Columns, separator and encoding.
        parser: Splits a decoded line into the fields of ``fmt.columns`` (default: by ``fmt.sep``, or JSON).

    Returns:
        Columns ``_file, _line, _raw, _error`` then one nullable string column per field. ``_error`` holds the
        reason a line could not be split (wrong field count, bad JSON, bad encoding); blank lines are dropped.

    Raises:
        DataError: The file does not exist.
    """
    local = isinstance(path, Path) or not is_uri(path)
    if local and not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    name = Path(path).name if local else str(path).rstrip("/").rsplit("/", 1)[-1]
    if parser is not None:
        parse: LineParser = parser
    elif fmt.sep is None:
        parse = partial(split_json, keys=fmt.columns)
    else:
        parse = partial(split_delimited, sep=fmt.sep, n_fields=len(fmt.columns))
    # The text source keeps each line's raw bytes (blank lines included, so indexes are line numbers); casting
    # to binary recovers them for decoding with the declared encoding. RDD.textFile would already have
    # replaced non-UTF-8 bytes with U+FFFD on the JVM side.
    lines = spark.read.text(str(path)).select(F.col("value").cast("binary").alias("raw"))
    rows = (
        lines.rdd.zipWithIndex()
        .map(lambda pair: (bytes(pair[0].raw), pair[1]))
        .filter(lambda pair: pair[0].strip() != b"")
        .map(partial(_decode_and_parse, file=name, fmt=fmt, parse=parse))
    )
    schema = StructType(
        [
            StructField("_file", StringType(), False),
            StructField("_line", LongType(), False),
            StructField("_raw", StringType(), True),
            StructField("_error", StringType(), True),
            *[StructField(name, StringType(), True) for name in fmt.columns],
        ]
    )
    return spark.createDataFrame(rows, schema)
