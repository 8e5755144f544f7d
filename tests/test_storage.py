"""Locations stay URIs end to end: path arithmetic keeps them verbatim, file work goes through pyarrow.fs, and the
Spark jobs write and read a ``file://`` URI with a space in it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from kar.cli import cli_location
from kar.contracts import storage
from kar.contracts.storage import Uri
from tests.conftest import NOW


def test_uri_path_arithmetic_keeps_the_scheme_and_authority():
    root = storage.location("s3a://bucket/runs/prepared")
    assert isinstance(root, Uri) and root == "s3a://bucket/runs/prepared"
    assert root / "items" == "s3a://bucket/runs/prepared/items"
    assert (root / "items").name == "items"
    assert (root / "items").parent == root
    assert root.with_name("other") == "s3a://bucket/runs/other"
    assert Uri("hdfs://nn:8020/") / "x" == "hdfs://nn:8020/x"


def test_a_local_path_is_made_absolute_and_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.location("runs/x") == tmp_path / "runs" / "x"
    assert storage.optional_location(None) is None


@pytest.mark.parametrize("uri", ["s3a://bucket/x", "hdfs://nn:8020/data/x", "file:///tmp/with space/x"])
def test_the_cli_keeps_a_uri_verbatim(uri):
    # pathlib made "s3a://bucket/x" into "<cwd>/s3a:/bucket/x" before; the jobs' options must hand Spark the URI.
    assert cli_location(uri) == uri
    assert isinstance(cli_location(uri), Uri)


def test_a_file_uri_is_read_as_hadoop_reads_it():
    assert storage.filesystem("file:///tmp/with space/x")[1] == "/tmp/with space/x"
    assert storage.filesystem("file:///tmp/a%20b")[1] == "/tmp/a%20b"  # Spark does not decode it either
    assert storage.local_folder("file:///tmp/with space/x") == Path("/tmp/with space/x")
    assert storage.local_folder(Path("/tmp/y")) == Path("/tmp/y")


def test_file_work_on_a_file_uri_with_a_space(tmp_path):
    root = storage.location(f"file://{tmp_path}/with space")
    storage.write_text(root / "a" / "summary.json", "{}")
    assert storage.read_text(root / "a" / "summary.json") == "{}"
    storage.write_text(root / "a" / "summary.json", '{"n": 1}')  # replaces the older file
    assert storage.read_text(root / "a" / "summary.json") == '{"n": 1}'
    assert storage.is_dir(root / "a") and storage.is_file(root / "a" / "summary.json")
    assert storage.list_names(root / "a") == ["summary.json"]
    assert storage.list_names(root / "missing") == []

    storage.write_parquet(root / "b" / "part-0.parquet", pa.table({"x": [1, 2]}))
    assert storage.parquet_dataset(root / "b").count_rows() == 2
    storage.replace_tree(root / "b", root / "a")  # the target goes, the source takes its place
    assert not storage.exists(root / "b")
    assert storage.list_names(root / "a") == ["part-0.parquet"]
    storage.remove_tree(root / "a")
    storage.remove_tree(root / "a")  # nothing there is fine
    assert not storage.exists(root / "a")
    assert (tmp_path / "with space").is_dir()  # the URI's folder, not "file:/…" under the cwd


@pytest.mark.spark
def test_prepare_writes_a_file_uri_with_a_space_and_the_next_stage_reads_it(spark, tmp_path, monkeypatch):
    from kar.pipeline import plan_knowledge, read_summary
    from spark_jobs.datasets.synthetic import SyntheticConfig
    from spark_jobs.prepare import prepare

    monkeypatch.chdir(tmp_path)  # a relative path would land here; nothing may
    uri = f"file://{tmp_path}/with space/prepared"
    config = SyntheticConfig(n_users=16, n_items=12, min_interactions=3, mean_interactions=5)
    summary = prepare(spark=spark, dataset="synthetic", out=storage.location(uri), synthetic=config, now=NOW)

    folder = tmp_path / "with space" / "prepared"
    assert {"interactions", "samples", "users", "items", "summary.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "samples.unpublished").exists()  # published through storage.replace_tree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with space"]
    assert read_summary(uri).rows == summary.rows
    (plan,) = plan_knowledge(kinds=["user"], data_dir=uri, limit=3)
    assert plan.prompts == 3
