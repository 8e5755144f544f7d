"""Feast integration: point-in-time joins on hand-made data, row preservation, online round trip."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from kar.serving import store

T = [datetime(2024, 1, d, tzinfo=UTC) for d in range(1, 8)]
REPO = Path(__file__).resolve().parents[1]


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.mkdir(parents=True)
    frame.to_parquet(path / "part-0.parquet", index=False, coerce_timestamps="us")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """User 1's profile changes at T[3]; user 2's first profile row only appears at T[4]."""
    root = tmp_path_factory.mktemp("pit")
    users = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "gender": ["F", "F", "M"],
            "age": pd.array([30, 31, 40], dtype="int32"),
            "occupation": ["writer", "lawyer", "artist"],
            "zip_code": ["1", "1", "2"],
            "event_timestamp": [T[0], T[3], T[4]],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [10, 11],
            "title": ["A (1999)", "B (2001)"],
            "genres": [["Drama"], ["Comedy", "Romance"]],
            "year": pd.array([1999, 2001], dtype="int32"),
            "description": [None, "text"],
            "brand": [None, None],
            "event_timestamp": [T[0], T[0]],
        }
    )
    _write(users, root / "users")
    _write(items, root / "items")
    store.apply(data_dir=root)
    return root


def test_point_in_time_join_sees_only_the_past(data_dir):
    samples = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2],
            "item_id": [10, 11, 10, 10, 11],
            "event_timestamp": [T[1], T[1], T[5], T[2], T[5]],
            "label": [1, 0, 1, 0, 1],
        }
    )
    frame = store.training_frame(data_dir=data_dir, samples=samples)
    # Same rows, same order, extra columns kept.
    assert frame[["user_id", "item_id", "label"]].equals(samples[["user_id", "item_id", "label"]])
    assert frame["occupation"].tolist()[:3] == ["writer", "writer", "lawyer"]  # profile as of each sample
    # User 2's sample at T[2] precedes all of their feature rows: kept, with nulls (Feast's file store drops it).
    assert pd.isna(frame.loc[3, "occupation"]) and frame.loc[4, "occupation"] == "artist"
    assert list(frame.loc[1, "genres"]) == ["Comedy", "Romance"]


def test_same_second_samples_of_one_user_are_all_kept(data_dir):
    """Regression for feast-dev/feast#6787: one user rating two items in the same second."""
    samples = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 11, 10], "event_timestamp": [T[5], T[5], T[6]]})
    frame = store.training_frame(data_dir=data_dir, samples=samples)
    assert len(frame) == 3
    assert frame["title"].tolist() == ["A (1999)", "B (2001)", "A (1999)"]


def test_online_lookup_after_materialize(data_dir):
    feature_store = store.materialize(data_dir=data_dir)
    found = store.online_features(feature_store, user_id=1, item_ids=[11, 10, 999])
    assert found["user"].loc[0, "occupation"] == "lawyer"  # the latest version
    items = found["items"].set_index("item_id")
    assert items.loc[11, "title"] == "B (2001)" and list(items.loc[11, "genres"]) == ["Comedy", "Romance"]
    assert pd.isna(items.loc[999, "title"])  # unknown id: nulls, no exception


def test_apply_refuses_a_folder_that_was_not_prepared(tmp_path):
    with pytest.raises(store.DataError, match="not a prepared-data folder"):
        store.apply(data_dir=tmp_path)


def _feast_apply(repo: Path) -> subprocess.CompletedProcess[str]:
    feast = Path(sys.executable).parent / "feast"
    return subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300)


def test_stock_feast_cli_applies_the_bundled_example_repo(data_dir, tmp_path):
    """`cd feature_repo && feast apply` works with the plain Feast CLI, no environment variable involved (on a
    copy, beside a runs/demo/prepared that is the test's folder, to keep the checkout clean)."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "prepared").symlink_to(data_dir)
    result = _feast_apply(repo)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "feature view user_profile" in result.stdout and (repo / "data" / "registry.db").is_file()


def test_the_prepared_folders_example_repo_applies_with_stock_feast(data_dir):
    """`kar feast apply --data DIR` leaves DIR/feast/repo, which stock `feast apply` registers the same way."""
    result = _feast_apply(store.example_repo_dir(data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ranking_serving" in store.open_store(data_dir=data_dir).get_feature_service("ranking_serving").name


def test_the_bundled_example_repo_is_what_the_generator_writes(tmp_path):
    from kar.feast import write_example_repo

    written = write_example_repo(
        repo=tmp_path / "feature_repo", data=tmp_path / "runs/demo/prepared", data_relative=True
    )
    for name in ("example.py", "feature_store.yaml"):
        assert (written / name).read_text() == (REPO / "feature_repo" / name).read_text(), name
    assert sorted(p.name for p in (REPO / "feature_repo").iterdir() if p.suffix in (".py", ".yaml")) == [
        "example.py",
        "feature_store.yaml",
    ]


def test_kar_feast_apply_runs_feasts_own_apply_in_a_team_repo(data_dir, tmp_path):
    """`kar feast apply --repo`: the team's repo registers with Feast's own CLI, kar_knowledge.py included."""
    repo = tmp_path / "team"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: team\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\nentity_key_serialization_version: 3\n"
    )
    (repo / "entities.py").write_text(
        "from feast import Entity, ValueType\n"
        'member = Entity(name="member", join_keys=["member_id"], value_type=ValueType.INT64)\n'
        'article = Entity(name="article", join_keys=["article_id"], value_type=ValueType.INT64)\n'
    )
    data = tmp_path / "prepared"
    shutil.copytree(data_dir, data, ignore=shutil.ignore_patterns("feast"))
    (data / "summary.json").write_text('{"dataset": "synthetic", "id_types": {"user": "int64", "item": "int64"}}')
    store.init_repo(repo=repo, user_entity="member", item_entity="article", data_dir=data)
    names = store.apply(data_dir=data, repo=repo)
    assert {"member", "article", "user_knowledge", "kar_training", "kar_serving"} <= set(names)
    assert (repo / "data" / "registry.db").is_file() and not (repo / "data" / "online_store.db").exists()
