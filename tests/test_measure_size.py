"""Achieved sizes: the bits breakdown of an artifact equals a hand count; achieved ratios."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.backbone.graph import normalized_adjacency
from bench.backbone.lightgcn import LightGCN
from bench.contract import ArtifactPart, CompressedModel, MethodError
from bench.measure.size import achieved_compression, artifact_sizes


def test_bits_breakdown_of_a_small_artifact_equals_the_hand_count():
    parts = [
        # 10 kept float32 values of a sparse table, their int32 column indices, a 3-bit packed code
        ArtifactPart("table.values", "values", torch.zeros(10)),
        ArtifactPart("table.indices", "indices", torch.zeros(10, dtype=torch.int32)),
        ArtifactPart("codes", "assignment", torch.zeros(7, 2, dtype=torch.int64), bits_per_element=3),
        ArtifactPart("codebook", "codebook", torch.zeros(4, 5, dtype=torch.float16)),
        ArtifactPart("mask", "mask", torch.zeros(6, 8, dtype=torch.bool)),
        ArtifactPart("scale", "scale", torch.zeros(2, dtype=torch.float64)),
        ArtifactPart("edge_weights", "graph", torch.zeros(5)),
    ]
    sizes = artifact_sizes(parts, n_graph_edges=9)
    assert sizes["bits_values"] == 10 * 32
    assert sizes["bits_indices"] == 10 * 32
    assert sizes["bits_assignment"] == 14 * 3
    assert sizes["bits_codebook"] == 20 * 16
    assert sizes["bits_mask"] == 48 * 1
    assert sizes["bits_scale"] == 2 * 64
    assert sizes["bits_graph"] == 5 * 32 + 9 * 2 * 32
    assert sizes["bits"] == 320 + 320 + 42 + 320 + 48 + 128
    assert sizes["params"] == 10 + 20  # values and codebook entries
    assert sizes["params_fp32"] == 10 + 20 * 16 / 32  # the float16 codebook counts half


def test_param_flag_overrides_the_kind_default():
    parts = [ArtifactPart("w", "assignment", torch.zeros(3, 4), param=True),
             ArtifactPart("v", "values", torch.zeros(5), param=False)]
    assert artifact_sizes(parts)["params"] == 12


def test_bad_parts_are_rejected():
    with pytest.raises(MethodError, match="unknown kind 'weights'"):
        ArtifactPart("w", "weights", torch.zeros(1))
    with pytest.raises(MethodError, match="names must be unique"):
        CompressedModel(torch.nn.Module(), [ArtifactPart("a", "values", torch.zeros(1))] * 2, None, 0)


def test_achieved_ratios_of_a_pruned_lightgcn():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, 20, 150), rng.integers(0, 30, 150)], 1), axis=0)
    keep = pairs[: len(pairs) // 2]
    graph = normalized_adjacency(20, 30, keep[:, 0], keep[:, 1])
    model = LightGCN(20, 30, 8, 2, graph)
    parts = [ArtifactPart("user_emb", "values", model.user_emb.detach()[:, :2]),
             ArtifactPart("item_emb", "values", model.item_emb.detach()[:, :2])]
    out = achieved_compression(CompressedModel(model, parts, graph, 2), 20, 30, len(pairs), base_dim=8)
    assert out["emb_achieved"] == 0.25
    assert out["edges"] == len(keep)
    assert out["edge_achieved"] == len(keep) / len(pairs)
    assert out["layers"] == 2
    assert out["bits_graph"] == 64 * len(keep)
    assert out["bits"] == 32 * 2 * 50


def test_emb_achieved_counts_quantised_parameters_by_their_bits():
    graph = normalized_adjacency(2, 3, np.array([0, 1]), np.array([0, 2]))
    parts = [ArtifactPart("codes", "codebook", torch.zeros(4, 8, dtype=torch.int8), bits_per_element=4),
             ArtifactPart("step", "scale", torch.zeros(4), param=True)]
    out = achieved_compression(CompressedModel(torch.nn.Module(), parts, graph, 1), 2, 3, 2, base_dim=8)
    assert out["params"] == 32 + 4
    assert out["emb_achieved"] == (32 * 4 / 32 + 4) / (5 * 8)
