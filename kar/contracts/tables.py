"""Names and sizes shared by the jobs that write a prepared folder and the layers that read it.

A prepared folder (``kar prepare --out DIR``) holds one parquet dataset per table below, then the knowledge
jobs add ``vectors/<kind>`` (``kar encode``) and ``adapted/<kind>`` (``kar adapt export``); Feast's views
read those four.
"""

from __future__ import annotations

INTERACTIONS_DIR = "interactions"
USERS_DIR = "users"
ITEMS_DIR = "items"
SAMPLES_DIR = "samples"
CUTOFFS_DIR = "knowledge_cutoffs"
HISTORY_DIR = "knowledge_history"
QUARANTINE_DIR = "quarantine"
SUMMARY_FILE = "summary.json"

KINDS = ("user", "item")
"""Knowledge kinds: per-user preference reasoning and per-item facts (KAR's two knowledge types)."""

VECTORS_DIR = "vectors"
ADAPTED_DIR = "adapted"
VECTOR_TABLES = tuple(f"{stage}/{kind}" for stage in (VECTORS_DIR, ADAPTED_DIR) for kind in KINDS)
"""Folders of the knowledge vectors, relative to a prepared folder: raw encodings, then adapted."""

KNOWLEDGE_DIM = 384
"""The default encoder's output size (all-MiniLM-L6-v2); a team's encoder may differ, read from the table."""
ADAPTED_DIM = 32
"""The default adaptor's output size (``adaptors.hea.HEAConfig.out_dim``)."""
