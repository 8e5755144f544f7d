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
OPTIONAL_KINDS = ("kerec",)
"""Knowledge kinds a folder may or may not have: ``kerec`` is each item's judged-complementary entities (the
LLM-KERec graph as text). Nothing is created for them when missing, so a folder without them is unchanged."""
ALL_KINDS = KINDS + OPTIONAL_KINDS
ENTITY_OF = {"user": "user", "item": "item", "kerec": "item"}
"""The entity (``user`` or ``item``: its id column, id map and ranking side) each knowledge kind describes."""
ID_COLUMNS = {"user": "user_id", "item": "item_id"}
"""The prepared tables' id column of each entity."""
KEREC_DIR = "kerec"
"""``knowledge/kerec``: one text per item, its entities' judged-complementary entities (``kar knowledge --kind
kerec`` writes it beside ``kerec_entities/`` and ``kerec_graph/``)."""

VECTORS_DIR = "vectors"
ADAPTED_DIR = "adapted"
VECTOR_TABLES = tuple(f"{stage}/{kind}" for stage in (VECTORS_DIR, ADAPTED_DIR) for kind in KINDS)
"""Folders of the knowledge vectors, relative to a prepared folder: raw encodings, then adapted."""
OPTIONAL_VECTOR_TABLES = tuple(f"{stage}/{kind}" for stage in (VECTORS_DIR, ADAPTED_DIR) for kind in OPTIONAL_KINDS)
"""The same for the optional kinds: present only once encoded (``kar encode --kind kerec``) or exported."""

KNOWLEDGE_DIM = 384
"""The default encoder's output size (all-MiniLM-L6-v2); a team's encoder may differ, read from the table."""
ADAPTED_DIM = 32
"""The default adaptor's output size (``adaptors.hea.HEAConfig.out_dim``)."""
