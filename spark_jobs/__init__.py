"""Spark batch jobs: prepare canonical tables and splits (and, in later stages, prompts and knowledge)."""
