"""``kar bench online``: serving-time reads of one user + N candidate items, SQLite vs Redis.

Each request reads one user and ``items`` random candidates through a feature service (``ranking_training``:
profiles + raw 384-d knowledge vectors; ``ranking_serving``: profiles + adapted vectors). Two ways per online
store, on the same store and the same request sequence:

* ``feast``: the bare reference, ``FeatureStore.get_online_features`` once for the user and once for the
  items, converted ``to_dict()`` (what a caller of Feast's SDK gets);
* ``kar``: :class:`kar.serving.online.OnlineLookup`, which resolves the service once and reads the store directly
  (one pipeline on Redis), returning numpy columns.

Rounds alternate the order of the two ways; p50/p99 are over every request of every round, and
``speedup = feast p50 / kar p50``. The Redis server is a private one started for the run on loopback.
Without ``--data`` a generated store is built (random vectors of the views' dimensions): latency does not
depend on the values.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kar.bench.report import Panel, machine, percentiles, write_report
from kar.contracts.errors import DataError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.tables import ADAPTED_DIM, ADAPTED_DIR, KNOWLEDGE_DIM, VECTOR_TABLES, VECTORS_DIR

GOAL_REDIS_P99_MS = 5.0
SERVICES = ("ranking_training", "ranking_serving")
BACKENDS = ("sqlite", "redis")
WAYS = ("feast", "kar")
GENERATED_USERS = 1_000
GENERATED_ITEMS = 2_000
WARMUP = 20


def generate_store(
    root: Path, *, n_users: int = GENERATED_USERS, n_items: int = GENERATED_ITEMS, seed: int = 0
) -> Path:
    """A prepared-like folder with profiles and random knowledge vectors of the views' dimensions."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kar.serving import store

    rng = np.random.default_rng(seed)
    when = datetime(2024, 1, 1, tzinfo=UTC)
    tables = {
        "users": pd.DataFrame(
            {
                "user_id": np.arange(n_users),
                "gender": rng.choice(["F", "M"], n_users),
                "age": rng.integers(18, 70, n_users).astype("int32"),
                "occupation": rng.choice(["writer", "artist", "lawyer", "student"], n_users),
                "zip_code": [f"{z:05d}" for z in rng.integers(0, 99_999, n_users)],
                "event_timestamp": when,
            }
        ),
        "items": pd.DataFrame(
            {
                "item_id": np.arange(n_items),
                "title": [f"Item {i} ({1950 + i % 70})" for i in range(n_items)],
                "genres": [list(rng.choice(["Drama", "Comedy", "Action", "Horror"], 2)) for _ in range(n_items)],
                "year": (1950 + np.arange(n_items) % 70).astype("int32"),
                "description": None,
                "brand": None,
                "event_timestamp": when,
            }
        ),
    }
    for name, frame in tables.items():
        (root / name).mkdir(parents=True)
        frame.to_parquet(root / name / "part-0.parquet", index=False, coerce_timestamps="us")
    dims = {VECTORS_DIR: KNOWLEDGE_DIM, ADAPTED_DIR: ADAPTED_DIM}
    for table in VECTOR_TABLES:
        folder, kind = table.split("/")
        n = n_users if kind == "user" else n_items
        vectors = rng.standard_normal((n, dims[folder])).astype(np.float32)
        columns = {
            "entity_id": np.arange(n),
            "entity_key": [str(i) for i in range(n)],
            "kind": [kind] * n,
            "as_of": [when] * n,
            "model": ["generated"] * n,
            "dim": [dims[folder]] * n,
            "vector": list(vectors),
            "n_chunks": [1] * n,
            "text_hash": [""] * n,
            "has_knowledge": [True] * n,
            "created_at": [when] * n,
        }
        (root / table).mkdir(parents=True)
        pq.write_table(pa.table(columns, schema=store.VECTOR_SCHEMA), root / table / "part-0.parquet")
    return root


def _ways(feature_store: Any, service: str) -> dict[str, Callable[[int, list[int]], Any]]:
    from kar.serving.online import OnlineLookup
    from kar.serving.store import feature_refs

    projections = feature_store.get_feature_service(service).feature_view_projections
    user_refs = feature_refs(feature_store, projections, entity="user")
    item_refs = feature_refs(feature_store, projections, entity="item")

    def feast(user_id: int, item_ids: list[int]) -> Any:
        user = feature_store.get_online_features(features=user_refs, entity_rows=[{"user_id": user_id}])
        items = feature_store.get_online_features(features=item_refs, entity_rows=[{"item_id": i} for i in item_ids])
        return user.to_dict(), items.to_dict()

    lookup = OnlineLookup(feature_store, service=service)

    def kar(user_id: int, item_ids: list[int]) -> Any:
        return lookup.fetch(user_id=user_id, item_ids=item_ids)

    return {"feast": feast, "kar": kar}


