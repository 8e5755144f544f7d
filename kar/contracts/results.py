"""Typed results of the jobs and of ``kar.pipeline``'s ``run_*`` functions.

Each job still writes its summary as JSON (``summary.json``, ``metrics.json``): ``to_dict`` gives exactly that
form and ``from_dict`` reads it back. ``from_dict`` is strict, so a key a job adds without adding the field
here fails in the job's own tests, not in a user's script that reads the attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self


class JobResult:
    """Base of the typed results: the JSON form is the dataclass's fields, one key each."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (nested results as dicts), as written to the job's summary file."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Self:
        """The result of a JSON form.

        Raises:
            ValueError: ``raw`` has a key that is not a field, or lacks a required one.
        """
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
        return cls(**raw)


def _plain(value: Any) -> Any:
    if isinstance(value, JobResult):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class EncodeSummary(JobResult):
    """One kind's ``kar encode`` run (``vectors/summary.json``).

    Attributes:
        input: Answer rows read.
        encoded: Texts encoded in this run.
        skipped_cached: Texts whose vector (same model, text hash) was already in the table.
        empty: Rows with no text (quarantined).
        not_ok: Rows whose answer status was not ``ok`` (quarantined).
        rejected: Quarantined rows by reason.
        duplicate: Rows repeating an (entity, as_of) already counted.
        non_finite: Texts whose vector had NaN or inf (quarantined).
        chunked: Texts longer than the encoder's window, encoded as the mean of their windows.
        windows: Windows of the chunked texts.
        rows: Vectors of this model in the table after the run.
        model: The encoder's name.
        dim: The vectors' size.
        batch_size: Texts per forward pass.
        encoded_on: ``driver``, ``spark``, or None when nothing was encoded.
        tasks: Spark tasks that encoded (1 on the driver, 0 when nothing was encoded).
        threads_per_task: torch threads per task.
        model_loads: Times the model was loaded.
        model_load_seconds: The slowest load (tasks load in parallel).
        replaced_models: Other models whose vectors this run replaced.
        removed_parts: Part files of those models removed.
        pruned_rows: Vectors of entities no longer in the knowledge table, removed.
        encode_seconds: The encoding stage alone.
        task_encode_seconds: Model time per task (unequal values: a core idled).
        seconds: The whole run of this kind.
        sentences_per_s: Encoded texts per second of the whole run (None when nothing was encoded).
        encode_sentences_per_s: The same over the encoding stage alone.
        stage_seconds: Wall seconds per named stage.
        validation: The embeddings gate's reports by suite.
    """

    input: int
    encoded: int
    skipped_cached: int
    empty: int
    not_ok: int
    rejected: dict[str, int]
    duplicate: int
    non_finite: int
    chunked: int
    windows: int
    rows: int
    model: str
    dim: int | None
    batch_size: int
    encoded_on: str | None
    tasks: int
    threads_per_task: int
    model_loads: int
    model_load_seconds: float
    replaced_models: list[str]
    removed_parts: int
    pruned_rows: int
    encode_seconds: float
    task_encode_seconds: list[float]
    seconds: float
    sentences_per_s: float | None
    encode_sentences_per_s: float | None
    stage_seconds: dict[str, float]
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AnswerStats(JobResult):
    """What one kind's prompts cost and returned (``knowledge/summary.json``; LLM-KERec's entity and pair steps).

    Attributes:
        prompts: Prompts built (after ``limit``).
        cached: Of those, answered from the cache.
        calls: LLM calls this run made.
        tokens_in: Prompt tokens this run sent.
        tokens_out: Answer tokens this run received.
        llm_seconds: Wall seconds spent asking the LLM.
        prompts_per_s: Calls per LLM second (None without calls).
        status: Answer rows by status (``ok``, ``error``, ``over_budget``, ``missing``, …).
        answer_tokens_in: Prompt tokens of every answer kept (this run's and the cache's).
        answer_tokens_out: Answer tokens of every answer kept.
        prompts_flagged_injection: Answered prompts whose data looked like an instruction to the model.
        usd_estimate_this_run: This run's tokens at the job's prices.
        usd_estimate_all_answers: Every kept answer's tokens at the job's prices.
        item_facts: The hallucination check of item answers (year and genre claims), when it ran.
    """

    prompts: int
    cached: int
    calls: int
    tokens_in: int
    tokens_out: int
    llm_seconds: float
    prompts_per_s: float | None
    status: dict[str, int]
    answer_tokens_in: int
    answer_tokens_out: int
    prompts_flagged_injection: int
    usd_estimate_this_run: float
    usd_estimate_all_answers: float
    item_facts: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class KnowledgeRun(JobResult):
    """Where and how a ``kar knowledge`` kind ran: shared by the user/item and LLM-KERec summaries.

    Attributes:
        kind: ``user``, ``item`` or ``kerec``.
        scenario: The prompt scenario's name.
        prompt_fields: The attributes the prompts showed, per role.
        model: The model name sent to the endpoint.
        endpoint: The endpoint's base URL.
        endpoint_host: Its host (what the cost report groups by).
        limit: Prompts per kind the run was limited to (None: all).
        wall_seconds: The kind's whole run.
        stage_seconds: Wall seconds per named stage.
        validation: The prompt and answer gates' reports by suite.
    """

    kind: str
    scenario: str
    prompt_fields: dict[str, list[str]]
    model: str
    endpoint: str
    endpoint_host: str
    limit: int | None
    wall_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class KnowledgeSummary(AnswerStats, KnowledgeRun):
    """One user or item knowledge run: its answers' statistics and where it ran."""

    def answer_steps(self) -> dict[str, AnswerStats]:
        """The run's LLM steps by name: one, named for the kind."""
        return {self.kind: self}


