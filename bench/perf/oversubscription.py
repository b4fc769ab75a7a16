"""What sharing the machine costs a training step, by torch thread count and OpenMP wait policy.

    python -m bench.perf.oversubscription --datasets citeulike --busy 0 2 --out reports/performance

For every number of competing busy processes (``--busy``: pure-Python loops, each taking one core)
and every OpenMP wait policy (torch's default, and ``OMP_WAIT_POLICY=PASSIVE``), a fresh Python
process times the median of ``--repeats`` LightGCN BPR steps (d = 32, 2 layers, batch 4096) with 1
and with 2 torch threads. A worker thread of an OpenMP parallel region that shares its core with
another busy process is descheduled while the others wait for it at the region's barrier (spinning,
under the default policy): a step with more threads than free cores can take many times longer than
with one thread. This is why ``recshrink run`` defaults to the cores not busy at its start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.perf.common import environment_fields, md_table, script_parser, write_outputs

_STEP_TIMER = r"""
import json, statistics, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from bench.data.loading import load_dataset
from bench.perf.common import bpr_step
from bench.training import TrainConfig, build_lightgcn
name, data_dir, repeats = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
data = load_dataset(name, data_dir)
cfg = TrainConfig(dim=32, n_layers=2, batch_size=4096, lr=1e-3, seed=0)
torch.manual_seed(0)
model = build_lightgcn(data, cfg, torch.device("cpu"))
step = bpr_step(model, data, cfg.batch_size, cfg.lr)
out = {}
for threads in (1, 2):
    torch.set_num_threads(threads)
    step(); step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    out[threads] = statistics.median(times)
print(json.dumps(out))
"""


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(name: str, busy: int, policy: str | None, args: Any) -> dict[str, Any]:
    """Median step seconds at 1 and 2 threads with ``busy`` competing processes under ``policy``."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    competitors = _busy(busy)
    try:
        time.sleep(1.0 if busy else 0.0)
        command = [sys.executable, "-c", _STEP_TIMER, name, args.data_dir or "", str(args.repeats)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, check=False)
    finally:
        for p in competitors:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the step timer failed: {proc.stderr.strip()[-2000:]}")
    times = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    return {"dataset": name, "busy_processes": busy, "omp_wait_policy": policy or "default",
            "step_1_thread_s": times[1], "step_2_threads_s": times[2],
            "two_over_one": times[2] / times[1]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = script_parser(__doc__.split("\n")[0], ["citeulike"], repeats=15)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2],
                   help="numbers of competing busy processes to measure under (default 0 and 2)")
    args = p.parse_args(argv)
    if any(b < 0 for b in args.busy):
        p.error("--busy counts must be >= 0")
    rows = []
    for name in args.datasets:
        for busy in args.busy:
            for policy in (None, "PASSIVE"):
                row = {**measure(name, busy, policy, args), **environment_fields()}
                rows.append(row)
                one, two = row["step_1_thread_s"] * 1e3, row["step_2_threads_s"] * 1e3
                print(f"[{name}] busy {busy}, {row['omp_wait_policy']}: 1 thread {one:.1f} ms, 2 threads "
                      f"{two:.1f} ms", file=sys.stderr, flush=True)
    table = [[r["dataset"], r["busy_processes"], r["omp_wait_policy"], f"{r['step_1_thread_s'] * 1e3:.1f}",
              f"{r['step_2_threads_s'] * 1e3:.1f}", f"**{r['two_over_one']:.2f}x**"] for r in rows]
    md = ("# A training step on a shared machine\n\n"
          f"LightGCN BPR step, d=32, 2 layers, batch 4096; median of {args.repeats} steps; {os.cpu_count()} "
          f"CPUs; git {rows[0].get('git_sha') if rows else None}.\n"
          f"Command: `python -m bench.perf.oversubscription {' '.join(argv)}`\n\n"
          "Busy processes: pure-Python loops started beside the timed process, one core each.\n\n"
          + md_table(["dataset", "busy processes", "OMP_WAIT_POLICY", "1 thread (ms)", "2 threads (ms)",
                      "2 threads / 1 thread"], table))
    write_outputs(args.out, "oversubscription", rows, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
