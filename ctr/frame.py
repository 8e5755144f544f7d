"""The training frame contract: rows from Feast ``get_historical_features`` with a label and a split.

Feature columns are described by a :class:`ctr.features.FeatureSpec`; this module owns the two columns every
trainer needs whatever the features: ``label`` (0/1 click) and ``split`` (train/val/test), and the labels of
the tasks a multi-task ranker learns (:data:`TASKS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kar.contracts.errors import DataError

LABEL = "label"
SPLIT = "split"
SPLITS = ("train", "val", "test")
RATING = "rating"
CLICK = "click"
# Task name → how its 0/1 label derives from the frame. ``click`` is the prepared label (rating > 3 on MovieLens,
# > 4 on Amazon); ``love`` is a top rating (5 stars on both scales).
TASKS = {CLICK: "label", "love": "rating == 5"}


def split_frame(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Partition ``frame`` by its ``split`` column after checking labels and splits are usable.

    Raises:
        DataError: If a column is missing, a split or label value is invalid, or a split lacks a class
            (AUC needs both).
    """
    for column in (LABEL, SPLIT):
        if column not in frame.columns:
            raise DataError(f"training frame: no column {column!r}")
    _check_values(frame, SPLIT, SPLITS)
    _check_values(frame, LABEL, (0, 1))
    # Rows keep the frame's index, so errors about a row name it as the caller knows it.
    parts = {name: frame[frame[SPLIT] == name] for name in SPLITS}
    for name, part in parts.items():
        classes = sorted(part[LABEL].unique().tolist())
        if classes != [0, 1]:
            raise DataError(f"training frame: split {name!r} has {len(part)} rows, labels {classes}; AUC needs 0 and 1")
    return parts


def _check_values(frame: pd.DataFrame, column: str, allowed: tuple[object, ...]) -> None:
    bad = frame[~frame[column].isin(allowed)]
    if not bad.empty:
        raise DataError(
            f"training frame: {column} is {bad[column].tolist()[0]!r} in row {bad.index[0]} "
            f"({len(bad)} bad rows; allowed: {', '.join(map(str, allowed))})"
        )


def task_labels(frame: pd.DataFrame, tasks: Sequence[str]) -> np.ndarray:
    """0/1 labels ``[n, len(tasks)]`` (float32) of ``tasks`` for the rows of ``frame``, in task order.

    Raises:
        DataError: If a task is unknown or the frame lacks the column its label derives from.
    """
    columns = []
    for task in tasks:
        if task == CLICK:
            columns.append(frame[LABEL].to_numpy())
        elif task == "love":
            if RATING not in frame.columns:
                raise DataError(f"task 'love' needs a {RATING!r} column in the training frame")
            columns.append(frame[RATING].to_numpy() == 5)
        else:
            raise DataError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    return np.column_stack(columns).astype(np.float32)
