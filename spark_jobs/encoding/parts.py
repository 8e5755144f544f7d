"""An append-only parquet table written by many Spark tasks at once, safe against ``kill -9``.

Each writer adds whole parts: a part is written under a ``_``-prefixed temporary name and then renamed
(as in ``spark_jobs.llm.cache``), and readers (pyarrow, Spark, Feast) skip ``_`` files, so a crash leaves
only whole parts plus temporary leftovers that ``remove_leftovers`` deletes. A part's name starts with a
tag (the encoder model's) so whole generations of parts can be listed and dropped without reading them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kar.contracts.storage import filesystem
from spark_jobs.llm.cache import PART_PREFIX, TMP_PREFIX


class PartTable:
    """The parquet parts under one folder (or URI).

    Args:
        root: Folder or URI of the table; created on first write.
        schema: Arrow schema every part is written with.
    """

    def __init__(self, root: str | Path, *, schema: pa.Schema) -> None:
        self.root = str(root)
        self.schema = schema
        self._fs, self._path = filesystem(root)

    @property
    def uri(self) -> str:
        """The root as Spark reads it (a plain local path or the original URI)."""
        return self._path if "://" not in self.root else self.root

    def _files(self) -> list[pafs.FileInfo]:
        info = self._fs.get_file_info(pafs.FileSelector(self._path, allow_not_found=True))
        return [f for f in info if f.is_file]

    def parts(self, tag: str | None = None) -> list[str]:
        """Finished parts, all or only those written with ``tag``, sorted by path."""
        prefix = PART_PREFIX + (f"{tag}-" if tag is not None else "")
        return sorted(f.path for f in self._files() if Path(f.path).name.startswith(prefix))

    def count_rows(self, parts: Iterable[str]) -> int:
        """Rows in the given parts from their parquet footers, without reading data."""
        return sum(pq.ParquetFile(p, filesystem=self._fs).metadata.num_rows for p in parts)

    def append(self, table: pa.Table, *, tag: str) -> str:
        """Write ``table`` as one new part named after ``tag``, atomically; returns its path."""
        self._fs.create_dir(self._path, recursive=True)
        name = f"{tag}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        tmp, final = f"{self._path}/{TMP_PREFIX}{name}", f"{self._path}/{PART_PREFIX}{name}"
        pq.write_table(table.cast(self.schema), tmp, filesystem=self._fs)
        self._fs.move(tmp, final)
        return final

    def read(self, path: str, *, columns: list[str] | None = None) -> pa.Table:
        """One part (a path from ``parts`` or as Spark's ``input_file_name`` gives it), all or some columns."""
        return pq.read_table(self.local(path), filesystem=self._fs, schema=self.schema, columns=columns)

    def delete(self, paths: Iterable[str]) -> int:
        """Delete parts; returns how many were deleted (a part already gone counts as deleted by someone else)."""
        deleted = 0
        for path in paths:
            try:
                self._fs.delete_file(self.local(path))
                deleted += 1
            except FileNotFoundError:
                continue
        return deleted

    def compact(self, tag: str) -> int:
        """Rewrite ``tag``'s parts as one part (new part first, then the old ones go); returns parts merged.

        Call only when no writer is running. A crash between the two steps leaves rows twice, which readers
        resolve as one (same keys, same vectors) and the next compaction removes.
        """
        parts = self.parts(tag)
        if len(parts) < 2:
            return 0
        merged = pa.concat_tables(self.read(part) for part in parts)
        self.append(merged, tag=tag)
        return self.delete(parts)

    def replace(self, table: pa.Table, *, tag: str) -> str:
        """Make ``table`` the folder's only content: its part is written first, then every older file goes."""
        older = [f.path for f in self._files()]
        written = self.append(table, tag=tag)
        self.delete(p for p in older if p != written)
        return written

    def remove_leftovers(self) -> int:
        """Delete temporary files of crashed writers; call only when no writer is running."""
        return self.delete(f.path for f in self._files() if Path(f.path).name.startswith(TMP_PREFIX))

    def local(self, path: str) -> str:
        """A path as this table's filesystem names it (Spark reports local files as ``file:`` URIs)."""
        if not isinstance(self._fs, pafs.LocalFileSystem) or not path.startswith("file:"):
            return path
        return unquote(urlparse(path).path)
