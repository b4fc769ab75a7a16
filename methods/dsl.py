"""``dsl``: Dynamic Sparse Learning (Wang et al., WSDM 2024) on the LightGCN embedding table.

See docs/methods/dsl.md: train LightGCN from scratch with a fixed budget of ``K`` nonzero entries
of the joint ``(U + I) x d`` layer-0 table (one global unstructured mask; the paper's Eq. 1 stacks
users and items into one matrix).

* Init (DSL's "RP" mask): an exact random subset of ``K = round(r (U + I) d)`` entries, drawn with
  ``ctx.rng("emb_mask")`` by :func:`methods.shared.masking.exact_random_mask`, i.e. the same mask as
  ``random-drop``'s embedding mask for the same seed; ``E <- E * M``.
* Every iteration: forward on the table itself (masked entries are 0, the mask is not in the
  autograd graph, so inactive entries get their true dense gradient), dense Adam step (moments of
  inactive entries keep accumulating, never reset), ``E <- E * M``, then at ``t % dT == 0`` an
  exploration with this step's gradient (:class:`DSLHook`).
* Exploration (paper Algorithm 1): prune the ``R = ceil(rho_t K)`` active entries of smallest
  ``|E|`` and grow the ``R`` entries of largest ``|grad|`` among the inactive ones (old inactive and
  just pruned), exactly ``R`` each (:func:`prune_and_grow`); grown entries that were inactive start
  at 0, an entry pruned and regrown keeps its value.
* Schedule (paper Eq. 2): ``rho_t = eta + (rho0 - eta) (1 + cos(pi t / T_end)) / 2`` with the
  code's floor ``eta = 0.005`` (:func:`update_ratio_at`), on the planned ``T_end``.

Training regime: the optimiser, its learning-rate schedule, dim, layers, batch, reg and
epochs are the budget's. The code's regime is Adam at lr 1e-2 cosine-annealed per epoch to 1e-4
over 1000 epochs (budget ``lr_schedule = "cosine"``, ``lr_min = 1e-4``, ``lr_period = 1000``), d = 64,
3 layers, batch 1024, and its sampler (option ``sampler = "user"``): ``|R_train|`` triples per epoch,
each a user uniform over all users, a positive uniform among that user's training items and a
uniform negative that is not one of them (:class:`bench.sampling.MultiNegativeSampler` with one
negative). The default ``sampler = "interaction"`` is the harness's: every training interaction once
per epoch, so users are drawn in proportion to their degree, as for the other methods.

Cost accounting: the trainer stores and computes densely (dense table, dense gradient, dense
Adam moments, plus a boolean mask), so the harness's fvcore count of the dense BPR step is the
honest training MAC figure and the peak-RSS it measures is the honest memory. Beside them the
method reports the storage of the final table dense-with-zeros and in the smallest sparse format
(:func:`methods.shared.masking.masked_model_report`), sparse-aware propagation MACs, the analytic
training-state bytes and the paper's own MAC bookkeeping, labelled ``paper_style_`` (reverse-
engineered from the paper's tables).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from bench.api import (
    Arm,
    Claim,
    CompressedModel,
    DeviceCheck,
    EpochSampler,
    Knob,
    Method,
    MethodError,
    MultiNegativeSampler,
    Target,
    TrainHook,
    build_lightgcn,
    register_method,
)
from methods.shared.masking import (
    MASK_STREAMS,
    MaskedLightGCN,
    exact_random_mask,
    kept_count,
    masked_model_report,
    masked_table_device_check,
)

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import MethodContext

DECAYS = ("cosine", "linear", "constant")
SAMPLERS = ("interaction", "user")
# the auto exploration interval is this many epochs (the reference's dT = 3000 iterations
# is 2.48 epochs of Yelp2018 at batch 1024).
AUTO_INTERVAL_EPOCHS = 2.5


# --- schedule (paper Eq. 2) ------------------------------------------------------------------------

def update_ratio_at(t: int, t_end: int, rho0: float, eta_min: float = 0.005, decay: str = "cosine") -> float:
    """``rho_t``, the fraction of the active entries replaced by an exploration at iteration ``t``.

    ``cosine`` (code: ``CosineAnnealingLR`` with ``T_max = T_end`` stepped once per iteration):
    ``eta + (rho0 - eta) (1 + cos(pi t / T_end)) / 2``; ``eta_min = 0`` is the paper's Eq. 2.
    ``linear``: ``eta + (rho0 - eta)(1 - t / T_end)`` (with ``eta_min = 0`` the linear form
    ``rho0 (1 - t / T_end)``; broken in the released code). ``constant``: ``rho0`` ("no decay",
    Table 4). The floor is capped at ``rho0`` (``eta = min(eta_min, rho0)``), so ``rho0 = 0`` never
    explores (RP) instead of ramping up to the floor. ``t`` is clamped to ``[0, T_end]``.
    """
    if decay not in DECAYS:
        raise MethodError(f"unknown decay {decay!r}; choose from {DECAYS}")
    if t_end < 1:
        raise MethodError(f"T_end must be >= 1, got {t_end}")
    if decay == "constant":
        return float(rho0)
    eta = min(eta_min, rho0)
    frac = min(max(t, 0), t_end) / t_end
    if decay == "cosine":
        return eta + (rho0 - eta) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return eta + (rho0 - eta) * (1.0 - frac)


def exploration_interval(iterations_per_epoch: int, update_interval: int = 0) -> int:
    """``dT`` in optimiser iterations: ``update_interval`` if > 0, else the auto rule.

    Auto rule (docs/methods/dsl.md): ``dT = max(1, floor(2.5 x iterations_per_epoch + 0.5))``,
    i.e. one exploration every 2.5 epochs as in the reference (3000 iterations = 2.48 Yelp2018
    epochs). The alternative of about 400 explorations per run, ``T_end / dT ~ 400``, is meant
    for the reference's 1000-epoch runs; on a short budget (40 epochs x 45 batches = 1800
    iterations) it would give ``dT = 4``, i.e. pruning up to half of all entries every 4 steps, far
    below the paper's "too frequent" limit (Fig. 3, ``dT < 1000`` iterations = 0.8 epoch), whereas
    2.5 epochs keeps the time a grown entry trains before it is judged (yelp-lightgnn: dT = 113,
    15 explorations in 40 epochs).
    """
    if update_interval < 0:
        raise MethodError(f"update_interval must be >= 0, got {update_interval}")
    if update_interval > 0:
        return int(update_interval)
    return max(1, math.floor(AUTO_INTERVAL_EPOCHS * iterations_per_epoch + 0.5))


# --- exploration (paper Algorithm 1) ---------------------------------------------------------------

def _whole_or_nothing(x: torch.Tensor, k: int) -> torch.Tensor | None:
    """The selection of ``k`` of the entries of ``x`` when it is none or all of them, else None."""
    n = x.numel()
    if not 0 <= k <= n:
        raise MethodError(f"cannot select {k} of {n} entries")
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.arange(n, device=x.device) if k == n else None


def smallest_exact(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted positions of the ``k`` smallest entries of the 1-D ``x``; ties at the threshold go to
    the lowest positions (a deterministic rule). Linear-time selection (``kthvalue``), no sort."""
    trivial = _whole_or_nothing(x, k)
    if trivial is not None:
        return trivial
    tau = torch.kthvalue(x, k).values
    below = (x < tau).nonzero().squeeze(1)
    ties = (x == tau).nonzero().squeeze(1)
    return torch.sort(torch.cat([below, ties[: k - below.numel()]])).values


