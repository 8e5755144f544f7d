"""Rankers assembled from ``ctr.modules``, looked up by the ``model`` name of an experiment config.

A model is an ``nn.Module`` whose keyword-only constructor takes ``layout`` (from the fitted encoder) plus
its own hyper-parameters (the config's ``model_params``), and whose forward maps a batch dict to logits
``[B]``. A multi-task model (MMOE) has a ``tasks`` attribute and returns logits ``[B, T]``, task 0 being the
click. Adding a model means one module here and one entry in ``MODELS``.

A model kar-feast did not write is named by import path instead (``team.ranker:TeamRanker``, see
``ctr.models.external``): it is imported wherever a run is built or loaded, in any process.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from adaptors import AdaptorConfig, HybridExpertAdaptor
from ctr.features import InputLayout
from ctr.models.dcnv2 import DCNv2
from ctr.models.deepfm import DeepFM
from ctr.models.external import ExternalRanker, check_external, is_import_path
from ctr.models.knowledge import KnowledgeAugmented, adapted_name, backbone_layout
from ctr.models.mmoe import MMOE
from ctr.models.wukong import Wukong
from kar.contracts.errors import DataError

MODELS: dict[str, type[nn.Module]] = {
    "deepfm": DeepFM,
    "dcnv2": DCNv2,
    "mmoe": MMOE,
    "wukong": Wukong,
}


def check_model_params(name: str, params: Mapping[str, Any], inputs: Sequence[str] | None = None) -> None:
    """Check, before any data is loaded, that ``name`` is registered (or imports) and takes keywords ``params``.

    Raises:
        DataError: If the name is unknown or a parameter is not one the model takes.
    """
    if is_import_path(name):
        check_external(name, params, inputs)
        return
    if name not in MODELS:
        raise DataError(f"model {name!r} is not known (torch models: {', '.join(sorted(MODELS))})")
    try:
        inspect.signature(MODELS[name]).bind(layout=None, **params)
    except TypeError as exc:
        raise DataError(f"model_params for {name}: {exc}") from None


def build_model(
    name: str,
    *,
    layout: InputLayout,
    knowledge: AdaptorConfig | None = None,
    inputs: Sequence[str] | None = None,
    **params: Any,
) -> nn.Module:
    """Instantiate model ``name`` for ``layout`` with hyper-parameters ``params``.

    Args:
        name: A key of :data:`MODELS`, or ``package.module:Class`` (``ctr.models.external``).
        layout: Table sizes and field wiring, from the fitted encoder.
        knowledge: When set, the model is wrapped with a knowledge adaptor (:class:`KnowledgeAugmented`).
        inputs: For an imported model: what its ``forward`` receives, in order.
        params: The model's hyper-parameters.

    Raises:
        DataError: If the name is unknown, a parameter is not one the model takes, or a knowledge field is not
            a dense field.
    """
    check_model_params(name, params, inputs)

    def backbone_for(sized: InputLayout) -> nn.Module:
        if is_import_path(name):
            return ExternalRanker(layout=sized, target=name, inputs=inputs or (), **params)
        return MODELS[name](layout=sized, **params)

    if knowledge is None:
        return backbone_for(layout)
    backbone = backbone_for(backbone_layout(layout, knowledge))
    inputs = {field: layout.dense[field] for field in knowledge.fields}
    try:
        adaptor = HybridExpertAdaptor.from_config(knowledge, inputs=inputs)
    except ValueError as exc:
        raise DataError(f"knowledge: {exc}") from None
    return KnowledgeAugmented(backbone=backbone, adaptor=adaptor)


def model_tasks(model: nn.Module) -> tuple[str, ...]:
    """The tasks ``model`` predicts, in output order: ``("click",)`` for a single-task ranker."""
    return getattr(model, "tasks", None) or ("click",)


__all__ = [
    "MMOE",
    "MODELS",
    "DCNv2",
    "DeepFM",
    "ExternalRanker",
    "KnowledgeAugmented",
    "Wukong",
    "adapted_name",
    "build_model",
    "check_model_params",
    "model_tasks",
]
