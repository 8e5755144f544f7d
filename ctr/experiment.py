"""One entry point for every ranker: dispatches an experiment config to the torch or XGBoost trainer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctr.config import ExperimentConfig
from ctr.models import check_model_params
from ctr.progress import ProgressCallback
from ctr.runs import TORCH_MODEL_FILE, XGBOOST_MODEL_FILE
from ctr.trainer import Ranker, load_torch_ranker, train_torch
from ctr.xgb import MODEL_NAME as XGBOOST
from ctr.xgb import XGBoostRanker, load_xgboost_ranker, train_xgboost, xgboost_params
from kar.contracts.errors import DataError
from kar.contracts.results import TrainMetrics


def train_experiment(
    frame: pd.DataFrame, config: ExperimentConfig, out_dir: Path, progress: ProgressCallback | None = None
) -> TrainMetrics:
    """Train and evaluate the experiment's model on ``frame``; write the run to ``out_dir``.

    Args:
        frame: The training frame from Feast (feature columns, ``label``, ``split``).
        config: The experiment (model, features, hyper-parameters, seed).
        out_dir: Receives ``metrics.json``, ``config.yaml``, ``encoder.json`` and the model file.
        progress: Optional callback receiving :class:`ctr.progress.ProgressEvent` reports.

    Returns:
        The run's metrics (``val`` and ``test`` hold ``auc`` and ``logloss``), also in ``metrics.json``.

    Raises:
        kar.contracts.errors.DataError: If the frame or config cannot be used.
    """
    check_experiment(config)
    train = train_xgboost if config.model == XGBOOST else train_torch
    return train(frame, config, Path(out_dir), progress=progress)


def load_ranker(run_dir: Path) -> Ranker | XGBoostRanker:
    """The ranker a ``kar train`` run wrote (torch or XGBoost): ``.predict(frame)`` gives click probabilities.

    Raises:
        kar.contracts.errors.DataError: ``run_dir`` holds no finished run.
    """
    run_dir = Path(run_dir)
    if (run_dir / XGBOOST_MODEL_FILE).is_file():
        return load_xgboost_ranker(run_dir)
    if (run_dir / TORCH_MODEL_FILE).is_file():
        return load_torch_ranker(run_dir)
    raise DataError(f"{run_dir}: no {TORCH_MODEL_FILE} or {XGBOOST_MODEL_FILE}; pass a run folder `kar train` wrote")


def check_experiment(config: ExperimentConfig) -> None:
    """Fail fast on an unknown model or model parameter, before any data is fetched.

    Raises:
        kar.contracts.errors.DataError: Naming the model or the parameter.
    """
    if config.model == XGBOOST:
        xgboost_params(config.model_params)
    else:
        check_model_params(config.model, config.model_params, config.inputs)
