"""Layers rankers are assembled from (torchrec-like: ``ctr.modules`` holds layers, ``ctr.models`` models)."""

from ctr.modules.embedding import FeatureEmbedding, dense_inputs
from ctr.modules.fm import FactorizationMachine
from ctr.modules.linear import LinearTerm
from ctr.modules.mlp import MLP

__all__ = ["MLP", "FactorizationMachine", "FeatureEmbedding", "LinearTerm", "dense_inputs"]
