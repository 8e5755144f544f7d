"""Encoder: vocabularies from train only, unknown/missing → 0, sequences, dense vectors, JSON round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctr.features import DenseField, Encoder, FeatureSpec, SequenceField, SparseField
from kar.contracts.errors import DataError

SPEC = FeatureSpec(
    sparse=(SparseField(name="item_id"), SparseField(name="gender"), SparseField(name="year")),
    sequence=(
        SequenceField(name="hist_item_ids", max_len=3, share="item_id"),
        SequenceField(name="genres", max_len=2),
    ),
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": np.array([10, 10, 10, 20, 20, 30], dtype=np.int64),
            "gender": ["M", "F", None, "M", np.nan, "M"],
            "year": [1995.0, np.nan, 1995.0, 2001.0, 2001.0, 1995.0],
            "hist_item_ids": [
                np.array([], dtype=np.int64),
                np.array([10], dtype=np.int64),
                [10, 20],
                None,
                np.array([30, 20, 10, 99], dtype=np.int64),
                np.array([40], dtype=np.int64),
            ],
            "genres": [["Drama"], ["Drama", "Comedy"], [], None, ["Comedy"], ["Drama", None, "Action"]],
        }
    )


def test_ids_follow_train_frequency_and_unknown_or_missing_is_zero() -> None:
    encoder = Encoder.fit(_frame(), spec=SPEC)
    serving = pd.DataFrame(
        {
            "item_id": [10, 20, 30, 40, 777],
            "gender": ["M", "F", None, "X", "M"],
            "year": np.array([1995, 2001, 1950, 1995, 1995], dtype=np.int64),
            "hist_item_ids": [[777, 10], [], [], [], []],
            "genres": [["Western"], [], [], [], []],
        }
    )
    arrays = encoder.transform(serving)

    # Counts: 10 in 3 rows + 3 histories, 20 in 2 + 2, 30 in 1 + 1; 40 and 99 only in a history (ties
    # ordered by key); 777 never seen.
    assert encoder.vocabs["item_id"] == ["10", "20", "30", "40", "99"]
    assert arrays["item_id"].tolist() == [1, 2, 3, 4, 0]
    assert arrays["gender"].tolist() == [1, 2, 0, 0, 1]
    # The NaN-bearing float year column and an int column map 1995.0 and 1995 to one id.
    assert arrays["year"].tolist() == [1, 2, 0, 1, 1]
    assert arrays["hist_item_ids"][0].tolist() == [0, 1, 0]
    assert arrays["genres"][0].tolist() == [0, 0]


def test_fit_sees_only_the_frame_it_is_given() -> None:
    frame = _frame()
    encoder = Encoder.fit(frame.iloc[:3], spec=SPEC)
    arrays = encoder.transform(frame)
    assert arrays["item_id"].tolist() == [1, 1, 1, 2, 2, 0]


def test_min_count_sends_rare_values_to_zero() -> None:
    spec = FeatureSpec(sparse=(SparseField(name="item_id", min_count=2),))
    encoder = Encoder.fit(_frame(), spec=spec)
    assert encoder.transform(_frame())["item_id"].tolist() == [1, 1, 1, 2, 2, 0]


def test_sequences_keep_newest_entries_left_aligned_with_zero_padding() -> None:
    encoder = Encoder.fit(_frame(), spec=SPEC)
    arrays = encoder.transform(_frame())
    assert arrays["hist_item_ids"].dtype == np.int64
    assert arrays["hist_item_ids"].tolist() == [
        [0, 0, 0],
        [1, 0, 0],
        [1, 2, 0],
        [0, 0, 0],
        [2, 1, 5],  # [30, 20, 10, 99] keeps its newest three
        [4, 0, 0],
    ]
    drama, comedy, action = (encoder.vocabs["genres"].index(g) + 1 for g in ("Drama", "Comedy", "Action"))
    assert arrays["genres"].tolist() == [
        [drama, 0],
        [drama, comedy],
        [0, 0],
        [0, 0],
        [comedy, 0],
        [0, action],
    ]


def test_layout_wires_shared_tables() -> None:
    layout = Encoder.fit(_frame(), spec=SPEC).layout
    assert layout.tables == {"item_id": 6, "gender": 3, "year": 3, "genres": 4}
    assert layout.sequence == {"hist_item_ids": "item_id", "genres": "genres"}


def test_save_load_round_trip(tmp_path) -> None:
    frame = _frame()
    encoder = Encoder.fit(frame, spec=SPEC)
    encoder.save(tmp_path / "encoder.json")
    loaded = Encoder.load(tmp_path / "encoder.json")

    assert loaded.spec == encoder.spec
    assert loaded.layout == encoder.layout
    for name, array in encoder.transform(frame).items():
        np.testing.assert_array_equal(loaded.transform(frame)[name], array)


def test_load_rejects_other_json(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match=r"other\.json"):
        Encoder.load(path)


def test_dense_vectors_stack_and_null_rows_are_zero() -> None:
    spec = FeatureSpec(dense=(DenseField(name="knowledge"),))
    frame = pd.DataFrame({"knowledge": [np.array([1.0, 2.0], dtype=np.float32), None, [3.0, 4.0]]})
    encoder = Encoder.fit(frame, spec=spec)
    dense = encoder.transform(frame)["knowledge"]
    assert encoder.layout.dense == {"knowledge": 2}
    assert dense.dtype == np.float32
    assert dense.tolist() == [[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[1.0, 2.0], [1.0, 2.0, 3.0]], "row 1 has 3 values, expected 2"),
        ([[1.0, 2.0], [np.nan, 2.0]], "row 1 has a NaN"),
    ],
)
def test_bad_dense_vectors_are_reported_by_row(values: list[list[float]], message: str) -> None:
    spec = FeatureSpec(dense=(DenseField(name="knowledge"),))
    encoder = Encoder.fit(pd.DataFrame({"knowledge": [[0.0, 0.0]]}), spec=spec)
    with pytest.raises(DataError, match=message):
        encoder.transform(pd.DataFrame({"knowledge": values}))


def test_dense_dim_must_match_spec() -> None:
    spec = FeatureSpec(dense=(DenseField(name="knowledge", dim=3),))
    with pytest.raises(DataError, match="dim 3"):
        Encoder.fit(pd.DataFrame({"knowledge": [[0.0, 0.0]]}), spec=spec)


def test_missing_column_is_named() -> None:
    with pytest.raises(DataError, match="no column 'genres'"):
        Encoder.fit(_frame().drop(columns="genres"), spec=SPEC)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sparse": ["item_id", "item_id"]}, "'item_id' is listed twice"),
        ({"sparse": ["label"]}, "reserved"),
        ({"sequence": [{"name": "hist", "max_len": 3, "share": "item_id"}]}, "not a sparse field"),
        ({"sparse": [{"name": "item_id", "min_cnt": 2}]}, r"features.sparse\[0\]: unknown key 'min_cnt'"),
        ({"sequence": [{"name": "genres"}]}, "missing key 'max_len'"),
        ({"sparse": [{"name": "item_id", "min_count": "2"}]}, "expected int"),
        ({}, "no fields"),
    ],
)
def test_spec_errors_name_the_field(raw: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        FeatureSpec.from_dict(raw)


def test_spec_dict_round_trip() -> None:
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
