"""Knowledge vectors in Feast: point-in-time joins, no lost samples, online round trips, dimension checks."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kar.contracts.errors import DataError
from kar.serving import store
from kar.serving.online import OnlineLookup

T = [datetime(2024, 1, d, tzinfo=UTC) for d in range(1, 9)]
DIM, ADAPTED = 384, 32


def _vectors(rows: list[tuple[int, datetime, datetime]], *, dim: int, seed: int) -> pa.Table:
    """Rows of ``(entity_id, as_of, created_at)`` with random vectors of ``dim``."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    return pa.table(
        {
            "entity_id": [r[0] for r in rows],
            "entity_key": [str(r[0]) for r in rows],
            "kind": ["test"] * n,
            "as_of": [r[1] for r in rows],
            "model": [f"test-{dim}d"] * n,
            "dim": [dim] * n,
            "vector": list(rng.standard_normal((n, dim)).astype(np.float32)),
            "n_chunks": [1] * n,
            "text_hash": [f"h{i}" for i in range(n)],
            "has_knowledge": [True] * n,
            "created_at": [r[2] for r in rows],
        },
        schema=store.VECTOR_SCHEMA,
    )


def _write_table(table: pa.Table, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    path.mkdir(parents=True)
    frame.to_parquet(path / "part-0.parquet", index=False, coerce_timestamps="us")


def _vector(table: pa.Table, row: int) -> np.ndarray:
    return np.asarray(table.column("vector")[row].as_py(), dtype=np.float32)


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory) -> dict:
    """Users 1-3, items 10-12. User 1 has knowledge as of T[2] and T[4] (the T[4] one regenerated: two rows,
    the later ``created_at`` must win); user 2 only from T[6]; user 3 none. Item 10 and 11 have knowledge."""
    root = tmp_path_factory.mktemp("knowledge") / "prepared"
    _write_frame(
        pd.DataFrame(
            {
                "user_id": [1, 2, 3],
                "gender": ["F", "M", "F"],
                "age": pd.array([30, 40, 50], dtype="int32"),
                "occupation": ["writer", "artist", "lawyer"],
                "zip_code": ["1", "2", "3"],
                "event_timestamp": [T[0]] * 3,
            }
        ),
        root / "users",
    )
    _write_frame(
        pd.DataFrame(
            {
                "item_id": [10, 11, 12],
                "title": ["A (1999)", "B (2001)", "C (2003)"],
                "genres": [["Drama"], ["Comedy"], ["Horror"]],
                "year": pd.array([1999, 2001, 2003], dtype="int32"),
                "description": [None, None, None],
                "brand": [None, None, None],
                "event_timestamp": [T[0]] * 3,
            }
        ),
        root / "items",
    )
    tables = {
        "vectors/user": _vectors([(1, T[2], T[7]), (1, T[4], T[5]), (1, T[4], T[6]), (2, T[6], T[7])], dim=DIM, seed=1),
        "vectors/item": _vectors([(10, T[0], T[7]), (11, T[0], T[7])], dim=DIM, seed=2),
        "adapted/user": _vectors([(1, T[4], T[7]), (2, T[6], T[7])], dim=ADAPTED, seed=3),
        "adapted/item": _vectors([(10, T[0], T[7]), (11, T[0], T[7])], dim=ADAPTED, seed=4),
    }
    for name, table in tables.items():
        _write_table(table, root / name)
    store.apply(data_dir=root)
    return {"root": root, **tables}


SAMPLES = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 1, 2, 3],
        "item_id": [10, 11, 12, 10, 10, 11],
        "event_timestamp": [T[1], T[3], T[3], T[5], T[3], T[5]],
        "label": [1, 0, 1, 0, 1, 1],
    }
)


