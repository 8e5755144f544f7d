"""Every use of Feast internals in kar-feast, in one module: the online stores' keys, tables and value bytes.

``kar.serving.online.OnlineLookup`` reads Feast's online stores directly (one Redis pipeline, one SQLite query
per view) because ``get_online_features`` costs more than the read itself. To read what ``materialize`` wrote,
it must build keys, table names and hash fields exactly as Feast does, which Feast exposes only as private
functions. They are called here and nowhere else; ``tests/test_feast_adapter.py`` pins each one against the
installed Feast (signatures, and bytes equal to what Feast's own ``online_read`` finds), so a Feast upgrade
that changes one fails there, by name, instead of returning empty features at serving time.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.repo_config import RepoConfig

VALUE_CACHE_SIZE = 100_000

PRIVATES = (
    ("feast.feature_store", "FeatureStore._get_provider"),
    ("feast.infra.online_stores.sqlite", "SqliteOnlineStore._get_conn"),
    ("feast.infra.online_stores.sqlite", "_table_id"),
    ("feast.infra.online_stores.redis", "RedisOnlineStore._get_client"),
    ("feast.infra.online_stores.redis", "RedisOnlineStore._generate_redis_keys_for_entities"),
    ("feast.infra.online_stores.redis", "RedisOnlineStore._generate_hset_keys_for_features"),
    ("feast.infra.online_stores.redis", "_versioned_fv_name"),
)
"""The Feast internals this module calls, as (module, attribute path): the contract tests resolve each."""


def entity_keys(join_key: str, ids: Sequence[Any]) -> list[EntityKey]:
    """Feast's ``EntityKey`` protos for ids of one join key: str ids as ``string_val``, others as ``int64_val``."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    def value(entity_id: Any) -> Value:
        return Value(string_val=entity_id) if isinstance(entity_id, str) else Value(int64_val=int(entity_id))

    return [EntityKey(join_keys=[join_key], entity_values=[value(i)]) for i in ids]


def provider(store: FeatureStore) -> Any:
    """The store's provider: its ``online_store`` and ``online_read`` serve views Feast has no fast path for."""
    return store._get_provider()


def sqlite_connection(online_store: Any, config: RepoConfig) -> sqlite3.Connection:
    """The SQLite online store's own connection (Feast opens and caches it per store)."""
    return online_store._get_conn(config)


def sqlite_table(config: RepoConfig, view: FeatureView) -> str:
    """The table Feast's SQLite online store keeps ``view`` in."""
    from feast.infra.online_stores.sqlite import _table_id

    return _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def sqlite_entity_key(config: RepoConfig, join_key: str, entity_id: Any) -> bytes:
    """The ``entity_key`` column value of one entity in a SQLite online table."""
    from feast.infra.key_encoding_utils import serialize_entity_key

    (entity,) = entity_keys(join_key, [entity_id])
    return serialize_entity_key(entity, entity_key_serialization_version=config.entity_key_serialization_version)


def redis_client(online_store: Any, config: RepoConfig) -> Any:
    """The Redis online store's own client (a ``redis.Redis`` or ``RedisCluster``)."""
    return online_store._get_client(config.online_store)


def redis_key(online_store: Any, config: RepoConfig, join_key: str, entity_id: Any) -> bytes:
    """The Redis hash holding every view's features of one entity."""
    (key,) = online_store._generate_redis_keys_for_entities(config, entity_keys(join_key, [entity_id]))
    return key


def redis_fields(online_store: Any, config: RepoConfig, view: FeatureView, features: Sequence[str]) -> list[Any]:
    """The hash fields of ``features`` of ``view`` (its timestamp field left out), in the order given."""
    from feast.infra.online_stores.redis import _versioned_fv_name

    _names, fields = online_store._generate_hset_keys_for_features(
        view, list(features), fv_name_override=_versioned_fv_name(view, config)
    )
    return fields[:-1]  # the last one is the view's timestamp field


@functools.lru_cache(maxsize=VALUE_CACHE_SIZE)
def parse_value(raw: bytes) -> Value:
    """A stored ``Value``, parsed once per distinct bytes: profile values (years, genre lists) repeat across
    entities. Callers only read it (``python_value`` copies lists out)."""
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    return value


def python_value(value: Value | None) -> Any:
    """A ``Value`` proto as a Python value: None when unset, a list for ``*_list_val``."""
    if value is None:
        return None
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    field = getattr(value, kind)
    return list(field.val) if kind.endswith("_list_val") else field


# Value.float_list_val is field 16, length-delimited: tag bytes 0x82 0x01; FloatList.val is field 1, packed (0x0A).
_FLOAT_LIST_TAG = b"\x82\x01"
_PACKED_TAG = 0x0A


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def packed_floats(raw: bytes, dim: int) -> np.ndarray | None:
    """The ``dim`` floats of a serialized ``Value(float_list_val=...)``, read in place without building the proto.

    Building the proto and copying its repeated field costs more than the rest of a 100-item read with
    384-d vectors. Returns None when the bytes are not exactly that message (the caller parses the proto).
    """
    if not raw.startswith(_FLOAT_LIST_TAG):
        return None
    length, pos = _varint(raw, len(_FLOAT_LIST_TAG))
    if pos + length != len(raw) or raw[pos] != _PACKED_TAG:
        return None
    size, pos = _varint(raw, pos + 1)
    if size != 4 * dim or pos + size != len(raw):
        return None
    return np.frombuffer(raw, dtype="<f4", count=dim, offset=pos)
