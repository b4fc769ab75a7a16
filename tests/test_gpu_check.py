"""``python -m bench.perf.gpu_check``, exercised on the CPU: the no-GPU path, the comparison of two runs
of every device check (the CPU against itself), an injected mismatch, the matrix comparison and the
markdown summary."""

from __future__ import annotations

import pytest
import torch

from bench.api import DeviceCheck, Method
from bench.perf.gpu_check import (
    CPU,
    all_checks,
    compare_matrices,
    compare_outputs,
    main,
    run_check,
    summary_markdown,
)

FAST = ["--device", "cpu", "--no-matrix", "--latency-edges", "2000", "--latency-repeats", "1"]


def _flaky_run():
    """``run`` of a check that returns other values on its second call (a device that disagrees)."""
    calls = []

    def run(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
        calls.append(device)
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3) + seed
        if len(calls) > 1:
            x = x + torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
        return {"y": x.to(device), "codes": torch.arange(4).to(device)}

    return run


class _FlakyMethod(Method):
    name = "flaky"

    @classmethod
    def device_checks(cls):
        return (DeviceCheck("flaky.kernel", _flaky_run(), rtol=1e-5, atol=1e-6),)


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "summary.md"
    assert main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "needs a CUDA GPU" in text and "torch.cuda.is_available() returned False" in text
    assert not out.exists()  # nothing else was done


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_every_registered_check_agrees_with_itself_on_cpu():
    checks, errors = all_checks()
    assert errors == []
    by_name = {c.name: source for c, source in checks}
    # the harness's kernels and every built-in method's, reached through the registry
    assert {"backbone.product[csr]", "backbone.product[coo]", "backbone.spmm_op", "backbone.bpr_step",
            "evaluation.full_ranking"} <= set(by_name)
    assert by_name["shared.masked_table"] == "dsl, magnitude, random-drop"  # declared thrice, run once
    assert by_name["shared.lsq_fake_quantize"] == "lerg"
    assert {by_name[f"lightgnn.{n}"] for n in ("weighted_matmul[self_loops]", "weighted_matmul[closure]",
                                                "weighted_lightgcn")} == {"lightgnn"}
    for check, source in checks:
        result = run_check(check, CPU, seed=1, source=source)
        assert result.passed, result.message
        assert result.max_abs == 0 and result.n_tensors > 0


def test_method_checks_return_gradients():
    """Each kernel with a backward returns its gradients (not None), so the GPU compares them too."""
    checks = {c.name: c for c, _ in all_checks()[0]}
    lsq = checks["shared.lsq_fake_quantize"].run(CPU, 0)
    assert lsq["b4_grad_step"].abs().sum() > 0 and (lsq["b4_grad_table"] == 0).any()  # some clipped
    weighted = checks["lightgnn.weighted_matmul[closure]"].run(CPU, 0)
    assert weighted["grad_weights"].abs().sum() > 0 and weighted["grad_x"].abs().sum() > 0
    masked = checks["shared.masked_table"].run(CPU, 0)
    assert ((masked["in_forward_after_step"] == 0) == (masked["kept_masked_after_step"] == 0)).all()


def test_a_mismatch_fails_naming_the_check():
    result = run_check(DeviceCheck("flaky.kernel", _flaky_run()), CPU)
    assert not result.passed
    assert "flaky.kernel" in result.message and "y: 1 of 6 entries" in result.message
    assert result.max_abs == pytest.approx(0.5)


def test_a_check_that_raises_fails_naming_it():
    def run(device, seed):
        raise RuntimeError("no kernel for this device")

    result = run_check(DeviceCheck("broken.kernel", run), CPU)
    assert not result.passed
    assert "broken.kernel" in result.message and "RuntimeError: no kernel for this device" in result.message


def test_compare_outputs_rules():
    a = {"x": torch.tensor([1.0, float("nan"), 2.0]), "i": torch.tensor([1, 2, 3])}
    assert compare_outputs(a, {k: v.clone() for k, v in a.items()}, 0.0, 0.0)[2] == []
    near = {"x": torch.tensor([1.0 + 1e-6, float("nan"), 2.0]), "i": torch.tensor([1, 2, 3])}
    max_abs, max_rel, failures = compare_outputs(a, near, 1e-5, 0.0)
    assert failures == []
    assert max_abs == pytest.approx(1e-6, rel=0.1) and max_rel == pytest.approx(1e-6, rel=0.1)
    assert compare_outputs(a, {"x": a["x"], "i": torch.tensor([1, 2, 4])}, 1.0, 1.0)[2] == [
        "i: 1 of 3 entries differ (integer output, must be equal)"]
    assert compare_outputs(a, {"x": torch.tensor([1.0, 0.0, 2.0]), "i": a["i"]}, 1.0, 1.0)[2]  # NaN lost
    assert "different outputs" in compare_outputs(a, {"x": a["x"]}, 0, 0)[2][0]
    assert "shape/dtype" in compare_outputs(a, {"x": a["x"].double(), "i": a["i"]}, 0, 0)[2][0]


