"""Locations a user gives (``--out``, ``--data``, ``--repo``…), resolved once where they enter the library.

A relative path means "relative to where the user typed the command". Resolved later, by a library that
changed directory (Feast loading a repo) or that insists on absolute paths (great_expectations' stores), it
means something else or fails. So every CLI option and every public ``run_*``/store function resolves its
path arguments on entry, and nothing below them sees a path that depends on the current directory.

URIs (``s3a://bucket/prepared``, ``hdfs://…``, ``file:///…``) pass through untouched: ``pathlib`` would fold
their ``//`` into ``/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from kar.contracts.errors import DataError

# RFC 3986 scheme followed by "://"; a Windows drive letter ("C:\\") has no "//" and stays a path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Location = str | os.PathLike[str]
"""A local path (relative or absolute) or a URI, as a user typed it."""


def is_uri(location: Location) -> bool:
    """True for ``scheme://…`` (``file://`` included), False for a local path."""
    return bool(_URI.match(os.fspath(location)))


def resolve_location(location: Location) -> Path | str:
    """A local path made absolute against the current directory (``~`` expanded, ``..`` folded, symlinks kept);
    a URI returned unchanged, as a string."""
    text = os.fspath(location)
    if is_uri(text):
        return text
    return Path(os.path.abspath(os.path.expanduser(text)))


def local_path(location: Location, *, what: str | None = None) -> Path:
    """An absolute local path for code that reads and writes local files: a ``file://`` URI becomes its path.

    Args:
        location: A path or URI as the user gave it.
        what: What it is, named in the error (e.g. ``out``).

    Raises:
        DataError: Another scheme (``s3a://``…): this code writes with local file calls.
    """
    resolved = resolve_location(location)
    if isinstance(resolved, Path):
        return resolved
    parsed = urlparse(resolved)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        # Taken as written, as Hadoop (so Spark) reads it: the jobs' tables and this path must be one folder.
        return Path(parsed.path)
    named = f"{what} {resolved}" if what else resolved
    raise DataError(f"{named}: only local folders and file:// URIs are supported here")


def optional_local_path(location: Location | None, *, what: str | None = None) -> Path | None:
    """:func:`local_path`, passing None through (an option left at its default)."""
    return None if location is None else local_path(location, what=what)


def name_or_path(name_or_path: str) -> str:
    """A model given as a hub-style name or a folder: an existing folder is made absolute, a name kept as is.

    sentence-transformers and vLLM try a local folder first and fall back to a hub name, so the same rule
    decides here whether the string is a path.
    """
    if is_uri(name_or_path) or not Path(os.path.expanduser(name_or_path)).exists():
        return name_or_path
    return str(resolve_location(name_or_path))
