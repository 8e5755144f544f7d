"""Turning untrusted catalogue text into prompt text: cleaning, fencing, injection flags, token budgets.

Titles, descriptions and reviews come from users and sellers; some contain text aimed at the model
("ignore previous instructions…"). Every value is cleaned, length-capped and placed inside the
``<data>…</data>`` fence the system prompt declares as data; values that look like injections are still
used (they are catalogue facts) but flagged, so the answer can be audited.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

FENCE_TAG = re.compile(r"</?\s*data\s*>", re.IGNORECASE)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
INJECTION = re.compile(
    r"ignore\s+(?:all\s+|any\s+|the\s+)?(?:previous|prior|above|earlier)\s+(?:instructions|prompts?|rules)"
    r"|disregard\s+(?:all\s+|any\s+|the\s+)?(?:previous|prior|above|earlier)"
    r"|\bsystem\s+prompt\b|\byou\s+are\s+now\b|\bnew\s+instructions?\b|\bact\s+as\b",
    re.IGNORECASE,
)
UNKNOWN = "unknown"
ELLIPSIS = "…"
# Without the model's tokenizer, assume 2 characters per token: prose averages ~4.5 with BPE tokenizers, but
# catalogue text full of digits and punctuation does not (ML-100K prompts measure 2.0-2.4 with SmolLM2's
# tokenizer, which splits "1995" into four), and undercounting would send prompts over the server's limit.
CHARS_PER_TOKEN = 2.0

TokenCounter = Callable[[str], int]


def clean(value: object, *, max_chars: int) -> str:
    """Normalize one catalogue value into a single safe line of at most ``max_chars`` characters.

    NFKC-normalizes (folds look-alike characters), drops control characters, collapses whitespace and
    removes anything that would open or close the ``<data>`` fence. ``None``/NaN/empty become ``unknown``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    text = unicodedata.normalize("NFKC", str(value))
    text = FENCE_TAG.sub(" ", CONTROL.sub(" ", text))
    text = " ".join(text.split())
    if not text:
        return UNKNOWN
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + ELLIPSIS
    return text


def looks_like_injection(text: str) -> bool:
    """True when the text contains a phrase typical of prompt injection."""
    return bool(INJECTION.search(text))


def heuristic_counter(text: str) -> int:
    """Conservative token estimate for when the model's tokenizer is not available."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@lru_cache(maxsize=4)
def _tokenizer_counter(path: str) -> TokenCounter:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def token_counter(tokenizer: str | Path | None) -> TokenCounter:
    """Count tokens with the served model's ``tokenizer.json`` (a file or a model folder), else estimate.

    Cached per path, so Spark Python workers load the tokenizer once.
    """
    if tokenizer is None:
        return heuristic_counter
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        return heuristic_counter
    return _tokenizer_counter(str(path))


# Chat templates wrap each message in role markers; budget a few tokens per message for them.
CHAT_OVERHEAD_TOKENS = 16


def fit_history(
    *, lines: Sequence[str], render: Callable[[Sequence[str]], str], budget: int, count: TokenCounter
) -> tuple[str, int]:
    """Render the prompt with as many of the newest history lines as fit the token budget.

    Lines are oldest first; when the whole history does not fit, the oldest lines are cut first (the
    newest behaviour says most about current taste). Binary search keeps this at O(log n) renders.

    Args:
        lines: History lines, oldest first.
        render: Builds the user message from a list of lines.
        budget: Tokens left for the user message (the kind's budget minus the system prompt's tokens).
        count: Token counter.

    Returns:
        The rendered message and how many lines were cut. If even an empty history exceeds the budget,
        the empty-history message is returned with every line cut; the caller flags it.
    """
    fits = lambda k: count(render(lines[len(lines) - k :])) + CHAT_OVERHEAD_TOKENS <= budget  # noqa: E731
    if fits(len(lines)):
        return render(lines), 0
    low, high = 0, len(lines)  # fits(low) is assumed, fits(high) is known false
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return render(lines[len(lines) - low :]), len(lines) - low
