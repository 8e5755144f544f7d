"""Columns of the vector tables (``OUT/<kind>``) and of their quarantine (``OUT/quarantine/<kind>``).

Timestamps are microseconds with a UTC zone: Feast's Spark offline store rejects nanosecond parquet.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

UTC_MICROS = pa.timestamp("us", tz="UTC")
# A text's identity for resume: the same entity, cutoff and answer text is the same vector for one model.
KEY_COLUMNS = ("entity_id", "as_of", "text_hash")

VECTOR_SCHEMA = pa.schema(
    [
        ("entity_id", pa.int64()),
        # The entity's id as the dataset has it (a team's "C-0042"; the int64 id as text where they are the
        # same): what a Feast view keyed by a string join key reads (``kar.feast``).
        ("entity_key", pa.string()),
        ("kind", pa.string()),
        ("as_of", UTC_MICROS),
        ("model", pa.string()),
        ("dim", pa.int32()),
        ("vector", pa.list_(pa.float32())),
        ("n_chunks", pa.int32()),
        ("text_hash", pa.string()),
        # Always true here; after Feast's point-in-time join a missing row reads as "no knowledge".
        ("has_knowledge", pa.bool_()),
        ("created_at", UTC_MICROS),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("entity_id", pa.int64()),
        ("kind", pa.string()),
        ("as_of", UTC_MICROS),
        ("status", pa.string()),
        ("text", pa.string()),
        ("text_hash", pa.string()),
        ("model", pa.string()),
        ("reason", pa.string()),
        ("created_at", UTC_MICROS),
    ]
)


def vector_table(
    *,
    entity_id: pa.Array,
    as_of: pa.Array,
    vectors: np.ndarray,
    n_chunks: pa.Array,
    text_hash: pa.Array,
    kind: str,
    model: str,
    created_at_us: int,
    entity_key: pa.Array | None = None,
) -> pa.Table:
    """Rows of :data:`VECTOR_SCHEMA`: one ``[n, dim]`` matrix of vectors with their keys, all created at once.

    ``entity_key`` defaults to the int64 ids as text (datasets whose ids are their own).
    """
    n, dim = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    columns = {
        "entity_id": entity_id.cast(pa.int64()),
        "entity_key": (entity_id if entity_key is None else entity_key).cast(pa.string()),
        "kind": pa.array([kind] * n, pa.string()),
        "as_of": as_of.cast(UTC_MICROS),
        "model": pa.array([model] * n, pa.string()),
        "dim": pa.array(np.full(n, dim, dtype=np.int32)),
        "vector": pa.ListArray.from_arrays(offsets, values),
        "n_chunks": n_chunks.cast(pa.int32()),
        "text_hash": text_hash.cast(pa.string()),
        "has_knowledge": pa.array(np.ones(n, dtype=bool)),
        "created_at": pa.array(np.full(n, created_at_us, dtype=np.int64)).cast(UTC_MICROS),
    }
    return pa.table(columns, schema=VECTOR_SCHEMA)
