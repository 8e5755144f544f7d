"""Wukong (Zhang et al., ICML 2024, "Wukong: Towards a Scaling Law for Large-Scale Recommendation")."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ctr.features import InputLayout
from ctr.modules import MLP, FeatureEmbedding, WukongLayer, deep_input, deep_input_size
from ctr.modules.embedding import Batch


class Wukong(nn.Module):
    """``X_0 = field vectors``; ``X_{i+1} = LN(concat(FMB_i(X_i), LCB_i(X_i)) + X_i)``; ``logit = MLP(flatten(X_l))``.

    The interaction stack keeps ``n_F + n_L`` embeddings of size ``d`` per layer (see
    :class:`~ctr.modules.WukongLayer`). Dense fields enter ``X_0`` projected to a field vector, as the paper's
    embedding layer does, and also raw into the final MLP as they enter DeepFM's DNN, so a knowledge vector
    added by config needs no change here.
    """

    def __init__(
        self,
        *,
        layout: InputLayout,
        embedding_dim: int = 16,
        num_layers: int = 3,
        num_fm_embeddings: int = 16,
        num_lcb_embeddings: int = 16,
        fm_rank: int = 16,
        fm_mlp_hidden: Sequence[int] = (256,),
        dnn_hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        batch_norm: bool = False,
    ):
        """Create the model.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            embedding_dim: Size ``d`` of each field vector and of every embedding of the stack.
            num_layers: Number ``l`` of Wukong layers (interaction orders up to ``2^l``).
            num_fm_embeddings: Number ``n_F`` of embeddings each layer's FMB outputs.
            num_lcb_embeddings: Number ``n_L`` of embeddings each layer's LCB outputs.
            fm_rank: Rank ``k`` of each FMB's compressed interaction matrix ``X (Xᵀ Y)``.
            fm_mlp_hidden: Hidden layer sizes of each FMB's MLP.
            dnn_hidden: Hidden layer sizes of the final MLP.
            dropout: Dropout probability in the FMB MLPs and the final MLP.
            batch_norm: Whether the final MLP uses batch normalisation (the stack has layer norms).
        """
        super().__init__()
        self.layout = layout
        self.embedding = FeatureEmbedding(layout=layout, embedding_dim=embedding_dim)
        layers = []
        num_embeddings = self.embedding.num_fields
        for _ in range(num_layers):
            layer = WukongLayer(
                num_embeddings=num_embeddings,
                embedding_dim=embedding_dim,
                num_fm_embeddings=num_fm_embeddings,
                num_lcb_embeddings=num_lcb_embeddings,
                fm_rank=fm_rank,
                fm_mlp_hidden=fm_mlp_hidden,
                dropout=dropout,
            )
            layers.append(layer)
            num_embeddings = layer.out_embeddings
        self.interactions = nn.Sequential(*layers)
        self.dnn = MLP(
            in_features=deep_input_size(num_embeddings, embedding_dim, layout),
            hidden=dnn_hidden,
            dropout=dropout,
            batch_norm=batch_norm,
            out_features=1,
        )

    def forward(self, batch: Batch) -> Tensor:
        """Return the click logit ``[B]`` (apply a sigmoid for probabilities)."""
        interactions = self.interactions(self.embedding(batch))
        dnn_input = deep_input(interactions, batch, self.layout)
        return self.dnn(dnn_input).squeeze(-1)
