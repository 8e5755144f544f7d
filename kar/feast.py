"""Feast objects for LLM knowledge, for any team's repo: ordinary ``FeatureView``s and ``FeatureService``s.

A team keeps its own Feast repo, entities (any join key, string or int ids), registry and stores. It adds
knowledge with these factories, usually through the file ``kar feast init`` writes into its repo::

    from kar.feast import Dimensions, knowledge_service, knowledge_views
    from features import customer, product, customer_stats      # the team's own objects

    knowledge = knowledge_views(user=customer, item=product, data="/data/shop/prepared", key_types=...)
    user_knowledge, item_knowledge = knowledge.user, knowledge.item   # top-level names: Feast registers them
    kar_training = knowledge_service(name="kar_training", features=[customer_stats, *knowledge.raw])

Then Feast's own ``feast apply`` registers them. Each knowledge view reads a vector table of the prepared
folder (``vectors/<role>``: the encoder's vectors; ``adapted/<role>``: the adaptor's, pre-stored for serving),
holds one vector per entity and knowledge cutoff (``as_of`` is the event time, ``created_at`` breaks ties) and
a ``has_<view>`` flag, so a point-in-time join gives each sample the knowledge as of its time.

Configuration is passed as arguments, never read from the environment. The bundled ``feature_repo/`` is the
example repo written with these functions (:func:`write_example_repo`).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.errors import DataError
from kar.paths import Location, is_uri, local_path

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

KNOWLEDGE_TAG = ("kar.kind", "knowledge")
ROLE_TAG = "kar.role"  # user | item: which side of the ranking an entity is
STAGE_TAG = "kar.stage"  # raw (the encoder's vectors) | adapted (the adaptor's, what serving reads)
ROLES = ("user", "item")
# The vector tables key each vector twice: the int64 id and the dataset's own id as text.
KEY_COLUMNS = {"int64": "entity_id", "string": "entity_key"}
TABLES = {
    ("raw", "user"): "vectors/user",
    ("raw", "item"): "vectors/item",
    ("adapted", "user"): "adapted/user",
    ("adapted", "item"): "adapted/item",
}
GENERATED_MARK = "# Written by `kar feast init`"
KNOWLEDGE_FILE = "kar_knowledge.py"


@dataclass(frozen=True, kw_only=True)
class Dimensions:
    """Vector sizes the knowledge views declare (``vector_length``); a table of another size fails at apply
    and materialize, naming both.

    Attributes:
        knowledge: The encoder's output (all-MiniLM-L6-v2: 384).
        adapted: The adaptor's output (the experiment's ``knowledge.out_dim``).
    """

    knowledge: int = 384
    adapted: int = 32

    def __post_init__(self) -> None:
        for name in ("knowledge", "adapted"):
            if getattr(self, name) < 1:
                raise DataError(f"Dimensions.{name}: must be at least 1, got {getattr(self, name)}")

    def of(self, stage: str) -> int:
        return self.knowledge if stage == "raw" else self.adapted


@dataclass(frozen=True, kw_only=True)
class KnowledgeViews:
    """The four knowledge views of one prepared folder, for one pair of entities."""

    user: FeatureView
    item: FeatureView
    user_adapted: FeatureView
    item_adapted: FeatureView

    @property
    def raw(self) -> tuple[FeatureView, FeatureView]:
        """What a ranker trains on (the adaptor trains jointly with it)."""
        return self.user, self.item

    @property
    def adapted(self) -> tuple[FeatureView, FeatureView]:
        """What serving reads: pre-stored adapted vectors (no LLM, encoder or adaptor at request time)."""
        return self.user_adapted, self.item_adapted

    def all(self) -> list[FeatureView]:
        return [*self.raw, *self.adapted]


# ------------------------------------------------------------------------------------------------- factories


def key_type_of(entity: Entity) -> str | None:
    """``int64`` or ``string`` from an entity's ``value_type``; None when the entity does not declare one."""
    from feast import ValueType

    kinds = {ValueType.STRING: "string", ValueType.INT64: "int64", ValueType.INT32: "int64"}
    return kinds.get(entity.value_type)


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
    from feast import FileSource
    from feast.data_source import DataSource

    if isinstance(table, DataSource):
        return table
    path = str(table) if is_uri(table) else str(local_path(table))
    options = {"timestamp_field": "as_of", "created_timestamp_column": "created_at", "description": description}
    if offline_store == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=path, file_format="parquet", **options)
    if offline_store != "file":
        raise DataError(f"offline_store {offline_store!r}: kar.feast builds file or spark sources")
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
        names: View names by ``user``, ``item``, ``user_adapted``, ``item_adapted`` (default
            ``user_knowledge``, …): rankers read features by these names.

    Raises:
        DataError: As :func:`knowledge_view`, or no way to tell the key types.
    """
    dims = dims or Dimensions()
    key_types = dict(key_types or summary_key_types(data))
    names = {**default_view_names(), **(names or {})}
    root = str(data).rstrip("/") if is_uri(data) else str(local_path(data))
    views = {}
    for stage, suffix in (("raw", ""), ("adapted", "_adapted")):
        for role, entity in (("user", user), ("item", item)):
            views[f"{role}{suffix}"] = knowledge_view(
                name=names[f"{role}{suffix}"],
                entity=entity,
                source=f"{root}/{TABLES[stage, role]}",
                dim=dims.of(stage),
                role=role,
                stage=stage,
                key_type=key_types.get(role),
                offline_store=offline_store,
            )
    return KnowledgeViews(**views)


def default_view_names() -> dict[str, str]:
    return {
        "user": "user_knowledge",
        "item": "item_knowledge",
        "user_adapted": "user_knowledge_adapted",
        "item_adapted": "item_knowledge_adapted",
    }


def summary_key_types(data: Location) -> dict[str, str]:
    """``id_types`` of a local prepared folder's ``summary.json`` (int64 for folders prepared before they were
    recorded, whose ids were all int64)."""
    if is_uri(data):
        raise DataError(f"{data}: a URI; pass key_types={{'user': ..., 'item': ...}} (see its summary.json id_types)")
    summary = local_path(data) / "summary.json"
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
    from feast import FeatureView, Field, FileSource

    if isinstance(source, str | os.PathLike):
        path = str(source) if is_uri(source) else str(local_path(source))
        if offline_store == "spark":
            from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

            source = SparkSource(
                name=f"{name}_source", path=path, file_format="parquet", timestamp_field="event_timestamp"
            )
        else:
            source = FileSource(name=f"{name}_source", path=path, timestamp_field="event_timestamp")
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


# ------------------------------------------------------------------------------------------ the example repo


def example_objects(*, data: Location, dims: Dimensions | None = None, offline_store: str = "file") -> list[Any]:
    """The bundled example repo's objects for one prepared folder: entities ``user``/``item`` (int64 ids, the
    prepared tables' own), profile views from the tables' schema, knowledge views, and the services
    ``ranking_training`` (profiles + raw knowledge) and ``ranking_serving`` (profiles + adapted knowledge).
    """
    from feast import Entity, ValueType

    root = local_path(data)
    summary = _summary(root)
    dims = dims or vector_dims(root)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A user of the log")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A rankable item")
    profiles = summary.get("profiles") or _profile_types(root)
    user_profile = profile_view(
        name="user_profile", entity=user, source=root / "users", fields=profiles["users"], offline_store=offline_store
    )
    item_profile = profile_view(
        name="item_profile", entity=item, source=root / "items", fields=profiles["items"], offline_store=offline_store
    )
    # The example repo keys by kar's int64 ids, whatever the dataset's own ids are.
    knowledge = knowledge_views(
        user=user,
        item=item,
        data=root,
        dims=dims,
        key_types={"user": "int64", "item": "int64"},
        offline_store=offline_store,
    )
    training = knowledge_service(
        name="ranking_training",
        features=[user_profile, item_profile, *knowledge.raw],
        description="Profiles and raw knowledge: what a ranker trains on",
    )
    serving = knowledge_service(
        name="ranking_serving",
        features=[user_profile, item_profile, *knowledge.adapted],
        description="Profiles and pre-stored adapted knowledge: what serving reads",
    )
    return [user, item, user_profile, item_profile, *knowledge.all(), training, serving]


def _summary(root: Path) -> dict[str, Any]:
    """The folder's summary; hand-made folders (tests, imports) without one are read from their tables."""
    path = root / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# Folders prepared before summaries recorded profile types hold the bundled datasets' columns.
