"""``random-drop``: random edge dropping, random embedding-entry dropping, or both.

See docs/methods/random-drop.md (RandEdge, RandEmb, RandBoth): PinSage-style random edge
dropping (LightGNN's "~EdgeP"), random static pruning of the embedding table (LightGNN's "~EmbP",
DSL's "RP"), and both at once ("~BothP"). Masks are drawn once, before training, from their own
random streams (edges ``default_rng([s, 1])``, entries ``default_rng([s, 2])``), keep an
exact count, and stay fixed while the model trains from scratch with the shared BPR loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from bench.api import (
    CompressedModel,
    DeviceCheck,
    Knob,
    LightGCN,
    Method,
    NormalizedGraph,
    Target,
    normalized_adjacency,
    register_method,
    unique_pairs,
)
from methods.shared.dense import dense_tables
from methods.shared.masking import (
    MASK_STREAMS,
    KeepMasked,
    MaskedLightGCN,
    exact_random_mask,
    kept_count,
    masked_model_report,
    masked_table_device_check,
    per_row_random_mask,
)

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import MethodContext

EDGE_NORMS = ("recompute", "original")


def drop_edges(pairs: np.ndarray, ratio: float, rng: np.random.Generator, per_user: bool = False
               ) -> np.ndarray:
    """The kept edges of ``pairs`` (sorted, deduplicated), in the universe's order.

    RandEdge: exactly ``round(ratio * m)`` edges chosen uniformly without replacement,
    globally. ``per_user``: every user keeps ``ceil(ratio * deg_u)`` of its edges (none isolated;
    the kept total is then at least ``ratio * m``).
    """
    m = len(pairs)
    if per_user:
        keys = rng.random(m)
        users = pairs[:, 0]
        order = np.lexsort((keys, users))  # random order within each user's block
        start = np.searchsorted(users[order], users[order], side="left")
        rank = np.arange(m) - start
        deg = np.bincount(users, minlength=int(users.max()) + 1 if m else 0)
        quota = np.ceil(ratio * deg[users[order]] - 1e-9)  # 0.7 * 10 is 7.000000000000001.astype(np.int64)
        keep = np.zeros(m, dtype=bool)
        keep[order[rank < quota]] = True
        return pairs[keep]
    return pairs[exact_random_mask(m, kept_count(ratio, m), rng)]


def dropped_graph(n_users: int, n_items: int, full: np.ndarray, kept: np.ndarray, edge_norm: str,
                  backend: str, device: torch.device) -> NormalizedGraph:
    """Â of the kept edges: degrees from the kept graph (``recompute``, the default; isolated
    nodes get no entries and keep only their layer-0 embedding) or the full graph's coefficients
    ``1/sqrt(d_u d_i)`` on kept edges (``original``, what LightGNN's code does)."""
    if edge_norm not in EDGE_NORMS:
        raise ValueError(f"edge_norm must be one of {EDGE_NORMS}, got {edge_norm!r}")
    degree_pairs = (full[:, 0], full[:, 1]) if edge_norm == "original" else None
    return normalized_adjacency(n_users, n_items, kept[:, 0], kept[:, 1], backend=backend, device=device,
                                degree_pairs=degree_pairs)


@register_method("random-drop")
class RandomDrop(Method):
    """Random static sparsification, trained from scratch (docs/methods/random-drop.md).

    * ``emb`` target < 1: a mask over the concatenated ``(U + I) x d`` table keeps exactly
      ``round(emb (U + I) d)`` entries (or ``round(emb d)`` per row with ``per_row``); the forward
      uses ``E * M`` and ``E`` is re-multiplied by ``M`` after every optimiser step.
    * ``edge`` target < 1: exactly ``round(edge m)`` of the ``m`` distinct training pairs are kept
      in the propagation graph (both directions). Dropped pairs remain BPR positives and remain
      excluded at ranking: the graph is compressed, not the data.
    * both: independent streams, so the entry mask equals RandEmb's for the same seed.
    """

    axes = ("emb", "edge")
    random_streams: ClassVar[Mapping[str, int]] = dict(MASK_STREAMS)
    description = ("Random edge dropping (PinSage-style), random embedding-entry dropping, or both: "
                   "masks drawn once with exact counts, model trained from scratch")
    knobs = (
        Knob("edge_norm", "recompute", "degree normalisation of the kept graph: recompute degrees on it, "
             "or keep the full graph's coefficients (LightGNN's code)", EDGE_NORMS),
        Knob("per_user", False, "edge dropping keeps ceil(edge x deg_u) edges of every user instead of "
             "a global exact count (no user isolated)"),
        Knob("per_row", False, "entry dropping keeps round(emb x d) entries in every row instead of a "
             "global exact count"),
    )
    target_mapping = ("emb: keep exactly round(emb x (U+I) x d) table entries (random, global); edge: keep "
                      "exactly round(edge x m) of the m distinct training edges (random, global)")
    simplifications = (
        "one-shot masks at the final ratio; LightGNN's Table 3 ablations prune iteratively inside its "
        "distillation pipeline: same mask distribution, different training path",
    )

    @classmethod
    def device_checks(cls) -> tuple[DeviceCheck, ...]:
        """The masked embedding table (:func:`methods.shared.masking.masked_table_device_check`)."""
        return (masked_table_device_check(),)

    def compress(self, context: MethodContext, target: Target) -> CompressedModel:
        data, cfg, opts = context.data, context.budget, self.options
        settings: dict = {"edge_norm": opts.edge_norm, "per_user": opts.per_user,
                          "per_row": opts.per_row}
        full = unique_pairs(data.train, data.n_items)  # the edge universe
        if target.edge is not None and target.edge < 1:
            kept = drop_edges(full, target.edge, context.rng("edge_mask"), opts.per_user)
            graph = dropped_graph(data.n_users, data.n_items, full, kept, opts.edge_norm,
                                  cfg.backend, context.device)
            settings.update(self._isolation(data.n_users, data.n_items, full, kept))
        else:
            kept = full
            graph = context.training_graph(full)
        settings.update(kept_edges=len(kept), train_edges=len(full))

        model: LightGCN = LightGCN(data.n_users, data.n_items, cfg.dim, cfg.n_layers, graph,
                                   init=cfg.init).to(context.device)
        measurements: dict[str, float] = {}
        if target.emb < 1:
            mask = torch.from_numpy(self.entry_mask(context, target.emb))
            model = MaskedLightGCN.from_lightgcn(model, mask, mask_in_forward=True)
            context.fit(model, cfg, hooks=[KeepMasked(model)])
            artifact, extra, measurements = masked_model_report(model)
            settings.update(extra)
        else:
            context.fit(model, cfg)
            artifact = dense_tables(model)
        return CompressedModel(module=model, artifact=artifact, graph=graph, n_layers=cfg.n_layers,
                               training=context.cost, settings=settings, measurements=measurements)

    def entry_mask(self, context: MethodContext, ratio: float) -> np.ndarray:
        """The ``(U + I) x d`` entry mask (RandEmb), from the embedding-mask stream only."""
        n_rows, dim = context.data.n_users + context.data.n_items, context.budget.dim
        rng = context.rng("emb_mask")
        if self.options.per_row:
            return per_row_random_mask(n_rows, dim, kept_count(ratio, dim), rng)
        return exact_random_mask(n_rows * dim, kept_count(ratio, n_rows * dim), rng).reshape(n_rows, dim)

    @staticmethod
    def _isolation(n_users: int, n_items: int, full: np.ndarray, kept: np.ndarray) -> dict[str, int]:
        """Users and items that had edges in training but none in the kept graph (logged)."""
        before_u = np.bincount(full[:, 0], minlength=n_users) > 0
        before_i = np.bincount(full[:, 1], minlength=n_items) > 0
        after_u = np.bincount(kept[:, 0], minlength=n_users) > 0
        after_i = np.bincount(kept[:, 1], minlength=n_items) > 0
        return {"isolated_users": int((before_u & ~after_u).sum()),
                "isolated_items": int((before_i & ~after_i).sum())}

