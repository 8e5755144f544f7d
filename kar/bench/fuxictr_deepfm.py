"""FuxiCTR side of ``kar bench train``: FuxiCTR's DeepFM, run by the bench's scratch venv (FuxiCTR 2.3.10, torch).

``kar.bench.train`` copies this file next to the FuxiCTR data and runs it there; it is never imported by the
project's own environment, which has no FuxiCTR. It talks JSON lines: one command on stdin
(``{"do": "epoch" | "evaluate" | "batches" | "quit"}``), one answer on stdout. Everything FuxiCTR, Ray or torch
print goes to stderr (the log), so stdout carries only answers.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

answers = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

import torch  # noqa: E402
from fuxictr import __version__ as fuxictr_version  # noqa: E402
from fuxictr.features import FeatureMap  # noqa: E402
from fuxictr.pytorch.dataloaders import RankDataLoader  # noqa: E402
from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block  # noqa: E402
from fuxictr.pytorch.models import BaseModel  # noqa: E402
from fuxictr.pytorch.torch_utils import seed_everything  # noqa: E402


class DeepFM(BaseModel):
    """DeepFM as FuxiCTR's model zoo builds it (the wheel has the layers, not the model)."""

    def __init__(
        self,
        feature_map: FeatureMap,
        *,
        embedding_dim: int,
        hidden_units: list[int],
        net_dropout: float,
        batch_norm: bool,
        learning_rate: float,
        **kw: Any,
    ) -> None:
        super().__init__(feature_map, model_id="DeepFM", **kw)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.fm = FactorizationMachine(feature_map)
        self.mlp = MLP_Block(
            input_dim=feature_map.sum_emb_out_dim(),
            output_dim=1,
            hidden_units=hidden_units,
            hidden_activations="ReLU",
            output_activation=None,
            dropout_rates=net_dropout,
            batch_norm=batch_norm,
        )
        self.compile(kw["optimizer"], kw["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs: Any) -> dict[str, torch.Tensor]:
        X = self.get_inputs(inputs)
        feature_emb = self.embedding_layer(X)
        y_pred = self.fm(X, feature_emb) + self.mlp(feature_emb.flatten(start_dim=1))
        return {"y_pred": self.output_activation(y_pred)}


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    torch.set_num_threads(config["threads"])
    seed_everything(config["seed"])
    data = config["data_dir"]
    params = dict(config["params"], model_root=os.path.join(data, "checkpoints"))
    feature_map = FeatureMap(config["dataset_id"], data)
    feature_map.load(os.path.join(data, "feature_map.json"), params)
    model = DeepFM(feature_map, **params)
    train, valid, test = RankDataLoader(
        feature_map,
        stage="both",
        train_data=os.path.join(data, "train.npz"),
        valid_data=os.path.join(data, "valid.npz"),
        test_data=os.path.join(data, "test.npz"),
        batch_size=config["batch_size"],
        shuffle=True,
        data_format="npz",
        num_workers=config["num_workers"],
    )
    # The state BaseModel.fit sets before its epochs, minus the evaluation it would run inside an epoch.
    model._steps_per_epoch, model._total_steps, model._eval_steps = len(train), 0, 2**62
    model._stop_training, model._epoch_index, model._max_gradient_norm = False, 0, 10.0
    answer = {
        "fuxictr": fuxictr_version,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_train": train.num_samples,
        "steps": len(train),
    }
    answers.write(json.dumps(answer) + "\n")
    for line in sys.stdin:
        command = json.loads(line)["do"]
        if command == "epoch":
            started = time.perf_counter()
            model.train_epoch(train)
            answer = {"seconds": time.perf_counter() - started}
            model._epoch_index += 1
        elif command == "evaluate":
            answer = {}
            for name, gen in (("val", valid), ("test", test)):
                scores = model.evaluate(gen, metrics=["AUC", "logloss"])
                answer[name] = {"auc": scores["AUC"], "logloss": scores["logloss"]}
        elif command == "batches":
            started = time.perf_counter()
            for _batch in train:
                pass
            answer = {"seconds": time.perf_counter() - started}
        else:
            break
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
