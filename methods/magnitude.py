"""``magnitude``: magnitude pruning of the shared base checkpoint's embedding table.

See docs/methods/magnitude.md:

* ``omp`` (default; DSL's "OMP", Han et al. 2015): one-shot GLOBAL magnitude pruning of the
  concatenated user+item table of the trained dense LightGCN to exactly ``k = round(r (U+I) d)``
  entries (ties to the lower flat index), then fine-tuning from the pruned values with the mask
  held fixed, the dense budget (same epochs, validation early stopping), no rewinding.
* ``magprune`` (benchmark 2406.17335): post-hoc, no fine-tuning. Each table (user, item) is
  pruned separately to sparsity ``p = 1 - r``: every row protects its own ``m`` largest entries,
  then the ``floor(n d p)`` smallest ``|w|`` among the table's unprotected entries are zeroed.
  ``m`` is chosen on validation by sweeping ``0..floor(d r)``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from bench.api import (
    CompressedModel,
    DeviceCheck,
    Knob,
    Method,
    MethodError,
    Target,
    TrainConfig,
    TrainingCost,
    evaluate_split,
    register_method,
)
from methods.shared.masking import (
    KeepMasked,
    MaskedLightGCN,
    kept_count,
    magnitude_mask,
    masked_model_report,
    masked_table_device_check,
)

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import MethodContext

VARIANTS = ("omp", "magprune")


def omp_mask(table: torch.Tensor, ratio: float) -> torch.Tensor:
    """Global magnitude mask keeping exactly ``round(ratio * numel)`` entries (OMP)."""
    return magnitude_mask(table, kept_count(ratio, table.numel()))


def magprune_table_mask(table: torch.Tensor, sparsity: float, protect: int) -> torch.Tensor:
    """MagPrune's mask of one table: rows keep their ``protect`` largest ``|w|``; then
    the ``floor(n d sparsity)`` smallest ``|w|`` among unprotected entries are pruned (ties: lower
    flat index first)."""
    n, d = table.shape
    n_prune = math.floor(n * d * sparsity + 1e-9)
    if not 0 <= protect <= d:
        raise MethodError(f"magprune: protected entries per row must lie in [0, {d}], got {protect}")
    if n_prune > n * (d - protect):
        raise MethodError(f"magprune: cannot prune {n_prune} entries when every row protects {protect} "
                          f"of {d} (only {n * (d - protect)} unprotected)")
    mag = table.detach().abs()
    protected = torch.zeros_like(mag, dtype=torch.bool)
    if protect:
        top = torch.argsort(-mag, dim=1, stable=True)[:, :protect]
        protected.scatter_(1, top, True)
    flat = mag.reshape(-1).clone()
    flat[protected.reshape(-1)] = math.inf
    order = torch.argsort(flat, stable=True)
    mask = torch.ones(n * d, dtype=torch.bool, device=table.device)
    mask[order[:n_prune]] = False
    return mask.reshape(n, d)


def magprune_mask(user: torch.Tensor, item: torch.Tensor, ratio: float, protect: int) -> torch.Tensor:
    """The concatenated MagPrune mask: user and item tables each pruned to the ratio separately."""
    sparsity = 1.0 - ratio
    return torch.cat([magprune_table_mask(user, sparsity, protect),
                      magprune_table_mask(item, sparsity, protect)], dim=0)


@register_method("magnitude")
class MagnitudePruning(Method):
    """One-shot magnitude pruning of the base checkpoint: OMP (fine-tuned) or MagPrune (post-hoc)."""

    axes = ("emb",)
    description = ("Magnitude pruning of the trained LightGCN's embedding table: global one-shot + "
                   "fine-tuning with the mask held (OMP), or per-table with row protection (MagPrune)")
    knobs = (
        Knob("variant", "omp", "omp: global one-shot pruning then fine-tuning (DSL's OMP); magprune: "
             "per-table pruning with per-row protection, no fine-tuning (2406.17335)", VARIANTS),
        Knob("protect", -1, "magprune: entries every row protects; -1 chooses it on validation by a "
             "sweep over 0..floor(d x emb)", min=0, sentinels=(-1,)),
        Knob("select_metric", "ndcg@20", "magprune: validation metric of the protect sweep"),
    )
    target_mapping = ("keep exactly round(emb x (U+I) x d) entries (omp, global over both tables) or "
                      "n x d - floor(n x d x (1 - emb)) entries of each table (magprune)")
    uses_base = True
    simplifications = (
        "omp fine-tunes with the shared budget's hyperparameters (the dense run's); no separate "
        "fine-tuning schedule is searched",
        "magprune sweeps every protect value 0..floor(d x emb) (the reference may binary-search)",
    )

    @classmethod
    def device_checks(cls) -> tuple[DeviceCheck, ...]:
        """The masked embedding table (:func:`methods.shared.masking.masked_table_device_check`)."""
        return (masked_table_device_check(),)

    def compress(self, context: MethodContext, target: Target) -> CompressedModel:
        base = context.base()
        dense = base.model
        settings: dict = {"variant": self.options.variant}
        if self.options.variant == "omp":
            mask = omp_mask(dense.layer0(), target.emb)
            model = MaskedLightGCN.from_lightgcn(dense, mask, mask_in_forward=True)
            metric = context.budget.valid_metric
            settings[f"pruned_valid_{metric}"] = self._valid(context, model, context.budget)[metric]
            context.fit(model, context.budget, hooks=[KeepMasked(model)])
            # the model's whole cost: the dense run it starts from plus the fine-tuning
            # (docs/methods/magnitude.md; DSL Table 3's OMP = dense + sparse retrain); the
            # fine-tuning's peak memory is measured
            training = base.training.add(context.cost)
            training.peak_mem_bytes = None
        else:
            t0 = time.perf_counter()
            protect, sweep = self._choose_protect(context, dense, target.emb)
            sweep_seconds = time.perf_counter() - t0
            mask = magprune_mask(dense.user_emb, dense.item_emb, target.emb, protect)
            model = MaskedLightGCN.from_lightgcn(dense, mask, mask_in_forward=True)
            settings.update(protect=protect, protect_sweep=sweep)
            # the dense run it starts from, plus the time of the protect sweep (no training)
            training = TrainingCost(base.training.seconds + sweep_seconds, base.training.epochs,
                                    base.training.macs_per_epoch, base.training.peak_mem_bytes)
        artifact, extra, measurements = masked_model_report(model)
        settings.update(extra)
        settings[f"base_valid_{context.budget.valid_metric}"] = base.valid.get(context.budget.valid_metric)
        return CompressedModel(module=model, artifact=artifact, graph=model.graph, n_layers=model.n_layers,
                               training=training, settings=settings, measurements=measurements)

    @staticmethod
    def _valid(context: MethodContext, model: torch.nn.Module, config: TrainConfig) -> dict[str, float]:
        model.eval()
        return evaluate_split(model, context.data, "valid", config).metrics

    def _choose_protect(self, context: MethodContext, dense, ratio: float) -> tuple[int, dict[int, float]]:
        """``protect`` from the options, or the best validation ``select_metric`` over the sweep."""
        d = dense.dim
        top = math.floor(d * ratio + 1e-9)
        if self.options.protect >= 0:
            if self.options.protect > top:
                raise MethodError(f"magnitude.protect must lie in [0, floor(d x emb) = {top}], "
                                  f"got {self.options.protect}")
            return self.options.protect, {}
        metric = self.options.select_metric
        scores: dict[int, float] = {}
        for m in range(top + 1):
            mask = magprune_mask(dense.user_emb, dense.item_emb, ratio, m)
            model = MaskedLightGCN.from_lightgcn(dense, mask, mask_in_forward=True)
            metrics = self._valid(context, model, context.budget)
            if metric not in metrics:
                raise MethodError(f"magnitude.select_metric {metric!r} is not computed with ks="
                                  f"{list(context.budget.ks)}; choose from {sorted(metrics)}")
            scores[m] = metrics[metric]
        best = max(scores, key=lambda m: (scores[m], -m))
        return best, scores
