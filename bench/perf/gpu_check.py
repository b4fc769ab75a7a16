"""Check the CUDA path against the CPU in one command: kernels, scoring latency, a tiny matrix.

    python -m bench.perf.gpu_check [--out gpu_check.md]

On a machine with a CUDA device it

1. runs every kernel we own on the CPU and on the GPU from the same inputs and compares every
   output and gradient within the check's stated tolerance: the harness's own (the propagation
   products of every installed backend of :data:`bench.backbone.graph.BACKENDS`, forward and
   backward, the ``recshrink::spmm`` operator, the fused LightGCN readout of the BPR step, the
   chunked full-ranking evaluation) and every registered method's
   :meth:`~bench.contract.Method.device_checks` (reached through the registry: the harness never
   imports a method);
2. times scoring (gather B users' representations, score every item, top 20) at batches
   1/64/1024 with CUDA events (:func:`bench.measure.latency.measure_latency`) on a synthetic
   power-law LightGCN;
3. runs one tiny matrix (every registered method on a small four-community dataset written to a
   temporary folder, emb target 0.8, a 3-epoch budget) on the GPU and on the CPU and compares the
   test metrics of each cell;
4. writes a markdown summary (``--out``): device, versions, each check's largest absolute and
   relative error and its verdict, the latency table, the matrix comparison.

It exits 1, naming every failed check on stderr, when anything disagrees or raises, and 0 when
everything passes. Without a CUDA device it says so (with what ``torch.cuda.is_available()``
returned) and exits 0 without doing anything else. ``--device cpu`` (hidden) runs the same
machinery with the CPU as the device under test: a self-test of the comparison and the summary
(about 2 minutes on 2 shared CPU cores, most of it the CPU latency figures and the two matrices).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.contract import DeviceCheck

DEFAULT_OUT = Path("gpu_check.md")
LATENCY_BATCHES = (1, 64, 1024)
CPU = torch.device("cpu")

# The propagation products: each output entry is a float32 sum of n terms (a row of the graph, n up
# to ~40 in the checks below, terms O(1/deg) x O(1)) that cuSPARSE may add in another order (and the
# spmm operator's index_add_ with atomics, in any order). Reordering a sum of random-sign terms moves
# it by about sqrt(n) * eps * sum|terms| = 6 * 6e-8 * 3 = 1e-6, compounded over two layers: rtol 1e-4
# with atol 1e-5 (for sums that cancel to near 0) leaves a margin of about 10, and a wrong entry is
# off by O(0.1). The CPU backends' cross-check (bench/perf/backends.py) uses the same rtol.
SPMM_RTOL, SPMM_ATOL = 1e-4, 1e-5
# The evaluation check scores small-integer embeddings (|x| <= 4, d = 16): every dot product is an
# integer below 2^24, exact in float32 whatever the order of the sum (and even with TF32, which
# represents |x| <= 4 exactly and accumulates in float32), so ties are real ties and the
# top-K lists must be identical (the tie rule, lower item first, included). The per-user metrics are
# then computed from identical hit lists with float32 log2/divisions on the device: a few ulps, rtol
# 1e-6 with atol 1e-7.
EVAL_RTOL, EVAL_ATOL = 1e-6, 1e-7
# The tiny matrix trains every method for 3 epochs on each device and compares the test metrics. The
# training samples come from CPU-seeded generators, but the GPU sums in another order and some tables
# are initialised from the device's own generator (LightGNN's WeightedLightGCN creates its tables on
# the device), so the two models differ by rounding or, at most, like two seeds. Two CPU runs with
# seeds 0 and 1 differ by at most 0.063 in any test metric of any method (LEGCF's recall@20; most
# differ by < 0.03), while a trained model reaches recall@10 ~0.67 against ~0.1 for a random ranking,
# so a kernel that breaks training moves most methods' metrics by ~0.5: 0.15 is 2.4x the seed-to-seed
# spread. The kernel checks above are the precise comparison; this one catches what only a whole
# training run on the device shows (a crash, a device mismatch, NaNs, a model that learns nothing).
MATRIX_ATOL = 0.15


# --- comparing two runs of a check -----------------------------------------------------------------


@dataclass
class CheckResult:
    """The comparison of one check's outputs on the reference device and the device under test."""

    name: str
    source: str
    passed: bool
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    rtol: float = 0.0
    atol: float = 0.0
    n_tensors: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def message(self) -> str:
        return f"check {self.name} ({self.source}) failed: " + "; ".join(self.failures)


