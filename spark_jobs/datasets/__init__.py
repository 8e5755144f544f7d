"""Dataset loaders: each turns one source format into typed raw tables (see ``base.RawTables``)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from kar.contracts.errors import DataError
from kar.contracts.storage import Folder
from spark_jobs.datasets.amazon import load_amazon
from spark_jobs.datasets.base import RawTables, require_dir
from spark_jobs.datasets.movielens import load_movielens_1m, load_movielens_100k
from spark_jobs.datasets.table import TableSpec, load_table

DATASETS = ("synthetic", "movielens-100k", "movielens-1m", "amazon", "table")


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
) -> RawTables:
    """Load dataset ``name`` from ``path`` (``synthetic`` generates into ``work_dir`` instead, or reads the raw
    folder of an earlier generation given as ``path``; ``table`` reads the tables ``spec`` names)."""
    if name == "table":
        if spec is None:
            raise DataError("table: a TableSpec is required")
        return load_table(spark, spec=spec, max_timestamp=max_timestamp)
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


__all__ = ["DATASETS", "RawTables", "TableSpec", "check_input", "load_dataset"]
