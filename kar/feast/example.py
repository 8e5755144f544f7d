"""kar-feast's example repo: entities ``user``/``item`` over kar's int64 ids, profile views from a prepared folder's
tables, knowledge views and the services ``ranking_training`` and ``ranking_serving``.

``kar feast apply --data DIR`` registers :func:`example_objects` for ``DIR`` and writes the repo that makes the same
call into ``DIR/feast/repo`` (:func:`write_example_repo`); the checked-in ``feature_repo/`` is that repo over
``runs/demo/prepared``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kar.contracts.paths import Location, local_path
from kar.contracts.tables import SUMMARY_FILE
from kar.feast.views import Dimensions, knowledge_service, knowledge_views, profile_view, vector_dims


def example_objects(*, data: Location, dims: Dimensions | None = None, offline_store: str = "file") -> list[Any]:
    """The bundled example repo's objects for one prepared folder: entities ``user``/``item`` (int64 ids, the
    prepared tables' own), profile views from the tables' schema, knowledge views, and the services
    ``ranking_training`` (profiles + raw knowledge) and ``ranking_serving`` (profiles + adapted knowledge).
    LLM-KERec's ``kerec_knowledge`` views join them only when the folder holds their vector tables.
    """
    from feast import Entity, ValueType

    root = local_path(data)
    summary = _summary(root)
    dims = dims or vector_dims(root)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A user of the log")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A rankable item")
    profiles = summary.get("profiles") or _profile_types(root)
    user_profile = profile_view(
        name="user_profile", entity=user, source=root / "users", fields=profiles["users"], offline_store=offline_store
    )
    item_profile = profile_view(
        name="item_profile", entity=item, source=root / "items", fields=profiles["items"], offline_store=offline_store
    )
    # The example repo keys by kar's int64 ids, whatever the dataset's own ids are.
    knowledge = knowledge_views(
        user=user,
        item=item,
        data=root,
        dims=dims,
        key_types={"user": "int64", "item": "int64"},
        offline_store=offline_store,
    )
    training = knowledge_service(
        name="ranking_training",
        features=[user_profile, item_profile, *knowledge.raw],
        description="Profiles and raw knowledge: what a ranker trains on",
    )
    serving = knowledge_service(
        name="ranking_serving",
        features=[user_profile, item_profile, *knowledge.adapted],
        description="Profiles and pre-stored adapted knowledge: what serving reads",
    )
    return [user, item, user_profile, item_profile, *knowledge.all(), training, serving]


def _summary(root: Path) -> dict[str, Any]:
    """The folder's summary; hand-made folders (tests, imports) without one are read from their tables."""
    path = root / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _profile_types(root: Path) -> dict[str, dict[str, str]]:
    """Profile column types read from the tables' schema (folders prepared before summaries recorded them)."""
    import pyarrow.dataset as ds

    arrow = {
        "string": "string",
        "large_string": "string",
        "int32": "int",
        "int64": "bigint",
        "double": "double",
        "float": "float",
        "bool": "boolean",
        "list<element: string>": "array<string>",
        "list<item: string>": "array<string>",
    }
    out: dict[str, dict[str, str]] = {}
    for table, key in (("users", "user_id"), ("items", "item_id")):
        schema = ds.dataset(root / table, format="parquet").schema
        out[table] = {
            f.name: arrow.get(str(f.type), "string") for f in schema if f.name not in (key, "event_timestamp")
        }
    return out


# Feast's Spark offline store, local by default; on a cluster set spark.master here or through spark-submit.
SPARK_OFFLINE_STORE = """  type: spark
  spark_conf:
    spark.master: "local[*]"
    spark.ui.enabled: "false"
    spark.sql.session.timeZone: "UTC"
    spark.sql.parquet.outputTimestampType: "TIMESTAMP_MICROS"
    spark.sql.execution.arrow.pyspark.enabled: "true"
    spark.driver.memory: "4g"
    spark.ui.showConsoleProgress: "false"
"""


def write_example_repo(
    *,
    repo: Location,
    data: Location,
    data_relative: bool = False,
    registry: str | None = None,
    online_path: str | None = None,
    offline_store: str = "file",
) -> Path:
    """Write the bundled example repo (``feature_store.yaml`` + ``example.py``) over a prepared folder.

    ``example.py`` calls :func:`example_objects` for the folder, so ``feast apply`` in the repo registers the
    same objects ``kar feast apply`` does. With ``data_relative`` the folder is written relative to the repo
    (the checked-in ``feature_repo/`` over ``runs/demo/prepared``).

    Returns:
        The repo folder.
    """
    root = local_path(repo, what="repo")
    data_dir = local_path(data, what="data")
    root.mkdir(parents=True, exist_ok=True)
    if data_relative:
        relative = os.path.relpath(data_dir, root)
        data_line = f"DATA = Path(__file__).resolve().parent / {json.dumps(relative)}"
    else:
        data_line = f"DATA = Path({json.dumps(str(data_dir))})"
    (
        root / "example.py"
    ).write_text(f'''"""kar-feast's example repo: entities user/item, profile views, knowledge views and two services.

Written by `kar.feast.write_example_repo`; the objects come from `kar.feast.example_objects`, the same call
`kar feast apply --data DATA` makes. Feast registers the top-level names bound below.
"""

from pathlib import Path

from kar.feast import example_objects

{data_line}

# Bound by their names: user, item, user_profile, item_profile, user_knowledge, item_knowledge,
# user_knowledge_adapted, item_knowledge_adapted, ranking_training, ranking_serving, and kerec_knowledge
# (in ranking_training) once DATA holds LLM-KERec vectors (`kar encode --kind kerec`, then apply again).
OBJECTS = example_objects(data=DATA, offline_store={json.dumps(offline_store)})
globals().update({{obj.name: obj for obj in OBJECTS}})
''')
    store = SPARK_OFFLINE_STORE if offline_store == "spark" else "  type: file\n"
    (root / "feature_store.yaml").write_text(
        "# kar-feast's example repo (kar.feast.write_example_repo); `feast apply` here registers example.py.\n"
        "project: kar\n"
        f"registry: {registry or 'data/registry.db'}\n"
        "provider: local\n"
        f"offline_store:\n{store}"
        f"online_store:\n  type: sqlite\n  path: {online_path or 'data/online_store.db'}\n"
        "entity_key_serialization_version: 3\n"
    )
    return root
