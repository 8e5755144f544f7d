"""Which frame columns a ranker reads, and the encoder that turns them into model inputs.

Three kinds of field:

* ``sparse``: one categorical value per row (ids, gender, age, year...), embedded by lookup.
* ``sequence``: a list of categorical values per row (history items, genres), mean-pooled over the non-padding
  entries. A sequence may ``share`` the vocabulary and embedding table of a sparse field, as the item history
  shares ``item_id``'s.
* ``dense``: a fixed-size float vector per row (e.g. LLM knowledge), fed to the model as is.

The :class:`Encoder` learns vocabularies from the train split only. Index 0 means unknown, missing or padding,
so values first seen in validation or test map to 0 exactly like nulls do. It saves to JSON so serving encodes
requests the way training did.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ctr._mapping import coerce, from_mapping
from kar.contracts.errors import DataError

ENCODER_FORMAT = "kar-feast/ctr-encoder"
ENCODER_VERSION = 1
UNKNOWN = 0
# Batch keys the trainer adds next to the feature arrays; a field may not use them.
RESERVED_NAMES = frozenset({"label"})


@dataclass(frozen=True, kw_only=True)
class SparseField:
    """A categorical field with one value per row.

    Attributes:
        name: Column of the training frame; also the name of its embedding table.
        min_count: Values seen fewer times in train map to index 0.
    """

    name: str
    min_count: int = 1


@dataclass(frozen=True, kw_only=True)
class SequenceField:
    """A multi-valued categorical field (a list or array per row).

    Attributes:
        name: Column of the training frame.
        max_len: Entries kept per row; longer rows keep their last ``max_len`` (histories are oldest→newest).
        share: A sparse field whose vocabulary and embedding table this field reuses; None gives it its own.
        min_count: Values seen fewer times in train map to index 0 (own vocabulary only).
    """

    name: str
    max_len: int
    share: str | None = None
    min_count: int = 1

    @property
    def table(self) -> str:
        """Name of the vocabulary/embedding table the field reads."""
        return self.share or self.name


@dataclass(frozen=True, kw_only=True)
class DenseField:
    """A fixed-size float vector per row; null rows become zeros. A numeric scalar column is a 1-d vector.

    Attributes:
        name: Column of the training frame (lists or arrays of floats, or numbers).
        dim: Expected vector size; None takes it from the train split.
    """

    name: str
    dim: int | None = None


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """The fields a ranker reads from the training frame.

    Attributes:
        sparse: Single-valued categorical fields.
        sequence: Multi-valued categorical fields.
        dense: Float vector fields.
    """

    sparse: tuple[SparseField, ...] = ()
    sequence: tuple[SequenceField, ...] = ()
    dense: tuple[DenseField, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in (*self.sparse, *self.sequence, *self.dense)]
        if not names:
            raise DataError("features: no fields; list at least one under sparse, sequence or dense")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise DataError(f"features: field {duplicates[0]!r} is listed twice")
        reserved = RESERVED_NAMES.intersection(names)
        if reserved:
            raise DataError(f"features: {sorted(reserved)[0]!r} is reserved for the label, not a feature")
        sparse_names = {f.name for f in self.sparse}
        for field in self.sequence:
            if field.share is not None and field.share not in sparse_names:
                raise DataError(f"features: {field.name}.share names {field.share!r}, which is not a sparse field")

    @property
    def columns(self) -> list[str]:
        """Frame columns the spec reads."""
        return [f.name for f in (*self.sparse, *self.sequence, *self.dense)]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, where: str = "features") -> FeatureSpec:
        """Build from a config mapping; a sparse entry may be a bare column name.

        Raises:
            DataError: Naming the offending key.
        """
        return from_mapping(
            cls,
            raw,
            where=where,
            nested={
                "sparse": lambda value, path: _fields(SparseField, value, path),
                "sequence": lambda value, path: _fields(SequenceField, value, path),
                "dense": lambda value, path: _fields(DenseField, value, path),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The config mapping :meth:`from_dict` reads."""
        return {kind: [asdict(f) for f in getattr(self, kind)] for kind in ("sparse", "sequence", "dense")}


def _fields(cls: type, raw: Any, where: str) -> tuple[Any, ...]:
    entries = coerce(raw, tuple[Any, ...], where)
    return tuple(
        from_mapping(cls, {"name": entry} if isinstance(entry, str) else entry, where=f"{where}[{i}]")
        for i, entry in enumerate(entries)
    )


@dataclass(frozen=True, kw_only=True)
class InputLayout:
    """What a model needs to size its layers, independent of the data.

    Attributes:
        tables: Embedding table name → number of rows (vocabulary size plus index 0).
        sparse: Sparse field → the table it reads, in spec order.
        sequence: Sequence field → the table it reads, in spec order.
        dense: Dense field → vector size, in spec order.
    """

    tables: dict[str, int]
    sparse: dict[str, str]
    sequence: dict[str, str]
    dense: dict[str, int]


