"""MMoE (Ma et al., KDD 2018): shared experts, a softmax gate and a tower per task; one logit per task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.features import InputLayout
from ctr.modules import MLP, FeatureEmbedding, MultiGateMixtureOfExperts, deep_input, deep_input_size
from ctr.modules.embedding import Batch


class MMOE(nn.Module):
    """``y_k = tower_k(Σ_i g^k(x)_i f_i(x))`` over ``x = field vectors ⊕ raw dense vectors``, for each task ``k``.

    A multi-task model: it has a ``tasks`` attribute and its forward returns logits ``[B, T]``, column ``k``
    for ``tasks[k]`` (task 0 is the click task). Dense fields enter ``x`` both projected to a field vector
    and raw, as in DeepFM, so a knowledge vector added by config needs no change here.
    """

    def __init__(
        self,
        *,
        layout: InputLayout,
        tasks: Sequence[str] = ("click", "love"),
        embedding_dim: int = 16,
        num_experts: int = 4,
        expert_hidden: Sequence[int] = (128, 64),
        tower_hidden: Sequence[int] = (64,),
        dropout: float = 0.1,
        batch_norm: bool = False,
    ):
        """Create the model.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            tasks: Names of the predicted labels, click task first.
            embedding_dim: Size of each field vector.
            num_experts: Number of shared experts.
            expert_hidden: Hidden layer sizes of every expert; the last is the size of the mixtures.
            tower_hidden: Hidden layer sizes of every task tower (each ends in one logit).
            dropout: Dropout probability in the experts and towers.
            batch_norm: Whether the experts and towers use batch normalisation.

        Raises:
            ValueError: If ``tasks`` is empty or names a task twice.
        """
        super().__init__()
        self.tasks: tuple[str, ...] = tuple(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"MMOE tasks must be distinct and at least one, got {list(self.tasks)}")
        self.layout = layout
        self.embedding = FeatureEmbedding(layout=layout, embedding_dim=embedding_dim)
        in_features = deep_input_size(self.embedding.num_fields, embedding_dim, layout)
        self.mmoe = MultiGateMixtureOfExperts(
            in_features=in_features,
            num_tasks=len(self.tasks),
            num_experts=num_experts,
            expert_hidden=expert_hidden,
            dropout=dropout,
            batch_norm=batch_norm,
        )
        self.towers = nn.ModuleList(
            [
                MLP(
                    in_features=self.mmoe.out_features,
                    hidden=tower_hidden,
                    dropout=dropout,
                    batch_norm=batch_norm,
                    out_features=1,
                )
                for _ in self.tasks
            ]
        )

    def forward(self, batch: Batch) -> Tensor:
        """Return one logit per task ``[B, T]`` (apply a sigmoid for probabilities)."""
        fields = self.embedding(batch)
        x = deep_input(fields, batch, self.layout)
        mixtures = self.mmoe(x)
        return torch.cat([tower(mixtures[:, k]) for k, tower in enumerate(self.towers)], dim=1)
