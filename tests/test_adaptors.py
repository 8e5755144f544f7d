"""Shapes, gates and the zero-input rule of the knowledge adaptor and its MLP/MoE variants."""

from __future__ import annotations

import pytest
import torch

from adaptors import AdaptorConfig, HybridExpertAdaptor
from kar.contracts.errors import DataError

INPUTS = {"user_knowledge": 12, "item_knowledge": 12}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _knowledge(batch: int = 5) -> dict[str, torch.Tensor]:
    return {name: torch.randn(batch, dim) for name, dim in INPUTS.items()}


@pytest.mark.parametrize(("adaptor", "experts"), [("hea", 4), ("moe", 4), ("mlp", 1)])
def test_each_variant_maps_every_type_to_out_dim(adaptor: str, experts: int) -> None:
    config = AdaptorConfig(fields=tuple(INPUTS), adaptor=adaptor, out_dim=6, hidden=(8,))
    layer = HybridExpertAdaptor.from_config(config, inputs=INPUTS)
    out = layer(_knowledge())
    assert {name: tuple(t.shape) for name, t in out.items()} == {name: (5, 6) for name in INPUTS}
    for name, vectors in _knowledge().items():
        assert layer.gate_weights(name, vectors).shape == (5, experts)
    sum(t.sum() for t in out.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_hea_has_shared_and_specific_experts_and_gates_sum_to_one_per_type() -> None:
    layer = HybridExpertAdaptor(inputs=INPUTS, out_dim=4, hidden=(8,), shared_experts=2, specific_experts=3)
    assert len(layer.shared) == 2
    assert {name: len(experts) for name, experts in layer.specific.items()} == {name: 3 for name in INPUTS}
    for name, vectors in _knowledge(64).items():
        weights = layer.gate_weights(name, vectors)
        assert weights.shape == (64, 5)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(64))


def test_output_is_the_gate_weighted_sum_of_expert_outputs() -> None:
    layer = HybridExpertAdaptor(inputs=INPUTS, out_dim=4, hidden=(8,), shared_experts=1, specific_experts=2)
    x = _knowledge(3)["item_knowledge"]
    experts = [layer.shared[0], *layer.specific["item_knowledge"]]
    expected = sum(
        w.unsqueeze(-1) * e(x) for w, e in zip(layer.gate_weights("item_knowledge", x).T, experts, strict=True)
    )
    torch.testing.assert_close(layer.adapt("item_knowledge", x), expected)


def test_specific_experts_see_only_their_type() -> None:
    layer = HybridExpertAdaptor(inputs=INPUTS, out_dim=4, hidden=(8,), shared_experts=0, specific_experts=2)
    knowledge = _knowledge()
    layer(knowledge)["user_knowledge"].sum().backward()
    assert all(p.grad is None for p in layer.specific["item_knowledge"].parameters())
    assert all(p.grad is not None for p in layer.specific["user_knowledge"].parameters())


def test_a_missing_vector_adapts_to_zeros_like_the_serving_fallback() -> None:
    layer = HybridExpertAdaptor(inputs=INPUTS, out_dim=4, hidden=(8,))
    x = _knowledge(3)["user_knowledge"]
    x[1] = 0.0
    out = layer.adapt("user_knowledge", x)
    assert torch.equal(out[1], torch.zeros(4))
    assert out[0].abs().sum() > 0 and out[2].abs().sum() > 0


def test_shared_experts_need_one_input_size() -> None:
    with pytest.raises(ValueError, match="one input size"):
        HybridExpertAdaptor(inputs={"a": 4, "b": 8}, shared_experts=1, specific_experts=1)
    # Type-specific experts alone may read vectors of different sizes.
    layer = HybridExpertAdaptor(inputs={"a": 4, "b": 8}, out_dim=3, shared_experts=0, specific_experts=1)
    assert layer({"a": torch.randn(2, 4), "b": torch.randn(2, 8)})["b"].shape == (2, 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"adaptor": "transformer"}, "not one of hea, moe, mlp"),
        ({"fields": ()}, "list the dense knowledge fields"),
        ({"shared_experts": 0, "specific_experts": 0}, "need at least one expert"),
        ({"out_dim": 0}, "at least 1"),
        ({"dropout": 1.0}, r"\[0, 1\)"),
    ],
)
def test_config_errors_name_the_key(changes: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        AdaptorConfig(**{"fields": ("user_knowledge",), **changes})


def test_variant_defaults_and_overrides() -> None:
    assert AdaptorConfig(fields=("u",)).expert_counts == (2, 2)
    assert AdaptorConfig(fields=("u",), adaptor="moe").expert_counts == (4, 0)
    assert AdaptorConfig(fields=("u",), adaptor="mlp").expert_counts == (0, 1)
    assert AdaptorConfig(fields=("u",), specific_experts=6).expert_counts == (2, 6)
