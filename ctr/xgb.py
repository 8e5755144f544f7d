"""XGBoost baseline on the same features as the torch rankers.

Trees need a flat numeric table, so the encoder's output is flattened:

* a sparse field is its id, either as a native XGBoost categorical feature (``categorical: true``, the
  default) or as a number, which is meaningful too: ids are train-frequency ranks (1 = most frequent,
  0 = unknown or missing);
* a sequence field over a small vocabulary (genres) is multi-hot; over a large one (item history) it is
  summarised by its length, its newest id and the mean and minimum id (how popular the items are);
* a dense vector contributes one column per component.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from ctr._mapping import from_mapping
from ctr.config import ExperimentConfig, load_config
from ctr.features import UNKNOWN, Encoder
from ctr.frame import LABEL, split_frame
from ctr.metrics import binary_metrics
from ctr.progress import ProgressCallback, ProgressEvent
from ctr.runs import CONFIG_FILE, ENCODER_FILE, XGBOOST_MODEL_FILE, prepare_run_dir, write_metrics
from kar.contracts.results import TrainMetrics

MODEL_NAME = "xgboost"


@dataclass(frozen=True, kw_only=True)
class XGBoostParams:
    """The ``model_params`` of an XGBoost experiment.

    Attributes:
        num_boost_round: Maximum number of trees.
        early_stopping_rounds: Rounds without a better validation AUC before stopping.
        categorical: Whether sparse ids are categorical features (else numbers: their frequency rank).
        multi_hot_max: Sequence fields whose table has at most this many values are multi-hot encoded.
        max_depth: Maximum tree depth.
        eta: Learning rate.
        subsample: Row subsampling per tree.
        colsample_bytree: Column subsampling per tree.
        min_child_weight: Minimum hessian weight in a leaf.
        reg_lambda: L2 regularisation of leaf weights (XGBoost's ``lambda``).
        extra: Any other native XGBoost parameters, passed through unchanged.
    """

    num_boost_round: int = 1000
    early_stopping_rounds: int = 20
    categorical: bool = True
    multi_hot_max: int = 64
    max_depth: int = 6
    eta: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def booster_params(self, *, seed: int, num_threads: int) -> dict[str, Any]:
        """Native XGBoost parameters for binary classification with validation AUC as the stopping metric."""
        return {
            "objective": "binary:logistic",
            # The last metric drives early stopping.
            "eval_metric": ["logloss", "auc"],
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.eta,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "seed": seed,
            "nthread": num_threads,
            **self.extra,
        }


def xgboost_params(raw: dict[str, Any]) -> XGBoostParams:
    """Parse an experiment's ``model_params`` for XGBoost.

    Raises:
        DataError: Naming an unknown or wrongly typed key.
    """
    return from_mapping(XGBoostParams, raw, where="model_params")


class _ReportRounds(xgb.callback.TrainingCallback):
    """Forwards each boosting round's validation AUC to a progress callback."""

    def __init__(self, progress: ProgressCallback, *, rounds: int):
        super().__init__()
        self.progress = progress
        self.rounds = rounds

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict[str, Any]) -> bool:
        val = {metric: float(values[-1]) for metric, values in evals_log["val"].items()}
        self.progress(ProgressEvent(model=MODEL_NAME, epoch=epoch + 1, epochs=self.rounds, step=1, steps=1, val=val))
        return False


def train_xgboost(
    frame: pd.DataFrame, config: ExperimentConfig, out_dir: Path, *, progress: ProgressCallback | None = None
) -> TrainMetrics:
    """Boost trees on the train split, stop on validation AUC, score test once with the best round.

    Writes ``config.yaml``, ``encoder.json``, ``model.ubj`` (trees up to the best round) and ``metrics.json``.

    Args:
        frame: The training frame (feature columns, ``label``, ``split``).
        config: The experiment; ``model_params`` are :class:`XGBoostParams`.
        out_dir: Where the run's files go (created if needed).
        progress: Called after every boosting round.

    Returns:
        The content of ``metrics.json``.
    """
    started = time.perf_counter()
    params = xgboost_params(config.model_params)
    splits = split_frame(frame)
    encoder = Encoder.fit(splits["train"], spec=config.features)
    threads = config.train.num_threads
    matrices = {name: feature_matrix(encoder, part, params=params, nthread=threads) for name, part in splits.items()}
    out_dir = prepare_run_dir(out_dir, config=config, encoder=encoder)

    fit_started = time.perf_counter()
    booster = xgb.train(
        params.booster_params(seed=config.seed, num_threads=threads),
        matrices["train"],
        num_boost_round=params.num_boost_round,
        evals=[(matrices["val"], "val")],
        early_stopping_rounds=params.early_stopping_rounds,
        verbose_eval=False,
        callbacks=[_ReportRounds(progress, rounds=params.num_boost_round)] if progress else None,
    )
    fit_seconds = time.perf_counter() - fit_started
    rounds_run = booster.num_boosted_rounds()
    best = booster[: booster.best_iteration + 1]
    scores = {name: binary_metrics(m.get_label(), best.predict(m)) for name, m in matrices.items() if name != "train"}

    best.save_model(out_dir / XGBOOST_MODEL_FILE)
    n_train = len(splits["train"])
    metrics = TrainMetrics(
        model=MODEL_NAME,
        dataset=config.dataset,
        val=scores["val"],
        test=scores["test"],
        best_round=booster.best_iteration + 1,
        rounds_run=rounds_run,
        n_train=n_train,
        n_val=len(splits["val"]),
        n_test=len(splits["test"]),
        n_features=matrices["train"].num_col(),
        seed=config.seed,
        seconds=round(time.perf_counter() - started, 3),
        samples_per_sec=round(n_train * rounds_run / fit_seconds, 1),
    )
    write_metrics(out_dir, metrics)
    return metrics


