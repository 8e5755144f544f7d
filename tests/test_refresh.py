"""``kar refresh`` on a team's tables (string ids, its own columns), against the embedded LLM.

Batch one (the first three quarters of the clicks, and a catalogue two products short) is prepared under the
``rolling`` protocol, answered, encoded, applied, trained on and exported. The second batch (later clicks, on
the grown catalogue too) is then appended three ways: by ``kar refresh``; by a full rebuild on both batches; and
by a ``kar refresh`` killed with SIGKILL once it has sent new prompts, then rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kar.contracts.results import RefreshReport
from spark_jobs.llm.cache import AnswerCache
from tests.team import sku, write_team_tables

pytestmark = [pytest.mark.spark, pytest.mark.llm, pytest.mark.slow]

CUTOFF_EVERY = 4
LATE_PRODUCTS = (sku(9), sku(10))  # in the catalogue from batch two on
KAR = [sys.executable, "-m", "kar"]


def _write_batches(folder: Path) -> tuple[Path, Path, Path]:
    """The team's tables with the clicks in two batch files; returns (spec, batch one, batch two)."""
    spec = write_team_tables(folder, customers=12, products=10, events=160, seed=5)
    clicks = pd.read_csv(folder / "clicks.csv")
    cut = clicks["ts"].iloc[int(len(clicks) * 0.75)]
    first = clicks[(clicks["ts"] < cut) & ~clicks["sku"].isin(LATE_PRODUCTS)]
    first.to_csv(folder / "clicks-1.csv", index=False)
    clicks[clicks["ts"] >= cut].to_csv(folder / "clicks-2.csv", index=False)
    return spec, folder / "clicks-1.csv", folder / "clicks-2.csv"


def _grow_catalogue(folder: Path, *, grown: bool) -> None:
    products = pd.read_json(folder / "products-all.jsonl", lines=True)
    if not grown:
        products = products[~products["sku"].isin(LATE_PRODUCTS)]
    products.to_json(folder / "products.jsonl", orient="records", lines=True)


@pytest.fixture(scope="module")
def batch_one(spark, llm_base_url, tmp_path_factory) -> dict:
    from kar.pipeline import run_adapt_export, run_encode, run_knowledge, run_prepare, run_train
    from kar.serving import store

    work = tmp_path_factory.mktemp("refresh")
    shop = work / "shop"
    spec, first, second = _write_batches(shop)
    shutil.copy(shop / "products.jsonl", shop / "products-all.jsonl")
    _grow_catalogue(shop, grown=False)
    prepared = work / "prepared"
    run_prepare(
        dataset="table", spec=spec, out=prepared, protocol="rolling", cutoff_every=CUTOFF_EVERY, interactions=[first]
    )
    run_knowledge(kinds=["user", "item"], data_dir=prepared, out=prepared / "knowledge", base_url=llm_base_url)
    run_encode(data_dir=prepared)
    # Kept before Feast and the ranker touch it: the start of the killed refresh.
    shutil.copytree(prepared, work / "pristine")
    store.apply(data_dir=prepared)
    (work / "deepfm.yaml").write_text("train: {epochs: 1, num_threads: 1}\n")
    run = work / "run"
    run_train(model="deepfm", data_dir=prepared, out=run, config_path=work / "deepfm.yaml")
    run_adapt_export(run_dir=run, data_dir=prepared)
    store.materialize(data_dir=prepared)
    _grow_catalogue(shop, grown=True)
    vectors = {kind: pd.read_parquet(prepared / "vectors" / kind) for kind in ("user", "item")}
    return {"work": work, "spec": spec, "batches": [first, second], "prepared": prepared, "run": run,
            "vectors": vectors}  # fmt: skip


@pytest.fixture(scope="module")
def refreshed(batch_one, llm_base_url) -> RefreshReport:
    from kar.refresh import run_refresh

    return run_refresh(
        data_dir=batch_one["prepared"],
        interactions=batch_one["batches"][1],
        run=batch_one["run"],
        service="ranking_serving",
        base_url=llm_base_url,
    )


