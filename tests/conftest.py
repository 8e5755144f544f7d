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
