"""Multi-gate Mixture-of-Experts: shared experts, one gate per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.modules.mlp import MLP


class MultiGateMixtureOfExperts(nn.Module):
    """``f^k(x) = Σ_i g^k(x)_i f_i(x)`` with ``g^k(x) = softmax(W_gk x)`` (Ma et al., KDD 2018).

    Every expert ``f_i`` is an MLP over the shared input; every task ``k`` mixes the experts' outputs with
    its own linear softmax gate, so tasks that conflict can weight the experts differently.
    """

    def __init__(
        self,
        *,
        in_features: int,
        num_tasks: int,
        num_experts: int,
        expert_hidden: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        """Create the experts and gates.

        Args:
            in_features: Size of the shared input vector.
            num_tasks: Number ``T`` of gates (one per task).
            num_experts: Number ``E`` of experts.
            expert_hidden: Hidden layer sizes of every expert; the last one is the output size ``H``.
            dropout: Dropout probability in the experts.
            batch_norm: Whether the experts use batch normalisation.
        """
        super().__init__()
        if num_tasks < 1 or num_experts < 1:
            raise ValueError(f"MMoE needs at least one task and one expert, got {num_tasks} and {num_experts}")
        self.experts = nn.ModuleList(
            [
                MLP(in_features=in_features, hidden=expert_hidden, dropout=dropout, batch_norm=batch_norm)
                for _ in range(num_experts)
            ]
        )
        # One linear map computes all T gates' logits at once: row block k is W_gk.
        self.gates = nn.Linear(in_features, num_tasks * num_experts)
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        self.out_features = self.experts[0].out_features

    def gate_weights(self, inputs: Tensor) -> Tensor:
        """Each task's softmax weights over the experts, ``[B, T, E]`` (rows sum to 1)."""
        logits = self.gates(inputs).view(-1, self.num_tasks, self.num_experts)
        return torch.softmax(logits, dim=-1)

    def forward(self, inputs: Tensor) -> Tensor:
        """Map the shared input ``[B, in_features]`` to one expert mixture per task ``[B, T, H]``."""
        experts = torch.stack([expert(inputs) for expert in self.experts], dim=1)  # [B, E, H]
        return self.gate_weights(inputs) @ experts
