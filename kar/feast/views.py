"""Knowledge feature views for any entity: the factories of the plugin API (see ``kar.feast``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.contracts import tables
from kar.contracts.errors import DataError
from kar.contracts.paths import Location, is_uri, local_path
from kar.contracts.tables import SUMMARY_FILE

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

KNOWLEDGE_TAG = ("kar.kind", "knowledge")
ROLE_TAG = "kar.role"  # user | item: which side of the ranking an entity is
STAGE_TAG = "kar.stage"  # raw (the encoder's vectors) | adapted (the adaptor's, what serving reads)
ROLES = ("user", "item")
# The entity value types (``ValueType`` names) vectors can be keyed by, and the key type each one is.
KEY_TYPES = {"STRING": "string", "INT64": "int64", "INT32": "int64"}
# The vector tables key each vector twice: the int64 id and the dataset's own id as text.
KEY_COLUMNS = {"int64": "entity_id", "string": "entity_key"}
TABLES = {
    (stage, kind): f"{folder}/{kind}"
    for stage, folder in (("raw", tables.VECTORS_DIR), ("adapted", tables.ADAPTED_DIR))
    for kind in tables.ALL_KINDS
}


@dataclass(frozen=True, kw_only=True)
class Dimensions:
    """Vector sizes the knowledge views declare (``vector_length``); a table of another size fails at apply
    and materialize, naming both.

    Attributes:
        knowledge: The encoder's output (all-MiniLM-L6-v2: 384).
        adapted: The adaptor's output (the experiment's ``knowledge.out_dim``).
    """

    knowledge: int = tables.KNOWLEDGE_DIM
    adapted: int = tables.ADAPTED_DIM

    def __post_init__(self) -> None:
        for name in ("knowledge", "adapted"):
            if getattr(self, name) < 1:
                raise DataError(f"Dimensions.{name}: must be at least 1, got {getattr(self, name)}")

    def of(self, stage: str) -> int:
        return self.knowledge if stage == "raw" else self.adapted


@dataclass(frozen=True, kw_only=True)
class KnowledgeViews:
    """The knowledge views of one prepared folder, for one pair of entities: four always, and the optional
    kinds' (``kerec``) where the folder has their tables."""

    user: FeatureView
    item: FeatureView
    user_adapted: FeatureView
    item_adapted: FeatureView
    kerec: FeatureView | None = None
    kerec_adapted: FeatureView | None = None

    @property
    def raw(self) -> tuple[FeatureView, ...]:
        """What a ranker trains on (the adaptor trains jointly with it)."""
        return tuple(v for v in (self.user, self.item, self.kerec) if v is not None)

    @property
    def adapted(self) -> tuple[FeatureView, ...]:
        """What serving reads: pre-stored adapted vectors (no LLM, encoder or adaptor at request time)."""
        return tuple(v for v in (self.user_adapted, self.item_adapted, self.kerec_adapted) if v is not None)

    def all(self) -> list[FeatureView]:
        return [*self.raw, *self.adapted]


def key_type_of(entity: Entity) -> str | None:
    """``int64`` or ``string`` from an entity's ``value_type``; None when the entity does not declare one."""
    return KEY_TYPES.get(entity.value_type.name)


def vector_source(
    *, name: str, table: Location | DataSource, offline_store: str = "file", description: str = ""
) -> DataSource:
    """A vector table as a Feast source: ``as_of`` is the event time, the newest ``created_at`` wins a tie.

    Args:
        name: The source's name.
        table: A folder or URI of a vector table, or a ready ``DataSource`` (returned as it is).
        offline_store: ``file`` (a ``FileSource``) or ``spark`` (a ``SparkSource``, for Feast's Spark store).
        description: Shown by ``feast`` listings.
    """
    from feast.data_source import DataSource

    if isinstance(table, DataSource):
        return table
    if offline_store not in ("file", "spark"):
        raise DataError(f"offline_store {offline_store!r}: kar.feast builds file or spark sources")
    return _parquet_source(
        name=name,
        table=table,
        offline_store=offline_store,
        timestamp_field="as_of",
        created_timestamp_column="created_at",
        description=description,
    )


def _parquet_source(*, name: str, table: Location, offline_store: str, **options: Any) -> DataSource:
    """A parquet table as a ``SparkSource`` for Feast's Spark offline store, else a ``FileSource``."""
    from feast import FileSource

    path = str(table) if is_uri(table) else str(local_path(table))
    if offline_store == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=path, file_format="parquet", **options)
    return FileSource(name=name, path=path, **options)


