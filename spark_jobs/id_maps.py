"""A dataset's own ids beside kar-feast's int64 ids: ``id_maps/users`` and ``id_maps/items`` of a prepared folder.

Datasets with string ids (a team's ``C-0042``, Amazon's ``A2SUAM1J3GNN3B``) get int64 ids in ``kar prepare``; the
mapping is kept so ids can go back out (Feast views keyed by the team's join keys) and come back in (``kar serve``,
``kar feast online``) as the team's own. A folder without a map uses its int64 ids as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kar.contracts import storage, tables
from kar.contracts.errors import DataError
from kar.contracts.paths import Location
from kar.contracts.storage import Folder

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ID_MAPS_DIR = "id_maps"
TABLES = {"user": "users", "item": "items"}
KEYS = tables.ID_COLUMNS
UNKNOWN_ID = -1  # no entity has it: a raw id the map does not know scores as an unknown entity


def id_map_path(data_dir: Location, role: str) -> Folder:
    return storage.location(data_dir) / ID_MAPS_DIR / TABLES[role]


def raw_column(columns: Sequence[str], role: str) -> str:
    """The raw-id column of a map (``raw_id``, or a loader's own name such as Amazon's ``asin``)."""
    others = [c for c in columns if c != KEYS[role]]
    if len(others) != 1 or KEYS[role] not in columns:
        raise DataError(f"id map of {TABLES[role]}: expected {KEYS[role]} and one raw-id column, got {list(columns)}")
    return others[0]


@dataclass(frozen=True)
class IdMap:
    """Both directions of one role's mapping (in memory: one entry per entity).

    Attributes:
        role: ``user`` or ``item``.
        to_int: raw id (as text) → int64 id.
        to_raw: int64 id → raw id (as text).
    """

    role: str
    to_int: dict[str, int]
    to_raw: dict[int, str]

    @classmethod
    def load(cls, data_dir: Location, role: str) -> IdMap | None:
        """The map of ``role`` in a prepared folder, or None when its ids are the dataset's own."""
        path = id_map_path(data_dir, role)
        if not storage.is_dir(path):
            return None
        table = storage.parquet_dataset(path).to_table()
        raw = raw_column(table.column_names, role)
        raws = [str(v) for v in table[raw].to_pylist()]
        ids = table[KEYS[role]].to_pylist()
        return cls(role=role, to_int=dict(zip(raws, ids, strict=True)), to_raw=dict(zip(ids, raws, strict=True)))

    def ids(self, raw_ids: Iterable[object]) -> list[int]:
        """int64 ids of raw ids (:data:`UNKNOWN_ID` for one the map does not know)."""
        return [self.to_int.get(str(raw), UNKNOWN_ID) for raw in raw_ids]

    def raws(self, ids: Iterable[int]) -> list[str | None]:
        """Raw ids of int64 ids (None for one the map does not know)."""
        return [self.to_raw.get(int(i)) for i in ids]


def read_id_map(spark: SparkSession, data_dir: Location, role: str) -> DataFrame | None:
    """The map as a Spark DataFrame ``(entity_id, entity_key)``, or None when the folder has none."""
    from pyspark.sql import functions as F

    path = id_map_path(data_dir, role)
    if not storage.is_dir(path):
        return None
    df = spark.read.parquet(str(path))
    raw = raw_column(df.columns, role)
    return df.select(F.col(KEYS[role]).alias("entity_id"), F.col(raw).cast("string").alias("entity_key"))
