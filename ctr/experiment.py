"""One entry point for every ranker: dispatches an experiment config to the torch or XGBoost trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ctr.config import ExperimentConfig
from ctr.models import check_model_params
from ctr.progress import ProgressCallback
from ctr.trainer import train_torch
from ctr.xgb import MODEL_NAME as XGBOOST
from ctr.xgb import train_xgboost, xgboost_params


def train_experiment(
    frame: pd.DataFrame, config: ExperimentConfig, out_dir: Path, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Train and evaluate the experiment's model on ``frame``; write the run to ``out_dir``.

    Args:
        frame: The training frame from Feast (feature columns, ``label``, ``split``).
        config: The experiment (model, features, hyper-parameters, seed).
        out_dir: Receives ``metrics.json``, ``config.yaml``, ``encoder.json`` and the model file.
        progress: Optional callback receiving :class:`ctr.progress.ProgressEvent` reports.

    Returns:
        The metrics: ``{"model", "val": {"auc", "logloss"}, "test": {"auc", "logloss"}, ...}``.

    Raises:
        kar.errors.DataError: If the frame or config cannot be used.
    """
    check_experiment(config)
    train = train_xgboost if config.model == XGBOOST else train_torch
    return train(frame, config, Path(out_dir), progress=progress)


def check_experiment(config: ExperimentConfig) -> None:
    """Fail fast on an unknown model or model parameter, before any data is fetched.

    Raises:
        kar.errors.DataError: Naming the model or the parameter.
    """
    if config.model == XGBOOST:
        xgboost_params(config.model_params)
    else:
        check_model_params(config.model, config.model_params)
