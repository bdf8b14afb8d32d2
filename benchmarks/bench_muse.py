"""MUSE benchmark: the paper's simulation study (ARI vs the truth) and time / memory scaling.

Run ``python benchmarks/bench_muse.py`` (all sections) or pick with ``--only demo|merge|dropout|scaling``.
Every method is clustered by the same PhenoGraph-style clustering (k=30, Leiden) and scored by ARI against
``obs["true_cluster"]``. The reference TensorFlow MUSE cannot run here; its ~70 s per demo run on 2 cores is
the figure from the issue. Times are wall-clock and process CPU seconds (CPU time is the better guide on a
shared, oversubscribed machine; torch runs with ``--threads`` threads).

Examples
--------
python benchmarks/bench_muse.py --only demo --seeds 0 1 2 3 4
python benchmarks/bench_muse.py --only demo --seeds 0 --presets fast reference
python benchmarks/bench_muse.py --only scaling --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("STMORPH_PROGRESS", "0")


def _ari(truth, labels) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


MUSE_KW: dict = {}  # extra MUSE arguments from --muse-kw (e.g. {"selection_penalty": "squared"})


def run_methods(md, seed: int, presets: list[str], threads: int, baselines: bool) -> dict[str, dict]:
    """ARI (and time for MUSE) of every method on one simulated MuData."""
    import torch

    from stmorph._cluster import phenograph_leiden
    from stmorph.models.muse import muse_fit_predict
    from stmorph.tl import _baselines as bl

    torch.set_num_threads(threads)
    truth = md.obs["true_cluster"].to_numpy()
    xs = [md[m].X for m in md.mod]
    res: dict[str, dict] = {}
    for preset in presets:
        t, c = time.perf_counter(), time.process_time()
        out = muse_fit_predict(xs, preset=preset, random_state=seed, n_threads=threads, **MUSE_KW)
        res[f"MUSE ({preset})"] = {
            "ari": _ari(truth, out["clusters"]),
            "wall_s": time.perf_counter() - t,
            "cpu_s": time.process_time() - c,
            "n_clusters": int(out["clusters"].max() + 1),
        }
    if not baselines:
        return res

    def score(name, fn):
        t, c = time.perf_counter(), time.process_time()
        emb = fn()
        labels = phenograph_leiden(emb, k=30, random_state=seed)
        res[name] = {"ari": _ari(truth, labels), "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}

    for m, x in zip(md.mod, xs):
        score(f"PCA {m}", lambda x=x: bl.pca_arrays(x, 100, random_state=seed))
    for scaling in ("standard", "minmax", "quantile"):
        score(f"concat+PCA ({scaling})", lambda sc=scaling: bl.concat_pca_arrays(xs, sc, 100, random_state=seed))
    score("CCA (20 pairs)", lambda: np.hstack(bl.cca_arrays(xs[0], xs[1], 20)[:2]))
    work = md.copy()

    def mvae():
        bl.multiview_ae(work, random_state=seed, n_threads=threads)
        return work.obsm["X_mvae"]

    score("multi-view AE (no triplet)", mvae)
    try:
        import mofapy2  # noqa: F401

        def mofa():
            bl.mofa(work, n_factors=20, random_state=seed)
            return work.obsm["X_mofa"]

        score("MOFA+ (20 factors)", mofa)
    except ImportError:
        pass
    return res


def table(rows: dict[str, list[float]], title: str, cols: list[str]) -> str:
    lines = [f"\n### {title}\n", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _warmup(threads: int) -> None:
    """One tiny MUSE run so that imports and first-call set-up are not charged to the first timed seed."""
    from stmorph.datasets import simulate_multimodal
    from stmorph.models.muse import muse_fit_predict

    md = simulate_multimodal(n_clusters=4, n_cells=200, n_features=(50, 50), random_state=0)
    muse_fit_predict([md[m].X for m in md.mod], n_epochs_warmup=1, n_epochs_triplet_init=1, n_epochs=1,
                     n_threads=threads)


def section_demo(args) -> str:
    from stmorph.datasets import simulate_multimodal

    _warmup(args.threads)
    per: dict[str, list] = {}
    loads = []
    for s in args.seeds:
        md = simulate_multimodal(random_state=s)
        for name, r in run_methods(md, s, args.presets, args.threads, not args.no_baselines).items():
            per.setdefault(name, []).append(r)
        loads.append(os.getloadavg()[0])
        print(f"seed {s} (load {loads[-1]:.1f}): "
              + ", ".join(f"{k}={v[-1]['ari']:.3f} ({v[-1]['cpu_s']:.1f} CPU s, {v[-1]['wall_s']:.1f} wall s)"
                          for k, v in per.items()), flush=True)
    rows = {}
    for name, rs in per.items():
        a = np.array([r["ari"] for r in rs])
        t = [r["wall_s"] for r in rs]
        c = [r["cpu_s"] for r in rs]
        rows[name] = [f"{a.mean():.3f} +- {a.std(ddof=1) if a.size > 1 else 0.0:.3f}", " ".join(f"{x:.3f}" for x in a),
                      f"{np.mean(c):.1f} ({np.min(c):.1f}-{np.max(c):.1f})", f"{np.mean(t):.1f}"]
    return table(rows, f"Demo setting (10 clusters, 1000 cells, 500+500 features), seeds {args.seeds}, "
                 f"{args.threads} thread(s), 1-min load during the seeds {min(loads):.1f}-{max(loads):.1f}",
                 ["ARI mean +- sd", "per seed", "CPU s/run mean (min-max)", "wall s/run"])


def section_sweep(args, param: str, values: list[float]) -> str:
    from stmorph.datasets import simulate_multimodal

    rows: dict[str, list[str]] = {}
    for v in values:
        per: dict[str, list[float]] = {}
        for s in args.seeds:
            kw = {"merge_prob": v} if param == "merge_prob" else {"decay": (v, 0.1)}
            md = simulate_multimodal(random_state=s, **kw)
            for name, r in run_methods(md, s, args.presets, args.threads, not args.no_baselines).items():
                per.setdefault(name, []).append(r["ari"])
            print(f"{param}={v} seed {s} (load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{k}={a[-1]:.3f}" for k, a in per.items()), flush=True)
        for name, a in per.items():
            rows.setdefault(name, []).append(f"{np.mean(a):.3f} +- {np.std(a, ddof=1) if len(a) > 1 else 0.0:.3f}")
    return table(rows, f"ARI (mean +- sd) over {param} (seeds {args.seeds})", [f"{param}={v}" for v in values])


def _scaling_child(n: int, threads: int, preset: str) -> None:
    """Run one MUSE fit in this (fresh) process and print a JSON line with times and peak memory."""
    from stmorph.datasets import simulate_multimodal
    from stmorph.models.muse import muse_fit_predict

    md = simulate_multimodal(n_cells=n, random_state=0)
    xs = [md[m].X for m in md.mod]
    t, c = time.perf_counter(), time.process_time()
    out = muse_fit_predict(xs, preset=preset, n_threads=threads, **MUSE_KW)
    info = out["model"].train_info
    rec = {
        "stages_s": {"initial_labels": info["time_initial_labels_s"], **info["time_stages_s"],
                     "final_clustering": out["timings"]["final_clustering"]},
        "schedule": info["schedule"],
        "n": n,
        "ari": _ari(md.obs["true_cluster"].to_numpy(), out["clusters"]),
        "wall_s": time.perf_counter() - t,
        "cpu_s": time.process_time() - c,
        "timings": out["timings"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "load_end": os.getloadavg(),
    }
    print("RESULT " + json.dumps(rec), flush=True)


def section_scaling(args) -> str:
    rows = {}
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--threads", str(args.threads), "--presets", args.presets[0],
               "--muse-kw", args.muse_kw]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(proc.stderr[-2000:])
            continue
        r = json.loads(line[0][7:])
        t = r["timings"]
        rows[f"{n} cells"] = [f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{t['initial_labels']:.1f}",
                              f"{t['training']:.1f}", f"{t['final_clustering']:.1f}", f"{r['peak_rss_gb']:.2f}",
                              f"{r['ari']:.3f}", f"{r['load_end'][1]:.1f}"]
        print(f"n={n}: {r}", flush=True)
        print(f"n={n} stage seconds (wall): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items()), flush=True)
    return table(rows, f"Scaling (500+500 features, preset {args.presets[0]}, {args.threads} thread(s))",
                 ["wall s", "CPU s", "initial labels s (wall)", "training s (wall)", "final clustering s (wall)",
                  "peak RSS GB", "ARI", "5-min load at end"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["demo", "merge", "dropout", "scaling"], nargs="*")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--presets", nargs="*", default=["fast"], help="MUSE presets to run (fast, reference)")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (1 is fastest on a busy machine)")
    ap.add_argument("--merge-values", type=float, nargs="*", default=[0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--decay-values", type=float, nargs="*", default=[0.1, 0.5, 1.0],
                    help="transcript dropout decay (dropout prob. exp(-decay x^2): smaller = more dropout)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--muse-kw", default="{}", help='extra MUSE arguments as JSON, e.g. {"selection_penalty": "squared"}')
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    MUSE_KW.update(json.loads(args.muse_kw))
    if args.child:
        _scaling_child(args.child, args.threads, args.presets[0])
        return
    sections = args.only or ["demo", "merge", "dropout", "scaling"]
    print(f"load average at start: {os.getloadavg()}, cores: {os.cpu_count()}", flush=True)
    out = []
    if "demo" in sections:
        out.append(section_demo(args))
    if "merge" in sections:
        out.append(section_sweep(args, "merge_prob", args.merge_values))
    if "dropout" in sections:
        out.append(section_sweep(args, "transcript decay", args.decay_values))
    if "scaling" in sections:
        out.append(section_scaling(args))
    print(f"\nload average at end: {os.getloadavg()}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
