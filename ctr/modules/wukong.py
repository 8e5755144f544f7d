"""Wukong interaction layer (Zhang et al., ICML 2024): stacked factorization machines on embedding sets.

Each layer maps ``n`` embeddings of size ``d`` to ``n_F + n_L`` embeddings of size ``d``; stacking ``l`` layers
captures interactions of every order from 1 to ``2^l``. Unlike FuxiCTR's variant, the embeddings stay a set
``[B, n, d]`` between layers (the paper's design) rather than being flattened into one vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.modules.mlp import MLP


class LinearCompressionBlock(nn.Module):
    """``LCB(X) = W_L X``: a linear map along the embedding axis, ``n`` embeddings → ``m``.

    Each output embedding is a learnt weighted sum of the input embeddings, so it recombines them without
    raising the interaction order. The same map projects a layer's residual when ``n ≠ n_F + n_L``.
    """

    def __init__(self, *, num_embeddings: int, out_embeddings: int):
        """Create ``W_L``.

        Args:
            num_embeddings: Number ``n`` of input embeddings.
            out_embeddings: Number of output embeddings.
        """
        super().__init__()
        self.weight = nn.Linear(num_embeddings, out_embeddings, bias=False)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Map ``[B, n, d]`` to ``[B, out_embeddings, d]``."""
        return self.weight(embeddings.transpose(1, 2)).transpose(1, 2)


class FactorizationMachineBlock(nn.Module):
    """``FMB(X) = reshape(MLP(LN(flatten(FM(X)))))`` with the optimized ``FM(X) = X (Xᵀ Y)``.

    The full interaction matrix ``X Xᵀ`` (``n × n``) has rank at most ``d``; multiplying by a learnt
    ``Y ∈ R^{n×k}`` keeps a ``k``-column summary of it, and computing ``Xᵀ Y`` first costs ``O(nkd)``
    instead of ``O(n²d)``. ``Xᵀ Y`` is a learnt projection of ``X`` along the embedding axis to ``k``
    embeddings, so every entry of ``X (Xᵀ Y)`` is a dot product between an input embedding and a mixture.
    """

    def __init__(
        self,
        *,
        num_embeddings: int,
        embedding_dim: int,
        out_embeddings: int,
        rank: int,
        mlp_hidden: Sequence[int],
        dropout: float = 0.0,
    ):
        """Create ``Y``, the normalisation and the MLP.

        Args:
            num_embeddings: Number ``n`` of input embeddings.
            embedding_dim: Size ``d`` of every embedding.
            out_embeddings: Number ``n_F`` of output embeddings.
            rank: Number ``k`` of columns of the compressed interaction matrix.
            mlp_hidden: Hidden layer sizes of the MLP.
            dropout: Dropout probability in the MLP.
        """
        super().__init__()
        self.projection = LinearCompressionBlock(num_embeddings=num_embeddings, out_embeddings=rank)
        self.norm = nn.LayerNorm(num_embeddings * rank)
        self.mlp = MLP(
            in_features=num_embeddings * rank,
            hidden=mlp_hidden,
            dropout=dropout,
            out_features=out_embeddings * embedding_dim,
        )
        self.out_embeddings = out_embeddings
        self.embedding_dim = embedding_dim

    def forward(self, embeddings: Tensor) -> Tensor:
        """Map ``X`` ``[B, n, d]`` to ``[B, n_F, d]``."""
        interactions = embeddings @ self.projection(embeddings).transpose(1, 2)  # X (Xᵀ Y): [B, n, k]
        out = self.mlp(self.norm(interactions.flatten(start_dim=1)))
        return out.view(-1, self.out_embeddings, self.embedding_dim)


class WukongLayer(nn.Module):
    """``X_{i+1} = LN(concat(FMB_i(X_i), LCB_i(X_i)) + X_i)``: ``[B, n, d]`` → ``[B, n_F + n_L, d]``.

    The FMB raises the interaction order (up to doubling it per layer), the LCB carries the lower orders
    forward. When ``n ≠ n_F + n_L`` the residual ``X_i`` is first mapped to ``n_F + n_L`` embeddings by a
    learnt linear map along the embedding axis.
    """

    def __init__(
        self,
        *,
        num_embeddings: int,
        embedding_dim: int,
        num_fm_embeddings: int,
        num_lcb_embeddings: int,
        fm_rank: int,
        fm_mlp_hidden: Sequence[int],
        dropout: float = 0.0,
    ):
        """Create the blocks.

        Args:
            num_embeddings: Number ``n`` of input embeddings.
            embedding_dim: Size ``d`` of every embedding.
            num_fm_embeddings: Number ``n_F`` of embeddings the FMB outputs.
            num_lcb_embeddings: Number ``n_L`` of embeddings the LCB outputs.
            fm_rank: Rank ``k`` of the FMB's compressed interaction matrix.
            fm_mlp_hidden: Hidden layer sizes of the FMB's MLP.
            dropout: Dropout probability in the FMB's MLP.
        """
        super().__init__()
        self.out_embeddings = num_fm_embeddings + num_lcb_embeddings
        self.fmb = FactorizationMachineBlock(
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            out_embeddings=num_fm_embeddings,
            rank=fm_rank,
            mlp_hidden=fm_mlp_hidden,
            dropout=dropout,
        )
        self.lcb = LinearCompressionBlock(num_embeddings=num_embeddings, out_embeddings=num_lcb_embeddings)
        self.residual: nn.Module = (
            nn.Identity()
            if num_embeddings == self.out_embeddings
            else LinearCompressionBlock(num_embeddings=num_embeddings, out_embeddings=self.out_embeddings)
        )
        self.norm = nn.LayerNorm(embedding_dim)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Map ``[B, n, d]`` to ``[B, n_F + n_L, d]``."""
        interactions = torch.cat([self.fmb(embeddings), self.lcb(embeddings)], dim=1)
        return self.norm(interactions + self.residual(embeddings))
