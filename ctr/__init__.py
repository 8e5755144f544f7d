"""CTR rankers (DeepFM, ...) and an XGBoost baseline trained on the Feast training frame."""

from ctr.config import ExperimentConfig, load_config
from ctr.experiment import check_experiment, load_ranker, train_experiment
from ctr.features import Encoder, FeatureSpec
from ctr.progress import ProgressEvent

__all__ = [
    "Encoder",
    "ExperimentConfig",
    "FeatureSpec",
    "ProgressEvent",
    "check_experiment",
    "load_config",
    "load_ranker",
    "train_experiment",
]