def _measure(
    ways: dict[str, Callable[[int, list[int]], Any]], requests: list[tuple[int, list[int]]], rounds: int
) -> dict[str, list[list[float]]]:
    """Latency in ms of every request, per way and round; rounds alternate which way goes first."""
    for way in ways.values():
        for user_id, item_ids in requests[:WARMUP]:
            way(user_id, item_ids)
    latencies: dict[str, list[list[float]]] = {name: [] for name in ways}
    for index in range(rounds):
        order = list(ways) if index % 2 == 0 else list(reversed(ways))
        for name in order:
            way, timings = ways[name], []
            for user_id, item_ids in requests:
                started = time.perf_counter()
                way(user_id, item_ids)
                timings.append((time.perf_counter() - started) * 1e3)
            latencies[name].append(timings)
    return latencies


@contextlib.contextmanager
def online_store_for(backend: str) -> Iterator[dict[str, Any] | None]:
    """The ``online_store`` config for ``backend``: None (SQLite) or a private Redis server for the block."""
    if backend == "sqlite":
        yield None
        return
    from kar.redis_server import RedisServer

    with RedisServer() as server:
        yield server.feast_config()


def bench_online(
    *,
    out: Location,
    data_dir: Location | None = None,
    items: int = 100,
    requests: int = 300,
    rounds: int = 3,
    backends: Sequence[str] = BACKENDS,
    services: Sequence[str] = SERVICES,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure online reads and write ``out`` (JSON) and its PNG; return the result.

    Args:
        out: JSON result file.
        data_dir: A prepared folder with vectors (``kar encode``); a generated one when None.
        items: Candidates per request.
        requests: Requests per round and way.
        rounds: Rounds per way (alternating order).
        backends: Online stores to measure (``sqlite``, ``redis``).
        services: Feature services to read.
        seed: Seed of the request sequence.
        progress: Step callback.
    """
    out = local_path(out, what="out")
    data_dir = optional_local_path(data_dir, what="data")
    from kar.serving import store

    step = progress or silent
    with tempfile.TemporaryDirectory(prefix="kar-bench-online-") as scratch:
        if data_dir is None:
            step("generating a store with random knowledge vectors")
            data_dir = generate_store(Path(scratch) / "prepared")
        step("feast apply")
        store.apply(data_dir=data_dir)
        rng = np.random.default_rng(seed)
        user_ids = entity_ids(data_dir / "users", "user_id")
        item_ids = entity_ids(data_dir / "items", "item_id")
        if items > len(item_ids):
            raise DataError(f"--items {items}: {data_dir} has only {len(item_ids)} items to draw candidates from")
        sequence = [
            (int(rng.choice(user_ids)), [int(i) for i in rng.choice(item_ids, size=items, replace=False)])
            for _ in range(requests)
        ]
        results, panels = [], []
        for backend in backends:
            with online_store_for(backend) as online:
                step(f"materializing into {backend}")
                feature_store = store.materialize(data_dir=data_dir, online_store=online)
                for service in services:
                    step(f"{backend}, {service}: {rounds} rounds × {requests} requests × 2 ways")
                    latencies = _measure(_ways(feature_store, service), sequence, rounds)
                    stats = {way: percentiles([t for timings in latencies[way] for t in timings]) for way in WAYS}
                    results.append({"backend": backend, "service": service, **stats})
                    results[-1]["speedup_p50"] = round(stats["feast"]["p50_ms"] / stats["kar"]["p50_ms"], 2)
                    # A bar per way and percentile; the dots are the rounds' own percentiles.
                    bars = {
                        f"{way} p{q}": [float(np.percentile(timings, q)) for timings in latencies[way]]
                        for q in (50, 99)
                        for way in WAYS
                    }
                    panels.append(Panel(title=f"{backend}, {service}", unit="ms per request", bars=bars))
        redis = [r for r in results if r["backend"] == "redis"]
        worst_redis_p99 = max((r["kar"]["p99_ms"] for r in redis), default=None)
        result = {
            "benchmark": "online",
            "machine": machine(),
            "config": {
                "data": str(data_dir) if data_dir and not str(data_dir).startswith(scratch) else "generated",
                "items_per_request": items,
                "requests_per_round": requests,
                "rounds": rounds,
                "seed": seed,
            },
            "results": results,
            "goal": {"redis_p99_ms_max": GOAL_REDIS_P99_MS, "worst_redis_p99_ms": worst_redis_p99},
            "goal_met": worst_redis_p99 is not None and worst_redis_p99 <= GOAL_REDIS_P99_MS,
        }
        note = f"1 user + {items} items; goal: Redis p99 ≤ {GOAL_REDIS_P99_MS:g} ms (worst: {worst_redis_p99} ms)"
        return write_report(out, result, title="Online feature reads", panels=panels, note=note)


def entity_ids(table: Path, column: str) -> np.ndarray:
    """The distinct ids of ``column`` in a parquet folder."""
    import pyarrow.parquet as pq

    return np.unique(pq.read_table(table, columns=[column]).column(column).to_numpy())
