"""Where the jobs' tables live, and the driver's file work on them: one place, built on ``pyarrow.fs``.

A location is a local folder (``Path``) or a URI (:class:`Uri`: ``file://``, ``hdfs://``, ``s3a://``…). Spark
gets either as the text the user typed; pyarrow gets the filesystem and path :func:`filesystem` derives from
it. Every delete, rename, listing and small-file write of the Spark jobs' drivers goes through the functions
here, so a job writes to a cluster's storage the way it writes to a local folder.

URIs follow Hadoop's reading, the one Spark applies: the path is taken as written (``file:///tmp/with space``
is the folder ``/tmp/with space``; a ``%20`` is not decoded).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kar.contracts.paths import Location, is_uri

# Hadoop's names for S3 that pyarrow knows as s3.
_S3_SCHEMES = ("s3a", "s3n")


class Uri(str):
    """A URI that joins like a ``Path`` (``uri / "items"``) and is otherwise its text, verbatim.

    ``pathlib`` folds ``s3a://bucket`` into ``s3a:/bucket``; this keeps the ``//`` and only does path
    arithmetic on the part after the authority. File operations go through the module's functions.
    """

    __slots__ = ()

    def __truediv__(self, name: str | os.PathLike[str]) -> Uri:
        return Uri(f"{self.rstrip('/')}/{os.fspath(name).strip('/')}")

    @property
    def name(self) -> str:
        """The last path segment, as ``Path.name``."""
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Uri:
        """The URI one segment up, as ``Path.parent`` (the root stays the root)."""
        head, _, _ = self.rstrip("/").rpartition("/")
        return Uri(head) if not head.endswith("/") else Uri(self)

    def with_name(self, name: str) -> Uri:
        """The sibling called ``name``, as ``Path.with_name``."""
        return self.parent / name


Folder = Path | Uri
"""A resolved location: an absolute local path or a URI."""


def location(value: Location) -> Folder:
    """A location as the user gave it, resolved once: a local path made absolute, a URI kept verbatim."""
    text = os.fspath(value)
    if is_uri(text):
        return Uri(text)
    return Path(os.path.abspath(os.path.expanduser(text)))


def filesystem(where: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local folder or a URI."""
    text = os.fspath(where)
    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    parts = urlsplit(text)
    if parts.scheme == "file":
        return pafs.LocalFileSystem(), parts.path or "/"
    scheme = "s3" if parts.scheme in _S3_SCHEMES else parts.scheme
    # pyarrow parses strict RFC 3986 and decodes; quoting the raw path keeps Hadoop's literal reading.
    return pafs.FileSystem.from_uri(f"{scheme}://{parts.netloc}{quote(parts.path)}")


def local_folder(where: Location) -> Path | None:
    """The local path of a local folder or ``file://`` URI; None for storage only pyarrow and Spark reach."""
    fs, path = filesystem(where)
    return Path(path) if isinstance(fs, pafs.LocalFileSystem) else None


def _parent(path: str) -> str:
    return path.rstrip("/").rpartition("/")[0] or "/"


def _info(where: Location) -> pafs.FileInfo:
    fs, path = filesystem(where)
    return fs.get_file_info(path)


def exists(where: Location) -> bool:
    """True when a file or folder is there."""
    return _info(where).type != pafs.FileType.NotFound


def is_dir(where: Location) -> bool:
    """True when a folder is there."""
    return _info(where).type == pafs.FileType.Directory


def is_file(where: Location) -> bool:
    """True when a file is there."""
    return _info(where).type == pafs.FileType.File


def make_dirs(where: Location) -> None:
    """Create the folder and its parents; an existing folder is fine."""
    fs, path = filesystem(where)
    fs.create_dir(path, recursive=True)


def remove_tree(where: Location) -> None:
    """Delete a folder and everything in it, or a file; nothing there is fine."""
    fs, path = filesystem(where)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def move(source: Location, target: Location) -> None:
    """Rename ``source`` to ``target`` on one filesystem (``target`` must not exist)."""
    fs, source_path = filesystem(source)
    fs.move(source_path, filesystem(target)[1])


def replace_tree(source: Location, target: Location) -> None:
    """Put ``source`` where ``target`` is, deleting what was there."""
    remove_tree(target)
    move(source, target)


def list_names(where: Location) -> list[str]:
    """Names of the files and folders directly in a folder, sorted; an empty list when there is no folder."""
    fs, path = filesystem(where)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def read_text(where: Location) -> str:
    """A small text file's content (UTF-8)."""
    fs, path = filesystem(where)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def write_text(where: Location, text: str) -> None:
    """Write a small text file whole: a reader never sees half of it (written aside, then renamed)."""
    fs, path = filesystem(where)
    parent = _parent(path)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{path.rpartition('/')[2]}.{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as stream:
        stream.write(text.encode("utf-8"))
    fs.move(tmp, path)  # replaces an older file


def write_parquet(where: Location, table: pa.Table) -> None:
    """Write one parquet file, creating its folder."""
    fs, path = filesystem(where)
    fs.create_dir(_parent(path), recursive=True)
    pq.write_table(table, path, filesystem=fs)


def optional_location(value: Location | None) -> Folder | None:
    """:func:`location`, passing None through (an option left at its default)."""
    return None if value is None else location(value)


def parquet_dataset(where: Location, **options: Any) -> ds.Dataset:
    """The parquet files under a folder (or one file) as a pyarrow dataset, read through :func:`filesystem`."""
    fs, path = filesystem(where)
    return ds.dataset(path, filesystem=fs, format="parquet", **options)


def spark_path(root: Location, path: str) -> str:
    """A path pyarrow listed under ``root`` (no scheme: ``bucket/key``) in the form Spark reads, ``root``'s own
    text (scheme kept) followed by the rest."""
    _, fs_root = filesystem(root)
    text = os.fspath(root) if is_uri(root) else fs_root
    return text.rstrip("/") + path[len(fs_root.rstrip("/")) :]
