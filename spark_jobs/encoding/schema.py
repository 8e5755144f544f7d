"""Columns of the vector tables (``OUT/<kind>``) and of their quarantine (``OUT/quarantine/<kind>``).

Timestamps are microseconds with a UTC zone: Feast's Spark offline store rejects nanosecond parquet.
"""

from __future__ import annotations

import pyarrow as pa

UTC_MICROS = pa.timestamp("us", tz="UTC")
# A text's identity for resume: the same entity, cutoff and answer text is the same vector for one model.
KEY_COLUMNS = ("entity_id", "as_of", "text_hash")

VECTOR_SCHEMA = pa.schema(
    [
        ("entity_id", pa.int64()),
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
