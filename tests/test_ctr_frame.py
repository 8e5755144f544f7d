"""Training-frame checks and metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctr.frame import split_frame
from ctr.metrics import binary_metrics
from kar.contracts.errors import DataError


def _frame(**overrides: list) -> pd.DataFrame:
    columns = {"label": [0, 1] * 3, "split": ["train"] * 2 + ["val"] * 2 + ["test"] * 2} | overrides
    return pd.DataFrame(columns)


def test_split_frame_partitions_rows() -> None:
    parts = split_frame(_frame())
    assert {name: len(part) for name, part in parts.items()} == {"train": 2, "val": 2, "test": 2}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"split": ["train"] * 2 + ["valid"] * 2 + ["test"] * 2}, "split is 'valid' in row 2"),
        ({"label": [0, 1, 0, 2, 0, 1]}, "label is 2 in row 3"),
        ({"label": [0, 1, 0, 0, 0, 1]}, "split 'val' has 2 rows, labels \\[0\\]"),
    ],
)
def test_split_frame_rejects_unusable_frames(overrides: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        split_frame(_frame(**overrides))


def test_metrics_of_perfect_and_certain_wrong_predictions() -> None:
    labels = np.array([0, 1, 1, 0])
    perfect = binary_metrics(labels, np.array([0.0, 1.0, 1.0, 0.0]))
    wrong = binary_metrics(labels, np.array([1.0, 0.0, 0.0, 1.0]))

    assert perfect["auc"] == 1.0
    assert perfect["logloss"] == pytest.approx(0.0, abs=1e-6)
    assert wrong["auc"] == 0.0
    assert np.isfinite(wrong["logloss"]) and wrong["logloss"] > 10  # clipped, not infinite