def test_a_plugin_mismatch_fails_the_command(monkeypatch, tmp_path, capsys):
    from bench import registry

    methods = {**registry.available_methods(), "flaky": _FlakyMethod}
    monkeypatch.setattr(registry, "available_methods", lambda: dict(sorted(methods.items())))
    out = tmp_path / "gpu_check.md"
    assert main([*FAST, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "gpu_check FAILED (1)" in err and "check flaky.kernel (flaky) failed" in err
    text = out.read_text()
    assert "**FAIL**: 1 problem(s)" in text
    assert "| flaky.kernel | flaky | 2 | 0.5 |" in text and "**FAIL** |" in text


def test_a_clashing_check_name_is_an_error(monkeypatch):
    from bench import registry

    class Clash(Method):
        name = "clash"

        @classmethod
        def device_checks(cls):
            return (DeviceCheck("backbone.spmm_op", _flaky_run()),)

    methods = {**registry.available_methods(), "clash": Clash}
    monkeypatch.setattr(registry, "available_methods", lambda: methods)
    _, errors = all_checks()
    assert errors == ["method clash: device check 'backbone.spmm_op' has the name of a different check of "
                      "harness"]


def test_self_test_summary_has_every_section(tmp_path, capsys):
    out = tmp_path / "deep" / "gpu_check.md"
    assert main([*FAST, "--out", str(out)]) == 0
    assert "gpu_check passed" in capsys.readouterr().out
    text = out.read_text()
    for heading in ("# GPU check (self-test: the CPU against itself)", "## Verdict", "## Environment",
                    "## Kernel checks", "## Scoring latency", "## Tiny matrix"):
        assert heading in text
    assert "**PASS**" in text and "FAIL" not in text
    assert "| device under test | cpu |" in text and "| torch | " in text
    for name in ("backbone.product[csr]", "evaluation.full_ranking", "shared.lsq_fake_quantize",
                 "lightgnn.weighted_matmul[closure]", "shared.masked_table"):
        assert f"| {name} |" in text
    assert "- `shared.lsq_fake_quantize`: LSQ fake quantisation" in text
    for row in ("propagation", "scoring, batch 1", "scoring, batch 64", "scoring, batch 1024"):
        row = f"| {row} |"
        assert row in text


def _cell(metrics, status="ok", error=None):
    return {"status": status, "error": error, "metrics": metrics}


def test_compare_matrices():
    ref = {("lightgcn", 1.0): _cell({"test_recall@10": 0.40, "test_ndcg@10": 0.30, "valid_recall@10": 0.9}),
           ("dsl", 0.5): _cell({"test_recall@10": 0.35})}
    close = {("lightgcn", 1.0): _cell({"test_recall@10": 0.41, "test_ndcg@10": 0.30}),
             ("dsl", 0.5): _cell({"test_recall@10": 0.35})}
    rows, failures = compare_matrices(ref, close)
    assert failures == [] and len(rows) == 3 and all(r.passed for r in rows)  # validation ones skipped
    far = {("lightgcn", 1.0): _cell({"test_recall@10": 0.10, "test_ndcg@10": 0.30}),
           ("dsl", 0.5): _cell({}, "failed", "CUDA error: an illegal memory access")}
    rows, failures = compare_matrices(ref, far)
    assert failures == [
        "matrix cell dsl emb=0.5 failed on the device run: CUDA error: an illegal memory access",
        "matrix cell lightgcn emb=1: test_recall@10 0.1000 on the device vs 0.4000 on the CPU (|Δ| > 0.15)"]
    assert [r.passed for r in rows] == [True, False]  # ndcg, then recall (sorted by name)
    _, failures = compare_matrices(ref, {("dsl", 0.5): _cell({"test_recall@10": 0.35})})
    assert failures == ["matrix cell lightgcn emb=1: missing on the device run"]
    text = summary_markdown(CPU, [], None, rows, failures, 1.0)
    assert ("| lightgcn | 1 | 2 | test_ndcg@10 | 0.3000 | 0.3000 | test_recall@10 | 0.3000 | **FAIL** |"
            in text)
    assert text.count("| lightgcn |") == 1 and text.count("| dsl |") == 0  # dsl: failed, no row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_backends_script_refuses_cuda_without_a_gpu(capsys):
    from bench.perf.backends import main

    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda", "--datasets", "citeulike"])
    assert exc.value.code == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err


def test_timed_counts_every_run_and_takes_the_median():
    from bench.perf.common import timed

    calls = []
    median, times = timed(lambda: calls.append(1), repeats=5, warmup=2, device="cpu")
    assert len(calls) == 7 and len(times) == 5 and min(times) <= median <= max(times)