_BUNDLED_PROFILES = {
    "users": {"gender": "string", "age": "int", "occupation": "string", "zip_code": "string"},
    "items": {"title": "string", "genres": "array<string>", "year": "int", "description": "string", "brand": "string"},
}


def _profile_types(root: Path) -> dict[str, dict[str, str]]:
    import pyarrow.dataset as ds

    arrow = {
        "string": "string",
        "large_string": "string",
        "int32": "int",
        "int64": "bigint",
        "double": "double",
        "float": "float",
        "bool": "boolean",
        "list<element: string>": "array<string>",
        "list<item: string>": "array<string>",
    }
    out: dict[str, dict[str, str]] = {}
    for table, key in (("users", "user_id"), ("items", "item_id")):
        schema = ds.dataset(root / table, format="parquet").schema
        out[table] = {
            f.name: arrow.get(str(f.type), "string") for f in schema if f.name not in (key, "event_timestamp")
        }
    return out or _BUNDLED_PROFILES


# --------------------------------------------------------------------------------------------- the scaffold


@dataclass(frozen=True, kw_only=True)
class RepoEntity:
    """A top-level ``Entity`` of a team's repo, found without importing it.

    Attributes:
        variable: The name it is bound to.
        module: The module (dotted, relative to the repo root) that binds it.
        name: The entity's name.
        join_key: Its join key.
        key_type: ``string``/``int64`` when its ``value_type`` says so, else None.
    """

    variable: str
    module: str
    name: str
    join_key: str
    key_type: str | None


