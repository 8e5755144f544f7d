"""Every stage's expectation suite, built by a function and versioned in code.

A suite is a plain ``gx.ExpectationSuite`` named ``<stage>.<table>``. Expectations whose ``meta`` says
``{"row_level": True}`` are checked per row by our own Spark pass (``validation.rows``): rows that break one go
to ``quarantine/<stage>/<table>`` with the expectation's name, and the batch still fails when more than
``1 - mostly`` of the rows broke it. Every other expectation is batch-level and run by great_expectations on
the accepted rows (``validation.gate``); a batch-level failure stops the job.

Bump a suite's ``VERSION`` when its expectations change; the version is stored in the suite's meta and in
every JSON result, so results from different rule sets are never compared unknowingly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import great_expectations as gx
from great_expectations.expectations.expectation import Expectation

E = gx.expectations
VERSION = {
    "raw": 2,
    "prepared": 3,
    "prompts": 1,
    "answers": 1,
    "embeddings": 1,
    "features": 1,
    "training": 1,
}
STAGES = tuple(VERSION)
ROW_LEVEL = "row_level"
MIN_ROWS = "min_rows"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """The numbers the suites test against; one place to tune them.

    Attributes:
        max_row_reject: Share of a table's rows that may break a row-level rule before the batch fails (the
            prepare job's own quarantine uses the same 0.5: above it the input is wrong as a whole).
        rating_min: Lowest valid rating.
        rating_max: Highest valid rating.
        label_rate_min: Lowest plausible share of positive labels (per table and per split).
        label_rate_max: Highest plausible share of positive labels.
        first_timestamp: Earliest plausible interaction time.
        future_slack: How far past "now" an event time may lie (clock skew).
        age_min: Youngest valid user age.
        age_max: Oldest valid user age.
        year_min: Earliest valid release year.
        year_max: Latest valid release year.
        max_over_budget: Share of prompts that may exceed the token budget.
        answer_min_chars: Shortest usable answer.
        answer_max_chars: Longest plausible answer (beyond it the model rambles or loops).
        max_empty_answers: Share of prompts whose answer may be empty (the issue's 5%).
        max_truncated_answers: Share of prompts whose answer may be cut off by max_tokens; the embedded 135M
            model truncates 18–43% of answers in the demo, a server with a broken max_tokens truncates all.
        min_rows_for_shares: Fewest rows on which a share rule (empty, truncated, coverage, over budget) is
            judged: on 3 answers one truncation is 33%, which says nothing about the model or the server. Below
            it the share is still measured and reported, marked "not judged".
        max_bad_answers: Share of usable answers that may break a row-level text rule (refusal, length).
        min_answer_coverage: Share of entities that must get a usable answer.
        norm_min: Smallest plausible embedding norm (sentence-transformers' MiniLM normalises to 1).
        norm_max: Largest plausible embedding norm.
        max_mean_cosine: Mean pairwise cosine above which the vectors have collapsed to one direction.
        max_null_rate: Share of a feature column that may be null.
        max_staleness: How much older than the newest interaction a feature table's newest row may be.
        min_knowledge_coverage: Share of training rows that must join a knowledge vector point-in-time.
        min_kerec_coverage: The same for LLM-KERec's knowledge, which only items with a judged-complementary
            entity have: a bar for "the graph reached the rankers at all", not for its quality.
        max_unparsed_judgements: Share of LLM-KERec's answered pairs whose verdict could not be read (neither
            JSON nor a yes/no word): above it the model or its structured output is broken, not the pair.
        max_kerec_targets: Most complementary entities a ``knowledge/kerec`` text lists
            (``complementary_knowledge``'s ``max_targets``).
    """

    max_row_reject: float = 0.5
    rating_min: float = 1.0
    rating_max: float = 5.0
    label_rate_min: float = 0.02
    label_rate_max: float = 0.98
    first_timestamp: datetime = datetime(1990, 1, 1, tzinfo=UTC)
    future_slack: timedelta = timedelta(days=1)
    age_min: int = 1
    age_max: int = 120
    year_min: int = 1800
    year_max: int = 2100
    max_over_budget: float = 0.05
    answer_min_chars: int = 12
    answer_max_chars: int = 8000
    max_empty_answers: float = 0.05
    max_truncated_answers: float = 0.5
    min_rows_for_shares: int = 20
    max_bad_answers: float = 0.2
    min_answer_coverage: float = 0.3
    norm_min: float = 0.5
    norm_max: float = 2.0
    max_mean_cosine: float = 0.9
    max_null_rate: float = 0.05
    max_staleness: timedelta = timedelta(days=365)
    min_knowledge_coverage: float = 0.3
    min_kerec_coverage: float = 0.05
    max_unparsed_judgements: float = 0.5
    max_kerec_targets: int = 12


DEFAULT = Thresholds()
# Answers that are not knowledge: refusals and assistant boilerplate (Java regexes, matched case-insensitively).
REFUSAL_PATTERNS = (
    r"(?i)^\s*(i'?m sorry|sorry,|i apologi[sz]e)",
    r"(?i)\bas an ai( language)? model\b",
    r"(?i)\bi (cannot|can't|am unable to|won't) (help|provide|answer|assist)",
    r"(?i)^\s*(sure[,!]? here is|certainly[,!])\s*[.:]?\s*$",
)


def _row(expectation: Expectation) -> Expectation:
    expectation.meta = {**(expectation.meta or {}), ROW_LEVEL: True}
    return expectation


def _share(expectation: Expectation, t: Thresholds) -> Expectation:
    """A batch rule on a share of rows: judged only on batches of at least ``t.min_rows_for_shares`` rows."""
    expectation.meta = {**(expectation.meta or {}), MIN_ROWS: t.min_rows_for_shares}
    return expectation


def min_rows(expectation: Expectation) -> int:
    """Fewest rows on which the expectation is judged (0: always)."""
    return int((expectation.meta or {}).get(MIN_ROWS) or 0)


def is_row_level(expectation: Expectation) -> bool:
    return bool((expectation.meta or {}).get(ROW_LEVEL))


def _named(expectation: Expectation, label: str) -> Expectation:
    """Tell apart two expectations of one type on one column: ``...(status: empty)``."""
    expectation.meta = {**(expectation.meta or {}), "label": label}
    return expectation


def expectation_name(expectation: Expectation) -> str:
    """A readable, stable name: ``expect_column_values_to_be_between(rating)``."""
    label = (expectation.meta or {}).get("label")
    config = expectation.configuration.kwargs
    columns = [config[k] for k in ("column", "column_A", "column_B") if config.get(k)]
    columns += list(config.get("column_list") or [])
    return f"{expectation.expectation_type}({', '.join(columns)}{': ' + label if label else ''})"


def _suite(stage: str, table: str, expectations: list[Expectation], **meta: Any) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(
        name=f"{stage}.{table}", meta={"stage": stage, "table": table, "version": VERSION[stage], **meta}
    )
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def raw_interactions(
    t: Thresholds = DEFAULT,
    *,
    now: datetime | None = None,
    rating_range: tuple[float, float] | Literal["default"] | None = "default",
) -> gx.ExpectationSuite:
    """Canonical interactions: schema, types, nulls, ranges, labels, timestamp sanity, volume.

    Args:
        t: Thresholds.
        now: Reference time for "in the future".
        rating_range: Valid ratings (default ``t.rating_min..t.rating_max``); None where the log has no ratings
            (a 0/1 click log), so ratings are neither required nor checked.
    """
    latest = (now or datetime.now(UTC)) + t.future_slack
    keep = 1 - t.max_row_reject
    columns = ["user_id", "item_id", "rating", "label", "event_timestamp"]
    low, high = (t.rating_min, t.rating_max) if rating_range == "default" else rating_range or (None, None)
    required = [c for c in columns if c != "rating" or low is not None]
    ratings = [] if low is None else [
        _row(E.ExpectColumnValuesToBeBetween(column="rating", min_value=low, max_value=high, mostly=keep))
    ]  # fmt: skip
    return _suite(
        "raw",
        "interactions",
        [
            E.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=False),
            E.ExpectColumnValuesToBeOfType(column="user_id", type_="LongType"),
            E.ExpectColumnValuesToBeOfType(column="item_id", type_="LongType"),
            E.ExpectColumnValuesToBeOfType(column="event_timestamp", type_="TimestampType"),
            *[_row(E.ExpectColumnValuesToNotBeNull(column=c, mostly=keep)) for c in required],
            _row(E.ExpectColumnValuesToBeBetween(column="user_id", min_value=1, mostly=keep)),
            _row(E.ExpectColumnValuesToBeBetween(column="item_id", min_value=1, mostly=keep)),
            *ratings,
            _row(E.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1], mostly=keep)),
            _row(
                E.ExpectColumnValuesToBeBetween(
                    column="event_timestamp", min_value=t.first_timestamp, max_value=latest, mostly=keep
                )
            ),
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnMeanToBeBetween(column="label", min_value=t.label_rate_min, max_value=t.label_rate_max),
        ],
    )  # fmt: skip


def raw_users(t: Thresholds = DEFAULT, *, demographics: bool = True) -> gx.ExpectationSuite:
    """Canonical users: unique non-null ids; with ``demographics`` (the MovieLens-shaped datasets) plausible
    ages and known genders too. A team's own users table has whatever attributes it has: only ids are checked."""
    keep = 1 - t.max_row_reject
    shaped = [
        _row(E.ExpectColumnValuesToBeBetween(column="age", min_value=t.age_min, max_value=t.age_max, mostly=keep)),
        _row(E.ExpectColumnValuesToBeInSet(column="gender", value_set=["M", "F"], mostly=keep)),
    ]
    return _suite(
        "raw",
        "users",
        [
            E.ExpectColumnValuesToBeOfType(column="user_id", type_="LongType"),
            _row(E.ExpectColumnValuesToNotBeNull(column="user_id", mostly=keep)),
            *(shaped if demographics else []),
            # Strict, and per row: the prepare job already dropped repeated ids, so a repeat here is a bug; its
            # rows go to quarantine. (great_expectations' own uniqueness metrics cost 7 Spark jobs per table.)
            _row(E.ExpectColumnValuesToBeUnique(column="user_id")),
            E.ExpectTableRowCountToBeBetween(min_value=1),
        ],
    )


def raw_items(t: Thresholds = DEFAULT, *, catalogue: bool = True) -> gx.ExpectationSuite:
    """Canonical items: unique non-null ids; with ``catalogue`` (the bundled datasets) titles and plausible
    years too."""
    keep = 1 - t.max_row_reject
    shaped = [
        _row(E.ExpectColumnValuesToNotBeNull(column="title", mostly=keep)),
        _row(E.ExpectColumnValuesToBeBetween(column="year", min_value=t.year_min, max_value=t.year_max, mostly=keep)),
    ]
    return _suite(
        "raw",
        "items",
        [
            E.ExpectColumnValuesToBeOfType(column="item_id", type_="LongType"),
            _row(E.ExpectColumnValuesToNotBeNull(column="item_id", mostly=keep)),
            *(shaped if catalogue else []),
            # Strict, and per row: the prepare job already dropped repeated ids, so a repeat here is a bug; its
            # rows go to quarantine. (great_expectations' own uniqueness metrics cost 7 Spark jobs per table.)
            _row(E.ExpectColumnValuesToBeUnique(column="item_id")),
            E.ExpectTableRowCountToBeBetween(min_value=1),
        ],
    )


def prepared_samples(t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """CTR samples joined with their user's knowledge cutoff: valid split and label, sample at/after cutoff.

    "After the cutoff" is ``event_timestamp >= knowledge_cutoff``: a sample can share its cutoff's second
    (see ``spark_jobs.splits``). Users without a knowledge history have no cutoff and are not checked.
    """
    keep = 1 - t.max_row_reject
    return _suite(
        "prepared",
        "samples",
        [
            _row(E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"], mostly=keep)),
            _row(E.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1], mostly=keep)),
            _row(
                E.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="event_timestamp",
                    column_B="knowledge_cutoff",
                    or_equal=True,
                    ignore_row_if="either_value_is_missing",
                    mostly=keep,
                )
            ),
            E.ExpectTableRowCountToBeBetween(min_value=1),
        ],
    )


def prepared_splits(t: Thresholds = DEFAULT, *, protocol: str = "kar") -> gx.ExpectationSuite:
    """One row per split (``validation.frames.split_stats``): plausible label rate in splits large enough to
    tell; under the KAR protocol no user in two splits, under the cold-items protocol no item in two splits.

    Per-row rules with no tolerance (every split must pass), so the gate's own pass checks them: the frame has
    three rows, and great_expectations' Spark jobs for two column checks cost more than the rest of the suite.
    """
    expectations = [
        _row(
            E.ExpectColumnValuesToBeBetween(
                column="checked_label_rate", min_value=t.label_rate_min, max_value=t.label_rate_max
            )
        ),
        # At most three splits. No minimum: prepared.samples already requires rows, and rows rejected above would
        # leave none here, failing this rule too for the same cause.
        E.ExpectTableRowCountToBeBetween(max_value=3),
    ]
    if protocol == "kar":
        expectations.append(_row(E.ExpectColumnValuesToBeBetween(column="users_in_several_splits", max_value=0)))
    if protocol == "cold-items":
        expectations.append(_row(E.ExpectColumnValuesToBeBetween(column="items_in_several_splits", max_value=0)))
    return _suite("prepared", "splits", expectations, protocol=protocol)


SuiteBuilder = Callable[..., gx.ExpectationSuite]
MAY_BE_EMPTY = ("pair",)
"""Prompt kinds that may have no rows: LLM-KERec's candidate pairs come from consecutive liked items, and a
small or sparse folder can have none (user, item and entity prompts exist whenever the tables have rows)."""


def _some_rows(kind: str) -> list[Expectation]:
    return [] if kind in MAY_BE_EMPTY else [E.ExpectTableRowCountToBeBetween(min_value=1)]


def prompts(kind: str, t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """Knowledge prompts: a non-empty message (and history, for users); few prompts over the token budget."""
    keep = 1 - t.max_row_reject
    expectations = [
        _row(E.ExpectColumnValuesToNotBeNull(column="prompt", mostly=keep)),
        _row(E.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1, mostly=keep)),
        _share(E.ExpectColumnValuesToBeInSet(column="over_budget", value_set=[False], mostly=1 - t.max_over_budget), t),
        *_some_rows(kind),
    ]
    if kind == "user":
        expectations.insert(2, _row(E.ExpectColumnValuesToBeBetween(column="n_history", min_value=1, mostly=keep)))
    return _suite("prompts", kind, expectations)


def answers(kind: str, t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """Usable (``ok``) LLM answers: text present, within length bounds, not a refusal or boilerplate."""
    keep = 1 - t.max_bad_answers
    return _suite(
        "answers",
        kind,
        [
            _row(E.ExpectColumnValuesToNotBeNull(column="text", mostly=keep)),
            _row(
                E.ExpectColumnValueLengthsToBeBetween(
                    column="text", min_value=t.answer_min_chars, max_value=t.answer_max_chars, mostly=keep
                )
            ),
            _row(
                E.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=list(REFUSAL_PATTERNS), mostly=keep)
            ),
        ],
    )


def answer_statuses(kind: str, t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """Every prompt with its answer's ``status``: few empty or truncated answers, most entities covered."""
    return _suite(
        "answers",
        f"{kind}_status",
        [
            _share(
                _named(
                    E.ExpectColumnValuesToNotBeInSet(
                        column="status", value_set=["empty"], mostly=1 - t.max_empty_answers
                    ),
                    "empty",
                ),
                t,
            ),
            _share(
                _named(
                    E.ExpectColumnValuesToNotBeInSet(
                        column="status", value_set=["truncated"], mostly=1 - t.max_truncated_answers
                    ),
                    "truncated",
                ),
                t,
            ),
            _share(
                _named(
                    E.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"], mostly=t.min_answer_coverage),
                    "coverage",
                ),
                t,
            ),
            *_some_rows(kind),
        ],
    )


def kerec_judgements(t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """LLM-KERec's judged pairs (``spark_jobs.knowledge.kerec.judge_pairs``): few answers without a verdict."""
    return _suite(
        "answers",
        "kerec_judgements",
        [
            _share(
                _named(
                    E.ExpectColumnValuesToNotBeInSet(
                        column="status", value_set=["unparsed"], mostly=1 - t.max_unparsed_judgements
                    ),
                    "unparsed",
                ),
                t,
            ),
        ],
    )


def kerec_graph(t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """The complementary graph (``kerec_graph/``): a verdict, P(yes) a probability, the pair's time known."""
    return _suite(
        "answers",
        "kerec_graph",
        [
            _row(E.ExpectColumnValuesToNotBeNull(column="source")),
            _row(E.ExpectColumnValuesToNotBeNull(column="target")),
            _row(E.ExpectColumnValuesToNotBeNull(column="complementary")),
            _row(E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0)),
            _row(E.ExpectColumnValuesToNotBeNull(column="as_of")),
        ],
    )


def kerec_knowledge(t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """``knowledge/kerec``: one text per item, listing 1..max targets, stamped with its newest pair's time.

    No length rule of ``answers``: a one-entity text ("jazz") is short and still knowledge."""
    return _suite(
        "answers",
        "kerec",
        [
            _row(E.ExpectColumnValuesToNotBeNull(column="text")),
            _row(E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1)),
            _row(E.ExpectColumnValuesToBeBetween(column="n_targets", min_value=1, max_value=t.max_kerec_targets)),
            _row(E.ExpectColumnValuesToNotBeNull(column="as_of")),
            _row(E.ExpectColumnValuesToBeUnique(column="item_id")),
        ],
    )


def embeddings(kind: str, t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """Vectors with ``n_values``, ``norm``, ``n_nonfinite`` (``validation.frames.vector_stats``): one dimension,
    every value finite, norms in range. Strict: the encode job already quarantines non-finite vectors before
    writing, so a bad row in the written table is a bug, not data."""
    return _suite(
        "embeddings",
        kind,
        [
            _row(E.ExpectColumnPairValuesToBeEqual(column_A="n_values", column_B="dim")),
            _row(E.ExpectColumnValuesToBeBetween(column="n_nonfinite", max_value=0)),
            _row(E.ExpectColumnValuesToBeBetween(column="norm", min_value=t.norm_min, max_value=t.norm_max)),
            # At most one: a kind without knowledge yet has an empty table, which Feast still registers.
            E.ExpectColumnUniqueValueCountToBeBetween(column="dim", min_value=0, max_value=1),
        ],
    )


def embedding_spread(kind: str, t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """One row (``validation.frames.vector_spread``): vectors not collapsed onto one direction."""
    return _suite(
        "embeddings",
        f"{kind}_spread",
        [E.ExpectColumnMaxToBeBetween(column="mean_pairwise_cosine", max_value=t.max_mean_cosine)],
    )


def features(table: str, *, newest_event: datetime, t: Thresholds = DEFAULT) -> gx.ExpectationSuite:
    """A knowledge feature source before materialize: fresh (its newest row is at most ``max_staleness`` older than
    the newest interaction), entity and event time present, few null vectors."""
    entity = "entity_id"
    # Spark hands timestamps to great_expectations as naive UTC datetimes (the session runs in UTC).
    if newest_event.tzinfo is not None:
        newest_event = newest_event.astimezone(UTC).replace(tzinfo=None)
    return _suite(
        "features",
        table.replace("/", "_"),
        [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            E.ExpectColumnValuesToNotBeNull(column=entity),
            E.ExpectColumnValuesToNotBeNull(column="as_of"),
            E.ExpectColumnValuesToNotBeNull(column="vector", mostly=1 - t.max_null_rate),
            E.ExpectColumnMaxToBeBetween(column="as_of", min_value=newest_event - t.max_staleness),
        ],
    )


def training(t: Thresholds = DEFAULT, *, knowledge: tuple[str, ...] = ("user", "item")) -> gx.ExpectationSuite:
    """The point-in-time training frame (pandas): labels valid, enough rows joined knowledge (``kerec`` against
    its own, lower bar: only items with a judged-complementary entity have it)."""
    expectations = [
        E.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        E.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    expectations += [
        E.ExpectColumnMeanToBeBetween(
            column=f"has_{k}_knowledge", min_value=t.min_kerec_coverage if k == "kerec" else t.min_knowledge_coverage
        )
        for k in knowledge
    ]
    return _suite("training", "frame", expectations)
