"""An experiment for any training frame: fields from the columns' types, defaults for everything else.

The bundled YAMLs cover the bundled datasets; a team's own tables (``kar prepare --dataset table``) or its own
feature service bring columns no YAML names. :func:`derive_experiment` reads the frame instead:

* integers, booleans and text → sparse fields (embedded; unseen values share index 0);
* lists of text or integers → sequence fields (``hist_item_ids`` shares ``item_id``'s table);
* floats and float vectors → dense fields, the knowledge vectors among them;
* the label, its rating, the split, timestamps and ``has_*`` flags are never features.

A YAML (``kar train --config``) then overrides any part: :func:`merged` lays its keys over the derived ones.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from adaptors import AdaptorConfig
from ctr.config import ExperimentConfig, TrainConfig
from ctr.features import DenseField, FeatureSpec, SequenceField, SparseField
from ctr.xgb import MODEL_NAME as XGBOOST

# Never features: the target, what it is made of, bookkeeping, and the flags of knowledge vectors.
NOT_FEATURES = frozenset({"label", "rating", "split", "event_timestamp", "created_timestamp"})
HISTORY, HISTORY_LEN, SEQUENCE_CAP = "hist_item_ids", 10, 20
# Aim for this many optimiser steps per epoch on small frames (a 2,048 batch is one step on a 2,000-row log).
STEPS_PER_EPOCH = 20


def derive_experiment(
    *,
    model: str,
    frame: pd.DataFrame,
    knowledge: Sequence[str] = (),
    dataset: str | None = None,
    exclude: Collection[str] = (),
    seed: int = 2024,
) -> ExperimentConfig:
    """An experiment reading every usable column of ``frame``.

    Args:
        model: ``xgboost``, a registered torch model, or ``package.module:Class`` (give ``inputs`` by YAML).
        frame: The training frame (its train split decides the types).
        knowledge: Dense fields holding knowledge vectors: a torch model adapts them (KAR's hybrid experts);
            XGBoost reads them as columns.
        dataset: Recorded in the config.
        exclude: More columns that are not features (e.g. a team's raw id beside ``user_id``).
        seed: The experiment's seed.
    """
    train = frame[frame["split"] == "train"] if "split" in frame.columns else frame
    skipped = NOT_FEATURES | set(exclude)
    sparse, sequence, dense = [], [], []
    for column in frame.columns:
        if column in skipped or column.startswith("has_"):
            continue
        kind = column_kind(train[column])
        if column in knowledge or kind == "dense":
            dense.append(DenseField(name=column))
        elif kind == "sparse":
            sparse.append(SparseField(name=column))
        elif kind == "sequence":
            sequence.append(_sequence(column, train[column], sparse=[f.name for f in sparse]))
    features = FeatureSpec(sparse=tuple(sparse), sequence=tuple(sequence), dense=tuple(dense))
    knowledge_config = AdaptorConfig(fields=tuple(knowledge)) if knowledge and model != XGBOOST else None
    batch = int(np.clip(len(train) // STEPS_PER_EPOCH, 64, 2048))
    return ExperimentConfig(
        model=model,
        dataset=dataset,
        seed=seed,
        features=features,
        knowledge=knowledge_config,
        train=TrainConfig(batch_size=batch),
    )


def column_kind(values: pd.Series) -> str:
    """``sparse``, ``sequence``, ``dense`` or ``skip`` for a column, from its dtype and first non-null value."""
    if pd.api.types.is_datetime64_any_dtype(values) or values.isna().all():
        return "skip"
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        return "sparse"
    if pd.api.types.is_float_dtype(values):
        whole = values.dropna()
        return "sparse" if len(whole) and (whole == np.round(whole)).all() and whole.nunique() <= 1000 else "dense"
    first = values.dropna().iloc[0]
    if isinstance(first, list | tuple | np.ndarray):
        items = np.asarray(first)
        return "dense" if items.dtype.kind == "f" else "sequence"
    return "sparse" if isinstance(first, str | int | np.integer | bool) else "skip"


def _sequence(column: str, values: pd.Series, *, sparse: Sequence[str]) -> SequenceField:
    if column == HISTORY:
        return SequenceField(name=column, max_len=HISTORY_LEN, share="item_id" if "item_id" in sparse else None)
    lengths = values.dropna().map(len)
    max_len = int(min(SEQUENCE_CAP, max(1, lengths.quantile(0.95) if len(lengths) else 1)))
    return SequenceField(name=column, max_len=max_len)


def merged(base: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """``base`` with the keys of a (partial) experiment mapping laid over it, nested mappings key by key.

    Raises:
        DataError: An override that makes an invalid experiment (named by its key path).
    """
    return ExperimentConfig.from_dict(_deep_merge(base.to_dict(), overrides))


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out
