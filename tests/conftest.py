"""Shared fixtures: one local Spark session for the whole run (JVM start costs ~10 s)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

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
    from kar.llm_server import serve_embedded

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
def redis_server(_redis_process):
    """The session's redis-server, emptied first: Feast skips writes not newer than what a key holds, so rows
    another test materialized under the same project and ids would otherwise survive."""
    import redis

    redis.Redis(host=_redis_process.host, port=_redis_process.port).flushall()
    return _redis_process
