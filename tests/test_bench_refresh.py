"""``kar bench refresh``: every stage of a refresh-sized run, against the session's real LLM server."""

from __future__ import annotations

import json

import pytest

from kar.contracts.errors import DataError


def test_bad_sizes_are_one_sentence(tmp_path):
    from kar.bench.refresh import bench_refresh

    with pytest.raises(DataError, match="--users must be at least 1"):
        bench_refresh(out=tmp_path / "refresh.json", users=0)


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.spark
def test_bench_refresh_times_every_stage_with_every_answer_cached(tmp_path, spark, llm_base_url):
    from kar.bench.refresh import STAGES, bench_refresh

    out = tmp_path / "bench" / "refresh.json"
    result = bench_refresh(out=out, rounds=1, base_url=llm_base_url)  # 10 × 10: the smallest that trains
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result, default=str))
    (round_,) = written["rounds"]
    assert list(round_["seconds"]) == list(STAGES) and all(s > 0 for s in round_["seconds"].values())
    assert round_["prompts"] == round_["cached"] > 0, "the measured round is answered by the cache alone"
    warm_up = written["set_up"]["warm_up"]
    assert warm_up["prompts"] == round_["prompts"] and warm_up["cached"] < warm_up["prompts"], "warm-up asked the LLM"
    assert written["total_seconds"] == pytest.approx(sum(round_["seconds"].values()), abs=1e-2)
    assert written["meets_goal"] == (written["total_seconds"] < written["goal_seconds"])
    assert out.with_suffix(".png").stat().st_size > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == ["refresh.json", "refresh.png"], "scratch left behind"
