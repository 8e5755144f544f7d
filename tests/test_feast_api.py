"""The plugin API in small pieces: knowledge views for any entity, the scaffold, rankers by import path, and
experiments derived from a training frame."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from feast import Entity, ValueType

from ctr.derive import column_kind, derive_experiment, merged
from ctr.features import InputLayout
from ctr.models import build_model
from ctr.models.external import ExternalRanker
from kar.contracts.errors import DataError
from kar.feast import (
    KNOWLEDGE_FILE,
    Dimensions,
    knowledge_service,
    knowledge_view,
    knowledge_views,
    scan_repo,
    write_knowledge_file,
)

CUSTOMER = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
PRODUCT = Entity(name="product", join_keys=["sku"], value_type=ValueType.STRING)


def _prepared(folder: Path, id_types: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users").mkdir(exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": "table", "id_types": id_types}))
    return folder


def test_views_are_keyed_by_the_teams_join_keys_and_tagged_with_their_role(tmp_path):
    data = _prepared(tmp_path / "prepared", {"user": "string", "item": "string"})
    views = knowledge_views(user=CUSTOMER, item=PRODUCT, data=data, dims=Dimensions(knowledge=8, adapted=4))
    user = views.user
    assert user.name == "user_knowledge" and [e for e in user.entities] == ["customer"]
    assert user.batch_source.field_mapping == {"entity_key": "customer_id", "vector": "user_knowledge",
                                               "has_knowledge": "has_user_knowledge"}  # fmt: skip
    assert user.batch_source.path == str(data / "vectors" / "user")
    assert user.batch_source.timestamp_field == "as_of" and user.batch_source.created_timestamp_column == "created_at"
    assert {f.name: f.vector_length for f in user.features}["user_knowledge"] == 8
    assert user.tags == {"kar.kind": "knowledge", "kar.role": "user", "kar.stage": "raw"}
    assert views.item_adapted.tags["kar.stage"] == "adapted" and views.item_adapted.entities == ["product"]
    service = knowledge_service(name="kar_training", features=list(views.raw))
    assert [p.name for p in service.feature_view_projections] == ["user_knowledge", "item_knowledge"]


def test_an_int64_entity_over_string_ids_is_an_error_naming_both(tmp_path):
    data = _prepared(tmp_path / "prepared", {"user": "string", "item": "string"})
    numbered = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    with pytest.raises(DataError, match=r"entity 'customer' joins on customer_id as INT64, but the knowledge in .* "
                                        r"is keyed by string ids"):  # fmt: skip
        knowledge_views(user=numbered, item=PRODUCT, data=data)


def test_an_entity_without_a_value_type_needs_the_key_type(tmp_path):
    untyped = Entity(name="member", join_keys=["member_id"])
    with pytest.raises(DataError, match=r"entity 'member' declares no value_type; pass key_type"):
        knowledge_view(name="k", entity=untyped, source=tmp_path, dim=8, role="user")
    view = knowledge_view(name="k", entity=untyped, source=tmp_path, dim=8, role="user", key_type="int64")
    assert view.batch_source.field_mapping["entity_id"] == "member_id"


TEAM_REPO = textwrap.dedent(
    """
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    product = Entity(name="product", join_keys=["sku"], value_type=ValueType.STRING)
    numbered = Entity(name="store", join_keys=["store_id"], value_type=ValueType.INT64)
    stats = FeatureView(name="customer_stats", entities=[customer], schema=[Field(name="v", dtype=Float64)],
                        source=FileSource(path="x.parquet", timestamp_field="event_timestamp"))
    other = FeatureView(name="store_stats", entities=[numbered], schema=[Field(name="v", dtype=Float64)],
                        source=FileSource(path="y.parquet", timestamp_field="event_timestamp"))
    raise SystemExit("a scan must not import the team's repo")
    """
)


def _team_repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "feature_store.yaml").write_text("project: shop\nregistry: data/registry.db\nprovider: local\n")
    (folder / "defs").mkdir()
    (folder / "defs" / "features.py").write_text(TEAM_REPO)
    return folder


def test_the_scan_reads_entities_and_views_without_importing_the_repo(tmp_path):
    entities, views = scan_repo(_team_repo(tmp_path / "repo"))
    assert [(e.variable, e.module, e.join_key, e.key_type) for e in entities] == [
        ("customer", "defs.features", "customer_id", "string"),
        ("product", "defs.features", "sku", "string"),
        ("numbered", "defs.features", "store_id", "int64"),
    ]
    assert [(v.variable, v.entities) for v in views] == [("stats", ("customer",)), ("other", ("numbered",))]


def test_init_writes_one_file_importing_the_teams_objects_and_never_overwrites_theirs(tmp_path):
    repo = _team_repo(tmp_path / "repo")
    data = _prepared(tmp_path / "prepared", {"user": "string", "item": "string"})
    written = write_knowledge_file(repo=repo, user_entity="customer", item_entity="product", data=data)
    text = written.read_text()
    assert written == repo / KNOWLEDGE_FILE and "from defs.features import customer, product, stats" in text
    assert "features=[stats, *knowledge.raw]" in text and '"user": "string"' in text  # only views of the two
    compile(text, str(written), "exec")
    with pytest.raises(DataError, match="exists; pass --force to rewrite it"):
        write_knowledge_file(repo=repo, user_entity="customer", item_entity="product", data=data)
    written.write_text("# the team's own file\n")
    with pytest.raises(DataError, match="exists; kar did not write it"):
        write_knowledge_file(repo=repo, user_entity="customer", item_entity="product", data=data, force=True)


def test_init_refuses_an_entity_whose_join_key_type_differs_from_the_data(tmp_path):
    repo = _team_repo(tmp_path / "repo")
    data = _prepared(tmp_path / "prepared", {"user": "string", "item": "string"})
    with pytest.raises(DataError, match=r"entity 'store' joins on store_id as INT64, but .* keys its users by string"):
        write_knowledge_file(repo=repo, user_entity="store", item_entity="product", data=data)
    with pytest.raises(DataError, match=r"no entity named 'shopper' bound to a top-level name"):
        write_knowledge_file(repo=repo, user_entity="shopper", item_entity="product", data=data)


# ------------------------------------------------------------------------------------- rankers by import path

TEAM_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Pairwise(nn.Module):
        def __init__(self, *, width=4, vocab_sizes, dense_width):
            super().__init__()
            self.user = nn.Embedding(vocab_sizes["user_id"], width)
            self.item = nn.Embedding(vocab_sizes["item_id"], width)
            self.dense = nn.Linear(dense_width, width)

        def forward(self, item, extra, user):  # its own order and names
            return ((self.user(user) + self.dense(extra)) * self.item(item)).sum(-1)
    """
)


