"""pytest-benchmark benchmarks of the hot kernels on the real ``yelp-lightgnn`` dataset (issue 8).

* propagation: ``NormalizedGraph.matmul`` (``Â @ X``, d = 64), forward and forward + backward, and
  ``NormalizedGraph.row_product`` (the rows of one training batch), for every backend of
  :data:`bench.backbone.graph.BACKENDS` that is installed;
* one BPR training step of LightGCN as :func:`bench.training.fit_bpr` takes it (``bpr_loss``,
  backward, Adam step) at batch 4096, d = 64, 2 layers;
* full-ranking evaluation (:func:`bench.evaluation.evaluate_embeddings`, test split, training and
  validation items masked) at the harness's default memory budget and at a small one (many chunks).

Every benchmark also checks what it timed against an independent reference (scipy / float64
autograd / rank counting), so a wrong kernel fails the test, whatever its speed.

Modes. Short (default; what ``pytest`` and CI run): few rounds, evaluation on a fixed sample of
2048 test users. ``RECSHRINK_BENCH_FULL=1``: all test users and more rounds. Torch runs on
``RECSHRINK_BENCH_THREADS`` threads (default 1) so that timings compare across machines' loads.

Record and compare across commits (results go to ``.benchmarks/``, git-ignored)::

    pytest tests/benchmarks --benchmark-only --benchmark-autosave
    pytest tests/benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=mean:25%

``--benchmark-disable`` runs each function once as a plain test (the checks still run).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from bench.backbone.graph import BACKENDS, NormalizedGraph, normalized_adjacency
from bench.data.dataset import InteractionData
from bench.data.loading import load_dataset
from bench.device import seed_everything
from bench.evaluation import DEFAULT_EVAL_MEMORY_BYTES, DEFAULT_KS, EvalResult, evaluate_embeddings
from bench.metrics import METRIC_NAMES, metric_key
from bench.sampling import InteractionSampler
from bench.training import TrainConfig, bpr_step, build_lightgcn, make_adam
from tests.conftest import SHARED_DATASETS

FULL = os.environ.get("RECSHRINK_BENCH_FULL", "").strip().lower() in ("1", "true", "yes")
MODE = "full" if FULL else "short"
THREADS = int(os.environ.get("RECSHRINK_BENCH_THREADS", "1"))
DATASET = "yelp-lightgnn"
DIM = 64
N_LAYERS = 2
BATCH = 4096
EVAL_SAMPLE_USERS = 2048  # short mode: a fixed sample of the test users
SMALL_EVAL_MEMORY_BYTES = 32 * 2**20  # ~100 users per chunk on yelp-lightgnn's 26,822 items
# (rounds, warmup rounds) per kernel: milliseconds for propagation, ~0.2 s per BPR step and ~0.5 s
# per evaluation of the short sample on one CPU thread
ROUNDS = {
    "propagation": (30, 3) if FULL else (10, 2),
    "bpr": (20, 2) if FULL else (3, 1),
    "evaluation": (5, 1) if FULL else (3, 1),
}

pytestmark = pytest.mark.benchmark


def _pedantic(benchmark, kernel: str, target, **kwargs):
    rounds, warmup = ROUNDS[kernel]
    benchmark.extra_info.update(mode=MODE, threads=THREADS, dataset=DATASET)
    return benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=1, **kwargs)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


# --- inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """Pin torch's intra-op threads for the module (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> InteractionData:
    """``yelp-lightgnn`` from the shared datasets, through the project's loader (cache in the
    session's temporary folder, as for the other tests). Skipped when absent, failed under CI."""
    if not (SHARED_DATASETS / DATASET / "train.txt").is_file():
        msg = f"the shared dataset {DATASET} is missing at {SHARED_DATASETS} (set RECSHRINK_SHARED)"
        if _ci():
            pytest.fail(msg + "; CI=true, so this is an error, not a skip", pytrace=False)
        pytest.skip(msg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSHRINK_OFFLINE", "1")
        mp.setenv("RECSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return load_dataset(DATASET, SHARED_DATASETS)


@pytest.fixture(scope="module")
def graphs(data: InteractionData) -> dict[str, NormalizedGraph]:
    """The training graph per backend, built on first use (see :func:`_graph`)."""
    return {}


def _graph(graphs: dict[str, NormalizedGraph], data: InteractionData, backend: str) -> NormalizedGraph:
    if backend == "torch_sparse" and importlib.util.find_spec("torch_sparse") is None:
        pytest.skip("backend torch_sparse needs the optional package torch-sparse (extra `sparse`)")
    if backend not in graphs:
        graphs[backend] = normalized_adjacency(data.n_users, data.n_items, data.train[:, 0],
                                               data.train[:, 1], backend=backend)
    return graphs[backend]


def _scipy_matrix(graph: NormalizedGraph) -> sp.csr_matrix:
    """The graph's entries as a float64 scipy matrix (the reference product)."""
    n = graph.n_nodes
    return sp.csr_matrix((graph.values.double().numpy(), (graph.rows.numpy(), graph.cols.numpy())),
                         shape=(n, n))


@pytest.fixture(scope="module")
def features(data: InteractionData) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed ``(U + I) x d`` input and a fixed upstream gradient of the same shape."""
    gen = torch.Generator().manual_seed(0)
    n = data.n_users + data.n_items
    return torch.randn(n, DIM, generator=gen), torch.randn(n, DIM, generator=gen)


# --- propagation --------------------------------------------------------------------------------


@pytest.mark.benchmark(group="propagation-forward")
@pytest.mark.parametrize("backend", BACKENDS)
def test_propagation_forward(benchmark, data, graphs, features, backend: str) -> None:
    graph = _graph(graphs, data, backend)
    x, _ = features
    y = _pedantic(benchmark, "propagation", graph.matmul, args=(x,))
    benchmark.extra_info.update(nnz=graph.nnz, nodes=graph.n_nodes, dim=DIM)
    expected = _scipy_matrix(graph) @ x.double().numpy()
    assert y.shape == x.shape and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.benchmark(group="propagation-batch-rows")
@pytest.mark.parametrize("backend", BACKENDS)
def test_propagation_batch_rows(benchmark, data, graphs, features, backend: str) -> None:
    """``NormalizedGraph.row_product``: the last forward layer of a BPR step, for the distinct rows of
    one batch of 4096 (users, positives, negatives) only."""
    from bench.backbone.lightgcn import _distinct_rows

    graph = _graph(graphs, data, backend)
    x, _ = features
    sampler = InteractionSampler(data.train, data.n_users, data.n_items)
    users, pos, neg = (t[:BATCH] for t in sampler.epoch(torch.Generator().manual_seed(0)))
    rows, _ = _distinct_rows(torch.cat([users, pos + data.n_users, neg + data.n_users]), graph.n_nodes)
    y = _pedantic(benchmark, "propagation", graph.row_product, args=(rows, x))
    selected = _scipy_matrix(graph)[rows.numpy()]
    benchmark.extra_info.update(rows=rows.numel(), selected_nnz=selected.nnz, nnz=graph.nnz, dim=DIM)
    np.testing.assert_allclose(y.numpy(), selected @ x.double().numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(y, graph.product(x).index_select(0, rows))  # the full product's rows, exactly


@pytest.mark.benchmark(group="propagation-forward-backward")
@pytest.mark.parametrize("backend", BACKENDS)
def test_propagation_forward_backward(benchmark, data, graphs, features, backend: str) -> None:
    graph = _graph(graphs, data, backend)
    x0, g = features
    x = x0.clone().requires_grad_(True)

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
        x.grad = None
        y = graph.matmul(x)
        y.backward(g)
        return y.detach(), x.grad

    y, grad = _pedantic(benchmark, "propagation", forward_backward)
    benchmark.extra_info.update(nnz=graph.nnz, nodes=graph.n_nodes, dim=DIM)
    a = _scipy_matrix(graph)
    np.testing.assert_allclose(y.numpy(), a @ x0.double().numpy(), rtol=1e-5, atol=1e-6)
    # the gradient of sum(g * (A x)) is A^T g: the transpose taken explicitly, not assumed symmetric
    np.testing.assert_allclose(grad.numpy(), a.T @ g.double().numpy(), rtol=1e-5, atol=1e-6)


# --- one BPR step ---------------------------------------------------------------------------------


def _reference_bpr(graph: NormalizedGraph, n_users: int, user_emb: torch.Tensor, item_emb: torch.Tensor,
                   batch: tuple[torch.Tensor, ...], reg: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """LightGCN's BPR + squared-L2 loss and its gradients in float64, independent of the model's
    code: propagation forward and backward by scipy (``dL/dE^0 = Σ_l (A^T)^l dL/dE / (L + 1)``),
    autograd only for the loss on the propagated rows."""
    a = _scipy_matrix(graph)
    a_t = a.T.tocsr()
    layer = np.concatenate([user_emb.detach().double().numpy(), item_emb.detach().double().numpy()])
    acc = layer.copy()
    for _ in range(N_LAYERS):
        layer = a @ layer
        acc += layer
    out = torch.from_numpy(acc / (N_LAYERS + 1)).requires_grad_(True)
    e0 = torch.cat([user_emb.detach(), item_emb.detach()]).double().requires_grad_(True)
    users, pos, neg = batch
    u, p, q = out[users], out[n_users + pos], out[n_users + neg]
    bpr = F.softplus(-((u * p).sum(1) - (u * q).sum(1))).mean()
    l2 = 0.5 * (e0[users].pow(2).sum() + e0[n_users + pos].pow(2).sum()
                + e0[n_users + neg].pow(2).sum()) / len(users)
    loss = bpr + reg * l2
    loss.backward()
    g = out.grad.numpy()
    back = g.copy()
    for _ in range(N_LAYERS):
        g = a_t @ g
        back += g
    grad = e0.grad + torch.from_numpy(back / (N_LAYERS + 1))
    return float(loss.detach()), grad[:n_users], grad[n_users:]


@pytest.mark.benchmark(group="bpr-step")
def test_bpr_step(benchmark, data) -> None:
    config = TrainConfig(dim=DIM, n_layers=N_LAYERS, batch_size=BATCH, backend="csr", device="cpu")
    seed_everything(0)
    model = build_lightgcn(data, config, torch.device("cpu"))
    optimizer = make_adam([p for p in model.parameters() if p.requires_grad], config.lr)  # fit_bpr's
    sampler = InteractionSampler(data.train, data.n_users, data.n_items)
    users_all, pos_all, neg_all = sampler.epoch(torch.Generator().manual_seed(0))
    step = sampler.batch_triples(config.batch_size)
    u, p, q = users_all[:step], pos_all[:step], neg_all[:step]
    before: dict[str, torch.Tensor] = {}

    def snapshot() -> None:  # untimed, before every round: the state the timed step starts from
        before.update(user=model.user_emb.detach().clone(), item=model.item_emb.detach().clone())

    def step_once() -> float:  # the step fit_bpr takes (bench.training.bpr_step), without hooks
        return bpr_step(model, optimizer, (u, p, q), config)

    loss = _pedantic(benchmark, "bpr", step_once, setup=snapshot)
    benchmark.extra_info.update(batch=step, dim=DIM, layers=N_LAYERS)
    assert math.isfinite(loss) and loss > 0
    ref_loss, ref_gu, ref_gi = _reference_bpr(model.graph, data.n_users, before["user"], before["item"],
                                              (u, p, q), config.reg)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    # the gradients the step applied (still on the parameters after optimizer.step)
    for grad, ref in ((model.user_emb.grad, ref_gu), (model.item_emb.grad, ref_gi)):
        torch.testing.assert_close(grad.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # Adam moved every row the batch touched
    assert (model.user_emb.detach()[u] != before["user"][u]).any(dim=1).all()
    assert (model.item_emb.detach()[p] != before["item"][p]).any(dim=1).all()
    assert (model.item_emb.detach()[q] != before["item"][q]).any(dim=1).all()


# --- full-ranking evaluation ------------------------------------------------------------------------


@dataclass
class EvalInputs:
    user_emb: torch.Tensor
    item_emb: torch.Tensor
    heldout: sp.csr_matrix
    exclude: list[sp.csr_matrix]
    reference: dict[str, float]
    n_users: int


def _restrict_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    keep = np.zeros(m.shape[0])
    keep[rows] = 1.0
    out = sp.csr_matrix(sp.diags(keep) @ m)
    out.eliminate_zeros()
    return out


def _reference_metrics(user_emb: torch.Tensor, item_emb: torch.Tensor, heldout: sp.csr_matrix,
                       exclude: list[sp.csr_matrix], ks: tuple[int, ...]) -> dict[str, float]:
    """Brute force by rank counting: a held-out item's rank is 1 + the number of items that are
    not excluded and score strictly higher (scores as evaluate_embeddings computes them)."""
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)
    item_t = item_emb.t().contiguous()
    excluded = sum(exclude[1:], exclude[0]).tocsr() if exclude else None
    disc = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    sums = {metric_key(m, k): 0.0 for m in METRIC_NAMES for k in ks}
    for start in range(0, len(users), 256):
        chunk = users[start : start + 256]
        with torch.no_grad():
            scores = (user_emb[torch.from_numpy(chunk)] @ item_t).numpy().astype(np.float64)
        if excluded is not None:
            ex = excluded[chunk].tocoo()
            scores[ex.row, ex.col] = -np.inf
        held = heldout[chunk]
        for j in range(len(chunk)):
            row = scores[j]
            items = held.indices[held.indptr[j] : held.indptr[j + 1]]
            ranks = 1 + (row[None, :] > row[items][:, None]).sum(axis=1)
            n = len(items)
            for k in ks:
                top = ranks[ranks <= k]
                sums[metric_key("recall", k)] += len(top) / n
                sums[metric_key("precision", k)] += len(top) / k
                sums[metric_key("hit", k)] += float(len(top) > 0)
                sums[metric_key("mrr", k)] += 1.0 / top.min() if len(top) else 0.0
                sums[metric_key("ndcg", k)] += disc[top - 1].sum() / disc[: min(n, k)].sum()
    return {name: s / len(users) for name, s in sums.items()}


@pytest.fixture(scope="module")
def eval_inputs(data: InteractionData) -> EvalInputs:
    """Test-split evaluation inputs with embeddings that rank well (so the checks see hits): a
    rank-64 truncated SVD of the training matrix plus a little noise (no tied scores, no all-zero
    rows for users or items without training interactions)."""
    train = data.matrix("train").tocoo()
    r = torch.sparse_coo_tensor(np.stack([train.row, train.col]), train.data.astype(np.float32),
                                train.shape, check_invariants=True).coalesce()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        left, s, right = torch.svd_lowrank(r, q=DIM, niter=2)
    gen = torch.Generator().manual_seed(1)
    root = s.sqrt()
    user_emb = left * root + 1e-3 * torch.randn(data.n_users, DIM, generator=gen)
    item_emb = right * root + 1e-3 * torch.randn(data.n_items, DIM, generator=gen)
    heldout = data.matrix("test")
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)
    if not FULL and len(users) > EVAL_SAMPLE_USERS:
        sample = np.sort(np.random.default_rng(0).choice(users, EVAL_SAMPLE_USERS, replace=False))
        heldout = _restrict_rows(heldout, sample)
        users = sample
    exclude = [data.matrix("train"), data.matrix("valid")]
    reference = _reference_metrics(user_emb, item_emb, heldout, exclude, DEFAULT_KS)
    assert reference[metric_key("hit", max(DEFAULT_KS))] > 0.05, "the reference ranking has too few hits"
    return EvalInputs(user_emb, item_emb, heldout, exclude, reference, len(users))


def _check_metrics(result: EvalResult, inputs: EvalInputs) -> None:
    assert result.n_users == inputs.n_users
    assert result.metrics.keys() == inputs.reference.keys()
    for name, value in inputs.reference.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.benchmark(group="evaluation")
def test_evaluation_default_budget(benchmark, eval_inputs: EvalInputs) -> None:
    e = eval_inputs
    result = _pedantic(benchmark, "evaluation", evaluate_embeddings,
                       args=(e.user_emb, e.item_emb, e.heldout, e.exclude),
                       kwargs={"ks": DEFAULT_KS, "memory_bytes": DEFAULT_EVAL_MEMORY_BYTES})
    benchmark.extra_info.update(users=result.n_users, chunk_users=result.chunk_users)
    _check_metrics(result, e)


@pytest.mark.benchmark(group="evaluation")
def test_evaluation_small_budget(benchmark, eval_inputs: EvalInputs) -> None:
    e = eval_inputs
    result = _pedantic(benchmark, "evaluation", evaluate_embeddings,
                       args=(e.user_emb, e.item_emb, e.heldout, e.exclude),
                       kwargs={"ks": DEFAULT_KS, "memory_bytes": SMALL_EVAL_MEMORY_BYTES})
    benchmark.extra_info.update(users=result.n_users, chunk_users=result.chunk_users)
    assert math.ceil(result.n_users / result.chunk_users) >= 4, "the small budget should give many chunks"
    _check_metrics(result, e)
    single = evaluate_embeddings(e.user_emb, e.item_emb, e.heldout, e.exclude, ks=DEFAULT_KS,
                                 chunk_users=e.n_users)
    assert single.chunk_users == single.n_users == e.n_users
    assert result.metrics == single.metrics  # chunking changes nothing, bit for bit
