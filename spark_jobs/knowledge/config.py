"""Scenario configs: the prompt templates and sampling parameters of each knowledge kind, loaded from YAML.

A scenario (movies, books, products) is one YAML file under ``kar/configs/knowledge/`` or any path; see
``movies.yaml`` for the layout. Prompts live in config, not code, so a team can adapt wording to its
catalogue without touching the jobs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from kar.errors import DataError

Kind = Literal["user", "item", "entity", "pair"]
KINDS: tuple[Kind, ...] = ("user", "item", "entity", "pair")
SCENARIO_BY_DATASET = {
    "synthetic": "movies",
    "movielens-100k": "movies",
    "movielens-1m": "movies",
    "amazon": "products",
}


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
    """All prompts of one scenario."""

    name: str
    user: PromptSpec
    item: PromptSpec
    entity: PromptSpec
    pair: PromptSpec
    field_max_chars: int = 300

    def spec(self, kind: Kind) -> PromptSpec:
        return {"user": self.user, "item": self.item, "entity": self.entity, "pair": self.pair}[kind]


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
    specs = {kind: _spec(raw[kind], f"{where}: {kind}") for kind in KINDS}
    return Scenario(name=raw.get("scenario", where), field_max_chars=int(raw.get("field_max_chars", 300)), **specs)


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
