"""The jobs on a Spark standalone cluster (executors in their own JVMs and Python workers) give the same tables as
in local mode: prepare → knowledge (the embedded LLM, a few entities) → encode (in Spark tasks) → adapt export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kar.pipeline import run_adapt_export, run_encode, run_knowledge, run_prepare
from spark_jobs.datasets.generated import write_synthetic
from spark_jobs.datasets.synthetic import SyntheticConfig

JOBS = Path(__file__).resolve().parent / "cluster_jobs.py"
PREPARED = ("interactions", "users", "items", "samples", "knowledge_history", "knowledge_cutoffs")


def _spark_submit(master: str, *args: str, cwd: Path) -> None:
    """Submit tests/cluster_jobs.py as the README says: the venv's Python for the driver and the executors."""
    env = {key: value for key, value in os.environ.items() if key != "KAR_SPARK_MASTER"}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # the launcher starts the driver's JVM: bind it where the workers are
    python = sys.executable
    command = [
        str(Path(python).parent / "spark-submit"), "--master", master,
        "--conf", f"spark.pyspark.python={python}", "--conf", f"spark.pyspark.driver.python={python}",
        str(JOBS), *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])


def _sorted(path: Path, keys: list[str] | None = None) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    # List columns (genres, vectors) are not sortable: by default sort on the scalar ones, all of them.
    keys = keys or [c for c in frame.columns if not isinstance(frame[c].iloc[0], np.ndarray | list)]
    return frame.sort_values(keys).reset_index(drop=True)


def _assert_same(cluster: Path, local: Path, tables: tuple[str, ...]) -> None:
    for table in tables:
        pd.testing.assert_frame_equal(_sorted(cluster / table), _sorted(local / table), obj=table)


@pytest.mark.spark
@pytest.mark.cluster
@pytest.mark.llm
@pytest.mark.timeout(900)
def test_jobs_on_a_standalone_cluster_equal_local_mode(spark, spark_cluster, llm_base_url, knowledge_run, tmp_path):
    raw = write_synthetic(
        tmp_path / "gen", SyntheticConfig(n_users=16, n_items=12, min_interactions=3, mean_interactions=5)
    )
    # The cluster's side gets a file:// URI with a space, from a working directory it must not depend on.
    (tmp_path / "elsewhere").mkdir()
    folder = tmp_path / "on cluster" / "data"
    uri = f"file://{folder}"
    local = tmp_path / "local" / "data"
    cache = tmp_path / "llm-cache"

    # prepare → knowledge (the executors call the LLM, filling the cache) → encode (in Spark tasks).
    _spark_submit(spark_cluster.master_url, str(raw), uri, llm_base_url, str(cache), cwd=tmp_path / "elsewhere")

    run_prepare(dataset="synthetic", path=raw, out=local)
    _assert_same(folder, local, PREPARED)
    # Local mode finds every prompt in the cluster's cache: the prompts (their keys) were the same, so must be
    # the tables.
    summaries = run_knowledge(
        kinds=["user", "item"], data_dir=local, out=local / "knowledge", base_url=llm_base_url, cache_dir=cache, limit=3
    )
    assert {kind: (s.prompts, s.calls) for kind, s in summaries.items()} == {"user": (3, 0), "item": (3, 0)}
    _assert_same(folder / "knowledge", local / "knowledge", ("user", "item"))
    run_encode(data_dir=local)  # on the driver here (a few texts): the same vectors as the cluster's tasks
    for kind in ("user", "item"):
        on_cluster, here = (_sorted(root / "vectors" / kind, ["entity_id", "as_of"]) for root in (folder, local))
        assert on_cluster[["entity_id", "as_of", "text_hash"]].equals(here[["entity_id", "as_of", "text_hash"]])
        np.testing.assert_allclose(np.stack(on_cluster["vector"]), np.stack(here["vector"]), atol=1e-5)

    # Export runs on the driver (pyarrow + torch): from the cluster's URI, with a ranker run of the right sizes.
    run_adapt_export(run_dir=knowledge_run["run"], data_dir=uri)
    run_adapt_export(run_dir=knowledge_run["run"], data_dir=local)
    for kind in ("user", "item"):
        on_cluster, here = (_sorted(root / "adapted" / kind, ["entity_id", "as_of"]) for root in (folder, local))
        assert on_cluster["entity_id"].tolist() == here["entity_id"].tolist()
        np.testing.assert_allclose(np.stack(on_cluster["vector"]), np.stack(here["vector"]), atol=1e-5)
