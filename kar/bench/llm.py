"""``kar bench llm``: the knowledge job's LLM step against a bare async load generator on the same server.

The question is what the Spark job costs on top of the server: partitioning, one async client per task,
retries, the cache anti-join and the parquet cache writes. Both sides send byte-identical request bodies
(the same item prompts, system message and sampling parameters) to the same server with the same number
of requests in flight — the job runs ``tasks`` Spark tasks × ``concurrency`` per task, the generator
``tasks × concurrency`` over one ``httpx.AsyncClient`` — so ``ratio = ours / bare`` (prompts/s, medians over
rounds) is the job's efficiency and does not depend on the hardware. Greedy decoding makes both sides
generate the same tokens, which the per-round ``tokens_out`` shows.

Rounds alternate which side goes first (bare, ours; then ours, bare; …) so a drift in the host's load
does not favour one side. Every round of the job uses a fresh answer cache (every prompt is a miss); the
cached rerun then repeats the last round's job on its cache, where no prompt reaches the LLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kar.bench.report import Panel, machine, median, ratio, write_report
from kar.contracts.errors import DataError, KarError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.llm.server import EMBEDDED_BLOCK_SIZE

GOAL = 0.95
SCENARIO = "movies"
# Prompts the job answers once before the measured rounds: starts Spark's Python workers and the task path.
WARMUP_PROMPTS = 4
SIDES = ("bare", "ours")
KINDS = ("item", "user")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
    """One timed run of one side over all prompts.

    Attributes:
        prompts: Prompts the run was given.
        seconds: Wall time of the run.
        tokens_out: Completion tokens the server reported.
        errors: Prompts without a usable HTTP answer (bare) or with an ``error`` row (ours).
        calls: LLM calls the job made (ours only; ``None`` for the bare generator).
        llm_seconds: The part of ``seconds`` spent in the Spark tasks that call the LLM (ours only); the rest
            is the job's driver side: cache lookup, anti-join and counts.
    """

    prompts: int
    seconds: float
    tokens_out: int
    errors: int = 0
    calls: int | None = None
    llm_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "seconds": round(self.seconds, 3),
            "prompts_per_s": round(self.prompts / self.seconds, 4),
            "tokens_out": self.tokens_out,
            "tokens_per_s": round(self.tokens_out / self.seconds, 2),
            "errors": self.errors,
        }
        if self.calls is not None:
            row["calls"] = self.calls
        if self.llm_seconds is not None:
            row["llm_seconds"] = round(self.llm_seconds, 3)
        return row


def chat_body(
    *,
    model: str,
    system: str,
    prompt: str,
    params: Mapping[str, Any],
    json_schema: str | None = None,
    structured_output: bool = True,
) -> dict[str, Any]:
    """The chat-completions body the bare generator posts, built here rather than by ``LLMClient``.

    Built independently on purpose: the benchmark must not inherit a bug of the code it measures; a test
    checks that it equals ``LLMClient.body`` for the same prompt.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
    }
    body.update(params)
    if json_schema is not None and structured_output:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": json.loads(json_schema)},
        }
    return body


async def generate_load(
    bodies: Sequence[Mapping[str, Any]], *, base_url: str, headers: Mapping[str, str], in_flight: int, timeout_s: float
) -> tuple[Measurement, list[str]]:
    """Post every body with at most ``in_flight`` requests open: the least a client can do.

    No retries, no cache, no bookkeeping; a failed request counts as an error.

    Returns:
        The measurement and the answer texts (in body order; empty for errors).
    """
    gate = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=None)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))

    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"), headers=dict(headers), timeout=timeout, limits=limits
    ) as http:

        async def post(body: Mapping[str, Any]) -> tuple[str, int] | None:
            async with gate:
                try:
                    response = await http.post("/chat/completions", json=body)
                except httpx.HTTPError:
                    return None
            if response.status_code != 200:
                return None
            payload = response.json()
            text = payload["choices"][0]["message"].get("content") or ""
            return text, int((payload.get("usage") or {}).get("completion_tokens") or 0)

        started = time.perf_counter()
        answers = await asyncio.gather(*(post(body) for body in bodies))
        seconds = time.perf_counter() - started
    done = [a for a in answers if a is not None]
    measurement = Measurement(
        prompts=len(bodies),
        seconds=seconds,
        tokens_out=sum(tokens for _, tokens in done),
        errors=len(bodies) - len(done),
    )
    return measurement, [a[0] if a else "" for a in answers]


def identical_share(first: Sequence[str], second: Sequence[str]) -> float:
    """Share of answers both runs gave word for word (as multisets: the job's order is by cache key)."""
    if not first:
        return 0.0
    overlap = Counter(first) & Counter(second)
    return round(sum(overlap.values()) / len(first), 4)


