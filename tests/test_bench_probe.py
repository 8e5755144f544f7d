"""The synthetic data's theme probe, the ranker-free signal scores and the leakage canary's whole-log tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kar.bench.canary import whole_log_tables
from kar.bench.probe import THEMES, probe, theme_indicators
from kar.bench.signal import signal_scores


def _items(n: int, rng: np.random.Generator) -> pd.DataFrame:
    picked = [rng.choice(len(THEMES[:4]), size=1 + (i % 2), replace=False) for i in range(n)]
    return pd.DataFrame(
        {"item_id": np.arange(n) + 100, "description": [" and ".join(THEMES[t] for t in p) + "." for p in picked]}
    )


def test_theme_indicators_read_the_tags_the_description_names() -> None:
    items = pd.DataFrame({"item_id": [1, 2], "description": [f"A {THEMES[0]} story.", None]})
    indicators = theme_indicators(items, THEMES)
    assert indicators.loc[1, THEMES[0]] == 1 and indicators.loc[1].sum() == 1
    assert indicators.loc[2].sum() == 0 and list(indicators.columns) == list(THEMES)


def test_probe_finds_themes_a_vector_carries_and_not_those_it_does_not() -> None:
    rng = np.random.default_rng(0)
    items = _items(400, rng)
    indicators = theme_indicators(items, THEMES)
    noise = rng.standard_normal((len(items), 8))
    carrying = pd.DataFrame(np.hstack([indicators[list(THEMES[:4])].to_numpy() * 2.0, noise]), index=items["item_id"])
    blind = pd.DataFrame(noise, index=items["item_id"])
    seen, unseen = probe(carrying, indicators), probe(blind, indicators)
    assert seen.themes == unseen.themes == 4 and seen.items == 400
    assert seen.auc_mean > 0.95 and abs(unseen.auc_mean - 0.5) < 0.1
    too_few = probe(blind.iloc[:20], indicators)
    assert too_few.themes == 0 and too_few.auc_mean is None


def test_whole_log_tables_hold_every_interaction_up_to_each_users_last() -> None:
    ts = pd.to_datetime(["2024-01-03", "2024-01-01", "2024-01-02", "2024-02-01"], utc=True)
    interactions = pd.DataFrame(
        {"user_id": [1, 1, 1, 2], "item_id": [7, 8, 9, 7], "rating": [5.0, 1, 4, 3], "label": [1, 0, 1, 0],
         "event_timestamp": ts}
    )  # fmt: skip
    history, cutoffs = whole_log_tables(interactions)
    assert history[history.user_id == 1]["item_id"].tolist() == [8, 9, 7]  # oldest first
    assert history["position"].tolist() == [0, 1, 2, 0] and len(history) == len(interactions)
    assert cutoffs.set_index("user_id")["knowledge_cutoff"].to_dict() == {1: ts[0], 2: ts[3]}
    assert cutoffs["n_history"].tolist() == [3, 1]


def _vectors(folder: Path, ids: list[int], rows: np.ndarray) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "entity_id": ids,
            "as_of": pd.Timestamp("2024-01-01", tz="UTC"),
            "created_at": pd.Timestamp("2024-01-02", tz="UTC"),
            "vector": list(rows.astype(np.float32)),
        }
    ).to_parquet(folder / "part-0.parquet")


def test_signal_scores_find_the_taste_a_history_profile_carries_and_a_blind_prompt_does_not(tmp_path: Path) -> None:
    """Items are one of two themes; each user likes one. The history profile finds it, the prompt does not."""
    rng = np.random.default_rng(1)
    items, users = np.arange(40), np.arange(30)
    theme = items % 2
    taste = users % 2
    data, text = tmp_path / "data", tmp_path / "text"
    _vectors(text / "vectors" / "item", items.tolist(), np.eye(2)[theme] + 0.1 * rng.standard_normal((40, 2)))
    _vectors(text / "vectors" / "user", users.tolist(), rng.standard_normal((30, 2)))  # a prompt blind to taste
    history = pd.DataFrame({"user_id": np.repeat(users, 4), "item_id": rng.choice(items, 120)})
    history["rating"] = np.where(theme[history["item_id"]] == taste[history["user_id"]], 5.0, 1.0)
    (data / "knowledge_history").mkdir(parents=True)
    history.to_parquet(data / "knowledge_history" / "part-0.parquet")
    test = pd.DataFrame({"user_id": np.repeat(users, 6), "item_id": rng.choice(items, 180), "split": "test"})
    test["label"] = (theme[test["item_id"]] == taste[test["user_id"]]).astype(int)
    (data / "samples").mkdir()
    test.to_parquet(data / "samples" / "part-0.parquet")
    truth = test[["user_id", "item_id"]].assign(
        theme_score=test["label"] * 1.0, affinity=test["label"] * 1.0, p_positive=test["label"] * 0.9
    )
    scores = signal_scores(data_dir=data, text_folder=text, truth=truth)
    assert scores.test_samples == 180 and scores.oracle == 1.0 and scores.themes_only == 1.0
    assert scores.oracle_without_themes == 0.5  # nothing but the theme term here
    assert scores.history_profile_cosine > 0.95 and abs(scores.user_item_cosine - 0.5) < 0.15