@dataclass(frozen=True, kw_only=True)
class KerecSummary(KnowledgeRun):
    """One LLM-KERec run: entity extraction, then judged pairs, then the complementary graph.

    Attributes:
        entity: The entity step's answers.
        pair: The pair-judging step's answers.
        entities: Items with an extracted entity.
        graph_edges: Judged pairs.
        complementary_edges: Pairs judged complementary.
        knowledge_items: Items with a complementary-knowledge text (``knowledge/kerec``; 0 in summaries written
            before it existed).
        max_pairs: Candidate pairs the run could send for judgement (``kerec_max_pairs``), which ``kar refresh``
            reruns with; None in summaries written before it was recorded.
    """

    entity: AnswerStats
    pair: AnswerStats
    entities: int
    graph_edges: int
    complementary_edges: int
    knowledge_items: int = 0
    max_pairs: int | None = None

    def answer_steps(self) -> dict[str, AnswerStats]:
        """The run's LLM steps by name: ``kerec_entity`` (one prompt per item), then ``kerec_pair`` (one per
        candidate pair)."""
        return {f"{self.kind}_entity": self.entity, f"{self.kind}_pair": self.pair}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Self:
        steps = {name: AnswerStats.from_dict(raw[name]) for name in ("entity", "pair")}
        return super().from_dict({**raw, **steps})


@dataclass(frozen=True, kw_only=True)
class TrainMetrics(JobResult):
    """One ``kar train`` run (``metrics.json``): torch rankers fill the epoch fields, XGBoost the round fields.

    Attributes:
        model: The ranker's name.
        dataset: The experiment's dataset.
        val: Validation metrics (``auc``, ``logloss``; per task for multi-task rankers).
        test: Test metrics, same keys.
        n_train: Training samples.
        n_val: Validation samples.
        n_test: Test samples.
        seed: The experiment's seed.
        seconds: The whole run.
        samples_per_sec: Training samples per second of training steps.
        best_epoch: Epoch kept (early stopping on validation AUC).
        epochs_run: Epochs trained.
        n_parameters: The model's parameters.
        best_round: Boosting round kept.
        rounds_run: Boosting rounds trained.
        n_features: Input columns of the booster.
    """

    model: str
    dataset: str
    val: dict[str, Any]
    test: dict[str, Any]
    n_train: int
    n_val: int
    n_test: int
    seed: int
    seconds: float
    samples_per_sec: float
    best_epoch: int | None = None
    epochs_run: int | None = None
    n_parameters: int | None = None
    best_round: int | None = None
    rounds_run: int | None = None
    n_features: int | None = None


