"""Serving-time reads of one user and N candidate items, straight from Feast's online store.

``FeatureStore.get_online_features`` re-resolves the feature service, validates references and builds a
response proto on every call; for one user and 100 items that orchestration costs more than the store read
itself (~35 ms against a few ms). :class:`OnlineLookup` resolves the service once and then, per request:

* on Redis, sends **one** pipeline of HMGETs for the user and every candidate, each asking for the fields of
  all that entity's views at once. Feast keeps all views of one entity in one hash, but its own
  ``online_read`` goes view by view, one round trip each. Keys and field names come from Feast's Redis store
  itself (same serialization, same hashes), so Feast stays the source of truth and writes via ``materialize``.
* on SQLite (the default), runs one query per view for just the service's features, on Feast's connection;
* on any other online store, calls the store's own ``online_read`` per view.

It returns numpy columns: knowledge vectors as an ``(N, dim)`` float32 matrix, ready for a ranker. Missing
entities never raise: their features are None, their knowledge vectors zeros and ``has_<view>`` False,
exactly as :func:`kar.serving.store.fill_missing_knowledge` does for training frames.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kar.serving import feast_adapter
from kar.serving.store import TRAINING_SERVICE, is_knowledge_view, service_roles, vector_dim

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.protos.feast.types.Value_pb2 import Value

Rows = list[dict[str, "Value"] | None]
KEY_CACHE_SIZE = 200_000


@dataclass(frozen=True, kw_only=True)
class _ViewRead:
    """What to read from one feature view and how to decode it."""

    view: FeatureView
    join_key: str
    features: tuple[str, ...]
    vector: str | None  # the knowledge vector feature, decoded to a float32 matrix
    dim: int


@dataclass(frozen=True, kw_only=True)
class OnlineFeatures:
    """One request's features: the user's as scalars, the items' as columns aligned with ``item_ids``.

    Attributes:
        user: The user's features, by name (the join key included).
        items: The candidates' features as columns (the join key included).
        item_key: The items' join key (``item_id`` in the example repo, e.g. ``sku`` in a team's).
    """

    user: dict[str, Any]
    items: dict[str, Any]
    item_key: str = "item_id"

    @property
    def n_items(self) -> int:
        return len(self.items.get(self.item_key, ()))

    def items_frame(self) -> pd.DataFrame:
        """The items as a DataFrame (a vector column holds one float32 array per row)."""
        return pd.DataFrame({k: list(v) if getattr(v, "ndim", 1) == 2 else v for k, v in self.items.items()})

    def candidates_frame(self, **context: Any) -> pd.DataFrame:
        """One row per candidate item with the user's features repeated, plus request ``context`` columns.

        This is the frame a ranker scores (``Ranker.predict``); ``context`` carries what the request knows and
        the store does not, e.g. ``hist_item_ids=[...]``, the user's recent items.
        """
        n = self.n_items
        columns = {k: list(v) if getattr(v, "ndim", 1) == 2 else v for k, v in self.items.items()}
        for name, value in {**self.user, **context}.items():
            columns[name] = [value] * n
        # One construction: inserting columns one by one costs more than the whole encoding.
        return pd.DataFrame(columns)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary: scalars as they are, vectors as ``"384-d [0.012, -0.034, 0.101, …]"``."""
        n_items = self.n_items
        return {
            "user": {k: _show(v) for k, v in self.user.items()},
            "items": [{k: _show(v[i]) for k, v in self.items.items()} for i in range(n_items)],
        }


