"""``lerg``: LERG (arXiv 2505.18999, TOIS 2025), an extension of LEGCF: an LSQ-quantised
compositional codebook, entity selection by a linear program, a rewired graph without the pruned
entities, a k-means placeholder codebook for them, and fine-tuning of the retained entities only.
See docs/methods/lerg.md (steps 1-5 below are its pipeline steps); shared pieces:
:mod:`methods.shared.composition`, :mod:`methods.shared.quantization`, :mod:`methods.lerg.graph`.

**No official code exists** and the full paper text was not available: docs/methods/lerg.md marks
which details are inferred ([I]); each is an option below whose default is the inferred choice,
listed in :attr:`LERG.simplifications` so that the report shows them.

Pipeline:

1. **Server pretraining** (cached): ``S`` from METIS (t = 2) and **frozen**; the codebook
   quantised in the loop (QAT, one LSQ step per row, ``bits`` per code); LightGCN on ``Â`` with
   layer 0 ``tanh(S Ê_meta)`` ([I]); LEGCF's loss, sampler, clipping and early stopping.
2. **Selection**: importance ``s_i = Σ_j cos(h_i, h_j)`` [I] on the pretrained final ``H``;
   ``m = round(ρ_ent N)`` entities kept by the LP relaxation (rounded at 0.5, fixed up to m).
3. **Rewiring** ([I]): the pruned entities' edges deleted, dangling ones re-routed to the most
   similar retained 2-hop substitute; ``Â_rw`` on the ``m`` retained entities.
4. **Placeholders**: k-means (``r' = min(r, #pruned)``) over the pruned entities' ``H``;
   a pruned entity's representation is its centroid, frozen.
5. **Fine-tuning**: only ``E_meta`` and the steps train, on ``Â_rw``, composing only the
   retained rows; triples with a pruned entity use its centroid as a constant.

Target mapping (docs/methods/lerg.md, "Target mapping"): with ``ρ_ent`` (``retention``; 1 for an
embedding-only target: no pruning, the quantised model is the result),
``c = floor((ρ·32·N·d − 32·t·N − 32·r'·d − (N−m)·⌈log2 r'⌉) / (d·b + 32))``; infeasible if
``c <= t``. For an edge target, ``ρ_ent`` is bisected on the pretrained model until the rewired
graph keeps the target's edges (±1 point); ``c`` is then solved before ``m`` is known, with the
placeholder terms at their largest (``r' = r``, all ``N`` indexed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench import api
from bench.api import (
    ArtifactPart,
    CompressedModel,
    DeviceCheck,
    Knob,
    Method,
    MethodError,
    Options,
    Target,
    TrainingCost,
)
from methods.lerg.graph import (
    IMPORTANCE_MODES,
    REROUTE_MODES,
    importance_scores,
    placeholder_codebook,
    rewire,
    rewired_graph,
    select_entities,
)
from methods.shared.composition import (
    PARTITION_RULE,
    Assignment,
    CompositionalLightGCN,
    index_bits,
    metis_assignment,
    metis_partition,
)
from methods.shared.composition_training import (
    InfeasibleTargetError,
    LegcfHook,
    composition_config,
    fit_composition_stage,
)
from methods.shared.quantization import BITS, lsq_device_check, quantize_codes

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import MethodContext

STAGE_VERSION = 1
EDGE_TOLERANCE = 0.01
BISECT_STEPS = 30


def lerg_bits(c: int, d: int, b: int, t: int, n: int, m: int, r: int) -> int:
    """Stored bits by the convention of docs/methods/lerg.md ("Costs"):
    ``c·d·b + 32c (Δ) + 32·t·N (S values) + 32·r'·d (placeholders) + (N − m)·⌈log2 r'⌉``
    with ``r' = min(r, N − m)``; S's column indices are not counted (LEGCF's convention;
    :func:`lerg_honest_bits` adds them)."""
    pruned = n - m
    r_eff = min(r, pruned)
    placeholder = 32 * r_eff * d + (pruned * index_bits(r_eff) if r_eff else 0)
    return c * d * b + 32 * c + 32 * t * n + placeholder


def lerg_honest_bits(c: int, d: int, b: int, t: int, n: int, m: int, r: int) -> int:
    """:func:`lerg_bits` plus ``t·N·⌈log2 c⌉`` bits of S's column indices."""
    return lerg_bits(c, d, b, t, n, m, r) + t * n * index_bits(c)


