"""The knowledge job end to end: cache hits, resume after failures and SIGKILL, quarantine, summary.

Faults come from the fault-injecting test double; real answers and the SIGKILL test use the embedded vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kar.contracts.errors import EndpointDown, KarError
from spark_jobs.knowledge.job import KnowledgeJob, generate_knowledge
from spark_jobs.llm.cache import AnswerCache
from spark_jobs.llm.client import Endpoint
from tests.fault_server import FaultInjectingLLMServer, Ok, Status

REPO = Path(__file__).resolve().parents[1]
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "breaker_cooldown_s": 0.1, "breaker_failures": 3}


def job(base_url: str, out: Path, data: Path, **kwargs) -> KnowledgeJob:
    endpoint = Endpoint(base_url=base_url, max_concurrency=4, **FAST)
    return KnowledgeJob(data_dir=data, out=out, endpoint=endpoint, model="fault-injecting-llm", tasks=2, **kwargs)


def n_items(data: Path) -> int:
    return len(pd.read_parquet(data / "items"))


def answered_ids(out: Path, table: str, key: str) -> list[int]:
    ok = pd.read_parquet(out / table)[key].tolist() if (out / table).is_dir() else []
    bad_dir = out / "quarantine" / table
    bad = pd.read_parquet(bad_dir)[key].tolist() if bad_dir.is_dir() else []
    return sorted(ok + bad)


@pytest.mark.spark
def test_answers_quarantine_and_summary(spark, tiny_prepared, tmp_path):
    truncate_first = [Ok(finish_reason="length"), Ok(text="I'm sorry, I cannot help with that.")]
    with FaultInjectingLLMServer(script=truncate_first) as srv:
        summary = generate_knowledge(spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared))
    total = n_items(tiny_prepared)
    assert summary.prompts == summary.calls == total and summary.cached == 0
    assert summary.status == {"ok": total - 2, "truncated": 1, "refused": 1}
    knowledge = pd.read_parquet(tmp_path / "item")
    assert len(knowledge) == total - 2 and (knowledge["status"] == "ok").all()
    assert knowledge["text"].str.startswith("echo:").all()
    quarantine = pd.read_parquet(tmp_path / "quarantine" / "item")
    assert sorted(quarantine["reason"].str.split(":").str[0]) == ["refused", "truncated"]
    assert answered_ids(tmp_path, "item", "item_id") == sorted(pd.read_parquet(tiny_prepared / "items")["item_id"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())["item"]
    assert on_disk["answer_tokens_out"] > 0 and on_disk["usd_estimate_all_answers"] > 0


@pytest.mark.spark
def test_rerun_makes_no_llm_calls_and_new_prompts_only_ask_what_is_missing(spark, tiny_prepared, tmp_path):
    with FaultInjectingLLMServer() as srv:
        first = generate_knowledge(spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared, limit=5))
        rerun = generate_knowledge(spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared, limit=5))
        grown = generate_knowledge(spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared))
    assert first.calls == 5
    assert rerun.calls == 0 and rerun.cached == 5
    assert grown.calls == n_items(tiny_prepared) - 5
    assert srv.calls == n_items(tiny_prepared)


@pytest.mark.spark
def test_changed_prompt_config_is_stale_and_regenerated(spark, tiny_prepared, tmp_path):
    scenario = tmp_path / "movies-v2.yaml"
    text = (REPO / "kar" / "configs" / "knowledge" / "movies.yaml").read_text()
    scenario.write_text(text.replace("You are a movie expert.", "You are a film historian."))
    with FaultInjectingLLMServer() as srv:
        generate_knowledge(spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared, limit=4))
        changed = generate_knowledge(
            spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared, limit=4, scenario=scenario)
        )
    assert changed.calls == 4 and changed.cached == 0


@pytest.mark.spark
def test_server_failing_mid_run_stops_with_a_clear_error_and_the_rerun_resumes(spark, tiny_prepared, tmp_path):
    answered: list[int] = []

    def fail_after_four(_body: dict) -> Status | None:
        answered.append(1)
        return Status(code=503) if len(answered) > 4 else None

    failing = FaultInjectingLLMServer(rules=fail_after_four)
    # The tasks' EndpointDown reaches the caller as that class: a scheduler can retry later.
    with failing as srv, pytest.raises(EndpointDown, match="rerun the same command to resume") as failure:
        generate_knowledge(spark, kind="item", job=job(srv.base_url, tmp_path, tiny_prepared))
    assert "503" in str(failure.value)
    kept = AnswerCache(tmp_path / "cache").read()
    assert 1 <= (kept["status"].to_numpy() == "ok").sum() <= 4
    with FaultInjectingLLMServer() as healthy:
        resumed = generate_knowledge(spark, kind="item", job=job(healthy.base_url, tmp_path, tiny_prepared))
    total = n_items(tiny_prepared)
    assert resumed.cached >= 1 and resumed.calls == total - resumed.cached == healthy.calls
    assert answered_ids(tmp_path, "item", "item_id") == sorted(pd.read_parquet(tiny_prepared / "items")["item_id"])


def test_unknown_kind_is_a_clear_error(spark, tmp_path):
    with pytest.raises(KarError, match="unknown knowledge kind"):
        generate_knowledge(spark, kind="users", job=job("http://127.0.0.1:9/v1", tmp_path, tmp_path))  # type: ignore[arg-type]


# ---- real embedded model ----


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.spark
def test_real_model_answers_every_kind(spark, tiny_prepared, llm_base_url, tmp_path):
    endpoint = Endpoint(base_url=llm_base_url, max_concurrency=8)
    real = KnowledgeJob(data_dir=tiny_prepared, out=tmp_path, endpoint=endpoint, model="smollm2", limit=3,
                        kerec_max_pairs=3)  # fmt: skip
    for kind in ("user", "item", "kerec"):
        generate_knowledge(spark, kind=kind, job=real)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["user"]["prompts"] == summary["item"]["prompts"] == 3
    assert sum(summary["user"]["status"].values()) == 3
    texts = pd.concat([pd.read_parquet(tmp_path / t) for t in ("user", "item") if (tmp_path / t).is_dir()])
    assert len(texts) >= 1 and texts["text"].str.len().min() > 0 and (texts["tokens_out"] > 0).all()
    entities = pd.read_parquet(tmp_path / "kerec_entities")
    assert set(entities["source"]) >= {"metadata"}
    assert summary["kerec"]["entity"]["status"].get("ok", 0) >= 1  # structured output parses as JSON
    # The graph as a third knowledge type: the answers' shape, one row per item with a complementary target.
    complements = pd.read_parquet(tmp_path / "kerec")
    assert {"item_id", "as_of", "status", "text", "prompt"} <= set(complements.columns)
    assert summary["kerec"]["knowledge_items"] == len(complements) == complements["item_id"].nunique()
    graph = pd.read_parquet(tmp_path / "kerec_graph")
    assert len(complements) <= graph["complementary"].sum() * len(entities)
    assert complements["text"].str.len().gt(0).all() and (complements["status"] == "ok").all()
    # Gated like the other kinds: both LLM steps' prompts, answers and statuses, then the verdicts, graph, texts.
    gated = summary["kerec"]["validation"]
    assert {f"{stage}.{step}" for stage in ("prompts", "answers") for step in ("entity", "pair")} <= set(gated)
    assert {"answers.kerec_judgements", "answers.kerec_graph", "answers.kerec"} <= set(gated)
    assert all(report["passed"] for report in gated.values())
