"""``kar feast init``: one file of knowledge views written into a team's own Feast repo.

The repo is read without importing it (``ast``): its top-level ``Entity`` and ``FeatureView`` bindings tell which
variables to import. The written ``kar_knowledge.py`` builds the views with the factories of ``kar.feast``, and
Feast's own ``feast apply`` registers them.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kar.contracts.errors import DataError
from kar.contracts.paths import Location, local_path
from kar.feast.views import KEY_TYPES, Dimensions, summary_key_types, vector_dims

GENERATED_MARK = "# Written by `kar feast init`"
KNOWLEDGE_FILE = "kar_knowledge.py"
# The services kar_knowledge.py defines: what kar reads in a team's repo unless told another service.
TEAM_TRAINING_SERVICE = "kar_training"
TEAM_SERVING_SERVICE = "kar_serving"


@dataclass(frozen=True, kw_only=True)
class RepoEntity:
    """A top-level ``Entity`` of a team's repo, found without importing it.

    Attributes:
        variable: The name it is bound to.
        module: The module (dotted, relative to the repo root) that binds it.
        name: The entity's name.
        join_key: Its join key.
        key_type: ``string``/``int64`` when its ``value_type`` says so, else None.
    """

    variable: str
    module: str
    name: str
    join_key: str
    key_type: str | None


@dataclass(frozen=True, kw_only=True)
class RepoView:
    """A top-level ``FeatureView`` of a team's repo and the entity variables it is keyed by."""

    variable: str
    module: str
    entities: tuple[str, ...]


def feast_repo(repo: Location) -> Path:
    """A team's Feast repo folder, made absolute.

    Raises:
        DataError: It holds no ``feature_store.yaml``.
    """
    root = local_path(repo, what="repo")
    if not (root / "feature_store.yaml").is_file():
        raise DataError(f"{root}: no feature_store.yaml; --repo must be a Feast repo")
    return root


def scan_repo(repo: Location) -> tuple[list[RepoEntity], list[RepoView]]:
    """The entities and feature views a Feast repo binds to top-level names, read from its source (``ast``):
    nothing of the team's is imported or run. ``kar_knowledge.py`` itself is skipped."""
    root = local_path(repo, what="repo")
    entities: list[RepoEntity] = []
    views: list[RepoView] = []
    for path in sorted(root.rglob("*.py")):
        if path.name in (KNOWLEDGE_FILE, "__init__.py") or any(p.startswith(".") for p in path.parts):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError as exc:
            raise DataError(
                f"{path}:{exc.lineno}: not valid Python ({exc.msg}); Feast could not apply it either"
            ) from None
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            call = node.value
            if not isinstance(call, ast.Call):
                continue
            kind = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            keywords = {k.arg: k.value for k in call.keywords if k.arg}
            variable = node.targets[0].id
            if kind == "Entity":
                entities.append(_repo_entity(variable, module, keywords))
            elif kind in ("FeatureView", "BatchFeatureView") and isinstance(keywords.get("entities"), ast.List):
                names = tuple(e.id for e in keywords["entities"].elts if isinstance(e, ast.Name))
                views.append(RepoView(variable=variable, module=module, entities=names))
    return entities, views


def _repo_entity(variable: str, module: str, keywords: Mapping[str, ast.expr]) -> RepoEntity:
    name = _literal(keywords.get("name")) or variable
    keys = _literal(keywords.get("join_keys"))
    join_key = keys[0] if isinstance(keys, list) and keys else name
    value_type = keywords.get("value_type")
    type_name = value_type.attr if isinstance(value_type, ast.Attribute) else None
    key_type = KEY_TYPES.get(type_name or "")
    return RepoEntity(variable=variable, module=module, name=str(name), join_key=str(join_key), key_type=key_type)


