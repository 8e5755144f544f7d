"""KAR's hybrid-expert adaptor (HEA): knowledge vectors → compact augmented vectors for a ranker.

Per knowledge type *t* (user reasoning, item facts, KERec…) with input vector ``x_t``:

    α_t = softmax(W_t x_t)                                    # one gate per type
    a_t = Σ_i α_t,i · e_i(x_t),   e_i ∈ shared experts ∪ experts specific to t

Experts are small MLPs (``in → hidden → out``). Shared experts see every type and learn what the types have in
common; specific experts see one type. The ablation variants of the KAR paper are the same layer with other
expert counts, so one class serves all three:

* ``hea``: 2 shared + 2 specific experts per type (KAR used 2 shared and 2–6 specific);
* ``moe``: a pool of shared experts with one gate per type, nothing type-specific;
* ``mlp``: one specific expert per type, no gate (its softmax over a single expert is 1).

Each type's output depends on its own input only, which is what lets ``kar adapt export`` pre-compute one vector
per user and per item (KAR's pre-storage) and serving skip the encoder and the adaptor.
An all-zero input vector (an entity without knowledge) maps to a zero output, so a ranker sees a missing vector
the same way offline and online, where the Feast lookup falls back to zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kar.contracts.errors import DataError
from kar.contracts.tables import ADAPTED_DIM

ADAPTORS = ("hea", "moe", "mlp")
# (shared, specific) expert counts of each variant when the config does not set them.
DEFAULT_EXPERTS = {"hea": (2, 2), "moe": (4, 0), "mlp": (0, 1)}


@dataclass(frozen=True, kw_only=True)
class AdaptorConfig:
    """How knowledge vectors are adapted; the ``knowledge`` section of an experiment config.

    Attributes:
        fields: Dense fields of the feature spec that hold knowledge vectors, one knowledge type each.
        adaptor: ``hea``, ``moe`` or ``mlp``.
        out_dim: Size of each type's adapted vector (the ``*_knowledge_adapted`` views declare 32).
        hidden: Hidden layer sizes of every expert.
        shared_experts: Experts shared by all types (None: the variant's default).
        specific_experts: Experts per type (None: the variant's default).
        dropout: Dropout after each hidden layer of an expert.
    """

    fields: tuple[str, ...]
    adaptor: str = "hea"
    out_dim: int = ADAPTED_DIM
    hidden: tuple[int, ...] = (128,)
    shared_experts: int | None = None
    specific_experts: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.adaptor not in ADAPTORS:
            raise DataError(f"knowledge.adaptor: {self.adaptor!r} is not one of {', '.join(ADAPTORS)}")
        if not self.fields:
            raise DataError("knowledge.fields: list the dense knowledge fields to adapt")
        if self.out_dim < 1 or any(size < 1 for size in self.hidden):
            raise DataError("knowledge.out_dim and knowledge.hidden: sizes must be at least 1")
        shared, specific = self.expert_counts
        if shared < 0 or specific < 0 or shared + specific < 1:
            raise DataError(f"knowledge: {shared} shared + {specific} specific experts; need at least one expert")
        if not 0 <= self.dropout < 1:
            raise DataError(f"knowledge.dropout: must be in [0, 1), got {self.dropout}")

    @property
    def expert_counts(self) -> tuple[int, int]:
        """``(shared, specific)`` experts, the variant's defaults where the config leaves them unset."""
        shared, specific = DEFAULT_EXPERTS.get(self.adaptor, (0, 1))
        return (
            shared if self.shared_experts is None else self.shared_experts,
            specific if self.specific_experts is None else self.specific_experts,
        )


class Expert(nn.Module):
    """``Linear → ReLU → [Dropout] → … → Linear``: one expert of the adaptor."""

    def __init__(self, *, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0):
        """Create the layers.

        Args:
            in_dim: Size of the knowledge vector.
            hidden: Hidden layer sizes.
            out_dim: Size of the output vector.
            dropout: Dropout probability after each hidden layer.
        """
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: Tensor) -> Tensor:
        """Map ``[B, in_dim]`` to ``[B, out_dim]``."""
        return self.layers(inputs)


class HybridExpertAdaptor(nn.Module):
    """Shared and type-specific experts mixed by one softmax gate per knowledge type (KAR §3.3)."""

    def __init__(
        self,
        *,
        inputs: Mapping[str, int],
        out_dim: int = ADAPTED_DIM,
        hidden: Sequence[int] = (128,),
        shared_experts: int = 2,
        specific_experts: int = 2,
        dropout: float = 0.0,
    ):
        """Create the experts and gates.

        Args:
            inputs: Knowledge type → size of its vectors. Shared experts read every type, so with shared experts
                all types must have one size.
            out_dim: Size of each type's adapted vector.
            hidden: Hidden layer sizes of every expert.
            shared_experts: Number of experts every type uses.
            specific_experts: Number of experts of each type.
            dropout: Dropout after each hidden layer of an expert.

        Raises:
            ValueError: If there is no expert, or shared experts would read vectors of different sizes.
        """
        super().__init__()
        if shared_experts + specific_experts < 1:
            raise ValueError("the adaptor needs at least one expert")
        sizes = set(inputs.values())
        if shared_experts and len(sizes) > 1:
            raise ValueError(f"shared experts need one input size for all types, got {dict(inputs)}")
        self.inputs = dict(inputs)
        self.types = tuple(inputs)
        self.out_dim = out_dim

        def expert(in_dim: int) -> Expert:
            return Expert(in_dim=in_dim, hidden=hidden, out_dim=out_dim, dropout=dropout)

        self.shared = nn.ModuleList([expert(next(iter(sizes))) for _ in range(shared_experts)])
        self.specific = nn.ModuleDict(
            {name: nn.ModuleList([expert(dim) for _ in range(specific_experts)]) for name, dim in inputs.items()}
        )
        n_experts = shared_experts + specific_experts
        # A single expert needs no gate: its softmax weight is 1 whatever the input.
        self.gates = nn.ModuleDict(
            {name: nn.Linear(dim, n_experts) for name, dim in inputs.items()} if n_experts > 1 else {}
        )

    @classmethod
    def from_config(cls, config: AdaptorConfig, *, inputs: Mapping[str, int]) -> HybridExpertAdaptor:
        """The adaptor an experiment's ``knowledge`` section describes."""
        shared, specific = config.expert_counts
        return cls(
            inputs=inputs,
            out_dim=config.out_dim,
            hidden=config.hidden,
            shared_experts=shared,
            specific_experts=specific,
            dropout=config.dropout,
        )

    def gate_weights(self, name: str, inputs: Tensor) -> Tensor:
        """Softmax weights ``[B, n_experts]`` of type ``name`` over its shared then specific experts."""
        if name not in self.gates:
            return inputs.new_ones(len(inputs), 1)
        return torch.softmax(self.gates[name](inputs), dim=-1)

    def adapt(self, name: str, inputs: Tensor) -> Tensor:
        """The adapted vectors ``[B, out_dim]`` of knowledge type ``name`` (zeros where a row is all zeros)."""
        experts = [*self.shared, *self.specific[name]]
        outputs = torch.stack([e(inputs) for e in experts], dim=1)  # [B, n_experts, out_dim]
        mixed = (self.gate_weights(name, inputs).unsqueeze(-1) * outputs).sum(dim=1)
        present = inputs.ne(0).any(dim=-1, keepdim=True)
        return mixed * present.to(mixed.dtype)

    def forward(self, knowledge: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Adapt every type present in ``knowledge`` (type → ``[B, in_dim]``) to ``[B, out_dim]``."""
        return {name: self.adapt(name, vectors) for name, vectors in knowledge.items()}
