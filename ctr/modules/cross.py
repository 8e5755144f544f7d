"""Cross network of DCN-V2: explicit, bounded-degree feature crosses."""

from __future__ import annotations

from torch import Tensor, nn


class CrossNetV2(nn.Module):
    """Stack of cross layers ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` (Wang et al., WWW 2021).

    Layer ``l`` holds crosses of the input up to degree ``l + 1``; the residual ``+ x_l`` keeps the lower ones.
    ``W_l`` is a full ``d × d`` matrix, or with ``rank`` the paper's low-rank ``U_l V_lᵀ``
    (``d × r`` each), which cuts parameters and compute from ``d²`` to ``2dr`` per layer.
    """

    def __init__(self, *, in_features: int, num_layers: int, rank: int | None = None):
        """Create the layers.

        Args:
            in_features: Size ``d`` of the input vector ``x_0``.
            num_layers: Number of cross layers (0 makes the network the identity).
            rank: Rank ``r`` of each ``W_l = U_l V_lᵀ``; None learns full-rank matrices.
        """
        super().__init__()
        self.weights = nn.ModuleList(
            [
                nn.Linear(in_features, in_features)
                if rank is None
                # V_lᵀ without bias, then U_l with the layer's bias b_l.
                else nn.Sequential(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, in_features))
                for _ in range(num_layers)
            ]
        )
        self.out_features = in_features

    def forward(self, inputs: Tensor) -> Tensor:
        """Map ``x_0`` ``[B, d]`` to ``x_L`` ``[B, d]``."""
        crossed = inputs
        for weight in self.weights:
            crossed = inputs * weight(crossed) + crossed
        return crossed
