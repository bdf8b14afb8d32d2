"""Benchmark of stmorph.eval against scikit-bio, and the real-data run on the MERFISH ileum.

    python benchmarks/bench_eval.py                 # pairwise PERMANOVA/PERMDISP vs scikit-bio (5,000 x 50, 19 labels)
    python benchmarks/bench_eval.py --skbio-disp-pairs 6   # PERMDISP reference measured on 6 pairs (it is slow)
    python benchmarks/bench_eval.py --ileum [--n-trees 1000]  # the study's analyses on ../shared/data/merfish_ileum

Prints tables (wall seconds and process CPU seconds; CPU time is the fairer figure on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("STMORPH_PROGRESS", "0")


def _timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _synthetic(n=5000, d=50, g=19, seed=0):
    rng = np.random.default_rng(seed)
    w = np.geomspace(18, 770, g)
    sizes = np.maximum(2, np.round(w / w.sum() * n)).astype(int)
    lab = np.repeat(np.arange(g), sizes)
    X = rng.normal(size=(lab.size, d)) * rng.uniform(0.7, 1.3, size=g)[lab, None] + 0.3 * rng.normal(size=(g, d))[lab]
    return X, np.array([f"L{i:02d}" for i in lab])


def bench_stats(args) -> None:
    from scipy.spatial.distance import pdist, squareform
    from skbio import DistanceMatrix
    from skbio.stats.distance import permanova as sk_permanova
    from skbio.stats.distance import permdisp as sk_permdisp

    from stmorph.eval import pairwise_permanova, pairwise_permdisp, zscore

    X, lab = _synthetic(args.n, args.d)
    Z = zscore(X)
    cats = np.unique(lab)
    pairs = list(combinations(cats, 2))
    print(f"data: {X.shape[0]} x {X.shape[1]}, {cats.size} labels, {len(pairs)} pairs, {args.permutations} permutations")
    pairwise_permanova(Z[:200], lab[:200], permutations=9, standardize=False)  # warm-up (numba kernel cache)
    ours, w_o, c_o = _timed(lambda: pairwise_permanova(Z, lab, permutations=args.permutations, standardize=False))
    D = squareform(pdist(Z))
    rows = [("stmorph pairwise_permanova", w_o, c_o, 1.0)]
    Fref = {}
    for engine in ("cython", "numba"):
        def run(engine=engine):
            for a, b in pairs:
                sel = np.flatnonzero((lab == a) | (lab == b))
                dm = DistanceMatrix(D[np.ix_(sel, sel)], validate=False)
                r = sk_permanova(dm, lab[sel], permutations=args.permutations, seed=0, engine=engine)
                Fref[(engine, a, b)] = r["test statistic"]
        if engine == "numba":
            sel = np.flatnonzero(np.isin(lab, cats[:2]))
            sk_permanova(DistanceMatrix(D[np.ix_(sel, sel)], validate=False), lab[sel], permutations=9, engine="numba")
        _, w, c = _timed(run)
        rows.append((f"scikit-bio permanova ({engine})", w, c, w / w_o))
    f_ours = dict(zip(zip(ours.group1, ours.group2), ours.statistic))
    rel = max(abs(f_ours[(a, b)] - Fref[("cython", a, b)]) / Fref[("cython", a, b)] for a, b in pairs)
    print("\nPairwise PERMANOVA")
    print(f"{'method':36s} {'wall s':>8s} {'cpu s':>8s} {'x slower than stmorph (wall)':>30s}")
    for name, w, c, r in rows:
        print(f"{name:36s} {w:8.2f} {c:8.2f} {r:30.1f}")
    print(f"max relative |F_stmorph - F_skbio| over {len(pairs)} pairs: {rel:.2e}")

    print("\nPairwise PERMDISP (full rank: scikit-bio dimensions = d)")
    sub = pairs[:: max(1, len(pairs) // args.skbio_disp_pairs)][: args.skbio_disp_pairs]
    sel_lab = np.isin(lab, np.unique(np.ravel(sub)))
    print(f"{'method':44s} {'pairs':>5s} {'wall s':>8s} {'cpu s':>8s} {'s/pair':>8s}")
    for test in ("centroid", "median"):
        full, w_full, c_full = _timed(lambda test=test: pairwise_permdisp(Z, lab, test=test,
                                                                          permutations=args.permutations,
                                                                          standardize=False))
        print(f"{'stmorph pairwise_permdisp ' + test:44s} {len(pairs):5d} {w_full:8.2f} {c_full:8.2f} "
              f"{w_full / len(pairs):8.3f}")
        # the same subset of pairs for both implementations
        ours_sub = {}
        w_os = c_os = 0.0
        for a, b in sub:
            s = (lab == a) | (lab == b)
            r, w, c = _timed(lambda s=s, test=test: pairwise_permdisp(Z[s], lab[s], test=test,
                                                                      permutations=args.permutations,
                                                                      standardize=False, n_jobs=1))
            ours_sub[(a, b)] = float(r.statistic.iloc[0])
            w_os += w
            c_os += c
        w_s = c_s = 0.0
        relmax = 0.0
        for a, b in sub:
            sel = np.flatnonzero((lab == a) | (lab == b))
            dm = DistanceMatrix(D[np.ix_(sel, sel)], validate=False)
            r, w, c = _timed(lambda dm=dm, sel=sel, test=test: sk_permdisp(
                dm, lab[sel], test=test, permutations=args.permutations, seed=0, dimensions=Z.shape[1],
                warn_neg_eigval=False))
            w_s += w
            c_s += c
            relmax = max(relmax, abs(ours_sub[(a, b)] - r["test statistic"]) / abs(r["test statistic"]))
        print(f"{'stmorph (same pairs, 1 thread)':44s} {len(sub):5d} {w_os:8.2f} {c_os:8.2f} {w_os / len(sub):8.3f}")
        print(f"{'scikit-bio permdisp ' + test + ' (cython)':44s} {len(sub):5d} {w_s:8.2f} {c_s:8.2f} "
              f"{w_s / len(sub):8.3f}   -> {w_s / w_os:.1f}x slower (wall), {c_s / c_os:.1f}x (cpu); "
              f"max rel F diff {relmax:.1e}")
    del sel_lab


def bench_ileum(args) -> None:
    from stmorph.eval import (
        EvalConfig,
        align_inputs,
        de_gene_subset,
        evaluate_spaces,
        normalize_counts,
        pca_gene_subset,
        random_gene_subset,
        read_feature_table,
    )

    d = Path(args.data) / "merfish_ileum"
    counts = read_feature_table(d / "gene_counts.csv")
    stain = read_feature_table(d / "stain_vae_embedding.csv")
    lab = pd.read_csv(d / "cell_assignment.csv", index_col=0)["leiden_final"]
    lab.index = lab.index.astype(str)
    tabs, y, rep = align_inputs({"counts": counts, "stain": stain}, lab, exclude_labels=["Removed"])
    genes = list(tabs["counts"].columns)
    TC = normalize_counts(tabs["counts"].to_numpy())
    subsets = {
        "PCA": pca_gene_subset(TC, genes, n_pcs=15, n_top=3),
        "DE": de_gene_subset(TC, genes, y.to_numpy()),
    }
    subsets["random"] = random_gene_subset(genes, len(subsets["PCA"]), random_state=0)
    print("cells:", rep)
    print({k: len(v) for k, v in subsets.items()}, subsets)
    spaces = {"TC": TC, "stain": tabs["stain"].to_numpy()}
    for k, g in subsets.items():
        idx = [genes.index(x) for x in g]
        spaces[f"TC_{k}"] = TC[:, idx]
    cfg = EvalConfig(n_trees=args.n_trees, permdisp_tests=("median",))
    mx = [("TC", "stain")] + [(f"TC_{k}", "stain") for k in subsets]
    res, w, c = _timed(lambda: evaluate_spaces(spaces, y, config=cfg, multiplex=mx,
                                               ridge={"stain": tabs["counts"]}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from stmorph.eval import write_results

    write_results(res, out, extra={"cells": rep, "gene_subsets": subsets})
    s = res.summary
    print(f"\nileum evaluation: {w:.0f} s wall, {c:.0f} s cpu; per-analysis: "
          + json.dumps({k: round(v, 1) for k, v in res.timings.items()}))
    print(f"\n{'space':14s} {'BA':>6s} {'min label BA':>14s} {'PERMANOVA sig':>14s} {'PERMDISP sig':>13s} "
          f"{'k':>3s} {'res':>5s} {'ncl':>4s} {'sil':>6s} {'homog':>6s} {'compl':>6s} {'AMI':>6s} {'ARI':>6s}")
    for k, v in s["feature_spaces"].items():
        cl = v["clustering"]
        pl = v["classification"]["per_label"]
        mn = min(pl, key=pl.get)
        print(f"{k:14s} {v['classification']['balanced_accuracy']:6.3f} {pl[mn]:6.3f} {mn[:7]:>7s} "
              f"{v['permanova']['n_significant']:>10d}/{v['permanova']['n_pairs']} "
              f"{v['permdisp']['n_significant']:>9d}/{v['permdisp']['n_pairs']} {cl['k']:3d} {cl['resolution']:5.2f} "
              f"{cl['n_clusters']:4d} {cl['silhouette']:6.3f} {cl['homogeneity']:6.3f} {cl['completeness']:6.3f} "
              f"{cl['ami']:6.3f} {cl['ari']:6.3f}")
    for k, v in s["multiplex"].items():
        print(f"{k + ' (mx)':14s} w={v['weight']:.1f} ncl={v['n_clusters']} sil={v['silhouette']:.3f} "
              f"homog={v['homogeneity']:.3f} compl={v['completeness']:.3f} AMI={v['ami']:.3f} ARI={v['ari']:.3f}")
    print("\nper-label balanced accuracy (TC, stain):")
    pl = pd.DataFrame({k: s["feature_spaces"][k]["classification"]["per_label"] for k in ("TC", "stain")})
    print(pl.round(3).to_string())
    r = pd.DataFrame(s["ridge"]["stain"])
    print(f"\nridge from stain: genes with R^2 > 0.1: {int((r.r2 > 0.1).sum())}, > 0.2: {int((r.r2 > 0.2).sum())}; "
          f"padj < 0.05: {int((r.padj < 0.05).sum())} / {len(r)}")
    print(r.sort_values("r2", ascending=False).head(10).round(4).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ileum", action="store_true", help="run the real-data evaluation instead of the speed benchmark")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/stmorph_eval_ileum")
    ap.add_argument("--n-trees", type=int, default=1000)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--skbio-disp-pairs", type=int, default=6)
    args = ap.parse_args()
    if args.ileum:
        bench_ileum(args)
    else:
        bench_stats(args)


if __name__ == "__main__":
    main()
