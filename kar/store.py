"""Feast access for every stage: one store per prepared-data folder, built from ``feature_repo/``.

``feature_repo/`` stays a plain Feast repo (``cd feature_repo && feast apply`` works). This module loads the
same ``feature_store.yaml`` (or a profile such as ``feature_store.spark.yaml``) and definitions but keeps the
registry and the SQLite online store inside ``DATA_DIR/feast``, so several prepared datasets never overwrite
each other's registry or online rows.

Knowledge views (tagged ``kar.kind: knowledge``) get two guarantees here that Feast alone does not give: the
vectors' dimension must match the view's ``vector_length`` (checked at apply and materialize), and an entity
with no vector reads as zeros with ``has_<view> = False`` in training frames and online lookups alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kar.errors import DataError, KarError
from kar.paths import Location, local_path, optional_local_path
from spark_jobs.encoding.schema import VECTOR_SCHEMA

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

REPO_ENV = "KAR_FEAST_REPO"
DATA_ENV = "KAR_DATA_DIR"
PROFILE_ENV = "KAR_FEAST_PROFILE"
OFFLINE_ENV = "KAR_OFFLINE_STORE"
TRAINING_SERVICE = "ranking_training"
SERVING_SERVICE = "ranking_serving"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KNOWLEDGE_TAG = ("kar.kind", "knowledge")

# The vector tables under a prepared folder (``kar encode`` writes vectors/, ``kar adapt export`` adapted/).
VECTOR_TABLES = ("vectors/user", "vectors/item", "adapted/user", "adapted/item")


def default_repo() -> Path:
    """``$KAR_FEAST_REPO``, else ``./feature_repo``, else the one beside this package in a source checkout."""
    candidates = [
        os.environ.get(REPO_ENV),
        Path.cwd() / "feature_repo",
        Path(__file__).resolve().parents[1] / "feature_repo",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "feature_store.yaml").is_file():
            return Path(candidate).resolve()
    raise KarError(f"no Feast repo found: pass --repo or set {REPO_ENV} to a folder with feature_store.yaml")


def feast_dir(data_dir: Path) -> Path:
    return data_dir / "feast"


@contextlib.contextmanager
def _definitions_context(repo: Path, data_dir: Path, offline_store: str) -> Iterator[None]:
    """Let Feast import the repo's definitions for ``data_dir`` and the profile's offline store type.

    Feast names repo modules relative to the working directory and caches them in ``sys.modules``; a second
    dataset in the same process would otherwise reuse the first one's source paths.
    """
    overrides = {DATA_ENV: str(data_dir.resolve()), OFFLINE_ENV: offline_store}
    saved_env, saved_cwd = {k: os.environ.get(k) for k in overrides}, Path.cwd()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(repo)):
            del sys.modules[name]
    os.environ.update(overrides)
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path.remove(str(repo))
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def profile_path(repo: Path, profile: str | None = None) -> Path:
    """``feature_store.yaml``, or ``feature_store.<profile>.yaml`` for a named profile (e.g. ``spark``)."""
    path = repo / (f"feature_store.{profile}.yaml" if profile else "feature_store.yaml")
    if not path.is_file():
        known = sorted(p.name for p in repo.glob("feature_store*.yaml"))
        raise KarError(f"{path}: no such Feast profile (found: {', '.join(known)})")
    return path


def repo_config(
    *,
    data_dir: Location,
    repo: Location | None = None,
    online_store: dict[str, Any] | None = None,
    profile: str | None = None,
) -> RepoConfig:
    """The repo's ``feature_store.yaml`` with registry and online store moved under ``data_dir/feast``.

    Args:
        data_dir: A folder written by ``kar prepare``.
        repo: The Feast repo; ``default_repo()`` when None.
        online_store: Replaces the online store config (e.g. ``{"type": "redis", ...}``); SQLite by default.
        profile: ``feature_store.<profile>.yaml`` instead of ``feature_store.yaml`` (``$KAR_FEAST_PROFILE``).
    """
    from feast.repo_config import load_repo_config

    data_dir = local_path(data_dir, what="data")
    repo = optional_local_path(repo, what="repo") or default_repo()
    profile = profile or os.environ.get(PROFILE_ENV)
    config = load_repo_config(repo, profile_path(repo, profile))
    state = feast_dir(data_dir)
    state.mkdir(parents=True, exist_ok=True)
    raw = config.model_dump(by_alias=True, exclude_none=True)
    # One registry per profile: its sources are typed for its offline store (FileSource vs SparkSource).
    registry = f"registry.{profile}.db" if profile else "registry.db"
    raw["registry"] = {"registry_type": "file", "path": str(state / registry)}
    raw["online_store"] = online_store or {"type": "sqlite", "path": str(state / "online_store.db")}
    raw.pop("repo_path", None)
    patched = type(config)(**raw)
    patched.repo_path = repo
    return patched


def open_store(
    *,
    data_dir: Location,
    repo: Location | None = None,
    online_store: dict[str, Any] | None = None,
    profile: str | None = None,
) -> FeatureStore:
    """A ``FeatureStore`` for ``data_dir`` (run ``apply`` first)."""
    from feast import FeatureStore

    config = repo_config(data_dir=data_dir, repo=repo, online_store=online_store, profile=profile)
    return FeatureStore(config=config)


def ensure_vector_tables(data_dir: Path) -> list[str]:
    """Write an empty table for every vector table not produced yet; return their names.

    Feast cannot register a view over a folder that does not exist. An empty table registers the knowledge
    views before any knowledge exists (e.g. ``kar demo --no-knowledge``): every sample then joins
    ``has_* = False``, the same as an entity the LLM has no answer for.
    """
    created = []
    for table in VECTOR_TABLES:
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
        path = Path(view.batch_source.path)
        if not path.is_dir():
            raise DataError(f"{path}: table of feature view {view.name!r} is missing; run `kar encode` or apply again")
        dims = pq.read_table(path, columns=["dim", "model"]).group_by(["dim", "model"]).aggregate([]).to_pylist()
        wrong = [row for row in dims if row["dim"] != expected]
        if wrong:
            found = ", ".join(f"{row['dim']}-d from model {row['model']!r}" for row in wrong)
            raise DataError(
                f"{path.relative_to(data_dir) if path.is_relative_to(data_dir) else path}: {found}, but feature view "
                f"{view.name!r} declares {expected}-d vectors; re-encode with a {expected}-d model or change the "
                "view's dimension (KAR_KNOWLEDGE_DIM / KAR_ADAPTED_DIM in feature_repo/definitions.py) and apply"
            )


def apply(*, data_dir: Location, repo: Location | None = None, profile: str | None = None) -> list[str]:
    """Register the repo's definitions over ``data_dir`` (what ``feast apply`` does) and return object names."""
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    data_dir = local_path(data_dir, what="data")
    repo = optional_local_path(repo, what="repo") or default_repo()
    if not (data_dir / "users").is_dir():
        raise DataError(f"{data_dir}: not a prepared-data folder (run `kar prepare --out {data_dir}` first)")
    ensure_vector_tables(data_dir)
    store = open_store(data_dir=data_dir, repo=repo, profile=profile)
    with _definitions_context(repo, data_dir, store.config.offline_store.type):
        contents = parse_repo(repo)
        apply_total_with_repo_instance(
            store, store.config.project, store.registry, contents, skip_source_validation=False
        )
    check_dimensions(store, data_dir=data_dir)
    groups = (contents.entities, contents.feature_views, contents.feature_services)
    # Feast adds a "__dummy" entity for entity-less views; it is not ours to report.
    return [obj.name for group in groups for obj in group if not obj.name.startswith("__")]


