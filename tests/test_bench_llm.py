"""`kar bench llm`: the pure parts (medians, ratio, report files, request parity) and one real run.

The real run uses the session's embedded vLLM CPU server (``llm_base_url``, or ``KAR_TEST_LLM_BASE_URL``) and
Spark, so it is marked ``llm``, ``slow`` and ``spark``; it checks the shape of the result, not speed (speed
targets live in the benchmark's JSON, not in tests).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys

import pytest

from kar.bench.llm import (
    GOAL,
    Measurement,
    chat_body,
    command_line,
    generate_load,
    identical_share,
    parse_prefix_cache,
    summarize,
)
from kar.bench.report import Panel, bar_chart, median, ratio, write_report
from spark_jobs.knowledge.config import load_scenario
from spark_jobs.llm.client import Endpoint, LLMClient, Request
from tests.fault_server import FaultInjectingLLMServer, Ok, Status

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _round(bare: float, ours: float, *, bare_tokens: float = 100.0, ours_tokens: float = 100.0) -> dict:
    return {
        "bare": {"prompts_per_s": bare, "tokens_per_s": bare_tokens},
        "ours": {"prompts_per_s": ours, "tokens_per_s": ours_tokens},
    }


def test_summary_takes_medians_per_side_and_their_ratio():
    rounds = [_round(2.0, 2.7, bare_tokens=50), _round(4.0, 3.0, bare_tokens=70), _round(3.0, 2.85, bare_tokens=60)]
    summary = summarize(rounds)
    assert summary["bare"] == {"prompts_per_s": 3.0, "tokens_per_s": 60.0}
    assert summary["ours"] == {"prompts_per_s": 2.85, "tokens_per_s": 100.0}
    assert summary["ratio"] == pytest.approx(0.95)


def test_summary_of_an_even_number_of_rounds_averages_the_middle_two():
    summary = summarize([_round(1.0, 1.0), _round(3.0, 2.0)])
    assert summary["bare"]["prompts_per_s"] == 2.0 and summary["ours"]["prompts_per_s"] == 1.5
    assert summary["ratio"] == 0.75


def test_ratio_and_median_edge_cases():
    assert ratio(1.0, 0.0) is None and ratio(1.0, -1.0) is None
    assert ratio(3.0, 2.0) == 1.5
    assert median([5.0]) == 5.0
    with pytest.raises(ValueError, match="no measurements"):
        median([])


def test_measurement_rates():
    row = Measurement(prompts=10, seconds=4.0, tokens_out=300, errors=1, calls=10).to_json()
    assert row == {
        "seconds": 4.0,
        "prompts_per_s": 2.5,
        "tokens_out": 300,
        "tokens_per_s": 75.0,
        "errors": 1,
        "calls": 10,
    }
    assert "calls" not in Measurement(prompts=1, seconds=1.0, tokens_out=1).to_json()


def test_identical_share_ignores_order():
    assert identical_share(["a", "b", "c", "c"], ["c", "a", "c", "x"]) == 0.75
    assert identical_share([], []) == 0.0


@pytest.mark.parametrize("kind", ["item", "entity", "pair"])
@pytest.mark.parametrize("structured_output", [True, False])
def test_bare_body_equals_the_clients_body(kind, structured_output):
    spec = load_scenario("movies").spec(kind)
    schema = json.dumps(spec.json_schema, sort_keys=True) if spec.json_schema is not None else None
    params = spec.sampling.to_request()
    request = Request(
        key="k",
        prompt_hash="h",
        system=spec.system,
        prompt="<data>\nMovie: X\n</data>",
        params=params,
        json_schema=schema,
    )
    client = LLMClient(endpoint=Endpoint(base_url="http://x/v1", structured_output=structured_output), model="m")
    ours = chat_body(
        model="m",
        system=spec.system,
        prompt=request.prompt,
        params=params,
        json_schema=schema,
        structured_output=structured_output,
    )
    assert ours == client.body(request)
    # Byte for byte too: the server sees the same JSON whichever side sends it.
    assert json.dumps(ours) == json.dumps(client.body(request))


def test_load_generator_bounds_in_flight_counts_tokens_and_does_not_retry():
    # Fault injection: two 500s the bare generator must count as errors, not retry.
    script = [Status(code=500), Status(code=500)]
    with FaultInjectingLLMServer(script=script, default=Ok(text="one two three", delay_s=0.05)) as srv:
        bodies = [chat_body(model="m", system="s", prompt=f"p{n}", params={"max_tokens": 8}) for n in range(20)]
        measured, texts = asyncio.run(
            generate_load(bodies, base_url=srv.base_url, headers={}, in_flight=4, timeout_s=10)
        )
        assert srv.calls == 20
        assert 2 <= srv.max_in_flight <= 4
    assert measured.prompts == 20 and measured.errors == 2
    assert measured.tokens_out == 18 * 3
    assert texts.count("") == 2 and texts.count("one two three") == 18
    assert measured.seconds > 0


def test_command_line_reruns_the_same_settings(tmp_path):
    line = command_line(
        out=tmp_path / "b c.json",
        data_dir=None,
        prompts=8,
        concurrency=4,
        rounds=3,
        base_url="http://h:1/v1",
        model=None,
        max_tokens=16,
        block_size=32,
        kind="user",
        master=None,
    )
    args = shlex.split(line)
    assert args[:3] == ["kar", "bench", "llm"]
    pairs = dict(zip(args[3::2], args[4::2], strict=True))
    assert pairs == {
        "--out": str(tmp_path / "b c.json"),
        "--prompts": "8",
        "--concurrency": "4",
        "--rounds": "3",
        "--endpoint": "http://h:1/v1",
        "--max-tokens": "16",
        "--block-size": "32",
        "--kind": "user",
    }


def test_prefix_cache_counters_are_summed_over_engines_and_created_series_ignored():
    exposition = "\n".join(
        [
            "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.",
            "# TYPE vllm:prefix_cache_queries counter",
            'vllm:prefix_cache_queries_total{engine="0",model_name="smollm2"} 1200.0',
            'vllm:prefix_cache_queries_total{engine="1",model_name="smollm2"} 800.0',
            'vllm:prefix_cache_queries_created{engine="0",model_name="smollm2"} 1.7e9',
            'vllm:prefix_cache_hits_total{engine="0",model_name="smollm2"} 500.0',
            'vllm:num_requests_running{engine="0"} 3.0',
        ]
    )
    assert parse_prefix_cache(exposition) == (2000.0, 500.0)
    assert parse_prefix_cache("vllm:num_requests_running 1.0") is None


def test_report_writes_json_and_a_png_next_to_it(tmp_path):
    out = tmp_path / "nested" / "bench.json"
    result = {"benchmark": "x", "ratio": 0.97, "goal": GOAL}
    panels = [
        Panel(title="throughput", unit="prompts/s", bars={"bare": [2.0, 2.2], "ours": [1.9, 2.1]}),
        Panel(title="cached", unit="prompts/s", bars={"cached": [40.0]}),
    ]
    written = write_report(out, result, title="bench x", panels=panels, note="ours/bare = 0.97")
    png = out.with_suffix(".png")
    assert json.loads(out.read_text()) == {**result, "plot": "bench.png"} == written
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == [], "no temporary file left"


def test_bar_chart_draws_a_single_panel(tmp_path):
    path = bar_chart(tmp_path / "one.png", title="t", panels=[Panel(title="p", unit="u", bars={"a": [0.0]})])
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_rejects_a_bad_argument_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kar", "bench", "llm", "--out", str(tmp_path / "b.json"), "--prompts", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--prompts must be at least 1, got 0" in result.stderr
    assert not (tmp_path / "b.json").exists()


# ---- the real thing: the job and the bare generator against the embedded vLLM CPU server ----


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.spark
def test_bench_llm_end_to_end(tmp_path, spark, llm_base_url, tiny_prepared):
    from kar.bench.llm import bench_llm

    out = tmp_path / "bench" / "llm.json"
    result = bench_llm(
        out=out, data_dir=tiny_prepared, kind="user", base_url=llm_base_url, prompts=8, rounds=1, max_tokens=16
    )
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result, default=str))
    expected = {
        "benchmark", "server", "prompts", "concurrency_per_task", "tasks", "in_flight", "max_tokens", "rounds",
        "bare", "ours", "cached_rerun", "ratio", "goal", "machine", "command", "plot",
    }  # fmt: skip
    assert expected <= set(written)
    assert written["benchmark"] == "llm" and written["server"]["base_url"] == llm_base_url
    assert written["prompts"] == 8 and written["max_tokens"] == 16 and written["kind"] == "user"
    first = written["first_pass"]
    assert first["errors"] == 0 and first["server_fresh"] is False  # the session's server, not started here
    assert first["prefix_cache"]["query_tokens"] > 0 and 0 <= first["prefix_cache"]["hit_rate"] <= 1
    assert written["tasks"] == spark.sparkContext.defaultParallelism
    assert written["in_flight"] == written["tasks"] * written["concurrency_per_task"] == written["tasks"] * 8
    (round_,) = written["rounds"]
    for side in ("bare", "ours"):
        assert round_[side]["errors"] == 0 and 0 < round_[side]["tokens_out"] <= 8 * 16
    assert round_["ours"]["calls"] == 8 and 0 < round_["ours"]["llm_seconds"] <= round_["ours"]["seconds"]
    assert sum(written["prompts_per_task"]) == 8 and len(written["prompts_per_task"]) <= written["tasks"]
    assert written["ratio"] > 0
    assert written["cached_rerun"]["calls"] == 0 and written["cached_rerun"]["prompts_per_s"] > 0
    args = shlex.split(written["command"])
    assert args[:5] == ["kar", "bench", "llm", "--out", str(out)]
    assert args[args.index("--data") + 1] == str(tiny_prepared)
    assert args[args.index("--endpoint") + 1] == llm_base_url
    assert out.with_suffix(".png").stat().st_size > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == ["llm.json", "llm.png"], "scratch folder left behind"
