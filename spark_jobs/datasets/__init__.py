"""Dataset loaders: each turns one source format into typed raw tables (see ``base.RawTables``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from kar.contracts.errors import DataError
from kar.contracts.storage import Folder
from spark_jobs.datasets.amazon import load_amazon
from spark_jobs.datasets.base import RawTables, require_dir
from spark_jobs.datasets.movielens import load_movielens_1m, load_movielens_100k
from spark_jobs.datasets.table import TableSpec, load_table

DATASETS = ("synthetic", "movielens-100k", "movielens-1m", "amazon", "table")
# Datasets whose interaction log can come as several batch files (``kar refresh``).
BATCHED = ("table", "movielens-100k", "movielens-1m")


def check_input(name: str, path: Path | None, spec: TableSpec | None = None) -> None:
    """Fail fast, before any Spark start-up, on an unknown dataset, a missing input folder or a bad spec."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "table":
        if spec is None:
            raise DataError("table: --spec SPEC.yaml is required (it names your tables and their columns)")
        spec.check()
    elif spec is not None:
        raise DataError(f"{name}: --spec is only for --dataset table")
    elif name != "synthetic":
        require_dir(path, dataset=name)


def load_dataset(
    spark: SparkSession,
    name: str,
    *,
    path: Path | None,
    work_dir: Folder,
    max_timestamp: int,
    synthetic=None,
    spec: TableSpec | None = None,
    interactions: Sequence[str | Path] = (),
) -> RawTables:
    """Load dataset ``name`` from ``path`` (``synthetic`` generates into ``work_dir`` instead, or reads the raw
    folder of an earlier generation given as ``path``; ``table`` reads the tables ``spec`` names).

    ``interactions``: files in the dataset's own interactions format read instead of its log, e.g. the batches
    ``kar refresh`` appended (``table``, ``movielens-100k``, ``movielens-1m``).
    """
    if interactions and name not in BATCHED:
        raise DataError(f"{name}: interaction batches are read for {', '.join(BATCHED)} only")
    if name == "table":
        if spec is None:
            raise DataError("table: a TableSpec is required")
        return load_table(spark, spec=spec, max_timestamp=max_timestamp, interactions=interactions)
    if name in ("movielens-100k", "movielens-1m"):
        loader = load_movielens_100k if name == "movielens-100k" else load_movielens_1m
        return loader(spark, path=path, max_timestamp=max_timestamp, interactions=[Path(p) for p in interactions])
    if name == "synthetic":
        # Imported here: only this dataset needs the generator's word lists.
        from spark_jobs.datasets.generated import load_synthetic

        return load_synthetic(spark, work_dir=work_dir, max_timestamp=max_timestamp, config=synthetic, raw_dir=path)
    loaders = {
        "movielens-100k": load_movielens_100k,
        "movielens-1m": load_movielens_1m,
        "amazon": load_amazon,
    }
    if name not in loaders:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return loaders[name](spark, path=path, max_timestamp=max_timestamp)


__all__ = ["BATCHED", "DATASETS", "RawTables", "TableSpec", "check_input", "load_dataset"]
