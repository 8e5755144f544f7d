"""KAR's pre-storage: every user's and item's adapted knowledge vector, written where Feast's adapted views read.

``kar adapt export --run RUN --data DATA`` reads the encoded knowledge (``DATA/vectors/<kind>``), passes each
vector through the adaptor a ranker run trained and writes ``DATA/adapted/<kind>`` (the tables behind
``user_knowledge_adapted`` / ``item_knowledge_adapted``). Serving then reads 32-d vectors from the online store
and runs neither the LLM, nor the encoder, nor the adaptor.

Every cutoff (``as_of``) of an entity is exported, so the adapted views stay point-in-time correct. A folder is
replaced as a whole: the new table is written beside it and swapped in, so a crash leaves the old export.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from adaptors.artifact import load_adaptor
from adaptors.hea import HybridExpertAdaptor
from kar.contracts import storage
from kar.contracts.errors import DataError
from kar.contracts.paths import Location
from kar.contracts.storage import Folder
from spark_jobs.encoding.schema import VECTOR_SCHEMA, vector_table

KNOWLEDGE_SUFFIX = "_knowledge"
BATCH_ROWS = 8192


@dataclass(frozen=True, kw_only=True)
class ExportedTable:
    """What one knowledge field's export wrote.

    Attributes:
        field: Knowledge field (e.g. ``user_knowledge``).
        path: The adapted table folder.
        rows: Vectors written (one per entity and cutoff).
        dim: Size of the adapted vectors.
    """

    field: str
    path: Folder
    rows: int
    dim: int


def field_kind(field: str) -> str:
    """``user_knowledge`` → ``user``: the vector table a knowledge field is read from.

    Raises:
        DataError: If the field does not follow the ``<kind>_knowledge`` naming of the Feast views.
    """
    if not field.endswith(KNOWLEDGE_SUFFIX):
        raise DataError(f"knowledge field {field!r}: expected <kind>{KNOWLEDGE_SUFFIX} (a Feast knowledge view)")
    return field.removesuffix(KNOWLEDGE_SUFFIX)


def export_adapted(
    *, run_dir: Path, vectors_dir: Location, out: Location, incremental: bool = False
) -> list[ExportedTable]:
    """Adapt every vector of ``vectors_dir/<kind>`` with the run's adaptor into ``out/<kind>``.

    Args:
        run_dir: A ranker run trained with a ``knowledge`` section (holds ``adaptor.json``/``adaptor.pt``).
        vectors_dir: Encoded knowledge (``kar encode`` output).
        out: Where the adapted tables go (``DATA/adapted`` for the Feast views).
        incremental: Adapt only vectors the table lacks and append them as a new part (``kar refresh``). When
            the table holds a vector of another run or of knowledge that changed or went away, the whole table
            is rewritten instead, so it never mixes adaptors. ``rows`` then counts the vectors written.

    Returns:
        One entry per knowledge field of the run.

    Raises:
        DataError: If the run has no adaptor or a vector table is missing or of another size.
    """
    adaptor, config = load_adaptor(run_dir)
    model = f"{config.adaptor}@{Path(run_dir).resolve().name}"
    exported = []
    for field in config.fields:
        kind = field_kind(field)
        source = storage.location(vectors_dir) / kind
        if not storage.is_dir(source):
            raise DataError(f"{source}: no vectors for {field!r}; run `kar encode` first")
        table = _latest_per_cutoff(storage.parquet_dataset(source, schema=VECTOR_SCHEMA).to_table())
        target = storage.location(out) / kind
        missing = _not_exported(table, target, model=model) if incremental else None
        if missing is not None:
            rows = _vector_table(missing, _adapt(adaptor, field, missing), kind=kind, model=model)
            if len(rows):
                storage.write_parquet(target / f"part-{uuid.uuid4().hex}.parquet", rows)
        else:
            rows = _vector_table(table, _adapt(adaptor, field, table), kind=kind, model=model)
            _replace_folder(target, rows)
        exported.append(ExportedTable(field=field, path=target, rows=len(rows), dim=config.out_dim))
    return exported


_KEY = ["entity_id", "as_of", "text_hash"]


def _not_exported(table: pa.Table, target: Folder, *, model: str) -> pa.Table | None:
    """The vectors of ``table`` the adapted ``target`` lacks, or None when ``target`` must be rewritten whole
    (missing, another run's adaptor, or a vector whose knowledge is no longer current)."""
    if not storage.is_dir(target):
        return None
    done = storage.parquet_dataset(target, schema=VECTOR_SCHEMA).to_table(columns=[*_KEY, "model"])
    if len(done) and set(done["model"].unique().to_pylist()) != {model}:
        return None
    current = table.select(_KEY).to_pandas()
    exported = done.select(_KEY).to_pandas().drop_duplicates()
    if (exported.merge(current, on=_KEY, how="left", indicator=True)["_merge"] == "left_only").any():
        return None
    # A left merge keeps the left order, so the flags line up with the rows of ``table``.
    new = current.merge(exported, on=_KEY, how="left", indicator=True)["_merge"] == "left_only"
    return table.filter(pa.array(new.to_numpy()))


def _latest_per_cutoff(table: pa.Table) -> pa.Table:
    """One row per ``(entity_id, as_of)``: the newest encoding, the one Feast's views would resolve to."""
    if len(table) == 0:
        return table
    ordered = table.sort_by([("entity_id", "ascending"), ("as_of", "ascending"), ("created_at", "descending")])
    keys = ordered.select(["entity_id", "as_of"]).to_pandas()
    first = ~keys.duplicated().to_numpy()
    return ordered.filter(pa.array(first))


def _adapt(adaptor: HybridExpertAdaptor, field: str, table: pa.Table) -> np.ndarray:
    expected = adaptor.inputs[field]
    if len(table) == 0:
        return np.zeros((0, adaptor.out_dim), dtype=np.float32)
    vectors = pc.list_flatten(table["vector"]).to_numpy().astype(np.float32)
    if vectors.size != len(table) * expected:
        raise DataError(f"{field}: vectors are not all {expected}-d, the size the adaptor was trained on")
    vectors = vectors.reshape(len(table), expected)
    with torch.no_grad():
        parts = [
            adaptor.adapt(field, torch.from_numpy(vectors[start : start + BATCH_ROWS])).numpy()
            for start in range(0, len(vectors), BATCH_ROWS)
        ]
    return np.concatenate(parts)


def _vector_table(source: pa.Table, adapted: np.ndarray, *, kind: str, model: str) -> pa.Table:
    entity_id = source["entity_id"].combine_chunks()
    # Parts encoded before entity_key existed read it as null: their ids were the dataset's own.
    entity_key = pc.coalesce(source["entity_key"].combine_chunks(), pc.cast(entity_id, pa.string()))
    return vector_table(
        entity_id=entity_id,
        entity_key=entity_key,
        as_of=source["as_of"].combine_chunks(),
        vectors=adapted,
        n_chunks=source["n_chunks"].combine_chunks(),
        text_hash=source["text_hash"].combine_chunks(),
        kind=kind,
        model=model,
        created_at_us=time.time_ns() // 1000,
    )


def _replace_folder(folder: Folder, table: pa.Table) -> None:
    """Swap ``folder`` for one holding only ``table``; the old folder survives a crash before the swap."""
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    storage.write_parquet(staging / "part-0.parquet", table)
    retired = folder.with_name(f".{folder.name}.old.{uuid.uuid4().hex}")
    if storage.exists(folder):
        storage.move(folder, retired)
    storage.move(staging, folder)
    storage.remove_tree(retired)
