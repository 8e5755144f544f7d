"""Progress reports trainers send to an optional callback (the CLI draws them as a rich progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class ProgressEvent:
    """Where a training run is.

    Attributes:
        model: Model name of the experiment.
        epoch: Current epoch (boosting round for XGBoost), from 1.
        epochs: Maximum number of epochs (rounds).
        step: Batches done in this epoch (equal to ``steps`` at the end of an epoch).
        steps: Batches per epoch (1 for XGBoost rounds).
        loss: Mean training loss of the epoch so far, if known.
        val: Validation metrics, set once the epoch has been evaluated.
    """

    model: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    val: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]
