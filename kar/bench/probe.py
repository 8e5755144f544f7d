"""Linear probes: how much of the synthetic data's planted item themes a set of item vectors still carries.

The synthetic generator writes each item's themes into its description and nowhere else, and knows them
(``spark_jobs.datasets.synthetic.themes_in``). A probe fits one logistic regression per theme from item
vectors to the theme's indicator on a seeded 70% of the items and scores ROC AUC on the other 30%. Run on
the encoder's vectors it measures what the text encoding kept; on a ranker's adapted vectors, what survived
the adaptor's training on clicks. Where the second is far below the first, the adaptor dropped the signal.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spark_jobs.datasets.vocab_synthetic import THEME_TAGS as THEMES

HELD_OUT = 0.3
MIN_POSITIVES = 10  # a theme with fewer items has too few held-out positives for a stable AUC


@dataclass(frozen=True, kw_only=True)
class ProbeScore:
    """Held-out AUC of the per-theme probes.

    Attributes:
        auc_mean: Mean over the probed themes (None when no theme has enough items).
        auc_min: The worst theme (None likewise).
        themes: Themes probed (those with at least ``MIN_POSITIVES`` items).
        items: Items with a vector.
    """

    auc_mean: float | None
    auc_min: float | None
    themes: int
    items: int


def theme_indicators(items: pd.DataFrame, themes: Sequence[str]) -> pd.DataFrame:
    """One 0/1 column per theme, indexed by ``item_id``: whether the item's description names it."""
    from spark_jobs.datasets.synthetic import themes_in

    descriptions = items.set_index("item_id")["description"].fillna("")
    named = [set(themes_in(text)) for text in descriptions]
    return pd.DataFrame(
        [[int(theme in found) for theme in themes] for found in named], index=descriptions.index, columns=list(themes)
    )


def probe(vectors: pd.DataFrame, indicators: pd.DataFrame, *, seed: int = 0) -> ProbeScore:
    """Fit and score the per-theme probes.

    Args:
        vectors: One row per item, indexed by ``item_id`` (the vector's components as columns).
        indicators: :func:`theme_indicators` of the same items (extra items are ignored).
        seed: Seed of the train/held-out split of the items.

    Returns:
        The held-out AUC over the themes with enough positives.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    shared = vectors.index.intersection(indicators.index)
    x = StandardScaler().fit_transform(vectors.loc[shared].to_numpy(dtype=np.float64))
    targets = indicators.loc[shared]
    train, test = train_test_split(np.arange(len(shared)), test_size=HELD_OUT, random_state=seed)
    aucs = []
    for theme in targets.columns:
        y = targets[theme].to_numpy()
        if y.sum() < MIN_POSITIVES or len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
            continue
        model = LogisticRegression(max_iter=1000, C=1.0).fit(x[train], y[train])
        aucs.append(float(roc_auc_score(y[test], model.decision_function(x[test]))))
    if not aucs:
        return ProbeScore(auc_mean=None, auc_min=None, themes=0, items=len(shared))
    return ProbeScore(auc_mean=statistics.fmean(aucs), auc_min=min(aucs), themes=len(aucs), items=len(shared))


def newest_vectors(table: Path) -> pd.DataFrame:
    """The newest vector per entity of a vector table folder (``vectors/<kind>``), indexed by entity id."""
    rows = pd.read_parquet(table, columns=["entity_id", "as_of", "created_at", "vector"])
    newest = rows.sort_values(["entity_id", "as_of", "created_at"]).drop_duplicates("entity_id", keep="last")
    index = pd.Index(newest["entity_id"].to_numpy(), name="entity_id")
    if newest.empty:
        return pd.DataFrame(index=index)
    return pd.DataFrame(np.stack(newest["vector"].to_numpy()), index=index)


def item_vectors(folder: Path) -> pd.DataFrame:
    """The newest encoded vector per item of a prepared folder's ``vectors/item``."""
    return newest_vectors(folder / "vectors" / "item")


def adapted(vectors: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``vectors`` through the item expert group of the adaptor a ranker run trained."""
    import torch

    from adaptors.artifact import load_adaptor

    adaptor, _ = load_adaptor(run_dir)
    with torch.no_grad():
        out = adaptor.adapt("item_knowledge", torch.from_numpy(vectors.to_numpy(dtype=np.float32))).numpy()
    return pd.DataFrame(out, index=vectors.index)


def theme_probes(items: pd.DataFrame, folders: dict[str, Path], runs: Sequence[dict]) -> dict[str, object]:
    """Probe the encoded item vectors of every source folder that has them, and the adapted ones of every
    torch run that reads item knowledge (``runs``: ``quality.json`` rows of the whole test set).

    Returns:
        ``encoded``: source → :class:`ProbeScore` fields; ``adapted``: one row per model and variant, the
        probe's mean AUC over seeds with its std.
    """
    indicators = theme_indicators(items, THEMES)
    encoded, vectors = {}, {}
    for source, folder in folders.items():
        found = item_vectors(folder) if (folder / "vectors" / "item").is_dir() else None
        if found is not None and len(found):
            vectors[source] = found
            encoded[source] = asdict(probe(found, indicators))
    by_run: dict[tuple[str, str], list[float | None]] = {}
    for run in runs:
        if run["slice"] != "all" or run["adaptor"] == "none" or run["source"] not in vectors:
            continue
        if run["knowledge"] not in ("item", "both"):
            continue
        score = probe(adapted(vectors[run["source"]], Path(run["run"])), indicators)
        by_run.setdefault((run["model"], run["variant"]), []).append(score.auc_mean)
    rows = [
        {"model": model, "variant": variant, **_over_seeds(aucs)} for (model, variant), aucs in sorted(by_run.items())
    ]
    return {"encoded": encoded, "adapted": rows, "themes": list(THEMES), "held_out": HELD_OUT}


def _over_seeds(aucs: Sequence[float | None]) -> dict[str, float | int | None]:
    scored = [auc for auc in aucs if auc is not None]
    return {
        "auc_mean": statistics.fmean(scored) if scored else None,
        "auc_std": statistics.stdev(scored) if len(scored) > 1 else 0.0,
        "seeds": len(scored),
    }
