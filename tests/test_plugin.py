"""kar-feast as a plugin, the way a team meets it: its own Feast repo, entities with string ids, its own tables
and column names, and rankers kar-feast did not write.

The flow is the README's "Add knowledge to your own Feast repo": every command of that section is read from
README.md and run here as written (``kar`` and ``feast`` on PATH, relative paths, from one working folder).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving import rank_when_up
from tests.team import customer_id, write_team_tables

REPO = Path(__file__).resolve().parents[1]
README_BLOCK = re.compile(r"<!-- plugin-commands -->\s*```bash\n(.*?)```", re.S)

# The team's Feast repo before kar-feast: two entities with string join keys and one view of its own.
TEAM_FEATURES = textwrap.dedent(
    """
    from datetime import timedelta
    from pathlib import Path

    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    product = Entity(name="product", join_keys=["sku"], value_type=ValueType.STRING)

    customer_stats = FeatureView(
        name="customer_stats",
        entities=[customer],
        ttl=timedelta(days=3650),
        schema=[Field(name="lifetime_value", dtype=Float64), Field(name="segment", dtype=String)],
        source=FileSource(
            path=str(Path(__file__).resolve().parent / "customer_stats.parquet"), timestamp_field="event_timestamp"
        ),
    )
    """
)
TEAM_STORE = textwrap.dedent(
    """
    project: shop
    registry: data/registry.db
    provider: local
    online_store:
      type: sqlite
      path: data/online.db
    entity_key_serialization_version: 3
    """
)

# A ranker defined only here, not in ctr/: its forward takes positional tensors of its own naming.
TEAM_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TeamRanker(nn.Module):
        def __init__(self, *, hidden=16, vocab_sizes, dense_width):
            super().__init__()
            self.users = nn.Embedding(vocab_sizes["user_id"], hidden)
            self.items = nn.Embedding(vocab_sizes["item_id"], hidden)
            self.segments = nn.Embedding(vocab_sizes["segment"], hidden)
            self.extra = nn.Linear(dense_width, hidden)
            self.out = nn.Linear(hidden, 1)

        def forward(self, who, what, segment, extra):
            user = self.users(who) + self.segments(segment) + torch.relu(self.extra(extra))
            return self.out(user * self.items(what)).squeeze(-1)
    """
)
TEAM_EXPERIMENT = textwrap.dedent(
    """
    model: team_models.ranker:TeamRanker
    inputs: [user_id, item_id, segment, dense]
    model_params: {hidden: 16}
    train: {epochs: 10, num_threads: 1}
    """
)


