"""The library API behind every CLI command: each step of the pipeline is a function users can import.

prepare (Spark) → Feast apply → point-in-time training frame → rankers → online lookup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kar.contracts import storage, tables
from kar.contracts.errors import DataError, KarError
from kar.contracts.paths import Location, is_uri, local_path, name_or_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.results import (
    DemoResult,
    EncodeSummary,
    KerecSummary,
    KnowledgeSummary,
    PrepareSummary,
    TrainMetrics,
)
from kar.contracts.storage import Folder
from kar.contracts.timing import StageTimes

# The rankers the demo trains (every bundled model trains with `kar train`).
DEMO_MODELS = ("deepfm", "xgboost")


def run_prepare(
    *,
    dataset: str,
    out: Location,
    path: Location | None = None,
    spec: Location | None = None,
    protocol: str = "time",
    seed: int = 1234,
    cutoff_every: int = 20,
    interactions: Sequence[Location] = (),
    master: str | None = None,
    synthetic: Any = None,
    progress: Progress | None = None,
) -> PrepareSummary:
    """Run the Spark prepare job (see ``spark_jobs.prepare``) and return its summary.

    Args:
        dataset: ``synthetic``, ``movielens-100k``, ``movielens-1m``, ``amazon``, or ``table`` (your own tables).
        out: Output folder.
        path: Input folder of a file-based bundled dataset (``synthetic``: an earlier generation's ``raw/``).
        spec: For ``table``: the YAML naming your tables and mapping their columns (``spark_jobs.datasets.table``).
        protocol: Split protocol, ``time``, ``kar``, ``cold-items`` or ``rolling`` (``spark_jobs.splits``).
        seed: Seed of the kar user split and of the cold-items item split.
        cutoff_every: Interactions between two knowledge cutoffs of a user (``rolling``).
        interactions: Interaction files in the dataset's format read instead of its log (batches, in order).
        master: Spark master (default: env or ``local[*]``).
        synthetic: ``SyntheticConfig`` for the synthetic dataset.
        progress: Step callback.
    """
    from spark_jobs.datasets import TableSpec, check_input
    from spark_jobs.prepare import prepare
    from spark_jobs.session import get_spark
    from spark_jobs.splits import SplitConfig

    step = progress or silent
    out, path = storage.location(out), optional_local_path(path, what="path")
    table_spec = TableSpec.load(local_path(spec, what="spec")) if spec is not None else None
    check_input(dataset, path, table_spec)  # before Spark starts: a typo should not cost a JVM start-up
    step("starting Spark")
    times = StageTimes()
    with times.stage("starting Spark"):
        spark = get_spark(app_name=f"kar-prepare-{dataset}", master=master)
    split = SplitConfig(protocol=protocol, seed=seed, cutoff_every=cutoff_every)  # type: ignore[arg-type]
    return prepare(
        spark=spark,
        dataset=dataset,
        path=path,
        out=out,
        split=split,
        synthetic=synthetic,
        spec=table_spec,
        interactions=[str(p) if is_uri(p) else str(Path(p).resolve()) for p in interactions],
        progress=step,
        timings=times,
    )


def read_summary(data_dir: Location) -> PrepareSummary:
    """The summary ``kar prepare`` wrote in ``data_dir``.

    Raises:
        DataError: No summary there (not a prepared folder), or one this version cannot read.
    """
    data_dir = storage.location(data_dir)
    path = data_dir / tables.SUMMARY_FILE
    if not storage.is_file(path):
        raise DataError(f"{data_dir}: no {tables.SUMMARY_FILE}; run `kar prepare --out {data_dir}` first")
    try:
        return PrepareSummary.from_dict(json.loads(storage.read_text(path)))
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: not a summary of `kar prepare`: {e}") from e


def _epoch_reporter(step: Progress) -> Callable[[Any], None]:
    """Show each evaluated epoch on the live line (``step.detail``) without logging every epoch."""
    detail = getattr(step, "detail", None)

    def report(event: Any) -> None:
        if event.val and detail is not None:
            metrics = ", ".join(f"val {k} {v:.4f}" for k, v in event.val.items())
            detail(f"epoch {event.epoch}/{event.epochs}, {metrics}")

    return report


def run_train(
    *,
    model: str,
    data_dir: Location,
    out: Location,
    config_path: Location | None = None,
    seed: int | None = None,
    frame: Any = None,
    repo: Location | None = None,
    service: str | None = None,
    progress: Progress | None = None,
) -> TrainMetrics:
    """Train one ranker on the Feast training frame of ``data_dir`` and write ``out/metrics.json``.

    The experiment is, in order: a complete YAML given as ``config_path``; the bundled
    ``<model>_<dataset>.yaml`` (bundled datasets, example repo); else one derived from the training frame's
    columns (``ctr.derive``), with a partial YAML's keys laid over it. So any prepared folder trains.

    Args:
        model: ``deepfm``, ``dcnv2``, ``mmoe``, ``wukong``, ``xgboost`` or ``package.module:Class``.
        data_dir: Prepared and applied data folder.
        out: Output folder for metrics, config, encoder and model.
        config_path: Experiment YAML (complete, or only the keys to override).
        seed: Overrides the config's seed.
        frame: A training frame already retrieved (the demo trains several models on one retrieval).
        repo: The team's Feast repo (default: the folder's example repo).
        service: The feature service to train on (default ``ranking_training``, in a team repo ``kar_training``).
        progress: Step callback.
    """
    from ctr import check_experiment, train_experiment
    from kar.serving import store

    step = progress or silent
    data_dir, out = local_path(data_dir, what="data"), local_path(out, what="out")
    config_path = optional_local_path(config_path, what="config")
    repo = optional_local_path(repo, what="repo")
    service = service or store.default_service(repo)
    dataset = read_summary(data_dir).dataset
    config, overrides = _experiment(model, dataset, config_path, bundled=repo is None)
    if config is not None:
        if seed is not None:
            config = dataclasses.replace(config, seed=seed)
        check_experiment(config)  # a typo in the YAML fails now, not after the slow retrieval
    if frame is None:
        step("point-in-time training frame from Feast")
        frame = store.training_frame(data_dir=data_dir, repo=repo, service=service)
    if config is None:
        config = _derived(model, dataset, frame, overrides, data_dir=data_dir, repo=repo, service=service, seed=seed)
        check_experiment(config)
    step(f"training {config.model}")
    return train_experiment(frame, config, out, progress=_epoch_reporter(step))


def _experiment(model: str, dataset: str, config_path: Path | None, *, bundled: bool) -> tuple[Any, dict[str, Any]]:
    """A complete experiment known before retrieval, or (None, the overrides for a derived one)."""
    import yaml

    from ctr import load_config
    from ctr.config import bundled_experiments

    if config_path is None:
        name = f"{model}_{dataset}"
        return (load_config(name), {}) if bundled and name in bundled_experiments() else (None, {})
    raw = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    if not isinstance(raw, dict):
        return load_config(config_path), {}  # its own one-line error (missing file, bad YAML)
    required = {"model", "features"}
    return (load_config(config_path), {}) if required <= set(raw) else (None, raw)


def _derived(
    model: str,
    dataset: str,
    frame: Any,
    overrides: dict[str, Any],
    *,
    data_dir: Path,
    repo: Path | None,
    service: str,
    seed: int | None,
) -> Any:
    """The experiment ``ctr.derive`` reads off the frame, with the YAML's keys over it."""
    from ctr.derive import derive_experiment, merged
    from kar.serving import store

    roles = store.service_roles(store.open_store(data_dir=data_dir, repo=repo), service)
    # A team's own ids duplicate user_id/item_id (the int64 ids the embeddings learn from).
    raw_ids = {r.join_key for r in (roles.user, roles.item)} - {"user_id", "item_id"}
    knowledge = [c[4:] for c in frame.columns if c.startswith("has_") and c[4:] in frame.columns]
    config = derive_experiment(
        model=overrides.get("model", model), frame=frame, knowledge=knowledge, dataset=dataset, exclude=raw_ids
    )
    config = merged(config, overrides) if overrides else config
    return dataclasses.replace(config, seed=seed) if seed is not None else config


