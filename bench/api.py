"""The one public home a compression method imports from.

A method (built in under ``methods/`` or a third-party plugin) imports the harness only through
this module: the method contract (:mod:`bench.contract`) and its registry (:mod:`bench.registry`),
what ``compress`` receives (:class:`MethodContext`, cached stages via :func:`stage_meta`), the
LightGCN backbone (:mod:`bench.backbone`) and the pieces of the shared BPR training loop
(:mod:`bench.training`, :mod:`bench.sampling`). Everything else under ``bench`` is the harness's
own business and may change without notice.
"""

from bench.backbone import (
    BACKENDS,
    GraphSize,
    LightGCN,
    NormalizedGraph,
    layer_sum,
    normalized_adjacency,
    propagation_sum,
    sparse_matmul,
    unique_pairs,
)
from bench.claims import Arm, Claim
from bench.context import BaseModel, MethodContext, stage_meta
from bench.contract import (
    ARTIFACT_KINDS,
    AXES,
    AXIS_DESCRIPTIONS,
    REFERENCE,
    ArtifactPart,
    CompressedModel,
    DeviceCheck,
    Knob,
    Method,
    MethodError,
    Options,
    Target,
    TrainingCost,
    UnknownOptionError,
)
from bench.data.dataset import InteractionData
from bench.data.preprocess import sorted_unique
from bench.device import seed_everything
from bench.registry import register_method
from bench.sampling import EpochSampler, InteractionSampler, MultiNegativeSampler, NegativeSampler
from bench.training import (
    TrainConfig,
    TrainHook,
    TrainResult,
    build_lightgcn,
    evaluate_split,
    fit_bpr,
    make_adam,
)

__all__ = [
    "ARTIFACT_KINDS",
    "AXES",
    "AXIS_DESCRIPTIONS",
    "BACKENDS",
    "REFERENCE",
    "Arm",
    "ArtifactPart",
    "BaseModel",
    "Claim",
    "CompressedModel",
    "DeviceCheck",
    "EpochSampler",
    "GraphSize",
    "InteractionData",
    "InteractionSampler",
    "Knob",
    "LightGCN",
    "Method",
    "MethodContext",
    "MethodError",
    "MultiNegativeSampler",
    "NegativeSampler",
    "NormalizedGraph",
    "Options",
    "Target",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "TrainingCost",
    "UnknownOptionError",
    "build_lightgcn",
    "evaluate_split",
    "fit_bpr",
    "layer_sum",
    "make_adam",
    "normalized_adjacency",
    "propagation_sum",
    "register_method",
    "seed_everything",
    "sorted_unique",
    "sparse_matmul",
    "stage_meta",
    "unique_pairs",
]