def readme_commands() -> list[str]:
    """The command lines of the README's plugin section, in order."""
    match = README_BLOCK.search((REPO / "README.md").read_text())
    assert match, "README.md lost its <!-- plugin-commands --> block"
    lines = [line.split(" #")[0].strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def write_team_repo(work: Path) -> Path:
    """The team's data (tests.team) and its Feast repo, applied and materialized by the team before kar."""
    write_team_tables(work / "shop")
    repo = work / "shop_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(TEAM_STORE)
    (repo / "features.py").write_text(TEAM_FEATURES)
    customers = pd.read_parquet(work / "shop" / "customers.parquet")
    pd.DataFrame(
        {
            "customer_id": customers["customer_id"],
            "segment": customers["segment"],
            "lifetime_value": np.linspace(0, 1, len(customers)),
            "event_timestamp": pd.Timestamp("2024-12-01", tz="UTC"),
        }
    ).to_parquet(repo / "customer_stats.parquet", index=False)
    (work / "team_models").mkdir()
    (work / "team_models" / "__init__.py").write_text("")
    (work / "team_models" / "ranker.py").write_text(TEAM_MODEL)
    (work / "team_ranker.yaml").write_text(TEAM_EXPERIMENT)
    return repo


def _shell(line: str, *, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (line, result.stdout[-2000:], result.stderr[-3000:])
    return result


def _serve(line: str, *, work: Path, env: dict[str, str], port: int) -> subprocess.Popen[str]:
    """The README's `kar serve … &` line, on a free port, as a process the test stops."""
    args = shlex.split(line.rstrip("& ").replace("--port 8000", f"--port {port}"))
    assigned = {k: v for k, v in (a.split("=", 1) for a in args if re.fullmatch(r"[A-Z_]+=.*", a))}
    command = [a for a in args if not re.fullmatch(r"[A-Z_]+=.*", a)]
    extra = {k: str(work / v) if k == "PYTHONPATH" else v for k, v in assigned.items()}
    return subprocess.Popen(command, cwd=work, env={**env, **extra}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.llm
@pytest.mark.timeout(1800)
def test_a_team_adds_knowledge_to_its_own_feast_repo(tmp_path, llm_base_url):
    from feast import FeatureStore

    from kar.processes import free_port

    work = tmp_path / "team dir"  # a space too: every path is passed as one argument
    work.mkdir()
    repo = write_team_repo(work)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "KAR_SPARK_MASTER": "local[2]",
           "KAR_LLM_BASE_URL": llm_base_url}  # fmt: skip
    _shell("cd shop_repo && feast apply && feast materialize-incremental 2025-06-01T00:00:00", work=work, env=env)
    team_registry = (repo / "data" / "registry.db").stat().st_ino

    commands = readme_commands()
    serve_lines = [c for c in commands if c.rstrip().endswith("&")]
    ranked: dict[str, dict] = {}
    for line in commands:
        if line.startswith("curl "):
            continue  # the test posts the README's request itself, to the server it started
        if line in serve_lines:
            port = free_port()
            server = _serve(line, work=work, env=env, port=port)
            try:
                body = json.loads(re.search(r"-d '(.*)'", commands[commands.index(line) + 1]).group(1))  # type: ignore[union-attr]
                ranked[line] = rank_when_up(server, f"http://127.0.0.1:{port}", body)
            finally:
                server.terminate()
                server.wait(timeout=60)
            continue
        result = _shell(line, work=work, env=env)
        if line.startswith("kar feast online"):
            online = result.stdout

    prepared = work / "shop" / "prepared"
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["id_types"] == {"user": "string", "item": "string"}
    assert summary["prompt_fields"]["user"] == ["segment"]  # country is copied but never prompted
    knowledge = json.loads((prepared / "knowledge" / "summary.json").read_text())
    assert knowledge["user"]["prompts"] == 3 and knowledge["user"]["prompt_fields"]["user"] == ["segment"]
    assert knowledge["user"]["endpoint_host"].startswith("127.0.0.1:") and knowledge["user"]["model"] == "smollm2"
    prompts = pd.read_parquet(prepared / "knowledge" / "user", columns=["prompt"])["prompt"]
    assert prompts.str.contains("segment: ").all() and not prompts.str.contains("C-0|country|@example").any()

    # Feast's own objects in the team's repo, its registry and online store kept.
    assert (repo / "data" / "registry.db").stat().st_ino == team_registry
    store = FeatureStore(repo_path=str(repo))
    assert {v.name for v in store.list_feature_views()} >= {
        "customer_stats",
        "user_knowledge",
        "item_knowledge_adapted",
    }
    with sqlite3.connect(repo / "data" / "online.db") as online_db:
        tables = {row[0] for row in online_db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "shop_customer_stats" in tables

    # Point in time, with the team's own ids: knowledge as of each sample's time, nothing later. Feast's own call
    # for a sample after the cutoff; kar's training_frame (the same call per view) also keeps the sample before
    # it, which Feast's file store drops for being older than every feature row of the view.
    from kar.serving.store import training_frame

    vectors = pd.read_parquet(prepared / "vectors" / "user")
    known = vectors.iloc[0]
    after = known["as_of"] + pd.Timedelta(days=1)
    entity_df = pd.DataFrame({"customer_id": [known["entity_key"]], "sku": ["SKU-001"], "event_timestamp": [after]})
    joined = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("kar_training"))
    row = joined.to_df().iloc[0]
    assert row["has_user_knowledge"] and len(row["user_knowledge"]) == 384 and row["lifetime_value"] >= 0
    samples = pd.DataFrame(
        {
            "user_id": [known["entity_id"]] * 2,
            "item_id": [pd.read_parquet(prepared / "items")["item_id"].iloc[0]] * 2,
            "event_timestamp": [known["as_of"] - pd.Timedelta(seconds=1), after],
        }
    )
    frame = training_frame(data_dir=prepared, repo=repo, service="kar_training", samples=samples)
    assert frame["customer_id"].tolist() == [known["entity_key"]] * 2
    assert frame["has_user_knowledge"].tolist() == [False, True]

    # The team's model, the team's ids.
    team_run = work / "shop" / "runs" / "team"
    config = (team_run / "config.yaml").read_text()
    assert "team_models.ranker:TeamRanker" in config and "knowledge:" in config
    assert json.loads((team_run / "metrics.json").read_text())["test"]["auc"] > 0.5
    assert online.startswith(f"user: customer_id={customer_id(42)}")
    team_ranking, xgb_ranking = ranked.values()
    for ranking in (team_ranking, xgb_ranking):
        assert ranking["user_id"] == customer_id(42)
        assert {i["item_id"] for i in ranking["items"]} == {"SKU-001", "SKU-017", "SKU-999"}
        assert [i["fallback"] for i in ranking["items"] if i["item_id"] == "SKU-999"] == [True]
    xgb_config = (work / "shop" / "runs" / "xgb" / "config.yaml").read_text()
    assert "user_knowledge_adapted" in xgb_config  # plain float features from the pre-stored vectors

    _the_other_commands_take_relative_paths_too(work, env=env)


def _the_other_commands_take_relative_paths_too(work: Path, *, env: dict[str, str]) -> None:
    """The commands the README's plugin lines do not type, on the same folder, every path relative: the
    embeddings gate with its Data Docs (before paths were resolved at the boundary, great_expectations' Data Docs
    killed the first command), kar's own example repo over the folder (apply, materialize) and the online
    benchmark on it."""
    _shell("kar validate embeddings --data shop/prepared --out shop/checks", work=work, env=env)
    assert (work / "shop" / "checks" / "docs" / "validate-embeddings" / "index.html").is_file()
    _shell("kar feast apply --data shop/prepared && kar feast materialize --data shop/prepared", work=work, env=env)
    assert (work / "shop" / "prepared" / "feast" / "repo").is_dir()
    bench = "--out shop/bench/online.json --data shop/prepared --items 5 --requests 3 --rounds 1 --backend sqlite"
    _shell(f"kar bench online {bench}", work=work, env=env)
    assert (work / "shop" / "bench" / "online.json").is_file() and (work / "shop" / "bench" / "online.png").is_file()


def test_the_readme_plugin_section_has_the_commands_the_flow_needs():
    commands = readme_commands()
    starts = [" ".join(c.split()[:3]) for c in commands]
    for expected in ("kar prepare --dataset", "kar knowledge --data", "kar encode --data", "kar feast init",
                     "kar adapt export", "kar feast materialize", "kar feast online"):  # fmt: skip
        assert any(s.startswith(expected) for s in starts), expected
    assert any("feast apply" in c and not c.startswith("kar") for c in commands)  # Feast's own apply
    assert sum(c.endswith("&") for c in commands) == 2  # kar serve with the team model and with XGBoost
