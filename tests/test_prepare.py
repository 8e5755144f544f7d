"""Loaders and bad input: every rejected row lands in quarantine with a reason; broken files fail in one line."""

from __future__ import annotations

import codecs
from pathlib import Path

import pandas as pd
import pytest

from kar.contracts.errors import DataError
from spark_jobs.prepare import prepare
from spark_jobs.splits import SplitConfig
from tests.conftest import NOW
from tests.rawfiles import ml100k_ratings, write_amazon, write_ml1m, write_ml100k

pytestmark = pytest.mark.spark


def _prepare(spark, dataset: str, src: Path, out: Path, protocol: str = "kar") -> dict:
    split = SplitConfig(protocol=protocol, test_users=0.34, val_users=0.25)
    return prepare(spark=spark, dataset=dataset, path=src, out=out, split=split, now=NOW)


def _quarantine(out: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(out / "quarantine" / table).sort_values("line").reset_index(drop=True)


def test_ml100k_loads_all_rows(spark, tmp_path):
    summary = _prepare(spark, "movielens-100k", write_ml100k(tmp_path / "raw"), tmp_path / "out")
    assert summary.rows["interactions"] == 36
    assert summary.quarantine["interactions"]["rejected"] == 0
    items = pd.read_parquet(tmp_path / "out" / "items").set_index("item_id")
    assert items.loc[1, "title"] == "Misérables, Les (1991)"  # Latin-1 decoded, not mojibake
    assert items.loc[1, "year"] == 1991
    assert list(items.loc[2, "genres"]) == ["Adventure"]


def test_ml1m_accepts_any_ratings_file_name(spark, tmp_path):
    src = write_ml1m(tmp_path / "raw", ratings_name="ratings.users1-3.dat")
    summary = _prepare(spark, "movielens-1m", src, tmp_path / "out")
    assert summary.rows["interactions"] == 6
    assert summary.notes["ratings_file"] == "ratings.users1-3.dat"
    users = pd.read_parquet(tmp_path / "out" / "users").set_index("user_id")
    assert users.loc[1, "occupation"] == "K-12 student" and users.loc[2, "occupation"] == "self-employed"
    titles = set(pd.read_parquet(tmp_path / "out" / "items")["title"])
    assert "Misérables, Les (1995)" in titles


def test_amazon_maps_string_ids_and_quarantines_unknown_items(spark, tmp_path):
    summary = _prepare(spark, "amazon", write_amazon(tmp_path / "raw"), tmp_path / "out")
    assert summary.rows["interactions"] == 9
    reasons = _quarantine(tmp_path / "out", "interactions")["reason"].tolist()
    assert any("malformed JSON" in r for r in reasons)
    assert any(r.startswith("item_id: -1 not in") for r in reasons)  # asin B999 has no metadata
    items = pd.read_parquet(tmp_path / "out" / "items").set_index("item_id")
    assert items.loc[1, "title"] == "Gadget 1" and list(items.loc[1, "genres"]) == ["Electronics", "Cat1"]
    id_map = pd.read_parquet(tmp_path / "out" / "id_maps" / "users")
    assert sorted(id_map["reviewerID"]) == ["A1X", "A2X", "A3X"]
    # Amazon positives are ratings above 4 (KAR's convention), not above 3.
    inter = pd.read_parquet(tmp_path / "out" / "interactions")
    assert ((inter["rating"] > 4) == (inter["label"] == 1)).all()


BAD_ROWS = {
    "1\t1\tfive\t880001500": "rating: not a valid double (five)",
    "1\t2\t7\t880001501": "rating: 7 outside [1, 5]",
    "99\t1\t3\t880001502": "user_id: 99 not in u.user",
    "1\t77\t3\t880001503": "item_id: 77 not in u.item",
    "2\t3\t3\t-5": "timestamp: -5 outside [1,",
    "2\t4\t3\t4102444800": "timestamp: 4102444800 outside [1,",  # 2100-01-01
    "3\t4\t3": "expected 4 fields separated by '\\t', found 3",
    "3\t5\t\t880003005": "rating: missing",
}


def test_bad_rows_are_quarantined_with_reasons(spark, tmp_path):
    good = ml100k_ratings()
    duplicate = good[0]
    lines = [*good, duplicate, *BAD_ROWS]
    summary = _prepare(spark, "movielens-100k", write_ml100k(tmp_path / "raw", ratings=lines), tmp_path / "out")
    quarantined = _quarantine(tmp_path / "out", "interactions")
    assert summary.rows["interactions"] == len(good)
    assert summary.quarantine["interactions"] == {
        "total": len(lines),
        "rejected": len(BAD_ROWS) + 1,
        "top_reasons": summary.quarantine["interactions"]["top_reasons"],
    }
    by_raw = dict(zip(quarantined["raw"], quarantined["reason"], strict=True))
    for raw, expected in BAD_ROWS.items():
        assert expected in by_raw[raw], (raw, by_raw[raw])
    dup = quarantined[quarantined["line"] == len(good) + 1]
    assert dup["reason"].item() == "duplicate (user_id, item_id, timestamp), first at line 1"
    assert set(quarantined["file"]) == {"u.data"}


def test_missing_file_is_one_line_error(spark, tmp_path):
    src = write_ml100k(tmp_path / "raw")
    (src / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: file not found"):
        _prepare(spark, "movielens-100k", src, tmp_path / "out")


def test_wrong_separator_names_file_line_and_cause(spark, tmp_path):
    lines = [line.replace("\t", ",") for line in ml100k_ratings()]
    src = write_ml100k(tmp_path / "raw", ratings=lines)
    with pytest.raises(DataError, match=r"u\.data line 1: expected 4 fields separated by '\\t', found 1 .*separator"):
        _prepare(spark, "movielens-100k", src, tmp_path / "out")


def test_wrong_encoding_is_reported(spark, tmp_path):
    src = write_ml100k(tmp_path / "raw")
    text = (src / "u.data").read_text()
    (src / "u.data").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"u\.data line 1: .*(NUL|encoding)"):
        _prepare(spark, "movielens-100k", src, tmp_path / "out")


def test_missing_folder_and_unknown_dataset(spark, tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        _prepare(spark, "movielens-1m", tmp_path / "nope", tmp_path / "out")
    with pytest.raises(DataError, match="unknown dataset 'netflix'"):
        _prepare(spark, "netflix", tmp_path, tmp_path / "out")


def test_duplicate_user_rows_are_quarantined(spark, tmp_path):
    src = write_ml100k(tmp_path / "raw")
    with (src / "u.user").open("a") as f:
        f.write("1|99|M|writer|00000\n")
    _prepare(spark, "movielens-100k", src, tmp_path / "out")
    bad = _quarantine(tmp_path / "out", "users")
    assert bad["reason"].tolist() == ["duplicate user_id, first at line 1"]
    assert pd.read_parquet(tmp_path / "out" / "users").set_index("user_id").loc[1, "age"] == 21


@pytest.mark.spark
def test_synthetic_reads_an_earlier_generation_instead_of_generating(spark, tmp_path):
    from spark_jobs.datasets.generated import write_synthetic
    from spark_jobs.datasets.synthetic import SyntheticConfig

    config = SyntheticConfig(n_users=40, n_items=60, mean_interactions=25)
    raw = write_synthetic(tmp_path / "gen", config)
    fresh = prepare(spark=spark, dataset="synthetic", out=tmp_path / "a", synthetic=config, now=NOW)
    reread = prepare(spark=spark, dataset="synthetic", path=raw, out=tmp_path / "b", now=NOW)
    assert reread.rows == fresh.rows and reread.splits == fresh.splits
    (raw / "items.parquet").unlink()
    with pytest.raises(DataError, match=r"no items\.parquet; pass a generated raw/ folder"):
        prepare(spark=spark, dataset="synthetic", path=raw, out=tmp_path / "c", now=NOW)