@pytest.fixture
def team_module(tmp_path, monkeypatch):
    (tmp_path / "team_pkg").mkdir()
    (tmp_path / "team_pkg" / "__init__.py").write_text("")
    (tmp_path / "team_pkg" / "models.py").write_text(TEAM_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "team_pkg.models:Pairwise"
    for name in [m for m in sys.modules if m.startswith("team_pkg")]:
        del sys.modules[name]


LAYOUT = InputLayout(tables={"user_id": 5, "item_id": 7}, sparse={"user_id": "user_id", "item_id": "item_id"},
                     sequence={}, dense={"k": 3, "p": 1})  # fmt: skip


def test_an_imported_model_gets_its_inputs_in_its_own_order(team_module):
    model = ExternalRanker(layout=LAYOUT, target=team_module, inputs=["item_id", "dense", "user_id"], width=4)
    batch = {"user_id": torch.tensor([1, 2]), "item_id": torch.tensor([3, 4]), "k": torch.ones(2, 3),
             "p": torch.zeros(2, 1)}  # fmt: skip
    assert model(batch).shape == (2,)
    assert model.model.dense.in_features == 4  # dense_width: every dense field, concatenated


def test_an_imported_model_with_knowledge_sees_the_adapted_width(team_module):
    from adaptors import AdaptorConfig

    knowledge = AdaptorConfig(fields=("k",), out_dim=2, hidden=(4,))
    model = build_model(team_module, layout=LAYOUT, knowledge=knowledge, inputs=("item_id", "dense", "user_id"))
    assert model.backbone.model.dense.in_features == 3  # 2 adapted + 1
    batch = {"user_id": torch.tensor([1]), "item_id": torch.tensor([3]), "k": torch.ones(1, 3), "p": torch.ones(1, 1)}
    assert model(batch).shape == (1,)


@pytest.mark.parametrize(
    ("name", "inputs", "message"),
    [
        ("nowhere.models:X", ["user_id"], r"cannot import nowhere.models .*PYTHONPATH"),
        ("team_pkg.models:Missing", ["user_id"], r"has no torch.nn.Module class named 'Missing'"),
        ("team_pkg.models:Pairwise", None, r"list what forward\(\) receives under `inputs:`"),
        ("team_pkg.models:Pairwise", ["user_id", "age"], r"input 'age' is not a feature field"),
    ],
)
def test_an_imported_model_that_does_not_fit_is_one_sentence(team_module, name, inputs, message):
    with pytest.raises(DataError, match=message):
        build_model(name, layout=LAYOUT, inputs=inputs)


# ------------------------------------------------------------------------------------- derived experiments


def _frame() -> pd.DataFrame:
    n = 40
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "user_id": np.arange(n) % 7,
            "item_id": np.arange(n) % 5,
            "customer_id": [f"C-{i}" for i in range(n)],
            "segment": rng.choice(["a", "b"], n),
            "price": rng.uniform(1, 9, n),
            "year": np.full(n, 2001.0),
            "hist_item_ids": [[1, 2]] * n,
            "tags": [["x", "y"]] * n,
            "user_knowledge": [np.ones(4, dtype=np.float32)] * n,
            "has_user_knowledge": True,
            "label": rng.integers(0, 2, n),
            "rating": np.nan,
            "split": "train",
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )


