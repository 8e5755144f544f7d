"""Scenario configs: the prompt templates and sampling parameters of each knowledge kind, loaded from YAML.

A scenario (movies, books, products) is one YAML file under ``kar/configs/knowledge/`` or any path; see
``movies.yaml`` for the layout. Prompts live in config, not code, so a team can adapt wording to its
catalogue without touching the jobs.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from kar.contracts.errors import DataError

Kind = Literal["user", "item", "entity", "pair"]
KINDS: tuple[Kind, ...] = ("user", "item", "entity", "pair")
SCENARIO_BY_DATASET = {
    "synthetic": "movies",
    "movielens-100k": "movies",
    "movielens-1m": "movies",
    "amazon": "products",
    "table": "generic",
}
ROLES = ("user", "item")
# Template fields that are not table columns: filled by the job itself.
RESERVED = {
    "template": {"user": frozenset({"history", "attributes"}), "item": frozenset({"attributes"})},
    "history_line": frozenset({"rating", "label", "attributes"}),
}
ID_COLUMNS = frozenset({"user_id", "item_id"})


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """OpenAI-style sampling parameters sent with every request of a kind.

    Attributes:
        temperature: Sampling temperature; 0 is greedy.
        top_p: Nucleus sampling mass.
        max_tokens: Cap on generated tokens; an answer hitting it is flagged ``truncated``.
        seed: Per-request seed. Off by default: vLLM 0.32 on CPU crashes its engine on a seeded request with
            temperature > 0 (a CUDA-only generator rewind); greedy decoding is reproducible without one.
        logprobs: Top log-probabilities to return per token (KERec confidences); ``None`` asks for none.
        extra: Server-specific parameters passed through as-is (e.g. vLLM's ``repetition_penalty``).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    logprobs: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_request(self) -> dict[str, Any]:
        """The request-body fields these parameters become."""
        body: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed
        if self.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = self.logprobs
        return {**body, **self.extra}

    def canonical(self) -> str:
        """A stable JSON string of the parameters: part of every cache key."""
        return json.dumps(self.to_request(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class PromptSpec:
    """One kind's prompt: a fixed system instruction and a template for the variable user message.

    Attributes:
        system: Instruction shared by every prompt of the kind (first, so prefix caching reuses it).
        template: ``str.format`` template of the user message.
        sampling: Sampling parameters.
        max_prompt_tokens: Budget for system + user message; user histories are cut oldest-first to fit.
        history_line: Template of one history line (user prompts only).
        json_schema: JSON schema of a structured answer (entity and pair prompts), sent as
            ``response_format``.
    """

    system: str
    template: str
    sampling: Sampling = field(default_factory=Sampling)
    max_prompt_tokens: int = 1024
    history_line: str | None = None
    json_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """All prompts of one scenario.

    Attributes:
        name: The scenario's name.
        user: User prompts (KAR preference reasoning); ``history_line`` renders each history item.
        item: Item prompts (KAR factual knowledge).
        entity: LLM-KERec entity extraction, per item.
        pair: LLM-KERec complementary judgement, per entity pair.
        field_max_chars: Cap on every inserted value.
        fields: Allow-list per role (``user``, ``item``): the only attributes prompts may show. None: all the
            dataset allows (its ``prompt_fields``). Ids are never allowed.
        values: Words for coded values per field, e.g. ``{"gender": {"M": "male"}}``.
    """

    name: str
    user: PromptSpec
    item: PromptSpec
    entity: PromptSpec
    pair: PromptSpec
    field_max_chars: int = 300
    fields: Mapping[str, tuple[str, ...]] | None = None
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def spec(self, kind: Kind) -> PromptSpec:
        return {"user": self.user, "item": self.item, "entity": self.entity, "pair": self.pair}[kind]

    def used_fields(self) -> dict[str, frozenset[str]]:
        """Per role, the table columns the templates insert (reserved names such as ``history`` left out)."""
        user = template_fields(self.user.template) - RESERVED["template"]["user"]
        item: set[str] = set()
        for spec in (self.item, self.entity):
            item |= template_fields(spec.template) - RESERVED["template"]["item"]
        item |= template_fields(self.user.history_line or "") - RESERVED["history_line"]
        return {"user": frozenset(user), "item": frozenset(item)}


@dataclass(frozen=True, kw_only=True)
class PromptFields:
    """What prompts of one run may show, per role: the scenario's allow-list within the dataset's."""

    user: tuple[str, ...]
    item: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"user": list(self.user), "item": list(self.item)}


def template_fields(template: str) -> frozenset[str]:
    """Names of the fields a ``str.format`` template references (only those count as inserted)."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def resolve_prompt_fields(
    scenario: Scenario, *, allowed: Mapping[str, Sequence[str]], columns: Mapping[str, Sequence[str]]
) -> PromptFields:
    """Check the scenario against the prepared tables and return the fields its prompts may show.

    Args:
        scenario: The loaded scenario.
        allowed: Per role, what the dataset lets prompts use (``summary.json``'s ``prompt_fields``).
        columns: Per role, the columns of the prepared users and items tables.

    Raises:
        DataError: A template field no table provides, or one outside the allow-lists, named with the role.
    """
    used = scenario.used_fields()
    effective: dict[str, tuple[str, ...]] = {}
    for role in ROLES:
        dataset = tuple(allowed.get(role, ()))
        listed = tuple(scenario.fields.get(role, ())) if scenario.fields is not None else dataset
        wider = [name for name in listed if name not in dataset]
        if wider:
            raise DataError(
                f"scenario {scenario.name}: fields.{role} lists {wider[0]!r}, which the dataset does not let prompts "
                f"use (its prompt_fields: {', '.join(dataset) or 'none'}; set them in the table spec)"
            )
        table = "users" if role == "user" else "items"
        for name in sorted(used[role]):
            if name not in columns.get(role, ()):
                raise DataError(
                    f"scenario {scenario.name}: a {role} template uses {{{name}}}, which no table provides "
                    f"({table} has: {', '.join(columns.get(role, ())) or 'no attributes'})"
                )
            if name not in listed:
                raise DataError(
                    f"scenario {scenario.name}: a {role} template uses {{{name}}}, which is not allow-listed "
                    f"(allowed: {', '.join(listed) or 'none'})"
                )
        effective[role] = tuple(name for name in listed if name in columns.get(role, ()))
    return PromptFields(user=effective["user"], item=effective["item"])


def bundled_scenarios() -> list[str]:
    """Names of the scenario files shipped with the package."""
    folder = resources.files("kar") / "configs" / "knowledge"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def scenario_for_dataset(dataset: str) -> str:
    """The default scenario of a prepared dataset (movies for MovieLens and synthetic)."""
    return SCENARIO_BY_DATASET.get(dataset, "products")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario by bundled name (``movies``) or from a YAML path.

    Raises:
        DataError: Unknown name, unreadable file, or a missing/unknown key (named with the file).
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise DataError(f"{path}: scenario file not found")
        text, where = path.read_text(), str(path)
    else:
        if str(name_or_path) not in bundled_scenarios():
            known = ", ".join(bundled_scenarios())
            raise DataError(f"unknown scenario {name_or_path!r}; bundled: {known}, or give a YAML path")
        resource = resources.files("kar") / "configs" / "knowledge" / f"{name_or_path}.yaml"
        text, where = resource.read_text(), f"scenario {name_or_path}"
    try:
        raw = yaml.safe_load(text)
        return _scenario(raw, where)
    except (yaml.YAMLError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{where}: invalid scenario config ({exc})") from None


def _scenario(raw: Mapping[str, Any], where: str) -> Scenario:
    missing = [k for k in KINDS if k not in raw]
    if missing:
        raise DataError(f"{where}: missing section(s) {', '.join(missing)}")
    known = {"scenario", "field_max_chars", "fields", "values", *KINDS}
    unknown = set(raw) - known
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}")
    specs = {kind: _spec(raw[kind], f"{where}: {kind}") for kind in KINDS}
    return Scenario(
        name=raw.get("scenario", where),
        field_max_chars=int(raw.get("field_max_chars", 300)),
        fields=_allow_list(raw.get("fields"), where),
        values={str(k): {str(a): str(b) for a, b in v.items()} for k, v in (raw.get("values") or {}).items()},
        **specs,
    )


def _allow_list(raw: Any, where: str) -> dict[str, tuple[str, ...]] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - set(ROLES):
        raise DataError(f"{where}: fields must map user and/or item to lists of columns, got {raw!r}")
    lists = {role: tuple(str(name) for name in raw.get(role) or ()) for role in ROLES}
    for role, names in lists.items():
        ids = [name for name in names if name in ID_COLUMNS]
        if ids:
            raise DataError(f"{where}: fields.{role} lists {ids[0]!r}; ids never reach a prompt")
    return lists


def _spec(raw: Mapping[str, Any], where: str) -> PromptSpec:
    known = {"system", "template", "sampling", "max_prompt_tokens", "history_line", "json_schema"}
    unknown = set(raw) - known
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}")
    sampling = Sampling(**raw.get("sampling", {}))
    return PromptSpec(
        system=raw["system"].strip(),
        template=raw["template"],
        sampling=sampling,
        max_prompt_tokens=int(raw.get("max_prompt_tokens", 1024)),
        history_line=raw.get("history_line"),
        json_schema=raw.get("json_schema"),
    )