def compare_outputs(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], rtol: float,
                    atol: float) -> tuple[float, float, list[str]]:
    """Largest absolute and relative error over every tensor, and what disagrees (empty: all agree).

    Floating-point tensors agree when ``|a - b| <= atol + rtol |b|`` everywhere (``b`` the
    reference; NaN only where the reference is NaN, infinities equal); integer and boolean tensors
    when equal. The relative error is ``|a - b| / |b|`` over the entries where ``b != 0``.
    """
    failures: list[str] = []
    if not isinstance(other, dict) or not isinstance(reference, dict):
        return float("nan"), float("nan"), ["run() must return a dict of tensors"]
    if set(reference) != set(other):
        failures.append(f"different outputs: reference {sorted(reference)}, device {sorted(other)}")
    max_abs = max_rel = 0.0
    for key in sorted(set(reference) & set(other)):
        b, a = reference[key], other[key]
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            failures.append(f"{key}: not a tensor")
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            failures.append(f"{key}: shape/dtype {tuple(a.shape)} {a.dtype} != reference "
                            f"{tuple(b.shape)} {b.dtype}")
            continue
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point() or a.is_complex():
            a64, b64 = a.to(torch.float64), b.to(torch.float64)
            ok = torch.isclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True)
            finite = torch.isfinite(a64) & torch.isfinite(b64)
            diff = (a64 - b64).abs()[finite]
            rel = diff / b64.abs()[finite]
            nonzero = b64[finite] != 0
            if diff.numel():
                max_abs = max(max_abs, float(diff.max()))
            if bool(nonzero.any()):
                max_rel = max(max_rel, float(rel[nonzero].max()))
            if not bool(ok.all()):
                bad = int((~ok).sum())
                worst = float(((a64 - b64).abs() - rtol * b64.abs() - atol).nan_to_num(math.inf).max())
                failures.append(f"{key}: {bad} of {a.numel()} entries outside rtol {rtol:g} / atol "
                                f"{atol:g} (worst by {worst:.3g})")
        else:
            if a.numel():
                d = (a.to(torch.float64) - b.to(torch.float64)).abs()
                max_abs = max(max_abs, float(d.max()))
                nonzero = b != 0
                if bool(nonzero.any()):
                    max_rel = max(max_rel, float((d[nonzero] / b[nonzero].to(torch.float64).abs()).max()))
            if not torch.equal(a, b):
                failures.append(f"{key}: {int((a != b).sum())} of {a.numel()} entries differ "
                                "(integer output, must be equal)")
    return max_abs, max_rel, failures


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_check(check: DeviceCheck, device: torch.device, seed: int = 0, source: str = "harness",
              reference_device: torch.device = CPU) -> CheckResult:
    """``check`` on ``reference_device`` and on ``device`` with the same seed, compared (an exception in
    either run is a failure naming it)."""
    result = CheckResult(check.name, source, passed=False, rtol=check.rtol, atol=check.atol,
                         description=check.description)
    t0 = time.perf_counter()
    try:
        reference = check.run(reference_device, seed)
        other = check.run(device, seed)
        _synchronize(device)
    except Exception as exc:  # a kernel that raises on one device is the loudest mismatch there is
        result.failures.append(f"raised {type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - t0
        return result
    result.seconds = time.perf_counter() - t0
    result.max_abs, result.max_rel, result.failures = compare_outputs(reference, other, check.rtol,
                                                                      check.atol)
    result.n_tensors = len(reference) if isinstance(reference, dict) else 0
    result.passed = not result.failures
    return result


# --- the harness's own kernels ---------------------------------------------------------------------


def _random_graph(seed: int, n_users: int = 40, n_items: int = 60, n_pairs: int = 300,
                  backend: str = "csr", device: torch.device = CPU):
    from bench.backbone.graph import normalized_adjacency

    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, n_users, n_pairs), rng.integers(0, n_items, n_pairs)
    return normalized_adjacency(n_users, n_items, users, items, backend=backend, device=device)