def knowledge_view(
    *,
    name: str,
    entity: Entity,
    source: Location | DataSource,
    dim: int,
    role: str,
    stage: str = "raw",
    key_type: str | None = None,
    offline_store: str = "file",
    description: str | None = None,
) -> FeatureView:
    """A knowledge view over one vector table, keyed by ``entity``'s own join key.

    Args:
        name: The view's name; its vector feature has the same name, its flag is ``has_<name>``.
        entity: The team's entity (any join key name).
        source: The vector table (folder, URI or ``DataSource``).
        dim: The vectors' size (``vector_length``).
        role: ``user`` or ``item``: which side of the ranking the entity is.
        stage: ``raw`` (encoder output) or ``adapted`` (adaptor output).
        key_type: ``string`` or ``int64``: how the prepared data keys this role (its ``id_types``); by default
            the entity's ``value_type``.
        offline_store: ``file`` or ``spark``.
        description: Shown by ``feast`` listings.

    Raises:
        DataError: A bad role/stage, no key type at all, or an entity whose join key type differs from the
            vectors' key type (naming both).
    """
    from feast import FeatureView, Field
    from feast.types import Array, Bool, Float32

    if role not in ROLES or stage not in ("raw", "adapted"):
        raise DataError(f"knowledge_view {name}: role must be user or item and stage raw or adapted")
    declared = key_type_of(entity)
    key_type = key_type or declared
    if key_type not in KEY_COLUMNS:
        raise DataError(
            f"knowledge_view {name}: entity {entity.name!r} declares no value_type; pass key_type='string' or "
            "'int64' (how `kar prepare` keyed this dataset's ids)"
        )
    if declared is not None and declared != key_type:
        raise DataError(
            f"entity {entity.name!r} joins on {entity.join_key} as {declared.upper()}, but the knowledge in "
            f"{_where(source)} is keyed by {key_type} ids; declare the entity with "
            f"value_type=ValueType.{key_type.upper()} (or prepare the data with ids of that type)"
        )
    key = entity.join_key
    batch = vector_source(
        name=f"{name}_source", table=source, offline_store=offline_store, description=description or ""
    )
    if hasattr(batch, "field_mapping"):
        # The tables keep generic column names; the mapping gives each view its own feature names, so views of
        # users and items never collide in one training frame.
        batch.field_mapping = {KEY_COLUMNS[key_type]: key, "vector": name, "has_knowledge": f"has_{name}"}
    return FeatureView(
        name=name,
        entities=[entity],
        schema=[Field(name=name, dtype=Array(Float32), vector_length=dim), Field(name=f"has_{name}", dtype=Bool)],
        source=batch,
        online=True,
        description=description or f"LLM knowledge ({stage}) about each {entity.name}, as of each cutoff",
        tags={KNOWLEDGE_TAG[0]: KNOWLEDGE_TAG[1], ROLE_TAG: role, STAGE_TAG: stage},
    )


def _where(source: Location | DataSource) -> str:
    return str(getattr(source, "path", None) or source)


def knowledge_views(
    *,
    user: Entity,
    item: Entity,
    data: Location,
    dims: Dimensions | None = None,
    key_types: Mapping[str, str] | None = None,
    offline_store: str = "file",
    names: Mapping[str, str] | None = None,
    optional: Sequence[str] | None = None,
) -> KnowledgeViews:
    """The raw and adapted knowledge views of a prepared folder, keyed by the team's user and item entities.

    Args:
        user: The entity rankings are for (a customer, a member, …).
        item: The entity that is ranked (a product, an article, …).
        data: The prepared folder (``kar prepare --out``): its ``vectors/`` and ``adapted/`` tables.
        dims: Vector sizes (default 384 and 32).
        key_types: Per role, ``string`` or ``int64``: how the prepared data keys its ids; by default read from
            the folder's ``summary.json`` (``id_types``), which needs a local folder.
        offline_store: ``file`` or ``spark``.
        names: View names by ``user``, ``item``, ``user_adapted``, ``item_adapted``, ``kerec``,
            ``kerec_adapted`` (default ``user_knowledge``, …, ``kerec_knowledge``): rankers read features by
            these names.
        optional: Optional knowledge tables to add views for, as ``vectors/kerec`` or ``adapted/kerec``
            (:func:`optional_tables`). By default those a local folder holds, so a folder without LLM-KERec
            knowledge gets exactly the four views; a URI folder gets none unless named.

    Raises:
        DataError: As :func:`knowledge_view`, or no way to tell the key types.
    """
    dims = dims or Dimensions()
    key_types = dict(key_types or summary_key_types(data))
    names = {**default_view_names(), **(names or {})}
    root = str(data).rstrip("/") if is_uri(data) else str(local_path(data))
    present = set(optional_tables(data) if optional is None else optional)
    views = {}
    for stage, suffix in (("raw", ""), ("adapted", "_adapted")):
        for kind in tables.ALL_KINDS:
            if kind in tables.OPTIONAL_KINDS and TABLES[stage, kind] not in present:
                continue
            role = tables.ENTITY_OF[kind]
            views[f"{kind}{suffix}"] = knowledge_view(
                name=names[f"{kind}{suffix}"],
                entity=user if role == "user" else item,
                source=f"{root}/{TABLES[stage, kind]}",
                dim=dims.of(stage),
                role=role,
                stage=stage,
                key_type=key_types.get(role),
                offline_store=offline_store,
            )
    return KnowledgeViews(**views)