def test_column_kinds_follow_the_types():
    frame = _frame()
    kinds = {
        c: column_kind(frame[c]) for c in ("segment", "price", "year", "hist_item_ids", "user_knowledge", "rating")
    }
    assert kinds == {"segment": "sparse", "price": "dense", "year": "sparse", "hist_item_ids": "sequence",
                     "user_knowledge": "dense", "rating": "skip"}  # fmt: skip


def test_a_derived_experiment_reads_every_usable_column_and_a_yaml_overrides_it():
    config = derive_experiment(model="deepfm", frame=_frame(), knowledge=["user_knowledge"], exclude={"customer_id"})
    features = config.features
    assert [f.name for f in features.sparse] == ["user_id", "item_id", "segment", "year"]
    assert [(f.name, f.share) for f in features.sequence] == [("hist_item_ids", "item_id"), ("tags", None)]
    assert [f.name for f in features.dense] == ["price", "user_knowledge"]
    assert config.knowledge is not None and config.knowledge.fields == ("user_knowledge",)
    assert config.train.batch_size == 64  # small frames still get several steps per epoch
    xgb = derive_experiment(model="xgboost", frame=_frame(), knowledge=["user_knowledge"])
    assert xgb.knowledge is None and "user_knowledge" in [f.name for f in xgb.features.dense]
    tuned = merged(config, {"train": {"epochs": 3}, "model_params": {"embedding_dim": 8}})
    assert tuned.train.epochs == 3 and tuned.train.batch_size == 64 and tuned.model_params == {"embedding_dim": 8}
