"""Synthetic MovieLens-shaped data whose ratings come from a known latent-preference model.

The embedded default dataset: no file, no license, and a ground truth, so later stages can check that
knowledge an LLM extracts from item text and user histories carries real signal. Pure numpy/pandas; the
Spark side (``generated.py``) persists and ingests the frames like any other input.

Latent model (the ground truth; ``SyntheticData.truth`` holds its terms for every interaction):

* **Users.** Gender, ML-1M age bucket and occupation are drawn with ML-1M frequencies (occupation
  conditioned on age: K-12 students are young, retirees old); ``zip_code`` is random and carries no
  signal (a negative control). Each user has
  - a genre taste ``g_u = demographic_weight · (shift[gender] + shift[age] + shift[occupation]) + 0.6·z``:
    demographics move genre preferences, so profile features carry signal, and the noise keeps users
    individual;
  - a theme taste ``t_u = demographic_weight · shift[age] + 0.8·z`` over 30 story themes (heist, time
    travel, small town, ...), mostly individual;
  - a theme drift ``d_u = drift · z`` (tastes move over time, so "history as of a cutoff" matters);
  - a rater bias ``b_u ~ N(0, 0.35²)`` (generous vs harsh raters).
* **Items.** 1–3 of the 18 ML-1M genres (ML-1M genre prior and co-occurrence), 1–2 themes (more likely
  when they suit the genres, but any pairing happens), a quality ``q_i ~ N(0, 1)``, a release year
  (1950–2024, skewed recent, older for westerns/noir/war/musicals) and a popularity
  ``π_i = 0.6·q_i + 0.4·recency_i + 0.8·z``. ``G_i`` and ``T_i`` are the genre and theme indicators,
  each divided by the square root of its count.
* **Affinity** of user ``u`` for item ``i`` at time fraction ``τ ∈ [0, 1)`` of the whole window::

      a_ui(τ) = b_u + g_u·G_i + theme_weight · (t_u + (τ - ½)·d_u)·T_i + 0.5·q_i
                - demographic_weight · 0.3·age_z(u)·year_z(i)

  with ``age_z = (age - 30)/15`` and ``year_z = (year - 1995)/20`` (older users prefer older films).
* **Which items a user rates** (selection bias, as in real logs): ``n_u = min_interactions +`` a
  lognormal excess with mean ``mean_interactions - min_interactions``; items are drawn without
  replacement with weights ``exp(π_i + selection_strength · a_ui(½))`` (Gumbel top-k): popularity times
  affinity. Drift affects ratings, not selection.
* **When.** Each user is active over a random sub-window of ``[start, start + days)``; interactions
  come in sessions (on average 8 ratings, one to a few minutes apart); timestamps strictly increase
  per user and are assigned in random item order, so time order carries no selection information.
* **Rating** ``= 1 + #{k : a_ui(τ) + rating_noise·ε > c_k}`` with ``ε ~ N(0, 1)``; the four cut points
  ``c_k`` are quantiles of the noisy affinity over all generated interactions, chosen so the rating
  shares match ML-1M (5.6/10.8/26.1/34.9/22.6 %), i.e. ``P(rating > 3) = 0.575``.

**Themes live only in the text.** ``items.genres`` never names a theme; the theme tags are written
verbatim in ``items.description`` (and title words often evoke them). User theme taste is independent of
genre taste and item themes only loosely follow genres, so the theme part of the affinity is signal that
IDs, genres and profile features cannot fully recover, but that text knowledge (an LLM reading the
description, or user histories summarised by theme) can. Set ``theme_weight=0`` for a control dataset in
which text knowledge adds nothing beyond genres. Descriptions also state a critics' verdict for clearly
good or bad films (``|q_i| > 1``), the kind of fact an LLM knows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kar.contracts.errors import DataError
from spark_jobs.datasets import vocab_synthetic as vocab

# ML-1M rating shares for 1..5 stars; the cut points of the noisy affinity reproduce them.
RATING_SHARES = (0.056, 0.108, 0.261, 0.349, 0.226)
POSITIVE_THRESHOLD = 3  # rating > 3 is a positive label, as in ``RawTables.positive_threshold``

_GENRE_SIGMA = 0.6
_THEME_SIGMA = 0.8
_BIAS_SIGMA = 0.35
_QUALITY_WEIGHT = 0.5
_ERA_WEIGHT = 0.3
_COUNT_SIGMA = 0.9  # lognormal spread of interactions per user (real logs are heavy-tailed)
_SESSION_MEAN = 8  # ratings per session
_USER_CHUNK = 1024  # users per block of the dense user × item affinity matrix (bounds memory)
_DAY = 86_400


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Size, seed and latent-model knobs of the synthetic dataset.

    Attributes:
        n_users: Number of users.
        n_items: Number of items (movies).
        mean_interactions: Target mean number of ratings per user.
        min_interactions: Minimum ratings per user (MovieLens keeps users with at least 20).
        seed: Seed of every random draw; the same config always gives identical frames.
        start: First day of the log (ISO date, UTC unless it names a zone).
        days: Length of the log in days.
        demographic_weight: Scale of the demographic shifts of taste (0: profiles carry no signal).
        theme_weight: Scale of the theme term of the affinity (0: description text adds nothing).
        selection_strength: How strongly affinity drives which items a user rates (0: popularity only).
        rating_noise: Standard deviation of the noise between affinity and rating.
        drift: Standard deviation of each user's theme drift over the whole window.
    """

    n_users: int = 1000
    n_items: int = 400
    mean_interactions: int = 60
    min_interactions: int = 20
    seed: int = 7
    start: str = "2024-01-01"
    days: int = 180
    demographic_weight: float = 1.0
    theme_weight: float = 1.0
    selection_strength: float = 0.8
    rating_noise: float = 1.0
    drift: float = 0.5

    def __post_init__(self) -> None:
        checks = (
            ("n_users", self.n_users >= 1, "must be at least 1"),
            ("min_interactions", self.min_interactions >= 1, "must be at least 1"),
            ("n_items", self.n_items >= 2 * self.min_interactions, "must be at least 2 × min_interactions"),
            (
                "mean_interactions",
                self.min_interactions <= self.mean_interactions <= self.n_items // 2,
                "must lie between min_interactions and n_items // 2",
            ),
            ("days", self.days >= 7, "must be at least 7"),
            ("rating_noise", self.rating_noise > 0, "must be positive"),
            ("drift", self.drift >= 0, "must be non-negative"),
            ("selection_strength", self.selection_strength >= 0, "must be non-negative"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise DataError(f"SyntheticConfig.{name}={getattr(self, name)!r}: {rule}")
        self.start_timestamp()  # fail at construction, not halfway through generation

    def start_timestamp(self) -> int:
        """``start`` as unix seconds (UTC)."""
        try:
            ts = pd.Timestamp(self.start)
        except ValueError as exc:
            raise DataError(f"SyntheticConfig.start={self.start!r}: not an ISO date ({exc})") from None
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return int(ts.timestamp())


@dataclass(frozen=True, kw_only=True)
class SyntheticData:
    """The generated frames.

    Attributes:
        users: ``user_id`` int64, ``gender`` ("M"/"F"), ``age`` int64 (ML-1M bucket), ``occupation``,
            ``zip_code`` (5 digits).
        items: ``item_id`` int64, ``title`` (unique), ``genres`` (list of str), ``year`` int64,
            ``description`` (1–2 sentences naming the item's themes).
        interactions: ``user_id``, ``item_id``, ``rating`` (1..5), ``timestamp`` (unix seconds), all int64,
            sorted by user then time.
        truth: One row per interaction, aligned with ``interactions``: ``user_id``, ``item_id`` and the
            latent terms ``user_bias``, ``genre_score``, ``theme_score``, ``quality_score``, ``era_score``,
            their sum ``affinity``, ``p_positive`` (the true probability that rating > 3) and
            ``selection_logit`` (log weight with which the item was drawn for the user).
    """

    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    truth: pd.DataFrame


def themes_in(description: str) -> list[str]:
    """Theme tags written in a description, in ``vocab_synthetic.THEME_TAGS`` order."""
    return [tag for tag in vocab.THEME_TAGS if tag in description]


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate users, items, interactions and the ground truth behind them.

    Args:
        config: Sizes, seed and model knobs; ``SyntheticConfig()`` when omitted.

    Returns:
        The four frames; identical for identical configs.
    """
    config = config or SyntheticConfig()
    # Independent streams per stage: e.g. the item catalogue does not change with the number of users.
    rng_users, rng_items, rng_text, rng_select, rng_time, rng_rating = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)
    )
    users, user_latent = _users(config, rng_users)
    items, item_latent = _items(config, rng_items, rng_text)
    picked = _select(config, user_latent, item_latent, rng_select)
    timestamps = _timestamps(config, picked["user"], rng_time)
    return _rate(config, users, items, user_latent, item_latent, picked, timestamps, rng_rating)


# ---------------------------------------------------------------- users


def _shift_matrix(shifts: dict, keys: tuple, columns: tuple[str, ...]) -> np.ndarray:
    index = {name: j for j, name in enumerate(columns)}
    matrix = np.zeros((len(keys), len(columns)))
    for row, key in enumerate(keys):
        for name, value in shifts.get(key, {}).items():
            matrix[row, index[name]] = value
    return matrix


def _occupation_weights() -> np.ndarray:
    """P(occupation | age bucket): ML-1M occupation frequencies, reweighted so students are young etc."""
    base = np.array(list(vocab.OCCUPATION_COUNTS.values()), dtype=float)
    col = {name: j for j, name in enumerate(vocab.OCCUPATIONS)}
    factors = np.ones((len(vocab.AGES), len(base)))
    by_age = {
        1: {"*": 0.02, "K-12 student": 40.0, "other": 1.0, "unemployed": 0.5},
        18: {"K-12 student": 3.0, "college/grad student": 3.0, "retired": 0.0},
        25: {"K-12 student": 0.0, "college/grad student": 1.5, "retired": 0.0},
        35: {"K-12 student": 0.0, "college/grad student": 0.3, "retired": 0.0},
        45: {"K-12 student": 0.0, "college/grad student": 0.2, "retired": 0.1},
        50: {"K-12 student": 0.0, "college/grad student": 0.1, "retired": 2.0},
        56: {"K-12 student": 0.0, "college/grad student": 0.05, "retired": 8.0},
    }
    for row, age in enumerate(vocab.AGES):
        rules = by_age[age]
        factors[row, :] = rules.get("*", 1.0)
        for name, factor in rules.items():
            if name != "*":
                factors[row, col[name]] = factor
    weights = base * factors
    return weights / weights.sum(axis=1, keepdims=True)


def _users(config: SyntheticConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    n = config.n_users
    male = rng.random(n) < vocab.MALE_SHARE
    age_p = np.array(list(vocab.AGE_COUNTS.values()), dtype=float)
    age_idx = rng.choice(len(vocab.AGES), size=n, p=age_p / age_p.sum())
    occ_cdf = np.cumsum(_occupation_weights(), axis=1)[age_idx]
    occ_idx = np.minimum((occ_cdf < rng.random(n)[:, None]).sum(axis=1), len(vocab.OCCUPATIONS) - 1)
    zip_codes = rng.integers(1_001, 99_951, size=n)

    genders = ("M", "F")
    gender_idx = np.where(male, 0, 1)
    demo = (
        _shift_matrix(vocab.GENDER_GENRE_SHIFT, genders, vocab.GENRES)[gender_idx]
        + _shift_matrix(vocab.AGE_GENRE_SHIFT, vocab.AGES, vocab.GENRES)[age_idx]
        + _shift_matrix(vocab.OCCUPATION_GENRE_SHIFT, vocab.OCCUPATIONS, vocab.GENRES)[occ_idx]
    )
    n_genres, n_themes = len(vocab.GENRES), len(vocab.THEME_TAGS)
    genre_taste = config.demographic_weight * demo + _GENRE_SIGMA * rng.standard_normal((n, n_genres))
    theme_demo = _shift_matrix(vocab.AGE_THEME_SHIFT, vocab.AGES, vocab.THEME_TAGS)[age_idx]
    theme_taste = config.demographic_weight * theme_demo + _THEME_SIGMA * rng.standard_normal((n, n_themes))
    ages = np.array(vocab.AGES, dtype=np.int64)[age_idx]
    latent = {
        "genre_taste": genre_taste,
        "theme_taste": theme_taste,
        "theme_drift": config.drift * rng.standard_normal((n, n_themes)),
        "bias": _BIAS_SIGMA * rng.standard_normal(n),
        "age_z": (ages - 30.0) / 15.0,
    }
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int64),
            "gender": np.array(genders, dtype=object)[gender_idx],
            "age": ages,
            "occupation": np.array(vocab.OCCUPATIONS, dtype=object)[occ_idx],
            "zip_code": np.array([f"{z:05d}" for z in zip_codes], dtype=object),
        }
    )
    return users, latent


# ---------------------------------------------------------------- items


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _item_genres(rng: np.random.Generator) -> list[str]:
    prior = np.array(list(vocab.GENRE_COUNTS.values()), dtype=float)
    chosen = [vocab.GENRES[rng.choice(len(prior), p=prior / prior.sum())]]
    n_genres = rng.choice(3, p=(0.5, 0.35, 0.15)) + 1
    while len(chosen) < n_genres:
        partners = [g for c in chosen for g in vocab.GENRE_PARTNERS[c] if g not in chosen]
        if not partners:
            break
        chosen.append(_pick(rng, partners))
    return chosen


def _item_themes(rng: np.random.Generator, genres: list[str]) -> list[int]:
    # Themes suiting the genres are 4x likelier, but any theme can appear: themes are not a genre proxy.
    weights = np.array([1.0 + 4.0 * bool(set(t.genres) & set(genres)) for t in vocab.THEMES])
    n_themes = 1 + int(rng.random() < 0.55)
    return sorted(rng.choice(len(weights), size=n_themes, replace=False, p=weights / weights.sum()).tolist())


def _item_year(rng: np.random.Generator, genres: list[str]) -> int:
    classic = genres[0] in ("Western", "Film-Noir", "War", "Musical")
    age = rng.exponential(35.0 if classic else 14.0)
    return int(np.clip(2024 - math.floor(age), 1950, 2024))


def _title(rng: np.random.Generator, genres: list[str], themes: list[int], used: set[str]) -> str:
    words = [w for g in genres for w in vocab.GENRE_TITLE_WORDS[g]]
    words += [w for t in themes for w in vocab.THEMES[t].title_words] * 2  # themes name a story: favour them
    title = ""
    for _ in range(20):
        a = _pick(rng, words)
        b = _pick(rng, [w for w in words if w != a] or words)
        title = _pick(rng, vocab.TITLE_PATTERNS).format(a=a, b=b)
        if title not in used:
            break
    # Titles are unique (they identify an item in prompts): a clash becomes a sequel.
    base, n = title, 0
    while title in used:
        suffix = vocab.TITLE_SUFFIXES[n] if n < len(vocab.TITLE_SUFFIXES) else f" {n + 2}"
        title, n = base + suffix, n + 1
    used.add(title)
    return title


def _description(rng: np.random.Generator, genres: list[str], themes: list[int], quality: float) -> str:
    primary = vocab.GENRE_TEXT[genres[0]]
    words = [_pick(rng, primary[2])]
    if len(genres) == 3:
        words.append(_pick(rng, vocab.GENRE_TEXT[genres[2]][2]))
    if abs(quality) > 1.0:
        words.insert(0, _pick(rng, vocab.VERDICTS[int(quality > 0)]))
    adjective = f"{vocab.GENRE_TEXT[genres[1]][0]} " if len(genres) > 1 else ""
    lead = ", ".join(words)
    article = "An" if lead[0] in "aeiou" else "A"
    clause = _pick(rng, vocab.THEMES[themes[0]].phrases)
    connector = _pick(rng, ("in which", "where"))
    first = f"{article} {lead} {adjective}{primary[1]} {connector} {clause}."
    moods = [m for m in vocab.GENRE_TEXT[genres[-1]][2] if m not in words]  # no "poignant ... poignant"
    mood = _pick(rng, moods or vocab.GENRE_TEXT[genres[-1]][2])
    if len(themes) > 1:
        second = _pick(rng, vocab.SECOND_SENTENCES).format(
            clause=_pick(rng, vocab.THEMES[themes[1]].phrases), mood=mood
        )
    elif rng.random() < 0.5:
        second = _pick(rng, vocab.ENDINGS).format(mood=mood)
    else:
        return first
    return f"{first} {second}"


def _items(
    config: SyntheticConfig, rng: np.random.Generator, rng_text: np.random.Generator
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    n = config.n_items
    genre_col = {g: j for j, g in enumerate(vocab.GENRES)}
    genre_ind = np.zeros((n, len(vocab.GENRES)))
    theme_ind = np.zeros((n, len(vocab.THEMES)))
    quality = rng.standard_normal(n)
    rows, used = [], set()
    for i in range(n):
        genres = _item_genres(rng)
        themes = _item_themes(rng, genres)
        year = _item_year(rng, genres)
        genre_ind[i, [genre_col[g] for g in genres]] = 1.0 / math.sqrt(len(genres))
        theme_ind[i, themes] = 1.0 / math.sqrt(len(themes))
        title = _title(rng_text, genres, themes, used)
        rows.append((i + 1, title, genres, year, _description(rng_text, genres, themes, quality[i])))
    items = pd.DataFrame(rows, columns=["item_id", "title", "genres", "year", "description"])
    items = items.astype({"item_id": np.int64, "year": np.int64})
    year_z = (items["year"].to_numpy() - 1995.0) / 20.0
    recency = (items["year"].to_numpy() - 2010.0) / 15.0
    latent = {
        "genre_ind": genre_ind,
        "theme_ind": theme_ind,
        "quality": quality,
        "year_z": year_z,
        "log_popularity": 0.6 * quality + 0.4 * recency + 0.8 * rng.standard_normal(n),
    }
    return items, latent


# ---------------------------------------------------------------- selection


def _counts(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: ``min_interactions`` plus a capped lognormal excess with the target mean."""
    low, target = config.min_interactions, config.mean_interactions - config.min_interactions
    cap = max(config.n_items * 3 // 4, config.mean_interactions) - low
    raw = rng.lognormal(0.0, _COUNT_SIGMA, size=config.n_users)
    if target == 0:
        return np.full(config.n_users, low, dtype=np.int64)
    # The cap trims the tail, so rescale until the capped mean hits the target (monotone, converges fast).
    scale = target / raw.mean()
    for _ in range(30):
        excess = np.minimum(np.floor(scale * raw + 0.5), cap)
        if excess.mean() <= 0:
            break
        scale *= target / excess.mean()
    return (low + np.minimum(np.floor(scale * raw + 0.5), cap)).astype(np.int64)


def _select(
    config: SyntheticConfig,
    user: dict[str, np.ndarray],
    item: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw each user's items (Gumbel top-k on popularity × affinity) and the latent terms of each pick."""
    counts = _counts(config, rng)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("user", "item", "genre", "theme", "drift", "era", "selection_logit")
    }
    for lo in range(0, config.n_users, _USER_CHUNK):
        hi = min(lo + _USER_CHUNK, config.n_users)
        genre = user["genre_taste"][lo:hi] @ item["genre_ind"].T
        theme = config.theme_weight * (user["theme_taste"][lo:hi] @ item["theme_ind"].T)
        era = -config.demographic_weight * _ERA_WEIGHT * np.outer(user["age_z"][lo:hi], item["year_z"])
        static = user["bias"][lo:hi, None] + genre + theme + _QUALITY_WEIGHT * item["quality"] + era
        logit = item["log_popularity"] + config.selection_strength * static
        keys = logit + rng.gumbel(size=logit.shape)
        order = np.argsort(-keys, axis=1, kind="stable")
        keep = np.arange(order.shape[1]) < counts[lo:hi, None]
        rows = np.broadcast_to(np.arange(hi - lo)[:, None], order.shape)[keep]
        cols = order[keep]
        drift = config.theme_weight * (user["theme_drift"][lo:hi] @ item["theme_ind"].T)
        for name, value in (
            ("user", rows + lo),
            ("item", cols),
            ("genre", genre[rows, cols]),
            ("theme", theme[rows, cols]),
            ("drift", drift[rows, cols]),
            ("era", era[rows, cols]),
            ("selection_logit", logit[rows, cols]),
        ):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


# ---------------------------------------------------------------- time


def _group_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each ``True`` of ``starts`` (values sorted by group)."""
    total = np.cumsum(values)
    base = np.maximum.accumulate(np.where(starts, total - values, 0.0))
    return total - base


def _timestamps(config: SyntheticConfig, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-pick unix seconds: each user rates in sessions inside a personal active window.

    ``user`` is sorted (picks arrive grouped by user). The user's timestamps are strictly increasing and
    are handed to the user's picks in random order.
    """
    n = len(user)
    first = np.r_[True, user[1:] != user[:-1]]
    # Active window: a Beta-distributed share of the log (many users are brief, a few stay long). The last
    # day of the log is kept free for session lengths and tie-breaking seconds.
    usable = (config.days - 1) * _DAY
    length = np.maximum(rng.beta(0.7, 1.3, size=config.n_users) * usable, 2 * _DAY)
    window_start = config.start_timestamp() + rng.random(config.n_users) * (usable - length)
    # Sessions: a new one starts with probability 1/_SESSION_MEAN; ratings 20 s to 10 min apart.
    new_session = first | (rng.random(n) < 1.0 / _SESSION_MEAN)
    gaps = np.where(new_session, 0.0, np.minimum(20.0 + rng.exponential(90.0, size=n), 600.0))
    offset = np.minimum(_group_cumsum(gaps, new_session), 0.4 * _DAY)
    session_of = np.maximum.accumulate(np.where(new_session, np.arange(n), 0))  # first pick of own session
    session_start = window_start[user] + rng.random(n) * (length[user] - 0.5 * _DAY)
    ts = np.floor(session_start[session_of] + offset).astype(np.int64)
    # Sort within user, then make strictly increasing: t_k = max(t_k, t_{k-1} + 1).
    ts = ts[np.lexsort((ts, user))]
    rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
    lane = user.astype(np.int64) << 40  # keeps users apart in one running max
    ts = np.maximum.accumulate(ts - rank + lane) - lane + rank
    # Random order within user, so time order does not follow the Gumbel ranking of the picks.
    return ts[np.lexsort((rng.random(n), user))]


# ---------------------------------------------------------------- ratings


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.frompyfunc(math.erf, 1, 1)(x / math.sqrt(2.0)).astype(float))


def _rate(
    config: SyntheticConfig,
    users: pd.DataFrame,
    items: pd.DataFrame,
    user: dict[str, np.ndarray],
    item: dict[str, np.ndarray],
    picked: dict[str, np.ndarray],
    timestamps: np.ndarray,
    rng: np.random.Generator,
) -> SyntheticData:
    """Ratings from the time-dependent affinity; assemble interactions and truth sorted by user, time."""
    u, i = picked["user"], picked["item"]
    tau = (timestamps - config.start_timestamp()) / (config.days * _DAY)
    theme = picked["theme"] + (tau - 0.5) * picked["drift"]
    terms = {
        "user_bias": user["bias"][u],
        "genre_score": picked["genre"],
        "theme_score": theme,
        "quality_score": _QUALITY_WEIGHT * item["quality"][i],
        "era_score": picked["era"],
    }
    affinity = np.sum(list(terms.values()), axis=0)
    noisy = affinity + config.rating_noise * rng.standard_normal(len(u))
    cuts = np.quantile(noisy, np.cumsum(RATING_SHARES)[:-1])
    rating = 1 + np.searchsorted(cuts, noisy, side="left").astype(np.int64)
    p_positive = 1.0 - _normal_cdf((cuts[POSITIVE_THRESHOLD - 1] - affinity) / config.rating_noise)

    order = np.lexsort((timestamps, u))
    user_id = users["user_id"].to_numpy()[u][order]
    item_id = items["item_id"].to_numpy()[i][order]
    interactions = pd.DataFrame(
        {"user_id": user_id, "item_id": item_id, "rating": rating[order], "timestamp": timestamps[order]}
    )
    truth = pd.DataFrame(
        {
            "user_id": user_id,
            "item_id": item_id,
            **{name: value[order] for name, value in terms.items()},
            "affinity": affinity[order],
            "p_positive": p_positive[order],
            "selection_logit": picked["selection_logit"][order],
        }
    )
    return SyntheticData(users=users, items=items, interactions=interactions, truth=truth)
