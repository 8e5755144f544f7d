"""Feast objects of kar-feast: entities, sources over the prepared parquet, feature views and services.

Source paths follow ``$KAR_DATA_DIR`` (a folder written by ``kar prepare``), so the same definitions serve
every prepared dataset. Profiles are static snapshots valid from the first logged event, hence no TTL.
"""

from __future__ import annotations

import os
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Int32, String

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "runs" / "demo" / "prepared"
DATA_DIR = Path(os.environ.get("KAR_DATA_DIR", DEFAULT_DATA_DIR)).resolve()

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A user of the log")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A rankable item")

users_source = FileSource(
    name="users_source",
    path=str(DATA_DIR / "users"),
    timestamp_field="event_timestamp",
    description="Canonical users table written by `kar prepare`",
)
items_source = FileSource(
    name="items_source",
    path=str(DATA_DIR / "items"),
    timestamp_field="event_timestamp",
    description="Canonical items table written by `kar prepare`",
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    schema=[
        Field(name="gender", dtype=String),
        Field(name="age", dtype=Int32),
        Field(name="occupation", dtype=String),
        Field(name="zip_code", dtype=String),
    ],
    source=users_source,
    online=True,
    description="Demographics; null where the dataset has none (Amazon)",
)

item_profile = FeatureView(
    name="item_profile",
    entities=[item],
    schema=[
        Field(name="title", dtype=String),
        Field(name="genres", dtype=Array(String)),
        Field(name="year", dtype=Int32),
        Field(name="description", dtype=String),
        Field(name="brand", dtype=String),
    ],
    source=items_source,
    online=True,
    description="Item metadata: title, categories/genres, year, text",
)

ranking_training = FeatureService(
    name="ranking_training",
    features=[user_profile, item_profile],
    description="Features a ranker trains on; knowledge views join here in later stages",
)
