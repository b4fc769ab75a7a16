"""Achieved compression, measured from what a model stores and uses.

* ``params``: stored embedding parameters, the entries of artifact parts flagged ``param``
  (dense tables, kept entries of a sparse table, codebooks, learned composition weights).
* ``bits``: bits of the exported artifact without the graph, and ``bits_<kind>`` per component
  kind (values, indices, codebook, assignment, mask, scale). A part's bits are its element count
  times its bits per element (the dtype width, 1 for a boolean mask stored as a bitmap, or what
  the method declares for packed integers).
* ``bits_graph``: the propagation graph, stored as an edge list of two 32-bit node ids per
  undirected user-item edge (degree normalisation is recomputed on load), plus any artifact part
  of kind ``graph`` (e.g. learned edge weights). Reported apart from ``bits`` because every
  propagating model needs it and it is data, not embedding state. A method that stores its graph
  otherwise (directed entries with learned values, self-loops) gives ``CompressedModel.graph_bits``,
  which replaces the edge list.
* ``params_fp32``: the same entries in fp32 equivalents (each counts ``bits_per_element / 32``:
  an 8-bit quantised code is a quarter of a parameter).
* ``emb_achieved = params_fp32 / ((n_users + n_items) * base_dim)``, the fraction of the uncompressed
  model's embedding storage kept (equal to the parameter fraction when every parameter is fp32);
  ``edge_achieved = edges used / training edges``, where a graph's
  edges are its directed user-item entries / 2 (the undirected edges of a symmetric graph);
  ``layers`` the propagation depth actually used.
"""

from __future__ import annotations

from typing import Any

from bench.contract import ARTIFACT_KINDS, ArtifactPart, CompressedModel

EDGE_ID_BITS = 32


def artifact_sizes(parts: list[ArtifactPart], n_graph_edges: float = 0) -> dict[str, int]:
    """``params``, ``params_fp32``, ``bits``, ``bits_<kind>`` for every kind, and ``bits_graph``."""
    out: dict[str, int] = {f"bits_{k}": 0 for k in ARTIFACT_KINDS}
    params = param_bits = 0
    for p in parts:
        out[f"bits_{p.kind}"] += p.bits
        if p.param:
            params += p.numel
            param_bits += p.bits
    out["bits_graph"] += round(2 * EDGE_ID_BITS * n_graph_edges)
    out["bits"] = sum(v for k, v in out.items() if k != "bits_graph")
    out["params"] = params
    out["params_fp32"] = param_bits / 32  # type: ignore[assignment]
    return out


def achieved_compression(model: CompressedModel, n_users: int, n_items: int, n_train_edges: int,
                         base_dim: int) -> dict[str, Any]:
    """Sizes (see :func:`artifact_sizes`) and the achieved ratios ``emb/edge_achieved``, ``layers``."""
    n_edges = model.graph.n_edges if model.graph is not None and model.n_layers > 0 else 0
    sizes = artifact_sizes(model.artifact, n_edges)
    if model.graph_bits is not None and model.n_layers > 0:
        # the method stores its graph itself (e.g. directed entries with values): its own count
        sizes["bits_graph"] += int(model.graph_bits) - round(2 * EDGE_ID_BITS * n_edges)
    sizes_f: dict[str, Any] = dict(sizes)
    sizes_f["emb_achieved"] = sizes["params_fp32"] / ((n_users + n_items) * base_dim)
    sizes_f["edges"] = n_edges
    sizes_f["edge_achieved"] = n_edges / n_train_edges if n_train_edges else float("nan")
    sizes_f["layers"] = model.n_layers
    return sizes_f