# The demo's synthetic population is sized so the embedded 135M model on 2 CPU cores answers every prompt in
# a few minutes (~400 prompts); `kar demo --users/--items` scales it.
DEMO_USERS = 120
DEMO_ITEMS = 120
DEMO_PAIRS = 40
DEMO_KNOWLEDGE = ("user", "item", "kerec")


def run_demo(
    *,
    out: Location,
    n_users: int | None = None,
    n_items: int | None = None,
    knowledge: bool = True,
    progress: Progress | None = None,
) -> DemoResult:
    """The main job on embedded defaults: synthetic data → Spark → LLM knowledge → Feast → DeepFM and XGBoost.

    Writes ``out/prepared`` (tables, Feast registry and online store, and ``knowledge/``: LLM answers from the
    embedded vLLM CPU server, their cache and summary), ``out/models/<model>`` and ``out/metrics.json``;
    returns the metrics.
    """
    from kar.serving import store
    from spark_jobs.datasets.synthetic import SyntheticConfig

    step = progress or silent
    started = time.perf_counter()
    out = local_path(out, what="out")
    data_dir = out / "prepared"
    synthetic = SyntheticConfig(n_users=n_users or DEMO_USERS, n_items=n_items or DEMO_ITEMS)
    summary = run_prepare(dataset="synthetic", out=data_dir, synthetic=synthetic, progress=step)
    knowledge_summary = (
        run_knowledge(
            kinds=DEMO_KNOWLEDGE,
            data_dir=data_dir,
            out=data_dir / "knowledge",
            kerec_max_pairs=DEMO_PAIRS,
            progress=step,
        )
        if knowledge
        else {}
    )
    encode_summary = run_encode(data_dir=data_dir, progress=step) if knowledge else {}
    step("feast apply")
    store.apply(data_dir=data_dir)
    step("point-in-time training frame from Feast")
    frame = store.training_frame(data_dir=data_dir)
    step("validating the training frame")
    late_reports = validate_late_stage("training", data_dir=data_dir, frame=frame, knowledge=knowledge)
    results = {
        model: run_train(model=model, data_dir=data_dir, out=out / "models" / model, frame=frame, progress=step)
        for model in DEMO_MODELS
    }
    ranker_dir = out / "models" / "deepfm"
    step("exporting adapted knowledge to Feast (KAR pre-storage)")
    exported = run_adapt_export(run_dir=ranker_dir, data_dir=data_dir)
    if knowledge:
        step("validating the feature sources before materialize")
        late_reports += validate_late_stage("features", data_dir=data_dir, frame=frame, knowledge=knowledge)
    step("materializing the online store")
    feature_store = store.materialize(data_dir=data_dir)
    validation = (
        collect_validation(
            summary.to_dict(),
            {kind: s.to_dict() for kind, s in knowledge_summary.items()},
            {kind: s.to_dict() for kind, s in encode_summary.items()},
        )
        + late_reports
    )
    lookup, ranking = _sample_ranking(feature_store, frame, ranker_dir=ranker_dir)
    step("starting `kar serve` and ranking one request over HTTP")
    served = served_ranking(data_dir=data_dir, model_dir=ranker_dir, request=ranking["request"])
    result = DemoResult(
        dataset="synthetic",
        samples=summary.splits,
        knowledge=knowledge_summary,
        encode=encode_summary,
        knowledge_coverage=knowledge_coverage(frame),
        validation=validation,
        knowledge_sample=_knowledge_sample(data_dir / "knowledge", user_id=lookup.user["user_id"]),
        models=results,
        adapted_export={table.field: {"rows": table.rows, "dim": table.dim} for table in exported},
        online_lookup=lookup.describe(),
        online_ranking=ranking,
        service=served,
        seconds=round(time.perf_counter() - started, 1),
    )
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def collect_validation(*summaries: dict[str, Any]) -> list[dict[str, Any]]:
    """Every gate report (``ValidationReport.as_dict``) found in job summaries, at any depth, in order."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("validation"), dict):
                found.extend(node["validation"].values())
            for key, value in node.items():
                if key != "validation":
                    walk(value)

    for summary in summaries:
        walk(summary)
    return found


def validate_late_stage(stage: str, *, data_dir: Path, frame: Any, knowledge: bool) -> list[dict[str, Any]]:
    """The demo's ``features`` gate (knowledge sources before materialize) or ``training`` gate (join coverage).

    Raises:
        DataError: A failed expectation (results and Data Docs are written first).
    """
    from spark_jobs.session import get_spark
    from validation import stages
    from validation.gate import VALIDATION_DIR, Validator
    from validation.suites import training

    validator = Validator(out_dir=data_dir / VALIDATION_DIR, name=f"demo-{stage}")
    if stage == "features":
        stages.features(get_spark(app_name="kar-validate"), data_dir, validator)
    else:
        has = tuple(k for k in tables.ALL_KINDS if knowledge and f"has_{k}_knowledge" in frame.columns)
        validator.validate_pandas(frame, training(knowledge=has))
    validator.finish()
    for report in validator.reports:
        report.raise_for_failures(kept=f"tables are in {data_dir}")
    return [r.as_dict() for r in validator.reports]


def _knowledge_sample(knowledge_dir: Path, *, user_id: Any) -> dict[str, Any] | None:
    """One user's generated knowledge (the looked-up user's when it has one) for the demo printout."""
    import pandas as pd

    path = knowledge_dir / "user"
    if not path.is_dir():
        return None
    users = pd.read_parquet(path, columns=["user_id", "as_of", "text"])
    if users.empty:
        return None
    match = users[users["user_id"] == user_id]
    row = (match if len(match) else users).iloc[0]
    return {"user_id": int(row["user_id"]), "as_of": str(row["as_of"]), "text": row["text"]}


def knowledge_coverage(frame: Any) -> dict[str, float]:
    """Share of training-frame rows that joined a knowledge vector, per knowledge view."""
    flags = [c for c in frame.columns if c.startswith("has_")]
    return {flag.removeprefix("has_"): round(float(frame[flag].mean()), 4) for flag in flags}


def _sample_ranking(feature_store: Any, frame: Any, *, ranker_dir: Path, n_items: int = 3) -> tuple[Any, dict]:
    """Rank ``n_items`` candidates for one test user from the online store, as serving would.

    Features come from ``ranking_serving`` (profiles + the exported adapted vectors), so no encoder or adaptor
    runs. The same candidates are also scored from ``ranking_training``'s raw vectors through the adaptor;
    ``max_abs_diff_vs_raw`` shows the pre-stored path gives the same scores.
    """
    from ctr import load_ranker
    from kar.serving import store
    from kar.serving.online import OnlineLookup

    test = frame[frame["split"] == "test"]
    rows = test if len(test) else frame
    with_knowledge = rows[rows["has_user_knowledge"]] if "has_user_knowledge" in rows else rows
    row = (with_knowledge if len(with_knowledge) else rows).iloc[0]
    item_ids: Sequence[int] = frame["item_id"].drop_duplicates().head(n_items).tolist()
    context = {"hist_item_ids": [int(i) for i in row["hist_item_ids"]]}
    ranker = load_ranker(ranker_dir)
    served = OnlineLookup(feature_store, service=store.SERVING_SERVICE).fetch(
        user_id=int(row["user_id"]), item_ids=item_ids
    )
    scores = ranker.predict(served.candidates_frame(**context))
    raw = OnlineLookup(feature_store, service=store.TRAINING_SERVICE).fetch(
        user_id=int(row["user_id"]), item_ids=item_ids
    )
    raw_scores = ranker.predict(raw.candidates_frame(**context))
    flags = served.items.get("has_item_knowledge_adapted", [False] * len(item_ids))
    ranked = sorted(zip(item_ids, scores.tolist(), flags, strict=True), key=lambda t: -t[1])
    return served, {
        "request": {"user_id": int(row["user_id"]), "item_ids": [int(i) for i in item_ids], "context": context},
        "user_id": int(row["user_id"]),
        "items": [{"item_id": int(i), "score": round(p, 6), "has_knowledge": bool(f)} for i, p, f in ranked],
        "max_abs_diff_vs_raw": float(abs(scores - raw_scores).max()),
    }


UNKNOWN_ITEM_ID = -1


def served_ranking(*, data_dir: Location, model_dir: Location, request: dict[str, Any]) -> dict[str, Any]:
    """Start ``kar serve`` on loopback, rank ``request`` plus an unknown item over HTTP, stop the service.

    The unknown item shows the fallback; ``max_abs_diff_vs_in_process`` compares the service's scores with
    the same ranker scoring the same online features in this process.

    Returns:
        The HTTP status, the ranked items, the ``Server-Timing`` header, start-up seconds and the difference.
    """
    import httpx

    from kar.serving.scorer import OnlineScorer
    from kar.serving.service import ServiceProcess
    from kar.serving.store import open_store

    data_dir, model_dir = local_path(data_dir, what="data"), local_path(model_dir, what="model")
    body = {**request, "item_ids": [*request["item_ids"], UNKNOWN_ITEM_ID]}
    started = time.perf_counter()
    with ServiceProcess(model_dir=model_dir, data_dir=data_dir) as service:
        ready = time.perf_counter() - started
        response = httpx.post(f"{service.url}/rank", json=body, headers=service.headers, timeout=30.0)
    if response.status_code != 200:
        raise KarError(f"kar serve answered {response.status_code}: {response.text[:500]}")
    items = response.json()["items"]
    scorer = OnlineScorer.from_run(model_dir=model_dir, store=open_store(data_dir=data_dir))
    local = {i.item_id: i.score for i in scorer.rank(**body).items}
    return {
        "status": response.status_code,
        "request": body,
        "items": items,
        "user": response.json()["user"],
        "server_timing": response.headers.get("server-timing"),
        "start_seconds": round(ready, 1),
        "max_abs_diff_vs_in_process": max(abs(i["score"] - local[i["item_id"]]) for i in items),
    }


@contextlib.contextmanager
def llm_endpoint(
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    tokenizer: Location | None = None,
    compiled: bool = False,
    block_size: int | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[Any, str, Path | None]]:
    """Yield ``(Endpoint, model id, tokenizer)`` for the knowledge jobs.

    With no ``base_url`` (and no ``$KAR_LLM_BASE_URL``) the embedded vLLM CPU server is started for the
    duration of the block and stopped after it (with ``block_size`` KV blocks, default the embedded one); its
    tokenizer gives exact token budgets.
    """
    from kar.llm import serve_embedded
    from spark_jobs.llm.client import Endpoint, resolve_model

    step = progress or silent
    tokenizer = optional_local_path(tokenizer, what="tokenizer")
    base_url = base_url or os.environ.get("KAR_LLM_BASE_URL")
    model = model or os.environ.get("KAR_LLM_MODEL")
    if base_url:
        endpoint = Endpoint(base_url=base_url, model=model, api_key=api_key, max_concurrency=concurrency)
        yield endpoint, resolve_model(endpoint), tokenizer
        return
    step("starting the embedded LLM (vLLM CPU, SmolLM2-135M)")
    with serve_embedded(compiled=compiled, block_size=block_size, progress=step) as server:
        endpoint = Endpoint(base_url=server.base_url, model=server.served_name, max_concurrency=concurrency)
        yield endpoint, server.served_name, tokenizer or Path(server.model)


def run_knowledge(
    *,
    kinds: Sequence[str],
    data_dir: Location,
    out: Location,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    scenario: str | None = None,
    cache_dir: Location | None = None,
    concurrency: int = 8,
    limit: int | None = None,
    tokenizer: Location | None = None,
    compiled: bool = False,
    kerec_max_pairs: int = 500,
    master: str | None = None,
    progress: Progress | None = None,
) -> dict[str, KnowledgeSummary | KerecSummary]:
    """Generate LLM knowledge (``user``, ``item``, ``kerec``) for a prepared folder; see ``spark_jobs.knowledge``.

    Returns the summary entries by kind (also in ``out/summary.json``).
    """
    from spark_jobs.knowledge.job import KnowledgeJob, generate_knowledge
    from spark_jobs.session import get_spark

    step = progress or silent
    data_dir, out = storage.location(data_dir), storage.location(out)
    cache_dir = storage.optional_location(cache_dir)
    scenario = name_or_path(scenario) if scenario else None
    _checked_knowledge_request(kinds, data_dir, scenario)  # before a 40 s server start
    with llm_endpoint(
        base_url=base_url,
        model=model,
        api_key=api_key,
        concurrency=concurrency,
        tokenizer=tokenizer,
        compiled=compiled,
        progress=step,
    ) as (endpoint, model_id, tokenizer_path):
        step("starting Spark")
        spark = get_spark(app_name="kar-knowledge", master=master)
        job = KnowledgeJob(
            data_dir=data_dir,
            out=out,
            endpoint=endpoint,
            model=model_id,
            scenario=scenario,
            cache_dir=cache_dir,
            tokenizer=tokenizer_path,
            limit=limit,
            kerec_max_pairs=kerec_max_pairs,
        )
        return {kind: generate_knowledge(spark, kind=kind, job=job, progress=step) for kind in kinds}  # type: ignore[arg-type]


def _checked_knowledge_request(kinds: Sequence[str], data_dir: Folder, scenario: str | None) -> Any:
    """Fail with the fix before any server or JVM starts: an unknown kind, a folder ``kar prepare`` did not
    write, or a scenario whose templates name a field the run may not show. Returns the loaded scenario."""
    from spark_jobs.knowledge.job import JOB_KINDS, scenario_for
    from spark_jobs.knowledge.prompts import prompt_fields_for

    unknown = [k for k in kinds if k not in JOB_KINDS]
    if unknown:
        raise DataError(f"unknown knowledge kind(s) {', '.join(unknown)}; use {', '.join(JOB_KINDS)}")
    read_summary(data_dir)
    loaded = scenario_for(data_dir, scenario)
    prompt_fields_for(data_dir, loaded)
    return loaded


def plan_knowledge(
    *,
    kinds: Sequence[str],
    data_dir: Location,
    scenario: str | None = None,
    limit: int | None = None,
    tokenizer: Location | None = None,
    master: str | None = None,
    progress: Progress | None = None,
) -> list[Any]:
    """What ``run_knowledge`` would send, without starting or calling any LLM (``kar knowledge --dry-run``).

    Returns:
        One ``spark_jobs.knowledge.job.PromptPlan`` per kind (``kerec`` plans its entity step: its pairs are
        built from the entity answers).
    """
    from kar.llm.embedded import EMBEDDED_DIRNAME
    from kar.llm.env import default_cache_dir
    from spark_jobs.knowledge.job import plan_prompts
    from spark_jobs.session import get_spark

    step = progress or silent
    data_dir = storage.location(data_dir)
    scenario_loaded = _checked_knowledge_request(kinds, data_dir, name_or_path(scenario) if scenario else None)
    # The embedded model's tokenizer, when it was built, counts exactly; else the heuristic overestimates.
    embedded = default_cache_dir() / "models" / EMBEDDED_DIRNAME
    tokenizer = optional_local_path(tokenizer, what="tokenizer") or (embedded if embedded.is_dir() else None)
    step("starting Spark")
    spark = get_spark(app_name="kar-knowledge-plan", master=master)
    plans = []
    for kind in kinds:
        step(f"building {kind} prompts")
        plans.append(
            plan_prompts(
                spark,
                kind="entity" if kind == "kerec" else kind,  # type: ignore[arg-type]
                data_dir=data_dir,
                scenario=scenario_loaded,
                limit=limit,
                tokenizer=tokenizer,
            )
        )
    return plans


def run_encode(
    *,
    data_dir: Location,
    knowledge_dir: Location | None = None,
    out: Location | None = None,
    model: str | None = None,
    batch_size: int = 64,
    kinds: Sequence[str] = ("user", "item"),
    text_column: str = "text",
    driver_max_texts: int | None = None,
    master: str | None = None,
    progress: Progress | None = None,
) -> dict[str, EncodeSummary]:
    """Encode knowledge answers into vectors with sentence-transformers; see ``spark_jobs.encoding``.

    Args:
        data_dir: Prepared folder; the defaults below live in it.
        knowledge_dir: ``kar knowledge`` output (default ``data_dir/knowledge``).
        out: Vector tables, quarantine and summary (default ``data_dir/vectors``, where Feast reads them).
        model: sentence-transformers name or folder (default: the shipped all-MiniLM-L6-v2).
        batch_size: Texts per forward pass.
        kinds: ``user``, ``item`` and/or ``kerec`` (optional: only encoded when named).
        text_column: ``text`` (the answers) or ``prompt`` (the data the LLM was given: the no-LLM control).
        driver_max_texts: Texts to encode per kind at or below which the driver encodes them instead of Spark
            tasks (default ``spark_jobs.encoding.job.DRIVER_MAX_TEXTS``; 0: always Spark).
        master: Spark master (default: env or ``local[*]``).
        progress: Step callback.

    Returns:
        The summary entries by kind (also in ``out/summary.json``).
    """
    from spark_jobs.encoding.job import EncodeJob, encode_knowledge
    from spark_jobs.session import get_spark

    step = progress or silent
    data_dir = storage.location(data_dir)
    knowledge_dir = storage.optional_location(knowledge_dir) or data_dir / "knowledge"
    out = storage.optional_location(out) or data_dir / "vectors"
    model = name_or_path(model) if model else None
    # Fails with the fix before the JVM starts (a typo should not cost ~10 s).
    EncodeJob(
        knowledge_dir=knowledge_dir,
        out=out,
        model=model,
        kinds=tuple(kinds),
        batch_size=batch_size,
        text_column=text_column,
        driver_max_texts=0 if driver_max_texts is None else driver_max_texts,
    ).check()
    step("starting Spark")
    spark = get_spark(app_name="kar-encode", master=master)
    return encode_knowledge(
        spark,
        knowledge_dir=knowledge_dir,
        out=out,
        model=model,
        batch_size=batch_size,
        kinds=kinds,
        text_column=text_column,
        id_maps_of=data_dir,
        driver_max_texts=driver_max_texts,
        progress=step,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageValidation:
    """One ``kar validate STAGE`` run.

    Attributes:
        reports: One ``validation.gate.ValidationReport`` per suite, in the order they ran.
        item_facts: For ``answers``: the hallucination check of item answers (None for other stages).
        docs: The Data Docs index of the run.
    """

    reports: list[Any]
    item_facts: dict[str, Any] | None
    docs: Path

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)


def run_validate(
    *,
    stage: str,
    data_dir: Location,
    out: Location | None = None,
    master: str | None = None,
    progress: Progress | None = None,
) -> StageValidation:
    """Run one stage's data-quality suites on ``data_dir`` (see ``validation.stages``)."""
    from kar.serving import store
    from spark_jobs.session import get_spark
    from validation.gate import DOCS_DIR, VALIDATION_DIR
    from validation.stages import STAGE_NAMES, validate_stage

    step = progress or silent
    data_dir, out = local_path(data_dir, what="data"), optional_local_path(out, what="out")
    if stage not in STAGE_NAMES:
        raise DataError(f"unknown stage {stage!r}; use one of {', '.join(STAGE_NAMES)}")
    step("starting Spark")
    spark = get_spark(app_name=f"kar-validate-{stage}", master=master)
    step(f"validating {stage}")
    out = out or data_dir / VALIDATION_DIR
    reports, extra = validate_stage(
        spark, stage, data_dir=data_dir, out_dir=out, training_frame=lambda d: store.training_frame(data_dir=d)
    )
    docs = out / DOCS_DIR / f"validate-{stage}" / "index.html"
    return StageValidation(reports=reports, item_facts=extra.get("item_facts"), docs=docs)


def run_adapt_export(
    *,
    run_dir: Location,
    data_dir: Location,
    vectors_dir: Location | None = None,
    out: Location | None = None,
    incremental: bool = False,
) -> list[Any]:
    """Write every user's and item's adapted knowledge vector for the Feast ``*_knowledge_adapted`` views.

    Args:
        run_dir: A ranker run trained with knowledge (``kar train`` output).
        data_dir: Prepared folder; the defaults below live in it.
        vectors_dir: Encoded knowledge (default ``data_dir/vectors``).
        out: Adapted tables (default ``data_dir/adapted``, where Feast's adapted views read).
        incremental: Adapt and append only the vectors the tables lack (see ``adaptors.export``).

    Returns:
        One ``adaptors.export.ExportedTable`` per knowledge field.
    """
    from adaptors.export import export_adapted

    data_dir = storage.location(data_dir)
    return export_adapted(
        run_dir=local_path(run_dir, what="run"),
        vectors_dir=storage.optional_location(vectors_dir) or data_dir / "vectors",
        out=storage.optional_location(out) or data_dir / "adapted",
        incremental=incremental,
    )
