"""`kar bench train`: our DeepFM's training throughput against FuxiCTR's, on a small planted frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import kar.bench.train
from ctr.testing import planted_frame
from kar.bench.train import (
    FUXICTR_MODEL_SOURCE,
    WORKER_SCRIPT,
    Encoded,
    bench_train,
    experiment,
    fuxictr_feature_map,
    load_frame,
    summarize,
    write_fuxictr_data,
)
from kar.cli import app
from kar.contracts.errors import DataError


def _round(index: int, ours: float, fuxictr: float) -> dict:
    return {"round": index, "ours": {"samples_per_s": ours}, "fuxictr": {"samples_per_s": fuxictr}}


def test_summary_takes_medians_per_side_and_their_ratio():
    rounds = [_round(1, 100.0, 10.0), _round(2, 300.0, 40.0), _round(3, 200.0, 1000.0)]
    assert summarize(rounds) == {"ours_samples_per_s": 200.0, "fuxictr_samples_per_s": 40.0, "ratio": 5.0}
    ours_only = summarize([{"ours": {"samples_per_s": 7.0}}], sides=["ours"])
    assert ours_only == {"ours_samples_per_s": 7.0, "fuxictr_samples_per_s": None, "ratio": None}


@pytest.mark.parametrize(
    ("option", "value"), [("rounds", 0), ("threads", 0), ("batch_size", 0), ("fuxictr_workers", -1)]
)
def test_bad_arguments_fail_before_any_work(tmp_path, option, value):
    with pytest.raises(DataError, match=option.replace("_", "-")):
        bench_train(out=tmp_path / "train.json", **{option: value})
    assert not (tmp_path / "train.json").exists()


def test_a_folder_that_is_neither_prepared_nor_raw_movielens_is_refused(tmp_path):
    with pytest.raises(DataError, match="neither a prepared folder"):
        load_frame(tmp_path, scratch=tmp_path / "scratch", progress=lambda _m: None)


def test_the_benchmark_reads_deepfm_without_knowledge():
    config = experiment(batch_size=256, threads=1, rounds=2)
    assert config.features.dense == () and getattr(config, "knowledge", None) is None
    assert [f.name for f in config.features.sequence] == ["hist_item_ids", "genres"]
    assert (config.train.batch_size, config.train.num_threads, config.train.epochs) == (256, 1, 2)


def test_fuxictr_gets_our_ids_and_a_feature_map_like_its_own(tmp_path):
    config = experiment(batch_size=256, threads=1, rounds=1)
    encoded = Encoded.build(planted_frame(n_rows=600), spec=config.features)
    feature_map = fuxictr_feature_map(encoded, dataset_id="kar_bench")
    features = {name: spec for entry in feature_map["features"] for name, spec in entry.items()}
    assert list(features) == [*encoded.layout.sparse, "hist_item_ids", "genres"]
    history = features["hist_item_ids"]
    assert history["share_embedding"] == "item_id" and history["vocab_size"] == features["item_id"]["vocab_size"]
    assert history["max_len"] == 10 and history["feature_encoder"] == "layers.MaskedAveragePooling()"
    assert all(spec["padding_idx"] == 0 for spec in features.values())
    assert feature_map["input_length"] == 7 + 10 + 6

    folder = write_fuxictr_data(encoded, tmp_path / "kar_bench", dataset_id="kar_bench")
    with np.load(folder / "train.npz") as train:
        assert set(train.files) == {*features, "label"}
        np.testing.assert_array_equal(train["hist_item_ids"], encoded.arrays["train"]["hist_item_ids"])
        assert train["label"].shape == (encoded.n_train,)
    assert json.loads((folder / "feature_map.json").read_text())["labels"] == ["label"]
    # The FuxiCTR side is a module of the package, run by the scratch venv (the slow test below runs it).
    assert WORKER_SCRIPT.parent == Path(kar.bench.train.__file__).parent
    compile(WORKER_SCRIPT.read_text(), str(WORKER_SCRIPT), "exec")


def test_ours_only_run_writes_the_result_and_plot(tmp_path):
    out = tmp_path / "bench" / "train.json"
    result = bench_train(out=out, frame=planted_frame(), fuxictr=False, rounds=2, batch_size=512)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result, default=str)) and (out.parent / "train.png").is_file()
    assert written["ratio"] is None and written["fuxictr_samples_per_s"] is None and written["meets_goal"] is False
    assert written["n_train"] == 4800 and written["batch_size"] == 512 and written["threads"] == 1
    assert [r["round"] for r in written["rounds"]] == [1, 2]
    assert all(r["ours"]["samples_per_s"] > 0 and 0 <= r["ours"]["test_auc"] <= 1 for r in written["rounds"])
    rates = [r["ours"]["samples_per_s"] for r in written["rounds"]]
    assert written["ours_samples_per_s"] == pytest.approx(float(np.median(rates)), abs=0.1)
    assert written["fields"]["dense"] == [] and "timed" in written and written["versions"]["torch"]
    profiled = written["ours_profile"]  # the operators of one more epoch, largest share first
    assert 0 < len(profiled) <= 12 and sum(p["self_share"] for p in profiled) <= 1
    assert [p["self_share"] for p in profiled] == sorted((p["self_share"] for p in profiled), reverse=True)
    assert any(p["op"] in {"aten::mm", "aten::addmm"} for p in profiled)
    # The scratch folder (npz files, worker script) is gone.
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.json", "train.png"]


def test_cli_rejects_bad_rounds_with_one_line():
    result = CliRunner().invoke(app, ["bench", "train", "--out", "unused.json", "--rounds", "0"])
    assert result.exit_code == 2 and "--rounds must be at least 1" in result.output


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_against_fuxictr_in_its_scratch_env(tmp_path):
    """Builds ~/.cache/kar/bench/fuxictr on first use (pip, ~4 min; longer on a busy host), then ~1 min."""
    out = tmp_path / "train.json"
    result = bench_train(out=out, frame=planted_frame(n_rows=20_000), rounds=3, batch_size=256)
    assert result["fuxictr"]["version"] == "2.3.10" and result["fuxictr"]["torch"].startswith("2.13.0")
    assert result["fuxictr_model_source"] == FUXICTR_MODEL_SOURCE
    assert result["fuxictr"]["threads"] == result["threads"] == 1
    for row in result["rounds"]:
        assert row["order"] == (["ours", "fuxictr"] if row["round"] % 2 else ["fuxictr", "ours"])
    expected = result["ours_samples_per_s"] / result["fuxictr_samples_per_s"]
    assert result["ratio"] == pytest.approx(expected, rel=1e-3)
    # Same planted data and model shape: both pick up the planted signal (FuxiCTR's DeepFM starts slower).
    for side in ("ours", "fuxictr"):
        assert result["auc_after_rounds"][side]["test"] > 0.56
    ours, fuxictr = result["ours"]["n_parameters"], result["fuxictr"]["n_parameters"]
    assert abs(fuxictr - ours) < 0.05 * ours