def _product_kernels(backend: str) -> Callable[[torch.device, int], dict[str, torch.Tensor]]:
    """``Â X`` by :meth:`NormalizedGraph.product` (fresh output and written into a NaN-filled one: the
    ``beta = 0`` addmm must ignore it), by :meth:`NormalizedGraph.matmul` (the autograd function) and
    its backward ``Â G``, on a 100-node graph with d = 16."""

    def run(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        graph = _random_graph(seed, backend=backend, device=device)
        x = torch.randn(graph.n_nodes, 16, generator=gen).to(device)
        g = torch.randn(graph.n_nodes, 16, generator=gen).to(device)
        fresh = graph.product(x)
        into = graph.product(x, out=torch.full_like(x, float("nan")))
        xg = x.clone().requires_grad_(True)
        y = graph.matmul(xg)
        y.backward(g)
        return {"product": fresh, "product_into_nan_buffer": into, "matmul": y.detach(), "grad_x": xg.grad}

    return run


def _spmm_op_kernel(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """The traceable operator ``recshrink::spmm`` (:func:`bench.backbone.graph.sparse_matmul`):
    ``A X`` for a COO matrix, a gather, a scale and an ``index_add_``."""
    from bench.backbone.graph import sparse_matmul

    gen = torch.Generator().manual_seed(seed)
    graph = _random_graph(seed)
    x = torch.randn(graph.n_nodes, 16, generator=gen)
    out = sparse_matmul(graph.rows.to(device), graph.cols.to(device), graph.values.to(device),
                        x.to(device), graph.n_nodes)
    return {"spmm": out}


def _bpr_step_kernels(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """One BPR loss of LightGCN (2 layers, d = 16) through the fused readout (``_ReadoutRows``: rows of
    ``(Σ_l Â^l) E⁰ / (L+1)`` and their backward, :func:`bench.backbone.propagation_sum`), the same loss
    through autograd's per-layer path (:meth:`LightGCN.propagate`), and the gradients of both."""
    from bench.backbone.lightgcn import LightGCN

    gen = torch.Generator().manual_seed(seed)
    graph = _random_graph(seed, device=device)
    table = torch.randn(graph.n_nodes, 16, generator=gen) * 0.3
    users = torch.randint(0, graph.n_users, (64,), generator=gen).to(device)
    pos = torch.randint(0, graph.n_items, (64,), generator=gen).to(device)
    neg = torch.randint(0, graph.n_items, (64,), generator=gen).to(device)
    model = LightGCN(graph.n_users, graph.n_items, 16, 2, graph)
    with torch.no_grad():
        model.user_emb.copy_(table[: graph.n_users])
        model.item_emb.copy_(table[graph.n_users:])
    model = model.to(device)
    out: dict[str, torch.Tensor] = {}
    bpr, penalty = model.bpr_loss(users, pos, neg, 1e-4)
    (bpr + penalty).backward()
    out.update(fused_bpr=bpr.detach(), fused_penalty=penalty.detach(), fused_grad_users=model.user_emb.grad,
               fused_grad_items=model.item_emb.grad)
    model.zero_grad(set_to_none=True)
    u_all, i_all = model.propagate()
    diff = (u_all[users] * i_all[pos]).sum(1) - (u_all[users] * i_all[neg]).sum(1)
    torch.nn.functional.softplus(-diff).mean().backward()
    out.update(propagated=torch.cat([u_all, i_all]).detach(), autograd_grad_users=model.user_emb.grad,
               autograd_grad_items=model.item_emb.grad)
    return out


def _evaluation_kernels(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Chunked full-ranking evaluation (:func:`bench.evaluation.evaluate_embeddings`, 7 users per
    chunk, training and validation items excluded) of integer embeddings (exact scores with many
    ties) of 90 users x 120 items, and :func:`bench.ranking.top_k_indices` of the same scores: the
    top-20 lists and every per-user metric at K = 5, 10, 20."""
    import scipy.sparse as sp

    from bench.evaluation import evaluate_embeddings
    from bench.ranking import top_k_indices

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_users, n_items = 90, 120
    users = torch.randint(-4, 5, (n_users, 16), generator=gen).float()
    items = torch.randint(-4, 5, (n_items, 16), generator=gen).float()

    def split(count: int) -> sp.csr_matrix:
        u, i = rng.integers(0, n_users, count), rng.integers(0, n_items, count)
        m = sp.csr_matrix((np.ones(count), (u, i)), shape=(n_users, n_items))
        m.data[:] = 1
        return m

    train, valid, test = split(900), split(150), split(300)
    res = evaluate_embeddings(users.to(device), items.to(device), test, [train, valid], ks=(5, 10, 20),
                              chunk_users=7, return_per_user=True)
    out = {f"per_user_{k}": torch.from_numpy(np.asarray(v, dtype=np.float32))
           for k, v in res.per_user.items()}
    out["top20"] = top_k_indices(users.to(device) @ items.to(device).T, 20)
    return out


def harness_checks() -> list[DeviceCheck]:
    """The harness's own kernels as device checks (every installed propagation backend)."""
    from bench.perf.backends import available_backends

    checks = [DeviceCheck(f"backbone.product[{b}]", _product_kernels(b), SPMM_RTOL, SPMM_ATOL,
                          f"Â X by the {b} backend: product, product into a NaN buffer, matmul, backward")
              for b in available_backends()]
    checks += [
        DeviceCheck("backbone.spmm_op", _spmm_op_kernel, SPMM_RTOL, SPMM_ATOL,
                    "the recshrink::spmm operator (COO gather, scale, index_add_)"),
        DeviceCheck("backbone.bpr_step", _bpr_step_kernels, SPMM_RTOL, SPMM_ATOL,
                    "LightGCN BPR loss and gradients, fused readout and autograd path"),
        DeviceCheck("evaluation.full_ranking", _evaluation_kernels, EVAL_RTOL, EVAL_ATOL,
                    "chunked full-ranking top-K with exclusions and ties: top-20 lists, per-user metrics"),
    ]
    return checks


def all_checks() -> tuple[list[tuple[DeviceCheck, str]], list[str]]:
    """The harness's checks, then every registered method's (:meth:`Method.device_checks`), each with
    who declares it, and the errors met collecting them. A check several methods declare (same name,
    same function) runs once; one name with two different functions, or a ``device_checks`` that
    raises, is an error (and a failure of the GPU check)."""
    from bench.registry import available_methods

    out: dict[str, tuple[DeviceCheck, list[str]]] = {c.name: (c, ["harness"]) for c in harness_checks()}
    errors: list[str] = []
    for name, cls in available_methods().items():
        try:
            declared = list(cls.device_checks())
        except Exception as exc:
            errors.append(f"method {name}: device_checks() raised {type(exc).__name__}: {exc}")
            continue
        for check in declared:
            if not isinstance(check, DeviceCheck):
                errors.append(f"method {name}: device_checks() returned {check!r}, not a DeviceCheck")
            elif check.name in out:
                known, sources = out[check.name]
                code = getattr(known.run, "__code__", None)  # the same function, made again
                same = known.run is check.run or (code is not None
                                                  and code is getattr(check.run, "__code__", None))
                if same:
                    sources.append(name)
                else:
                    errors.append(f"method {name}: device check {check.name!r} has the name of a different "
                                  f"check of {', '.join(sources)}")
            else:
                out[check.name] = (check, [name])
    return [(c, ", ".join(s)) for c, s in out.values()], errors


# --- latency ---------------------------------------------------------------------------------------


def scoring_latency(device: torch.device, n_edges: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Propagation and scoring latency (batches :data:`LATENCY_BATCHES`, top 20) of a LightGCN (d = 64,
    2 layers) on a power-law graph with ``n_edges`` training edges (:mod:`bench.synthetic`), timed
    by :func:`bench.measure.latency.measure_latency` (CUDA events on a CUDA device)."""
    from bench.backbone.graph import normalized_adjacency
    from bench.backbone.lightgcn import LightGCN
    from bench.contract import CompressedModel
    from bench.measure.latency import measure_latency, timer_name
    from bench.synthetic import powerlaw_interactions

    data = powerlaw_interactions(n_edges, seed)
    graph = normalized_adjacency(data.n_users, data.n_items, data.train[:, 0], data.train[:, 1],
                                 device=device)
    torch.manual_seed(seed)
    module = LightGCN(data.n_users, data.n_items, 64, 2, graph).to(device)
    model = CompressedModel(module=module, artifact=[], graph=graph, n_layers=2)
    figures = measure_latency(model, batches=LATENCY_BATCHES, warmup=3, repeats=repeats, seed=seed)
    return {"n_users": data.n_users, "n_items": data.n_items, "n_edges": n_edges, "timer": timer_name(device),
            "figures": figures}


# --- the tiny matrix -------------------------------------------------------------------------------

_DATASET = "gpucheck"
# the matrix compares test metrics only: no FLOP counting or latency in its cells
MATRIX_BUDGET = """
measure = { flops = false, latency = false }
budget = { epochs = 3, dim = 16, batch_size = 256, lr = 0.01, ks = [10, 20], valid_metric = "recall@20" }
"""


def write_matrix_dataset(root: Path, seed: int = 0) -> Path:
    """A four-community dataset (300 users, 100 items: each user likes 12 of the 25 items of their
    community) with a given 70/10/20 train/valid/test split, as a user TOML dataset named
    ``gpucheck`` under ``root``. A model that learns the communities ranks the held-out items far
    above chance (recall@10 ~0.4 against ~0.1 for a random ranking)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(300):
        community = np.arange(25) + 25 * (u % 4)
        pairs += [(u, i) for i in rng.choice(community, 12, replace=False)]
    arr = np.array(pairs, dtype=np.int64)
    labels = rng.permutation(len(arr)) % 10
    folder = root / _DATASET
    folder.mkdir(parents=True, exist_ok=True)
    for split, keep in (("train", labels >= 3), ("valid", labels == 2), ("test", labels < 2)):
        np.savetxt(folder / f"{split}.txt", arr[keep], fmt="%d")
    (root / f"{_DATASET}.toml").write_text(
        'description = "two communities (gpu_check)"\nsplit = { protocol = "given" }\n'
        f'[[source]]\nkind = "local"\nformat = "edgelist"\ndir = "{_DATASET}"\n'
        'files = { train = "train.txt", valid = "valid.txt", test = "test.txt" }\n')
    return root


def run_tiny_matrix(device: torch.device, work: Path, methods: Sequence[str] | None = None,
                    emb: float = 0.8, seed: int = 0) -> dict[tuple[str, float], dict[str, Any]]:
    """Run the tiny matrix (every registered method, or ``methods``, at ``emb``, one ``seed``) on
    ``device`` in ``work``; return each cell's status, error and metrics by (method, emb target)."""
    from bench.config import load_config
    from bench.runner import run_matrix
    from bench.store import ResultStore

    data_root = write_matrix_dataset(work / "data")
    method_list = '"all"' if methods is None else "[" + ", ".join(f'"{m}"' for m in methods) + "]"
    config_path = work / "gpucheck.toml"
    config_path.write_text(f'name = "gpucheck"\ndatasets = ["{_DATASET}"]\nmethods = {method_list}\n'
                           f'emb_targets = [{emb}]\nseeds = [{seed}]\ndata_dir = "{data_root}"\n'
                           + MATRIX_BUDGET)
    tag = str(device).replace(":", "")
    run_matrix(load_config(config_path), work / f"out-{tag}", device=str(device), progress=False,
               log=lambda msg: None, checkpoint_dir=work / f"checkpoints-{tag}", report=False)
    with ResultStore(work / f"out-{tag}" / "results.sqlite") as store:
        cells = store.cells()
    return {(c["method"], float(c["emb_target"])): {"status": c["status"], "error": c["error"],
                                                     "metrics": c["metrics"]} for c in cells}


@dataclass
class MatrixRow:
    method: str
    emb: float
    metric: str
    reference: float
    device: float
    passed: bool
    note: str = ""


def compare_matrices(reference: dict[tuple[str, float], dict[str, Any]],
                     other: dict[tuple[str, float], dict[str, Any]], atol: float = MATRIX_ATOL
                     ) -> tuple[list[MatrixRow], list[str]]:
    """Test metric by test metric, the cells of two runs of the tiny matrix (``reference``: the CPU)
    and the failures: a cell missing or failed on either side, or a metric apart by more than ``atol``."""
    rows: list[MatrixRow] = []
    failures: list[str] = []
    for key in sorted(set(reference) | set(other)):
        method, emb = key
        ref, dev = reference.get(key), other.get(key)
        if ref is None or dev is None:
            failures.append(f"matrix cell {method} emb={emb:g}: missing on the "
                            f"{'device' if dev is None else 'reference'} run")
            continue
        bad = [(side, c) for side, c in (("reference", ref), ("device", dev)) if c["status"] != "ok"]
        if bad:
            failures.append(f"matrix cell {method} emb={emb:g} failed on the "
                            + "; ".join(f"{side} run: {c['error']}" for side, c in bad))
            continue
        for metric in sorted(set(ref["metrics"]) | set(dev["metrics"])):
            if metric.startswith("valid_"):  # model selection's own figures; the test metrics are the result
                continue
            a, b = dev["metrics"].get(metric), ref["metrics"].get(metric)
            if not isinstance(a, int | float) or not isinstance(b, int | float):
                continue
            ok = abs(a - b) <= atol or (math.isnan(a) and math.isnan(b))
            rows.append(MatrixRow(method, emb, metric, float(b), float(a), ok))
            if not ok:
                failures.append(f"matrix cell {method} emb={emb:g}: {metric} {a:.4f} on the device vs "
                                f"{b:.4f} on the CPU (|Δ| > {atol:g})")
    return rows, failures


# --- summary ---------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda runtime (torch build)": str(torch.version.cuda),
           "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
           # TF32 would round matmul inputs to 10 mantissa bits; the tolerances assume it is off
           "tf32 matmul allowed": str(torch.backends.cuda.matmul.allow_tf32),
           "float32 matmul precision": torch.get_float32_matmul_precision()}
    for pkg in ("numpy", "scipy", "torch-sparse", "recshrink"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    from bench.environment import git_sha

    out["git commit"] = str(git_sha())
    return out


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3g}"


def summary_markdown(device: torch.device, checks: Sequence[CheckResult], latency: dict[str, Any] | None,
                     matrix_rows: Sequence[MatrixRow] | None, failures: Sequence[str],
                     seconds: float, self_test: bool = False) -> str:
    """The markdown summary: environment, kernel checks, scoring latency, matrix, verdict."""
    from bench.measure.latency import latency_info
    from bench.perf.common import md_table

    info = latency_info(device)
    lines = ["# GPU check" + (" (self-test: the CPU against itself)" if self_test else ""), ""]
    lines += ["## Verdict", "", (f"**FAIL**: {len(failures)} problem(s)" if failures else "**PASS**: every "
              "check within its tolerance") + f" ({seconds:.0f} s).", ""]
    lines += [f"- {f}" for f in failures] + ([""] if failures else [])
    lines += ["## Environment", ""]
    env = {"device under test": str(device), "device name": info.get("device_name"),
           "reference device": "cpu", "timer": info.get("timer"),
           "cuda driver": info.get("cuda_driver_version", "n/a"), **_versions()}
    lines.append(md_table(["what", "value"], [[k, v] for k, v in env.items()]))
    lines += ["## Kernel checks", "", "Each check runs from the same seeded CPU-built inputs on the CPU and "
              "on the device under test; every returned output and gradient must satisfy "
              "|device - cpu| <= atol + rtol |cpu| (integer outputs: equal).", ""]
    from bench.backbone.graph import BACKENDS
    from bench.perf.backends import available_backends

    missing = [b for b in BACKENDS if b not in available_backends()]
    if missing:
        lines += [f"Propagation backends not installed here, so not checked: {', '.join(missing)}.", ""]
    lines.append(md_table(
        ["check", "declared by", "tensors", "max abs err", "max rel err", "rtol", "atol", "seconds",
         "result"],
        [[c.name, c.source, c.n_tensors, _fmt(c.max_abs), _fmt(c.max_rel), f"{c.rtol:g}", f"{c.atol:g}",
          f"{c.seconds:.2f}", "pass" if c.passed else "**FAIL**"] for c in checks]))
    described = [c for c in checks if c.description]
    if described:
        lines += ["What each check computes:", ""]
        lines += [f"- `{c.name}`: {c.description}" for c in described] + [""]
    lines += ["## Scoring latency", ""]
    if latency is None:
        lines += ["Not measured.", ""]
    else:
        f = latency["figures"]
        lines += [f"LightGCN (d = 64, 2 layers) on a power-law graph of {latency['n_edges']:,} edges "
                  f"({latency['n_users']:,} users, {latency['n_items']:,} items); timer "
                  f"`{latency['timer']}`, {int(f['latency_repeats'])} repeats after "
                  f"{int(f['latency_warmup'])} warm-up calls. Scoring: gather B users, score all items, "
                  "top 20.",
                  ""]
        stats = ("p50", "p95", "iqr")
        rows = [["propagation", *(f"{f[f'latency_propagation_{s}_ms']:.3f}" for s in stats)]]
        rows += [[f"scoring, batch {b}", *(f"{f[f'latency_scoring_b{b}_{s}_ms']:.3f}" for s in stats)]
                 for b in LATENCY_BATCHES]
        lines.append(md_table(["what", "p50 ms", "p95 ms", "IQR ms"], rows))
    lines += ["## Tiny matrix: device under test against the CPU", ""]
    if matrix_rows is None:
        lines += ["Not run (`--no-matrix`).", ""]
    else:
        lines += ["Every registered method at emb 0.8 on a 300 x 100 four-community dataset, 3 epochs, "
                  f"seed 0, run on each device; a metric passes when |device - cpu| <= {MATRIX_ATOL:g}.", ""]
        cells: dict[tuple[str, float], list[MatrixRow]] = {}
        for r in matrix_rows:
            cells.setdefault((r.method, r.emb), []).append(r)
        table = []
        for (method, emb), rows_ in cells.items():
            worst = max(rows_, key=lambda r: abs(r.device - r.reference))
            by_metric = {r.metric: r for r in rows_}
            shown = by_metric.get("recall@10") or rows_[0]
            table.append([method, f"{emb:g}", len(rows_), shown.metric, f"{shown.reference:.4f}",
                          f"{shown.device:.4f}", worst.metric, f"{abs(worst.device - worst.reference):.4f}",
                          "pass" if all(r.passed for r in rows_) else "**FAIL**"])
        lines.append(md_table(["method", "emb", "metrics", "shown", "cpu", "device", "largest difference at",
                               "largest difference", "result"], table))
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf.gpu_check",
        description="Compare every kernel we own (and every registered method's device checks) on a CUDA "
                    "device against the CPU, time scoring latency with CUDA events, run a tiny matrix on "
                    "both and write a markdown summary. Exits 1 naming any failed check; without a CUDA "
                    "device it says so and exits 0.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown summary (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every check's inputs (default: %(default)s)")
    p.add_argument("--latency-edges", type=int, default=1_000_000,
                   help="training edges of the synthetic graph timed for latency (default: %(default)s)")
    p.add_argument("--latency-repeats", type=int, default=20,
                   help="timed calls per figure (default: %(default)s)")
    p.add_argument("--no-matrix", action="store_true", help="skip the tiny matrix")
    p.add_argument("--matrix-methods", nargs="+", default=None,
                   help="run only these methods in the tiny matrix (default: every registered method)")
    # the device under test; "cpu" self-tests the comparison and the summary against the CPU itself
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    self_test = args.device == "cpu"
    if not self_test:
        available = torch.cuda.is_available()
        if not available:
            print(f"gpu_check needs a CUDA GPU: torch.cuda.is_available() returned {available} (torch "
                  f"{torch.__version__}, built for CUDA {torch.version.cuda}); nothing was checked.")
            return 0
    device = torch.device(args.device or "cuda")
    if device.type not in ("cuda", "cpu"):
        print(f"gpu_check: unsupported device {device}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    failures: list[str] = []
    results: list[CheckResult] = []
    checks, errors = all_checks()
    failures += errors
    for check, source in checks:
        res = run_check(check, device, args.seed, source)
        results.append(res)
        print(f"[gpu_check] {check.name}: {'pass' if res.passed else 'FAIL'} (max abs {_fmt(res.max_abs)}, "
              f"max rel {_fmt(res.max_rel)})", flush=True)
        if not res.passed:
            failures.append(res.message)
    latency = None
    try:
        latency = scoring_latency(device, args.latency_edges, args.latency_repeats, args.seed)
        print(f"[gpu_check] latency: scoring b1024 p50 "
              f"{latency['figures']['latency_scoring_b1024_p50_ms']:.3f} ms", flush=True)
    except Exception as exc:
        failures.append(f"check latency failed: raised {type(exc).__name__}: {exc}")
    matrix_rows = None
    if not args.no_matrix:
        try:
            with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
                work = Path(tmp)
                reference = run_tiny_matrix(CPU, work / "reference", args.matrix_methods)
                other = run_tiny_matrix(device, work / "device", args.matrix_methods)
            matrix_rows, matrix_failures = compare_matrices(reference, other)
            failures += matrix_failures
            print(f"[gpu_check] tiny matrix: {len(reference)} cells, "
                  f"{'pass' if not matrix_failures else 'FAIL'}", flush=True)
        except Exception as exc:
            failures.append(f"check tiny matrix failed: raised {type(exc).__name__}: {exc}")
    text = summary_markdown(device, results, latency, matrix_rows, failures, time.perf_counter() - t0,
                            self_test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"[gpu_check] summary written to {args.out}")
    if failures:
        print(f"gpu_check FAILED ({len(failures)}):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("gpu_check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
