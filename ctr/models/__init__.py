"""Rankers assembled from ``ctr.modules``, looked up by the ``model`` name of an experiment config.

A model is an ``nn.Module`` whose keyword-only constructor takes ``layout`` (from the fitted encoder) plus
its own hyper-parameters (the config's ``model_params``), and whose forward maps a batch dict to logits
``[B]``. Adding DCNv2/MMOE/Wukong means one module here and one entry in ``MODELS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from ctr.features import InputLayout
from ctr.models.deepfm import DeepFM
from kar.errors import DataError

MODELS: dict[str, type[nn.Module]] = {
    "deepfm": DeepFM,
}


def check_model_params(name: str, params: Mapping[str, Any]) -> None:
    """Check, before any data is loaded, that ``name`` is registered and takes keywords ``params``.

    Raises:
        DataError: If the name is unknown or a parameter is not one the model takes.
    """
    if name not in MODELS:
        raise DataError(f"model {name!r} is not known (torch models: {', '.join(sorted(MODELS))})")
    try:
        inspect.signature(MODELS[name]).bind(layout=None, **params)
    except TypeError as exc:
        raise DataError(f"model_params for {name}: {exc}") from None


def build_model(name: str, *, layout: InputLayout, **params: Any) -> nn.Module:
    """Instantiate registered model ``name`` for ``layout`` with hyper-parameters ``params``.

    Raises:
        DataError: If the name is unknown or a parameter is not one the model takes.
    """
    check_model_params(name, params)
    return MODELS[name](layout=layout, **params)


__all__ = ["MODELS", "DeepFM", "build_model", "check_model_params"]