@dataclass(frozen=True, kw_only=True)
class RepoView:
    """A top-level ``FeatureView`` of a team's repo and the entity variables it is keyed by."""

    variable: str
    module: str
    entities: tuple[str, ...]


def scan_repo(repo: Location) -> tuple[list[RepoEntity], list[RepoView]]:
    """The entities and feature views a Feast repo binds to top-level names, read from its source (``ast``):
    nothing of the team's is imported or run. ``kar_knowledge.py`` itself is skipped."""
    root = local_path(repo, what="repo")
    entities: list[RepoEntity] = []
    views: list[RepoView] = []
    for path in sorted(root.rglob("*.py")):
        if path.name in (KNOWLEDGE_FILE, "__init__.py") or any(p.startswith(".") for p in path.parts):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError as exc:
            raise DataError(
                f"{path}:{exc.lineno}: not valid Python ({exc.msg}); Feast could not apply it either"
            ) from None
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            call = node.value
            if not isinstance(call, ast.Call):
                continue
            kind = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            keywords = {k.arg: k.value for k in call.keywords if k.arg}
            variable = node.targets[0].id
            if kind == "Entity":
                entities.append(_repo_entity(variable, module, keywords))
            elif kind in ("FeatureView", "BatchFeatureView") and isinstance(keywords.get("entities"), ast.List):
                names = tuple(e.id for e in keywords["entities"].elts if isinstance(e, ast.Name))
                views.append(RepoView(variable=variable, module=module, entities=names))
    return entities, views


def _repo_entity(variable: str, module: str, keywords: Mapping[str, ast.expr]) -> RepoEntity:
    name = _literal(keywords.get("name")) or variable
    keys = _literal(keywords.get("join_keys"))
    join_key = keys[0] if isinstance(keys, list) and keys else name
    value_type = keywords.get("value_type")
    type_name = value_type.attr if isinstance(value_type, ast.Attribute) else None
    key_type = {"STRING": "string", "INT64": "int64", "INT32": "int64"}.get(type_name or "")
    return RepoEntity(variable=variable, module=module, name=str(name), join_key=str(join_key), key_type=key_type)


