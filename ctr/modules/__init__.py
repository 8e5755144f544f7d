"""Layers rankers are assembled from (torchrec-like: ``ctr.modules`` holds layers, ``ctr.models`` models)."""

from ctr.modules.cross import CrossNetV2
from ctr.modules.dropout import Dropout, ReLUDropout
from ctr.modules.embedding import FeatureEmbedding, deep_input, deep_input_size, dense_inputs
from ctr.modules.fm import FactorizationMachine
from ctr.modules.linear import LinearTerm
from ctr.modules.mlp import MLP
from ctr.modules.mmoe import MultiGateMixtureOfExperts
from ctr.modules.wukong import FactorizationMachineBlock, LinearCompressionBlock, WukongLayer

__all__ = [
    "MLP",
    "CrossNetV2",
    "Dropout",
    "FactorizationMachine",
    "FactorizationMachineBlock",
    "FeatureEmbedding",
    "LinearCompressionBlock",
    "LinearTerm",
    "MultiGateMixtureOfExperts",
    "ReLUDropout",
    "WukongLayer",
    "deep_input",
    "deep_input_size",
    "dense_inputs",
]
