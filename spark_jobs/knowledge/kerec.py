"""LLM-KERec: item entities, candidate complementary entity pairs, pair prompts and the complementary graph.

LLM-KERec (Ant Group, CIKM'24) builds a complementary-entity graph in four steps, one function each:

1. :func:`item_entities` — every item's entities: its structured metadata (genres, brand) plus the phrases the
   LLM extracted from its text.
2. :func:`pair_candidates` — entity pairs worth asking the LLM about, mined from consecutive interactions in
   the users' knowledge histories (what users liked *next*), ranked by a popularity-corrected co-occurrence.
3. :func:`pair_prompts` — one prompt per candidate pair ("would someone who enjoyed *source* want *target*
   next?").
4. :func:`complementary_graph` — the judged pairs, with a confidence from the answer's token log-probabilities.
5. :func:`complementary_knowledge` — the graph as a third knowledge type: per item, one text listing its
   entities' judged-complementary entities, stamped with the newest pair it uses (encoded like any answer).

Small models answer with junk often enough that every parser here is tolerant: the pure-Python helpers
(:func:`parse_entities`, :func:`parse_judgement`, :func:`confidence_from_logprobs`) never raise on bad text,
and Spark applies them through pandas UDFs so answer tables are never collected on the driver.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from kar.contracts.errors import DataError
from spark_jobs.knowledge.config import Scenario
from spark_jobs.knowledge.text import CHAT_OVERHEAD_TOKENS, clean, looks_like_injection, token_counter

OK = "ok"
UNPARSED = "unparsed"
METADATA = "metadata"
LLM = "llm"
MAX_ENTITY_CHARS = 40
MAX_REASON_CHARS = 200
# Catalogue placeholders (ML-100K has a genre literally named "unknown") say nothing about an item.
PLACEHOLDERS = frozenset({"unknown", "none", "n/a", "na", "null", "other", "misc"})
# Bullets, quotes and separators a model leaves around a phrase; inner punctuation ("sci-fi") is kept.
_EDGE_CHARS = " \t\n\"'`*•·-–—.,;:"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENTITIES_KEY = re.compile(r"[\"']?entities[\"']?\s*:\s*\[", re.IGNORECASE)
_STRING_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ANSWER_KEY = re.compile(r"[\"']?complementary[\"']?\s*:\s*[\"']?\s*(yes|no|true|false)\b", re.IGNORECASE)
_REASON_KEY = re.compile(r"[\"']?reason[\"']?\s*:\s*\"((?:[^\"\\]|\\.)*)", re.IGNORECASE)
_BARE_ANSWER = re.compile(r"^\W*(yes|no)\b\W*(.*)$", re.IGNORECASE | re.DOTALL)
_TOKEN_EDGE = " \t\n\"'`:,.{}[]"

ENTITY_SCHEMA = StructType(
    [
        StructField("item_id", LongType(), False),
        StructField("entity", StringType(), False),
        StructField("source", StringType(), False),
        StructField("rank", IntegerType(), False),
    ]
)
_PROMPT_PARTS = StructType(
    [
        StructField("prompt", StringType()),
        StructField("prompt_tokens", IntegerType()),
        StructField("n_flagged", IntegerType()),
    ]
)
_JUDGEMENT = StructType(
    [
        StructField("parsed", BooleanType()),
        StructField("complementary", BooleanType()),
        StructField("confidence", DoubleType()),
        StructField("reason", StringType()),
    ]
)


# --------------------------------------------------------------------------------------------------------------
# Pure parsing helpers (no Spark)
# --------------------------------------------------------------------------------------------------------------


def first_json(text: str | None) -> Any | None:
    """The first JSON object embedded in ``text``, else the first JSON array, else None.

    Models wrap JSON in prose or Markdown fences; ``raw_decode`` from each opening brace finds the first
    complete value without caring what follows it.
    """
    if not text:
        return None
    decoder = json.JSONDecoder()
    for opener in ("{", "["):
        start = text.find(opener)
        while start != -1:
            try:
                return decoder.raw_decode(text, start)[0]
            except json.JSONDecodeError:
                start = text.find(opener, start + 1)
    return None


def normalize_entity(value: object) -> str | None:
    """One entity as stored: NFKC, lowercase, single spaces, no edge bullets/quotes, at most 40 characters.

    Returns:
        The normalized phrase, or None for non-strings, empty values and placeholders such as ``unknown``.
    """
    if not isinstance(value, str):
        return None
    text = _CONTROL.sub(" ", unicodedata.normalize("NFKC", value)).lower()
    text = " ".join(text.split()).strip(_EDGE_CHARS)
    if len(text) > MAX_ENTITY_CHARS:
        # Cut at a word boundary: half a word would become an entity of its own.
        head = text[: MAX_ENTITY_CHARS + 1]
        text = head.rsplit(" ", 1)[0] if " " in head else text[:MAX_ENTITY_CHARS]
        text = text.strip(_EDGE_CHARS)
    if not text or text in PLACEHOLDERS:
        return None
    return text


def _unique(values: Iterable[object]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        entity = normalize_entity(value)
        if entity is not None:
            seen.setdefault(entity, None)
    return list(seen)


def _entity_values(parsed: Any) -> list[object]:
    if isinstance(parsed, list):
        return parsed
    if not isinstance(parsed, dict):
        return []
    keyed = [v for k, v in parsed.items() if isinstance(k, str) and k.strip().lower() in ("entities", "entity")]
    # A model that renamed the key still answered with a list; take the first one it gave.
    value = keyed[0] if keyed else next((v for v in parsed.values() if isinstance(v, list)), None)
    if isinstance(value, str):
        return value.split(",")
    return value if isinstance(value, list) else []


def _salvage_entities(text: str) -> list[object]:
    # A truncated answer ('{"entities": ["heist", "new yo') still names complete phrases before the cut.
    match = _ENTITIES_KEY.search(text)
    if match is None:
        return []
    values: list[object] = []
    for literal in _STRING_LITERAL.findall(text[match.end() :].split("]")[0]):
        try:
            values.append(json.loads(f'"{literal}"'))
        except json.JSONDecodeError:
            continue
    return values


def parse_entities(text: str | None) -> list[str]:
    """Entities from one extraction answer, tolerant of the junk small models produce.

    Accepts ``{"entities": [...]}`` anywhere in the text (prose and code fences around it are ignored), a
    bare JSON list, a comma-separated string value, and a truncated answer (its complete strings are kept).
    Non-string elements are dropped. Free text without JSON gives nothing: guessing entities from prose
    would turn "Sure! Here are the entities" into one.

    Returns:
        Normalized (see :func:`normalize_entity`), de-duplicated entities in answer order.
    """
    parsed = first_json(text)
    values = _entity_values(parsed) if parsed is not None else []
    if not values and text:
        values = _salvage_entities(text)
    return _unique(values)


def merge_entities(*, metadata: Iterable[object], answers: Iterable[str], max_entities: int) -> list[tuple[str, str]]:
    """One item's entities with their source, metadata first.

    Args:
        metadata: Structured values (genres, then brand); all are kept, being catalogue facts.
        answers: Texts of the item's usable extraction answers, in a deterministic order.
        max_entities: Cap on the LLM entities added beyond the metadata ones (the prompt asks for up to 8).

    Returns:
        ``(entity, source)`` pairs, ``source`` being ``metadata`` or ``llm``; each entity once.
    """
    merged = [(entity, METADATA) for entity in _unique(metadata)]
    known = {entity for entity, _ in merged}
    llm = [e for e in _unique(e for text in answers for e in parse_entities(text)) if e not in known]
    return merged + [(entity, LLM) for entity in llm[:max_entities]]


def parse_judgement(text: str | None) -> tuple[bool, str] | None:
    """The yes/no verdict and reason of one pair answer, or None when no verdict can be read.

    Accepts ``{"complementary": "yes"|"no"|true|false, "reason": ...}`` anywhere in the text, the same with
    a truncated reason, and a bare answer starting with "yes"/"no".
    """
    if not text:
        return None
    parsed = first_json(text)
    if isinstance(parsed, dict):
        fields = {str(k).strip().lower(): v for k, v in parsed.items()}
        verdict = _verdict(fields.get("complementary"))
        if verdict is not None:
            return verdict, _reason(fields.get("reason"))
    match = _ANSWER_KEY.search(text)
    if match:
        reason = _REASON_KEY.search(text, match.end())
        return _verdict(match.group(1)) is True, _reason(reason.group(1) if reason else "")
    bare = _BARE_ANSWER.match(text)
    if bare:
        return bare.group(1).lower() == "yes", _reason(bare.group(2))
    return None


def _verdict(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip(_TOKEN_EDGE).lower()
        return {"yes": True, "true": True, "no": False, "false": False}.get(word)
    return None


def _reason(value: object) -> str:
    text = " ".join(str(value or "").split())
    return text[:MAX_REASON_CHARS]


def _answer_word(token: object) -> str | None:
    # "yes", " Yes", '"y' all start the word yes; the model may split it, so a prefix counts.
    if not isinstance(token, str):
        return None
    word = token.strip(_TOKEN_EDGE).lower()
    if word and "yes".startswith(word):
        return "yes"
    if word and "no".startswith(word):
        return "no"
    return None


def _answer_position(content: Sequence[Mapping[str, Any]]) -> int | None:
    tokens = [str(entry.get("token", "")) for entry in content]
    # Start after the "complementary" key so an "n" inside an earlier token sequence is not taken as "no".
    joined = "".join(tokens).lower()
    key = joined.find("complementary")
    key_end = key + len("complementary") if key >= 0 else 0
    end = 0
    for index, token in enumerate(tokens):
        end += len(token)
        if end > key_end and _answer_word(token) is not None:
            return index
    return None


def confidence_from_logprobs(content: Sequence[Mapping[str, Any]] | None) -> float | None:
    """P(yes) of a pair answer from its token log-probabilities (OpenAI ``choices[0].logprobs.content``).

    The answer token is the first generated token, after the ``complementary`` key when there is one, that
    is "yes" or "no" or begins one of them. Probabilities of its alternatives (``top_logprobs`` plus the
    token itself) are summed per word and renormalized: ``P(yes) = p_yes / (p_yes + p_no)``. When only one
    word appears among the alternatives, its own probability is used (``p_yes``, or ``1 - p_no``).

    Returns:
        A probability in [0, 1], or None when there is no answer token or its log-probabilities are missing.
    """
    if not content:
        return None
    position = _answer_position(content)
    if position is None:
        return None
    chosen = content[position]
    alternatives = {str(a.get("token")): a.get("logprob") for a in chosen.get("top_logprobs") or [] if a}
    alternatives.setdefault(str(chosen.get("token")), chosen.get("logprob"))
    mass = {"yes": 0.0, "no": 0.0}
    seen = set()
    for token, logprob in alternatives.items():
        word = _answer_word(token)
        if word is None or not isinstance(logprob, int | float) or math.isnan(logprob):
            continue
        mass[word] += math.exp(min(float(logprob), 0.0))
        seen.add(word)
    if seen == {"yes", "no"}:
        total = mass["yes"] + mass["no"]
        return mass["yes"] / total if total > 0 else float(_answer_word(chosen.get("token")) == "yes")
    if seen == {"yes"}:
        return min(mass["yes"], 1.0)
    if seen == {"no"}:
        return max(1.0 - mass["no"], 0.0)
    return None


def _logprob_content(raw: str | None) -> list[dict[str, Any]] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None
    # Accept the whole ``logprobs`` object as well as its ``content`` list.
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, list):
        return None
    return [entry for entry in value if isinstance(entry, dict)]


def judge(text: str | None, logprobs: str | None) -> tuple[bool, float, str] | None:
    """Verdict, confidence and reason of one pair answer; None when the answer cannot be parsed.

    Confidence is P(yes) from ``logprobs`` (a JSON string) when they give one, and the verdict then follows
    it (``confidence >= 0.5``); otherwise confidence is 1.0 for yes and 0.0 for no.
    """
    parsed = parse_judgement(text)
    if parsed is None:
        return None
    answer, reason = parsed
    confidence = confidence_from_logprobs(_logprob_content(logprobs))
    if confidence is None:
        return answer, float(answer), reason
    return confidence >= 0.5, confidence, reason


# --------------------------------------------------------------------------------------------------------------
# Spark steps
# --------------------------------------------------------------------------------------------------------------


def _require(df: DataFrame, columns: Iterable[str], *, table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{table}: missing column(s) {', '.join(missing)}; has {', '.join(df.columns)}")


def _column_or_null(df: DataFrame, name: str, dtype: str) -> Column:
    return F.col(name) if name in df.columns else F.lit(None).cast(dtype)


def _as_list(value: object) -> list[object]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return list(value)  # type: ignore[call-overload]


def _entity_batches(batches: Iterator[pd.DataFrame], *, max_entities: int) -> Iterator[pd.DataFrame]:
    for batch in batches:
        rows = []
        for item_id, genres, brand, texts in zip(
            batch["item_id"], batch["genres"], batch["brand"], batch["texts"], strict=True
        ):
            metadata = [*_as_list(genres), *_as_list(brand)]
            merged = merge_entities(metadata=metadata, answers=_as_list(texts), max_entities=max_entities)
            rows.extend((int(item_id), entity, source, rank) for rank, (entity, source) in enumerate(merged))
        frame = pd.DataFrame(rows, columns=ENTITY_SCHEMA.fieldNames())
        yield frame.astype({"item_id": "int64", "rank": "int32"})


def item_entities(entity_answers: DataFrame, items: DataFrame, *, max_entities: int = 8) -> DataFrame:
    """Every catalogue item's entities: its genres and brand, then the entities the LLM extracted.

    Only answers with ``status == "ok"`` contribute; an item whose answer failed, was truncated or is
    missing still gets its metadata entities. Answers for items not in ``items`` are ignored. When an item
    has several ok answers (a rerun), all are used, in text order, so the result does not depend on
    partitioning.

    Args:
        entity_answers: ``item_id, status, text`` (text should be ``{"entities": [...]}``).
        items: The prepared ``items`` table (``item_id`` and, when present, ``genres`` and ``brand``).
        max_entities: Cap on LLM entities per item beyond the metadata ones.

    Returns:
        ``item_id long, entity string, source string ("metadata" | "llm"), rank int`` — ``rank`` orders an
        item's entities, metadata first; entities are normalized (:func:`normalize_entity`) and unique per item.
    """
    _require(entity_answers, ("item_id", "status", "text"), table="entity answers")
    _require(items, ("item_id",), table="items")
    if max_entities < 0:
        raise ValueError(f"max_entities must be >= 0, got {max_entities}")
    texts = (
        entity_answers.where(F.col("status") == OK)
        .where(F.col("text").isNotNull())
        .groupBy(F.col("item_id").cast("long").alias("item_id"))
        .agg(F.sort_array(F.collect_list("text")).alias("texts"))
    )
    catalogue = items.select(
        F.col("item_id").cast("long").alias("item_id"),
        _column_or_null(items, "genres", "array<string>").alias("genres"),
        _column_or_null(items, "brand", "string").alias("brand"),
    )
    joined = catalogue.join(texts, "item_id", "left")
    return joined.mapInPandas(lambda batches: _entity_batches(batches, max_entities=max_entities), schema=ENTITY_SCHEMA)


def _liked(history: DataFrame, *, min_next_rating: float) -> Column:
    """Whether the user liked an interaction: its rating reaches ``min_next_rating``; unrated, its label is 1.

    A click log has a null rating on every row (``--dataset table`` with a label), so the rating alone would
    drop every transition; the click is the evidence there. A row with neither counts as liked.
    """
    rated = _column_or_null(history, "rating", "double") >= F.lit(min_next_rating)
    clicked = _column_or_null(history, "label", "int") == F.lit(1)
    return F.coalesce(rated, clicked, F.lit(True))


def _transitions(history: DataFrame, *, min_next_rating: float | None) -> DataFrame:
    # Consecutive interactions of a user, earlier item -> the item that came next. Ordering by position then
    # item_id keeps the result deterministic even if positions were ever tied.
    order = Window.partitionBy("user_id").orderBy("position", "item_id")
    liked = F.lit(True) if min_next_rating is None else _liked(history, min_next_rating=min_next_rating)
    steps = history.select(
        "user_id",
        F.col("item_id").alias("prev_item"),
        F.lead("item_id").over(order).alias("next_item"),
        F.lead("event_timestamp").over(order).alias("event_timestamp"),
        F.lead(liked).over(order).alias("next_liked"),
    ).where(F.col("next_item").isNotNull())
    # The user liked what came next: a transition into a disliked item is no evidence of wanting it.
    return steps.where(F.col("next_liked"))


def _popularity(history: DataFrame, entities: DataFrame) -> DataFrame:
    users_with = history.select("user_id", "item_id").join(entities, "item_id").select("user_id", "entity")
    return users_with.distinct().groupBy("entity").agg(F.count("*").alias("pop"))


def _supported(pairs: DataFrame, *, min_support: int) -> DataFrame:
    """``source, target, support, as_of`` of the pairs at least ``min_support`` distinct users showed; ``as_of``
    is when the ``min_support``-th of them first did."""
    firsts = pairs.groupBy("source", "target", "user_id").agg(F.min("event_timestamp").alias("first_seen"))
    order = Window.partitionBy("source", "target").orderBy("first_seen", "user_id")
    ranked = firsts.withColumn("_n", F.row_number().over(order))
    reached = F.when(F.col("_n") == F.lit(min_support), F.col("first_seen"))
    return (
        ranked.groupBy("source", "target")
        .agg(F.count("*").alias("support"), F.max(reached).alias("as_of"))
        .where(F.col("support") >= min_support)
    )


def pair_candidates(
    history: DataFrame,
    entities: DataFrame,
    *,
    max_pairs: int = 500,
    min_support: int = 3,
    max_per_source: int = 20,
    min_next_rating: float | None = 4.0,
) -> DataFrame:
    """Candidate complementary entity pairs mined from consecutive interactions in knowledge histories.

    Each pair of consecutive history interactions (position p → p+1) whose later item the user liked links
    every entity of the earlier item (source) to every different entity of the later one (target): liked is
    rated at least ``min_next_rating``, or, for an interaction without a rating (a click log), labelled 1.
    ``support`` is the number of distinct users showing the transition.

    Score: ``support / sqrt(pop(source) * pop(target))``, ``pop`` being the number of users with the entity
    anywhere in their history. This is the cosine (Ochiai) coefficient: raw support would rank the most
    popular genres first (everyone watches drama, then comedy), while lift (``support * N / (pop_s *
    pop_t)``) rewards pairs of rare entities seen by a handful of users. The geometric mean of the two
    conditional rates sits between them, and lies in [0, 1] because a supporting user has both entities.

    Args:
        history: ``knowledge_history`` (``user_id, item_id, event_timestamp, position``; optional ``rating``
            and ``label``).
            Only these interactions may feed knowledge, so pairs never use evaluation behaviour.
        entities: ``item_id, entity`` (from :func:`item_entities`).
        max_pairs: Pairs kept overall (the LLM judges each one).
        min_support: Minimum number of distinct supporting users.
        max_per_source: Pairs kept per source entity, so a few hub entities cannot take the whole budget.
        min_next_rating: Minimum rating of the later item (unrated: a positive label); None keeps every
            transition.

    Returns:
        ``source, target, support long, score double, as_of timestamp``, best first (score, then support
        descending; then source, target ascending). ``as_of`` is the moment the pair first had ``min_support``
        supporting users: a point-in-time join never sees a pair before it met the bar it was mined with. (Its
        support and score count the whole history, which holds no evaluation behaviour. Stamping the *latest*
        supporting event instead put every popular pair at the end of the log: on ML-100K cold-items 0.25% of
        training samples joined any LLM-KERec text.)
    """
    _require(history, ("user_id", "item_id", "event_timestamp", "position"), table="knowledge history")
    _require(entities, ("item_id", "entity"), table="entities")
    for name, value in (("max_pairs", max_pairs), ("min_support", min_support), ("max_per_source", max_per_source)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    item_entity = entities.select(F.col("item_id").cast("long").alias("item_id"), "entity").distinct()
    steps = _transitions(history, min_next_rating=min_next_rating)
    sources = item_entity.withColumnRenamed("item_id", "prev_item").withColumnRenamed("entity", "source")
    targets = item_entity.withColumnRenamed("item_id", "next_item").withColumnRenamed("entity", "target")
    pairs = steps.join(sources, "prev_item").join(targets, "next_item").where(F.col("source") != F.col("target"))
    supported = _supported(pairs, min_support=min_support)
    pop = _popularity(history, item_entity)
    scored = (
        supported.join(pop.withColumnRenamed("entity", "source").withColumnRenamed("pop", "pop_source"), "source")
        .join(pop.withColumnRenamed("entity", "target").withColumnRenamed("pop", "pop_target"), "target")
        .withColumn("score", F.col("support") / F.sqrt(F.col("pop_source") * F.col("pop_target")))
    )
    best = [F.desc("score"), F.desc("support")]
    per_source = Window.partitionBy("source").orderBy(*best, F.asc("target"))
    kept = scored.withColumn("_rank", F.row_number().over(per_source)).where(F.col("_rank") <= max_per_source)
    return (
        kept.orderBy(*best, F.asc("source"), F.asc("target"))
        .limit(max_pairs)
        .select(
            "source",
            "target",
            F.col("support").cast("long").alias("support"),
            F.col("score").cast("double").alias("score"),
            F.col("as_of").cast("timestamp").alias("as_of"),
        )
    )


def _render_pairs(*, template: str, system: str, max_chars: int, tokenizer: str | None) -> Any:
    """A pandas UDF rendering ``(source, target)`` into prompt text, token count and injection flags."""

    @F.pandas_udf(_PROMPT_PARTS)  # type: ignore[call-overload]
    def render(sources: pd.Series, targets: pd.Series) -> pd.DataFrame:
        count = token_counter(tokenizer)
        system_tokens = count(system)
        rows = []
        for source, target in zip(sources, targets, strict=True):
            values = {"source": clean(source, max_chars=max_chars), "target": clean(target, max_chars=max_chars)}
            prompt = template.format(**values)
            flagged = sum(looks_like_injection(v) for v in values.values())
            rows.append((prompt, system_tokens + count(prompt) + CHAT_OVERHEAD_TOKENS, flagged))
        return pd.DataFrame(rows, columns=_PROMPT_PARTS.fieldNames()).astype(
            {"prompt_tokens": "int32", "n_flagged": "int32"}
        )

    return render


def pair_prompts(candidates: DataFrame, *, scenario: Scenario, tokenizer: str | Path | None = None) -> DataFrame:
    """One judgement prompt per candidate pair.

    Entities are cleaned and length-capped like any catalogue value and sit inside the template's
    ``<data>`` fence; one that looks like an injection is still asked about but counted in ``n_flagged``.

    Args:
        candidates: ``source, target, support, as_of`` (from :func:`pair_candidates`).
        scenario: Supplies the ``pair`` prompt spec and the per-value character cap.
        tokenizer: The served model's ``tokenizer.json`` or model folder; None estimates token counts.

    Returns:
        ``kind ("pair"), source, target, support, as_of, system, prompt, json_schema, prompt_tokens int,
        n_flagged int, over_budget boolean``; ``over_budget`` means ``prompt_tokens > max_prompt_tokens``.
    """
    _require(candidates, ("source", "target", "support", "as_of"), table="pair candidates")
    spec = scenario.pair
    schema = None if spec.json_schema is None else json.dumps(spec.json_schema, sort_keys=True)
    render = _render_pairs(
        template=spec.template,
        system=spec.system,
        max_chars=scenario.field_max_chars,
        tokenizer=None if tokenizer is None else str(tokenizer),
    )
    parts = candidates.withColumn("_parts", render(F.col("source"), F.col("target")))
    return parts.select(
        F.lit("pair").alias("kind"),
        "source",
        "target",
        "support",
        "as_of",
        F.lit(spec.system).alias("system"),
        F.col("_parts.prompt").alias("prompt"),
        F.lit(schema).cast("string").alias("json_schema"),
        F.col("_parts.prompt_tokens").alias("prompt_tokens"),
        F.col("_parts.n_flagged").alias("n_flagged"),
        (F.col("_parts.prompt_tokens") > F.lit(spec.max_prompt_tokens)).alias("over_budget"),
    )


@F.pandas_udf(_JUDGEMENT)  # type: ignore[call-overload]
def _judge_udf(texts: pd.Series, logprobs: pd.Series) -> pd.DataFrame:
    rows = []
    for text, raw in zip(texts, logprobs, strict=True):
        verdict = judge(text if isinstance(text, str) else None, raw if isinstance(raw, str) else None)
        rows.append((False, None, None, None) if verdict is None else (True, *verdict))
    return pd.DataFrame(rows, columns=_JUDGEMENT.fieldNames())


def judge_pairs(pair_answers: DataFrame) -> DataFrame:
    """Every pair answer with its parsed verdict; the job counts rows per ``status`` from this.

    Args:
        pair_answers: ``source, target, support, as_of, status, text`` and optional ``logprobs``.

    Returns:
        ``source, target, complementary, confidence, reason, support, as_of, status``. ``status`` is the
        LLM status, except that an ok answer without a readable verdict becomes ``unparsed``; verdict
        columns are null unless the status is ``ok``.
    """
    _require(pair_answers, ("source", "target", "support", "as_of", "status", "text"), table="pair answers")
    logprobs = _column_or_null(pair_answers, "logprobs", "string")
    status = F.coalesce(F.col("status"), F.lit("error"))
    judged = pair_answers.withColumn(
        "_judged", F.when(status == OK, _judge_udf(F.col("text"), logprobs.cast("string")))
    )
    final_status = F.when(status != OK, status).when(F.col("_judged.parsed"), F.lit(OK)).otherwise(F.lit(UNPARSED))
    usable = final_status == OK
    return judged.select(
        "source",
        "target",
        F.when(usable, F.col("_judged.complementary")).alias("complementary"),
        F.when(usable, F.col("_judged.confidence")).alias("confidence"),
        F.when(usable, F.col("_judged.reason")).alias("reason"),
        "support",
        "as_of",
        final_status.alias("status"),
    )


def complementary_graph(pair_answers: DataFrame) -> DataFrame:
    """The complementary-entity graph: judged pairs whose answer was ok and parseable.

    Args:
        pair_answers: As for :func:`judge_pairs`.

    Returns:
        ``source, target, complementary boolean, confidence double in [0, 1] (P(yes)), reason, support,
        as_of, status ("ok")``. Non-ok and unparsed answers are excluded; count them with :func:`judge_pairs`.
    """
    return judge_pairs(pair_answers).where(F.col("status") == OK)


def complementary_knowledge(entities: DataFrame, graph: DataFrame, *, max_targets: int = 12) -> DataFrame:
    """Per item, the text of the entities its own entities were judged complementary to (LLM-KERec as text).

    A target reached from several of the item's entities keeps its best pair; targets that are the item's own
    entities say nothing new and are left out. Targets are listed highest P(yes) first (then support, then
    name, so reruns write the same text) and capped at ``max_targets``, so the text stays within the encoder's
    window. ``as_of`` is the newest ``as_of`` of the pairs listed: a pair is only known once the interactions
    that mined it happened, so a point-in-time join sees the text from then on and never before. Items with
    no complementary target get no row (``has_kerec_knowledge = False`` downstream, like an unanswered item).

    Args:
        entities: ``item_id, entity`` (from :func:`item_entities`).
        graph: ``source, target, complementary, confidence, support, as_of`` (from :func:`complementary_graph`).
        max_targets: Targets listed per item, at most.

    Returns:
        The shape of a knowledge answer table: ``item_id, as_of timestamp, status ("ok"), text (the targets,
        comma-separated), prompt (the item's own entities: what the text was derived from), n_targets int``,
        ordered by ``item_id``.

    Raises:
        DataError: A missing column, or ``max_targets`` below 1.
    """
    if max_targets < 1:
        raise DataError(f"complementary knowledge: max_targets must be at least 1, got {max_targets}")
    _require(entities, ("item_id", "entity"), table="kerec entities")
    _require(graph, ("source", "target", "complementary", "confidence", "support", "as_of"), table="kerec graph")
    own = entities.select("item_id", "entity").distinct()
    yes = graph.where(F.col("complementary")).select(
        F.col("source").alias("entity"), "target", "confidence", "support", F.col("as_of").cast("timestamp")
    )
    reached = own.join(yes, "entity").join(
        own.select("item_id", F.col("entity").alias("target")), ["item_id", "target"], "left_anti"
    )
    best_first = [F.col("confidence").desc(), F.col("support").desc(), F.col("target").asc(), F.col("as_of").asc()]
    best_pair = reached.withColumn(
        "n", F.row_number().over(Window.partitionBy("item_id", "target").orderBy(*best_first))
    )
    ranked = best_pair.where(F.col("n") == 1).withColumn(
        "rank", F.row_number().over(Window.partitionBy("item_id").orderBy(*best_first))
    )
    kept = ranked.where(F.col("rank") <= max_targets)
    listed = kept.groupBy("item_id").agg(
        F.array_sort(F.collect_list(F.struct("rank", "target"))).alias("targets"),
        F.max("as_of").alias("as_of"),
    )
    names = own.groupBy("item_id").agg(F.array_sort(F.collect_set("entity")).alias("entities"))
    # Bare lists, no framing sentence: words every text shares only pull all vectors towards one direction
    # (on 200 generated genre lists, MiniLM's mean pairwise cosine was 0.68 with a prefix, 0.52 without), and
    # the encode gate refuses collapsed vectors.
    return (
        listed.join(names, "item_id")
        .select(
            "item_id",
            "as_of",
            F.lit(OK).alias("status"),
            F.concat_ws(", ", F.col("targets.target")).alias("text"),
            F.concat_ws(", ", "entities").alias("prompt"),
            F.size("targets").cast("int").alias("n_targets"),
        )
        .orderBy("item_id")
    )


__all__ = [
    "ENTITY_SCHEMA",
    "complementary_graph",
    "complementary_knowledge",
    "confidence_from_logprobs",
    "first_json",
    "item_entities",
    "judge",
    "judge_pairs",
    "merge_entities",
    "normalize_entity",
    "pair_candidates",
    "pair_prompts",
    "parse_entities",
    "parse_judgement",
]
