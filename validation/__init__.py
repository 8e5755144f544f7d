"""Data-quality gates: great_expectations 1.x suites per stage, row quarantine, batch-level stops."""
