"""Second-order factorization machine interaction."""

from __future__ import annotations

from torch import Tensor, nn


class FactorizationMachine(nn.Module):
    """Sum of the dot products of all pairs of field vectors (Rendle, 2010), in ``O(F·D)``.

    Uses ``Σ_{i<j} <v_i, v_j> = ½ Σ_d [(Σ_i v_id)² − Σ_i v_id²]``.
    """

    def forward(self, fields: Tensor) -> Tensor:
        """Map field vectors ``[B, F, D]`` to one interaction logit per example ``[B]``."""
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_squares = fields.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)
