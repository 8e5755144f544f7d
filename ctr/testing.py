"""Tiny generated training frames with a planted signal, for unit tests and smoke runs.

Every user belongs to a hidden taste group and every item has a primary genre; a random group × genre
table decides whether the user likes the item, which sets the click probability. The signal is visible to a
ranker through ``user_id``/``item_id``, the user's ``occupation`` (equal to the group most of the time), the
item's ``genres`` and, because users pick liked items more often, the genres of the history items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctr.frame import SPLITS

GENRES = ("Action", "Comedy", "Drama", "Sci-Fi", "Horror", "Romance")
HISTORY_LEN = 10


def planted_frame(
    *,
    n_users: int = 200,
    n_items: int = 100,
    n_rows: int = 6000,
    n_groups: int = 4,
    dense_dim: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """A training frame (see :mod:`ctr.frame`) whose label depends on user group × item genre.

    Args:
        n_users: Number of users.
        n_items: Number of items.
        n_rows: Number of CTR samples; the first 80% in time are train, then 10% val and 10% test.
        n_groups: Number of hidden user taste groups.
        dense_dim: If set, adds ``user_knowledge`` (float32 vectors carrying the group, null for ~10% of
            users), ``item_knowledge`` (carrying the item's primary genre, null for ~10% of items) and their
            ``has_*`` flags, the columns the bundled experiments read.
        seed: Seed of the generator.
    """
    rng = np.random.default_rng(seed)
    group = rng.integers(n_groups, size=n_users)
    genre = rng.integers(len(GENRES), size=n_items)
    likes = rng.random((n_groups, len(GENRES))) < 0.5

    users = rng.integers(n_users, size=n_rows)
    liked_items = [np.flatnonzero(likes[group[u], genre]) for u in range(n_users)]
    # Users pick a liked item half of the time (on top of random picks), so their history carries their taste.
    picks_liked = rng.random(n_rows) < 0.5
    items = np.array(
        [
            rng.choice(liked_items[u]) if liked and len(liked_items[u]) else rng.integers(n_items)
            for u, liked in zip(users, picks_liked, strict=True)
        ]
    )
    liked = likes[group[users], genre[items]]
    label = (rng.random(n_rows) < np.where(liked, 0.9, 0.1)).astype(np.int64)

    start = pd.Timestamp("2024-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "user_id": users.astype(np.int64) + 1,
            "item_id": items.astype(np.int64) + 1,
            "event_timestamp": start + pd.to_timedelta(np.arange(n_rows), unit="min"),
            "label": label,
            "rating": np.where(label == 1, 4.0, 2.0) + rng.integers(2, size=n_rows),
            "split": _time_splits(n_rows),
            "hist_item_ids": _histories(users, items + 1),
        }
    )
    frame = frame.join(_user_profiles(group, rng), on="user_id")
    frame = frame.join(_item_profiles(genre, rng), on="item_id")
    if dense_dim is not None:
        frame = _add_knowledge(frame, "user", group, n_groups=n_groups, dim=dense_dim, rng=rng)
        frame = _add_knowledge(frame, "item", genre, n_groups=len(GENRES), dim=dense_dim, rng=rng)
    return frame


def _time_splits(n_rows: int) -> np.ndarray:
    bounds = [int(n_rows * 0.8), int(n_rows * 0.9)]
    return np.array(SPLITS)[np.searchsorted(bounds, np.arange(n_rows), side="right")]


def _histories(users: np.ndarray, items: np.ndarray) -> list[np.ndarray]:
    """Each row's previous ≤10 items of the same user, oldest first (rows are in time order)."""
    seen: dict[int, list[int]] = {}
    histories = []
    for user, item in zip(users.tolist(), items.tolist(), strict=True):
        past = seen.setdefault(user, [])
        histories.append(np.array(past[-HISTORY_LEN:], dtype=np.int64))
        past.append(item)
    return histories


def _user_profiles(group: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n_users = len(group)
    # Occupation reveals the group for 80% of users; the rest have a random one.
    occupation = np.where(rng.random(n_users) < 0.8, group, rng.integers(group.max() + 1, size=n_users))
    gender = rng.choice(np.array(["M", "F", None], dtype=object), size=n_users, p=[0.45, 0.45, 0.1])
    return pd.DataFrame(
        {
            "gender": gender,
            "age": rng.choice([18, 25, 35, 45, 56], size=n_users).astype(np.int64),
            "occupation": [f"occupation-{o}" for o in occupation],
            "zip_code": [f"{z:05d}" for z in rng.integers(100, size=n_users)],
        },
        index=pd.RangeIndex(1, n_users + 1, name="user_id"),
    )


def _item_profiles(genre: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n_items = len(genre)
    second = rng.integers(len(GENRES), size=n_items)
    genres = [
        [GENRES[g]] if rng.random() < 0.5 else [GENRES[g], GENRES[s]]
        for g, s in zip(genre.tolist(), second.tolist(), strict=True)
    ]
    year = rng.integers(1950, 2000, size=n_items).astype(np.float64)
    year[rng.random(n_items) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "title": [f"Item {i}" for i in range(1, n_items + 1)],
            "genres": genres,
            "year": year,
            "description": [None if i % 3 == 0 else f"About item {i}" for i in range(1, n_items + 1)],
        },
        index=pd.RangeIndex(1, n_items + 1, name="item_id"),
    )


def _add_knowledge(
    frame: pd.DataFrame, entity: str, group: np.ndarray, *, n_groups: int, dim: int, rng: np.random.Generator
) -> pd.DataFrame:
    """A noisy per-entity vector encoding its group, as LLM knowledge about the entity would."""
    centers = rng.normal(size=(n_groups, dim)).astype(np.float32)
    vectors = centers[group] + 0.5 * rng.normal(size=(len(group), dim)).astype(np.float32)
    has = rng.random(len(group)) >= 0.1
    ids = frame[f"{entity}_id"].to_numpy() - 1
    return frame.assign(
        **{
            f"{entity}_knowledge": [vectors[i] if has[i] else None for i in ids],
            f"has_{entity}_knowledge": has[ids],
        }
    )