def _cutoff_keys(folder: Path) -> pd.DataFrame:
    cutoffs = pd.read_parquet(folder / "knowledge_cutoffs")
    return cutoffs.sort_values(["user_id", "knowledge_cutoff"]).reset_index(drop=True)


def _user_answers(folder: Path) -> pd.DataFrame:
    """Every user answer: usable ones and those quarantined (a truncated answer is an answer, not encoded)."""
    knowledge = folder / "knowledge"
    parts = [knowledge / "user", knowledge / "quarantine" / "user"]
    return pd.concat([pd.read_parquet(p, columns=["user_id", "as_of", "prompt_hash"]) for p in parts if p.is_dir()])


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys).reset_index(drop=True)


def test_refresh_sends_only_new_cutoffs_and_items_and_keeps_every_older_vector(batch_one, refreshed):
    before = pd.read_parquet(batch_one["work"] / "pristine" / "knowledge_cutoffs")
    after = _cutoff_keys(batch_one["prepared"])
    assert refreshed.new_cutoffs == len(after) - len(before) > 0
    assert refreshed.new_items == len(LATE_PRODUCTS)
    assert refreshed.prompts_sent == {"user": refreshed.new_cutoffs, "item": refreshed.new_items}
    assert refreshed.prompts_cached == {"user": len(before), "item": 10 - len(LATE_PRODUCTS)}
    assert set(refreshed.stage_seconds) >= {"prepare", "knowledge", "encode", "export", "materialize"}
    for kind, older in batch_one["vectors"].items():
        now = pd.read_parquet(batch_one["prepared"] / "vectors" / kind)
        kept = older.merge(now, on=["entity_id", "as_of", "text_hash"], how="left", indicator=True)["_merge"]
        assert (kept == "both").all(), f"an older {kind} vector went away"
        # Only new answers were encoded and adapted (a truncated answer is quarantined, not encoded).
        assert 0 < refreshed.encoded[kind] == len(now) - len(older) <= refreshed.prompts_sent[kind]
        assert refreshed.exported[f"{kind}_knowledge"] == refreshed.encoded[kind]
    assert (batch_one["prepared"] / "refresh.json").is_file()
    assert not (batch_one["prepared"] / "refresh" / "pending.json").exists()


def test_refresh_gives_the_training_frame_of_a_full_rebuild(batch_one, refreshed, llm_base_url):
    from kar.pipeline import run_adapt_export, run_encode, run_knowledge, run_prepare
    from kar.serving import store

    full = batch_one["work"] / "full"
    run_prepare(dataset="table", spec=batch_one["spec"], out=full, protocol="rolling", cutoff_every=CUTOFF_EVERY,
                interactions=batch_one["batches"])  # fmt: skip
    # The refreshed folder's cache: the same prompt gets the same answer, so any difference is the refresh's.
    shutil.copytree(batch_one["prepared"] / "knowledge" / "cache", full / "knowledge" / "cache")
    rebuilt = run_knowledge(kinds=["user", "item"], data_dir=full, out=full / "knowledge", base_url=llm_base_url)
    assert {kind: s.calls for kind, s in rebuilt.items()} == {"user": 0, "item": 0}
    assert {kind: s.prompts for kind, s in rebuilt.items()} == refreshed.prompts
    run_encode(data_dir=full)
    store.apply(data_dir=full)
    pd.testing.assert_frame_equal(_cutoff_keys(full), _cutoff_keys(batch_one["prepared"]))

    keys = ["user_id", "item_id", "event_timestamp"]
    mine = _sorted(store.training_frame(data_dir=batch_one["prepared"]), keys)
    theirs = _sorted(store.training_frame(data_dir=full), keys)
    assert len(mine) == len(theirs) == refreshed.interactions
    assert mine[keys].equals(theirs[keys])
    for column in ("user_knowledge", "item_knowledge"):
        np.testing.assert_allclose(np.stack(mine[column]), np.stack(theirs[column]), rtol=0, atol=1e-6)
    assert mine["has_user_knowledge"].any() and mine["has_user_knowledge"].equals(theirs["has_user_knowledge"])

    # The appended adapted vectors are those a full export writes.
    run_adapt_export(run_dir=batch_one["run"], data_dir=full)
    for kind in ("user", "item"):
        appended = _sorted(pd.read_parquet(batch_one["prepared"] / "adapted" / kind), ["entity_id", "as_of"])
        exported = _sorted(pd.read_parquet(full / "adapted" / kind), ["entity_id", "as_of"])
        assert appended[["entity_id", "as_of"]].equals(exported[["entity_id", "as_of"]])
        np.testing.assert_allclose(np.stack(appended["vector"]), np.stack(exported["vector"]), atol=1e-6)


