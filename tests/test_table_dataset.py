"""A team's own tables (`kar prepare --dataset table`): column mapping, string ids, labels, timestamps, quarantine,
and bad specs in one sentence before Spark starts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from kar.contracts.errors import DataError
from spark_jobs.datasets.table import TableSpec
from spark_jobs.id_maps import IdMap
from spark_jobs.prepare import prepare
from tests.conftest import NOW
from tests.team import write_team_tables


def _spec(folder: Path, **changes) -> Path:
    """The team spec (tests.team) with top-level sections replaced or dropped (None)."""
    path = folder / "spec.yaml"
    spec = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    changed = folder / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    return changed


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Path:
    return write_team_tables(tmp_path_factory.mktemp("team"), customers=40, products=30, events=600).parent


@pytest.fixture(scope="module")
def prepared(spark, team, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare(spark=spark, dataset="table", spec=TableSpec.load(team / "spec.yaml"), out=out, now=NOW)
    return out, summary


@pytest.mark.spark
def test_columns_map_to_canonical_tables_and_nothing_else_is_copied(prepared):
    out, summary = prepared
    assert summary.rows["interactions"] == 600 and summary.quarantine["interactions"]["rejected"] == 0
    users = pd.read_parquet(out / "users")
    assert list(users.columns) == ["user_id", "segment", "country", "event_timestamp"]  # no email
    items = pd.read_parquet(out / "items")
    assert items["price"].dtype == "float64" and set(items.columns) >= {"title", "category"}
    interactions = pd.read_parquet(out / "interactions")
    assert set(interactions["label"]) == {0, 1} and interactions["rating"].isna().all()
    clicks = pd.read_csv(Path(summary.notes["spec"]).parent / "clicks.csv")
    assert interactions["label"].mean() == pytest.approx(clicks["clicked"].mean())
    first = pd.Timestamp(clicks["ts"].min())  # ISO-8601 text, read as UTC
    assert interactions["event_timestamp"].min() == first
    assert summary.id_types == {"user": "string", "item": "string"}
    assert summary.prompt_fields == {"user": ["segment"], "item": ["title", "category", "price"]}
    assert summary.profiles["items"] == {"title": "string", "category": "string", "price": "double"}


@pytest.mark.spark
def test_string_ids_get_stable_int64_ids_and_the_mapping_is_kept(prepared, spark, team, tmp_path):
    out, _ = prepared
    users = IdMap.load(out, "user")
    assert users is not None and len(users.to_int) == 40
    assert users.to_raw[users.to_int["C-0007"]] == "C-0007" and users.ids(["C-9999"]) == [-1]
    again = tmp_path / "again"
    prepare(spark=spark, dataset="table", spec=TableSpec.load(team / "spec.yaml"), out=again, now=NOW)
    assert IdMap.load(again, "user").to_int == users.to_int  # the same in every run


@pytest.mark.spark
def test_a_rating_column_with_a_threshold_and_millisecond_epochs(spark, team, tmp_path):
    clicks = pd.read_csv(team / "clicks.csv")
    clicks["stars"] = clicks["clicked"] * 4 + 1  # 5 or 1
    clicks["ts"] = (pd.to_datetime(clicks["ts"]).astype("int64") // 1_000_000).astype("int64")  # epoch ms
    clicks.loc[3, "stars"] = 9
    clicks.to_parquet(tmp_path / "clicks.parquet", index=False)
    inter = {"path": str(tmp_path / "clicks.parquet"), "user_id": "customer_id", "item_id": "sku", "timestamp": "ts",
             "rating": "stars", "positive_above": 3, "rating_range": [1, 5]}  # fmt: skip
    spec = TableSpec.load(_spec(team, interactions=inter))
    summary = prepare(spark=spark, dataset="table", spec=spec, out=tmp_path / "out", now=NOW)
    interactions = pd.read_parquet(tmp_path / "out" / "interactions")
    assert len(interactions) == 599 and set(interactions["rating"]) == {1.0, 5.0}
    assert (interactions["label"] == (interactions["rating"] > 3)).all()
    assert interactions["event_timestamp"].min().year == 2025  # milliseconds, not the year 56,000
    quarantined = pd.read_parquet(tmp_path / "out" / "quarantine" / "interactions")
    assert quarantined["reason"].tolist() == ["rating: 9 outside [1, 5]"]
    assert quarantined["line"].tolist() == [4] and quarantined["file"].tolist() == ["clicks.parquet"]  # row 4
    assert summary.id_types["user"] == "string"


@pytest.mark.spark
def test_without_profile_tables_users_and_items_are_the_logged_ids(spark, team, tmp_path):
    spec = TableSpec.load(_spec(team, users=None, items=None))
    summary = prepare(spark=spark, dataset="table", spec=spec, out=tmp_path / "out", now=NOW)
    assert list(pd.read_parquet(tmp_path / "out" / "users").columns) == ["user_id", "event_timestamp"]
    assert summary.rows["users"] == summary.rows["interacting_users"]
    assert summary.prompt_fields == {"user": [], "item": []}


@pytest.mark.spark
def test_bad_rows_go_to_quarantine_with_file_row_and_reason(spark, team, tmp_path):
    clicks = (team / "clicks.csv").read_text().splitlines()
    clicks[2] = "C-0001,SKU-001,yesterday,1"  # not a time
    clicks[3] = "C-0001,SKU-001,2025-01-02T00:00:00Z,maybe"  # not 0/1
    clicks[4] = "C-4242,SKU-001,2025-01-02T00:00:00Z,1"  # not a known customer
    (tmp_path / "clicks.csv").write_text("\n".join(clicks) + "\n")
    inter = {"path": str(tmp_path / "clicks.csv"), "user_id": "customer_id", "item_id": "sku", "timestamp": "ts",
             "label": "clicked"}  # fmt: skip
    prepare(spark=spark, dataset="table", spec=TableSpec.load(_spec(team, interactions=inter)), out=tmp_path / "o",
            now=NOW)  # fmt: skip
    bad = pd.read_parquet(tmp_path / "o" / "quarantine" / "interactions").sort_values("line")
    assert bad["line"].tolist() == [3, 4, 5]
    assert bad["reason"].tolist() == [
        "ts: not epoch seconds/milliseconds or ISO-8601 (yesterday)",
        "clicked: not 0/1 (maybe)",
        "user_id: C-4242 not in customers.parquet",  # the team's id, not its int64 form
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"interactions": {"path": "clicks.csv", "user_id": "customer", "item_id": "sku", "timestamp": "ts",
                           "label": "clicked"}},
         r"interactions table .*clicks.csv has no column 'customer' \(it has: customer_id, sku, ts, clicked\)"),
        ({"users": {"path": "nope.parquet", "id": "customer_id"}}, r"users.path: .*nope.parquet not found"),
        ({"items": {"path": "products.jsonl", "id": "sku", "attributes": {"price": "money"}}},
         r"items.attributes.price: type 'money' is not one of auto, string"),
        ({"interactions": {"path": "clicks.csv", "user_id": "customer_id", "item_id": "sku", "timestamp": "ts"}},
         r"give either `label: COLUMN` \(0/1\) or `rating:` with `positive_above:`"),
        ({"users": {"path": "customers.parquet", "id": "customer_id", "attributes": ["segment"],
                    "prompt_fields": ["email"]}},
         r"users.prompt_fields: 'email' is not one of the attributes \(segment\)"),
        ({"extra": 1}, r"spec: unknown key 'extra'"),
    ],
)  # fmt: skip
def test_a_bad_spec_is_one_sentence_before_spark_starts(team, change, message):
    with pytest.raises(DataError, match=message):
        TableSpec.load(_spec(team, **change)).check()


def test_the_cli_names_the_spec_file_and_the_fix(team, tmp_path):
    import subprocess
    import sys

    broken = _spec(team, users={"path": "customers.parquet", "id": "customer"})
    result = subprocess.run(
        [sys.executable, "-m", "kar", "prepare", "--dataset", "table", "--spec", str(broken), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "users table" in result.stderr and "has no column 'customer'" in result.stderr


def _amazon(folder: Path, *, users: int = 30, items: int = 12) -> Path:
    """A 5-core-shaped Amazon category: every user rates every item once, ratings from a fixed rule."""
    import gzip
    import json

    folder.mkdir(parents=True)
    reviews = [
        {"overall": float((u * 7 + i * 3) % 5 + 1), "reviewerID": f"A{u:03d}X", "asin": f"B{i:03d}",
         "unixReviewTime": 1_400_000_000 + u * 1000 + i * 10}
        for u in range(users) for i in range(items)
    ]  # fmt: skip
    meta = [{"asin": f"B{i:03d}", "title": f"Gadget {i}", "brand": "Acme", "category": ["Electronics", f"C{i % 3}"],
             "description": ["Small."]} for i in range(items)]  # fmt: skip
    with gzip.open(folder / "Electronics_5.json.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(r) for r in reviews) + "\n")
    with gzip.open(folder / "meta_Electronics.json.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(m) for m in meta) + "\n")
    return folder


@pytest.mark.slow
@pytest.mark.spark
def test_a_prepared_amazon_category_trains_with_a_derived_experiment(spark, tmp_path):
    """There is no bundled deepfm_amazon.yaml: the experiment comes from the training frame's columns."""
    from kar.pipeline import run_train
    from kar.serving import store

    data = tmp_path / "amazon"
    prepare(spark=spark, dataset="amazon", path=_amazon(tmp_path / "raw"), out=data, now=NOW)
    store.apply(data_dir=data)
    overrides = tmp_path / "quick.yaml"
    overrides.write_text("train: {epochs: 2, num_threads: 1}\n")
    metrics = run_train(model="deepfm", data_dir=data, out=tmp_path / "run", config_path=overrides)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["dataset"] == "amazon" and config["train"]["epochs"] == 2
    sparse = [f["name"] for f in config["features"]["sparse"]]
    assert sparse[:2] == ["user_id", "item_id"] and "brand" in sparse
    assert {f["name"] for f in config["features"]["dense"]} == {"user_knowledge", "item_knowledge"}
    assert 0 <= metrics.test["auc"] <= 1 and metrics.epochs_run >= 1