def test_training_set_joins_only_knowledge_from_before_each_sample(knowledge):
    frame = store.training_frame(data_dir=knowledge["root"], samples=SAMPLES)
    users = knowledge["vectors/user"]
    assert frame[["user_id", "item_id", "label"]].equals(SAMPLES[["user_id", "item_id", "label"]])
    # T[1]: before user 1's first cutoff (T[2]) -> nothing; T[3] -> the T[2] answer, not the later T[4] one.
    assert frame["has_user_knowledge"].tolist() == [False, True, True, True, False, False]
    assert not frame.loc[0, "user_knowledge"].any()
    np.testing.assert_array_equal(frame.loc[1, "user_knowledge"], _vector(users, 0))
    np.testing.assert_array_equal(frame.loc[2, "user_knowledge"], _vector(users, 0))
    # T[5]: the T[4] cutoff, and of its two encodings the one created last.
    np.testing.assert_array_equal(frame.loc[3, "user_knowledge"], _vector(users, 2))


def test_training_set_keeps_samples_that_precede_all_knowledge(knowledge):
    """Row count in = out: user 2's sample at T[3] precedes their only vector (T[6]), user 3 has none."""
    frame = store.training_frame(data_dir=knowledge["root"], samples=SAMPLES)
    assert len(frame) == len(SAMPLES)
    for row in (4, 5):
        assert not frame.loc[row, "has_user_knowledge"]
        assert frame.loc[row, "user_knowledge"].shape == (DIM,) and not frame.loc[row, "user_knowledge"].any()
    assert frame["has_item_knowledge"].tolist() == [True, True, False, True, True, True]
    assert frame.loc[2, "item_knowledge"].dtype == np.float32 and not frame.loc[2, "item_knowledge"].any()