def _show(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "f":
        return f"{len(value)}-d [{', '.join(f'{v:.3f}' for v in value[:3])}, …]"
    return value.item() if isinstance(value, np.generic) else value


class OnlineLookup:
    """Reads a feature service's user and item features from the online store of ``store``.

    Args:
        store: An applied and materialized ``FeatureStore`` (SQLite, Redis or any online store Feast supports).
        service: The feature service whose views to read (``ranking_serving`` at serving time).
        features: Read only these of the service's features (e.g. what a ranker uses); all when None.

    Attributes:
        roles: Which entity (join key, key type) is the user and which the item (``kar.serving.store.service_roles``).
    """

    def __init__(
        self, store: FeatureStore, *, service: str = TRAINING_SERVICE, features: Collection[str] | None = None
    ) -> None:
        self.roles = service_roles(store, service)
        self._config = store.config
        # online_read is Feast's store interface; reaching it skips only get_online_features' per-call
        # registry lookups and response building.
        self._provider = feast_adapter.provider(store)
        self._reads: dict[str, list[_ViewRead]] = {}
        for projection in store.get_feature_service(service).feature_view_projections:
            names = [f.name for f in projection.features]
            if features is not None:
                # A vector's has_ flag comes with it.
                names = [n for n in names if n in features or n.removeprefix("has_") in features]
            if names:
                read = _plan(store.get_feature_view(projection.name), names)
                self._reads.setdefault(read.join_key, []).append(read)
        self._fast = _fast_reader(self._provider.online_store, self._config, self._reads)

    def columns(self) -> dict[str, list[str]]:
        """Per join key, the columns :meth:`read` returns: the key, each feature and a ``has_`` flag per vector."""
        out: dict[str, list[str]] = {}
        for key, plans in self._reads.items():
            names = [key]
            for read in plans:
                names += [f for f in read.features if f not in names]
                if read.vector and f"has_{read.vector}" not in names:
                    names.append(f"has_{read.vector}")
            out[key] = names
        return out

    def fetch(self, *, user_id: Any, item_ids: Sequence[Any]) -> OnlineFeatures:
        """The user's and the candidates' features, in the order of ``item_ids``.

        Ids are the entities' join-key values (a team's ``"C-0042"``; kar's int64 ids in the example repo).
        """
        user, item = self.roles.user, self.roles.item
        requests = {
            user.join_key: [user.key_value(user_id)],
            item.join_key: [item.key_value(i) for i in item_ids],
        }
        columns = self.read(requests)
        return OnlineFeatures(
            user={k: v[0] for k, v in columns[user.join_key].items()},
            items=columns[item.join_key],
            item_key=item.join_key,
        )

    def read(self, requests: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
        """Columns of every view keyed by each join key, for that key's ids (the key column included)."""
        plans = {key: self._reads.get(key, []) for key in requests}
        if self._fast is not None:
            rows = self._fast.read(requests)
        else:
            rows = {key: [self._online_read(read, key, ids) for read in plans[key]] for key, ids in requests.items()}
        out: dict[str, dict[str, Any]] = {}
        for key, ids in requests.items():
            columns: dict[str, Any] = {key: np.asarray(ids, dtype=np.int64 if _ints(ids) else object)}
            for read, view_rows in zip(plans[key], rows[key], strict=True):
                columns.update(_decode(read, view_rows))
            out[key] = columns
        return out

    def _online_read(self, read: _ViewRead, join_key: str, ids: list[int]) -> Rows:
        result = self._provider.online_read(
            config=self._config,
            table=read.view,
            entity_keys=feast_adapter.entity_keys(join_key, ids),
            requested_features=list(read.features),
        )
        return [values for _ts, values in result]


def _plan(view: FeatureView, features: list[str]) -> _ViewRead:
    (join_key,) = [column.name for column in view.entity_columns]
    vector = view.name if is_knowledge_view(view) and view.name in features else None
    dim = vector_dim(view) if vector else 0
    return _ViewRead(view=view, join_key=join_key, features=tuple(features), vector=vector, dim=dim)


def _ints(ids: Sequence[Any]) -> bool:
    return all(isinstance(i, int | np.integer) for i in ids)


def _fast_reader(online_store: Any, config: Any, reads: dict[str, list[_ViewRead]]) -> Any:
    """A direct reader for Redis or SQLite (Feast's default), None for other stores (their ``online_read``)."""
    kind = getattr(config.online_store, "type", None)
    if kind == "redis":
        return _RedisReader(online_store, config, reads)
    if kind == "sqlite":
        return _SqliteReader(online_store, config, reads)
    return None


class _SqliteReader:
    """Each view's requested features of all requested entities in one query, on Feast's own connection.

    Feast's SQLite ``online_read`` selects every feature of a view and parses each row's timestamp, and
    serializes the entity keys on every call; this asks only for the service's features, skips the
    timestamps and caches the serialized keys. Tables, keys and values are Feast's own.
    """

    def __init__(self, online_store: Any, config: Any, reads: dict[str, list[_ViewRead]]) -> None:
        self._conn = feast_adapter.sqlite_connection(online_store, config)
        self._reads = reads
        self._tables = {
            read.view.name: feast_adapter.sqlite_table(config, read.view) for plan in reads.values() for read in plan
        }
        self.key = functools.lru_cache(maxsize=KEY_CACHE_SIZE)(
            functools.partial(feast_adapter.sqlite_entity_key, config)
        )

    def read(self, requests: dict[str, list[Any]]) -> dict[str, list[Rows]]:
        """Per join key, one list of rows per planned view, for that key's ids."""
        out: dict[str, list[Rows]] = {}
        for join_key, ids in requests.items():
            keys = [self.key(join_key, entity_id) for entity_id in ids]
            out[join_key] = [self._view_rows(read, keys) for read in self._reads.get(join_key, [])]
        return out

    def _view_rows(self, read: _ViewRead, keys: list[bytes]) -> Rows:
        found: dict[bytes, dict[str, bytes]] = {}
        query = (
            f'SELECT entity_key, feature_name, value FROM "{self._tables[read.view.name]}" '
            f"WHERE entity_key IN ({','.join('?' * len(keys))}) AND feature_name IN "
            f"({','.join('?' * len(read.features))})"
        )
        for entity_key, feature, value in self._conn.execute(query, [*keys, *read.features]):
            found.setdefault(entity_key, {})[feature] = value
        return [_row(read, [values.get(f) for f in read.features]) if (values := found.get(k)) else None for k in keys]


class _RedisReader:
    """All views of all requested entities in one Redis pipeline, with Feast's own keys and field hashes."""

    def __init__(self, online_store: Any, config: Any, reads: dict[str, list[_ViewRead]]) -> None:
        self._store = online_store
        self._config = config
        self._client = feast_adapter.redis_client(online_store, config)
        self._reads = reads
        # One HMGET per entity asks for the fields of all that entity's views, in plan order.
        self._fields = {key: [f for read in plan for f in self._hash_fields(read)] for key, plan in reads.items()}
        # Serializing an entity key costs more than fetching it; candidate ids repeat across requests.
        self.redis_key = functools.lru_cache(maxsize=KEY_CACHE_SIZE)(self._redis_key)

    def _redis_key(self, join_key: str, entity_id: Any) -> bytes:
        return feast_adapter.redis_key(self._store, self._config, join_key, entity_id)

    def _hash_fields(self, read: _ViewRead) -> list[bytes | str]:
        return feast_adapter.redis_fields(self._store, self._config, read.view, read.features)

    def read(self, requests: dict[str, list[Any]]) -> dict[str, list[Rows]]:
        """Per join key, one list of rows per planned view, for that key's ids."""
        with self._client.pipeline(transaction=False) as pipe:
            for join_key, ids in requests.items():
                fields = self._fields.get(join_key, [])
                for entity_id in ids:
                    pipe.hmget(self.redis_key(join_key, entity_id), fields)
            replies = iter(pipe.execute())
        out: dict[str, list[Rows]] = {}
        for join_key, ids in requests.items():
            per_entity = [next(replies) for _ in ids]
            views: list[Rows] = []
            offset = 0
            for read in self._reads.get(join_key, []):
                width = len(read.features)
                views.append([_row(read, values[offset : offset + width]) for values in per_entity])
                offset += width
            out[join_key] = views
        return out


def _row(read: _ViewRead, raws: list[bytes | None]) -> dict[str, Any] | None:
    """One entity's raw stored values for one view, decoded; None when the entity has none of them."""
    if all(raw is None for raw in raws):
        return None
    row: dict[str, Any] = {}
    for name, raw in zip(read.features, raws, strict=True):
        if name == read.vector and raw and (floats := feast_adapter.packed_floats(raw, read.dim)) is not None:
            row[name] = floats
            continue
        row[name] = feast_adapter.parse_value(raw or b"")
    return row


def _decode(read: _ViewRead, rows: Rows) -> dict[str, Any]:
    out: dict[str, Any] = {
        feature: [feast_adapter.python_value(row.get(feature)) if row else None for row in rows]
        for feature in read.features
        if feature != read.vector
    }
    if read.vector:
        flag = f"has_{read.vector}"
        matrix = np.zeros((len(rows), read.dim), dtype=np.float32)
        present = np.zeros(len(rows), dtype=bool)
        for i, row in enumerate(rows):
            value = row.get(read.vector) if row else None
            if isinstance(value, np.ndarray):
                matrix[i] = value
                present[i] = True
            elif value is not None and value.HasField("float_list_val"):
                matrix[i] = value.float_list_val.val
                present[i] = True
        out[read.vector] = matrix
        # A stored false flag stays false; a service that omits the flag still gets one.
        out[flag] = present & np.array([bool(f) for f in out[flag]]) if flag in out else present
    return out
