"""Feast access for every stage, on a team's own repo or on the example repo of a prepared folder.

Two ways to point kar-feast at Feast:

* **The team's repo** (``repo=PATH``, ``--repo PATH``): its ``feature_store.yaml`` is used as it is, with its
  registry, offline and online stores. Knowledge views get there through ``kar feast init`` (``kar.feast``) and
  Feast's own ``feast apply``; kar-feast never replaces or deletes anything the repo owns.
* **The example repo** (no ``repo``): ``apply`` writes the bundled example repo for a prepared folder into
  ``DATA/feast/repo`` (registry and SQLite online store beside it, so datasets never share state) and registers
  ``kar.feast.example_objects`` for it. ``cd DATA/feast/repo && feast apply`` registers the same objects.

Either way, which entity is the user and which the item comes from the knowledge views' ``kar.role`` tags
(:func:`service_roles`), and a sample's ids become the entity's own join-key values through the folder's id
maps. Knowledge views (tagged ``kar.kind: knowledge``) get two guarantees Feast alone does not give: the
vectors' dimension must match the view's ``vector_length`` (checked at apply and materialize), and an entity
with no vector reads as zeros with ``has_<view> = False`` in training frames and online lookups alike.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kar.contracts import tables
from kar.contracts.errors import DataError, KarError
from kar.contracts.paths import Location, is_uri, local_path, optional_local_path
from kar.feast import (
    KNOWLEDGE_TAG,
    ROLE_TAG,
    TEAM_SERVING_SERVICE,
    TEAM_TRAINING_SERVICE,
    Dimensions,
    example_objects,
    feast_repo,
    key_type_of,
    write_example_repo,
)
from spark_jobs.encoding.schema import VECTOR_SCHEMA
from spark_jobs.id_maps import IdMap

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

TRAINING_SERVICE = "ranking_training"
SERVING_SERVICE = "ranking_serving"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FEAST_DIR = "feast"
PROFILES = ("spark",)  # the example repo's other offline store

# The vector tables under a prepared folder (``kar encode`` writes vectors/, ``kar adapt export`` adapted/).


def default_service(repo: Location | None, *, serving: bool = False) -> str:
    """The feature service read when none is named: the example repo's ``ranking_training``/``ranking_serving``,
    or in a team's repo the ``kar_training``/``kar_serving`` that ``kar feast init`` wrote."""
    if repo is None:
        return SERVING_SERVICE if serving else TRAINING_SERVICE
    return TEAM_SERVING_SERVICE if serving else TEAM_TRAINING_SERVICE


def feast_dir(data_dir: Location) -> Path:
    """Where the example repo of a prepared folder keeps its files, registry and online store."""
    return local_path(data_dir, what="data") / FEAST_DIR


def example_repo_dir(data_dir: Location, profile: str | None = None) -> Path:
    """The example repo of a prepared folder (one per offline-store profile: its sources differ)."""
    return feast_dir(data_dir) / (f"repo.{profile}" if profile else "repo")


def profile_path(repo: Path, profile: str | None = None) -> Path:
    """``feature_store.yaml``, or ``feature_store.<profile>.yaml`` for a named profile (e.g. ``spark``)."""
    path = repo / (f"feature_store.{profile}.yaml" if profile else "feature_store.yaml")
    if not path.is_file():
        known = sorted(p.name for p in repo.glob("feature_store*.yaml"))
        raise KarError(f"{path}: no such Feast profile (found: {', '.join(known) or 'none'})")
    return path


def _repo_for(data_dir: Path, repo: Path | None, profile: str | None) -> tuple[Path, Path]:
    """The repo folder and its yaml: the team's (``feature_store[.profile].yaml``) or the folder's example."""
    if repo is not None:
        repo = feast_repo(repo)
        return repo, profile_path(repo, profile)
    if profile is not None and profile not in PROFILES:
        raise KarError(f"{profile!r}: no such Feast profile for the example repo (profiles: {', '.join(PROFILES)})")
    example = example_repo_dir(data_dir, profile)
    if not (example / "feature_store.yaml").is_file():
        flag = f" --profile {profile}" if profile else ""
        raise DataError(f"{data_dir}: no Feast repo yet; run `kar feast apply --data {data_dir}{flag}` first")
    return example, example / "feature_store.yaml"


