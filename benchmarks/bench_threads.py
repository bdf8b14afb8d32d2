"""Main commands quiet and beside one competing multi-threaded job (issue 13's thread policy).

Each workload runs in a fresh process, first on a quiet machine, then while a competitor runs: a plain torch
matmul loop with torch's default threads (one per core), started before the workload and stopped after it. The
table prints wall seconds quiet, under load and the slowdown. Run it with nothing else on the machine.

Workloads:

* ``muse``      - ``stmorph.tl.muse`` on the 1,000-cell demo simulation (default settings)
* ``vae_epoch`` - one ``ls1_cpu`` epoch on the 400-cell demo tissue (and one ``ls5_cpu`` epoch)
* ``evaluate``  - ``stmorph.eval.evaluate_spaces`` of two 400-cell spaces (99 permutations, 300 trees)
* ``demo``      - ``stmorph demo`` end to end (minutes)

Examples
--------
python benchmarks/bench_threads.py --only muse,vae_epoch,evaluate
python benchmarks/bench_threads.py --only demo
python benchmarks/bench_threads.py --only muse --env OMP_WAIT_POLICY=ACTIVE   # the spin-waiting behaviour
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

WORKLOADS = {
    "muse": """
import stmorph as st
md = st.datasets.simulate_multimodal(random_state=0)
st.tl.muse(md, random_state=0)
""",
    "vae_epoch": """
import os, torch
import stmorph as st
if os.environ.get("BENCH_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))
s = st.datasets.demo_tissue()
st.tl.train_vae(s, "ls1_cpu", epochs=1, random_state=0)
st.tl.train_vae(s, "ls5_cpu", epochs=1, random_state=0)
""",
    "evaluate": """
import numpy as np, stmorph as st
s = st.datasets.demo_tissue()
X = st.eval.normalize_counts(s.adata.X)
rng = np.random.default_rng(0)
spaces = {"TC": X, "noise": X[:, :10] + rng.normal(size=(X.shape[0], 10))}
st.eval.evaluate_spaces(spaces, s.adata.obs["cell_type"],
                        config=st.eval.EvalConfig(permutations=99, n_trees=300, random_state=0))
""",
}

COMPETITOR = """
import torch, time
a = torch.randn(1024, 1024)
t_end = time.time() + 3600
while time.time() < t_end:
    a = torch.tanh(a @ a / 32.0)
"""


def _run_workload(name: str, env: dict[str, str]) -> float:
    if name == "demo":
        out = tempfile.mkdtemp(prefix="bench_demo_")
        cmd = [os.path.join(os.path.dirname(sys.executable), "stmorph"), "demo", "--out", out]
    else:
        cmd = [sys.executable, "-c", WORKLOADS[name]]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="muse,vae_epoch,evaluate", help="comma-separated workloads (and 'demo')")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the workload's environment")
    ap.add_argument("--reps", type=int, default=1, help="repetitions (the minimum is reported)")
    args = ap.parse_args()
    env = dict(os.environ, STMORPH_PROGRESS="0")
    for kv in args.env:
        k, v = kv.split("=", 1)
        env[k] = v
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f}; cores available: {len(os.sched_getaffinity(0))}; "
          f"extra env: {args.env or 'none'}")
    rows = []
    for name in names:
        quiet = min(_run_workload(name, env) for _ in range(args.reps))
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ))
        try:
            time.sleep(2.0)  # the competitor's threads are busy before the workload starts
            loaded = min(_run_workload(name, env) for _ in range(args.reps))
        finally:
            comp.kill()
            comp.wait()
        rows.append((name, quiet, loaded))
        print(f"{name:10s} quiet {quiet:8.1f} s   beside a torch loop {loaded:8.1f} s   slowdown {loaded / quiet:5.2f}x",
              flush=True)
    print()
    print("| workload | quiet (s) | beside a torch loop (s) | slowdown |")
    print("|---|---|---|---|")
    for name, q, ld in rows:
        print(f"| {name} | {q:.1f} | {ld:.1f} | {ld / q:.2f}x |")


if __name__ == "__main__":
    main()
