"""One embedding vector per field, whatever the field's kind."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctr.features import UNKNOWN, InputLayout

Batch = dict[str, Tensor]


class FeatureEmbedding(nn.Module):
    """Embeds every field of a batch into a ``[batch, num_fields, embedding_dim]`` tensor.

    Sparse fields are looked up in their table; sequence fields are the mean of their non-padding entries
    (zeros for an empty row), read from their own or a shared table; dense vectors are projected linearly.
    Fields come in layout order: sparse, then sequence, then dense. Row 0 of every table (unknown, missing,
    padding) is a constant zero vector, so unknown values contribute nothing.
    """

    def __init__(self, *, layout: InputLayout, embedding_dim: int, init_std: float = 1e-4):
        """Create the tables and projections.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            embedding_dim: Size of every field's vector.
            init_std: Standard deviation of the normal initialisation of table rows.
        """
        super().__init__()
        self.layout = layout
        self.embedding_dim = embedding_dim
        self.tables = nn.ModuleDict(
            {name: nn.Embedding(rows, embedding_dim, padding_idx=UNKNOWN) for name, rows in layout.tables.items()}
        )
        self.projections = nn.ModuleDict(
            {name: nn.Linear(dim, embedding_dim, bias=False) for name, dim in layout.dense.items()}
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[UNKNOWN].zero_()

    @property
    def num_fields(self) -> int:
        """Number of field vectors per example."""
        return len(self.layout.sparse) + len(self.layout.sequence) + len(self.layout.dense)

    def forward(self, batch: Batch) -> Tensor:
        """Embed ``batch`` (field → ids ``[B]``, ids ``[B, L]`` or floats ``[B, dim]``) to ``[B, F, D]``."""
        sparse = [self.tables[table](batch[field]) for field, table in self.layout.sparse.items()]
        pooled = [_masked_mean(self.tables[table], batch[field]) for field, table in self.layout.sequence.items()]
        projected = [self.projections[field](batch[field]) for field in self.layout.dense]
        return torch.stack([*sparse, *pooled, *projected], dim=1)


def _masked_mean(table: nn.Embedding, ids: Tensor) -> Tensor:
    """Mean of the vectors of the non-zero ids of each row ``[B, L]`` → ``[B, D]``; zeros for an empty row.

    Written out rather than ``F.embedding_bag(mode="mean", padding_idx=0)``, whose CPU backward sorts all
    indices and is slower than this gather-and-sum for short sequences.
    """
    mask = (ids != UNKNOWN).unsqueeze(-1).to(table.weight.dtype)
    return (table(ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def deep_input(vectors: Tensor, batch: Batch, layout: InputLayout) -> Tensor:
    """Vectors ``[B, n, d]`` flattened, then the raw dense vectors: what a model's deep (MLP) part reads.

    Dense fields (knowledge) enter twice, projected among the field vectors and raw here, so a vector added by
    config reaches the deep part whole.
    """
    return torch.cat([vectors.flatten(start_dim=1), *dense_inputs(batch, layout)], dim=1)


def deep_input_size(num_vectors: int, embedding_dim: int, layout: InputLayout) -> int:
    """Width of :func:`deep_input` for ``num_vectors`` vectors of ``embedding_dim``."""
    return num_vectors * embedding_dim + sum(layout.dense.values())


def dense_inputs(batch: Batch, layout: InputLayout) -> list[Tensor]:
    """The raw dense vectors of ``batch`` in layout order, for concatenation into a DNN input."""
    return [batch[field] for field in layout.dense]
