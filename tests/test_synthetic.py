"""The synthetic dataset: MovieLens shape, determinism, realistic logs, and a latent model that is learnable.

The learnability tests pair each signal with a control config in which that signal is switched off, so a
statistic that passes for reasons other than the intended signal makes the control fail.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kar.contracts.errors import DataError
from spark_jobs.datasets import vocab_synthetic as vocab
from spark_jobs.datasets.synthetic import (
    POSITIVE_THRESHOLD,
    RATING_SHARES,
    SyntheticConfig,
    SyntheticData,
    generate,
    themes_in,
)

SMALL = SyntheticConfig(n_users=120, n_items=150, mean_interactions=35, seed=11)
DAY = 86_400


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SyntheticConfig())


def _labelled(data: SyntheticData) -> pd.DataFrame:
    """Interactions with profile and item columns, text themes and the label ``y = rating > 3``."""
    frame = data.interactions.merge(data.users, on="user_id").merge(data.items, on="item_id")
    frame["themes"] = frame["description"].map(themes_in)
    frame["y"] = (frame["rating"] > POSITIVE_THRESHOLD).astype(float)
    return frame


def _group_rate(train: pd.DataFrame, test: pd.DataFrame, keys: list[str], prior: float = 20.0) -> np.ndarray:
    """Per test row: mean over its genres of the smoothed train label rate of ``keys + [genre]``."""
    cols = [*keys, "genres"]
    grouped = train[[*cols, "y"]].explode("genres").groupby(cols)["y"].agg(["sum", "count"])
    base = train["y"].mean()
    rate = (grouped["sum"] + prior * base) / (grouped["count"] + prior)
    rows = test[cols].reset_index().explode("genres")
    index = pd.MultiIndex.from_frame(rows[cols]) if keys else pd.Index(rows["genres"])
    rows["score"] = rate.reindex(index).fillna(base).to_numpy()
    return rows.groupby("index")["score"].mean().reindex(test.index).to_numpy()


def _user_tag_deviation(train: pd.DataFrame, test: pd.DataFrame, column: str) -> np.ndarray:
    """Per test row: mean over its tags of the user's shrunken train residual (label - own mean) on a tag."""
    rows = train[["user_id", column, "y"]].explode(column)
    rows["residual"] = rows["y"] - rows["user_id"].map(train.groupby("user_id")["y"].mean())
    grouped = rows.groupby(["user_id", column])["residual"].agg(["sum", "count"])
    deviation = grouped["sum"] / (grouped["count"] + 5.0)  # shrunk towards 0 for rarely seen tags
    target = test[["user_id", column]].reset_index().explode(column)
    keys = pd.MultiIndex.from_frame(target[["user_id", column]])
    target["score"] = deviation.reindex(keys).fillna(0.0).to_numpy()
    return target.groupby("index")["score"].mean().reindex(test.index).to_numpy()


def _profile_auc(data: SyntheticData, keys: list[str]) -> float:
    """AUC on held-out users of genre × ``keys`` label rates learnt on the other users."""
    frame = _labelled(data)
    train, test = frame[frame["user_id"] % 2 == 1], frame[frame["user_id"] % 2 == 0]
    return roc_auc_score(test["y"], _group_rate(train, test, keys))


def _theme_lift(data: SyntheticData) -> tuple[float, float]:
    """AUC on each user's last 30 % of a user+item+genre model, without and with description themes."""
    frame = _labelled(data)
    position = frame.groupby("user_id").cumcount()  # interactions are sorted by user, then time
    size = frame.groupby("user_id")["user_id"].transform("size")
    train, test = frame[position < 0.7 * size], frame[position >= 0.7 * size]
    base_rate = train["y"].mean()
    item = train.groupby("item_id")["y"].agg(["sum", "count"])
    item_rate = (item["sum"] + 10 * base_rate) / (item["count"] + 10)
    item_rate = item_rate.reindex(test["item_id"]).fillna(base_rate)
    genre_model = (
        test["user_id"].map(train.groupby("user_id")["y"].mean()).to_numpy()
        + item_rate.to_numpy()
        + _user_tag_deviation(train, test, "genres")
    )
    theme_model = genre_model + _user_tag_deviation(train, test, "themes")
    return roc_auc_score(test["y"], genre_model), roc_auc_score(test["y"], theme_model)


