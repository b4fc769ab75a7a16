"""LightGNN's iterative pruning (docs/methods/lightgnn.md, "Target mapping"): the schedule a target
maps to, the importance-distillation score, exact-count pruning steps and the achieved ratios.

Counts: a step with rate ``p`` on ``n`` alive candidates drops exactly ``⌊n·p⌋`` (the
authors' code drops ``⌊n·p⌋ + 1`` plus ties), the smallest by ``|score|`` with ties broken by the
canonical entry order (stable sort), so after ``k`` steps ``n_k = n_{k-1} - ⌊n_{k-1} p⌋``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.api import MethodError

# paper Table 4: (p_emb, p_adj)
PRESETS = {"mild": (0.2, 0.05), "aggressive": (0.2, 0.15)}
SCHEDULES = ("exact", *PRESETS)
# a preset accepts an edge target within this distance of what its k prunings give (Table 4 rounding)
PRESET_EDGE_TOLERANCE = 0.02


@dataclass(frozen=True)
class Schedule:
    """``k`` prunings with rates ``p_emb``, ``p_adj``: ``k + 1`` training runs."""

    k: int
    p_emb: float
    p_adj: float
    mode: str

    @property
    def runs(self) -> int:
        return self.k + 1

    def expected(self) -> tuple[float, float]:
        """``((1 - p_emb)^k, (1 - p_adj)^k)``: the nominal emb and edge ratios."""
        return (1 - self.p_emb) ** self.k, (1 - self.p_adj) ** self.k


def schedule_for_target(emb: float, edge: float | None, mode: str = "exact") -> Schedule:
    """``k = round(ln ρ_e / ln 0.8)``; ``exact`` solves ``p_emb = 1 - ρ_e^{1/k}`` and
    ``p_adj = 1 - ρ_a^{1/k}``; ``mild``/``aggressive`` keep Table 4's rates (the edge target, if
    given, must be what they reach within 0.02). An emb target of 1 with an edge target uses
    ``k = round(ln ρ_a / ln 0.95)`` and prunes no embedding entries.
    """
    if mode not in SCHEDULES:
        raise MethodError(f"unknown LightGNN schedule {mode!r}; choose from {list(SCHEDULES)}")
    edge_v = 1.0 if edge is None else float(edge)
    if emb >= 1 and edge_v >= 1:
        return Schedule(0, 0.0, 0.0, mode)
    if mode == "exact":
        if emb < 1:
            k = max(1, round(math.log(emb) / math.log(0.8)))
            p_emb = 1 - emb ** (1 / k)
        else:
            k = max(1, round(math.log(edge_v) / math.log(0.95)))
            p_emb = 0.0
        return Schedule(k, p_emb, 1 - edge_v ** (1 / k), mode)
    p_emb, p_adj = PRESETS[mode]
    if emb >= 1:
        raise MethodError(f"schedule {mode!r} prunes embeddings at {p_emb}/run; give an emb target < 1")
    k = max(1, round(math.log(emb) / math.log(1 - p_emb)))
    reached = (1 - p_adj) ** k
    if edge is not None and abs(reached - edge_v) > PRESET_EDGE_TOLERANCE:
        raise MethodError(
            f"schedule {mode!r} reaches edge ratio {reached:.3f} after {k} prunings (emb {emb:g}), not "
            f"{edge_v:g}; use schedule 'exact' or an edge target within {PRESET_EDGE_TOLERANCE}")
    return Schedule(k, p_emb, p_adj, mode)


def kept_after(n: int, p: float, k: int) -> int:
    """Alive candidates after ``k`` steps from ``n`` (invariant 4): ``n <- n - ⌊n p⌋``."""
    for _ in range(k):
        n -= math.floor(n * p)
    return n


def drop_smallest(scores: torch.Tensor, alive: torch.Tensor, p: float) -> torch.Tensor:
    """New alive mask: the ``⌊n·p⌋`` alive entries of smallest ``|scores|`` dropped (stable ties)."""
    alive = alive.to(torch.bool).reshape(-1)
    idx = alive.nonzero().squeeze(1)
    n_drop = math.floor(len(idx) * p)
    out = alive.clone()
    if n_drop:
        order = torch.argsort(scores.reshape(-1)[idx].abs(), stable=True)
        out[idx[order[:n_drop]]] = False
    return out


def drop_random(alive: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    """New alive mask: ``⌊n·p⌋`` alive entries dropped uniformly at random (Table 3's ~P variants)."""
    alive = alive.to(torch.bool).reshape(-1)
    idx = alive.nonzero().squeeze(1).cpu().numpy()
    n_drop = math.floor(len(idx) * p)
    out = alive.clone()
    if n_drop:
        out[torch.from_numpy(rng.choice(idx, size=n_drop, replace=False)).to(out.device)] = False
    return out


@torch.no_grad()
def sigma_term(rows: torch.Tensor, cols: torch.Tensor, final: torch.Tensor,
               chunk: int = 1 << 20) -> torch.Tensor:
    """``σ(<ē_x, ē_y>)`` per entry ``(x, y)`` of the (intermediate) teacher's final embeddings."""
    out = torch.empty(len(rows), device=final.device)
    for s in range(0, len(rows), chunk):
        r, c = rows[s : s + chunk], cols[s : s + chunk]
        out[s : s + chunk] = torch.sigmoid((final[r] * final[c]).sum(dim=1))
    return out


def importance_scores(w_student: torch.Tensor, sigma: torch.Tensor | None, w_middle: torch.Tensor | None,
                      beta1: float, beta2: float, alive: torch.Tensor) -> torch.Tensor:
    """The importance-distillation score (paper Eq. 8):
    ``|w^S_e + β₂ σ(<ē_M,x, ē_M,y>) + β₁ w^M_(x,y)|`` on alive entries, 0 on dead ones (``β₁``
    multiplies the intermediate's weight on the same directed entry, ``β₂`` the σ-term; a missing
    term is left out, e.g. without an intermediate model or importance KD)."""
    s = w_student.detach().clone()
    if sigma is not None:
        s = s + beta2 * sigma
    if w_middle is not None:
        s = s + beta1 * w_middle
    return torch.where(alive.to(torch.bool), s.abs(), torch.zeros_like(s))


@torch.no_grad()
def edge_ratios(rows: torch.Tensor, cols: torch.Tensor, alive: torch.Tensor, n_users: int,
                n_items: int, n_pairs: int) -> dict[str, float]:
    """The reported edge ratios (docs/methods/lightgnn.md, "Target mapping"): the code's ratio
    (alive / all stored entries, self-loops and both directions counted), the directed user-item
    entries kept, and the interactions kept with both directions alive or with at least one."""
    alive = alive.to(torch.bool)
    ui = (rows < n_users) != (cols < n_users)
    user = torch.where(rows < n_users, rows, cols)[ui & alive]
    item = torch.where(rows < n_users, cols, rows)[ui & alive] - n_users
    codes, counts = torch.unique(user * n_items + item, return_counts=True)
    loops = rows == cols
    return {
        "edge_entries_ratio": float(alive.float().mean()),
        "edge_directed_ratio": float((ui & alive).sum()) / max(1, 2 * n_pairs),
        "edge_interactions_both": float((counts == 2).sum()) / max(1, n_pairs),
        "edge_interactions_any": float(len(codes)) / max(1, n_pairs),
        "self_loops_kept": float((loops & alive).sum()) / max(1, int(loops.sum())),
    }
