"""Benchmark folders assembled from links: a variant's prepared folder shares the tables it does not change."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def link_tables(folder: Path, tables: Mapping[str, Path]) -> None:
    """Link ``folder/<name>`` to each table folder of ``tables``; a name already in ``folder`` is left as it is.

    Args:
        folder: The folder to link into (created if missing).
        tables: Table folders by the name their link gets in ``folder``; each is linked by its resolved path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        link = folder / name
        if not link.exists():
            link.symlink_to(table.resolve(), target_is_directory=True)
