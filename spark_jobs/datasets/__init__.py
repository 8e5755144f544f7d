"""Dataset loaders: each turns one source format into typed raw tables (see ``base.RawTables``)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from kar.errors import DataError
from spark_jobs.datasets.amazon import load_amazon
from spark_jobs.datasets.base import RawTables, require_dir
from spark_jobs.datasets.movielens import load_movielens_1m, load_movielens_100k

DATASETS = ("synthetic", "movielens-100k", "movielens-1m", "amazon")


def check_input(name: str, path: Path | None) -> None:
    """Fail fast, before any Spark start-up, on an unknown dataset or a missing input folder."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name != "synthetic":
        require_dir(path, dataset=name)


def load_dataset(
    spark: SparkSession, name: str, *, path: Path | None, work_dir: Path, max_timestamp: int, synthetic=None
) -> RawTables:
    """Load dataset ``name`` from ``path`` (``synthetic`` generates into ``work_dir`` instead, or reads the raw
    folder of an earlier generation given as ``path``)."""
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


__all__ = ["DATASETS", "RawTables", "check_input", "load_dataset"]
