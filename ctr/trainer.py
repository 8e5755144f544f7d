"""Training loop for the torch rankers: Adam, early stopping on validation AUC, one final test evaluation."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from adaptors import save_adaptor
from ctr.config import ExperimentConfig, TrainConfig, load_config
from ctr.features import Encoder, dense_matrix
from ctr.frame import LABEL, split_frame, task_labels
from ctr.metrics import binary_metrics
from ctr.models import KnowledgeAugmented, adapted_name, build_model, model_tasks
from ctr.modules.embedding import Batch
from ctr.progress import ProgressCallback, ProgressEvent
from ctr.runs import CONFIG_FILE, ENCODER_FILE, TORCH_MODEL_FILE, prepare_run_dir, write_metrics
from kar.contracts.errors import DataError
from kar.contracts.results import TrainMetrics


@dataclass(frozen=True, kw_only=True)
class Ranker:
    """A trained torch model with the encoder and config it was trained with.

    Attributes:
        model: The network, in eval mode.
        encoder: Encodes frames exactly as in training.
        config: The experiment it came from.
    """

    model: nn.Module
    encoder: Encoder
    config: ExperimentConfig

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Click probabilities for the rows of ``frame`` (feature columns as in the training frame).

        A knowledge field may come pre-adapted, as a ``<field>_adapted`` column (the serving views that
        ``kar adapt export`` fills) instead of the raw vector; the adaptor is then skipped for it.
        """
        batch = to_tensors(self.encode(frame))
        probs = predict(self.model, batch, batch_size=self.config.train.eval_batch_size)
        return probs[:, 0] if probs.ndim == 2 else probs

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Model inputs for ``frame``: the encoder's arrays, with pre-adapted knowledge where the frame has it."""
        knowledge = self.config.knowledge.fields if self.config.knowledge else ()
        adapted = [name for name in knowledge if adapted_name(name) in frame.columns]
        arrays = self.encoder.transform(frame, skip=adapted)
        out_dim = self.config.knowledge.out_dim if self.config.knowledge else 0
        for name in adapted:
            column = adapted_name(name)
            arrays[column] = dense_matrix(frame[column], name=column, dim=out_dim)
        return arrays


@dataclass(frozen=True, kw_only=True)
class _Fit:
    """Outcome of the epoch loop: the selected epoch, its validation metrics, and the cost."""

    best_epoch: int
    val: dict[str, float]
    epochs_run: int
    train_seconds: float


def train_torch(
    frame: pd.DataFrame, config: ExperimentConfig, out_dir: Path, *, progress: ProgressCallback | None = None
) -> TrainMetrics:
    """Train ``config.model`` on the train split, select the epoch by validation AUC, score test once.

    Writes ``config.yaml``, ``encoder.json``, ``model.pt`` (best weights) and ``metrics.json`` to ``out_dir``.

    Args:
        frame: The training frame (feature columns, ``label``, ``split``).
        config: The experiment.
        out_dir: Where the run's files go (created if needed).
        progress: Called after every batch and after every epoch's validation.

    Returns:
        The content of ``metrics.json``.
    """
    started = time.perf_counter()
    seed_everything(config.seed)
    splits = split_frame(frame)
    encoder = Encoder.fit(splits["train"], spec=config.features)
    model = build_model(
        config.model, layout=encoder.layout, knowledge=config.knowledge, inputs=config.inputs, **config.model_params
    )
    tasks = model_tasks(model)
    data = {name: to_tensors(encoder.transform(part), labels=task_labels(part, tasks)) for name, part in splits.items()}
    out_dir = prepare_run_dir(out_dir, config=config, encoder=encoder)

    with torch_threads(config.train.num_threads):
        fit = _fit(model, data["train"], data["val"], config=config, progress=progress)
        test = evaluate(model, data["test"], batch_size=config.train.eval_batch_size)

    torch.save(model.state_dict(), out_dir / TORCH_MODEL_FILE)
    if isinstance(model, KnowledgeAugmented):
        # On its own too, so `kar adapt export` needs neither the ranker nor its encoder.
        save_adaptor(model.adaptor, config=config.knowledge, inputs=model.adaptor.inputs, run_dir=out_dir)
    n_train = len(splits["train"])
    metrics = TrainMetrics(
        model=config.model,
        dataset=config.dataset,
        val=fit.val,
        test=test,
        best_epoch=fit.best_epoch,
        epochs_run=fit.epochs_run,
        n_train=n_train,
        n_val=len(splits["val"]),
        n_test=len(splits["test"]),
        n_parameters=sum(p.numel() for p in model.parameters()),
        seed=config.seed,
        seconds=round(time.perf_counter() - started, 3),
        # Training steps only: validation passes and data preparation are left out.
        samples_per_sec=round(n_train * fit.epochs_run / fit.train_seconds, 1),
    )
    write_metrics(out_dir, metrics)
    return metrics


