"""Feast objects for LLM knowledge, for any team's repo: ordinary ``FeatureView``s and ``FeatureService``s.

A team keeps its own Feast repo, entities (any join key, string or int ids), registry and stores. It adds
knowledge with these factories, usually through the file ``kar feast init`` writes into its repo::

    from kar.feast import Dimensions, knowledge_service, knowledge_views
    from features import customer, product, customer_stats      # the team's own objects

    knowledge = knowledge_views(user=customer, item=product, data="/data/shop/prepared", key_types=...)
    user_knowledge, item_knowledge = knowledge.user, knowledge.item   # top-level names: Feast registers them
    kar_training = knowledge_service(name="kar_training", features=[customer_stats, *knowledge.raw])

Then Feast's own ``feast apply`` registers them. Each knowledge view reads a vector table of the prepared
folder (``vectors/<role>``: the encoder's vectors; ``adapted/<role>``: the adaptor's, pre-stored for serving),
holds one vector per entity and knowledge cutoff (``as_of`` is the event time, ``created_at`` breaks ties) and
a ``has_<view>`` flag, so a point-in-time join gives each sample the knowledge as of its time.

Configuration is passed as arguments, never read from the environment. The bundled ``feature_repo/`` is the
example repo written with these functions (:func:`write_example_repo`).
"""

from kar.feast.example import example_objects, write_example_repo
from kar.feast.scaffold import (
    KNOWLEDGE_FILE,
    TEAM_SERVING_SERVICE,
    TEAM_TRAINING_SERVICE,
    RepoEntity,
    RepoView,
    feast_repo,
    scan_repo,
    write_knowledge_file,
)
from kar.feast.views import (
    KEY_COLUMNS,
    KNOWLEDGE_TAG,
    ROLE_TAG,
    ROLES,
    STAGE_TAG,
    Dimensions,
    KnowledgeViews,
    feast_type,
    key_type_of,
    knowledge_service,
    knowledge_view,
    knowledge_views,
    profile_view,
    summary_key_types,
    vector_dims,
    vector_source,
)

__all__ = [
    "KEY_COLUMNS",
    "KNOWLEDGE_FILE",
    "KNOWLEDGE_TAG",
    "ROLES",
    "ROLE_TAG",
    "STAGE_TAG",
    "TEAM_SERVING_SERVICE",
    "TEAM_TRAINING_SERVICE",
    "Dimensions",
    "KnowledgeViews",
    "RepoEntity",
    "RepoView",
    "example_objects",
    "feast_repo",
    "feast_type",
    "key_type_of",
    "knowledge_service",
    "knowledge_view",
    "knowledge_views",
    "profile_view",
    "scan_repo",
    "summary_key_types",
    "vector_dims",
    "vector_source",
    "write_example_repo",
    "write_knowledge_file",
]
