"""Split a text longer than the encoder's window into pieces that fit, so nothing is silently truncated.

sentence-transformers cuts every input at ``max_seq_length`` tokens (special tokens included) and drops the
rest without a word. Here a text is measured in the model's own tokens; a longer one is cut into
consecutive windows of at most ``max_seq_length - special tokens`` content tokens, preferably between
words, and each window is returned as the original text's substring (so it keeps its spelling, case and
punctuation). Every window is measured again before it is returned, so a tokenizer that splits a
substring differently from the whole text cannot push a window over the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def content_budget(*, max_seq_length: int, tokenizer: Any) -> int:
    """Content tokens one window can hold: the model's limit minus the special tokens it adds ([CLS], [SEP])."""
    budget = max_seq_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for text")
    return budget


def token_counts(texts: Sequence[str], *, tokenizer: Any) -> list[int]:
    """Content tokens (no special tokens) of each text, in one batched tokenizer call."""
    if not texts:
        return []
    # verbose=False: no "sequence longer than the maximum" warning; measuring long texts is the point.
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def split_text(text: str, *, tokenizer: Any, budget: int) -> list[str]:
    """The text as windows of at most ``budget`` content tokens (one window when it already fits).

    Needs a fast (Rust) tokenizer for character offsets, as every current sentence-transformers model has.

    Args:
        text: Text to split.
        tokenizer: The model's tokenizer (``SentenceTransformer.tokenizer``).
        budget: Content tokens per window (see ``content_budget``).

    Returns:
        Substrings of ``text`` in order; together they hold every token of the text.
    """
    encoded = tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
    offsets: list[tuple[int, int]] = encoded["offset_mapping"]
    if len(offsets) <= budget:
        return [text]
    words = encoded.word_ids()
    windows: list[str] = []
    start = 0
    while start < len(offsets):
        end = min(start + budget, len(offsets))
        while True:
            cut = _word_boundary(words, start, end) if end < len(offsets) else end
            window = text[offsets[start][0] : offsets[cut - 1][1]]
            if cut - start == 1 or token_counts([window], tokenizer=tokenizer)[0] <= budget:
                break
            end = cut - 1  # the substring tokenizes longer than its share of the whole: take one token less
        windows.append(window)
        start = cut
    return windows


def _word_boundary(words: Sequence[int | None], start: int, end: int) -> int:
    """The last token index in ``(start, end]`` that begins a new word, or ``end`` if one word fills the span."""
    for cut in range(end, start, -1):
        if words[cut] is None or words[cut] != words[cut - 1]:
            return cut
    return end
