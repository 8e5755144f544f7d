"""Forward and backward shapes of every layer and of DeepFM; gradients reach the embedding tables."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ctr.features import Encoder, FeatureSpec, InputLayout
from ctr.models import DeepFM, build_model
from ctr.modules import MLP, Dropout, FactorizationMachine, FeatureEmbedding, LinearTerm, ReLUDropout
from ctr.testing import planted_frame
from ctr.trainer import to_tensors

LAYOUT = InputLayout(
    tables={"item": 6, "gender": 3, "genres": 5},
    sparse={"item": "item", "gender": "gender"},
    sequence={"history": "item", "genres": "genres"},
    dense={"knowledge": 4},
)
DIM = 8


def _batch() -> dict[str, torch.Tensor]:
    return {
        "item": torch.tensor([1, 2, 0]),
        "gender": torch.tensor([1, 0, 2]),
        "history": torch.tensor([[3, 4, 0], [0, 0, 0], [5, 0, 0]]),
        "genres": torch.tensor([[1, 2], [3, 0], [0, 0]]),
        "knowledge": torch.randn(3, 4),
    }


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_feature_embedding_shapes_and_masked_mean_pooling() -> None:
    embedding = FeatureEmbedding(layout=LAYOUT, embedding_dim=DIM, init_std=1.0)
    batch = _batch()
    fields = embedding(batch)

    assert fields.shape == (3, embedding.num_fields, DIM) == (3, 5, DIM)
    items = embedding.tables["item"].weight
    torch.testing.assert_close(fields[0, 0], items[1])
    torch.testing.assert_close(fields[1, 1], torch.zeros(DIM))  # unknown gender
    torch.testing.assert_close(fields[0, 2], (items[3] + items[4]) / 2)  # padding left out of the mean
    torch.testing.assert_close(fields[1, 2], torch.zeros(DIM))  # empty history
    torch.testing.assert_close(fields[:, 4], embedding.projections["knowledge"](batch["knowledge"]))


def test_feature_embedding_backward_reaches_shared_table_but_not_padding_row() -> None:
    embedding = FeatureEmbedding(layout=LAYOUT, embedding_dim=DIM)
    embedding(_batch()).sum().backward()

    item_grad = embedding.tables["item"].weight.grad
    assert item_grad.shape == (6, DIM)
    assert item_grad[[1, 2, 3, 4, 5]].abs().sum(dim=1).gt(0).all()  # 3-5 only via the shared history
    assert item_grad[0].abs().sum() == 0
    assert embedding.projections["knowledge"].weight.grad.shape == (DIM, 4)


def test_feature_embedding_equals_nn_embedding_lookups_in_values_and_gradients() -> None:
    """The one-node lookup against the plain modules: ``nn.Embedding(padding_idx=0)`` rows and
    ``F.embedding_bag(mode="mean", padding_idx=0)`` means, the history sharing the item table."""
    embedding = FeatureEmbedding(layout=LAYOUT, embedding_dim=DIM, init_std=1.0)
    reference = {name: torch.nn.Embedding(rows, DIM, padding_idx=0) for name, rows in LAYOUT.tables.items()}
    for name, table in reference.items():
        table.load_state_dict(embedding.tables[name].state_dict())
    # Repeated ids within a row, across rows and across the two fields sharing the item table.
    batch = {**_batch(), "history": torch.tensor([[3, 3, 0], [1, 0, 0], [5, 1, 1]])}
    upstream = torch.randn(3, 5, DIM)

    out = embedding(batch)
    expected = torch.stack(
        [
            reference["item"](batch["item"]),
            reference["gender"](batch["gender"]),
            F.embedding_bag(batch["history"], reference["item"].weight, mode="mean", padding_idx=0),
            F.embedding_bag(batch["genres"], reference["genres"].weight, mode="mean", padding_idx=0),
        ],
        dim=1,
    )
    (out * upstream).sum().backward()
    (expected * upstream[:, :4]).sum().backward()

    torch.testing.assert_close(out[:, :4], expected)
    for name, table in reference.items():
        torch.testing.assert_close(embedding.tables[name].weight.grad, table.weight.grad)


def test_first_order_column_shares_the_lookup_and_stays_apart_from_the_vectors() -> None:
    embedding = FeatureEmbedding(layout=LAYOUT, embedding_dim=DIM, init_std=1.0, first_order=True)
    batch = _batch()
    fields, first_order = embedding.with_first_order(batch)

    assert fields.shape == (3, 5, DIM) and first_order.shape == (3, 5)
    torch.testing.assert_close(fields, embedding(batch))
    torch.testing.assert_close(first_order[0, 0], embedding.tables["item"].weight[1, DIM])
    torch.testing.assert_close(first_order[0, 2], embedding.tables["item"].weight[[3, 4], DIM].mean())
    with pytest.raises(ValueError, match="first_order"):
        FeatureEmbedding(layout=LAYOUT, embedding_dim=DIM).with_first_order(batch)


def test_dropout_zeroes_at_rate_p_keeps_the_mean_and_is_identity_in_eval() -> None:
    dropout = Dropout(0.2)
    inputs = torch.ones(512, 256)

    out = dropout(inputs)
    assert out.shape == inputs.shape
    assert abs(out.eq(0).float().mean().item() - 0.2) < 0.01
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.8, abs=1e-4)]  # p is quantised to 1/65536
    assert abs(out.mean().item() - 1.0) < 0.02
    assert dropout.eval()(inputs) is inputs


def test_dropout_masks_are_reproducible_from_the_seed_and_fresh_per_call() -> None:
    dropout, inputs = Dropout(0.5), torch.ones(64, 32, requires_grad=True)
    torch.manual_seed(7)
    first, second = dropout(inputs), dropout(inputs)
    torch.manual_seed(7)

    torch.testing.assert_close(dropout(inputs), first)
    assert not torch.equal(first, second)
    first.sum().backward()
    torch.testing.assert_close(inputs.grad, first.detach())  # gradient is the same scaled mask


def test_relu_dropout_equals_relu_then_dropout_in_values_gradients_and_draws() -> None:
    inputs = torch.randn(64, 256, requires_grad=True)
    upstream = torch.randn(64, 256)
    torch.manual_seed(3)
    reference = Dropout(0.2)(torch.relu(inputs))
    (reference * upstream).sum().backward()
    expected_grad, inputs.grad = inputs.grad, None
    torch.manual_seed(3)
    fused = ReLUDropout(0.2)

    out = fused(inputs)
    (out * upstream).sum().backward()

    assert torch.equal(out, reference) and torch.equal(inputs.grad, expected_grad)
    assert out.eq(0).float().mean().item() > 0.5  # about half negative, then 20% of the rest dropped
    assert torch.equal(fused.eval()(inputs), torch.relu(inputs))


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_rejects_probabilities_outside_zero_one(p: float) -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


def test_factorization_machine_equals_sum_of_pairwise_dot_products() -> None:
    fields = torch.randn(3, 5, DIM, requires_grad=True)
    out = FactorizationMachine()(fields)
    expected = sum((fields[:, i] * fields[:, j]).sum(dim=1) for i, j in itertools.combinations(range(5), 2))

    assert out.shape == (3,)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert fields.grad.shape == fields.shape


@pytest.mark.parametrize(("batch_norm", "out_features", "width"), [(False, None, 16), (True, 1, 1)])
def test_mlp_shapes(batch_norm: bool, out_features: int | None, width: int) -> None:
    mlp = MLP(in_features=10, hidden=[32, 16], dropout=0.1, batch_norm=batch_norm, out_features=out_features)
    inputs = torch.randn(4, 10, requires_grad=True)
    out = mlp(inputs)

    assert out.shape == (4, width) and mlp.out_features == width
    out.sum().backward()
    assert inputs.grad.shape == (4, 10)
    assert all(p.grad is not None for p in mlp.parameters())


def test_linear_term_is_one_logit_per_example() -> None:
    linear = LinearTerm(layout=LAYOUT)
    out = linear(_batch())

    assert out.shape == (3,)
    out.sum().backward()
    assert linear.bias.grad.shape == (1,)
    assert linear.weights.tables["genres"].weight.grad.shape == (5, 1)


def test_deepfm_forward_backward_on_encoded_frame() -> None:
    frame = planted_frame(n_users=20, n_items=15, n_rows=64, dense_dim=4)
    spec = FeatureSpec.from_dict(
        {
            "sparse": [
                "user_id",
                "item_id",
                "gender",
                "age",
                "occupation",
                "zip_code",
                "year",
                "has_user_knowledge",
            ],
            "sequence": [
                {"name": "hist_item_ids", "max_len": 10, "share": "item_id"},
                {"name": "genres", "max_len": 3},
            ],
            "dense": ["user_knowledge"],
        }
    )
    encoder = Encoder.fit(frame, spec=spec)
    model = build_model("deepfm", layout=encoder.layout, embedding_dim=DIM, dnn_hidden=[32, 16])
    logits = model(to_tensors(encoder.transform(frame)))

    assert isinstance(model, DeepFM)
    assert logits.shape == (64,)
    logits.sum().backward()
    for name, table in model.embedding.tables.items():
        assert table.weight.grad.abs().sum() > 0, name
    assert model.embedding.projections["user_knowledge"].weight.grad.abs().sum() > 0
    # 10 categorical fields and the projected vector, then the raw vector.
    assert model.dnn.layers[0].in_features == 11 * DIM + 4
