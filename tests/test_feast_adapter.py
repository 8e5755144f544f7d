"""Contract tests of ``kar.serving.feast_adapter`` against the installed Feast: every private it calls exists
with the parameters it passes, and what it reads equals what Feast's own ``get_online_features`` returns.

A Feast upgrade that renames or reshapes one of those internals fails here, naming it.
"""

from __future__ import annotations

import importlib
import inspect
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.protos.feast.types.Value_pb2 import FloatList, Value
from feast.types import Array, Float32, Int64

from kar.serving import feast_adapter

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
IDS = ["sku-1", "sku-2", "sku-3"]


def _resolve(module: str, path: str) -> object:
    target: object = importlib.import_module(module)
    for name in path.split("."):
        target = getattr(target, name)
    return target


@pytest.mark.parametrize(("module", "path"), feast_adapter.PRIVATES)
def test_every_feast_private_the_adapter_calls_exists(module, path):
    assert callable(_resolve(module, path)), f"{module}.{path}"


@pytest.mark.parametrize(
    ("module", "path", "parameters"),
    [
        ("feast.infra.online_stores.sqlite", "_table_id", ["project", "table", "enable_versioning"]),
        ("feast.infra.online_stores.redis", "RedisOnlineStore._generate_hset_keys_for_features",
         ["self", "feature_view", "requested_features", "fv_name_override"]),
        ("feast.infra.online_stores.redis", "_versioned_fv_name", ["table", "config"]),
        ("feast.infra.key_encoding_utils", "serialize_entity_key", ["entity_key", "entity_key_serialization_version"]),
    ],
)  # fmt: skip
def test_feast_internals_take_the_parameters_the_adapter_passes(module, path, parameters):
    signature = inspect.signature(_resolve(module, path))
    assert list(signature.parameters)[: len(parameters)] == parameters


def _store(tmp_path: Path, online_store: dict) -> tuple[FeatureStore, FeatureView]:
    table = tmp_path / "products.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "sku": IDS,
            "price": [10, 20, 30],
            "vector": list(rng.standard_normal((3, 8)).astype(np.float32)),
            "as_of": [pd.Timestamp(WHEN)] * 3,
        }
    ).to_parquet(table)
    product = Entity(name="product", join_keys=["sku"], value_type=ValueType.STRING)
    view = FeatureView(
        name="product_facts",
        entities=[product],
        schema=[Field(name="price", dtype=Int64), Field(name="vector", dtype=Array(Float32), vector_length=8)],
        source=FileSource(path=str(table), timestamp_field="as_of"),
        ttl=None,
    )
    config = RepoConfig(
        project="adapter_contract",
        registry=str(tmp_path / "registry.db"),
        provider="local",
        online_store=online_store,
        entity_key_serialization_version=3,
    )
    store = FeatureStore(config=config, repo_path=str(tmp_path))
    store.apply([product, view])
    store.materialize(start_date=datetime(2025, 1, 1, tzinfo=UTC), end_date=datetime(2026, 6, 1, tzinfo=UTC))
    return store, view


def _feast_reads(store: FeatureStore) -> dict[str, list]:
    refs = ["product_facts:price", "product_facts:vector"]
    return store.get_online_features(features=refs, entity_rows=[{"sku": i} for i in IDS]).to_dict()


def _decoded(raw: bytes) -> object:
    floats = feast_adapter.packed_floats(raw, 8)
    return floats.tolist() if floats is not None else feast_adapter.python_value(feast_adapter.parse_value(raw))


def test_sqlite_table_and_keys_find_what_feast_wrote(tmp_path):
    store, view = _store(tmp_path, {"type": "sqlite", "path": str(tmp_path / "online.db")})
    config = store.config
    connection = feast_adapter.sqlite_connection(feast_adapter.provider(store).online_store, config)
    table = feast_adapter.sqlite_table(config, view)
    read: dict[str, dict[str, object]] = {}
    for sku in IDS:
        key = feast_adapter.sqlite_entity_key(config, "sku", sku)
        query = f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?'
        read[sku] = {name: _decoded(value) for name, value in connection.execute(query, [key])}
    expected = _feast_reads(store)
    assert [read[sku]["price"] for sku in IDS] == expected["price"]
    np.testing.assert_allclose([read[sku]["vector"] for sku in IDS], expected["vector"])


@pytest.mark.redis
def test_redis_keys_and_fields_find_what_feast_wrote(tmp_path, redis_server):
    online = {"type": "redis", "connection_string": f"{redis_server.host}:{redis_server.port}"}
    store, view = _store(tmp_path, online)
    online_store, config = feast_adapter.provider(store).online_store, store.config
    client = feast_adapter.redis_client(online_store, config)
    fields = feast_adapter.redis_fields(online_store, config, view, ["price", "vector"])
    rows = [client.hmget(feast_adapter.redis_key(online_store, config, "sku", sku), fields) for sku in IDS]
    expected = _feast_reads(store)
    assert [_decoded(price) for price, _vector in rows] == expected["price"]
    np.testing.assert_allclose([_decoded(vector) for _price, vector in rows], expected["vector"])


@pytest.mark.parametrize("dim", [1, 32, 384, 1000])
def test_packed_floats_reads_feast_vector_bytes_exactly(dim):
    """The fast paths read vectors from Feast's serialized Value without the proto; other shapes → None."""
    vector = np.random.default_rng(dim).standard_normal(dim).astype(np.float32)
    raw = Value(float_list_val=FloatList(val=vector.tolist())).SerializeToString()
    np.testing.assert_array_equal(feast_adapter.packed_floats(raw, dim), vector)
    assert feast_adapter.packed_floats(raw, dim + 1) is None  # a view of another dimension
    assert feast_adapter.packed_floats(Value(double_list_val={"val": [1.0] * dim}).SerializeToString(), dim) is None
    assert feast_adapter.packed_floats(Value(string_val="x").SerializeToString(), 1) is None
