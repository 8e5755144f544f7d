"""``kar bench quality``: does LLM knowledge pay off in test AUC, and is it the LLM that pays?

For every backbone (DeepFM, DCNv2, MMOE, Wukong, XGBoost) on one prepared dataset, the bundled experiment
``<model>_<dataset>.yaml`` is trained under each variant, for several seeds:

* ``none``: no knowledge;
* ``user`` / ``item`` / ``both``: the LLM's user reasoning and/or item facts through the hybrid-expert adaptor;
* ``both-mlp`` / ``both-moe``: the same knowledge through the ablation adaptors;
* ``text``: the no-LLM control: the same encoder applied to the prompts' data (the profile and rated titles,
  the item's title, year and genres, i.e. exactly what the LLM was given), through the same adaptor. The gap
  between ``both`` and ``text`` is what the LLM adds beyond re-reading its input. KAR did not run this control.
* ``canary``: ``text`` with user prompts built from each user's whole log and joined ignoring time
  (``kar.bench.canary``): leakage on purpose, to show the benchmark would see it;
* ``both+kerec`` (only when named): ``both`` plus LLM-KERec's complementary entities per item
  (``kerec_knowledge``) as a third expert group of the same adaptor.

``--dataset synthetic`` generates its data (``SyntheticConfig``: users, items, ``theme_weight``) and prepares
it under the cold-items protocol, then also probes how much of the planted item themes the encoded and the
adapted item vectors carry (``kar.bench.probe``).

XGBoost reads the vectors raw (adaptor ``none``). Epochs are selected on validation AUC only; test is scored
once per run. Every run is a ``kar train``-style folder under ``OUT/runs`` (a rerun reuses finished runs with
the same config and training frame, so an interrupted benchmark resumes), and ``OUT/quality.json`` lists one
result per run so the table can be recomputed; ``OUT/quality.png`` plots the AUC change against ``none`` per
model and variant.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kar.bench.folders import link_tables
from kar.bench.report import machine
from kar.contracts.errors import DataError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.results import TrainMetrics
from kar.contracts.tables import SUMMARY_FILE

BOTH = ("user_knowledge", "item_knowledge")
KEREC = "kerec_knowledge"  # LLM-KERec's complementary entities per item (`kar encode --kind kerec`)
MODELS = ("deepfm", "dcnv2", "mmoe", "wukong", "xgboost")
DATASETS = {"movielens-100k": "ml-100k", "movielens-1m": "ml-1m", "synthetic": "synthetic"}
LLM, TEXT, LEAK = "llm", "text", "leak"
SYNTHETIC_CONFIG_FILE = "synthetic.json"  # beside a generated folder: the config it was generated from
# A finished run is reused only for the same config *and* the same training frame (its digest, in this file).
INPUT_KEY_FILE = "bench-input.sha256"
# Test items by their training samples: where ids know an item (head) down to where only knowledge can (cold).
SLICES = ("all", "cold", "tail", "torso", "head")


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One row of the ablation table.

    Attributes:
        name: Label in the table and the plot.
        fields: Knowledge fields the ranker reads (none for the baseline).
        adaptor: ``hea``, ``mlp`` or ``moe`` (XGBoost always reads raw vectors).
        source: ``llm`` (the answers' vectors), ``text`` (the prompts' vectors, the no-LLM control) or ``leak``
            (the canary's whole-log prompt vectors).
        optional: Run only when named: it needs optional knowledge a folder may not have.
    """

    name: str
    fields: tuple[str, ...] = ()
    adaptor: str = "hea"
    source: str = LLM
    optional: bool = False

    @property
    def knowledge(self) -> str:
        """``none``, ``user``, ``item``, ``both`` or ``both+kerec``, as quality.json spells it."""
        if not self.fields:
            return "none"
        kinds = [name.removesuffix("_knowledge") for name in self.fields]
        if self.fields[:2] == BOTH:
            kinds = ["both", *kinds[2:]]
        return "+".join(kinds)


