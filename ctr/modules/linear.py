"""First-order (logistic regression) term over all fields."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctr.features import InputLayout
from ctr.modules.embedding import Batch, FeatureEmbedding


class LinearTerm(nn.Module):
    """Bias plus one learnt weight per categorical value and a linear map of each dense vector.

    A :class:`FeatureEmbedding` of size 1 is exactly that: a weight per id (mean over a sequence) and a
    bias-free projection of a dense vector to one number.
    """

    def __init__(self, *, layout: InputLayout):
        """Create the per-value weights.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
        """
        super().__init__()
        self.weights = FeatureEmbedding(layout=layout, embedding_dim=1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> Tensor:
        """Return the first-order logit ``[B]``."""
        return self.weights(batch).sum(dim=(1, 2)) + self.bias