def repo_config(
    *,
    data_dir: Location,
    repo: Location | None = None,
    online_store: dict[str, Any] | None = None,
    profile: str | None = None,
) -> RepoConfig:
    """The repo's configuration as Feast loads it, with ``online_store`` replaced in memory when given (the
    file is never changed)."""
    from feast.repo_config import load_repo_config

    data = local_path(data_dir, what="data")
    root, yaml_file = _repo_for(data, optional_local_path(repo, what="repo"), profile)
    config = load_repo_config(root, yaml_file)
    if online_store is None:
        return config
    raw = config.model_dump(by_alias=True, exclude_none=True)
    raw["online_store"] = online_store
    raw.pop("repo_path", None)
    patched = type(config)(**raw)
    patched.repo_path = root
    return patched


def open_store(
    *,
    data_dir: Location,
    repo: Location | None = None,
    online_store: dict[str, Any] | None = None,
    profile: str | None = None,
) -> FeatureStore:
    """A ``FeatureStore``: the team's repo as it is, or the prepared folder's example repo (apply it first)."""
    from feast import FeatureStore

    config = repo_config(data_dir=data_dir, repo=repo, online_store=online_store, profile=profile)
    return FeatureStore(repo_path=str(config.repo_path), config=config)


def ensure_vector_tables(data_dir: Path) -> list[str]:
    """Write an empty table for every vector table not produced yet; return their names.

    Feast cannot register a view over a folder that does not exist. An empty table registers the knowledge
    views before any knowledge exists (e.g. ``kar demo --no-knowledge``): every sample then joins
    ``has_* = False``, the same as an entity the LLM has no answer for.
    """
    created = []
    for table in tables.VECTOR_TABLES:
        path = data_dir / table
        if not path.is_dir() or not any(path.glob("*.parquet")):
            path.mkdir(parents=True, exist_ok=True)
            pq.write_table(VECTOR_SCHEMA.empty_table(), path / "part-empty.parquet")
            created.append(table)
    return created


def is_knowledge_view(view: Any) -> bool:
    key, value = KNOWLEDGE_TAG
    return view.tags.get(key) == value


def vector_dim(view: Any) -> int:
    """The declared ``vector_length`` of a knowledge view's vector feature (named like the view)."""
    return next(field.vector_length for field in view.features if field.name == view.name)


def check_dimensions(store: FeatureStore, *, data_dir: Path) -> None:
    """Fail when a knowledge table holds vectors whose dimension differs from its view's ``vector_length``.

    Raises:
        DataError: naming the table, the model that wrote it, both dimensions and the fix.
    """
    for view in store.list_feature_views():
        if not is_knowledge_view(view):
            continue
        expected = vector_dim(view)
        location = str(getattr(view.batch_source, "path", "") or "")
        if not location or is_uri(location):
            continue  # a cluster's storage: Feast and Spark read it, the driver does not list it
        path = Path(location)
        if not path.is_dir():
            raise DataError(f"{path}: table of feature view {view.name!r} is missing; run `kar encode` or apply again")
        dims = pq.read_table(path, columns=["dim", "model"]).group_by(["dim", "model"]).aggregate([]).to_pylist()
        wrong = [row for row in dims if row["dim"] != expected]
        if wrong:
            found = ", ".join(f"{row['dim']}-d from model {row['model']!r}" for row in wrong)
            raise DataError(
                f"{path.relative_to(data_dir) if path.is_relative_to(data_dir) else path}: {found}, but feature view "
                f"{view.name!r} declares {expected}-d vectors; re-encode with a {expected}-d model or change the "
                "view's Dimensions (`kar feast apply --knowledge-dim/--adapted-dim`, or kar_knowledge.py) and apply"
            )


