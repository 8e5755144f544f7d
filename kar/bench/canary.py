"""The leakage canary of ``kar bench quality``: user knowledge that sees the future, on purpose.

The point-in-time variants build each user's prompt from the history before their cutoff and join it to
samples after it. The canary breaks both rules at once: each user's prompt is built from their *whole* log
(cutoff at their last interaction, so it lists the very items and ratings the test scores), and the vector is
stamped before the first interaction so that every sample, test included, joins it. If the benchmark can see
leakage through knowledge at all, this variant lifts test AUC clearly; the point-in-time ``text`` variant
must not. Like ``text`` it encodes the prompts themselves (no LLM), so it runs on any dataset in minutes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kar.bench.folders import link_tables
from kar.contracts.progress import Progress
from kar.contracts.tables import (
    CUTOFFS_DIR,
    HISTORY_DIR,
    INTERACTIONS_DIR,
    ITEMS_DIR,
    SAMPLES_DIR,
    SUMMARY_FILE,
    USERS_DIR,
)

# Stamped this long before the first interaction: every sample's point-in-time join finds the vector.
BEFORE_EVERYTHING = pd.Timedelta(days=1)


def whole_log_tables(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's whole log as a knowledge history, and one cutoff per user at their last interaction.

    Args:
        interactions: The prepared ``interactions`` (``user_id``, ``item_id``, ``rating``, ``label``,
            ``event_timestamp``).

    Returns:
        ``(knowledge_history, knowledge_cutoffs)`` with the prepared tables' columns.
    """
    ordered = interactions.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable")
    history = ordered[["user_id", "item_id", "rating", "label", "event_timestamp"]].copy()
    history["position"] = history.groupby("user_id").cumcount().astype("int32")
    last = history.groupby("user_id").agg(knowledge_cutoff=("event_timestamp", "max"), n_history=("position", "size"))
    cutoffs = last.reset_index().astype({"n_history": "int32"})
    return history.reset_index(drop=True), cutoffs


def leak_folder(data_dir: Path, out: Path, *, item_vectors: Path | None = None, progress: Progress) -> Path:
    """``out``: the prepared tables of ``data_dir`` (linked) with whole-log user prompts, encoded, stamped
    before every sample (items as in the ``text`` control).

    Args:
        data_dir: A prepared folder.
        out: The canary's folder (prepared tables, ``prompts/`` and ``vectors/``).
        item_vectors: The ``text`` control's ``vectors/item`` when it encoded the same item prompts as built
            here (no LLM run): linked as ``out/vectors/item``, so only the user prompts are encoded. None: the
            item prompts are encoded here too.
        progress: Step callback.

    Returns:
        ``out``, ready for ``feast apply`` and the training frame.
    """
    from kar.pipeline import run_encode
    from spark_jobs.knowledge.job import scenario_for, write_prompt_tables
    from spark_jobs.session import get_spark

    link_tables(out, {name: data_dir / name for name in (INTERACTIONS_DIR, ITEMS_DIR, USERS_DIR, SAMPLES_DIR)})
    (out / SUMMARY_FILE).write_text((data_dir / SUMMARY_FILE).read_text())
    interactions = pd.read_parquet(data_dir / INTERACTIONS_DIR)
    history, cutoffs = whole_log_tables(interactions)
    for name, table in ((HISTORY_DIR, history), (CUTOFFS_DIR, cutoffs)):
        (out / name).mkdir(exist_ok=True)
        table.to_parquet(out / name / "part-0.parquet", index=False)

    progress("canary: building whole-log user prompts (they see the test behaviour, on purpose)")
    prompts = out / "prompts"
    write_prompt_tables(get_spark(app_name="kar-bench-canary"), data_dir=out, out=prompts, scenario=scenario_for(out))
    users = pd.read_parquet(prompts / "user")
    users["as_of"] = interactions["event_timestamp"].min() - BEFORE_EVERYTHING
    restamped = prompts / "user-restamped"
    restamped.mkdir(exist_ok=True)
    users.to_parquet(restamped / "part-0.parquet", index=False)
    kinds = ("user", "item")
    if item_vectors is not None:
        link_tables(out / "vectors", {"item": item_vectors})
        kinds = ("user",)
    elif (out / "vectors" / "item").is_symlink():  # linked by an earlier run: encode into the canary's own folder
        (out / "vectors" / "item").unlink()
    progress("canary: encoding the whole-log prompts")
    knowledge = _knowledge_view(prompts, restamped)
    run_encode(data_dir=out, knowledge_dir=knowledge, kinds=kinds, text_column="prompt", progress=progress)
    return out


def _knowledge_view(prompts: Path, restamped: Path) -> Path:
    """A knowledge folder whose ``user`` is the restamped table and ``item`` the built one (links only)."""
    view = prompts.parent / "knowledge"
    link_tables(view, {"user": restamped, "item": prompts / "item"})
    return view