VARIANTS = (
    Variant(name="none"),
    Variant(name="user", fields=("user_knowledge",)),
    Variant(name="item", fields=("item_knowledge",)),
    Variant(name="both", fields=BOTH),
    Variant(name="both-mlp", fields=BOTH, adaptor="mlp"),
    Variant(name="both-moe", fields=BOTH, adaptor="moe"),
    Variant(name="text", fields=BOTH, source=TEXT),
    Variant(name="canary", fields=BOTH, source=LEAK),
    Variant(name="both+kerec", fields=(*BOTH, KEREC), optional=True),
)
DEFAULT_VARIANTS = tuple(v.name for v in VARIANTS if not v.optional)
"""What runs unless variants are named: those every LLM folder can feed (``both+kerec`` needs LLM-KERec vectors)."""
# Trees have no adaptor: the ablations of the adaptor do not apply.
XGBOOST_VARIANTS = ("none", "both", "text", "canary", "both+kerec")


@dataclass(frozen=True, kw_only=True)
class Job:
    """One training run of the benchmark."""

    model: str
    variant: Variant
    seed: int
    dataset: str
    run_dir: Path
    data_key: str = ""


def variants_for(model: str, names: Sequence[str]) -> list[Variant]:
    chosen = [v for v in VARIANTS if v.name in names]
    return [v for v in chosen if v.name in XGBOOST_VARIANTS] if model == "xgboost" else chosen


def job_config(job: Job) -> Any:
    """The bundled experiment of ``job.model`` on its dataset, reduced to the variant's knowledge."""
    from ctr import load_config

    config = load_config(f"{job.model}_{job.dataset}")
    adaptor = None if job.model == "xgboost" else job.variant.adaptor
    config = config.with_knowledge(job.variant.fields, adaptor=adaptor)
    # One torch thread per run and one run per core: at these sizes a second thread mostly waits.
    return replace(config, seed=job.seed, train=replace(config.train, num_threads=1))


_FRAMES: dict[str, Any] = {}


def _load_frames(paths: dict[str, str]) -> None:
    import pandas as pd

    _FRAMES.update({source: pd.read_pickle(path) for source, path in paths.items()})


def item_slices(frame: Any, *, item_key: str = "item_id") -> Any:
    """The slice of every test row of a training frame, by its item's training samples: ``cold`` (0),
    ``tail`` (1–9), ``torso`` (10–49), ``head`` (50 or more). Indexed like the frame's test rows."""
    import pandas as pd

    counts = frame.loc[frame["split"] == "train", item_key].value_counts()
    seen = frame.loc[frame["split"] == "test", item_key].map(counts).fillna(0).astype(int)
    return pd.Series(np.select([seen == 0, seen < 10, seen < 50], ["cold", "tail", "torso"], "head"), index=seen.index)


def slice_scores(labels: np.ndarray, probs: np.ndarray, slices: np.ndarray) -> dict[str, dict[str, Any]]:
    """Test AUC and LogLoss per slice with its size; AUC is None in a slice holding one class only."""
    from sklearn.metrics import log_loss, roc_auc_score

    from ctr.metrics import EPSILON

    scores = {}
    for name in SLICES[1:]:
        mask = slices == name
        if not mask.any():
            continue
        y, p = labels[mask], np.clip(probs[mask], EPSILON, 1 - EPSILON)
        auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None
        scores[name] = {"n": int(mask.sum()), "test_auc": auc, "test_logloss": float(log_loss(y, p, labels=[0, 1]))}
    return scores


