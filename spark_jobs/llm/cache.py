"""A content-addressed, append-only parquet cache of LLM answers that survives ``kill -9``.

Key: ``sha256(model, sampling params, prompt hash)``, so a changed prompt, model or parameter is a new
key and a rerun asks only for what it has not got. Writers (one per Spark task) buffer answers and
flush them as small parquet parts: each part is written under a ``_``-prefixed temporary name and then
renamed, and readers (pyarrow, Spark) skip ``_`` files, so a crash at any moment leaves only whole parts.
A crash loses at most the answers of one unflushed buffer; they are asked again on the rerun.

The root may be a local path or any URI pyarrow understands (``s3://…``, ``hdfs://…``), so Spark tasks on
a cluster share one cache.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kar.contracts.storage import filesystem

ANSWER_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("prompt_hash", pa.string()),
        ("model", pa.string()),
        ("params", pa.string()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("latency_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int64()),
        ("logprobs", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
PART_PREFIX = "part-"
TMP_PREFIX = "_tmp-"


class AnswerCache:
    """The answers of every prompt ever asked under a root folder.

    Args:
        root: Folder (or URI) of the cache; created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._fs, self._path = filesystem(root)

    @property
    def uri(self) -> str:
        """The root as Spark reads it (a plain local path or the original URI)."""
        return self._path if "://" not in self.root else self.root

    def parts(self) -> list[str]:
        """Paths of the finished parts (temporary files excluded)."""
        info = self._fs.get_file_info(pafs.FileSelector(self._path, allow_not_found=True))
        return sorted(f.path for f in info if f.is_file and Path(f.path).name.startswith(PART_PREFIX))

    def count_rows(self, parts: list[str] | None = None) -> int:
        """Rows in the given parts (all by default) from parquet footers, without reading data."""
        return sum(pq.ParquetFile(p, filesystem=self._fs).metadata.num_rows for p in parts or self.parts())

    def read(self, *, columns: list[str] | None = None) -> pa.Table:
        """Every answer row, one per key: a usable answer beats an error, then the newest wins."""
        parts = self.parts()
        if not parts:
            return ANSWER_SCHEMA.empty_table().select(columns or ANSWER_SCHEMA.names)
        table = ds.dataset(parts, schema=ANSWER_SCHEMA, filesystem=self._fs, format="parquet").to_table()
        return latest_per_key(table).select(columns or ANSWER_SCHEMA.names)

    def append(self, rows: list[Mapping[str, Any]]) -> str | None:
        """Write rows as one new part, atomically; returns its path (None for no rows)."""
        if not rows:
            return None
        table = pa.Table.from_pylist([dict(r) for r in rows], schema=ANSWER_SCHEMA)
        self._fs.create_dir(self._path, recursive=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        tmp, final = f"{self._path}/{TMP_PREFIX}{name}", f"{self._path}/{PART_PREFIX}{name}"
        pq.write_table(table, tmp, filesystem=self._fs)
        self._fs.move(tmp, final)
        return final

    @contextmanager
    def writer(self, *, flush_rows: int = 16, flush_seconds: float = 5.0) -> Iterator[CacheWriter]:
        """A buffered writer that flushes every ``flush_rows`` answers or ``flush_seconds``, and on exit."""
        writer = CacheWriter(self, flush_rows=flush_rows, flush_seconds=flush_seconds)
        try:
            yield writer
        finally:
            writer.flush()

    def compact(self) -> int:
        """Merge all parts into one (deduplicated) part and drop leftovers of crashed writers.

        The merged part is written before the old ones are deleted, so a crash in between leaves
        duplicates that ``read`` resolves, never a loss. Returns the number of parts removed.
        """
        parts = self.parts()
        if len(parts) <= 1:
            return 0
        self.append(self.read().to_pylist())
        for path in parts:
            self._fs.delete_file(path)
        info = self._fs.get_file_info(pafs.FileSelector(self._path, allow_not_found=True))
        for leftover in (f.path for f in info if Path(f.path).name.startswith(TMP_PREFIX)):
            self._fs.delete_file(leftover)
        return len(parts)


class CacheWriter:
    """Buffers answer rows and appends them to the cache in small atomic parts."""

    def __init__(self, cache: AnswerCache, *, flush_rows: int, flush_seconds: float) -> None:
        self._cache = cache
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._rows: list[Mapping[str, Any]] = []
        self._last_flush = time.monotonic()
        self.written = 0

    def add(self, row: Mapping[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._cache.append(self._rows)
        self.written += len(self._rows)
        self._rows = []
        self._last_flush = time.monotonic()


def latest_per_key(table: pa.Table) -> pa.Table:
    """One row per ``key``: rows with a usable status (not ``error``) first, then the newest."""
    if table.num_rows == 0:
        return table
    failed = pc.equal(table["status"], "error").cast(pa.int8())
    ranked = table.append_column("_failed", failed)
    ranked = ranked.sort_by([("key", "ascending"), ("_failed", "ascending"), ("created_at", "descending")])
    keys = ranked["key"].to_numpy(zero_copy_only=False)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return ranked.take(pa.array(first)).drop_columns(["_failed"])
