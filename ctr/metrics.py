"""Ranking metrics reported by every trainer."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

# Probabilities are clipped so one confident mistake gives a large but finite log loss.
EPSILON = 1e-7


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and log loss of click probabilities ``probs`` against 0/1 ``labels`` (both classes required)."""
    clipped = np.clip(np.asarray(probs, dtype=np.float64), EPSILON, 1 - EPSILON)
    return {
        "auc": float(roc_auc_score(labels, clipped)),
        "logloss": float(log_loss(labels, clipped, labels=[0, 1])),
    }