def materialize(
    *,
    data_dir: Location,
    repo: Location | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    online_store: dict[str, Any] | None = None,
    profile: str | None = None,
) -> FeatureStore:
    """Load the latest feature values in ``[start, end]`` into the online store and return the store.

    ``start`` defaults to the epoch: Feast's incremental default for views without TTL looks back one year
    only, which would silently skip logs older than that (all of MovieLens).
    """
    data_dir = local_path(data_dir, what="data")
    store = open_store(data_dir=data_dir, repo=repo, online_store=online_store, profile=profile)
    check_dimensions(store, data_dir=data_dir)
    store.materialize(start_date=start or EPOCH, end_date=end or datetime.now(UTC))
    return store


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

    Args:
        data_dir: A prepared, applied data folder.
        repo: The Feast repo.
        samples: Entity rows (``user_id, item_id, event_timestamp`` + any columns to keep); defaults to
            ``data_dir/samples``.
        service: Feature service to retrieve.
        profile: Feast profile (``spark`` runs the joins on the Spark offline store).
    """
    data_dir = local_path(data_dir, what="data")
    if samples is None:
        samples = pd.read_parquet(data_dir / "samples")
    store = open_store(data_dir=data_dir, repo=repo, profile=profile)
    frame = samples.reset_index(drop=True)
    projections = store.get_feature_service(service).feature_view_projections
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
    store: FeatureStore, *, user_id: int, item_ids: Sequence[int], service: str = TRAINING_SERVICE
) -> dict[str, pd.DataFrame]:
    """Serving-time lookup: the user's row and one row per candidate item from the online store."""
    projections = store.get_feature_service(service).feature_view_projections
    user_refs = feature_refs(store, projections, entity="user")
    item_refs = feature_refs(store, projections, entity="item")
    user = store.get_online_features(features=user_refs, entity_rows=[{"user_id": int(user_id)}]).to_df()
    items = store.get_online_features(features=item_refs, entity_rows=[{"item_id": int(i)} for i in item_ids]).to_df()
    dims = knowledge_dims(store, projections)
    return {"user": fill_missing_knowledge(user, dims), "items": fill_missing_knowledge(items, dims)}
