"""Feast access for every stage: one store per prepared-data folder, built from ``feature_repo/``.

``feature_repo/`` stays a plain Feast repo (``cd feature_repo && feast apply`` works). This module loads the
same ``feature_store.yaml`` and definitions but keeps the registry and the SQLite online store inside
``DATA_DIR/feast``, so several prepared datasets never overwrite each other's registry or online rows.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kar.errors import DataError, KarError

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

REPO_ENV = "KAR_FEAST_REPO"
DATA_ENV = "KAR_DATA_DIR"
TRAINING_SERVICE = "ranking_training"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
def _definitions_context(repo: Path, data_dir: Path) -> Iterator[None]:
    """Let Feast import the repo's definitions for ``data_dir``.

    Feast names repo modules relative to the working directory and caches them in ``sys.modules``; a second
    dataset in the same process would otherwise reuse the first one's source paths.
    """
    saved_env, saved_cwd = os.environ.get(DATA_ENV), Path.cwd()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(repo)):
            del sys.modules[name]
    os.environ[DATA_ENV] = str(data_dir.resolve())
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path.remove(str(repo))
        if saved_env is None:
            os.environ.pop(DATA_ENV, None)
        else:
            os.environ[DATA_ENV] = saved_env


def repo_config(*, data_dir: Path, repo: Path | None = None, online_store: dict[str, Any] | None = None) -> RepoConfig:
    """The repo's ``feature_store.yaml`` with registry and online store moved under ``data_dir/feast``.

    Args:
        data_dir: A folder written by ``kar prepare``.
        repo: The Feast repo; ``default_repo()`` when None.
        online_store: Replaces the online store config (e.g. ``{"type": "redis", ...}``); SQLite by default.
    """
    from feast.repo_config import load_repo_config

    repo = repo or default_repo()
    config = load_repo_config(repo, repo / "feature_store.yaml")
    state = feast_dir(data_dir.resolve())
    state.mkdir(parents=True, exist_ok=True)
    raw = config.model_dump(by_alias=True, exclude_none=True)
    raw["registry"] = {"registry_type": "file", "path": str(state / "registry.db")}
    raw["online_store"] = online_store or {"type": "sqlite", "path": str(state / "online_store.db")}
    raw.pop("repo_path", None)
    patched = type(config)(**raw)
    patched.repo_path = repo
    return patched


def open_store(*, data_dir: Path, repo: Path | None = None, online_store: dict[str, Any] | None = None) -> FeatureStore:
    """A ``FeatureStore`` for ``data_dir`` (run ``apply`` first)."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(data_dir=data_dir, repo=repo, online_store=online_store))


def apply(*, data_dir: Path, repo: Path | None = None) -> list[str]:
    """Register the repo's definitions over ``data_dir`` (what ``feast apply`` does) and return object names."""
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    repo = repo or default_repo()
    if not (data_dir / "users").is_dir():
        raise DataError(f"{data_dir}: not a prepared-data folder (run `kar prepare --out {data_dir}` first)")
    store = open_store(data_dir=data_dir, repo=repo)
    with _definitions_context(repo, data_dir):
        contents = parse_repo(repo)
        apply_total_with_repo_instance(
            store, store.config.project, store.registry, contents, skip_source_validation=False
        )
    groups = (contents.entities, contents.feature_views, contents.feature_services)
    # Feast adds a "__dummy" entity for entity-less views; it is not ours to report.
    return [obj.name for group in groups for obj in group if not obj.name.startswith("__")]


def materialize(
    *,
    data_dir: Path,
    repo: Path | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    online_store: dict[str, Any] | None = None,
) -> FeatureStore:
    """Load the latest feature values in ``[start, end]`` into the online store and return the store.

    ``start`` defaults to the epoch: Feast's incremental default for views without TTL looks back one year
    only, which would silently skip logs older than that (all of MovieLens).
    """
    store = open_store(data_dir=data_dir, repo=repo, online_store=online_store)
    store.materialize(start_date=start or EPOCH, end_date=end or datetime.now(UTC))
    return store


def _view_keys(store: FeatureStore, view_name: str) -> list[str]:
    view = store.get_feature_view(view_name)
    return [column.name for column in view.entity_columns]


def training_frame(
    *,
    data_dir: Path,
    repo: Path | None = None,
    samples: pd.DataFrame | None = None,
    service: str = TRAINING_SERVICE,
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
    """
    if samples is None:
        samples = pd.read_parquet(data_dir / "samples")
    store = open_store(data_dir=data_dir, repo=repo)
    frame = samples.reset_index(drop=True)
    for projection in store.get_feature_service(service).feature_view_projections:
        keys = [*_view_keys(store, projection.name), "event_timestamp"]
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise DataError(f"samples lack {missing} needed to join feature view {projection.name!r}")
        entity_df = frame[keys].drop_duplicates()
        refs = [f"{projection.name}:{feature.name}" for feature in projection.features]
        joined = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
        # Fewer rows is expected (Feast's file store drops entity rows older than every feature row: the left
        # merge gives them nulls); more rows would make the merge duplicate samples.
        if joined.duplicated(subset=keys).any():
            raise KarError(f"{projection.name}: point-in-time join returned several rows for one entity row")
        frame = frame.merge(joined, on=keys, how="left", validate="many_to_one")
    if len(frame) != len(samples):
        raise KarError(f"training frame has {len(frame)} rows for {len(samples)} samples")
    return frame


def _feature_refs(store: FeatureStore, projections: Sequence[Any], *, entity: str) -> list[str]:
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
    user_refs = _feature_refs(store, projections, entity="user")
    item_refs = _feature_refs(store, projections, entity="item")
    user = store.get_online_features(features=user_refs, entity_rows=[{"user_id": int(user_id)}]).to_df()
    items = store.get_online_features(features=item_refs, entity_rows=[{"item_id": int(i)} for i in item_ids]).to_df()
    return {"user": user, "items": items}