class Encoder:
    """Maps the spec's columns of a frame to integer ids and float vectors.

    Build one with :meth:`fit` on the train split; :meth:`transform` then encodes any split.
    """

    def __init__(self, *, spec: FeatureSpec, vocabs: Mapping[str, Sequence[str]], dense_dims: Mapping[str, int]):
        """Create an encoder from learnt state (use :meth:`fit` or :meth:`load` instead of calling this).

        Args:
            spec: The fields to encode.
            vocabs: Table name → category keys; the key at position ``i`` gets id ``i + 1``.
            dense_dims: Dense field → vector size.
        """
        self.spec = spec
        self.vocabs = {table: list(keys) for table, keys in vocabs.items()}
        self.dense_dims = dict(dense_dims)
        self._value_sets = {table: pa.array(keys, type=pa.string()) for table, keys in self.vocabs.items()}

    @classmethod
    def fit(cls, frame: pd.DataFrame, *, spec: FeatureSpec) -> Encoder:
        """Learn vocabularies and vector sizes from ``frame`` (pass the train split only).

        Tables are ordered by descending train frequency, so a smaller id means a more frequent value.
        A shared table counts its values in every column that reads it.
        """
        _require_columns(frame, spec.columns)
        counts: dict[str, pd.Series] = {}
        min_counts: dict[str, int] = {}
        for field in spec.sparse:
            counts[field.name] = _counts(_keys(frame[field.name]))
            min_counts[field.name] = field.min_count
        for field in spec.sequence:
            seen = _counts(_keys(_flatten(frame[field.name], name=field.name)[0]))
            counts[field.table] = counts[field.table].add(seen, fill_value=0) if field.table in counts else seen
            min_counts.setdefault(field.table, field.min_count)
        vocabs = {table: _vocabulary(counts[table], min_counts[table]) for table in counts}
        dense_dims = {field.name: _dense_dim(frame[field.name], field) for field in spec.dense}
        return cls(spec=spec, vocabs=vocabs, dense_dims=dense_dims)

    @property
    def layout(self) -> InputLayout:
        """Table sizes and field → table wiring for building a model."""
        return InputLayout(
            tables={table: len(keys) + 1 for table, keys in self.vocabs.items()},
            sparse={f.name: f.name for f in self.spec.sparse},
            sequence={f.name: f.table for f in self.spec.sequence},
            dense=dict(self.dense_dims),
        )

    def transform(self, frame: pd.DataFrame, *, skip: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Encode ``frame`` to arrays keyed by field name.

        Sparse fields become int64 ``[n]``, sequence fields int64 ``[n, max_len]`` and dense fields float32
        ``[n, dim]``.

        Args:
            frame: Rows with the spec's columns.
            skip: Dense fields the caller provides otherwise (their columns may be absent).

        Raises:
            DataError: If a column is absent or a dense vector has the wrong size or non-finite values.
        """
        _require_columns(frame, [name for name in self.spec.columns if name not in skip])
        arrays = {f.name: self._ids(f.name, frame[f.name]) for f in self.spec.sparse}
        for field in self.spec.sequence:
            arrays[field.name] = self._sequence_ids(field, frame[field.name])
        for field in self.spec.dense:
            if field.name not in skip:
                arrays[field.name] = dense_matrix(frame[field.name], name=field.name, dim=self.dense_dims[field.name])
        return arrays

    def save(self, path: Path) -> None:
        """Write the encoder as JSON."""
        state = {
            "format": ENCODER_FORMAT,
            "version": ENCODER_VERSION,
            "spec": self.spec.to_dict(),
            "vocabs": self.vocabs,
            "dense_dims": self.dense_dims,
        }
        Path(path).write_text(json.dumps(state, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> Encoder:
        """Read an encoder written by :meth:`save`.

        Raises:
            DataError: If the file is not an encoder of this version.
        """
        state = json.loads(Path(path).read_text())
        if state.get("format") != ENCODER_FORMAT or state.get("version") != ENCODER_VERSION:
            raise DataError(f"{path}: not a {ENCODER_FORMAT} v{ENCODER_VERSION} file")
        spec = FeatureSpec.from_dict(state["spec"], where=f"{path}: spec")
        return cls(spec=spec, vocabs=state["vocabs"], dense_dims=state["dense_dims"])

    def _ids(self, table: str, values: pd.Series | pa.Array) -> np.ndarray:
        positions = pc.index_in(_keys(values), value_set=self._value_sets[table])
        # Keys not in the vocabulary and missing values have no position: -1 + 1 makes them 0.
        return pc.fill_null(positions, -1).to_numpy().astype(np.int64) + 1

    def _sequence_ids(self, field: SequenceField, values: pd.Series) -> np.ndarray:
        flat, lengths = _flatten(values, name=field.name)
        ids = self._ids(field.table, flat)
        row_of = np.repeat(np.arange(len(lengths)), lengths)
        index_in_row = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        # Keep each row's newest max_len entries (histories are oldest→newest), left-aligned, zero-padded.
        skipped = np.repeat(np.maximum(lengths - field.max_len, 0), lengths)
        kept = index_in_row >= skipped
        out = np.zeros((len(lengths), field.max_len), dtype=np.int64)
        out[row_of[kept], (index_in_row - skipped)[kept]] = ids[kept]
        return out


def _require_columns(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(f"training frame: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")


def _keys(values: pd.Series | pa.Array) -> pa.Array:
    """Canonical string keys, so 1995, 1995.0 and "1995" are one category and vocabularies are JSON-able.

    Integer columns with nulls arrive as floats (a NaN year), hence the cast to int64 when no value has a
    fraction. Arrow does the conversion (and the lookups and counts) in C++.
    """
    if isinstance(values, pd.Series):
        try:
            values = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python types: compare their text
            values = pa.array(values.astype("string"), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_floating(values.type):
        with contextlib.suppress(pa.ArrowInvalid):
            values = pc.cast(values, pa.int64())
    return pc.cast(values, pa.string())


def _counts(keys: pa.Array) -> pd.Series:
    """Occurrences of each non-null key."""
    counts = pc.value_counts(keys.drop_null())
    return pd.Series(counts.field("counts").to_numpy(), index=counts.field("values").to_pylist(), dtype=np.int64)


def _vocabulary(counts: pd.Series, min_count: int) -> list[str]:
    kept = counts[counts >= min_count]
    # By count, ties by key, so the same train split always gives the same ids.
    return kept.sort_index().sort_values(ascending=False, kind="stable").index.tolist()


_ARROW_LIST_TYPES = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


def _flatten(values: pd.Series, *, name: str) -> tuple[pa.Array, np.ndarray]:
    """All entries of a list column in row order, and the number of entries per row (null rows have 0)."""
    lists = _arrow_lists(values, name=name)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    return lists.flatten(), lengths


def _arrow_lists(values: pd.Series, *, name: str) -> pa.Array:
    """The column (a list, an array or null per row) as an Arrow list array: converted in C++, not per row."""
    try:
        lists = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{name}: expected a list of values per row ({exc})") from None
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if pa.types.is_null(lists.type):  # every row null
        return pa.nulls(len(values), type=pa.list_(pa.null()))
    if not any(is_list(lists.type) for is_list in _ARROW_LIST_TYPES):
        raise DataError(f"{name}: expected a list of values per row, got {lists.type}")
    return lists


def _dense_lists(values: pd.Series, *, name: str) -> pa.Array:
    """A dense column as lists: vectors as they are, a number as a 1-element vector (null stays null)."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _arrow_lists(values, name=name)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        return _arrow_lists(values, name=name)
    offsets = pa.array(np.arange(len(array) + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, array.cast(pa.float32()), mask=array.is_null())


def _dense_dim(values: pd.Series, field: DenseField) -> int:
    lengths = pc.list_value_length(_dense_lists(values, name=field.name)).drop_null().to_numpy()
    if len(lengths) == 0:
        if field.dim is None:
            raise DataError(f"{field.name}: no vectors in the train split; set dim in the feature spec")
        return field.dim
    dim = int(lengths[0])
    if field.dim is not None and dim != field.dim:
        raise DataError(f"{field.name}: vectors have {dim} values, the feature spec says dim {field.dim}")
    return dim


def dense_matrix(values: pd.Series, *, name: str, dim: int) -> np.ndarray:
    """A column of ``dim``-sized vectors (null rows → zeros) as float32 ``[n, dim]``.

    Raises:
        DataError: Naming the row of a vector of another size or with a non-finite value.
    """
    lists = _dense_lists(values, name=name)
    lengths = pc.fill_null(pc.list_value_length(lists), dim).to_numpy()
    if (lengths != dim).any():
        row = np.argmax(lengths != dim)
        raise DataError(f"{name}: row {values.index[row]} has {lengths[row]} values, expected {dim}")
    present = lists.is_valid().to_numpy(zero_copy_only=False)
    out = np.zeros((len(values), dim), dtype=np.float32)
    # Nulls inside a vector become NaN here and are reported below.
    out[present] = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    if not np.isfinite(out).all():
        row = np.argmax(~np.isfinite(out).all(axis=1))
        raise DataError(f"{name}: row {values.index[row]} has a NaN or infinite value")
    return out
