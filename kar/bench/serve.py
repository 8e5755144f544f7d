"""``kar bench serve``: latency and throughput of ``kar serve`` ranking 100 candidates, against its bare parts.

Per online store (SQLite, Redis), on the same store, model and request sequence:

* **bare**: in this process, the bare feature fetch (:class:`kar.serving.online.OnlineLookup`) and the bare forward
  pass of the model on the already-encoded batch, timed separately; their p50s added are the floor a service
  cannot beat;
* **library**: :meth:`kar.serving.scorer.OnlineScorer.rank` in this process (fetch + frame + encoding + forward);
* **http c=N**: ``kar serve`` started as its own process on loopback, hit by N client threads (keep-alive
  connections), a bounded number of requests each level. The service's ``Server-Timing`` header gives the
  fetch and model split of every request.
* **processes**: the HTTP levels once per ``kar serve --processes`` count (1 and 2 by default). The first count
  keeps the keys ``http c=N``; the others are ``http p=P c=N``. ``rps_c8_ratio`` is requests/s at concurrency 8
  (the highest level) with the last count over the first (goal ≥ 1.7 for 2 processes vs 1).

``overhead_p50 = http c=1 p50 / (bare fetch p50 + bare forward p50)``. Without ``--model``/``--data`` the store
is generated (random profiles and vectors) and the model is the bundled synthetic DeepFM with the adaptor,
untrained: latency does not depend on the weights.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kar.bench.online import BACKENDS, entity_ids, generate_store, online_store_for
from kar.bench.report import Panel, machine, percentiles, ratio, write_report
from kar.contracts.errors import KarError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent

GOAL_P99_MS = 20.0
# Requests/s at concurrency 8, 2 processes over 1: 2 would be perfect scaling; the client shares the cores.
GOAL_RPS_RATIO = 1.7
CONCURRENCY = (1, 8)
PROCESSES = (1, 2)
WARMUP = 30
GENERATED_MODEL = "deepfm_synthetic"

Request = tuple[int, list[int], list[int]]  # user, candidates, history


def generated_run(data_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """An untrained ranker (bundled synthetic DeepFM + adaptor) whose encoder knows the generated store's ids."""
    import pandas as pd
    import torch

    from adaptors import save_adaptor
    from ctr.config import load_config
    from ctr.features import Encoder
    from ctr.models import build_model
    from ctr.runs import TORCH_MODEL_FILE, prepare_run_dir

    config = load_config(GENERATED_MODEL)
    users = pd.read_parquet(data_dir / "users")
    items = pd.read_parquet(data_dir / "items")
    rng = np.random.default_rng(seed)
    n = max(len(users), len(items))
    # Every user and every item at least once, so each has an id; the pairs need not mean anything.
    sides = [t.iloc[np.arange(n) % len(t)].reset_index(drop=True) for t in (users, items)]
    frame = pd.concat([side.drop(columns="event_timestamp") for side in sides], axis=1)
    frame["hist_item_ids"] = [list(rng.choice(items["item_id"], 10)) for _ in range(n)]
    for field in config.knowledge.fields if config.knowledge else ():
        frame[field] = list(rng.standard_normal((n, 384)).astype(np.float32))
    encoder = Encoder.fit(frame, spec=config.features)
    torch.manual_seed(seed)
    model = build_model(
        config.model, layout=encoder.layout, knowledge=config.knowledge, inputs=config.inputs, **config.model_params
    )
    run = prepare_run_dir(out_dir, config=config, encoder=encoder)
    torch.save(model.state_dict(), run / TORCH_MODEL_FILE)
    if config.knowledge is not None:
        save_adaptor(model.adaptor, config=config.knowledge, inputs=model.adaptor.inputs, run_dir=run)
    return run