def largest_exact(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Sorted positions of the ``k`` largest entries of the 1-D ``x``; the entries tied at the
    threshold that do not all fit are chosen uniformly at random with ``rng`` (consumed only then)."""
    trivial = _whole_or_nothing(x, k)
    if trivial is not None:
        return trivial
    tau = torch.kthvalue(x, x.numel() - k + 1).values
    above = (x > tau).nonzero().squeeze(1)
    ties = (x == tau).nonzero().squeeze(1)
    need = k - above.numel()
    if need < ties.numel():
        pick = np.sort(rng.choice(ties.numel(), size=need, replace=False))
        ties = ties[torch.from_numpy(pick).to(ties.device)]
    return torch.sort(torch.cat([above, ties])).values


@dataclass
class Exploration:
    """Result of one prune-and-grow on a flat table: the new mask and the changed entries.

    ``pruned`` (flat indices, sorted) left the old active set; ``grown`` (sorted) entered the new one.
    An index in both was pruned and regrown in the same exploration (it keeps its value).
    """

    mask: torch.Tensor
    pruned: torch.Tensor
    grown: torch.Tensor


@torch.no_grad()
def prune_and_grow(values: torch.Tensor, grads: torch.Tensor, mask: torch.Tensor, n_update: int,
                   rng: np.random.Generator) -> Exploration:
    """One DSL exploration (paper Algorithm 1) on flat tensors, with exact counts.

    Prune: the ``R = min(n_update, nnz(mask))`` active entries of smallest ``|values|`` (ties at the
    threshold: lowest flat index first). Grow: the ``R`` entries of largest ``|grads|`` among the
    candidates = every entry inactive after pruning (old inactive and just pruned); ties at the
    threshold broken uniformly at random with ``rng``. So ``nnz`` is unchanged and
    ``#pruned == #grown == R`` (exact counts, docs/methods/dsl.md; the reference drops all ties at
    the threshold and may grow fewer when few candidates have a nonzero gradient).
    """
    values, grads, mask = values.reshape(-1), grads.reshape(-1), mask.reshape(-1).to(torch.bool)
    if not (values.numel() == grads.numel() == mask.numel()):
        raise MethodError("values, grads and mask must have the same number of entries")
    if n_update < 0:
        raise MethodError(f"n_update must be >= 0, got {n_update}")
    active = mask.nonzero().squeeze(1)
    r = min(int(n_update), active.numel())
    empty = torch.zeros(0, dtype=torch.long, device=mask.device)
    if r == 0:
        return Exploration(mask.clone(), empty, empty)
    pruned = active[smallest_exact(values[active].abs(), r)]
    new_mask = mask.clone()
    new_mask[pruned] = False
    candidates = (~new_mask).nonzero().squeeze(1)
    grown = candidates[largest_exact(grads[candidates].abs(), r, rng)]
    new_mask[grown] = True
    return Exploration(new_mask, pruned, grown)


class DSLHook(TrainHook):
    """The per-iteration part of DSL inside :func:`bench.training.fit_bpr`.

    After every Adam step: ``E <- E * M``; at ``t % interval == 0`` (``t`` = completed iterations),
    unless ``fix_mask``, an exploration with ``rho_t = update_ratio_at(t, t_end, ...)`` and
    ``R = ceil(rho_t K)`` on this step's gradient, then ``E <- E * M_new``. ``reset_adam_on_grow``
    zeroes the Adam moments of entries that were inactive before and are grown (not in the
    reference). ``on_explore(t, values, grads, old_mask, exploration)`` (flat, pre-exploration
    values and gradients) is for tests and diagnostics.

    Counters (over the whole run, including iterations after the state that early stopping
    restores): ``explorations``, ``pruned_total``, ``grown_total``, ``fired`` (OR of every mask seen,
    the ITOP-style "ever active" set), ``history`` (one small dict per exploration), ``last_step``.
    """

    def __init__(self, model: MaskedLightGCN, t_end: int, interval: int, rho0: float = 0.5,
                 eta_min: float = 0.005, decay: str = "cosine", rng: np.random.Generator | None = None,
                 reset_adam_on_grow: bool = False, fix_mask: bool = False,
                 on_explore: Callable[..., None] | None = None) -> None:
        if interval < 1:
            raise MethodError(f"exploration interval must be >= 1, got {interval}")
        update_ratio_at(0, t_end, rho0, eta_min, decay)  # validates t_end and decay
        self.model, self.t_end, self.interval = model, int(t_end), int(interval)
        self.rho0, self.eta_min, self.decay = float(rho0), float(eta_min), decay
        self.rng = rng if rng is not None else np.random.default_rng()
        self.reset_adam_on_grow, self.fix_mask, self.on_explore = reset_adam_on_grow, fix_mask, on_explore
        self.budget = model.nnz()
        self.fired = model.mask.reshape(-1).clone()
        self.explorations = self.pruned_total = self.grown_total = self.last_step = 0
        self.history: list[dict[str, float]] = []

    def rho(self, t: int) -> float:
        return update_ratio_at(t, self.t_end, self.rho0, self.eta_min, self.decay)

    def n_update(self, t: int) -> int:
        """``R = ceil(rho_t K)``, at most ``K``."""
        return min(self.budget, math.ceil(self.rho(t) * self.budget))

    @torch.no_grad()
    def step_end(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.last_step = step
        self.model.apply_mask_()  # E <- E * M after the Adam step
        if self.fix_mask or step % self.interval != 0:
            return
        self.explore(step, optimizer)

    @torch.no_grad()
    def explore(self, t: int, optimizer: torch.optim.Optimizer | None = None) -> Exploration:
        m = self.model
        shape = (m.n_users + m.n_items, m.dim)
        values = m.layer0().detach().reshape(-1)
        grads = torch.cat([_grad(m.user_emb), _grad(m.item_emb)], dim=0).reshape(-1)
        old = m.mask.reshape(-1)
        rho, r = self.rho(t), self.n_update(t)
        ex = prune_and_grow(values, grads, old, r, self.rng)
        if self.on_explore is not None:
            self.on_explore(t, values.clone(), grads.clone(), old.clone(), ex)
        m.set_mask_(ex.mask.reshape(shape))
        if self.reset_adam_on_grow and optimizer is not None:
            newly = torch.zeros_like(old)
            newly[ex.grown] = True
            newly &= ~old
            _reset_moments(optimizer, m, newly.reshape(shape))
        self.fired |= ex.mask
        self.explorations += 1
        self.pruned_total += int(ex.pruned.numel())
        self.grown_total += int(ex.grown.numel())
        self.history.append({"t": t, "rho": rho, "n_update": r, "pruned": int(ex.pruned.numel()),
                             "grown": int(ex.grown.numel())})
        return ex

    def state_dict(self) -> dict[str, Any]:
        """The exploration generator and counters (the mask is the model's buffers)."""
        return {"rng": self.rng.bit_generator.state, "fired": self.fired.clone(),
                "explorations": self.explorations, "pruned_total": self.pruned_total,
                "grown_total": self.grown_total, "last_step": self.last_step,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.fired = state["fired"].to(self.fired.device)
        self.explorations, self.pruned_total = state["explorations"], state["pruned_total"]
        self.grown_total, self.last_step = state["grown_total"], state["last_step"]
        self.history = [dict(h) for h in state["history"]]

    @property
    def fired_fraction(self) -> float:
        """Entries ever active / all entries (ITOP's exploration degree; code's ``fired_masks``)."""
        return float(self.fired.sum()) / self.fired.numel()


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.detach()


def _reset_moments(optimizer: torch.optim.Optimizer, model: MaskedLightGCN, newly: torch.Tensor) -> None:
    """Zero Adam's ``exp_avg`` / ``exp_avg_sq`` of the newly grown entries (option, not in the code)."""
    for p, rows in ((model.user_emb, newly[: model.n_users]), (model.item_emb, newly[model.n_users:])):
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0


# --- cost helpers (docs/methods/dsl.md, "Costs") ----------------------------------------------------

def paper_style_inference_macs(n_layers: int, dim: int, nnz_adj: int, n_nodes: int) -> float:
    """The paper's dense "MACs(In.)" (reverse-engineered from its tables): ``L d nnz(A) (N + M)``.

    Not a physical count (real LightGCN inference is ``L nnz(A) d + N M d``); reported only to
    compare with the paper's tables.
    """
    return float(n_layers) * dim * nnz_adj * n_nodes


def paper_style_sparse_factor(sparsity: float, n_layers: int) -> float:
    """The paper's DSL/RP MAC factor ``(1 - s) + s / L`` (from its tables); ``1 - s`` when ``L = 0``."""
    if n_layers <= 0:
        return 1.0 - sparsity
    return (1.0 - sparsity) + sparsity / n_layers


def training_state_bytes(n_entries: int, value_bytes: int = 4, mask_bytes: int = 1) -> dict[str, int]:
    """Analytic training-state bytes of the embedding table.

    ``dsl``: weights + gradient + two Adam moments (all dense) + the mask (a ``torch.bool`` buffer
    here, 1 B/entry; the reference keeps an fp32 mask); ``dense``: the same without the mask (the
    dense LightGCN trained by the same loop). Neither depends on the kept fraction.
    """
    dense = 4 * value_bytes * n_entries
    return {"dense": dense, "dsl": dense + mask_bytes * n_entries}


def exploration_compare_ops(n_entries: int) -> int:
    """Comparisons of one exploration counted as the reference does it: two sorts of ``n`` values,
    ``2 n ceil(log2 n)``. Our selection (``kthvalue``) is linear on average, so this is
    an upper bound; comparisons are not multiply-adds and are reported apart from MACs."""
    return 2 * n_entries * max(1, math.ceil(math.log2(max(n_entries, 2))))


# --- the paper's claims (docs/methods/dsl.md, "Claims checked by the report") ---------------------

# The paper's sparsity s is 1 - emb. Table 2 does not state its sparsity: the spec infers 50% on Gowalla
# and Yelp2018 from its MAC counts; Table 3 states 50%. Its Gowalla and Yelp2018 are the LightGCN
# paper's (catalog: gowalla, yelp2018). ``paper`` holds the figures of the first dataset named (d=64);
# the statement gives the others.
_SOURCE = "DSL paper (Wang et al., WSDM 2024)"
_DSL = Arm("dsl", {"decay": "cosine", "fix_mask": False}, emb=0.5)
CLAIMS = (
    # margin 1%: Table 2's LightGCN rows have DSL at most 0.49% below dense (Gowalla l=3: 0.17%)
    Claim(id="dsl-par-dense", method="dsl",
          source=f"{_SOURCE}, Table 2 (LightGCN l=3) and Table 3 (Yelp2018)",
          statement="DSL at 50% sparsity is on par with the dense LightGCN (within 1% of its Recall@20) "
                    "on Gowalla and on Yelp2018 (0.0641 vs 0.0642 at d=64, 0.0675 vs 0.0673 at d=128).",
          datasets=("gowalla", "yelp2018"), subject=_DSL, comparator=Arm("lightgcn"), margin=0.01,
          paper={"subject": 0.1813, "comparator": 0.1816}),
    Claim(id="dsl-above-rp", method="dsl", source=f"{_SOURCE}, Table 3 (Yelp2018, 50% sparsity)",
          statement="DSL at 50% sparsity is above random pruning (RP: a static random mask trained from "
                    "scratch) on Yelp2018 (d=64; d=128: 0.0675 vs 0.0608).",
          datasets=("yelp2018",), subject=_DSL, comparator=Arm("random-drop", {"per_row": False}, emb=0.5),
          relation="above", paper={"subject": 0.0641, "comparator": 0.0557}),
    Claim(id="dsl-above-omp", method="dsl", source=f"{_SOURCE}, Table 3 (Yelp2018, 50% sparsity)",
          statement="DSL at 50% sparsity is above one-shot magnitude pruning of the trained model with "
                    "fine-tuning (OMP) on Yelp2018 (d=64; d=128: 0.0675 vs 0.0661).",
          datasets=("yelp2018",), subject=_DSL, comparator=Arm("magnitude", {"variant": "omp"}, emb=0.5),
          relation="above", paper={"subject": 0.0641, "comparator": 0.0622}),
    Claim(id="dsl-cosine-above-no-decay", method="dsl", source=f"{_SOURCE}, Table 4 (decay functions)",
          statement="DSL's cosine-decayed update ratio is above a constant ratio (no decay) on Gowalla, "
                    "Yelp2018 (0.0641 vs 0.0618) and Amazon-Book (0.0406 vs 0.0394); sparsity unstated, "
                    "50% inferred.",
          datasets=("gowalla", "yelp2018", "amazon-book"), subject=_DSL,
          comparator=Arm("dsl", {"decay": "constant", "fix_mask": False}, emb=0.5),
          relation="above", paper={"subject": 0.1812, "comparator": 0.1773}),
    Claim(id="dsl-cosine-above-linear", method="dsl", source=f"{_SOURCE}, Table 4 (decay functions)",
          statement="DSL's cosine-decayed update ratio is above a linearly decayed one on Gowalla and "
                    "Yelp2018 (0.0641 vs 0.0638; not on Amazon-Book: 0.0406 vs 0.0409); sparsity "
                    "unstated, 50% inferred.",
          datasets=("gowalla", "yelp2018"), subject=_DSL,
          comparator=Arm("dsl", {"decay": "linear", "fix_mask": False}, emb=0.5),
          relation="above", paper={"subject": 0.1812, "comparator": 0.1803}),
)


# --- the method ----------------------------------------------------------------------------------

@register_method("dsl")
class DSL(Method):
    """Dynamic Sparse Learning (docs/methods/dsl.md; see the module docstring)."""

    axes = ("emb",)
    random_streams: ClassVar[Mapping[str, int]] = {"emb_mask": MASK_STREAMS["emb_mask"], "dsl": 4}
    claims = CLAIMS
    description = ("Dynamic Sparse Learning (Wang et al., WSDM 2024): LightGCN trained from scratch with a "
                   "fixed budget of nonzero embedding entries, periodically pruning by magnitude and "
                   "regrowing by gradient")
    knobs = (
        Knob("update_ratio", 0.5, "rho0: fraction of the K active entries pruned and regrown by the "
                                  "first exploration (docs/methods/dsl.md)", min=0, max=1),
        Knob("update_interval", 0, "dT: optimiser iterations between explorations; 0 = auto, 2.5 epochs: "
                                   "floor(2.5 x iterations per epoch + 0.5) (docs/methods/dsl.md)", min=0),
        Knob("eta_min", 0.005, "floor of the decayed update ratio at T_end (code 0.005, paper Eq. 2: 0); "
                               "capped at update_ratio", min=0, max=1),
        Knob("decay", "cosine", "update-ratio schedule over the planned T_end (paper Table 4)",
             choices=DECAYS),
        Knob("reset_adam_on_grow", False, "zero the Adam moments of newly grown entries (the reference "
                                          "never resets them)"),
        Knob("fix_mask", False, "never explore: train on the static random initial mask (the RP baseline)"),
        Knob("sampler", "interaction", "epoch triples: 'interaction' = every training interaction once "
                                       "(the harness default); 'user' = the code's: |train| draws of a "
                                       "uniform user, a uniform positive of theirs, a uniform negative "
                                       "(docs/methods/dsl.md)", choices=SAMPLERS),
    )
    target_mapping = ("K = round(emb x (U + I) x d) kept entries of the joint user+item table (one global "
                      "unstructured mask); dim and layers are the budget's")
    uses_base = False
    simplifications = (
        "optimiser, lr schedule, dim, layers, batch, reg and epochs are the budget's (by default a constant "
        "lr); the code's regime is Adam with budget lr = 1e-2, lr_schedule = cosine, lr_min = 1e-4, "
        "lr_period = 1000 (annealed per epoch), dim 64, 3 layers, batch 1024, reg 1e-4, 1000 epochs "
        "(bench/configs/dsl-official.toml)",
        "sampler = interaction (the default) samples every training interaction once per epoch, as the "
        "other methods do; the code draws |R_train| users uniformly, then a uniform positive of each "
        "(sampler = user). sampler = user skips the draws of users without a training item, where the "
        "code would fail (it assumes every user has one): on such data (yelp-lightgnn: 538 of 42,712 "
        "users) an epoch has that fraction fewer triples, and T_end is planned on the expected count",
        "model selection on validation with early stopping, best-validation state restored (the code "
        "reports the best test epoch); the rho schedule is always computed on the planned "
        "T_end = epochs x batches per epoch, also when early stopping ends training sooner",
        "exact-K random initial mask from the emb_mask stream (= random-drop's mask), not Bernoulli(r)",
        "exact-R prune (ties at the threshold: lowest flat index) and exact-R growth restricted to "
        "inactive entries with random tie-break (the code drops every tie and may grow fewer)",
        "auto dT = 2.5 epochs of iterations instead of 3000 iterations",
        "eta_min is capped at update_ratio so that update_ratio = 0 is RP; linear decay implemented "
        "(broken in the released code)",
        "Xavier-uniform init per table (users, items) as the shared backbone does, not over the "
        "joint (U + I) x d matrix",
    )

    def epoch_sampler(self, ctx: MethodContext) -> EpochSampler | None:
        """The ``sampler`` option's epoch sampler; ``None`` is the harness default (every interaction
        once). ``user``: :class:`bench.sampling.MultiNegativeSampler` with one negative, the code's
        sampler (docs/methods/dsl.md), except that draws of users without a training item are skipped (the
        code assumes there are none); its ``triples_per_epoch`` is then the expected count."""
        if self.options.sampler == "interaction":
            return None
        data = ctx.data
        return MultiNegativeSampler(data.train, data.n_users, data.n_items, n_neg=1)

    @staticmethod
    def initial_model(ctx: MethodContext, target: Target, config=None) -> tuple[MaskedLightGCN, int]:
        """The masked LightGCN at step 0 (the RP mask with exact K) and the budget ``K``."""
        config = config or ctx.train_config()
        dense = build_lightgcn(ctx.data, config, ctx.device)
        rows = dense.n_users + dense.n_items
        n = rows * dense.dim
        k = kept_count(target.emb, n)
        mask = torch.from_numpy(exact_random_mask(n, k, ctx.rng("emb_mask")).reshape(rows, dense.dim))
        return MaskedLightGCN.from_lightgcn(dense, mask, mask_in_forward=False), k

    @classmethod
    def device_checks(cls) -> tuple[DeviceCheck, ...]:
        """The masked embedding table (:func:`methods.shared.masking.masked_table_device_check`)."""
        return (masked_table_device_check(),)

    def compress(self, context: MethodContext, target: Target) -> CompressedModel:
        o = self.options
        config = context.train_config()
        model, k = self.initial_model(context, target, config)
        n = (model.n_users + model.n_items) * model.dim
        sampler = self.epoch_sampler(context)
        if sampler is None:
            iters_per_epoch = math.ceil(len(context.data.train) / config.batch_size)
        else:
            iters_per_epoch = math.ceil(sampler.triples_per_epoch / sampler.batch_triples(config.batch_size))
        t_end = config.epochs * iters_per_epoch
        interval = exploration_interval(iters_per_epoch, o.update_interval)
        hook = DSLHook(model, t_end, interval, o.update_ratio, o.eta_min, o.decay,
                       rng=context.rng("dsl"), reset_adam_on_grow=o.reset_adam_on_grow,
                       fix_mask=o.fix_mask)
        result = context.fit(model, config, hooks=[hook], sampler=sampler)
        model.apply_mask_()  # the restored best state already satisfies it; kept as a guard

        parts, shared_settings, measurements = masked_model_report(model)
        layers = model.n_layers
        graph = model.graph
        sparsity = 1.0 - k / n
        n_nodes = model.n_users + model.n_items
        paper_in_dense = paper_style_inference_macs(layers, model.dim, graph.nnz, n_nodes)
        factor = paper_style_sparse_factor(sparsity, layers)
        state = training_state_bytes(n)
        planned = 0 if o.fix_mask else t_end // interval
        ops = exploration_compare_ops(n)
        measurements.update({
            "training_state_bytes_analytic": state["dsl"],
            "training_state_bytes_dense_model": state["dense"],
            "paper_style_macs_inference_dense": paper_in_dense,
            "paper_style_macs_inference": paper_in_dense * factor,
            "paper_style_macs_train_dense": paper_in_dense * t_end,
            "paper_style_macs_train": paper_in_dense * factor * t_end,
            "paper_style_sparse_factor": factor,
            "dsl_explorations": hook.explorations,
            "dsl_pruned_total": hook.pruned_total,
            "dsl_grown_total": hook.grown_total,
            "dsl_fired_fraction": hook.fired_fraction,
            "dsl_exploration_compare_ops_total": ops * hook.explorations,
        })
        settings = {
            **shared_settings, "dim": model.dim, "n_layers": layers, "density": k / n,
            "update_ratio": o.update_ratio, "eta_min": min(o.eta_min, o.update_ratio),
            "decay": o.decay, "reset_adam_on_grow": o.reset_adam_on_grow, "fix_mask": o.fix_mask,
            "update_interval": interval, "sampler": o.sampler,
            "update_interval_rule": ("given" if o.update_interval else f"auto: floor("
                                     f"{AUTO_INTERVAL_EPOCHS} x {iters_per_epoch} iterations/epoch + 0.5)"),
            "iterations_per_epoch": iters_per_epoch, "t_end_planned": t_end,
            "iterations_done": hook.last_step, "explorations_planned": planned,
            "explorations_done": hook.explorations, "best_epoch": result.best_epoch,
            "exploration_compare_ops_per_exploration": ops,
            "cost_note": ("train MACs: fvcore count of the dense BPR step (dense table and gradient, as "
                          "computed); not counted as MACs: the Adam update and re-mask multiply (n per "
                          "iteration), and explorations (two selections over n entries every dT "
                          "iterations, reported as sort-equivalent comparisons 2 n ceil(log2 n)); "
                          "paper_style_* follow the paper's bookkeeping and are not physical counts"),
        }
        return CompressedModel(module=model, artifact=parts, graph=graph, n_layers=layers,
                               training=context.cost, settings=settings, measurements=measurements)
