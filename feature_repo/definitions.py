"""Feast objects of kar-feast: entities, sources over the prepared parquet, feature views and services.

Source paths follow ``$KAR_DATA_DIR`` (a folder written by ``kar prepare``), so the same definitions serve
every prepared dataset. Profiles are static snapshots valid from the first logged event, hence no TTL.

Knowledge views hold one vector per entity and knowledge cutoff (``as_of``, the event timestamp): a training
sample at time t joins the newest vector with ``as_of <= t``. Raw views carry the sentence-transformers
embedding of the LLM's answer (``kar encode`` writes ``vectors/``); adapted views carry the hybrid-expert
adaptor's output (``kar adapt export`` writes ``adapted/``), which is what serving reads. Each view has a
``has_*`` flag: true on every stored row, so a missing entity reads as false (``kar.store`` fills zeros).

``$KAR_OFFLINE_STORE=spark`` builds Spark sources for ``feature_store.spark.yaml`` (``kar.store`` sets it
from the profile it loads; set it yourself when calling ``feast -f feature_store.spark.yaml apply``).
"""

from __future__ import annotations

import os
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_source import DataSource
from feast.types import Array, Bool, Float32, Int32, String

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "runs" / "demo" / "prepared"
DATA_DIR = Path(os.environ.get("KAR_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
OFFLINE_STORE = os.environ.get("KAR_OFFLINE_STORE", "file")
# Must match the encoder (all-MiniLM-L6-v2 gives 384) and the adaptor's output; a mismatch is an error at
# apply and materialize time, not a silent reshape.
KNOWLEDGE_DIM = int(os.environ.get("KAR_KNOWLEDGE_DIM", "384"))
ADAPTED_DIM = int(os.environ.get("KAR_ADAPTED_DIM", "32"))


def _source(name: str, table: str, *, description: str, **options: object) -> DataSource:
    """A parquet folder under ``DATA_DIR`` as a file source, or a Spark source for the Spark offline store."""
    path = str(DATA_DIR / table)
    if OFFLINE_STORE == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=path, file_format="parquet", description=description, **options)
    return FileSource(name=name, path=path, description=description, **options)


user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A user of the log")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A rankable item")

users_source = _source(
    "users_source", "users", timestamp_field="event_timestamp", description="Canonical users table (`kar prepare`)"
)
items_source = _source(
    "items_source", "items", timestamp_field="event_timestamp", description="Canonical items table (`kar prepare`)"
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


def knowledge_view(*, name: str, entity: Entity, table: str, dim: int, description: str) -> FeatureView:
    """A view over a vector table (``entity_id, as_of, vector, has_knowledge, created_at, ...``).

    The tables keep the encoder's generic column names; the field mapping gives each view its own feature
    names so views of users and items never collide in one training frame.
    """
    key = entity.join_key
    source = _source(
        f"{name}_source",
        table,
        timestamp_field="as_of",
        # Two vectors for one entity and cutoff (an answer regenerated, then re-encoded): the newest wins.
        created_timestamp_column="created_at",
        field_mapping={"entity_id": key, "vector": name, "has_knowledge": f"has_{name}"},
        description=description,
    )
    return FeatureView(
        name=name,
        entities=[entity],
        schema=[
            Field(name=name, dtype=Array(Float32), vector_length=dim),
            Field(name=f"has_{name}", dtype=Bool),
        ],
        source=source,
        online=True,
        description=description,
        tags={"kar.kind": "knowledge"},
    )


user_knowledge = knowledge_view(
    name="user_knowledge",
    entity=user,
    table="vectors/user",
    dim=KNOWLEDGE_DIM,
    description="Embedding of the LLM's preference reasoning over the user's history as of each cutoff",
)
item_knowledge = knowledge_view(
    name="item_knowledge",
    entity=item,
    table="vectors/item",
    dim=KNOWLEDGE_DIM,
    description="Embedding of the LLM's factual knowledge about the item",
)
user_knowledge_adapted = knowledge_view(
    name="user_knowledge_adapted",
    entity=user,
    table="adapted/user",
    dim=ADAPTED_DIM,
    description="User knowledge after the hybrid-expert adaptor (pre-stored for serving)",
)
item_knowledge_adapted = knowledge_view(
    name="item_knowledge_adapted",
    entity=item,
    table="adapted/item",
    dim=ADAPTED_DIM,
    description="Item knowledge after the hybrid-expert adaptor (pre-stored for serving)",
)

ranking_training = FeatureService(
    name="ranking_training",
    features=[user_profile, item_profile, user_knowledge, item_knowledge],
    description="What a ranker trains on: profiles and raw knowledge embeddings (the adaptor trains jointly)",
)
ranking_serving = FeatureService(
    name="ranking_serving",
    features=[user_profile, item_profile, user_knowledge_adapted, item_knowledge_adapted],
    description="What serving reads: profiles and pre-stored adapted knowledge, no LLM/encoder/adaptor work",
)
