"""Rankers kar-feast did not write: any PyTorch module, named in the experiment YAML by import path.

The protocol a team's model follows (nothing else of kar-feast is needed to write one)::

    model: team_models.ranker:TeamRanker     # importable where kar runs (installed, or on PYTHONPATH)
    inputs: [user_id, item_id, dense]        # what forward() receives, positionally, in this order
    model_params: {hidden: 32}               # the constructor's own keywords

* The constructor gets ``model_params`` plus two keywords kar-feast sizes from the data: ``vocab_sizes``
  (``{field: rows}``: an embedding table per sparse or sequence field, index 0 = unknown) and ``dense_width``
  (the width of the ``dense`` input). It may ignore either, but must accept them (``**kwargs`` will do).
* ``forward`` receives one tensor per ``inputs`` entry: a sparse field as ``LongTensor [B]`` of vocabulary
  indices, a sequence field as ``LongTensor [B, max_len]`` (0-padded), and ``dense`` as ``FloatTensor
  [B, dense_width]``: every dense field concatenated in spec order, knowledge already adapted (KAR's hybrid-
  expert adaptor runs in front of the model and trains jointly with it). It returns logits ``[B]``.

So knowledge reaches any ranker as extra dense inputs of a declared width, and ``kar train``, ``kar adapt
export`` and ``kar serve`` rebuild the model in a fresh process from the run's ``config.yaml``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ctr.features import InputLayout
from ctr.modules.embedding import Batch
from kar.contracts.errors import DataError

DENSE = "dense"
SIZED_BY_KAR = ("vocab_sizes", "dense_width")


def is_import_path(name: str) -> bool:
    """``package.module:Class`` (a registered model name has no colon)."""
    return ":" in name


def import_model(path: str) -> type[nn.Module]:
    """The class at ``package.module:Class``.

    Raises:
        DataError: The module cannot be imported, has no such attribute, or it is not an ``nn.Module`` class.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(
            f"model {path!r}: cannot import {module_name} ({exc}); install it or put its folder on PYTHONPATH"
        ) from None
    target = getattr(module, attribute, None)
    if not (inspect.isclass(target) and issubclass(target, nn.Module)):
        raise DataError(f"model {path!r}: {module_name} has no torch.nn.Module class named {attribute!r}")
    return target


def check_external(path: str, params: Mapping[str, Any], inputs: Sequence[str] | None) -> None:
    """Check, before any data is read, that the class imports, takes ``params`` and has an ``inputs`` list.

    Raises:
        DataError: Naming what is wrong.
    """
    target = import_model(path)
    if not inputs:
        raise DataError(f"model {path!r}: list what forward() receives under `inputs:` (fields, or '{DENSE}')")
    try:
        inspect.signature(target).bind(**params, vocab_sizes={}, dense_width=0)
    except TypeError as exc:
        raise DataError(
            f"model {path!r}: its constructor must take model_params and the keywords vocab_sizes, dense_width ({exc})"
        ) from None


class ExternalRanker(nn.Module):
    """Adapts a batch dict to a team model's own ``forward`` signature (see the module docstring)."""

    def __init__(self, *, layout: InputLayout, target: str, inputs: Sequence[str], **params: Any):
        """Build the team's model for ``layout``.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            target: ``package.module:Class``.
            inputs: Batch fields (or ``dense``) passed positionally to ``forward``.
            params: The model's own constructor keywords.

        Raises:
            DataError: An input that is neither a field of the layout nor ``dense``.
        """
        super().__init__()
        fields = {**layout.sparse, **layout.sequence}
        unknown = [name for name in inputs if name != DENSE and name not in fields]
        if unknown:
            known = ", ".join([*fields, DENSE])
            raise DataError(f"model {target!r}: input {unknown[0]!r} is not a feature field (fields: {known})")
        self.inputs = tuple(inputs)
        self.dense_fields = tuple(layout.dense)
        vocab_sizes = {name: layout.tables[table] for name, table in fields.items()}
        self.model = import_model(target)(**params, vocab_sizes=vocab_sizes, dense_width=sum(layout.dense.values()))

    def forward(self, batch: Batch) -> Tensor:
        """The team model's logits ``[B]`` for ``batch``."""
        return self.model(*(self._input(name, batch) for name in self.inputs))

    def _input(self, name: str, batch: Batch) -> Tensor:
        if name != DENSE:
            return batch[name]
        if not self.dense_fields:
            size = next(iter(batch.values())).shape[0]
            return torch.zeros(size, 0)
        return torch.cat([batch[field] for field in self.dense_fields], dim=1)
