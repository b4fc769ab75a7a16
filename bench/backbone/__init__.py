"""The LightGCN backbone every method builds on: the normalised user-item graph and the model."""

from bench.backbone.graph import (
    BACKENDS,
    GraphSize,
    NormalizedGraph,
    normalized_adjacency,
    sparse_matmul,
    unique_pairs,
)
from bench.backbone.lightgcn import LightGCN, layer_sum, propagation_sum

__all__ = [
    "BACKENDS",
    "GraphSize",
    "LightGCN",
    "NormalizedGraph",
    "layer_sum",
    "normalized_adjacency",
    "propagation_sum",
    "sparse_matmul",
    "unique_pairs",
]