@dataclass(frozen=True, kw_only=True)
class PrepareSummary(JobResult):
    """One ``kar prepare`` run (``summary.json`` of the prepared folder).

    Fields a folder prepared by an older version may lack have defaults.

    Attributes:
        dataset: The dataset loader (``synthetic``, ``movielens-100k``, ``table``, …).
        path: The input read (None for generated data).
        spec: The ``table`` dataset's spec file.
        interactions: Interaction batch files read instead of the dataset's own log, in order (empty: its log).
        split: The split protocol and its parameters.
        boundaries: Split boundaries (times, or held-out users/items) as the protocol defines them.
        notes: The loader's notes (what was derived, the id range).
        rows: Rows written per table, and interacting users and items.
        quarantine: Rejected rows per table, with reasons.
        profiles: Profile columns and their Spark types, per role.
        prompt_fields: Columns a prompt may show, per role (the spec's allow-list).
        id_types: The id type per role (``int64`` or ``string``).
        id_maps: Roles whose ids were mapped to stable int64s.
        splits: Samples and label rate per split.
        validation: The gates' reports by suite.
        time_range: First and last interaction (ISO-8601).
        seconds: The whole run.
        stage_seconds: Wall seconds per named stage.
    """

    dataset: str
    path: str | None = None
    spec: str | None = None
    interactions: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    boundaries: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    quarantine: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)
    prompt_fields: dict[str, list[str]] = field(default_factory=dict)
    id_types: dict[str, str] = field(default_factory=lambda: {"user": "int64", "item": "int64"})
    id_maps: list[str] = field(default_factory=list)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)
    time_range: list[str] = field(default_factory=list)
    seconds: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DemoResult(JobResult):
    """``kar demo``'s run end to end (``metrics.json`` of its output folder).

    Attributes:
        dataset: Always ``synthetic`` (the embedded defaults).
        samples: Samples and label rate per split.
        knowledge: The knowledge runs by kind (empty without knowledge).
        encode: The encode runs by kind (empty without knowledge).
        knowledge_coverage: Share of training samples with knowledge, per view.
        validation: Every gate report of the run, in order.
        knowledge_sample: One user's knowledge answer as stored, for a look.
        models: The trained rankers' metrics by name.
        adapted_export: Rows and size of each exported adapted-knowledge table.
        online_lookup: What ``OnlineLookup`` read for one user and three items.
        online_ranking: Those items ranked by the DeepFM from the online features.
        service: The same request answered by ``kar serve`` over HTTP.
        seconds: The whole run.
    """

    dataset: str
    samples: dict[str, dict[str, Any]]
    knowledge: dict[str, KnowledgeSummary | KerecSummary]
    encode: dict[str, EncodeSummary]
    knowledge_coverage: dict[str, float]
    validation: list[dict[str, Any]]
    knowledge_sample: dict[str, Any] | None
    models: dict[str, TrainMetrics]
    adapted_export: dict[str, dict[str, int]]
    online_lookup: dict[str, Any]
    online_ranking: dict[str, Any]
    service: dict[str, Any]
    seconds: float


@dataclass(frozen=True, kw_only=True)
class RefreshReport(JobResult):
    """One ``kar refresh`` (``DATA/refresh.json``).

    Attributes:
        batch: The batch this refresh appended.
        batches: Every interaction file the folder now reads, in order.
        interactions: Interactions in the folder after the refresh.
        users_refreshed: Users who got at least one new knowledge cutoff.
        new_cutoffs: New user cutoffs (one prompt each).
        new_items: Items the folder did not have before.
        new_kerec_rows: LLM-KERec vectors (``vectors/kerec``, one per item) that are new or changed: a text or
            ``as_of`` the folder did not have (0 without LLM-KERec vectors).
        prompts: Prompts built per LLM step (every cutoff, item and candidate pair, old and new): ``user``,
            ``item``, and for LLM-KERec ``kerec_entity`` and ``kerec_pair`` (see ``KerecSummary.answer_steps``).
        prompts_sent: Prompts sent to the LLM per step (the rest came from the answer cache).
        prompts_cached: Prompts answered from the cache per step.
        tokens_in: Prompt tokens sent.
        tokens_out: Answer tokens received.
        usd_estimate: Those tokens at the knowledge job's prices.
        encoded: Texts encoded per kind (only new answers).
        exported: Adapted vectors written per knowledge field (only new vectors, unless a table had to be
            rewritten whole: see ``adaptors.export``; empty without a run).
        materialized_from: Start of the materialized window (None: not materialized).
        stage_seconds: Wall seconds per stage.
        wall_seconds: The whole refresh.
    """

    batch: str
    batches: list[str]
    interactions: int
    users_refreshed: int
    new_cutoffs: int
    new_items: int
    # A default: reports written before LLM-KERec was refreshed still read.
    new_kerec_rows: int = 0
    prompts: dict[str, int]
    prompts_sent: dict[str, int]
    prompts_cached: dict[str, int]
    tokens_in: int
    tokens_out: int
    usd_estimate: float
    encoded: dict[str, int]
    exported: dict[str, int]
    materialized_from: str | None
    stage_seconds: dict[str, float]
    wall_seconds: float
