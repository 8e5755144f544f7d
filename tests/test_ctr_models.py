"""DCNv2, MMOE and Wukong: shapes and invariants of their layers, gradients, and learning a planted signal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from ctr import load_ranker, train_experiment
from ctr.config import load_config
from ctr.features import DenseField, Encoder, SparseField
from ctr.models import MMOE, DCNv2, Wukong, build_model
from ctr.modules import CrossNetV2, FeatureEmbedding, MultiGateMixtureOfExperts, WukongLayer
from ctr.modules.embedding import Batch
from ctr.testing import planted_frame
from ctr.trainer import to_tensors
from tests.test_ctr_modules import DIM, LAYOUT, _batch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _assert_finite_grads(module: nn.Module) -> None:
    """Every trainable parameter got a finite gradient (padding rows get zeros, which is fine)."""
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


# --- CrossNetV2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_features", "num_layers", "rank"), [(12, 3, None), (12, 2, 4), (5, 0, None)])
def test_cross_net_keeps_the_input_size(in_features: int, num_layers: int, rank: int | None) -> None:
    cross = CrossNetV2(in_features=in_features, num_layers=num_layers, rank=rank)
    inputs = torch.randn(4, in_features, requires_grad=True)
    out = cross(inputs)

    assert out.shape == (4, in_features) and cross.out_features == in_features
    assert len(cross.weights) == num_layers
    out.sum().backward()
    assert torch.isfinite(inputs.grad).all()
    _assert_finite_grads(cross)


@pytest.mark.parametrize("rank", [None, 3])
def test_cross_net_with_zero_weights_adds_x0_times_bias_per_layer(rank: int | None) -> None:
    cross = CrossNetV2(in_features=6, num_layers=3, rank=rank)
    biases = []
    for layer in cross.weights:
        linear = layer if rank is None else layer[1]  # the bias sits on U in the low-rank form
        with torch.no_grad():
            linear.weight.zero_()
            linear.bias.normal_()
        biases.append(linear.bias.detach().clone())
    x0 = torch.randn(4, 6)

    # x_{l+1} = x0 ⊙ (0 · x_l + b_l) + x_l, so x_L = x0 + x0 ⊙ Σ_l b_l.
    torch.testing.assert_close(cross(x0), x0 + x0 * sum(biases))


def test_cross_net_layer_is_the_dcn_v2_formula() -> None:
    cross = CrossNetV2(in_features=5, num_layers=1)
    x0 = torch.randn(3, 5)
    layer = cross.weights[0]

    torch.testing.assert_close(cross(x0), x0 * (x0 @ layer.weight.T + layer.bias) + x0)


def test_low_rank_cross_net_has_fewer_parameters() -> None:
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # Full rank: d² + d per layer; rank r: 2dr + d.
    assert count(CrossNetV2(in_features=64, num_layers=2)) == 2 * (64 * 64 + 64)
    assert count(CrossNetV2(in_features=64, num_layers=2, rank=8)) == 2 * (2 * 64 * 8 + 64)


# --- MultiGateMixtureOfExperts --------------------------------------------------------------------------


@pytest.mark.parametrize(("num_tasks", "num_experts", "hidden"), [(2, 4, [16, 8]), (1, 1, [8]), (3, 5, [6])])
def test_mmoe_mixture_shapes_and_gates_sum_to_one(num_tasks: int, num_experts: int, hidden: list[int]) -> None:
    mmoe = MultiGateMixtureOfExperts(
        in_features=10, num_tasks=num_tasks, num_experts=num_experts, expert_hidden=hidden, dropout=0.1
    )
    inputs = torch.randn(4, 10, requires_grad=True)
    mixtures = mmoe(inputs)
    gates = mmoe.gate_weights(inputs)

    assert mixtures.shape == (4, num_tasks, hidden[-1]) and mmoe.out_features == hidden[-1]
    assert gates.shape == (4, num_tasks, num_experts)
    assert (gates >= 0).all()
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(4, num_tasks))
    mixtures.sum().backward()
    _assert_finite_grads(mmoe)


def test_mmoe_mixture_is_the_gate_weighted_sum_of_experts() -> None:
    mmoe = MultiGateMixtureOfExperts(in_features=6, num_tasks=2, num_experts=3, expert_hidden=[4]).eval()
    inputs = torch.randn(5, 6)
    gates = mmoe.gate_weights(inputs)
    experts = [expert(inputs) for expert in mmoe.experts]
    expected = torch.stack([sum(gates[:, k, i : i + 1] * experts[i] for i in range(3)) for k in range(2)], dim=1)

    torch.testing.assert_close(mmoe(inputs), expected)


def test_mmoe_needs_a_task_and_an_expert() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        MultiGateMixtureOfExperts(in_features=4, num_tasks=0, num_experts=2, expert_hidden=[4])


# --- WukongLayer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "n_fm", "n_lcb", "rank"),
    [
        (9, 8, 8, 4),  # n ≠ n_F + n_L: the residual is projected
        (16, 8, 8, 8),  # n = n_F + n_L: identity residual
        (5, 2, 1, 24),  # fewer outputs than inputs, rank above n
    ],
)
def test_wukong_layer_shapes_and_residual(n: int, n_fm: int, n_lcb: int, rank: int) -> None:
    layer = WukongLayer(
        num_embeddings=n,
        embedding_dim=DIM,
        num_fm_embeddings=n_fm,
        num_lcb_embeddings=n_lcb,
        fm_rank=rank,
        fm_mlp_hidden=[32],
        dropout=0.1,
    )
    inputs = torch.randn(4, n, DIM, requires_grad=True)
    out = layer(inputs)

    assert out.shape == (4, n_fm + n_lcb, DIM) and layer.out_embeddings == n_fm + n_lcb
    assert layer.fmb(inputs).shape == (4, n_fm, DIM)
    assert layer.lcb(inputs).shape == (4, n_lcb, DIM)
    assert layer.fmb.projection(inputs).shape == (4, rank, DIM)  # (Xᵀ Y)ᵀ
    assert layer.residual(inputs).shape == (4, n_fm + n_lcb, DIM)
    assert isinstance(layer.residual, nn.Identity) == (n == n_fm + n_lcb)
    # The closing LayerNorm normalises each output embedding.
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(4, n_fm + n_lcb), atol=1e-5, rtol=0)
    out.pow(2).sum().backward()
    assert torch.isfinite(inputs.grad).all()
    _assert_finite_grads(layer)


def test_wukong_fm_block_interactions_are_x_times_xt_y() -> None:
    layer = WukongLayer(
        num_embeddings=4, embedding_dim=3, num_fm_embeddings=2, num_lcb_embeddings=2, fm_rank=5, fm_mlp_hidden=[]
    )
    x = torch.randn(2, 4, 3)
    y = layer.fmb.projection.weight.weight.T  # Y: [n, k]
    interactions = x @ x.transpose(1, 2) @ y  # the unoptimised X Xᵀ Y, [B, n, k]
    expected = layer.fmb.mlp(layer.fmb.norm(interactions.flatten(start_dim=1))).view(2, 2, 3)

    torch.testing.assert_close(layer.fmb(x), expected)


# --- Models ---------------------------------------------------------------------------------------------


def _layout_batch(embedding_dim: int = DIM) -> tuple[int, Batch]:
    """Number of field vectors of :data:`LAYOUT` and a batch of 3 examples."""
    return FeatureEmbedding(layout=LAYOUT, embedding_dim=embedding_dim).num_fields, _batch()


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
@pytest.mark.parametrize(("dnn_hidden", "rank"), [((32, 16), None), ((), 4)])
def test_dcnv2_forward_backward(structure: str, dnn_hidden: tuple[int, ...], rank: int | None) -> None:
    num_fields, batch = _layout_batch()
    model = DCNv2(
        layout=LAYOUT,
        embedding_dim=DIM,
        structure=structure,
        num_cross_layers=2,
        cross_rank=rank,
        dnn_hidden=dnn_hidden,
        batch_norm=True,
    )
    logits = model(batch)

    assert logits.shape == (3,)
    x0_size = num_fields * DIM + 4  # field vectors (the projected knowledge one included), then the raw vector
    assert model.cross.out_features == x0_size
    # An empty DNN is the identity: the cross network alone (stacked) or twice over (parallel).
    dnn_out = dnn_hidden[-1] if dnn_hidden else x0_size
    assert model.head.in_features == dnn_out + (x0_size if structure == "parallel" else 0)
    logits.sum().backward()
    _assert_finite_grads(model)


def test_dcnv2_rejects_unknown_structure() -> None:
    with pytest.raises(ValueError, match="stacked, parallel"):
        DCNv2(layout=LAYOUT, structure="crossnet_only")


@pytest.mark.parametrize("tasks", [("click", "love"), ("click",), ("click", "love", "other")])
def test_mmoe_model_returns_one_logit_per_task(tasks: tuple[str, ...]) -> None:
    num_fields, batch = _layout_batch()
    model = MMOE(
        layout=LAYOUT,
        tasks=list(tasks),
        embedding_dim=DIM,
        num_experts=3,
        expert_hidden=[16, 8],
        tower_hidden=[4],
        batch_norm=True,
    )
    logits = model(batch)

    assert model.tasks == tasks
    assert logits.shape == (3, len(tasks))
    assert model.mmoe.experts[0].layers[0].in_features == num_fields * DIM + 4
    # Train every task jointly, as the multi-task trainer does: mean BCE over examples and tasks.
    labels = torch.tensor([[1.0] * len(tasks), [0.0] * len(tasks), [1.0] * len(tasks)])
    nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    _assert_finite_grads(model)


def test_mmoe_rejects_empty_or_repeated_tasks() -> None:
    for tasks in ((), ("click", "click")):
        with pytest.raises(ValueError, match="distinct and at least one"):
            MMOE(layout=LAYOUT, tasks=tasks)


@pytest.mark.parametrize(("num_layers", "n_fm", "n_lcb"), [(2, 8, 8), (3, 4, 2), (1, 3, 2)])
def test_wukong_forward_backward(num_layers: int, n_fm: int, n_lcb: int) -> None:
    num_fields, batch = _layout_batch()
    model = Wukong(
        layout=LAYOUT,
        embedding_dim=DIM,
        num_layers=num_layers,
        num_fm_embeddings=n_fm,
        num_lcb_embeddings=n_lcb,
        fm_rank=4,
        fm_mlp_hidden=[16],
        dnn_hidden=[16],
        batch_norm=True,
    )
    logits = model(batch)

    assert logits.shape == (3,)
    assert len(model.interactions) == num_layers
    # Only the first layer sees the field count; later ones see n_F + n_L embeddings.
    assert model.interactions[0].fmb.norm.normalized_shape == (num_fields * 4,)
    assert isinstance(model.interactions[0].residual, nn.Identity) == (num_fields == n_fm + n_lcb)
    assert model.dnn.layers[0].in_features == (n_fm + n_lcb) * DIM + 4
    logits.sum().backward()
    _assert_finite_grads(model)


@pytest.mark.parametrize("name", ["dcnv2", "mmoe", "wukong"])
def test_models_read_an_encoded_frame_with_a_knowledge_vector(name: str) -> None:
    frame = planted_frame(n_users=20, n_items=15, n_rows=64, dense_dim=4)
    config = load_config(f"{name}_synthetic")
    spec = replace(
        config.features,
        sparse=(*config.features.sparse, SparseField(name="has_user_knowledge")),
        dense=(DenseField(name="user_knowledge"),),
    )
    encoder = Encoder.fit(frame, spec=spec)
    model = build_model(name, layout=encoder.layout, **config.model_params)
    logits = model(to_tensors(encoder.transform(frame)))

    assert logits.shape == ((64, len(model.tasks)) if name == "mmoe" else (64,))
    logits.sum().backward()
    for table_name, table in model.embedding.tables.items():
        assert table.weight.grad.abs().sum() > 0, table_name
    assert model.embedding.projections["user_knowledge"].weight.grad.abs().sum() > 0


# --- Training -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    # With knowledge vectors: the bundled experiments read them through the hybrid-expert adaptor.
    return planted_frame(n_users=60, n_items=40, n_rows=4000, dense_dim=8, seed=0)


@pytest.mark.parametrize("name", ["dcnv2", "wukong"])
def test_bundled_synthetic_model_learns_planted_signal(name: str, frame: pd.DataFrame, tmp_path: Path) -> None:
    config = load_config(f"{name}_synthetic")
    # Tiny frames need more, smaller steps than the bundled real-data settings. One thread: at this size a
    # second one mostly waits, and on a busy machine its spinning makes the run several times slower.
    train = replace(config.train, batch_size=128, lr=1e-2, epochs=4, num_threads=1)
    metrics = train_experiment(frame, replace(config, train=train), tmp_path)

    assert metrics.model == name
    assert metrics.test["auc"] > 0.6


def test_mmoe_trains_click_and_love_and_selects_on_click(frame: pd.DataFrame, tmp_path: Path) -> None:
    config = load_config("mmoe_synthetic")
    train = replace(config.train, batch_size=128, lr=1e-2, epochs=4, num_threads=1)
    metrics = train_experiment(frame, replace(config, train=train), tmp_path)

    assert set(metrics.test) == {"auc", "logloss", "love_auc", "love_logloss"}
    assert metrics.test["auc"] > 0.6
    ranker = load_ranker(tmp_path)
    assert ranker.predict(frame.head(7)).shape == (7,)  # serving scores the click task
