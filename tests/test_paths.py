"""User-given locations: local paths made absolute once, URIs passed through untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from kar.contracts.errors import DataError
from kar.contracts.paths import is_uri, local_path, name_or_path, optional_local_path, resolve_location


def test_a_relative_path_is_made_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_location("runs/demo") == tmp_path / "runs" / "demo"
    assert resolve_location(Path("a/../b")) == tmp_path / "b"  # folded, so messages show a clean path
    assert local_path("runs/demo").is_absolute()


def test_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_location("~/data") == tmp_path / "data"


def test_symlinks_are_kept(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert resolve_location("link") == tmp_path / "link"


@pytest.mark.parametrize("uri", ["s3a://bucket/prepared", "hdfs://nn:8020/data", "file:///tmp/x", "gs://b/p q"])
def test_uris_pass_through_untouched(uri):
    assert is_uri(uri)
    assert resolve_location(uri) == uri  # pathlib would fold "//" into "/"


def test_a_windows_like_or_colon_name_is_a_path_not_a_uri():
    assert not is_uri("C:\\data") and not is_uri("a:b") and not is_uri("runs/x")


def test_file_uris_become_local_paths_and_other_schemes_are_named_in_one_sentence():
    assert local_path("file:///tmp/a folder/x") == Path("/tmp/a folder/x")
    assert local_path("file:///tmp/a%20b") == Path("/tmp/a%20b")  # as Spark (Hadoop) reads it: not decoded
    assert local_path("file://localhost/tmp/x") == Path("/tmp/x")
    with pytest.raises(DataError, match=r"^out s3a://bucket/x: only local folders and file:// URIs"):
        local_path("s3a://bucket/x", what="out")
    assert optional_local_path(None) is None


def test_a_model_name_stays_a_name_and_an_existing_folder_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert name_or_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert name_or_path("movies") == "movies"
    (tmp_path / "models" / "bge").mkdir(parents=True)
    assert name_or_path("models/bge") == str(tmp_path / "models" / "bge")
