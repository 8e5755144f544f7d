"""The library API behind every CLI command: each step of the pipeline is a function users can import.

prepare (Spark) → Feast apply → point-in-time training frame → rankers → online lookup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kar.errors import DataError, KarError

Progress = Callable[[str], None]
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "experiments"
MODELS = ("deepfm", "xgboost")


def _noop(_message: str) -> None:
    return None


def run_prepare(
    *,
    dataset: str,
    out: Path,
    path: Path | None = None,
    protocol: str = "time",
    seed: int = 1234,
    master: str | None = None,
    synthetic: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the Spark prepare job (see ``spark_jobs.prepare``) and return its summary."""
    from spark_jobs.prepare import prepare
    from spark_jobs.session import get_spark
    from spark_jobs.splits import SplitConfig

    step = progress or _noop
    step("starting Spark")
    spark = get_spark(app_name=f"kar-prepare-{dataset}", master=master)
    split = SplitConfig(protocol=protocol, seed=seed)  # type: ignore[arg-type]
    return prepare(
        spark=spark, dataset=dataset, path=path, out=out, split=split, synthetic=synthetic, progress=step
    )


def read_summary(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "summary.json"
    if not path.is_file():
        raise DataError(f"{data_dir}: no summary.json; run `kar prepare --out {data_dir}` first")
    return json.loads(path.read_text())


def experiment_path(model: str, dataset: str) -> Path:
    """The shipped YAML for ``model`` on ``dataset`` (FuxiCTR-style: one file per model/dataset)."""
    path = CONFIG_DIR / f"{model}_{dataset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise KarError(f"no experiment config {path.name}; pass --config or use one of: {known}")
    return path


def run_train(
    *,
    model: str,
    data_dir: Path,
    out: Path,
    config_path: Path | None = None,
    seed: int | None = None,
    frame: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train one ranker on the Feast training frame of ``data_dir`` and write ``out/metrics.json``.

    Args:
        model: ``deepfm`` or ``xgboost`` (ignored when ``config_path`` names another model).
        data_dir: Prepared and applied data folder.
        out: Output folder for metrics, model and encoder.
        config_path: Experiment YAML; defaults to the shipped ``<model>_<dataset>.yaml``.
        seed: Overrides the config's seed.
        frame: A training frame already retrieved (the demo trains several models on one retrieval).
        progress: Step callback.
    """
    from ctr import train_experiment
    from ctr.config import ExperimentConfig
    from kar import store

    step = progress or _noop
    dataset = read_summary(data_dir)["dataset"]
    config = ExperimentConfig.from_yaml(config_path or experiment_path(model, dataset))
    if seed is not None:
        config = config.with_seed(seed)
    if frame is None:
        step("point-in-time training frame from Feast")
        frame = store.training_frame(data_dir=data_dir)
    step(f"training {config.model}")
    return train_experiment(frame, config, out)


def run_demo(*, out: Path, n_users: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The main job on embedded defaults: synthetic data → Spark → Feast → DeepFM and XGBoost.

    Writes ``out/prepared`` (tables + Feast registry and online store), ``out/models/<model>`` and
    ``out/metrics.json``; returns the metrics.
    """
    from spark_jobs.datasets.synthetic import SyntheticConfig

    from kar import store

    step = progress or _noop
    started = time.perf_counter()
    data_dir = out / "prepared"
    synthetic = SyntheticConfig(n_users=n_users) if n_users else SyntheticConfig()
    summary = run_prepare(dataset="synthetic", out=data_dir, synthetic=synthetic, progress=step)
    step("feast apply")
    store.apply(data_dir=data_dir)
    step("point-in-time training frame from Feast")
    frame = store.training_frame(data_dir=data_dir)
    results = {
        model: run_train(
            model=model, data_dir=data_dir, out=out / "models" / model, frame=frame, progress=step
        )
        for model in MODELS
    }
    step("materializing the online store")
    feature_store = store.materialize(data_dir=data_dir)
    lookup = _sample_lookup(feature_store, frame)
    metrics = {
        "dataset": "synthetic",
        "samples": summary["splits"],
        "models": results,
        "online_lookup": lookup,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def _sample_lookup(feature_store: Any, frame: Any, n_items: int = 3) -> dict[str, Any]:
    from kar.store import online_features

    test = frame[frame["split"] == "test"]
    row = (test if len(test) else frame).iloc[0]
    item_ids: Sequence[int] = frame["item_id"].drop_duplicates().head(n_items).tolist()
    found = online_features(feature_store, user_id=int(row["user_id"]), item_ids=item_ids)
    return {
        "user": found["user"].to_dict(orient="records")[0],
        "items": found["items"].to_dict(orient="records"),
    }
