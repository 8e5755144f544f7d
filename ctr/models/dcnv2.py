"""DCN-V2 (Wang et al., WWW 2021): a cross network and a DNN over the same input, stacked or in parallel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ctr.features import InputLayout
from ctr.modules import MLP, CrossNetV2, FeatureEmbedding, deep_input, deep_input_size
from ctr.modules.embedding import Batch

STRUCTURES = ("stacked", "parallel")


class DCNv2(nn.Module):
    """``x_0 = field vectors ⊕ raw dense vectors``; ``logit = w·DNN(Cross(x_0))`` or ``w·[Cross(x_0) ⊕ DNN(x_0)]``.

    Dense fields enter ``x_0`` both projected to a field vector and raw, as in DeepFM, so a knowledge vector
    added by config needs no change here. With ``dnn_hidden`` empty the model is the cross network alone.
    """

    def __init__(
        self,
        *,
        layout: InputLayout,
        embedding_dim: int = 16,
        structure: Literal["stacked", "parallel"] = "parallel",
        num_cross_layers: int = 3,
        cross_rank: int | None = None,
        dnn_hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        batch_norm: bool = False,
    ):
        """Create the model.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            embedding_dim: Size of each field vector.
            structure: ``"stacked"`` feeds the cross network's output to the DNN; ``"parallel"`` runs both
                on ``x_0`` and concatenates their outputs.
            num_cross_layers: Number of cross layers (the highest cross degree is this plus one).
            cross_rank: Rank of the low-rank cross matrices ``U Vᵀ``; None learns full-rank ones.
            dnn_hidden: Hidden layer sizes of the DNN.
            dropout: Dropout probability in the DNN.
            batch_norm: Whether the DNN uses batch normalisation.

        Raises:
            ValueError: If ``structure`` is not one of ``"stacked"``, ``"parallel"``.
        """
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"DCNv2 structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
        self.layout = layout
        self.structure = structure
        self.embedding = FeatureEmbedding(layout=layout, embedding_dim=embedding_dim)
        in_features = deep_input_size(self.embedding.num_fields, embedding_dim, layout)
        self.cross = CrossNetV2(in_features=in_features, num_layers=num_cross_layers, rank=cross_rank)
        self.dnn = MLP(in_features=in_features, hidden=dnn_hidden, dropout=dropout, batch_norm=batch_norm)
        # The cross network keeps the input size, so the DNN's input size is the same in both structures.
        head_in = self.dnn.out_features + (in_features if structure == "parallel" else 0)
        self.head = nn.Linear(head_in, 1)

    def forward(self, batch: Batch) -> Tensor:
        """Return the click logit ``[B]`` (apply a sigmoid for probabilities)."""
        fields = self.embedding(batch)
        x0 = deep_input(fields, batch, self.layout)
        crossed = self.cross(x0)
        out = self.dnn(crossed) if self.structure == "stacked" else torch.cat([crossed, self.dnn(x0)], dim=1)
        return self.head(out).squeeze(-1)