def _check_online(feature_store, knowledge: dict) -> None:
    """Online values equal the newest offline rows; unknown ids fall back to zeros + False."""
    users, items = knowledge["vectors/user"], knowledge["vectors/item"]
    lookup = OnlineLookup(feature_store, service=store.TRAINING_SERVICE)
    found = lookup.fetch(user_id=1, item_ids=[11, 10, 12, 999])
    assert found.user["has_user_knowledge"] and found.user["occupation"] == "writer"
    np.testing.assert_array_equal(found.user["user_knowledge"], _vector(users, 2))
    assert found.items["has_item_knowledge"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(found.items["item_knowledge"][0], _vector(items, 1))
    np.testing.assert_array_equal(found.items["item_knowledge"][1], _vector(items, 0))
    assert not found.items["item_knowledge"][2:].any() and found.items["title"][3] is None

    # The same as Feast's own get_online_features path, for both services.
    for service in (store.TRAINING_SERVICE, store.SERVING_SERVICE):
        reference = store.online_features(feature_store, user_id=3, item_ids=[10, 12, 11], service=service)
        fast = OnlineLookup(feature_store, service=service).fetch(user_id=3, item_ids=[10, 12, 11])
        ref_items = reference["items"].set_index("item_id").loc[[10, 12, 11]]
        for column, values in fast.items.items():
            if column == "item_id":
                continue
            expected = ref_items[column].tolist()
            if getattr(values, "ndim", 1) == 2:
                np.testing.assert_array_equal(values, np.stack(expected))
            else:
                assert [None if v is None else v for v in values] == [_plain(v) for v in expected], column
        ref_user = reference["user"].iloc[0]
        for column, value in fast.user.items():
            assert (
                np.array_equal(value, ref_user[column])
                if isinstance(value, np.ndarray)
                else value == _plain(ref_user[column])
            ), column

    # A subset of features (what a ranker reads): only those, a vector with its has_ flag.
    subset = OnlineLookup(feature_store, service=store.TRAINING_SERVICE, features={"occupation", "item_knowledge"})
    assert subset.columns() == {
        "user_id": ["user_id", "occupation"],
        "item_id": ["item_id", "item_knowledge", "has_item_knowledge"],
    }
    part = subset.fetch(user_id=1, item_ids=[11, 999])
    assert part.user["occupation"] == "writer" and part.items["has_item_knowledge"].tolist() == [True, False]

    # Stores without a direct reader go through each view's online_read: the same values.
    for service in (store.TRAINING_SERVICE, store.SERVING_SERVICE):
        direct = OnlineLookup(feature_store, service=service)
        generic = OnlineLookup(feature_store, service=service)
        generic._fast = None
        a, b = (x.fetch(user_id=1, item_ids=[11, 10, 12, 999]) for x in (direct, generic))
        for side_a, side_b in ((a.user, b.user), (a.items, b.items)):
            assert side_a.keys() == side_b.keys()
            for column, value in side_a.items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(value, side_b[column], err_msg=column)
                else:
                    assert value == side_b[column], column


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def test_sqlite_online_store_round_trip_equals_offline(knowledge):
    _check_online(store.materialize(data_dir=knowledge["root"]), knowledge)


@pytest.mark.redis
def test_redis_online_store_round_trip_equals_offline(knowledge, redis_server):
    online = redis_server.feast_config()
    _check_online(store.materialize(data_dir=knowledge["root"], online_store=online), knowledge)


@pytest.mark.redis
def test_redis_cluster_online_store_round_trip_equals_offline(knowledge, redis_cluster):
    """Feast's ``redis_type: redis_cluster``: the one-pipeline read splits by hash slot across the masters."""
    feature_store = store.materialize(data_dir=knowledge["root"], online_store=redis_cluster.feast_config())
    _check_online(feature_store, knowledge)


def test_folder_without_vectors_registers_empty_views(tmp_path, knowledge):
    root = tmp_path / "prepared"
    shutil.copytree(knowledge["root"], root, ignore=shutil.ignore_patterns("vectors", "adapted", "feast"))
    store.apply(data_dir=root)
    frame = store.training_frame(data_dir=root, samples=SAMPLES)
    assert len(frame) == len(SAMPLES) and not frame["has_user_knowledge"].any()
    assert frame["item_knowledge"].map(len).eq(DIM).all()


def test_vectors_of_another_dimension_fail_at_apply_and_materialize(tmp_path, knowledge):
    root = tmp_path / "prepared"
    shutil.copytree(knowledge["root"], root, ignore=shutil.ignore_patterns("feast"))
    store.apply(data_dir=root)
    shutil.rmtree(root / "vectors" / "item")
    _write_table(_vectors([(10, T[0], T[7])], dim=768, seed=5), root / "vectors" / "item")
    message = r"vectors/item: 768-d from model 'test-768d', but feature view 'item_knowledge' declares 384-d"
    with pytest.raises(DataError, match=message):
        store.materialize(data_dir=root)
    with pytest.raises(DataError, match=message):
        store.apply(data_dir=root)


def test_unknown_profile_is_a_clear_error(knowledge):
    with pytest.raises(store.KarError, match=r"no such Feast profile for the example repo \(profiles: spark\)"):
        store.open_store(data_dir=knowledge["root"], profile="nope")


@pytest.mark.spark
def test_spark_offline_store_profile_gives_the_same_training_set(knowledge, spark):
    """The example repo's spark profile: joins run on Feast's Spark offline store, same rows and vectors."""
    store.apply(data_dir=knowledge["root"], profile="spark")
    on_spark = store.training_frame(data_dir=knowledge["root"], samples=SAMPLES, profile="spark")
    on_files = store.training_frame(data_dir=knowledge["root"], samples=SAMPLES)
    assert len(on_spark) == len(SAMPLES)
    for column in ("has_user_knowledge", "has_item_knowledge", "occupation", "title"):
        assert on_spark[column].tolist() == on_files[column].tolist(), column
    for column in ("user_knowledge", "item_knowledge"):
        np.testing.assert_array_equal(np.stack(on_spark[column]), np.stack(on_files[column]))


def test_kerec_view_is_point_in_time_and_only_registered_when_the_folder_has_kerec_vectors(tmp_path, knowledge):
    """LLM-KERec's complementary-entity knowledge (``vectors/kerec``, keyed by item) joins like the others: a
    sample before an item's kerec ``as_of`` does not see it, one at or after does. Without the table, the
    services and frames are exactly as before: no kerec view, no kerec column."""
    plain = store.training_frame(data_dir=knowledge["root"], samples=SAMPLES)
    assert not any("kerec" in column for column in plain.columns)
    plain_store = store.open_store(data_dir=knowledge["root"])
    assert not any("kerec" in v.name for v in plain_store.list_feature_views())

    root = tmp_path / "prepared"
    shutil.copytree(knowledge["root"], root, ignore=shutil.ignore_patterns("feast"))
    # Item 10's complementary entities are known from T[2] (its newest pair), item 11's from T[5].
    kerec = _vectors([(10, T[2], T[7]), (11, T[5], T[7])], dim=DIM, seed=6)
    _write_table(kerec, root / "vectors" / "kerec")
    store.apply(data_dir=root)
    feature_store = store.open_store(data_dir=root)
    training = [p.name for p in feature_store.get_feature_service("ranking_training").feature_view_projections]
    serving = [p.name for p in feature_store.get_feature_service("ranking_serving").feature_view_projections]
    assert "kerec_knowledge" in training and not any("kerec" in name for name in serving)  # nothing adapted yet
    assert feature_store.get_feature_view("kerec_knowledge").tags["kar.role"] == "item"

    frame = store.training_frame(data_dir=root, samples=SAMPLES)
    assert frame[["user_id", "item_id", "label"]].equals(SAMPLES[["user_id", "item_id", "label"]])
    # (10, T[1]) precedes item 10's T[2]; (11, T[3]) precedes item 11's T[5]; item 12 has none;
    # (10, T[5]) and (10, T[3]) follow T[2]; (11, T[5]) is at item 11's as_of, which counts.
    assert frame["has_kerec_knowledge"].tolist() == [False, False, False, True, True, True]
    for row in (0, 1, 2):
        assert frame.loc[row, "kerec_knowledge"].shape == (DIM,) and not frame.loc[row, "kerec_knowledge"].any()
    for row, vector in ((3, 0), (4, 0), (5, 1)):
        np.testing.assert_array_equal(frame.loc[row, "kerec_knowledge"], _vector(kerec, vector))
    # The user and item knowledge join as they did without the kerec view.
    for column in ("user_knowledge", "item_knowledge"):
        np.testing.assert_array_equal(np.stack(frame[column]), np.stack(plain[column]))
    assert frame[["has_user_knowledge", "has_item_knowledge"]].equals(
        plain[["has_user_knowledge", "has_item_knowledge"]]
    )

    # Online, the newest kerec vector per item; an item without one gets zeros and False.
    store.materialize(data_dir=root)
    found = OnlineLookup(feature_store, service=store.TRAINING_SERVICE).fetch(user_id=1, item_ids=[11, 12])
    assert found.items["has_kerec_knowledge"].tolist() == [True, False]
    np.testing.assert_array_equal(found.items["kerec_knowledge"][0], _vector(kerec, 1))
    assert not found.items["kerec_knowledge"][1].any()

    # Without the table again, the next apply drops the kerec view: the folder is back to the four views.
    shutil.rmtree(root / "vectors" / "kerec")
    store.apply(data_dir=root)
    again = store.open_store(data_dir=root)
    assert not any("kerec" in v.name for v in again.list_feature_views())
    assert not any("kerec" in c for c in store.training_frame(data_dir=root, samples=SAMPLES).columns)


TEAM_ENTITIES = """
from feast import Entity, ValueType

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
product = Entity(name="product", join_keys=["sku"], value_type=ValueType.STRING)
"""


def _keyed(table: pa.Table, keys: dict[int, str]) -> pa.Table:
    """The same vectors keyed by a team's string ids (the id map's ``entity_key``)."""
    column = table.schema.get_field_index("entity_key")
    return table.set_column(column, "entity_key", pa.array([keys[i] for i in table.column("entity_id").to_pylist()]))


def test_a_team_repo_scaffolded_over_kerec_vectors_serves_them_under_its_own_keys(tmp_path, knowledge):
    """``kar feast init`` on a team's repo (string join keys of its own) over a folder with LLM-KERec vectors:
    Feast's ``feast apply`` registers the kerec views keyed by the team's item entity, its training service joins
    them point-in-time under the team's keys, and after ``kar adapt export`` wrote ``adapted/kerec`` the serving
    service reads it from the online store."""
    import subprocess
    import sys

    from feast import FeatureStore

    from kar.feast import TEAM_SERVING_SERVICE, TEAM_TRAINING_SERVICE, write_knowledge_file

    customers, products = {1: "C-1", 2: "C-2", 3: "C-3"}, {10: "SKU-010", 11: "SKU-011", 12: "SKU-012"}
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "summary.json").write_text('{"dataset": "table", "id_types": {"user": "string", "item": "string"}}')
    kerec = _keyed(_vectors([(10, T[2], T[7]), (11, T[5], T[7])], dim=DIM, seed=6), products)
    adapted_kerec = _keyed(_vectors([(10, T[2], T[7]), (11, T[5], T[7])], dim=ADAPTED, seed=7), products)
    for name in ("vectors/user", "adapted/user"):
        _write_table(_keyed(knowledge[name], customers), data / name)
    for name in ("vectors/item", "adapted/item"):
        _write_table(_keyed(knowledge[name], products), data / name)
    for role, keys in (("user", customers), ("item", products)):
        id_map = pd.DataFrame({f"{role}_id": list(keys), "raw_id": list(keys.values())})
        _write_frame(id_map, data / "id_maps" / f"{role}s")
    _write_table(kerec, data / "vectors" / "kerec")
    _write_table(adapted_kerec, data / "adapted" / "kerec")
    repo = tmp_path / "shop_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: shop\nregistry: data/registry.db\nprovider: local\n"
        "online_store: {type: sqlite, path: data/online.db}\nentity_key_serialization_version: 3\n"
    )
    (repo / "entities.py").write_text(TEAM_ENTITIES)
    write_knowledge_file(repo=repo, user_entity="customer", item_entity="product", data=data)
    feast = Path(sys.executable).parent / "feast"
    applied = subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stderr[-2000:]

    team = FeatureStore(repo_path=str(repo))
    view = team.get_feature_view("kerec_knowledge")
    assert view.entities == ["product"] and view.tags["kar.role"] == "item"
    training = [p.name for p in team.get_feature_service(TEAM_TRAINING_SERVICE).feature_view_projections]
    serving = [p.name for p in team.get_feature_service(TEAM_SERVING_SERVICE).feature_view_projections]
    assert "kerec_knowledge" in training and "kerec_knowledge_adapted" in serving

    # The training service, joined as a ranker's training reads it (kar's training_frame over Feast's call):
    # SKU-010's complementary entities are known from T[2], SKU-011's from T[5], SKU-012 has none.
    frame = store.training_frame(data_dir=data, repo=repo, service=TEAM_TRAINING_SERVICE, samples=SAMPLES)
    assert frame["sku"].tolist() == [products[i] for i in SAMPLES["item_id"]]
    assert frame["has_kerec_knowledge"].tolist() == [False, False, False, True, True, True]
    for row, vector in ((3, 0), (4, 0), (5, 1)):
        np.testing.assert_array_equal(frame.loc[row, "kerec_knowledge"], _vector(kerec, vector))

    team.materialize(start_date=T[0], end_date=datetime(2025, 1, 1, tzinfo=UTC))
    online = team.get_online_features(
        features=team.get_feature_service(TEAM_SERVING_SERVICE), entity_rows=[{"customer_id": "C-1", "sku": "SKU-011"}]
    ).to_dict()
    assert online["has_kerec_knowledge_adapted"] == [True]
    np.testing.assert_allclose(online["kerec_knowledge_adapted"][0], _vector(adapted_kerec, 1), rtol=1e-6)
