"""``kar refresh`` on a team's tables (string ids, its own columns), against the embedded LLM.

Batch one (the first three quarters of the clicks, and a catalogue two products short) is prepared under the
``rolling`` protocol, answered (user, item and LLM-KERec knowledge), encoded, applied, trained on and exported.
The second batch (later clicks, on the grown catalogue too) is then appended three ways: by ``kar refresh``; by a
full rebuild on both batches; and by a ``kar refresh`` killed with SIGKILL once it has sent new prompts, then rerun.
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
import yaml

from kar.contracts.results import RefreshReport
from spark_jobs.llm.cache import AnswerCache
from tests.team import sku, write_team_tables

pytestmark = [pytest.mark.spark, pytest.mark.llm, pytest.mark.slow]

CUTOFF_EVERY = 4
LATE_PRODUCTS = (sku(9), sku(10))  # in the catalogue from batch two on
KINDS = ("user", "item", "kerec")
# Few candidate pairs keep LLM-KERec's LLM calls few; with the brands below, 16 let a brand pair that batch two
# supports enter the candidates and change older items' texts (the changed-text test fails if that stops).
KEREC_PAIRS = 16
BRANDS = ("southpeak", "northwind")  # of even and odd SKUs
KAR = [sys.executable, "-m", "kar"]


def _write_batches(folder: Path) -> tuple[Path, Path, Path]:
    """The team's tables with the clicks in two batch files; returns (spec, batch one, batch two).

    Products get a brand, which LLM-KERec takes as an entity of its own (the embedded model's extracted entities
    are much the same for every product). Prompts show the other attributes only, as the team's spec has them.
    """
    spec = write_team_tables(folder, customers=12, products=10, events=160, seed=5)
    products = pd.read_json(folder / "products.jsonl", lines=True)
    products["brand"] = [BRANDS[int(s[-3:]) % 2] for s in products["sku"]]
    products.to_json(folder / "products.jsonl", orient="records", lines=True)
    config = yaml.safe_load(spec.read_text())
    config["items"]["prompt_fields"] = list(config["items"]["attributes"])
    config["items"]["attributes"]["brand"] = "string"
    spec.write_text(yaml.safe_dump(config, sort_keys=False))
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
    run_knowledge(kinds=KINDS, data_dir=prepared, out=prepared / "knowledge", base_url=llm_base_url,
                  kerec_max_pairs=KEREC_PAIRS)  # fmt: skip
    run_encode(data_dir=prepared, kinds=KINDS)
    # Kept before Feast and the ranker touch it: the start of the killed refresh.
    shutil.copytree(prepared, work / "pristine")
    store.apply(data_dir=prepared)
    (work / "deepfm.yaml").write_text("train: {epochs: 1, num_threads: 1}\n")
    run = work / "run"
    run_train(model="deepfm", data_dir=prepared, out=run, config_path=work / "deepfm.yaml")
    run_adapt_export(run_dir=run, data_dir=prepared)
    # Again: the optional kerec_knowledge_adapted view exists once its table does, which the export just wrote.
    store.apply(data_dir=prepared)
    store.materialize(data_dir=prepared)
    _grow_catalogue(shop, grown=True)
    vectors = {kind: pd.read_parquet(prepared / "vectors" / kind) for kind in KINDS}
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


def _pairs(folder: Path) -> set[tuple[str, str]]:
    """The candidate pairs LLM-KERec asked about: usable answers and those quarantined."""
    knowledge = folder / "knowledge"
    parts = [knowledge / "kerec_pairs", knowledge / "quarantine" / "kerec_pairs"]
    frame = pd.concat([pd.read_parquet(p, columns=["source", "target"]) for p in parts if p.is_dir()])
    return set(zip(frame["source"], frame["target"], strict=True))


def _kerec_texts(folder: Path) -> pd.DataFrame:
    return _sorted(pd.read_parquet(folder / "knowledge" / "kerec", columns=["item_id", "as_of", "text"]), ["item_id"])


def _kerec_vectors(folder: Path, table: str = "vectors") -> pd.DataFrame:
    vectors = pd.read_parquet(folder / table / "kerec", columns=["entity_id", "as_of", "text_hash", "vector"])
    return _sorted(vectors, ["entity_id"])


def test_refresh_sends_only_new_cutoffs_and_items_and_keeps_every_older_vector(batch_one, refreshed):
    before = pd.read_parquet(batch_one["work"] / "pristine" / "knowledge_cutoffs")
    after = _cutoff_keys(batch_one["prepared"])
    assert refreshed.new_cutoffs == len(after) - len(before) > 0
    assert refreshed.new_items == len(LATE_PRODUCTS)
    # LLM-KERec asks about the new items' entities and the candidate pairs it had not judged.
    new_pairs = _pairs(batch_one["prepared"]) - _pairs(batch_one["work"] / "pristine")
    assert refreshed.prompts_sent == {"user": refreshed.new_cutoffs, "item": refreshed.new_items,
                                      "kerec_entity": refreshed.new_items, "kerec_pair": len(new_pairs)}  # fmt: skip
    cached_items = 10 - len(LATE_PRODUCTS)
    assert refreshed.prompts_cached == {"user": len(before), "item": cached_items, "kerec_entity": cached_items,
                                        "kerec_pair": refreshed.prompts["kerec_pair"] - len(new_pairs)}  # fmt: skip
    assert set(refreshed.stage_seconds) >= {"prepare", "knowledge", "encode", "export", "materialize"}
    # LLM-KERec rows are rebuilt, not appended: a new row is a new or changed text (or as_of), and only it is encoded.
    kerec_keys = ["entity_id", "as_of", "text_hash"]
    kerec_now = pd.read_parquet(batch_one["prepared"] / "vectors" / "kerec")
    kerec_new = kerec_now.merge(batch_one["vectors"]["kerec"][kerec_keys], how="left", indicator=True)["_merge"]
    assert 0 < refreshed.new_kerec_rows == (kerec_new == "left_only").sum() == refreshed.encoded["kerec"]
    assert not kerec_now.duplicated("entity_id").any()
    for kind in ("user", "item"):
        older = batch_one["vectors"][kind]
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
    rebuilt = run_knowledge(kinds=KINDS, data_dir=full, out=full / "knowledge", base_url=llm_base_url,
                            kerec_max_pairs=KEREC_PAIRS)  # fmt: skip
    steps = {name: stats for summary in rebuilt.values() for name, stats in summary.answer_steps().items()}
    assert {name: s.calls for name, s in steps.items()} == dict.fromkeys(refreshed.prompts, 0)
    assert {name: s.prompts for name, s in steps.items()} == refreshed.prompts
    run_encode(data_dir=full, kinds=KINDS)
    store.apply(data_dir=full)
    pd.testing.assert_frame_equal(_cutoff_keys(full), _cutoff_keys(batch_one["prepared"]))
    # LLM-KERec: the same per-item texts, stamped alike, and the same vectors (no stale row of batch one left).
    pd.testing.assert_frame_equal(_kerec_texts(batch_one["prepared"]), _kerec_texts(full))
    mine_kerec, full_kerec = _kerec_vectors(batch_one["prepared"]), _kerec_vectors(full)
    pd.testing.assert_frame_equal(mine_kerec[["entity_id", "as_of", "text_hash"]],
                                  full_kerec[["entity_id", "as_of", "text_hash"]])  # fmt: skip
    np.testing.assert_allclose(np.stack(mine_kerec["vector"]), np.stack(full_kerec["vector"]), rtol=0, atol=1e-6)

    keys = ["user_id", "item_id", "event_timestamp"]
    mine = _sorted(store.training_frame(data_dir=batch_one["prepared"]), keys)
    theirs = _sorted(store.training_frame(data_dir=full), keys)
    assert len(mine) == len(theirs) == refreshed.interactions
    assert mine[keys].equals(theirs[keys])
    for column in ("user_knowledge", "item_knowledge", "kerec_knowledge"):
        np.testing.assert_allclose(np.stack(mine[column]), np.stack(theirs[column]), rtol=0, atol=1e-6)
    for flag in ("has_user_knowledge", "has_kerec_knowledge"):
        assert mine[flag].any() and mine[flag].equals(theirs[flag])

    # The appended adapted vectors are those a full export writes.
    run_adapt_export(run_dir=batch_one["run"], data_dir=full)
    for kind in KINDS:
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


def test_the_incremental_materialize_serves_a_changed_kerec_text(batch_one, refreshed):
    from kar.serving import store

    prepared, pristine = batch_one["prepared"], batch_one["work"] / "pristine"
    texts = _kerec_texts(pristine).merge(_kerec_texts(prepared), on="item_id", suffixes=("_before", ""))
    changed = texts[texts["text_before"] != texts["text"]]
    assert len(changed), "no item's LLM-KERec text changed with batch two: this data no longer tests it"
    # The window starts at the earliest new row, a cutoff or an LLM-KERec text (whose as_of may be the older).
    keys = ["user_id", "knowledge_cutoff"]
    new_cutoffs = _cutoff_keys(prepared)[keys].merge(_cutoff_keys(pristine)[keys], how="left", indicator=True)
    new_cutoffs = new_cutoffs[new_cutoffs["_merge"] == "left_only"]["knowledge_cutoff"]
    old_kerec = batch_one["vectors"]["kerec"]
    new_kerec = _kerec_vectors(prepared).merge(old_kerec[["entity_id", "as_of", "text_hash"]], how="left",
                                               indicator=True)  # fmt: skip
    new_kerec = new_kerec[new_kerec["_merge"] == "left_only"]["as_of"]
    assert pd.Timestamp(refreshed.materialized_from) == min(new_cutoffs.min(), new_kerec.min())

    item, user = int(changed["item_id"].iloc[0]), int(_cutoff_keys(prepared)["user_id"].iloc[0])
    feature_store = store.open_store(data_dir=prepared)  # the example repo: int64 join keys
    for service, table, column in (("ranking_training", "vectors", "kerec_knowledge"),
                                   ("ranking_serving", "adapted", "kerec_knowledge_adapted")):  # fmt: skip
        newest = _kerec_vectors(prepared, table).set_index("entity_id").loc[item, "vector"]
        online = store.online_features(feature_store, user_id=user, item_ids=[item], service=service)["items"]
        np.testing.assert_allclose(np.asarray(online[column].iloc[0]), newest, atol=1e-6)
    older = old_kerec.set_index("entity_id").loc[item, "vector"]
    assert not np.allclose(older, _kerec_vectors(prepared).set_index("entity_id").loc[item, "vector"], atol=1e-3)


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
    pd.testing.assert_frame_equal(_kerec_texts(victim_dir), _kerec_texts(batch_one["prepared"]))
    kerec_keys = ["entity_id", "as_of", "text_hash"]
    assert _kerec_vectors(victim_dir)[kerec_keys].equals(_kerec_vectors(batch_one["prepared"])[kerec_keys])
