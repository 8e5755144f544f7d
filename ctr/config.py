"""Experiment configs: one YAML per model and dataset (FuxiCTR-style), shipped in ``kar/configs/experiments``.

Example (``deepfm_movielens-1m.yaml``)::

    model: deepfm
    dataset: movielens-1m
    seed: 2024
    features:
      sparse: [user_id, item_id, gender, age, occupation, zip_code, year]
      sequence:
        - {name: hist_item_ids, max_len: 10, share: item_id}
        - {name: genres, max_len: 6}
      dense: []
    model_params: {embedding_dim: 16, dnn_hidden: [256, 128, 64], dropout: 0.1}
    train: {batch_size: 2048, lr: 1.0e-3, epochs: 20, patience: 2}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from adaptors import AdaptorConfig
from ctr._mapping import from_mapping
from ctr.features import DenseField, FeatureSpec
from kar.contracts.config_files import load_yaml
from kar.contracts.errors import DataError
from kar.contracts.tables import OPTIONAL_KINDS

# Experiment YAMLs bundled with the package (package data of ``kar``).
BUNDLED_DIR = Path(str(resources.files("kar") / "configs" / "experiments"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings of the torch trainer (XGBoost reads only ``num_threads``).

    Attributes:
        batch_size: Training examples per Adam step.
        eval_batch_size: Examples per forward pass when scoring val/test.
        lr: Adam learning rate.
        epochs: Maximum number of passes over the train split.
        patience: Epochs without a better validation AUC before stopping.
        embedding_l2: L2 penalty (Adam weight decay) on embedding tables.
        weight_decay: L2 penalty (Adam weight decay) on all other parameters.
        num_threads: torch/XGBoost CPU threads.
    """

    batch_size: int = 2048
    eval_batch_size: int = 16384
    lr: float = 1e-3
    epochs: int = 20
    patience: int = 2
    embedding_l2: float = 0.0
    weight_decay: float = 0.0
    num_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "epochs", "patience", "num_threads"):
            if getattr(self, name) < 1:
                raise DataError(f"train.{name}: must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise DataError(f"train.lr: must be positive, got {self.lr}")
        for name in ("embedding_l2", "weight_decay"):
            if getattr(self, name) < 0:
                raise DataError(f"train.{name}: must not be negative, got {getattr(self, name)}")


OPTIONAL_KNOWLEDGE_FIELDS = tuple(f"{kind}_knowledge" for kind in OPTIONAL_KINDS)
"""Knowledge fields an experiment may add without listing them (the Feast views of optional knowledge kinds)."""


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One ranker trained on one dataset.

    Attributes:
        model: ``xgboost`` or a name registered in ``ctr.models.MODELS``.
        features: The fields the model reads.
        model_params: Hyper-parameters passed to the model (constructor keywords, or XGBoost settings).
        train: Optimisation settings.
        seed: Seeds Python, numpy, torch and XGBoost; equal seeds give equal metrics.
        dataset: Name of the prepared dataset the experiment is meant for (informational for ``ctr``).
        knowledge: Which dense fields are knowledge vectors and the adaptor that projects them before the
            model reads them (None: dense fields go to the model as they are).
        inputs: For a model named by import path (``team.ranker:TeamRanker``): what its ``forward`` receives,
            in order (feature fields, or ``dense``); see ``ctr.models.external``.
    """

    model: str
    features: FeatureSpec
    model_params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 2024
    dataset: str | None = None
    knowledge: AdaptorConfig | None = None
    inputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.knowledge is None:
            return
        dense = {f.name for f in self.features.dense}
        for name in self.knowledge.fields:
            if name not in dense:
                raise DataError(f"knowledge.fields: {name!r} is not a dense field of the feature spec")

    @property
    def knowledge_fields(self) -> tuple[str, ...]:
        """The dense fields holding knowledge: the adaptor's, else those named ``*_knowledge`` (XGBoost)."""
        if self.knowledge is not None:
            return self.knowledge.fields
        return tuple(f.name for f in self.features.dense if f.name.endswith("_knowledge"))

    def with_knowledge(self, fields: Sequence[str] = (), *, adaptor: str | None = None) -> ExperimentConfig:
        """This experiment reading only the knowledge ``fields`` (none: no knowledge), for ablations.

        Args:
            fields: Knowledge fields to keep (a subset of :attr:`knowledge_fields`), plus any optional knowledge
                field (:data:`OPTIONAL_KNOWLEDGE_FIELDS`: ``kerec_knowledge``), added as a dense field that the
                adaptor takes as one more type, with its own specific experts.
            adaptor: ``hea``, ``moe`` or ``mlp`` to adapt them, or None to feed the raw vectors (XGBoost). Sizes
                and dropout are kept; expert counts are the variant's defaults when the variant changes.

        Raises:
            DataError: If a field is neither one of this experiment's knowledge fields nor an optional one.
        """
        known = (*self.knowledge_fields, *(f for f in OPTIONAL_KNOWLEDGE_FIELDS if f not in self.knowledge_fields))
        unknown = [name for name in fields if name not in known]
        if unknown:
            raise DataError(f"{unknown[0]!r} is not a knowledge field ({', '.join(known)})")
        dense = tuple(f for f in self.features.dense if f.name in fields or f.name not in self.knowledge_fields)
        present = {f.name for f in dense}
        dense += tuple(DenseField(name=name) for name in fields if name not in present)
        knowledge = None
        if fields and adaptor is not None:
            base = self.knowledge or AdaptorConfig(fields=tuple(fields))
            if adaptor != base.adaptor:
                # Counts set for one variant (2 + 2 for hea) would turn mlp or moe back into it.
                base = replace(base, shared_experts=None, specific_experts=None)
            knowledge = replace(base, fields=tuple(fields), adaptor=adaptor)
        return replace(self, features=replace(self.features, dense=dense), knowledge=knowledge)

    @classmethod
    def from_dict(cls, raw: Any, *, where: str = "config") -> ExperimentConfig:
        """Build from a parsed YAML mapping.

        Raises:
            DataError: Naming the offending key path.
        """
        return from_mapping(
            cls,
            raw,
            where=where,
            nested={
                "features": lambda value, path: FeatureSpec.from_dict(value, where=path),
                "train": lambda value, path: from_mapping(TrainConfig, value, where=path),
                "knowledge": lambda value, path: (
                    None if value is None else from_mapping(AdaptorConfig, value, where=path)
                ),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The mapping :meth:`from_dict` reads (YAML-ready)."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "seed": self.seed,
            "features": self.features.to_dict(),
            "model_params": self.model_params,
            "train": asdict(self.train),
            "knowledge": None if self.knowledge is None else _yaml_ready(asdict(self.knowledge)),
            **({"inputs": list(self.inputs)} if self.inputs is not None else {}),
        }

    def save(self, path: Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _yaml_ready(value: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists: ``yaml.safe_dump`` cannot write tuples."""
    return {key: list(item) if isinstance(item, tuple) else item for key, item in value.items()}


def load_config(source: str | Path) -> ExperimentConfig:
    """Load an experiment from a YAML path or the name of a bundled one (``deepfm_movielens-1m``).

    Raises:
        DataError: If the file is missing or invalid, naming the file and the key.
    """
    path = Path(source)
    if not path.exists() and (BUNDLED_DIR / f"{source}.yaml").exists():
        path = BUNDLED_DIR / f"{source}.yaml"
    if not path.is_file():
        raise DataError(f"{source}: no such experiment file or bundled experiment ({', '.join(bundled_experiments())})")
    raw = load_yaml(path)
    try:
        return ExperimentConfig.from_dict(raw)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def bundled_experiments() -> list[str]:
    """Names of the experiment YAMLs shipped with the package."""
    return sorted(path.stem for path in BUNDLED_DIR.glob("*.yaml"))