def _literal(node: ast.expr | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def write_knowledge_file(
    *,
    repo: Location,
    user_entity: str,
    item_entity: str,
    data: Location,
    dims: Dimensions | None = None,
    with_views: Iterable[str] | None = None,
    offline_store: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``kar_knowledge.py`` into a team's Feast repo (Feast's ``DocEmbedder.generate_repo_file`` precedent).

    It imports the team's entities (and the views the services add knowledge to), and binds the knowledge
    views and two services, ``kar_training`` (the team's views + raw knowledge) and ``kar_serving`` (+ adapted
    knowledge), to top-level names so Feast's own ``feast apply`` registers them. Nothing else in the repo is
    touched: its registry, offline and online stores stay the team's.

    Args:
        repo: The team's Feast repo (holds ``feature_store.yaml``).
        user_entity: The name of the entity rankings are for.
        item_entity: The name of the entity that is ranked.
        data: The prepared folder whose knowledge the views read.
        dims: Vector sizes (default: read from the folder's vector tables, else 384 and 32).
        with_views: The team's views the services include (default: every view keyed by one of the two).
        offline_store: ``file`` or ``spark`` (default: the repo's ``feature_store.yaml``).
        force: Overwrite a ``kar_knowledge.py`` that ``kar feast init`` wrote before.

    Returns:
        The written file.

    Raises:
        DataError: No repo, an unknown entity or view, a join key type that differs from the data's, or a
            ``kar_knowledge.py`` that kar did not write.
    """
    root = feast_repo(repo)
    data_dir = local_path(data, what="data")
    key_types = summary_key_types(data_dir)
    entities, views = scan_repo(root)
    by_name = {e.name: e for e in entities}
    chosen = {}
    for role, wanted in (("user", user_entity), ("item", item_entity)):
        if wanted not in by_name:
            found = ", ".join(sorted(by_name)) or "none"
            raise DataError(f"{root}: no entity named {wanted!r} bound to a top-level name (entities: {found})")
        entity = by_name[wanted]
        if entity.key_type is not None and entity.key_type != key_types[role]:
            raise DataError(
                f"entity {wanted!r} joins on {entity.join_key} as {entity.key_type.upper()}, but {data_dir} keys "
                f"its {role}s by {key_types[role]} ids; the join key types must match"
            )
        chosen[role] = entity
    target = root / KNOWLEDGE_FILE
    if target.exists() and not (force and target.read_text().startswith(GENERATED_MARK)):
        why = "pass --force to rewrite it" if target.read_text().startswith(GENERATED_MARK) else "kar did not write it"
        raise DataError(f"{target} exists; {why}")
    included = _included_views(views, chosen, with_views)
    store_type = offline_store or _offline_store_type(root)
    target.write_text(
        _knowledge_source(chosen, included, data_dir, dims or vector_dims(data_dir), key_types, store_type)
    )
    return target


def _included_views(
    views: Sequence[RepoView], chosen: Mapping[str, RepoEntity], wanted: Iterable[str] | None
) -> list[RepoView]:
    variables = {e.variable for e in chosen.values()}
    if wanted is None:
        return [v for v in views if v.entities and set(v.entities) <= variables]
    by_variable = {v.variable: v for v in views}
    missing = [name for name in wanted if name not in by_variable]
    if missing:
        raise DataError(f"no feature view bound to {missing[0]!r} in the repo (views: {', '.join(by_variable)})")
    return [by_variable[name] for name in wanted]


def _offline_store_type(root: Path) -> str:
    import yaml

    config = yaml.safe_load((root / "feature_store.yaml").read_text()) or {}
    store = config.get("offline_store") or {}
    kind = store.get("type", "file") if isinstance(store, dict) else str(store)
    return "spark" if kind == "spark" else "file"


def _knowledge_source(
    chosen: Mapping[str, RepoEntity],
    views: Sequence[RepoView],
    data_dir: Path,
    dims: Dimensions,
    key_types: Mapping[str, str],
    offline_store: str,
) -> str:
    imports: dict[str, list[str]] = {}
    for entity in chosen.values():
        imports.setdefault(entity.module, []).append(entity.variable)
    for view in views:
        imports.setdefault(view.module, []).append(view.variable)
    import_lines = "\n".join(f"from {m} import {', '.join(sorted(set(v)))}" for m, v in sorted(imports.items()))
    team_views = "".join(f"{v.variable}, " for v in views)
    return f'''{GENERATED_MARK} for {data_dir}; rerun it with --force after re-preparing.
"""LLM knowledge (kar-feast) for this repo's {chosen["user"].name!r} and {chosen["item"].name!r} entities.

Feast's own `feast apply` registers the names bound below. The views read the vector tables of {data_dir}
(`kar encode` fills vectors/, `kar adapt export` fills adapted/); kar_training adds raw knowledge to this
repo's views (what a ranker trains on), kar_serving adds the pre-stored adapted knowledge (what serving reads).
"""

from kar.feast import Dimensions, knowledge_service, knowledge_views

{import_lines}

DATA = {json.dumps(str(data_dir))}

knowledge = knowledge_views(
    user={chosen["user"].variable},
    item={chosen["item"].variable},
    data=DATA,
    dims=Dimensions(knowledge={dims.knowledge}, adapted={dims.adapted}),
    key_types={json.dumps(dict(key_types))},
    offline_store={json.dumps(offline_store)},
)
user_knowledge = knowledge.user
item_knowledge = knowledge.item
user_knowledge_adapted = knowledge.user_adapted
item_knowledge_adapted = knowledge.item_adapted
# None (nothing registered) unless DATA holds LLM-KERec vectors (`kar encode --kind kerec`); apply again after.
kerec_knowledge = knowledge.kerec
kerec_knowledge_adapted = knowledge.kerec_adapted

kar_training = knowledge_service(name="{TEAM_TRAINING_SERVICE}", features=[{team_views}*knowledge.raw])
kar_serving = knowledge_service(name="{TEAM_SERVING_SERVICE}", features=[{team_views}*knowledge.adapted])
'''