def _requests(data_dir: Path, *, n: int, items: int, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    user_ids = entity_ids(data_dir / "users", "user_id")
    item_ids = entity_ids(data_dir / "items", "item_id")
    return [
        (
            int(rng.choice(user_ids)),
            [int(i) for i in rng.choice(item_ids, size=items, replace=False)],
            [int(i) for i in rng.choice(item_ids, size=10)],
        )
        for _ in range(n)
    ]


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e3


def _in_process(scorer: Any, requests: Sequence[Request]) -> dict[str, list[float]]:
    """Bare fetch, bare forward (on the encoded batch) and the library's rank, per request, in ms."""
    from ctr.trainer import torch_threads

    out: dict[str, list[float]] = {"bare fetch": [], "bare forward": [], "library": []}
    warmup = requests[:WARMUP]
    with torch_threads(1):  # as in the service (`kar serve --threads 1`)
        for index, request in enumerate([*warmup, *requests]):
            timings = _time_parts(scorer, request)
            if index >= len(warmup):
                for name, ms in timings.items():
                    out[name].append(ms)
    return out


def _time_parts(scorer: Any, request: Request) -> dict[str, float]:
    import torch

    from ctr.trainer import to_tensors

    user, candidates, history = request
    features = scorer.fetch(user_id=user, item_ids=candidates)
    batch = to_tensors(scorer.ranker.encode(features.candidates_frame(hist_item_ids=history)))
    with torch.inference_mode():
        return {
            "bare fetch": _timed(lambda: scorer.fetch(user_id=user, item_ids=candidates)),
            "bare forward": _timed(lambda: scorer.ranker.model(batch)),
            "library": _timed(
                lambda: scorer.rank(user_id=user, item_ids=candidates, context={"hist_item_ids": history})
            ),
        }


def _server_timing(header: str) -> dict[str, float]:
    parts = (part.strip().split(";dur=") for part in header.split(","))
    return {name: float(ms) for name, ms in parts}


def _http(url: str, headers: dict[str, str], requests: Sequence[Request], concurrency: int) -> dict[str, Any]:
    """Send ``requests`` with ``concurrency`` client threads; latencies, stage times and requests/s."""
    import httpx

    def body(request: Request) -> dict[str, Any]:
        user, candidates, history = request
        return {"user_id": user, "item_ids": candidates, "context": {"hist_item_ids": history}}

    with httpx.Client(headers=headers, timeout=30.0) as client:
        for request in requests[:WARMUP]:
            client.post(f"{url}/rank", json=body(request)).raise_for_status()
    queue = iter(list(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    stages: dict[str, list[float]] = {"fetch": [], "model": []}
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(headers=headers, timeout=30.0) as client:
            while True:
                with lock:
                    request = next(queue, None)
                if request is None:
                    return
                started = time.perf_counter()
                response = client.post(f"{url}/rank", json=body(request))
                ms = (time.perf_counter() - started) * 1e3
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    latencies.append(ms)
                    for name, value in _server_timing(response.headers["server-timing"]).items():
                        stages[name].append(value)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "latencies": latencies,
        "stages": stages,
        "requests_per_s": round(len(latencies) / wall, 1),
        "errors": errors,
    }


def bench_serve(
    *,
    out: Location,
    model_dir: Location | None = None,
    data_dir: Location | None = None,
    items: int = 100,
    requests: int = 300,
    concurrency: Sequence[int] = CONCURRENCY,
    backends: Sequence[str] = BACKENDS,
    workers: int = 2,
    processes: Sequence[int] = PROCESSES,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``kar serve`` and its bare parts; write ``out`` (JSON) and its PNG; return the result.

    Args:
        out: JSON result file.
        model_dir: A torch run (``kar train``); an untrained bundled DeepFM over a generated store when None.
        data_dir: The prepared folder of ``model_dir`` with adapted vectors (``kar adapt export``).
        items: Candidates per request.
        requests: Requests per measured level (after a warm-up).
        concurrency: Client threads per HTTP level.
        backends: Online stores (``sqlite``, ``redis``).
        workers: The service's scoring threads per process.
        processes: ``kar serve --processes`` counts, each measured at every concurrency level; the first
            gives the ``http c=N`` keys, ``rps_c8_ratio`` compares the last with the first.
        seed: Seed of the request sequence.
        progress: Step callback.
    """
    out = local_path(out, what="out")
    data_dir = optional_local_path(data_dir, what="data")
    model_dir = optional_local_path(model_dir, what="model")
    from kar.serving import store
    from kar.serving.scorer import OnlineScorer
    from kar.serving.service import ServiceProcess

    step = progress or silent
    if (model_dir is None) != (data_dir is None):
        raise KarError("pass --model and --data together (or neither, for a generated store and model)")
    if not processes or min(processes) < 1 or len(set(processes)) != len(processes):
        raise KarError(f"--processes takes distinct positive counts, e.g. 1,2; got {list(processes)}")
    top = max(concurrency)
    with tempfile.TemporaryDirectory(prefix="kar-bench-serve-") as scratch:
        generated = data_dir is None
        if generated:
            step("generating a store with random profiles and vectors, and an untrained DeepFM")
            data_dir = generate_store(Path(scratch) / "prepared")
            model_dir = generated_run(data_dir, Path(scratch) / "run", seed=seed)
        assert data_dir is not None and model_dir is not None
        step("feast apply")
        store.apply(data_dir=data_dir)
        sequence = _requests(data_dir, n=requests, items=items, seed=seed)
        results, panels = [], []
        for backend in backends:
            with online_store_for(backend) as online:
                step(f"{backend}: materializing")
                feature_store = store.materialize(data_dir=data_dir, online_store=online)
                step(f"{backend}: bare fetch, bare forward and the library, {requests} requests")
                scorer = OnlineScorer.from_run(model_dir=model_dir, store=feature_store)
                local = _in_process(scorer, sequence)
                row: dict[str, Any] = {"backend": backend, **{k: percentiles(v) for k, v in local.items()}}
                redis = online["connection_string"] if online else None
                extra = ["--workers", str(workers)]
                by_processes = []
                for count in processes:
                    prefix = "http " if count == processes[0] else f"http p={count} "
                    with ServiceProcess(
                        model_dir=model_dir, data_dir=data_dir, redis=redis, extra_args=extra, processes=count
                    ) as service:
                        for level in concurrency:
                            step(f"{backend}: kar serve --processes {count}, concurrency {level}, {requests} requests")
                            measured = _http(service.url, service.headers, sequence, level)
                            row[f"{prefix}c={level}"] = {
                                **percentiles(measured["latencies"]),
                                "requests_per_s": measured["requests_per_s"],
                                "server_fetch_p50_ms": percentiles(measured["stages"]["fetch"])["p50_ms"],
                                "server_model_p50_ms": percentiles(measured["stages"]["model"])["p50_ms"],
                                "errors": len(measured["errors"]),
                            }
                            local[f"{count}p c={level}"] = measured["latencies"]  # a short bar label
                    single = row[f"{prefix}c={concurrency[0]}"]
                    by_processes.append(
                        {
                            "processes": count,
                            f"requests_per_s_c{top}": row[f"{prefix}c={top}"]["requests_per_s"],
                            f"p50_ms_c{concurrency[0]}": single["p50_ms"],
                            f"p99_ms_c{concurrency[0]}": single["p99_ms"],
                        }
                    )
                floor = row["bare fetch"]["p50_ms"] + row["bare forward"]["p50_ms"]
                first = row[f"http c={concurrency[0]}"]
                row["overhead_p50"] = round(first["p50_ms"] / floor, 2)
                row["goal_met"] = first["p99_ms"] <= GOAL_P99_MS if concurrency[0] == 1 else None
                row["processes"] = by_processes
                rps = [entry[f"requests_per_s_c{top}"] for entry in by_processes]
                scaling = ratio(rps[-1], rps[0]) if len(rps) > 1 else None
                row["rps_c8_ratio"] = None if scaling is None else round(scaling, 2)
                row["rps_goal_met"] = None if scaling is None else scaling >= GOAL_RPS_RATIO
                results.append(row)
                panels.extend(_panels(backend, local))
                if len(rps) > 1:
                    panels.append(_throughput_panel(backend, by_processes, top))
        result = {
            "benchmark": "serve",
            "machine": machine(),
            "config": {
                "model": "generated (untrained deepfm_synthetic)" if generated else str(model_dir),
                "data": "generated" if generated else str(data_dir),
                "items_per_request": items,
                "requests_per_level": requests,
                "concurrency": list(concurrency),
                "workers": workers,
                "processes": list(processes),
                "seed": seed,
            },
            "results": results,
            "goal": {"p99_ms_max_at_concurrency_1": GOAL_P99_MS, "rps_c8_ratio_min": GOAL_RPS_RATIO},
            # The p99 goal at concurrency 1, with the first processes count (1 by default).
            "goal_met": all(r["goal_met"] for r in results),
        }
        ratios = [r["rps_c8_ratio"] for r in results if r["rps_c8_ratio"] is not None]
        result["rps_c8_ratio"] = min(ratios) if ratios else None  # the worst store's
        result["rps_goal_met"] = result["rps_c8_ratio"] >= GOAL_RPS_RATIO if ratios else None
        worst = max(r[f"http c={concurrency[0]}"]["p99_ms"] for r in results)
        note = f"1 user + {items} items; goal: p99 ≤ {GOAL_P99_MS:g} ms at c=1 (worst {worst:.1f} ms)"
        if ratios:
            note += (
                f"; req/s at c={top}, {processes[-1]} vs {processes[0]} processes: {result['rps_c8_ratio']:.2f}× "
                f"(goal ≥ {GOAL_RPS_RATIO:g})"
            )
        return write_report(out, result, title="kar serve: POST /rank", panels=panels, note=note)


def _panels(backend: str, latencies: dict[str, list[float]]) -> list[Panel]:
    """A p50 and a p99 panel per store, a bar per way (bare parts, library, HTTP levels as ``2p c=8``: 2 processes,
    concurrency 8)."""
    return [
        Panel(
            title=f"{backend}: p{q}",
            unit="ms per request",
            bars={name.removeprefix("bare "): [float(np.percentile(v, q))] for name, v in latencies.items()},
        )
        for q in (50, 99)
    ]


def _throughput_panel(backend: str, by_processes: list[dict[str, Any]], level: int) -> Panel:
    """Requests/s at the highest concurrency, a bar per ``kar serve --processes`` count."""
    return Panel(
        title=f"{backend}: throughput at c={level}",
        unit="requests/s",
        bars={
            f"{e['processes']} process{'es' if e['processes'] > 1 else ''}": [e[f"requests_per_s_c{level}"]]
            for e in by_processes
        },
    )
