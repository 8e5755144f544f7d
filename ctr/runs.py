"""What a training run leaves in its output directory, shared by the torch and XGBoost trainers.

``config.yaml`` and ``encoder.json`` let serving rebuild the exact inputs; ``metrics.json`` is written last,
so its presence means the run finished.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctr.config import ExperimentConfig
from ctr.features import Encoder
from kar.contracts.results import TrainMetrics

CONFIG_FILE = "config.yaml"
ENCODER_FILE = "encoder.json"
METRICS_FILE = "metrics.json"
TORCH_MODEL_FILE = "model.pt"
XGBOOST_MODEL_FILE = "model.ubj"


def prepare_run_dir(out_dir: Path, *, config: ExperimentConfig, encoder: Encoder) -> Path:
    """Create ``out_dir``, write the config and encoder, and drop an earlier run's ``metrics.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    config.save(out_dir / CONFIG_FILE)
    encoder.save(out_dir / ENCODER_FILE)
    return out_dir


def write_metrics(out_dir: Path, metrics: TrainMetrics) -> None:
    """Write ``metrics.json`` (the run's completion marker)."""
    (Path(out_dir) / METRICS_FILE).write_text(json.dumps(metrics.to_dict(), indent=2) + "\n")