# ---------------------------------------------------------------- shape


def test_columns_and_dtypes(data: SyntheticData) -> None:
    expected = {
        "users": {
            "user_id": "int64",
            "gender": "object",
            "age": "int64",
            "occupation": "object",
            "zip_code": "object",
        },
        "items": {
            "item_id": "int64",
            "title": "object",
            "genres": "object",
            "year": "int64",
            "description": "object",
        },
        "interactions": {"user_id": "int64", "item_id": "int64", "rating": "int64", "timestamp": "int64"},
    }
    for name, columns in expected.items():
        frame = getattr(data, name)
        assert {c: str(t) for c, t in frame.dtypes.items()} == columns, name
    assert len(data.users) == 1000 and len(data.items) == 400
    assert data.users["user_id"].tolist() == list(range(1, 1001))
    assert data.items["item_id"].tolist() == list(range(1, 401))


def test_user_profiles_look_like_movielens(data: SyntheticData) -> None:
    users = data.users
    assert set(users["gender"]) == {"M", "F"}
    assert set(users["age"]) == set(vocab.AGES)
    assert set(users["occupation"]) <= set(vocab.OCCUPATIONS) and users["occupation"].nunique() >= 15
    assert users["zip_code"].str.fullmatch(r"\d{5}").all()
    assert 0.65 < (users["gender"] == "M").mean() < 0.78
    # Occupation follows age: no child is retired, no retiree is a K-12 student.
    assert not ((users["age"] == 1) & (users["occupation"] == "retired")).any()
    assert not ((users["age"] >= 50) & (users["occupation"] == "K-12 student")).any()


def test_items_have_genres_years_unique_titles_and_theme_text(data: SyntheticData) -> None:
    items = data.items
    distinct_lists = items["genres"].map(lambda g: isinstance(g, list) and len(set(g)) == len(g))
    assert distinct_lists.all() and items["genres"].map(len).between(1, 3).all()
    assert set(items["genres"].explode()) <= set(vocab.GENRES)
    assert items["genres"].explode().nunique() >= 15
    assert items["year"].between(1950, 2024).all()
    assert items["title"].is_unique and (items["title"].str.strip().str.len() > 0).all()
    sentences = items["description"].map(lambda d: len(re.findall(r"[.!?](?:\s|$)", d)))
    assert sentences.between(1, 2).all()
    assert items["description"].map(themes_in).map(len).between(1, 2).all()
    # Themes are text-only facts: no theme is also a genre.
    assert not {t.lower() for t in vocab.THEME_TAGS} & {g.lower() for g in vocab.GENRES}
    # The text states the primary genre: its noun (e.g. "western", "sci-fi film") is in the description.
    primary_noun = items["genres"].map(lambda g: vocab.GENRE_TEXT[g[0]][1])
    assert all(noun in text for noun, text in zip(primary_noun, items["description"], strict=True))


def test_truth_is_aligned_and_consistent(data: SyntheticData) -> None:
    truth, interactions = data.truth, data.interactions
    pd.testing.assert_frame_equal(truth[["user_id", "item_id"]], interactions[["user_id", "item_id"]])
    terms = truth[["user_bias", "genre_score", "theme_score", "quality_score", "era_score"]].sum(axis=1)
    np.testing.assert_allclose(terms, truth["affinity"])
    assert truth["p_positive"].between(0, 1).all()
    # The truth is calibrated: the mean true probability matches the realised label rate.
    assert abs(truth["p_positive"].mean() - (interactions["rating"] > POSITIVE_THRESHOLD).mean()) < 0.01


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames() -> None:
    first, second = generate(SMALL), generate(SMALL)
    for name in ("users", "items", "interactions", "truth"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))


def test_different_seeds_differ() -> None:
    first = generate(SMALL)
    other = generate(SyntheticConfig(n_users=120, n_items=150, mean_interactions=35, seed=12))
    assert not first.users.equals(other.users)
    assert not first.items["title"].equals(other.items["title"])
    assert not first.interactions.equals(other.interactions)


# ---------------------------------------------------------------- interaction log


