"""One embedding vector per field, whatever the field's kind."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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

    def __init__(self, *, layout: InputLayout, embedding_dim: int, init_std: float = 1e-4, first_order: bool = False):
        """Create the tables and projections.

        Args:
            layout: Table sizes and field wiring, from the fitted encoder.
            embedding_dim: Size of every field's vector.
            init_std: Standard deviation of the normal initialisation of table rows.
            first_order: Also learn one first-order weight per value (a logistic-regression term), stored as an
                extra column of the same tables, so one lookup serves both (see :meth:`with_first_order`).
        """
        super().__init__()
        self.layout = layout
        self.embedding_dim = embedding_dim
        self.first_order = first_order
        width = embedding_dim + int(first_order)
        self.tables = nn.ModuleDict(
            {name: nn.Embedding(rows, width, padding_idx=UNKNOWN) for name, rows in layout.tables.items()}
        )
        self.projections = nn.ModuleDict(
            {name: nn.Linear(dim, width, bias=False) for name, dim in layout.dense.items()}
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[UNKNOWN].zero_()
        # What _FieldLookup reads, fixed by the layout: per looked-up field, its table's index and whether it pools.
        names = list(self.tables)
        self._looked_up = (*layout.sparse, *layout.sequence)
        self._plan = tuple(
            [(names.index(table), False) for table in layout.sparse.values()]
            + [(names.index(table), True) for table in layout.sequence.values()]
        )

    @property
    def num_fields(self) -> int:
        """Number of field vectors per example."""
        return len(self.layout.sparse) + len(self.layout.sequence) + len(self.layout.dense)

    def forward(self, batch: Batch) -> Tensor:
        """Embed ``batch`` (field → ids ``[B]``, ids ``[B, L]`` or floats ``[B, dim]``) to ``[B, F, D]``."""
        return self._lookup(batch)[..., : self.embedding_dim]

    def with_first_order(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The field vectors ``[B, F, D]`` and each field's first-order weight ``[B, F]`` (``first_order=True``)."""
        if not self.first_order:
            raise ValueError("FeatureEmbedding was built without first_order=True")
        both = self._lookup(batch)
        return both[..., : self.embedding_dim], both[..., self.embedding_dim]

    def _lookup(self, batch: Batch) -> Tensor:
        parts = []
        if self._plan:
            weights = [table.weight for table in self.tables.values()]
            ids = [batch[field] for field in self._looked_up]
            parts.append(_FieldLookup.apply(self._plan, len(weights), *weights, *ids))
        if self.layout.dense:
            parts.append(torch.stack([self.projections[field](batch[field]) for field in self.layout.dense], dim=1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class _FieldLookup(torch.autograd.Function):
    """Every sparse and sequence field's vector ``[B, F, W]`` in one autograd node.

    A sparse field is its row; a sequence field the mean of its non-padding rows (``embedding_bag``'s fused
    gather-and-sum divided by the count, zeros for an empty row). The backward scatters each field's gradient
    into its table with ``index_add_`` (fields sharing a table add into the same gradient) and keeps row
    ``UNKNOWN`` free of gradient, as ``nn.Embedding(padding_idx=UNKNOWN)`` does. Same values and gradients as
    those modules, but one node per batch instead of one per field, and no index sort: ``nn.Embedding``'s and
    ``embedding_bag``'s CPU backwards sort the indices first, 2–5× slower per call at batch 1,024.
    """

    @staticmethod
    def forward(ctx: Any, fields: tuple[tuple[int, bool], ...], n_weights: int, *tensors: Tensor) -> Tensor:
        weights, ids = tensors[:n_weights], tensors[n_weights:]
        counts: list[Tensor | None] = []
        vectors = []
        for (table, pooled), field_ids in zip(fields, ids, strict=True):
            weight = weights[table]
            if pooled:
                count = field_ids.ne(UNKNOWN).sum(dim=1, keepdim=True).clamp_(min=1).to(weight.dtype)
                vectors.append(F.embedding_bag(field_ids, weight, mode="sum", padding_idx=UNKNOWN).div_(count))
            else:
                count = None
                vectors.append(weight.index_select(0, field_ids))
            counts.append(count)
        ctx.fields, ctx.counts, ctx.shapes = fields, counts, [w.shape for w in weights]
        ctx.save_for_backward(*ids)
        return torch.stack(vectors, dim=1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        ids = ctx.saved_tensors
        grads: list[Tensor | None] = [None] * len(ctx.shapes)
        for position, ((table, _), field_ids, count) in enumerate(zip(ctx.fields, ids, ctx.counts, strict=True)):
            field_grad = grad[:, position]
            if count is not None:  # every id of a row gets the row's gradient / count
                rows, length = field_ids.shape
                field_grad = (field_grad / count).unsqueeze(1).expand(rows, length, grad.shape[2])
            if grads[table] is None:
                grads[table] = grad.new_zeros(ctx.shapes[table])
            grads[table].index_add_(0, field_ids.reshape(-1), field_grad.reshape(-1, grad.shape[2]))
        for table_grad in grads:
            if table_grad is not None:
                table_grad[UNKNOWN].zero_()
        return None, None, *grads, *([None] * len(ids))


def deep_input(vectors: Tensor, batch: Batch, layout: InputLayout) -> Tensor:
    """Vectors ``[B, n, d]`` flattened, then the raw dense vectors: what a model's deep (MLP) part reads.

    Dense fields (knowledge) enter twice, projected among the field vectors and raw here, so a vector added by
    config reaches the deep part whole.
    """
    dense = dense_inputs(batch, layout)
    flat = vectors.flatten(start_dim=1)
    return torch.cat([flat, *dense], dim=1) if dense else flat  # a cat of one tensor would copy it again


def deep_input_size(num_vectors: int, embedding_dim: int, layout: InputLayout) -> int:
    """Width of :func:`deep_input` for ``num_vectors`` vectors of ``embedding_dim``."""
    return num_vectors * embedding_dim + sum(layout.dense.values())


def dense_inputs(batch: Batch, layout: InputLayout) -> list[Tensor]:
    """The raw dense vectors of ``batch`` in layout order, for concatenation into a DNN input."""
    return [batch[field] for field in layout.dense]