def _scored_slices(job: Job) -> dict[str, dict[str, Any]]:
    """The finished run's test predictions, scored per item slice."""
    from ctr import load_ranker

    frame = _FRAMES[job.variant.source]
    test = frame[frame["split"] == "test"]
    probs = load_ranker(job.run_dir).predict(test)
    return slice_scores(test["label"].to_numpy(), np.asarray(probs), item_slices(frame).to_numpy())


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train one run (or reuse a finished one with the same config) and return its quality.json rows: the
    whole test set (``slice`` = ``all``) and each item slice."""
    from ctr import load_config, train_experiment

    config = job_config(job)
    metrics_file, key_file = job.run_dir / "metrics.json", job.run_dir / INPUT_KEY_FILE
    reusable = metrics_file.is_file() and key_file.is_file() and key_file.read_text() == job.data_key
    if reusable and load_config(job.run_dir / "config.yaml") == config:
        metrics = TrainMetrics.from_dict(json.loads(metrics_file.read_text()))
    else:
        metrics = train_experiment(_FRAMES[job.variant.source], config, job.run_dir)
        key_file.write_text(job.data_key)
    run = {
        "model": job.model,
        "variant": job.variant.name,
        "knowledge": job.variant.knowledge,
        "adaptor": "none" if not job.variant.fields or job.model == "xgboost" else job.variant.adaptor,
        "source": job.variant.source if job.variant.fields else None,
        "seed": job.seed,
        "val_auc": metrics.val["auc"],
        "best_epoch": metrics.best_epoch if metrics.best_epoch is not None else metrics.best_round,
        "seconds": metrics.seconds,
        "run": str(job.run_dir),
    }
    whole = {"n": metrics.n_test, "test_auc": metrics.test["auc"], "test_logloss": metrics.test["logloss"]}
    slices = {"all": whole, **_scored_slices(job)}
    return [{**run, "slice": name, **scores} for name, scores in slices.items()]


def control_folder(data_dir: Path, out: Path, *, progress: Progress) -> Path:
    """``out``: the prepared tables of ``data_dir`` (linked) with vectors of the prompts instead of the answers.

    The prompts are those an LLM run sent (``data_dir/knowledge``) when there was one; otherwise they are built
    here from the prepared tables (``write_prompt_tables``), so the control needs no LLM at all.
    """
    from kar.pipeline import run_encode

    out.mkdir(parents=True, exist_ok=True)
    knowledge = _sent_prompts(data_dir) or _prompt_tables(data_dir, out / "prompts", progress=progress)
    tables = ("interactions", "items", "users", "samples", "knowledge_cutoffs", "knowledge_history")
    link_tables(out, {name: data_dir / name for name in tables})
    (out / SUMMARY_FILE).write_text((data_dir / SUMMARY_FILE).read_text())
    progress("encoding the prompts (no-LLM control)")
    run_encode(data_dir=out, knowledge_dir=knowledge, text_column="prompt", progress=progress)
    return out


def _sent_prompts(data_dir: Path) -> Path | None:
    """``data_dir/knowledge`` when an LLM run left its user and item tables there (the prompts it sent), else None."""
    knowledge = data_dir / "knowledge"
    return knowledge if (knowledge / "user").is_dir() and (knowledge / "item").is_dir() else None


def _prompt_tables(data_dir: Path, out: Path, *, progress: Progress) -> Path:
    """Every user's and item's prompt, built as the knowledge job would and never sent (no LLM run here)."""
    from spark_jobs.knowledge.job import scenario_for, write_prompt_tables
    from spark_jobs.session import get_spark

    progress("building the prompts from the prepared tables (the text control needs no LLM run)")
    spark = get_spark(app_name="kar-bench-quality")
    write_prompt_tables(spark, data_dir=data_dir, out=out, scenario=scenario_for(data_dir))
    return out


def source_folders(data_dir: Path, out: Path, *, sources: set[str], progress: Progress) -> dict[str, Path]:
    """The prepared folder behind each vector source: the LLM's is ``data_dir``, the others are built in ``out``."""
    from kar.bench.canary import leak_folder

    folders = {LLM: data_dir}
    if TEXT in sources:
        folders[TEXT] = control_folder(data_dir, out / "control", progress=progress)
    if LEAK in sources:
        # Without an LLM run the control encoded the very item prompts the canary builds: it links them instead.
        items = folders[TEXT] / "vectors" / "item" if TEXT in folders and _sent_prompts(data_dir) is None else None
        folders[LEAK] = leak_folder(data_dir, out / "canary", item_vectors=items, progress=progress)
    return folders