def optional_tables(data: Location) -> list[str]:
    """The optional kinds' vector tables (``vectors/kerec``, ``adapted/kerec``) a local folder holds (a folder
    with parquet files); none for a URI, which cannot be listed cheaply."""
    if is_uri(data):
        return []
    root = local_path(data)
    return [
        TABLES[stage, kind]
        for stage in ("raw", "adapted")
        for kind in tables.OPTIONAL_KINDS
        if (root / TABLES[stage, kind]).is_dir() and any((root / TABLES[stage, kind]).glob("*.parquet"))
    ]


def default_view_names() -> dict[str, str]:
    return {
        "user": "user_knowledge",
        "item": "item_knowledge",
        "user_adapted": "user_knowledge_adapted",
        "item_adapted": "item_knowledge_adapted",
        # Named for the kind, not the entity: the flag is then has_kerec_knowledge, like has_<kind>_knowledge.
        "kerec": "kerec_knowledge",
        "kerec_adapted": "kerec_knowledge_adapted",
    }


def summary_key_types(data: Location) -> dict[str, str]:
    """``id_types`` of a local prepared folder's ``summary.json`` (int64 for folders prepared before they were
    recorded, whose ids were all int64)."""
    if is_uri(data):
        raise DataError(f"{data}: a URI; pass key_types={{'user': ..., 'item': ...}} (see its summary.json id_types)")
    summary = local_path(data) / SUMMARY_FILE
    if not summary.is_file():
        raise DataError(f"{summary.parent}: no summary.json; run `kar prepare --out {summary.parent}` first")
    return dict(json.loads(summary.read_text()).get("id_types") or {"user": "int64", "item": "int64"})


def knowledge_service(
    *, name: str, features: Sequence[Any], description: str | None = None, tags: Mapping[str, str] | None = None
) -> FeatureService:
    """A feature service of the team's own views plus knowledge views (``KnowledgeViews.raw`` to train,
    ``.adapted`` to serve)."""
    from feast import FeatureService

    return FeatureService(
        name=name,
        features=list(features),
        description=description or "The team's features plus LLM knowledge (kar-feast)",
        tags=dict(tags or {}),
    )


def profile_view(
    *, name: str, entity: Entity, source: Location | DataSource, fields: Mapping[str, str], offline_store: str = "file"
) -> FeatureView:
    """A profile table of a prepared folder (``users``/``items``) as a view; ``fields`` maps column → Spark type.

    Profiles are a static snapshot valid from the first logged event (``event_timestamp``), hence no TTL.
    """
    from feast import FeatureView, Field

    if isinstance(source, str | os.PathLike):
        source = _parquet_source(
            name=f"{name}_source", table=source, offline_store=offline_store, timestamp_field="event_timestamp"
        )
    schema = [Field(name=column, dtype=feast_type(dtype, column=column)) for column, dtype in fields.items()]
    return FeatureView(name=name, entities=[entity], schema=schema, source=source, online=True)


def feast_type(spark_type: str, *, column: str = "") -> Any:
    """The Feast type of a Spark SQL type string (``bigint``, ``array<string>``, …)."""
    from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String

    scalars = {
        "string": String,
        "int": Int32,
        "bigint": Int64,
        "smallint": Int32,
        "tinyint": Int32,
        "double": Float64,
        "float": Float32,
        "boolean": Bool,
    }
    if spark_type in scalars:
        return scalars[spark_type]
    if spark_type.startswith("array<") and spark_type[6:-1] in scalars:
        return Array(scalars[spark_type[6:-1]])
    raise DataError(f"column {column!r}: type {spark_type} has no Feast type kar-feast maps")


def vector_dims(data_dir: Path) -> Dimensions:
    """The sizes of the vectors a prepared folder holds (defaults where a table is still empty)."""
    import pyarrow.dataset as ds

    found = {}
    for stage, folder in (("knowledge", "vectors"), ("adapted", "adapted")):
        sizes: set[int] = set()
        for kind in tables.ALL_KINDS:
            path = data_dir / folder / kind
            if path.is_dir():
                sizes |= set(ds.dataset(path, format="parquet").to_table(columns=["dim"])["dim"].to_pylist())
        if len(sizes) == 1:  # several sizes: the default, so the check at apply names the odd table
            found[stage] = int(sizes.pop())
    return Dimensions(**found)