def test_interactions_are_unique_rated_pairs_with_movielens_rating_shares(data: SyntheticData) -> None:
    interactions = data.interactions
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    assert interactions["rating"].between(1, 5).all()
    assert set(interactions["item_id"]) <= set(data.items["item_id"])
    assert 0.5 <= (interactions["rating"] > POSITIVE_THRESHOLD).mean() <= 0.6
    shares = interactions["rating"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(shares, RATING_SHARES, atol=0.01)


def test_every_user_has_at_least_20_interactions_and_the_mean_is_on_target(data: SyntheticData) -> None:
    counts = data.interactions.groupby("user_id").size()
    assert len(counts) == 1000 and counts.min() >= 20
    assert abs(counts.mean() - 60) < 3
    assert counts.max() > 2 * counts.median()  # heavy-tailed activity, as in real logs


def test_timestamps_increase_per_user_inside_sub_windows_and_sessions(data: SyntheticData) -> None:
    ts = data.interactions[["user_id", "timestamp"]]
    start = int(pd.Timestamp("2024-01-01", tz="UTC").timestamp())
    assert ts["timestamp"].between(start, start + 180 * DAY - 1).all()
    gaps = ts.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps > 0).all()  # strictly increasing: no ties for time splits to break
    assert (gaps <= 600).mean() > 0.7  # most ratings follow the previous one within a session
    assert (gaps > DAY).mean() > 0.03  # ... and users come back on other days
    span = ts.groupby("user_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert span.median() < 90 * DAY and span.max() > 60 * DAY  # personal sub-windows of varied length


def test_start_and_days_move_the_window() -> None:
    config = SyntheticConfig(n_users=50, n_items=100, mean_interactions=25, start="2020-06-01", days=30)
    ts = generate(config).interactions["timestamp"]
    start = int(pd.Timestamp("2020-06-01", tz="UTC").timestamp())
    assert ts.min() >= start and ts.max() < start + 30 * DAY


# ---------------------------------------------------------------- latent model is learnable


def test_oracle_from_truth_predicts_labels(data: SyntheticData) -> None:
    labels = data.interactions["rating"] > POSITIVE_THRESHOLD
    assert roc_auc_score(labels, data.truth["p_positive"]) > 0.8
    # Every term of the model matters on its own.
    for term in ("user_bias", "genre_score", "theme_score", "quality_score"):
        assert roc_auc_score(labels, data.truth[term]) > 0.55, term


def test_profile_features_carry_signal_only_when_demographics_drive_taste(data: SyntheticData) -> None:
    genre_only = _profile_auc(data, [])
    assert _profile_auc(data, ["gender", "age"]) > max(0.55, genre_only + 0.03)
    # Gender acts only through genre taste, so this isolates the demographic shifts of genre preference.
    assert _profile_auc(data, ["gender"]) > genre_only + 0.015
    control = generate(SyntheticConfig(demographic_weight=0.0))
    assert _profile_auc(control, ["gender", "age"]) < _profile_auc(control, []) + 0.01


def test_description_themes_add_signal_beyond_ids_and_genres(data: SyntheticData) -> None:
    genre_model, theme_model = _theme_lift(data)
    assert genre_model > 0.65
    assert theme_model > genre_model + 0.01
    control_genre, control_theme = _theme_lift(generate(SyntheticConfig(theme_weight=0.0)))
    assert control_theme < control_genre + 0.003


def test_zip_code_is_a_negative_control(data: SyntheticData) -> None:
    frame = _labelled(data)
    region = frame["zip_code"].str[0]
    train, test = frame[frame["user_id"] % 2 == 1], frame[frame["user_id"] % 2 == 0]
    rate = train.groupby(region[train.index])["y"].mean()
    assert abs(roc_auc_score(test["y"], region[test.index].map(rate).fillna(0.5)) - 0.5) < 0.03


# ---------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_items": 30}, "n_items"),
        ({"mean_interactions": 10}, "mean_interactions"),
        ({"mean_interactions": 300}, "mean_interactions"),
        ({"days": 3}, "days"),
        ({"rating_noise": 0.0}, "rating_noise"),
        ({"start": "not a date"}, "start"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(DataError, match=rf"^SyntheticConfig\.{field}="):
        SyntheticConfig(**kwargs)
