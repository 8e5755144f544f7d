"""The synthetic data's theme probe and the leakage canary's whole-log tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kar.bench.canary import whole_log_tables
from kar.bench.probe import THEMES, probe, theme_indicators


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