def apply(
    *,
    data_dir: Location,
    repo: Location | None = None,
    profile: str | None = None,
    dims: Dimensions | None = None,
) -> list[str]:
    """Register Feast objects and return their names.

    Without ``repo``: write the example repo for ``data_dir`` into ``DATA/feast/repo`` and register its objects
    (``kar.feast.example_objects``). With ``repo``: run Feast's own ``feast apply`` in the team's repo.

    Args:
        data_dir: A prepared folder.
        repo: The team's Feast repo (its ``kar_knowledge.py`` from ``kar feast init`` names the data).
        profile: The example repo's offline store (``spark``) or the team's ``feature_store.<profile>.yaml``.
        dims: The example repo's vector sizes (default: what the folder's vector tables hold).

    Raises:
        DataError: Not a prepared folder, a failed Feast apply (its last lines), or vectors of another size
            than their view declares.
    """
    team = optional_local_path(repo, what="repo")
    data = _prepared(data_dir)
    if team is not None:
        _feast_cli_apply(team, profile)
        store = open_store(data_dir=data, repo=team, profile=profile)
        check_dimensions(store, data_dir=data)
        return sorted({*(e.name for e in store.list_entities()), *(v.name for v in store.list_feature_views()),
                       *(s.name for s in store.list_feature_services())})  # fmt: skip
    folder = example_repo_dir(data, profile)
    state = feast_dir(data)
    registry = f"registry.{profile}.db" if profile else "registry.db"
    write_example_repo(repo=folder, data=data, registry=str(state / registry),
                       online_path=str(state / "online_store.db"), offline_store=profile or "file")  # fmt: skip
    objects = example_objects(data=data, dims=dims, offline_store=profile or "file")
    store = open_store(data_dir=data, profile=profile)
    names = {obj.name for obj in objects}
    # An optional knowledge view (kerec) whose table went away leaves the example repo: kept, its missing
    # folder would fail every later apply and materialize. Only kar's own tagged views are ever deleted.
    stale = [v for v in store.list_feature_views() if is_knowledge_view(v) and v.name not in names]
    store.apply(objects, objects_to_delete=stale, partial=not stale)
    check_dimensions(store, data_dir=data)
    return [obj.name for obj in objects]


def init_repo(
    *,
    repo: Location,
    user_entity: str,
    item_entity: str,
    data_dir: Location,
    with_views: Sequence[str] | None = None,
    force: bool = False,
) -> Path:
    """``kar feast init``: write ``kar_knowledge.py`` into the team's repo (``kar.feast.write_knowledge_file``),
    with every vector table of the folder present (empty until encoded) so Feast can register its views."""
    from kar.feast import write_knowledge_file

    data = _prepared(data_dir)
    return write_knowledge_file(
        repo=repo, user_entity=user_entity, item_entity=item_entity, data=data, with_views=with_views, force=force
    )


def _prepared(data_dir: Location) -> Path:
    """A prepared folder with every vector table present (empty until encoded), so Feast can register views
    over them.

    Raises:
        DataError: Not a folder ``kar prepare`` wrote.
    """
    data = local_path(data_dir, what="data")
    if not (data / "users").is_dir():
        raise DataError(f"{data}: not a prepared-data folder (run `kar prepare --out {data}` first)")
    ensure_vector_tables(data)
    return data