def solve_lerg_codebook(emb: float, n: int, d: int, b: int, t: int, r: int, m: int | None) -> int:
    """The largest ``c <= N`` with ``lerg_bits(c) <= ρ·32·N·d`` (invariant 18 in
    ``tests/test_lerg.py``). ``m = None``: the
    placeholder terms at their largest (``r' = min(r, N)``, every entity indexed)."""
    budget = emb * 32 * n * d
    if m is None:
        r_eff = min(r, n)
        fixed = 32 * t * n + 32 * r_eff * d + n * index_bits(r_eff)
    else:
        fixed = lerg_bits(0, d, b, t, n, m, r)
    c = min(n, int(np.floor((budget - fixed) / (d * b + 32) + 1e-9)))  # at most one row per entity
    if c <= t:
        raise InfeasibleTargetError(
            f"lerg: emb target {emb:g} is infeasible at d={d}, N={n}, {b} bits, r={r}"
            + ("" if m is None else f", {m} retained entities")
            + f": the fixed parts need {fixed / (32 * n * d):.4f} of the full table and c > t={t} rows "
            f"must fit")
    return c


class PlaceholderModel(nn.Module):
    """The fine-tuned LERG model (step 5): retained entities propagate, pruned ones are centroids.

    ``inner`` is a :class:`CompositionalLightGCN` over the ``m`` retained entities (compact ids:
    retained users, then retained items, each in increasing id order) on ``Â_rw``. ``lookup[p]``
    is ``p``'s compact row if retained, else ``m + `` its centroid index; representations are
    ``cat([H_R, C_prune])[lookup]``. Only ``inner``'s codebook and steps are parameters.
    """

    def __init__(self, inner: CompositionalLightGCN, n_users: int, n_items: int, lookup: torch.Tensor,
                 placeholders: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.n_users, self.n_items = n_users, n_items
        self.register_buffer("lookup", lookup)
        self.register_buffer("placeholders", placeholders)

    def _table(self) -> tuple[torch.Tensor, torch.Tensor]:
        x0, h, _ = self.inner.forward_all()
        return x0, torch.cat([h, self.placeholders], dim=0)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, table = self._table()
        out = table.index_select(0, self.lookup)
        return out[: self.n_users], out[self.n_users :]

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float,
                 reg_form: str = "squared") -> tuple[torch.Tensor, torch.Tensor]:
        """LEGCF's loss (LEGCF paper Eq. 4, in its code's form) on the lookup; L2 on the retained
        layer-0 rows of the batch (a pruned entity has no layer-0 row: its centroid is a constant)."""
        x0, table = self._table()
        rows = self.lookup.index_select(0, torch.cat([users, pos + self.n_users, neg + self.n_users]))
        u, p, q = table.index_select(0, rows).split(users.numel())
        bpr = F.softplus((u * q).sum(1) - (u * p).sum(1)).mean()
        # squared layer-0 row norms, 0 for the placeholder rows, gathered per batch row
        norms = torch.cat([x0.pow(2).sum(1), x0.new_zeros(self.placeholders.shape[0])])
        penalty = reg * norms.index_select(0, rows).sum() / users.numel()
        return bpr, penalty



def codebook_cap_note(n: int, d: int, b: int, bits: int) -> str:
    """What a cell says when its target is looser than LERG can use: the codebook is capped at one row
    per entity (``c = N``), so the artifact stays below the target's bits, and with ``b``-bit codes
    its parameter count (codes counted like floats) can exceed the dense table's ``N d``."""
    return (f"lerg: the emb target is looser than LERG can fill: the codebook is capped at one row per "
            f"entity (c = N = {n:,}), so the artifact stores {bits / (32 * n * d):.3f} of the full fp32 "
            f"table's bits; its {b}-bit codebook entries count as parameters, so its parameter count can "
            f"exceed the dense table's {n * d:,}")