def load_torch_ranker(run_dir: Path) -> Ranker:
    """Load the model, encoder and config a :func:`train_torch` run wrote to ``run_dir``."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    encoder = Encoder.load(run_dir / ENCODER_FILE)
    model = build_model(
        config.model, layout=encoder.layout, knowledge=config.knowledge, inputs=config.inputs, **config.model_params
    )
    weights = run_dir / TORCH_MODEL_FILE
    try:
        model.load_state_dict(torch.load(weights, weights_only=True))
    except RuntimeError as error:
        # A layout change between versions (e.g. DeepFM's first-order weights moving into the embedding tables).
        lines = str(error).splitlines()  # torch's first line is generic, the second names the parameter
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
        raise DataError(
            f"{weights}: these weights do not fit this version's {config.model} ({detail}); retrain with `kar train`"
        ) from None
    model.eval()
    return Ranker(model=model, encoder=encoder, config=config)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Use ``count`` torch CPU threads inside the block, then restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensors(arrays: dict[str, np.ndarray], *, labels: np.ndarray | None = None) -> Batch:
    """Encoder output (and optional 0/1 labels) as a dict of tensors sharing memory with the arrays.

    ``labels`` is ``[n, tasks]`` (:func:`ctr.frame.task_labels`); a single task's become ``[n]``, the shape of a
    single-task model's logits.
    """
    batch = {name: torch.from_numpy(array) for name, array in arrays.items()}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.float32)
        batch[LABEL] = torch.from_numpy(labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels)
    return batch


@torch.inference_mode()
def predict(model: nn.Module, batch: Batch, *, batch_size: int) -> np.ndarray:
    """Probabilities ``[n]`` (``[n, tasks]`` for a multi-task model) of ``batch``, in eval mode."""
    # Switching modes walks every submodule (~0.5 ms on DeepFM): a serving model stays in eval mode.
    was_training = model.training
    if was_training:
        model.eval()
    probs = [torch.sigmoid(model(chunk)) for chunk in batches(batch, batch_size=batch_size)]
    if was_training:
        model.train()
    return torch.cat(probs).numpy()


def evaluate(model: nn.Module, data: Batch, *, batch_size: int) -> dict[str, float]:
    """AUC and log loss of the click task (which selects the epoch), then ``<task>_auc``… of any other task."""
    labels, probs = data[LABEL].numpy(), predict(model, data, batch_size=batch_size)
    if probs.ndim == 1:
        return binary_metrics(labels, probs)
    scores = binary_metrics(labels[:, 0], probs[:, 0])
    for i, task in enumerate(model_tasks(model)[1:], start=1):
        if len(np.unique(labels[:, i])) == 2:
            scores.update({f"{task}_{k}": v for k, v in binary_metrics(labels[:, i], probs[:, i]).items()})
    return scores


def _fit(
    model: nn.Module, train: Batch, val: Batch, *, config: ExperimentConfig, progress: ProgressCallback | None
) -> _Fit:
    """Run epochs until validation AUC stops improving for ``patience`` epochs; keep the best weights."""
    settings = config.train
    optimizer = make_optimizer(model, settings)
    # A generator of its own makes the shuffling order independent of model initialisation and dropout.
    generator = torch.Generator().manual_seed(config.seed)
    steps = -(-len(train[LABEL]) // settings.batch_size)
    best_epoch, best_val, best_state = 0, {"auc": -np.inf}, _snapshot(model)
    train_seconds, epoch = 0.0, 0
    for epoch in range(1, settings.epochs + 1):
        event = ProgressEvent(model=config.model, epoch=epoch, epochs=settings.epochs, step=0, steps=steps)
        started = time.perf_counter()
        loss = train_epoch(
            model, optimizer, train, settings=settings, generator=generator, event=event, progress=progress
        )
        train_seconds += time.perf_counter() - started
        scores = evaluate(model, val, batch_size=settings.eval_batch_size)
        if progress is not None:
            progress(replace(event, step=steps, loss=loss, val=scores))
        if scores["auc"] > best_val["auc"]:
            best_epoch, best_val, best_state = epoch, scores, _snapshot(model)
        elif epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    return _Fit(best_epoch=best_epoch, val=best_val, epochs_run=epoch, train_seconds=train_seconds)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Batch,
    *,
    settings: TrainConfig,
    generator: torch.Generator,
    event: ProgressEvent,
    progress: ProgressCallback | None,
) -> float:
    """One pass over ``train`` in a fresh random order; returns the mean training loss."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    order = torch.randperm(len(train[LABEL]), generator=generator)
    total, step = 0.0, 0
    for step, batch in enumerate(batches(train, batch_size=settings.batch_size, order=order), start=1):
        optimizer.zero_grad()
        loss = loss_fn(model(batch), batch[LABEL])
        loss.backward()
        optimizer.step()
        total += loss.item()
        if progress is not None:
            progress(replace(event, step=step, loss=total / step))
    return total / step


def batches(data: Batch, *, batch_size: int, order: Tensor | None = None) -> Iterator[Batch]:
    """Consecutive slices of ``batch_size`` rows of every tensor, in ``order`` (row indices) when given."""
    size = len(next(iter(data.values())))
    for start in range(0, size, batch_size):
        if order is None:
            yield {name: tensor[start : start + batch_size] for name, tensor in data.items()}
        else:
            # index_select, not tensor[rows]: advanced indexing is 2-3x slower for a batch of rows.
            rows = order[start : start + batch_size]
            yield {name: tensor.index_select(0, rows) for name, tensor in data.items()}


def make_optimizer(model: nn.Module, settings: TrainConfig) -> torch.optim.Adam:
    """Adam over :func:`param_groups`, with torch's fused kernel: one pass over all parameters per step instead
    of a dozen small ops per tensor (Adam was a tenth of a DeepFM step); same update rule."""
    return torch.optim.Adam(param_groups(model, settings), lr=settings.lr, fused=True)


def param_groups(model: nn.Module, settings: TrainConfig) -> list[dict[str, Any]]:
    """Embedding tables get ``embedding_l2`` as weight decay, everything else ``weight_decay`` (one group when
    the two are equal: the fused step then runs once per step, not once per group)."""
    if settings.embedding_l2 == settings.weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": settings.weight_decay}]
    tables = {id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()}
    embedding = [p for p in model.parameters() if id(p) in tables]
    other = [p for p in model.parameters() if id(p) not in tables]
    return [
        {"params": embedding, "weight_decay": settings.embedding_l2},
        {"params": other, "weight_decay": settings.weight_decay},
    ]


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}
