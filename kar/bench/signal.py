"""Where the synthetic data's planted signal is, and where a pipeline can lose it: ranker-free AUCs on test.

The generator knows every rating's latent terms, so the test samples can be scored by the truth itself
(the ceiling), by the truth without its theme term (what a ranker blind to item text could reach at best),
and by the theme term alone. Two scores need only the encoded text and no ranker: the cosine between a
user's prompt vector and the item's, and the cosine between the item's vector and the rating-weighted mean
of the item vectors of the user's knowledge history (the history's items seen through their text). When the
second is well above the first, the user's prompt is where the theme taste is lost, not the item text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kar.bench.probe import item_vectors, newest_vectors
from kar.contracts.tables import HISTORY_DIR, SAMPLES_DIR, VECTORS_DIR

NEUTRAL_RATING = 3.0  # history items rated above it pull the profile towards them, below it away


@dataclass(frozen=True, kw_only=True)
class SignalScores:
    """Test AUCs that need no ranker.

    Attributes:
        oracle: The generator's own ``p_positive``.
        oracle_without_themes: The affinity without its theme term.
        themes_only: The theme term alone (0.5 when ``theme_weight`` is 0).
        user_item_cosine: Cosine of the user's prompt vector and the item's vector.
        history_profile_cosine: Cosine of the item's vector and the rating-weighted mean of the vectors of the
            user's history items.
        test_samples: Test samples scored (those with every vector).
    """

    oracle: float
    oracle_without_themes: float
    themes_only: float
    user_item_cosine: float
    history_profile_cosine: float
    test_samples: int


def signal_scores(*, data_dir: Path, text_folder: Path, truth: pd.DataFrame) -> SignalScores:
    """Score the test samples of ``data_dir`` by the truth and by the text control's vectors.

    Args:
        data_dir: The prepared synthetic folder.
        text_folder: The no-LLM control's folder (``vectors/user`` and ``vectors/item`` of the prompts).
        truth: ``SyntheticData.truth`` of the generation behind ``data_dir``.
    """
    from sklearn.metrics import roc_auc_score

    items = item_vectors(text_folder)
    users = newest_vectors(text_folder / VECTORS_DIR / "user")
    profiles = _history_profiles(data_dir, items)
    samples = pd.read_parquet(data_dir / SAMPLES_DIR, columns=["user_id", "item_id", "label", "split"])
    test = samples[(samples["split"] == "test")]
    test = test[test["item_id"].isin(items.index) & test["user_id"].isin(users.index)]
    test = test[test["user_id"].isin(profiles.index)]
    scored = test.merge(truth.drop_duplicates(["user_id", "item_id"]), on=["user_id", "item_id"], how="left")
    item_rows = items.loc[test["item_id"]].to_numpy()

    def auc(score: np.ndarray | pd.Series) -> float:
        return round(float(roc_auc_score(test["label"], np.asarray(score))), 4)

    return SignalScores(
        oracle=auc(scored["p_positive"]),
        oracle_without_themes=auc(scored["affinity"] - scored["theme_score"]),
        themes_only=auc(scored["theme_score"]),
        user_item_cosine=auc(_cosine(users.loc[test["user_id"]].to_numpy(), item_rows)),
        history_profile_cosine=auc(_cosine(profiles.loc[test["user_id"]].to_numpy(), item_rows)),
        test_samples=len(test),
    )


def _history_profiles(data_dir: Path, items: pd.DataFrame) -> pd.DataFrame:
    history = pd.read_parquet(data_dir / HISTORY_DIR, columns=["user_id", "item_id", "rating"])
    history = history[history["item_id"].isin(items.index)]
    weighted = items.loc[history["item_id"]].to_numpy() * (history["rating"].to_numpy() - NEUTRAL_RATING)[:, None]
    return pd.DataFrame(weighted).groupby(history["user_id"].to_numpy()).mean()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