INFERRED_NOTE = ("lerg: no official code; importance, re-routing, placeholders and the storage "
                 "convention are inferred (docs/methods/lerg.md)")

# The paper's claims (docs/methods/lerg.md, "Claims checked by the report"), from its summary
# (shared/papers/lerg-summary.md) only: the full text and tables were not available. Its one figure,
# NDCG@20 0.0294 on Yelp2020 at 97.7% less storage than the full table, is on none of our datasets; the
# summary also names Amazon-Book (the LightGCN paper's, catalog: amazon-book) and iFashion.
CLAIMS = (
    api.Claim(
        id="lerg-vs-legcf", method="lerg",
        source="LERG paper (Liang et al., TOIS 2025), as summarised (key results; quantised codebook, §3.3)",
        statement="At the same storage budget, about 2% of the full table's bits, LERG's quantised codebook "
                  "is at least as accurate as LEGCF's (the summary: superior recommendation performance at "
                  "97.7% less storage, NDCG@20 0.0294 on Yelp2020; here without rewiring).",
        datasets=("amazon-book",), subject=api.Arm("lerg", {}, emb=0.02),
        comparator=api.Arm("legcf", {"ablation": "none", "update": "pinv"}, emb=0.02), metric="ndcg@20"),
)


@api.register_method("lerg")
class LERG(Method):
    """See the module docstring."""

    axes = ("emb", "edge", "bits")
    random_streams: ClassVar[Mapping[str, int]] = {"lerg": 7}
    claims = CLAIMS
    description = ("LERG: LEGCF's compositional table with an LSQ-quantised codebook, LP entity "
                   "selection, a rewired graph without pruned entities, k-means placeholders and "
                   "fine-tuning of retained entities (TOIS 2025; no official code)")
    target_mapping = ("c = floor((emb*32*N*d - 32*t*N - 32*r'*d - (N-m)*ceil(log2 r'))/(d*b + 32)); "
                      "retention 1 for an emb-only target, bisected for an edge target")
    knobs = (
        Knob("bits", 8, "bits per codebook code (LSQ)", BITS),
        Knob("t", 2, "assignment entries per entity", min=1),
        Knob("r", 500, "placeholder codebook rows (k-means over pruned entities)", min=1),
        Knob("retention", 0.0, "share of entities kept, rho_ent (0: 1 for an emb-only target, "
             "bisected for an edge target)", min=0, max=1),
        Knob("importance", "global_cos", "[I] importance score of an entity", IMPORTANCE_MODES),
        Knob("reroute", "substitute", "[I] re-routing of a pruned entity's edges", REROUTE_MODES),
        Knob("per_side_budget", False, "retain round(rho_ent*U) users and the rest items"),
        Knob("w_star", 0.6, "METIS anchor weight (as LEGCF)", min=0, max=1, min_exclusive=True),
        Knob("use_expanded_graph", False, "[I] propagate with LEGCF's meta nodes"),
        Knob("tanh", True, "[I] tanh on the composed rows (LEGCF's code)"),
        Knob("n_neg", 5, "distinct negatives per drawn positive", min=1),
        Knob("reg", 5e-4, "L2 weight on the composed layer-0 rows", min=0),
        Knob("lr", 0.0, "learning rate (0: the budget's)", min=0),
        Knob("clip", 3.0, "gradient clipping by value (0: off)", min=0),
        Knob("pretrain_epochs", 0, "server pretraining epochs (0: the budget's)", min=0),
        Knob("finetune_epochs", 0, "fine-tuning epochs (0: the budget's)", min=0),
        Knob("init", "normal", "codebook init (LEGCF's code: N(0, 1))", ("normal", "xavier")),
    )
    simplifications = (
        "No LERG code is public: the importance score (sum of cosines to all entities), the "
        "re-routing rule (most similar retained 2-hop substitute), k-means over final H rows, "
        "tanh and no meta nodes, Δ per row with LSQ init, and the storage convention are the "
        "inferences [I] (docs/methods/lerg.md), each behind an option.",
        "S stays fixed at its METIS init (no pseudo-inverse updates); LEGCF's loss, 5-negative "
        "sampler, clipping and the harness's early stopping are used for both training phases.",
        "An emb-only target keeps every entity (retention 1): the result is the quantised "
        "pretrained model, without selection, rewiring or fine-tuning.",
        "The artifact stores S for all N entities (the inferred bits formula), although pruned "
        "entities only use their centroid.",
    )

    # --- options ---------------------------------------------------------------------------------

    def resolved(self, ctx: MethodContext, target: Target) -> Options:
        """The options with the retention, ``c`` and the budget's placeholders resolved for the target
        (each knob's own range was checked when the method was constructed)."""
        o = self.options
        if o.w_star == 1 and o.t != 1:
            raise MethodError(f"option lerg.w_star must lie in (0, 1) (1 only with t = 1), got {o.w_star}")
        if target.edge is not None and target.edge < 1 and o.retention == 1:
            raise MethodError(f"lerg: retention 1 keeps every edge, but the target asks for {target.edge:g}")
        n, d = ctx.data.n_users + ctx.data.n_items, ctx.budget.dim
        retention = o.retention
        if retention == 0 and (target.edge is None or target.edge >= 1):
            retention = 1.0
        bisect = retention == 0
        m = None if bisect else round(retention * n)
        c = solve_lerg_codebook(target.emb, n, d, o.bits, o.t, o.r, m)
        b = ctx.budget
        return o.replace(retention=retention, lr=o.lr or b.lr, pretrain_epochs=o.pretrain_epochs or b.epochs,
                         finetune_epochs=o.finetune_epochs or b.epochs).extend(bisect=bisect, c=c)

    @staticmethod
    def pretrain_fields(o: Options) -> dict[str, Any]:
        """What step 1's result depends on besides its :class:`TrainConfig` (and the cell's seed)."""
        keys = ("c", "t", "bits", "w_star", "n_neg", "clip", "init", "use_expanded_graph", "tanh")
        return {"lerg_version": STAGE_VERSION, "partition": PARTITION_RULE, **{k: o[k] for k in keys}}

    def _model(self, ctx: MethodContext, o: Options, graph, s: Assignment) -> CompositionalLightGCN:
        return CompositionalLightGCN(graph, s.to(ctx.device), ctx.budget.dim, ctx.budget.n_layers,
                                     expanded=o.use_expanded_graph, tanh=o.tanh, bits=o.bits,
                                     init=o.init).to(ctx.device)

    # --- stages ------------------------------------------------------------------------------------

    def pretrain(self, ctx: MethodContext, o: Options) -> tuple[CompositionalLightGCN, dict[str, Any]]:
        """Step 1 (cached): QAT of ``(E_meta, Δ)`` with ``S`` fixed at its METIS init."""
        data = ctx.data
        graph = ctx.training_graph()

        config = composition_config(ctx, o, lr=o.lr, reg=o.reg, epochs=o.pretrain_epochs)

        def build():
            t0 = time.perf_counter()
            partition = metis_partition(data.n_users, data.n_items, data.train, o.c, ctx.seed)
            s = metis_assignment(partition.labels, o.c, o.t, o.w_star, ctx.rng("lerg", 1))
            init_seconds = time.perf_counter() - t0
            api.seed_everything(ctx.seed)
            model = self._model(ctx, o, graph, s)
            cost, result = fit_composition_stage(ctx, model, config, LegcfHook(model, o.clip), o,
                                     stage="lerg-pretrain")
            return model.state_dict(), api.stage_meta(cost, result, init_seconds=init_seconds,
                                                  init=partition.info())

        state, meta, hit = ctx.stage("lerg-pretrain", config, self.pretrain_fields(o), build)
        model = self._model(ctx, o, graph, Assignment.of_state(state))
        model.load_state_dict({k: v.to(ctx.device) for k, v in state.items()})
        return model.eval(), {**meta, "cached": hit}

    @staticmethod
    def select(ctx: MethodContext, o: Options, h: torch.Tensor, scores: np.ndarray, retention: float
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps 2-3: retained ids, rewired edges and what happened, for one ``ρ_ent`` (``scores``:
        the entities' importance, computed once per model)."""
        data = ctx.data
        n = data.n_users + data.n_items
        m = round(retention * n)
        per_side = None
        if o.per_side_budget:
            m_u = min(data.n_users, round(retention * data.n_users))
            per_side = (m_u, m - m_u)
        retained, sel = select_entities(scores, m, data.n_users, per_side)
        edges, info = rewire(data.train, data.n_users, data.n_items, retained, h, o.reroute)
        return retained, edges, {**sel, **info, "retention": retention}

    def bisect_retention(self, ctx: MethodContext, o: Options, h: torch.Tensor, scores: np.ndarray,
                         edge: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The ``ρ_ent`` whose rewired graph keeps ``edge`` of the training edges (±1 point; see
        "Target mapping" in docs/methods/lerg.md)."""
        lo, hi = 0.0, 1.0
        best = None
        for step in range(BISECT_STEPS):
            mid = (lo + hi) / 2
            retained, edges, info = self.select(ctx, o, h, scores, mid)
            gap = info["edge_ratio"] - edge
            if best is None or abs(gap) < abs(best[2]["edge_ratio"] - edge):
                best = (retained, edges, {**info, "bisect_steps": step + 1})
            if abs(gap) <= EDGE_TOLERANCE:
                break
            lo, hi = (mid, hi) if gap < 0 else (lo, mid)
        assert best is not None
        return best

    def finetune(self, ctx: MethodContext, o: Options, pre: CompositionalLightGCN, h: torch.Tensor,
                 retained: np.ndarray, edges: np.ndarray) -> tuple[PlaceholderModel, dict[str, Any]]:
        """Steps 4-5: placeholders for the pruned entities, then fine-tune the retained ones."""
        data = ctx.data
        n = data.n_users + data.n_items
        t0 = time.perf_counter()
        graph, _, _ = rewired_graph(data.n_users, data.n_items, retained, edges, ctx.device)
        pruned = np.setdiff1d(np.arange(n), retained)
        centroids, labels = placeholder_codebook(h, pruned, o.r, ctx.seed)
        lookup = np.empty(n, dtype=np.int64)
        lookup[retained] = np.arange(len(retained))
        lookup[pruned] = len(retained) + labels
        keep = torch.from_numpy(retained).to(ctx.device)
        inner = self._model(ctx, o, graph, pre.assignment().subset(keep))
        with torch.no_grad():
            inner.meta.copy_(pre.meta)
            inner.step.copy_(pre.step)
        model = PlaceholderModel(inner, data.n_users, data.n_items, torch.from_numpy(lookup).to(ctx.device),
                                 centroids.to(ctx.device))
        prep_seconds = time.perf_counter() - t0
        config = composition_config(ctx, o, lr=o.lr, reg=o.reg, epochs=o.finetune_epochs)
        cost, result = fit_composition_stage(ctx, model, config, LegcfHook(model.inner, o.clip), o,
                                 stage="lerg-finetune")
        ctx.cost = ctx.cost.add(cost).add(TrainingCost(seconds=prep_seconds))
        info = {**api.stage_meta(cost, result), "prep_seconds": prep_seconds,
                "placeholder_rows": int(centroids.shape[0]), "pruned": len(pruned)}
        return model.eval(), info

    # --- the method ------------------------------------------------------------------------------

    @classmethod
    def device_checks(cls) -> tuple[DeviceCheck, ...]:
        """LSQ on the codebook (:func:`methods.shared.quantization.lsq_device_check`)."""
        return (lsq_device_check(),)

    def compress(self, context: MethodContext, target: Target) -> CompressedModel:
        ctx = context
        o = self.resolved(ctx, target)
        t_start = time.perf_counter()
        data = ctx.data
        n = data.n_users + data.n_items
        pre, pre_info = self.pretrain(ctx, o)
        ctx.cost = ctx.cost.add(TrainingCost(**pre_info["training"]))
        selection: dict[str, Any] | None = None
        tune: dict[str, Any] | None = None
        if o.retention >= 1:
            model: nn.Module = pre
            retained = np.arange(n)
            graph = pre.graph
        else:
            with torch.no_grad():
                h = torch.cat(pre.propagate(), dim=0)
            t0 = time.perf_counter()
            scores = importance_scores(h, o.importance, data.train, data.n_users)
            if o.bisect:
                retained, edges, selection = self.bisect_retention(ctx, o, h, scores, float(target.edge))
            else:
                retained, edges, selection = self.select(ctx, o, h, scores, o.retention)
            selection["seconds"] = time.perf_counter() - t0
            ctx.cost = ctx.cost.add(TrainingCost(seconds=selection["seconds"]))
            model, tune = self.finetune(ctx, o, pre, h, retained, edges)
            graph = model.inner.graph
        return self.export(ctx, o, pre, model, graph, retained, pre_info, selection, tune,
                           time.perf_counter() - t_start)

    def export(self, ctx: MethodContext, o: Options, pre: CompositionalLightGCN, model: nn.Module,
               graph, retained: np.ndarray, pre_info: dict[str, Any], selection: dict[str, Any] | None,
               tune: dict[str, Any] | None, seconds: float) -> CompressedModel:
        data = ctx.data
        n, d, c, t, b = data.n_users + data.n_items, ctx.budget.dim, o.c, o.t, o.bits
        m = len(retained)
        trained = model.inner if isinstance(model, PlaceholderModel) else model
        s = pre.assignment()
        parts = [
            ArtifactPart("codebook.codes", "codebook", quantize_codes(trained.meta, trained.step, b),
                         bits_per_element=b),
            ArtifactPart("codebook.steps", "scale", trained.step.detach().reshape(-1).clone(), param=True),
            ArtifactPart("assignment.values", "assignment", s.value.detach().clone(), param=True),
            ArtifactPart("assignment.indices", "assignment", s.index.detach().clone(),
                         bits_per_element=index_bits(c), param=False),
        ]
        r_eff = 0
        if isinstance(model, PlaceholderModel):
            r_eff = int(model.placeholders.shape[0])
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.from_numpy(retained)] = True
            pruned_idx = (model.lookup[~mask.to(model.lookup.device)] - m).cpu()
            parts += [
                ArtifactPart("placeholders", "codebook", model.placeholders.detach().cpu().clone()),
                # counted in the emb budget (the bits convention of lerg_bits), hence param
                ArtifactPart("placeholder.indices", "indices", pruned_idx, bits_per_element=index_bits(r_eff),
                             param=True),
                ArtifactPart("retained.mask", "mask", mask),
            ]
        spec_bits = lerg_bits(c, d, b, t, n, m, o.r)
        honest_bits = lerg_honest_bits(c, d, b, t, n, m, o.r)
        nnz = graph.nnz
        layers = ctx.budget.n_layers
        measurements = {
            "lerg_bits_spec": float(spec_bits), "lerg_bits_honest": float(honest_bits),
            "emb_ratio_honest": honest_bits / (32 * n * d),
            "retention_achieved": m / n,
            "users_retained": float(int((retained < data.n_users).sum())),
            "items_retained": float(int((retained >= data.n_users).sum())),
            "lerg_macs_forward": float(t * m * d + layers * nnz * d),
            "lerg_peak_activation_bytes": float((layers + 1) * m * d * 4),
            "placeholder_rows": float(r_eff),
        }
        settings = {
            "c": c, "t": t, "bits": b, "r": o.r, "retention": m / n, "bisected": o.bisect,
            "importance": o.importance, "reroute": o.reroute,
            "inferred_choices": {k: o[k] for k in ("importance", "reroute", "use_expanded_graph", "tanh")},
            "options_resolved": dict(o), "pretrain": pre_info, "selection": selection, "finetune": tune,
            "compress_seconds_this_call": seconds,
        }
        notes = [INFERRED_NOTE]
        if c >= n:
            notes.append(codebook_cap_note(n, d, b, spec_bits))
        return CompressedModel(module=model.eval(), artifact=parts, graph=graph, n_layers=layers,
                               training=ctx.cost, settings=settings, measurements=measurements,
                               notes=notes)
