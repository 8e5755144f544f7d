"""Data-quality gates: great_expectations 1.x suites per stage, row quarantine, batch-level stops."""

from __future__ import annotations

import importlib.util
import sys


def _hide_unusable_spark_connect() -> None:
    """Make pyspark's Spark Connect modules fail to import when their dependencies (grpc) are missing.

    great_expectations imports ``pyspark.sql.connect`` optionally (``except ImportError``). Without grpc,
    pyspark's ``check_dependencies`` does not raise ImportError when ``__main__`` has no ``__file__``
    (``python -c``, stdin, some notebook kernels): it assumes doctests and calls ``sys.exit(0)``, so a job
    would stop silently with success before writing anything. Marking the modules absent turns that into the
    ImportError great_expectations expects; Spark Connect cannot work without grpc anyway.
    """
    if importlib.util.find_spec("grpc") is not None:
        return
    for name in ("pyspark.sql.connect.dataframe", "pyspark.sql.connect.session"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


_hide_unusable_spark_connect()
