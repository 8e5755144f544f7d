"""The leaf every layer may import: errors, locations, table names and sizes, the progress protocol, timing.

Layers import downward only (``tests/test_layers.py`` checks it)::

    kar.contracts → spark_jobs, validation → adaptors → ctr → kar.serving → kar (CLI, pipeline, benchmarks)

so nothing in this package imports another part of the project, and it stays cheap to import (no Spark,
torch or Feast).
"""