def summarize(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per side and ``ratio`` = median(ours prompts/s) / median(bare prompts/s)."""
    sides = {
        side: {
            metric: round(median([r[side][metric] for r in rounds]), 4) for metric in ("prompts_per_s", "tokens_per_s")
        }
        for side in SIDES
    }
    value = ratio(sides["ours"]["prompts_per_s"], sides["bare"]["prompts_per_s"])
    return {**sides, "ratio": None if value is None else round(value, 4)}


def command_line(
    *,
    out: Path,
    data_dir: Path | None,
    kind: str = "item",
    prompts: int,
    concurrency: int,
    rounds: int,
    base_url: str | None,
    model: str | None,
    max_tokens: int | None,
    block_size: int | None = None,
    master: str | None,
) -> str:
    """The ``kar bench llm`` line that reruns this benchmark."""
    args = ["kar", "bench", "llm", "--out", str(out)]
    options = {
        "--data": data_dir,
        "--kind": None if kind == "item" else kind,
        "--prompts": prompts,
        "--concurrency": concurrency,
        "--rounds": rounds,
        "--endpoint": base_url,
        "--model": model,
        "--max-tokens": max_tokens,
        "--block-size": block_size,
        "--master": master,
    }
    for flag, value in options.items():
        if value is not None:
            args += [flag, str(value)]
    return shlex.join(args)


class _Detail:
    """Shows the job's own messages on the benchmark's live line instead of as steps of their own."""

    def __init__(self, step: Progress) -> None:
        self._detail = getattr(step, "detail", None)

    def __call__(self, message: str) -> None:
        if self._detail is not None:
            self._detail(message)

    detail = __call__


def _check_args(*, prompts: int, concurrency: int, rounds: int, max_tokens: int | None) -> None:
    for name, value in (("prompts", prompts), ("concurrency", concurrency), ("rounds", rounds)):
        if value < 1:
            raise DataError(f"bench llm: --{name} must be at least 1, got {value}")
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"bench llm: --max-tokens must be at least 1, got {max_tokens}")


def _prepared_data(data_dir: Path | None, *, scratch: Path, prompts: int, master: str | None, step: Progress) -> Path:
    if data_dir is not None:
        return data_dir
    from kar.pipeline import run_prepare
    from spark_jobs.datasets.synthetic import SyntheticConfig

    out = scratch / "prepared"
    # Only item prompts are asked, so users are few; the generator needs mean ≤ n_items / 2 ratings per user.
    synthetic = SyntheticConfig(n_users=50, n_items=max(prompts, 40), mean_interactions=20)
    run_prepare(dataset="synthetic", out=out, synthetic=synthetic, master=master, progress=step)
    return out


def _prompt_frame(
    spark: Any, data_dir: Path, *, kind: str, scenario: Any, tokenizer: Path | None, limit: int
) -> tuple[Any, list[Any]]:
    """The first ``limit`` sendable prompts of ``kind`` (by entity id, then cutoff), as rows and as a small
    in-memory DataFrame.

    Both sides get these rows; the job gets them already built, so prompt rendering is not timed.
    """
    from pyspark.sql import functions as F

    from spark_jobs.knowledge.prompts import item_prompts, user_prompts

    if kind == "user":
        built, order = user_prompts(spark, data_dir, scenario=scenario, tokenizer=tokenizer), ["user_id", "as_of"]
    else:
        built, order = item_prompts(spark, data_dir, scenario=scenario, kind="item", tokenizer=tokenizer), ["item_id"]
    rows = built.filter(~F.col("over_budget")).orderBy(*order).limit(limit).collect()
    if not rows:
        raise DataError(f"{data_dir}: no {kind} prompt within the token budget; nothing to benchmark")
    return spark.createDataFrame(rows, schema=built.schema), rows


def _bare(bodies: Sequence[Mapping[str, Any]], *, endpoint: Any, in_flight: int) -> tuple[Measurement, list[str]]:
    measured, texts = asyncio.run(
        generate_load(
            bodies,
            base_url=endpoint.base_url,
            headers=endpoint.headers(),
            in_flight=in_flight,
            timeout_s=endpoint.timeout_s,
        )
    )
    if measured.errors == measured.prompts:
        raise KarError(f"bench llm: the server at {endpoint.base_url} answered none of {measured.prompts} requests")
    return measured, texts


def _ours(spark: Any, frame: Any, *, kind: str, spec: Any, job: Any, step: Progress) -> tuple[Measurement, list[str]]:
    """Time ``answer_prompts`` (cache anti-join, Spark tasks calling the LLM, cache writes) on ``job``'s cache."""
    from spark_jobs.knowledge.job import answer_prompts

    started = time.perf_counter()
    _, stats = answer_prompts(spark, frame, kind=kind, spec=spec, job=job, progress=_Detail(step))
    seconds = time.perf_counter() - started
    answers = job.cache().read(columns=["status", "text"]).to_pylist()
    measured = Measurement(
        prompts=stats["prompts"],
        seconds=seconds,
        tokens_out=stats["tokens_out"],
        errors=sum(a["status"] == "error" for a in answers),
        calls=stats["calls"],
        llm_seconds=stats["llm_seconds"],
    )
    return measured, [a["text"] or "" for a in answers]


def _round(
    index: int, *, run: Mapping[str, Callable[[], tuple[Measurement, list[str]]]], step: Progress, total: int
) -> dict[str, Any]:
    """One round: both sides, the first one alternating with the round number."""
    order = SIDES if index % 2 == 0 else SIDES[::-1]
    measured, texts = {}, {}
    for side in order:
        step(f"round {index + 1}/{total}: {'bare load generator' if side == 'bare' else 'knowledge job'}")
        measured[side], texts[side] = run[side]()
    return {
        "round": index + 1,
        "order": list(order),
        **{side: measured[side].to_json() for side in SIDES},
        "identical_answers": identical_share(texts["bare"], texts["ours"]),
    }


def _chart(result: Mapping[str, Any]) -> tuple[str, list[Panel], str]:
    rounds = result["rounds"]
    per_side = {side: [r[side]["prompts_per_s"] for r in rounds] for side in SIDES}
    tokens = {side: [r[side]["tokens_per_s"] for r in rounds] for side in SIDES}
    panels = [
        Panel(title="LLM step throughput", unit="prompts/s", bars=per_side),
        Panel(title="server generation", unit="completion tokens/s", bars=tokens),
        Panel(
            title="first pass (prompts new to the server)",
            unit="prompts/s",
            bars={"bare": [result["first_pass"]["prompts_per_s"]]},
        ),
        Panel(
            title="job, cached rerun (0 LLM calls)",
            unit="prompts/s",
            bars={"cached": [result["cached_rerun"]["prompts_per_s"]]},
        ),
    ]
    shown = "n/a" if result["ratio"] is None else f"{result['ratio']:.3f}"
    note = (
        f"ours/bare = {shown} (goal ≥ {GOAL}) · {result['prompts']} {result['kind']} prompts, "
        f"{result['in_flight']} in flight, max_tokens {result['max_tokens']}, {result['machine']['cpus']} CPUs · "
        f"first-pass prefix-cache hit rate {hit_rate_text(result['first_pass'])}"
        f" (block size {result['server']['block_size'] or 'server default'})"
    )
    return f"kar bench llm: {result['server']['model']}", panels, note


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Setup:
    """What both sides share: the server, the prompts (as Spark rows and as request bodies) and the load."""

    spark: Any
    kind: str
    frame: Any
    bodies: list[dict[str, Any]]
    spec: Any
    endpoint: Any
    model: str
    data: Path
    scratch: Path
    tasks: int
    in_flight: int

    @classmethod
    def build(
        cls,
        spark: Any,
        *,
        kind: str,
        data: Path,
        scratch: Path,
        endpoint: Any,
        model: str,
        tokenizer: Path | None,
        prompts: int,
        max_tokens: int | None,
        step: Progress,
    ) -> _Setup:
        from spark_jobs.knowledge.config import load_scenario

        scenario = load_scenario(SCENARIO)
        spec = scenario.user if kind == "user" else scenario.item
        if max_tokens is not None:
            spec = dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, max_tokens=max_tokens))
        step(f"building {prompts} {kind} prompts")
        frame, rows = _prompt_frame(spark, data, kind=kind, scenario=scenario, tokenizer=tokenizer, limit=prompts)
        params = spec.sampling.to_request()
        bodies = [
            chat_body(
                model=model,
                system=r["system"],
                prompt=r["prompt"],
                params=params,
                json_schema=r["json_schema"],
                structured_output=endpoint.structured_output,
            )
            for r in rows
        ]
        # The job runs one task per core by default; the generator gets the same total in flight.
        tasks = spark.sparkContext.defaultParallelism
        return cls(
            spark=spark,
            kind=kind,
            frame=frame,
            bodies=bodies,
            spec=spec,
            endpoint=endpoint,
            model=model,
            data=data,
            scratch=scratch,
            tasks=tasks,
            in_flight=tasks * endpoint.max_concurrency,
        )

    def job(self, name: str) -> Any:
        """A knowledge job with its own (so far empty) answer cache under the scratch folder."""
        from spark_jobs.knowledge.job import KnowledgeJob

        return KnowledgeJob(
            data_dir=self.data,
            out=self.scratch / name,
            endpoint=self.endpoint,
            model=self.model,
            cache_dir=self.scratch / name / "cache",
            tasks=self.tasks,
        )

    def task_sizes(self) -> list[int]:
        """Prompts per Spark task as the job splits them (round-robin: equal up to one), largest first."""
        n, tasks = len(self.bodies), self.tasks
        return [n // tasks + (1 if i < n % tasks else 0) for i in range(tasks)]


def _measure(setup: _Setup, *, rounds: int, step: Progress) -> tuple[dict[str, Any], list[dict[str, Any]], Measurement]:
    """First pass, warm-up, then ``rounds`` rounds of both sides, then the job's cached rerun on the last round's
    cache."""
    step("first pass: every prompt new to the server (bare generator, prefix-cache counters)")
    first = _first_pass(setup)
    step("warm-up (not measured)")
    # Every prompt's prefill once (max_tokens 1), so the server's prefix cache is equally warm for the side
    # that goes first and the side that goes second; then a few prompts through the job.
    _bare([{**b, "max_tokens": 1} for b in setup.bodies], endpoint=setup.endpoint, in_flight=setup.in_flight)
    warm_frame = setup.frame.limit(min(WARMUP_PROMPTS, len(setup.bodies)))
    _ours(setup.spark, warm_frame, kind=setup.kind, spec=setup.spec, job=setup.job("warmup"), step=step)
    measured = []
    for index in range(rounds):
        run = {
            "bare": lambda: _bare(setup.bodies, endpoint=setup.endpoint, in_flight=setup.in_flight),
            "ours": lambda i=index: _ours(
                setup.spark, setup.frame, kind=setup.kind, spec=setup.spec, job=setup.job(f"round-{i + 1}"), step=step
            ),
        }
        measured.append(_round(index, run=run, step=step, total=rounds))
    step("cached rerun")
    cached, _ = _ours(
        setup.spark, setup.frame, kind=setup.kind, spec=setup.spec, job=setup.job(f"round-{rounds}"), step=step
    )
    return first, measured, cached


def _first_pass(setup: _Setup) -> dict[str, Any]:
    """The bare generator over prompts the server has not seen (on a freshly started server), with the share of
    prompt tokens its prefix cache served: what a knowledge job's new prompts get."""
    before = prefix_cache_counters(setup.endpoint.base_url, headers=setup.endpoint.headers())
    measured, _ = _bare(setup.bodies, endpoint=setup.endpoint, in_flight=setup.in_flight)
    after = prefix_cache_counters(setup.endpoint.base_url, headers=setup.endpoint.headers())
    row = measured.to_json()
    if before is not None and after is not None:
        queries, hits = after[0] - before[0], after[1] - before[1]
        row["prefix_cache"] = {
            "query_tokens": int(queries),
            "hit_tokens": int(hits),
            "hit_rate": round(hits / queries, 4) if queries else None,
        }
    return row


def hit_rate_text(first_pass: Mapping[str, Any]) -> str:
    """The first pass's prefix-cache hit rate as a percentage, or ``n/a`` when the server exports no counters."""
    hit_rate = (first_pass.get("prefix_cache") or {}).get("hit_rate")
    return "n/a" if hit_rate is None else f"{hit_rate:.1%}"


def prefix_cache_counters(base_url: str, *, headers: Mapping[str, str] | None = None) -> tuple[float, float] | None:
    """``(queried, hit)`` prompt tokens of a vLLM server's prefix cache so far, from its Prometheus ``/metrics``;
    ``None`` when the server exports no such counters (not vLLM, or metrics off)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(f"{root}/metrics", headers=dict(headers or {}), timeout=10.0)
    except httpx.HTTPError:
        return None
    return parse_prefix_cache(response.text) if response.status_code == 200 else None


def parse_prefix_cache(exposition: str) -> tuple[float, float] | None:
    """``(queried, hit)`` tokens from vLLM's ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` counters in
    a Prometheus text exposition, summed over engines; ``None`` when neither is there."""
    totals = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    seen = False
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        metric = name.split("{", 1)[0].removesuffix("_total")
        if metric in totals:
            totals[metric] += float(value.split()[0])
            seen = True
    return (totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]) if seen else None


def bench_llm(
    *,
    out: Location,
    data_dir: Location | None = None,
    kind: str = "item",
    prompts: int = 64,
    concurrency: int = 8,
    rounds: int = 2,
    base_url: str | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    block_size: int | None = None,
    master: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Benchmark the knowledge job's LLM step against a bare load generator (see the module docstring).

    Args:
        out: JSON result file; the chart goes next to it as ``<stem>.png``.
        data_dir: Prepared folder whose first ``prompts`` items (users) by id are asked; ``None`` prepares a
            small synthetic one in a scratch folder next to ``out`` (removed afterwards).
        kind: ``item`` (KAR factual knowledge) or ``user`` (preference reasoning over the history).
        prompts: Prompts per run.
        concurrency: Requests in flight per Spark task (the generator gets tasks × this).
        rounds: Measured rounds per side (after an unmeasured warm-up).
        base_url: OpenAI-compatible server; ``None`` takes ``$KAR_LLM_BASE_URL`` or starts the embedded one.
        model: Model id (default: the server's first).
        max_tokens: Overrides the scenario's ``max_tokens`` to keep a run short.
        block_size: KV-cache block size of the embedded server (tokens; the prefix cache reuses whole blocks);
            ``None`` is the embedded default. Not allowed with ``base_url``.
        master: Spark master (default: env or ``local[*]``).
        progress: Step callback.

    Returns:
        The result as written to ``out``.

    Raises:
        DataError: Bad arguments or a prepared folder without usable prompts of ``kind``.
        KarError: The server failed, or the cached rerun still called the LLM.
    """
    out = local_path(out, what="out")
    data_dir = optional_local_path(data_dir, what="data")
    from kar.pipeline import llm_endpoint
    from spark_jobs.session import get_spark

    _check_args(prompts=prompts, concurrency=concurrency, rounds=rounds, max_tokens=max_tokens)
    step = progress or silent
    embedded = not (base_url or os.environ.get("KAR_LLM_BASE_URL"))  # as llm_endpoint decides
    if kind not in KINDS:
        raise DataError(f"bench llm: --kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if block_size is not None and not embedded:
        raise DataError("bench llm: --block-size sets the embedded server's KV blocks; an --endpoint has its own")
    started_at, started = datetime.now(UTC), time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent)))
        data = _prepared_data(data_dir, scratch=scratch, prompts=prompts, master=master, step=step)
        endpoint, model_id, tokenizer = stack.enter_context(
            llm_endpoint(base_url=base_url, model=model, concurrency=concurrency, block_size=block_size, progress=step)
        )
        step("starting Spark")
        spark = get_spark(app_name="kar-bench-llm", master=master)
        setup = _Setup.build(
            spark,
            kind=kind,
            data=data,
            scratch=scratch,
            endpoint=endpoint,
            model=model_id,
            tokenizer=tokenizer,
            prompts=prompts,
            max_tokens=max_tokens,
            step=step,
        )
        first, measured, cached = _measure(setup, rounds=rounds, step=step)
        result = {
            "benchmark": "llm",
            "server": {
                "base_url": endpoint.base_url,
                "model": model_id,
                "embedded": embedded,
                "block_size": (block_size or EMBEDDED_BLOCK_SIZE) if embedded else None,
            },
            "scenario": SCENARIO,
            "kind": kind,
            "data": str(data_dir) if data_dir is not None else "synthetic (generated, 50 users)",
            "prompts": len(setup.bodies),
            "concurrency_per_task": concurrency,
            "tasks": setup.tasks,
            "in_flight": setup.in_flight,
            "prompts_per_task": setup.task_sizes(),
            "max_tokens": setup.spec.sampling.max_tokens,
            # A freshly started embedded server has seen none of the prompts; an --endpoint may have.
            "first_pass": {**first, "server_fresh": embedded},
            "rounds": measured,
            **summarize(measured),
            "cached_rerun": {
                "seconds": round(cached.seconds, 3),
                "prompts_per_s": round(cached.prompts / cached.seconds, 4),
                "calls": cached.calls,
            },
            "goal": GOAL,
            "machine": machine(),
            "command": command_line(
                out=out,
                data_dir=data_dir,
                kind=kind,
                prompts=prompts,
                concurrency=concurrency,
                rounds=rounds,
                base_url=None if embedded else endpoint.base_url,
                model=model,
                max_tokens=max_tokens,
                block_size=block_size,
                master=master,
            ),
            "started_at": started_at.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1),
        }
    result["meets_goal"] = result["ratio"] is not None and result["ratio"] >= GOAL
    title, panels, note = _chart(result)
    written = write_report(out, result, title=title, panels=panels, note=note)
    if cached.calls:
        raise KarError(f"bench llm: the cached rerun still made {cached.calls} LLM calls (see {out})")
    return written
