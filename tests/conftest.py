"""Shared fixtures: one local Spark session for the whole run (JVM start costs ~10 s)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kar.contracts.tables import ADAPTED_DIM, KNOWLEDGE_DIM

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Tests pin "now" so the "timestamp in the future" rule does not depend on the clock.
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import get_spark

    session = get_spark(app_name="kar-tests", master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not available (real MovieLens copies live in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def llm_base_url(tmp_path_factory):
    """One real embedded vLLM CPU server for every `llm` test of the session (start-up costs ~40 s).

    ``KAR_TEST_LLM_BASE_URL`` points the tests at a server already running instead.
    """
    import os

    if url := os.environ.get("KAR_TEST_LLM_BASE_URL"):
        yield url
        return
    from kar.llm import serve_embedded

    server = serve_embedded(log_path=tmp_path_factory.mktemp("llm") / "vllm.log")
    with server:
        yield server.base_url


@pytest.fixture(scope="session")
def tiny_prepared(spark, tmp_path_factory) -> Path:
    """A prepared synthetic folder small enough for real-LLM tests (16 users, 12 items, ~5 ratings each)."""
    from spark_jobs.datasets.synthetic import SyntheticConfig
    from spark_jobs.prepare import prepare

    out = tmp_path_factory.mktemp("tiny") / "prepared"
    prepare(
        spark=spark,
        dataset="synthetic",
        out=out,
        synthetic=SyntheticConfig(n_users=16, n_items=12, min_interactions=3, mean_interactions=5),
        now=NOW,
    )
    return out


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A private Spark standalone cluster for the session: a master and two 1-core workers on loopback, executors
    in their own JVMs (start-up ~15 s), stopped by pid. Its logs stay in the session's temp folder."""
    from kar.spark_cluster import SparkStandaloneCluster

    with SparkStandaloneCluster(
        workers=2, cores=1, memory="2g", log_dir=tmp_path_factory.mktemp("spark-cluster")
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def _redis_process():
    """One private redis-server (from apt) on a free loopback port for the session, stopped by its pid.

    Without ``redis-server`` the tests skip with the install hint, except where ``KAR_REQUIRE_REDIS=1`` (CI):
    there a missing server fails them, so the Redis path is never silently untested.
    """
    import os
    import shutil

    from kar.redis_server import INSTALL_HINT, RedisServer

    if shutil.which("redis-server") is None:
        message = f"redis-server not found: {INSTALL_HINT}"
        if os.environ.get("KAR_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_cluster(_redis_process):
    """A private three-master Redis Cluster on loopback for one test (starts in ~1 s), stopped by pid. Depends on
    ``_redis_process`` for its skip-or-fail rule when redis-server is missing."""
    from kar.redis_server import RedisClusterServers

    with RedisClusterServers() as cluster:
        yield cluster


@pytest.fixture
def redis_server(_redis_process):
    """The session's redis-server, emptied first: Feast skips writes not newer than what a key holds, so rows
    another test materialized under the same project and ids would otherwise survive."""
    import redis

    redis.Redis(host=_redis_process.host, port=_redis_process.port).flushall()
    return _redis_process


KNOWLEDGE_FIELDS = ("user_knowledge", "item_knowledge")


def _vector_table(ids: list[int], as_of: list, *, kind: str, seed: int):
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from kar.serving import store

    rng = np.random.default_rng(seed)
    n = len(ids)
    return pa.table(
        {
            "entity_id": ids,
            "entity_key": [str(i) for i in ids],
            "kind": [kind] * n,
            "as_of": as_of,
            "model": ["test"] * n,
            "dim": [KNOWLEDGE_DIM] * n,
            "vector": list(rng.standard_normal((n, KNOWLEDGE_DIM)).astype(np.float32)),
            "n_chunks": [1] * n,
            "text_hash": [f"{kind}{i}" for i in ids],
            "has_knowledge": [True] * n,
            "created_at": [pd.Timestamp("2030-01-01", tz="UTC")] * n,
        },
        schema=store.VECTOR_SCHEMA,
    )


@pytest.fixture(scope="session")
def knowledge_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny prepared folder with vectors for all but one user and all but one item, a DeepFM trained with
    knowledge on its Feast training frame, and the adapted vectors exported and applied (shared by the export
    and the service tests)."""
    import shutil
    from dataclasses import replace

    import pandas as pd
    import pyarrow.parquet as pq

    from adaptors import AdaptorConfig
    from ctr import train_experiment
    from ctr.config import load_config
    from ctr.features import DenseField
    from kar.pipeline import run_adapt_export
    from kar.serving import store

    root = tmp_path_factory.mktemp("adapt") / "prepared"
    shutil.copytree(tiny_prepared, root, ignore=shutil.ignore_patterns("feast", "vectors", "adapted"))
    cutoffs = pd.read_parquet(root / "knowledge_cutoffs").sort_values("user_id")
    users = cutoffs.iloc[1:]  # the first user has no knowledge
    items = sorted(pd.read_parquet(root / "items")["item_id"].tolist())[1:]
    for kind, table in {
        "user": _vector_table(users["user_id"].tolist(), users["knowledge_cutoff"].tolist(), kind="user", seed=1),
        "item": _vector_table(items, [pd.Timestamp("2000-01-01", tz="UTC")] * len(items), kind="item", seed=2),
    }.items():
        (root / "vectors" / kind).mkdir(parents=True)
        pq.write_table(table, root / "vectors" / kind / "part-0.parquet")
    store.apply(data_dir=root)
    frame = store.training_frame(data_dir=root)

    config = load_config("deepfm_synthetic")
    features = replace(config.features, dense=tuple(DenseField(name=name) for name in KNOWLEDGE_FIELDS))
    config = replace(
        config,
        features=features,
        knowledge=AdaptorConfig(fields=KNOWLEDGE_FIELDS, out_dim=ADAPTED_DIM, hidden=(16,)),
        train=replace(config.train, epochs=2, batch_size=64, num_threads=1),
    )
    run = root.parent / "run"
    train_experiment(frame, config, run)
    exported = run_adapt_export(run_dir=run, data_dir=root)
    store.apply(data_dir=root)
    no_user = int(cutoffs.iloc[0]["user_id"])
    return {"root": root, "run": run, "frame": frame, "exported": exported, "no_user": no_user}
