"""DeepFM (Guo et al., IJCAI 2017): a factorization machine and a DNN sharing one embedding layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.features import InputLayout
from ctr.modules import MLP, FactorizationMachine, FeatureEmbedding, deep_input, deep_input_size
from ctr.modules.embedding import Batch


class DeepFM(nn.Module):
    """``logit = b + Σ_f w_f + FM(field vectors) + DNN(field vectors ⊕ raw dense vectors)``.

    The first-order weights ``w_f`` (one per value, the mean over a sequence, a linear map of a dense vector:
    :class:`LinearTerm`'s model) live as an extra column of the embedding tables, so one lookup per field serves
    the first-order term, the FM and the DNN. Dense fields enter the FM through their projection to a field
    vector and the DNN both projected and raw, so a knowledge vector added by config needs no change here.
    """

    def __init__(
        self,
        *,
        layout: InputLayout,
        embedding_dim: int = 16,
        dnn_hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        batch_norm: bool = False,
    ):
        """Create the model.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            embedding_dim: Size of each field vector.
            dnn_hidden: Hidden layer sizes of the DNN.
            dropout: Dropout probability in the DNN.
            batch_norm: Whether the DNN uses batch normalisation.
        """
        super().__init__()
        self.layout = layout
        self.embedding = FeatureEmbedding(layout=layout, embedding_dim=embedding_dim, first_order=True)
        self.bias = nn.Parameter(torch.zeros(1))
        self.fm = FactorizationMachine()
        dnn_in = deep_input_size(self.embedding.num_fields, embedding_dim, layout)
        self.dnn = MLP(in_features=dnn_in, hidden=dnn_hidden, dropout=dropout, batch_norm=batch_norm, out_features=1)

    def forward(self, batch: Batch) -> Tensor:
        """Return the click logit ``[B]`` (apply a sigmoid for probabilities)."""
        fields, first_order = self.embedding.with_first_order(batch)
        dnn_input = deep_input(fields, batch, self.layout)
        return self.bias + first_order.sum(dim=1) + self.fm(fields) + self.dnn(dnn_input).squeeze(-1)