def feature_matrix(encoder: Encoder, frame: pd.DataFrame, *, params: XGBoostParams, nthread: int) -> xgb.DMatrix:
    """Flatten the encoded features of ``frame`` into a DMatrix (labels attached when ``frame`` has them)."""
    arrays = encoder.transform(frame)
    columns = {f.name: arrays[f.name] for f in encoder.spec.sparse}
    categorical = set(columns) if params.categorical else set()
    for seq in encoder.spec.sequence:
        vocab = encoder.vocabs[seq.table]
        if len(vocab) <= params.multi_hot_max:
            columns.update(_multi_hot(seq.name, arrays[seq.name], vocab))
        else:
            columns.update(_sequence_summary(seq.name, arrays[seq.name]))
    for dense in encoder.spec.dense:
        columns.update({f"{dense.name}_{i}": column for i, column in enumerate(arrays[dense.name].T)})
    return xgb.DMatrix(
        np.column_stack(list(columns.values())).astype(np.float32),
        label=frame[LABEL].to_numpy(dtype=np.float32) if LABEL in frame.columns else None,
        feature_names=list(columns),
        feature_types=["c" if name in categorical else "q" for name in columns],
        enable_categorical=bool(categorical),
        nthread=nthread,
    )


def _multi_hot(name: str, ids: np.ndarray, vocab: list[str]) -> dict[str, np.ndarray]:
    hot = np.zeros((len(ids), len(vocab) + 1), dtype=np.float32)
    hot[np.arange(len(ids))[:, None], ids] = 1.0
    return {f"{name}={_feature_name(key)}": hot[:, i + 1] for i, key in enumerate(vocab)}


def _feature_name(key: str) -> str:
    # XGBoost rejects '[', ']' and '<' in feature names.
    return re.sub(r"[\[\]<]", "_", key)


def _sequence_summary(name: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    present = ids != UNKNOWN
    length = present.sum(axis=1)
    empty = length == 0
    newest_position = ids.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1)
    newest = ids[np.arange(len(ids)), newest_position]
    mean = np.where(present, ids, 0).sum(axis=1) / np.maximum(length, 1)
    least = np.where(present, ids, np.iinfo(np.int64).max).min(axis=1)
    # NaN is XGBoost's missing value: an empty sequence has no newest, mean or minimum id.
    return {
        f"{name}_len": length.astype(np.float32),
        f"{name}_newest": np.where(empty, np.nan, newest).astype(np.float32),
        f"{name}_mean": np.where(empty, np.nan, mean).astype(np.float32),
        f"{name}_min": np.where(empty, np.nan, least).astype(np.float32),
    }


@dataclass(frozen=True, kw_only=True)
class XGBoostRanker:
    """Trained trees with the encoder and config they were trained with: scores frames as ``Ranker`` does.

    Attributes:
        booster: The trees up to the best round.
        encoder: Encodes frames exactly as in training.
        config: The experiment it came from.
    """

    booster: xgb.Booster
    encoder: Encoder
    config: ExperimentConfig

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Click probabilities for the rows of ``frame`` (feature columns as in the training frame)."""
        params = xgboost_params(self.config.model_params)
        matrix = feature_matrix(self.encoder, frame, params=params, nthread=self.config.train.num_threads)
        return self.booster.predict(matrix)


def load_xgboost_ranker(run_dir: Path) -> XGBoostRanker:
    """Load the trees, encoder and config a :func:`train_xgboost` run wrote to ``run_dir``."""
    run_dir = Path(run_dir)
    booster = xgb.Booster()
    booster.load_model(run_dir / XGBOOST_MODEL_FILE)
    return XGBoostRanker(
        booster=booster, encoder=Encoder.load(run_dir / ENCODER_FILE), config=load_config(run_dir / CONFIG_FILE)
    )