def _frames(folders: dict[str, Path], out: Path, *, progress: Progress) -> dict[str, Path]:
    """Training frames (Feast, point-in-time) of every source's folder."""
    from kar.serving import store

    paths = {}
    for source, folder in folders.items():
        progress(f"feast apply + point-in-time training frame ({source} vectors)")
        store.apply(data_dir=folder)
        paths[source] = out / "frames" / f"{source}.pkl"
        paths[source].parent.mkdir(parents=True, exist_ok=True)
        store.training_frame(data_dir=folder).to_pickle(paths[source])
    return paths


def _digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _coverage(frame_path: Path) -> dict[str, dict[str, float]]:
    import pandas as pd

    from kar.pipeline import knowledge_coverage

    frame = pd.read_pickle(frame_path)
    return {split: knowledge_coverage(part) for split, part in frame.groupby("split")}


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std per model, variant and slice, and the AUC change against ``none`` paired by seed (seeds whose
    slice has one class only, hence no AUC, are left out of the AUC figures)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["model"], row["variant"], row.get("slice", "all")), []).append(row)
    rows = []
    for (model, variant, slice_), runs in groups.items():
        base = {r["seed"]: r["test_auc"] for r in groups.get((model, "none", slice_), [])}
        scored = [r for r in runs if r["test_auc"] is not None]
        deltas = [r["test_auc"] - base[r["seed"]] for r in scored if base.get(r["seed"]) is not None]
        rows.append(
            {
                "model": model,
                "variant": variant,
                "slice": slice_,
                "n": runs[0].get("n"),
                "seeds": len(runs),
                "test_auc_mean": statistics.mean(r["test_auc"] for r in scored) if scored else None,
                "test_auc_std": _std([r["test_auc"] for r in scored]),
                "test_logloss_mean": statistics.mean(r["test_logloss"] for r in runs),
                "test_logloss_std": _std([r["test_logloss"] for r in runs]),
                "delta_auc_mean": statistics.mean(deltas) if deltas else None,
                "delta_auc_std": _std(deltas) if deltas else None,
            }
        )
    return rows


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def plot(path: Path, summary: Sequence[dict[str, Any]], *, title: str) -> Path:
    """One row per slice (the whole test set first): test AUC per model and variant, and its change against
    ``none`` paired by seed (± std)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in summary))
    variants = [v.name for v in VARIANTS if any(r["variant"] == v.name for r in summary)]
    slices = [s for s in SLICES if any(r.get("slice", "all") == s for r in summary)]
    figure = Figure(figsize=(max(10.0, 3.2 * len(models) + 2), 3.6 * len(slices) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=11)
    for row, slice_ in enumerate(slices):
        rows = [r for r in summary if r.get("slice", "all") == slice_]
        size = f", n = {rows[0]['n']:,}" if rows[0].get("n") else ""
        panels = (
            ("test_auc", f"{slice_}{size}: test AUC (mean ± std)", variants),
            ("delta_auc", f"{slice_}: test AUC − no-knowledge test AUC", [v for v in variants if v != "none"]),
        )
        for column, (key, label, shown) in enumerate(panels, start=1):
            axes = figure.add_subplot(len(slices), 2, 2 * row + column)
            _grouped_bars(axes, rows, models=models, variants=shown, key=key)
            axes.set_ylabel(label, fontsize=8)
            scored = [r for r in rows if r["test_auc_mean"] is not None]
            if key == "delta_auc":
                axes.axhline(0, color="black", linewidth=0.8)
            elif scored:
                low = min(r["test_auc_mean"] - r["test_auc_std"] for r in scored)
                axes.set_ylim(low - 0.01, max(r["test_auc_mean"] + r["test_auc_std"] for r in scored) + 0.01)
            if shown and row == 0:
                axes.legend(fontsize=7, ncols=min(len(shown), 4))
    figure.savefig(path, dpi=110)
    return path


def _grouped_bars(
    axes: Any, summary: Sequence[dict[str, Any]], *, models: list[str], variants: list[str], key: str
) -> None:
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        rows = {r["model"]: r for r in summary if r["variant"] == variant and r[f"{key}_mean"] is not None}
        present = [(m, name) for m, name in enumerate(models) if name in rows]
        xs = [m + (i - (len(variants) - 1) / 2) * width for m, _ in present]
        means = [rows[name][f"{key}_mean"] for _, name in present]
        stds = [rows[name][f"{key}_std"] for _, name in present]
        # The same colour for a variant in both panels (the change panel has no ``none`` bar).
        color = f"C{[v.name for v in VARIANTS].index(variant)}"
        axes.bar(xs, means, width, yerr=stds, capsize=2, label=variant, color=color, alpha=0.8)
    axes.set_xticks(range(len(models)), models)


def bench_quality(
    *,
    dataset: str,
    out: Location,
    data_dir: Location | None = None,
    models: Sequence[str] = MODELS,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    seeds: int = 3,
    jobs: int | None = None,
    synthetic: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train every model × variant × seed on ``dataset`` and write ``out/quality.json`` + ``quality.png``.

    Args:
        dataset: ``movielens-100k``, ``movielens-1m`` or ``synthetic`` (picks the bundled experiment YAMLs).
        out: Result folder (runs, frames, the control's vectors, JSON and plot).
        data_dir: Prepared folder (``kar prepare --protocol kar``); LLM variants need its ``knowledge/`` and
            ``vectors/``, the ``none``, ``text`` and ``canary`` variants only the prepared tables. For
            ``synthetic`` without one, the data is generated from ``synthetic`` into ``out/data``
            (cold-items protocol) and reused while the config is the same.
        models: Backbones to train.
        variants: Variant names (see :data:`VARIANTS`; ``both+kerec`` only when named, and it needs the folder's
            ``vectors/kerec``).
        seeds: Seeds per model and variant (0, 1, …).
        jobs: Runs trained at once, one core each (default: the CPU count).
        synthetic: ``SyntheticConfig`` of the generated data (default: the generator's defaults).
        progress: Step callback.

    Returns:
        The content of ``quality.json``.

    Raises:
        DataError: Unknown dataset/model/variant, or a data folder without what a variant needs.
    """
    out = local_path(out, what="out")
    data_dir = optional_local_path(data_dir, what="data")
    from kar.pipeline import read_summary

    step = progress or silent
    if dataset not in DATASETS:
        raise DataError(f"dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    unknown = [m for m in models if m not in MODELS] + [v for v in variants if v not in {x.name for x in VARIANTS}]
    if unknown:
        raise DataError(f"unknown model or variant {unknown[0]!r}")
    out.mkdir(parents=True, exist_ok=True)
    if dataset == "synthetic" and data_dir is None:
        data_dir = generated_folder(out / "data", synthetic, progress=step)
    data_dir = data_dir or Path("runs") / DATASETS[dataset]
    summary = read_summary(data_dir)
    if summary.dataset != dataset:
        raise DataError(f"{data_dir} holds {summary.dataset}, not {dataset}")
    sources = {v.source for v in VARIANTS if v.name in variants}
    folders = source_folders(data_dir, out, sources=sources, progress=step)
    frame_paths = _frames(folders, out, progress=step)
    coverage = {source: _coverage(path) for source, path in frame_paths.items()}
    _require_knowledge(coverage[LLM], data_dir, [v for v in VARIANTS if v.name in variants])
    keys = {source: _digest(path) for source, path in frame_paths.items()}
    planned = [
        Job(
            model=m,
            variant=v,
            seed=s,
            dataset=dataset,
            run_dir=out / "runs" / m / v.name / f"seed{s}",
            data_key=keys[v.source] if v.source in keys else keys[LLM],
        )
        for m in models
        for v in variants_for(m, variants)
        for s in range(seeds)
    ]
    results = _run_all(planned, frame_paths, jobs=jobs or os.cpu_count() or 1, progress=step)
    result = {
        "dataset": dataset,
        "data": {"path": str(data_dir), "protocol": summary.split["protocol"], "notes": summary.notes},
        "knowledge_coverage": coverage,
        "seeds": seeds,
        "selection": "epoch (boosting round) with the best validation AUC; test scored once",
        "results": sorted(results, key=lambda r: (r["model"], r["variant"], r["seed"], SLICES.index(r["slice"]))),
        "summary": summarize(results),
        "machine": machine(),
    }
    if dataset == "synthetic":
        step("probing the item vectors for the planted themes")
        result["synthetic"] = _generated_config(data_dir)
        result["theme_probe"] = _theme_probes(data_dir, folders, results)
        if result["synthetic"] is not None and TEXT in folders:
            result["signal"] = _signal(data_dir, folders[TEXT], result["synthetic"])
    plot(out / "quality.png", result["summary"], title=f"Knowledge ablations on {dataset} ({seeds} seeds)")
    (out / "quality.json").write_text(json.dumps({**result, "plot": "quality.png"}, indent=2, default=str) + "\n")
    return result


def generated_folder(folder: Path, config: Any = None, *, progress: Progress) -> Path:
    """``folder``: synthetic data generated from ``config`` and prepared (cold-items protocol), or the folder an
    earlier call with the same config left there."""
    import shutil
    from dataclasses import asdict

    from kar.pipeline import run_prepare
    from spark_jobs.datasets.synthetic import SyntheticConfig

    config = config or SyntheticConfig()
    wanted = json.dumps(asdict(config), sort_keys=True)
    marker = folder / SYNTHETIC_CONFIG_FILE
    if marker.is_file() and marker.read_text() == wanted and (folder / SUMMARY_FILE).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    progress(f"generating and preparing synthetic data ({config.n_users:,} users, {config.n_items:,} items)")
    run_prepare(dataset="synthetic", out=folder, synthetic=config, protocol="cold-items", progress=progress)
    marker.write_text(wanted)
    return folder


def _generated_config(data_dir: Path) -> dict[str, Any] | None:
    marker = data_dir / SYNTHETIC_CONFIG_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def _theme_probes(data_dir: Path, folders: dict[str, Path], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import pandas as pd

    from kar.bench.probe import theme_probes
    from kar.contracts.tables import ITEMS_DIR

    return theme_probes(pd.read_parquet(data_dir / ITEMS_DIR), folders, results)


def _signal(data_dir: Path, text_folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from kar.bench.signal import signal_scores
    from spark_jobs.datasets.synthetic import SyntheticConfig, generate

    truth = generate(SyntheticConfig(**config)).truth
    return asdict(signal_scores(data_dir=data_dir, text_folder=text_folder, truth=truth))


def _require_knowledge(coverage: dict[str, dict[str, float]], data_dir: Path, variants: Sequence[Variant]) -> None:
    """Refuse LLM-knowledge variants when no training sample joined any knowledge: they would train on zeros.

    Raises:
        DataError: Naming the vectors folder and the commands that fill it.
    """
    needed = {field for v in variants if v.source == LLM for field in v.fields}
    empty = sorted(field for field in needed if not coverage.get("train", {}).get(field))
    if empty:
        kerec = " (for kerec_knowledge: `--kind kerec` on both, then `kar feast apply`)" if KEREC in empty else ""
        raise DataError(
            f"{data_dir / 'vectors'}: no training sample has {', '.join(empty)}; run `kar knowledge` and "
            f"`kar encode` on this folder first{kerec}, or choose --variant none"
        )


def _run_all(planned: Sequence[Job], frames: dict[str, Path], *, jobs: int, progress: Progress) -> list[dict]:
    import multiprocessing

    results = []
    # spawn: a clean interpreter per worker (no inherited torch thread pools or JVM handles).
    context = multiprocessing.get_context("spawn")
    paths = {source: str(path) for source, path in frames.items()}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_load_frames, initargs=(paths,)) as pool:
        futures = {pool.submit(run_job, job): job for job in planned}
        for done, future in enumerate(as_completed(futures), start=1):
            rows = future.result()
            results.extend(rows)
            row = rows[0]  # the whole test set
            progress(
                f"[{done}/{len(planned)}] {row['model']} {row['variant']} seed {row['seed']}: "
                f"test AUC {row['test_auc']:.4f}"
            )
    return results