def _literal(node: ast.expr | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def write_knowledge_file(
    *,
    repo: Location,
    user_entity: str,
    item_entity: str,
    data: Location,
    dims: Dimensions | None = None,
    with_views: Iterable[str] | None = None,
    offline_store: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``kar_knowledge.py`` into a team's Feast repo (Feast's ``DocEmbedder.generate_repo_file`` precedent).

    It imports the team's entities (and the views the services add knowledge to), and binds the knowledge
    views and two services, ``kar_training`` (the team's views + raw knowledge) and ``kar_serving`` (+ adapted
    knowledge), to top-level names so Feast's own ``feast apply`` registers them. Nothing else in the repo is
    touched: its registry, offline and online stores stay the team's.

    Args:
        repo: The team's Feast repo (holds ``feature_store.yaml``).
        user_entity: The name of the entity rankings are for.
        item_entity: The name of the entity that is ranked.
        data: The prepared folder whose knowledge the views read.
        dims: Vector sizes (default: read from the folder's vector tables, else 384 and 32).
        with_views: The team's views the services include (default: every view keyed by one of the two).
        offline_store: ``file`` or ``spark`` (default: the repo's ``feature_store.yaml``).
        force: Overwrite a ``kar_knowledge.py`` that ``kar feast init`` wrote before.

    Returns:
        The written file.

    Raises:
        DataError: No repo, an unknown entity or view, a join key type that differs from the data's, or a
            ``kar_knowledge.py`` that kar did not write.
    """
    root = local_path(repo, what="repo")
    if not (root / "feature_store.yaml").is_file():
        raise DataError(f"{root}: no feature_store.yaml; --repo must be a Feast repo")
    data_dir = local_path(data, what="data")
    key_types = summary_key_types(data_dir)
    entities, views = scan_repo(root)
    by_name = {e.name: e for e in entities}
    chosen = {}
    for role, wanted in (("user", user_entity), ("item", item_entity)):
        if wanted not in by_name:
            found = ", ".join(sorted(by_name)) or "none"
            raise DataError(f"{root}: no entity named {wanted!r} bound to a top-level name (entities: {found})")
        entity = by_name[wanted]
        if entity.key_type is not None and entity.key_type != key_types[role]:
            raise DataError(
                f"entity {wanted!r} joins on {entity.join_key} as {entity.key_type.upper()}, but {data_dir} keys "
                f"its {role}s by {key_types[role]} ids; the join key types must match"
            )
        chosen[role] = entity
    target = root / KNOWLEDGE_FILE
    if target.exists() and not (force and target.read_text().startswith(GENERATED_MARK)):
        why = "pass --force to rewrite it" if target.read_text().startswith(GENERATED_MARK) else "kar did not write it"
        raise DataError(f"{target} exists; {why}")
    included = _included_views(views, chosen, with_views)
    store_type = offline_store or _offline_store_type(root)
    target.write_text(
        _knowledge_source(chosen, included, data_dir, dims or vector_dims(data_dir), key_types, store_type)
    )
    return target


def _included_views(
    views: Sequence[RepoView], chosen: Mapping[str, RepoEntity], wanted: Iterable[str] | None
) -> list[RepoView]:
    variables = {e.variable for e in chosen.values()}
    if wanted is None:
        return [v for v in views if v.entities and set(v.entities) <= variables]
    by_variable = {v.variable: v for v in views}
    missing = [name for name in wanted if name not in by_variable]
    if missing:
        raise DataError(f"no feature view bound to {missing[0]!r} in the repo (views: {', '.join(by_variable)})")
    return [by_variable[name] for name in wanted]


def _offline_store_type(root: Path) -> str:
    import yaml

    config = yaml.safe_load((root / "feature_store.yaml").read_text()) or {}
    store = config.get("offline_store") or {}
    kind = store.get("type", "file") if isinstance(store, dict) else str(store)
    return "spark" if kind == "spark" else "file"


def vector_dims(data_dir: Path) -> Dimensions:
    """The sizes of the vectors a prepared folder holds (defaults where a table is still empty)."""
    import pyarrow.dataset as ds

    found = {}
    for stage, folder in (("knowledge", "vectors"), ("adapted", "adapted")):
        sizes: set[int] = set()
        for role in ROLES:
            path = data_dir / folder / role
            if path.is_dir():
                sizes |= set(ds.dataset(path, format="parquet").to_table(columns=["dim"])["dim"].to_pylist())
        if len(sizes) == 1:  # several sizes: the default, so the check at apply names the odd table
            found[stage] = int(sizes.pop())
    return Dimensions(**found)


def _knowledge_source(
    chosen: Mapping[str, RepoEntity],
    views: Sequence[RepoView],
    data_dir: Path,
    dims: Dimensions,
    key_types: Mapping[str, str],
    offline_store: str,
) -> str:
    imports: dict[str, list[str]] = {}
    for entity in chosen.values():
        imports.setdefault(entity.module, []).append(entity.variable)
    for view in views:
        imports.setdefault(view.module, []).append(view.variable)
    import_lines = "\n".join(f"from {m} import {', '.join(sorted(set(v)))}" for m, v in sorted(imports.items()))
    team_views = "".join(f"{v.variable}, " for v in views)
    return f'''{GENERATED_MARK} for {data_dir}; rerun it with --force after re-preparing.
"""LLM knowledge (kar-feast) for this repo's {chosen["user"].name!r} and {chosen["item"].name!r} entities.

Feast's own `feast apply` registers the names bound below. The views read the vector tables of {data_dir}
(`kar encode` fills vectors/, `kar adapt export` fills adapted/); kar_training adds raw knowledge to this
repo's views (what a ranker trains on), kar_serving adds the pre-stored adapted knowledge (what serving reads).
"""

from kar.feast import Dimensions, knowledge_service, knowledge_views

{import_lines}

DATA = {json.dumps(str(data_dir))}

knowledge = knowledge_views(
    user={chosen["user"].variable},
    item={chosen["item"].variable},
    data=DATA,
    dims=Dimensions(knowledge={dims.knowledge}, adapted={dims.adapted}),
    key_types={json.dumps(dict(key_types))},
    offline_store={json.dumps(offline_store)},
)
user_knowledge = knowledge.user
item_knowledge = knowledge.item
user_knowledge_adapted = knowledge.user_adapted
item_knowledge_adapted = knowledge.item_adapted

kar_training = knowledge_service(name="kar_training", features=[{team_views}*knowledge.raw])
kar_serving = knowledge_service(name="kar_serving", features=[{team_views}*knowledge.adapted])
'''


# Feast's Spark offline store, local by default; on a cluster set spark.master here or through spark-submit.
SPARK_OFFLINE_STORE = """  type: spark
  spark_conf:
    spark.master: "local[*]"
    spark.ui.enabled: "false"
    spark.sql.session.timeZone: "UTC"
    spark.sql.parquet.outputTimestampType: "TIMESTAMP_MICROS"
    spark.sql.execution.arrow.pyspark.enabled: "true"
    spark.driver.memory: "4g"
    spark.ui.showConsoleProgress: "false"
"""


def write_example_repo(
    *,
    repo: Location,
    data: Location,
    data_relative: bool = False,
    registry: str | None = None,
    online_path: str | None = None,
    offline_store: str = "file",
) -> Path:
    """Write the bundled example repo (``feature_store.yaml`` + ``example.py``) over a prepared folder.

    ``example.py`` calls :func:`example_objects` for the folder, so ``feast apply`` in the repo registers the
    same objects ``kar feast apply`` does. With ``data_relative`` the folder is written relative to the repo
    (the checked-in ``feature_repo/`` over ``runs/demo/prepared``).

    Returns:
        The repo folder.
    """
    root = local_path(repo, what="repo")
    data_dir = local_path(data, what="data")
    root.mkdir(parents=True, exist_ok=True)
    if data_relative:
        relative = os.path.relpath(data_dir, root)
        data_line = f"DATA = Path(__file__).resolve().parent / {json.dumps(relative)}"
    else:
        data_line = f"DATA = Path({json.dumps(str(data_dir))})"
    (
        root / "example.py"
    ).write_text(f'''"""kar-feast's example repo: entities user/item, profile views, knowledge views and two services.

Written by `kar.feast.write_example_repo`; the objects come from `kar.feast.example_objects`, the same call
`kar feast apply --data DATA` makes. Feast registers the top-level names below.
"""

from pathlib import Path

from kar.feast import example_objects

{data_line}

(
    user,
    item,
    user_profile,
    item_profile,
    user_knowledge,
    item_knowledge,
    user_knowledge_adapted,
    item_knowledge_adapted,
    ranking_training,
    ranking_serving,
) = example_objects(data=DATA, offline_store={json.dumps(offline_store)})
''')
    store = SPARK_OFFLINE_STORE if offline_store == "spark" else "  type: file\n"
    (root / "feature_store.yaml").write_text(
        "# kar-feast's example repo (kar.feast.write_example_repo); `feast apply` here registers example.py.\n"
        "project: kar\n"
        f"registry: {registry or 'data/registry.db'}\n"
        "provider: local\n"
        f"offline_store:\n{store}"
        f"online_store:\n  type: sqlite\n  path: {online_path or 'data/online_store.db'}\n"
        "entity_key_serialization_version: 3\n"
    )
    return root