def _feast_cli_apply(repo: Path, profile: str | None) -> None:
    """Feast's own ``feast apply`` in the team's repo, as the team would run it."""
    feast = Path(sys.executable).with_name("feast")
    command = [str(feast) if feast.is_file() else shutil.which("feast") or "feast", "--chdir", str(repo)]
    if profile:
        command += ["--feature-store-yaml", str(profile_path(repo, profile))]
    result = subprocess.run([*command, "apply"], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(f"feast apply in {repo} failed: {' / '.join(tail)}")


def materialize(
    *,
    data_dir: Location,
    repo: Location | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    online_store: dict[str, Any] | None = None,
    profile: str | None = None,
    service: str | None = None,
) -> FeatureStore:
    """Load the latest feature values in ``[start, end]`` into the online store and return the store.

    ``start`` defaults to the epoch: Feast's incremental default for views without TTL looks back one year
    only, which would silently skip logs older than that (all of MovieLens). In the team's repo only the views
    of ``service`` are loaded (default: the knowledge views), never the rest of what the repo owns.
    """
    data = local_path(data_dir, what="data")
    store = open_store(data_dir=data, repo=repo, online_store=online_store, profile=profile)
    check_dimensions(store, data_dir=data)
    views = None
    if repo is not None:
        if service is not None:
            views = [p.name for p in store.get_feature_service(service).feature_view_projections]
        else:
            views = [v.name for v in store.list_feature_views() if is_knowledge_view(v)]
    store.materialize(start_date=start or EPOCH, end_date=end or datetime.now(UTC), feature_views=views)
    return store


@dataclass(frozen=True, kw_only=True)
class EntityRole:
    """How one side of the ranking is keyed in a feature store.

    Attributes:
        role: ``user`` or ``item``.
        entity: The Feast entity's name.
        join_key: Its join key (a column of entity rows and lookups).
        key_type: ``int64`` or ``string``.
    """

    role: str
    entity: str
    join_key: str
    key_type: str

    def key_value(self, value: Any) -> Any:
        """``value`` as the join key holds it: an ``int`` for an int64 key, else text.

        Raises:
            ValueError: Text that is not an integer, for an int64 key.
        """
        return int(value) if self.key_type == "int64" else str(value)


@dataclass(frozen=True, kw_only=True)
class Roles:
    """The user and item sides of a feature service."""

    user: EntityRole
    item: EntityRole

    def of(self, role: str) -> EntityRole:
        return self.user if role == "user" else self.item


def service_roles(store: FeatureStore, service: str) -> Roles:
    """Which entity is the user and which the item, from the service's knowledge views (``kar.role`` tags);
    entities named ``user`` and ``item`` otherwise (the example repo without knowledge views).

    Raises:
        DataError: A side with no tagged view and no entity of that name.
    """
    found: dict[str, EntityRole] = {}
    for projection in store.get_feature_service(service).feature_view_projections:
        view = store.get_feature_view(projection.name)
        role = view.tags.get(ROLE_TAG)
        if role in ("user", "item") and role not in found:
            found[role] = _entity_role(store, role, view.entities[0], view)
    for role in ("user", "item"):
        if role not in found:
            try:
                found[role] = _entity_role(store, role, role, None)
            except Exception:
                raise DataError(
                    f"feature service {service!r} has no kar knowledge view for the {role} side and the registry "
                    f"no entity named {role!r}; add the knowledge views (`kar feast init`) to the service"
                ) from None
    return Roles(user=found["user"], item=found["item"])


def _entity_role(store: FeatureStore, role: str, name: str, view: Any) -> EntityRole:
    entity = store.get_entity(name)
    key_type = key_type_of(entity)
    if key_type is None and view is not None:
        column = next((c for c in view.entity_columns if c.name == entity.join_key), None)
        key_type = "string" if column is not None and "String" in str(column.dtype) else "int64"
    return EntityRole(role=role, entity=name, join_key=entity.join_key, key_type=key_type or "int64")


def entity_values(data_dir: Path, role: EntityRole, ids: Sequence[int]) -> list[Any]:
    """The join-key values of kar's int64 ids: the dataset's own (string) ids through its id map, or the ids."""
    if role.key_type == "int64":
        return [int(i) for i in ids]
    id_map = IdMap.load(data_dir, role.role)
    if id_map is None:
        return [str(int(i)) for i in ids]
    return id_map.raws(ids)


def _view_keys(store: FeatureStore, view_name: str) -> list[str]:
    view = store.get_feature_view(view_name)
    return [column.name for column in view.entity_columns]


def training_frame(
    *,
    data_dir: Location,
    repo: Location | None = None,
    samples: pd.DataFrame | None = None,
    service: str = TRAINING_SERVICE,
    profile: str | None = None,
) -> pd.DataFrame:
    """CTR samples joined point-in-time with every feature view of a feature service.

    Each view is queried with the unique ``(its join keys, event_timestamp)`` rows only and merged back, so
    every sample comes back exactly once, in input order. Querying all views at once with the raw samples
    loses rows on Feast's file offline store: it de-duplicates on the join keys seen so far plus the
    timestamp, collapsing two samples of one user in the same second (feast-dev/feast#6787; 39,400 of
    77,277 ML-100K samples). Rows no feature row precedes keep nulls instead of vanishing.

    In a team's repo the samples' ``user_id``/``item_id`` are turned into the entities' own join-key values
    (``customer_id = "C-0042"``) through the folder's id maps; both columns stay in the frame.

    Args:
        data_dir: A prepared folder (the example repo applied, or a team repo that knows it).
        repo: The team's Feast repo (default: the folder's example repo).
        samples: Entity rows (``user_id, item_id, event_timestamp`` + any columns to keep); defaults to
            ``data_dir/samples``.
        service: Feature service to retrieve.
        profile: Feast profile (``spark`` runs the joins on the Spark offline store).
    """
    data = local_path(data_dir, what="data")
    if samples is None:
        samples = pd.read_parquet(data / "samples")
    store = open_store(data_dir=data, repo=repo, profile=profile)
    projections = store.get_feature_service(service).feature_view_projections
    frame = with_join_keys(samples.reset_index(drop=True), data, service_roles(store, service))
    for projection in projections:
        keys = [*_view_keys(store, projection.name), "event_timestamp"]
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise DataError(f"samples lack {missing} needed to join feature view {projection.name!r}")
        entity_df = frame[keys].drop_duplicates()
        refs = [f"{projection.name}:{feature.name}" for feature in projection.features]
        joined = _same_timestamps(store.get_historical_features(entity_df=entity_df, features=refs).to_df(), frame)
        # Fewer rows is expected (Feast's file store drops entity rows older than every feature row: the left
        # merge gives them nulls); more rows would make the merge duplicate samples.
        if joined.duplicated(subset=keys).any():
            raise KarError(f"{projection.name}: point-in-time join returned several rows for one entity row")
        frame = frame.merge(joined, on=keys, how="left", validate="many_to_one")
    if len(frame) != len(samples):
        raise KarError(f"training frame has {len(frame)} rows for {len(samples)} samples")
    return fill_missing_knowledge(frame, knowledge_dims(store, projections))


def with_join_keys(samples: pd.DataFrame, data_dir: Path, roles: Roles) -> pd.DataFrame:
    """``samples`` plus a column per entity join key that is not already ``user_id``/``item_id``."""
    added = {}
    for role in (roles.user, roles.item):
        canonical = f"{role.role}_id"
        if role.join_key == canonical and role.key_type == "int64":
            continue
        if canonical not in samples.columns:
            raise DataError(f"samples lack {canonical!r} to derive the {role.entity} join key {role.join_key!r}")
        added[role.join_key] = entity_values(data_dir, role, samples[canonical].tolist())
    return samples.assign(**added) if added else samples


def _same_timestamps(joined: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Give ``joined`` the samples' timestamp dtype: the Spark offline store returns naive UTC timestamps."""
    column = "event_timestamp"
    if joined[column].dtype != frame[column].dtype:
        joined = joined.assign(**{column: pd.to_datetime(joined[column], utc=True).astype(frame[column].dtype)})
    return joined


def knowledge_dims(store: FeatureStore, projections: Sequence[Any]) -> dict[str, int]:
    """``{vector feature: dimension}`` of the knowledge views among ``projections``."""
    views = (store.get_feature_view(projection.name) for projection in projections)
    return {view.name: vector_dim(view) for view in views if is_knowledge_view(view)}


def fill_missing_knowledge(frame: pd.DataFrame, dims: dict[str, int]) -> pd.DataFrame:
    """Zeros and ``has_<view> = False`` where an entity has no knowledge vector (yet); vectors as float32 arrays.

    The same rule serves training frames and online lookups, so a ranker sees an unknown entity identically
    offline and online. Views whose vector column ``frame`` does not hold (e.g. the item views in a user
    lookup) are skipped.
    """
    frame = frame.copy()
    for name, dim in dims.items():
        if name not in frame.columns:
            continue
        flag = f"has_{name}"
        present = frame[name].map(lambda v: v is not None and not (np.isscalar(v) and pd.isna(v)))
        zeros = np.zeros(dim, dtype=np.float32)
        vectors = zip(frame[name], present, strict=True)
        frame[name] = [np.asarray(v, dtype=np.float32) if ok else zeros for v, ok in vectors]
        frame[flag] = present & frame[flag].astype("boolean").fillna(False).astype(bool)
    return frame


def feature_refs(store: FeatureStore, projections: Sequence[Any], *, entity: str) -> list[str]:
    """``view:feature`` references of the service's views keyed by ``entity``."""
    return [
        f"{projection.name}:{feature.name}"
        for projection in projections
        if entity in store.get_feature_view(projection.name).entities
        for feature in projection.features
    ]


def online_features(
    store: FeatureStore, *, user_id: Any, item_ids: Sequence[Any], service: str = TRAINING_SERVICE
) -> dict[str, pd.DataFrame]:
    """Serving-time lookup through Feast's own ``get_online_features``: the user's row and one row per candidate
    (ids are the entities' join-key values)."""
    projections = store.get_feature_service(service).feature_view_projections
    roles = service_roles(store, service)
    user_refs = feature_refs(store, projections, entity=roles.user.entity)
    item_refs = feature_refs(store, projections, entity=roles.item.entity)
    user_rows = [{roles.user.join_key: roles.user.key_value(user_id)}]
    item_rows = [{roles.item.join_key: roles.item.key_value(i)} for i in item_ids]
    user = store.get_online_features(features=user_refs, entity_rows=user_rows).to_df()
    items = store.get_online_features(features=item_refs, entity_rows=item_rows).to_df()
    dims = knowledge_dims(store, projections)
    return {"user": fill_missing_knowledge(user, dims), "items": fill_missing_knowledge(items, dims)}
