"""Feed-forward block."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ctr.modules.dropout import ReLUDropout


class MLP(nn.Module):
    """Stack of ``Linear → [BatchNorm] → ReLU → [Dropout]`` layers, with an optional linear output layer."""

    def __init__(
        self,
        *,
        in_features: int,
        hidden: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        out_features: int | None = None,
    ):
        """Create the layers.

        Args:
            in_features: Size of the input vector.
            hidden: Sizes of the hidden layers, input side first.
            dropout: Dropout probability after each hidden layer (0 disables it).
            batch_norm: Whether to normalise each hidden layer before its activation.
            out_features: Size of a final linear layer without activation; None ends at the last hidden layer.
        """
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ReLUDropout(dropout) if dropout > 0 else nn.ReLU())
            width = size
        if out_features is not None:
            layers.append(nn.Linear(width, out_features))
            width = out_features
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, inputs: Tensor) -> Tensor:
        """Map ``[B, in_features]`` to ``[B, out_features]``."""
        return self.layers(inputs)