def test_the_incremental_materialize_serves_the_newest_knowledge(batch_one, refreshed):
    from kar.serving import store

    adapted = pd.read_parquet(batch_one["prepared"] / "adapted" / "user")
    newest = adapted.sort_values("as_of").groupby("entity_id").tail(1)
    # A user whose newest cutoff came with the refresh: online, that vector must have replaced the older one.
    user = newest[newest["as_of"] >= pd.Timestamp(refreshed.materialized_from)].iloc[0]
    item = int(pd.read_parquet(batch_one["prepared"] / "adapted" / "item")["entity_id"].iloc[0])
    feature_store = store.open_store(data_dir=batch_one["prepared"])  # the example repo: int64 join keys
    online = store.online_features(
        feature_store, user_id=int(user["entity_id"]), item_ids=[item], service="ranking_serving"
    )["user"]
    np.testing.assert_allclose(np.asarray(online["user_knowledge_adapted"].iloc[0]), user["vector"], atol=1e-6)


def test_a_refresh_killed_by_sigkill_reruns_to_one_answer_per_prompt(batch_one, refreshed, llm_base_url, tmp_path):
    victim_dir = tmp_path / "prepared"
    shutil.copytree(batch_one["work"] / "pristine", victim_dir)
    cache = AnswerCache(victim_dir / "knowledge" / "cache")
    answered = cache.count_rows()
    command = [*KAR, "refresh", "--data", str(victim_dir), "--interactions", str(batch_one["batches"][1]),
               "--endpoint", llm_base_url]  # fmt: skip
    env = {**os.environ, "KAR_SPARK_MASTER": "local[2]"}
    victim = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    # The known point: the refresh has rewritten the prepared tables and sent its first new prompt.
    deadline = time.monotonic() + 600
    while cache.count_rows() <= answered:
        assert victim.poll() is None, f"the refresh ended ({victim.returncode}) before a new answer"
        assert time.monotonic() < deadline, "no new answer within 600 s"
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert (victim_dir / "refresh" / "pending.json").is_file()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = RefreshReport.from_dict(json.loads((victim_dir / "refresh.json").read_text()))
    assert report.new_cutoffs == refreshed.new_cutoffs and report.new_items == refreshed.new_items
    assert sum(report.prompts_sent.values()) < sum(refreshed.prompts_sent.values())  # the kill's answers were kept

    prompt_keys = ["user_id", "as_of"]
    answers = _user_answers(victim_dir)
    assert not answers.duplicated(prompt_keys).any()
    cutoffs = _cutoff_keys(victim_dir).rename(columns={"knowledge_cutoff": "as_of"})
    assert _sorted(answers[prompt_keys], prompt_keys).equals(_sorted(cutoffs[prompt_keys], prompt_keys))
    # Same tables as the refresh that was not killed: cutoffs, samples and the prompts sent.
    pd.testing.assert_frame_equal(_cutoff_keys(victim_dir), _cutoff_keys(batch_one["prepared"]))
    sample_keys = ["user_id", "item_id", "event_timestamp"]
    assert _sorted(pd.read_parquet(victim_dir / "samples"), sample_keys).equals(
        _sorted(pd.read_parquet(batch_one["prepared"] / "samples"), sample_keys)
    )
    theirs = _user_answers(batch_one["prepared"])
    columns = [*prompt_keys, "prompt_hash"]
    assert _sorted(answers[columns], prompt_keys).equals(_sorted(theirs[columns], prompt_keys))
    vectors = pd.read_parquet(victim_dir / "vectors" / "user")
    usable = pd.read_parquet(victim_dir / "knowledge" / "user")
    assert not vectors.duplicated(["entity_id", "as_of"]).any() and len(vectors) == (usable["status"] == "ok").sum()
