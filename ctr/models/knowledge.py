"""Any registered ranker with knowledge: an adaptor in front of the backbone, trained jointly (KAR).

The adaptor replaces each raw knowledge vector (e.g. 384-d) by its adapted vector (32-d) before the backbone
sees the batch, so the backbone treats knowledge like any other dense field: DeepFM, for one, feeds it to the
first-order term, the FM (as a projected field vector) and the DNN. At serving time the batch may carry the
pre-computed vectors instead, under ``<field>_adapted`` (the Feast views ``kar adapt export`` fills); the adaptor
is then skipped and the scores are the same.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from adaptors import AdaptorConfig, HybridExpertAdaptor
from ctr.features import InputLayout
from ctr.modules.embedding import Batch
from kar.contracts.errors import DataError

ADAPTED_SUFFIX = "_adapted"


def adapted_name(field: str) -> str:
    """Batch key (and Feast feature view) of a knowledge field's pre-computed adapted vector."""
    return f"{field}{ADAPTED_SUFFIX}"


def backbone_layout(layout: InputLayout, knowledge: AdaptorConfig) -> InputLayout:
    """``layout`` with every knowledge field's size replaced by the adaptor's output size.

    Raises:
        DataError: If a knowledge field is not a dense field of the layout.
    """
    missing = [name for name in knowledge.fields if name not in layout.dense]
    if missing:
        raise DataError(f"knowledge field {missing[0]!r} is not a dense field (dense: {', '.join(layout.dense)})")
    dense = {name: knowledge.out_dim if name in knowledge.fields else dim for name, dim in layout.dense.items()}
    return replace(layout, dense=dense)


class KnowledgeAugmented(nn.Module):
    """``backbone(batch with each knowledge field adapted)``; the adaptor and backbone learn together."""

    def __init__(self, *, backbone: nn.Module, adaptor: HybridExpertAdaptor):
        """Wrap a backbone built for :func:`backbone_layout`.

        Args:
            backbone: A ranker reading the adapted vectors under the knowledge fields' names.
            adaptor: Adapts each knowledge field (its types are the field names).
        """
        super().__init__()
        self.backbone = backbone
        self.adaptor = adaptor

    @property
    def tasks(self) -> tuple[str, ...] | None:
        """The backbone's tasks when it is multi-task."""
        return getattr(self.backbone, "tasks", None)

    def adapt(self, batch: Batch) -> dict[str, Tensor]:
        """Adapted vector per knowledge field: pre-computed under ``<field>_adapted``, else from the raw one."""
        return {
            name: batch[adapted_name(name)] if adapted_name(name) in batch else self.adaptor.adapt(name, batch[name])
            for name in self.adaptor.types
        }

    def forward(self, batch: Batch) -> Tensor:
        """The backbone's logits for ``batch`` (raw or pre-adapted knowledge)."""
        return self.backbone({**batch, **self.adapt(batch)})
