"""Benchmark of stmorph.eval against scikit-bio, and the real-data run on the MERFISH ileum.

    python benchmarks/bench_eval.py                 # pairwise PERMANOVA/PERMDISP vs scikit-bio (5,000 x 50, 19 labels)
    python benchmarks/bench_eval.py --skbio-disp-pairs 8   # PERMDISP reference timed on 8 size-stratified pairs
    python benchmarks/bench_eval.py --ileum [--n-trees 1000]  # the study's analyses on ../shared/data/merfish_ileum
    python benchmarks/bench_eval.py --forest [--n-trees 1000] # stmorph's numba forest vs sklearn's, ileum TC + stain
    python benchmarks/bench_eval.py --protocol-study     # Leiden tuning: the study's protocol vs the fast default (ileum)
    python benchmarks/bench_eval.py --protocol-study --tc-variants  # the study protocol on other TC preprocessings
    python benchmarks/bench_eval.py --scs                # MUSE's SCS: knot approximation vs exact; the ileum labels
    python benchmarks/bench_eval.py --de-leakage         # DE gene panel chosen on all cells vs inside each CV fold

Prints tables (wall seconds and process CPU seconds; CPU time is the fairer figure on a shared machine).
"""

from __future__ import annotations

import argparse
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


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def _ileum(args):
    """The ileum counts and stain embedding aligned to the labels ("Removed" dropped)."""
    from stmorph.eval import align_inputs, read_feature_table

    d = Path(args.data) / "merfish_ileum"
    counts = read_feature_table(d / "gene_counts.csv")
    stain = read_feature_table(d / "stain_vae_embedding.csv")
    lab = pd.read_csv(d / "cell_assignment.csv", index_col=0)["leiden_final"]
    lab.index = lab.index.astype(str)
    return align_inputs({"counts": counts, "stain": stain}, lab, exclude_labels=["Removed"])


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
    print(f"data: {X.shape[0]} x {X.shape[1]}, {cats.size} labels, {len(pairs)} pairs, {args.permutations} permutations;"
          f" {_load()}; wall and process CPU seconds (CPU counts all threads)")
    pairwise_permanova(Z[:200], lab[:200], permutations=9, standardize=False)  # warm-up (numba kernel cache)
    ours, w_o, c_o = _timed(lambda: pairwise_permanova(Z, lab, permutations=args.permutations, standardize=False))
    rows = [("stmorph pairwise_permanova", w_o, c_o, _load())]
    D = squareform(pdist(Z))
    Fref = {}
    for engine in (None, "numba"):
        def run(engine=engine):
            for a, b in pairs:
                sel = np.flatnonzero((lab == a) | (lab == b))
                dm = DistanceMatrix(D[np.ix_(sel, sel)], validate=False)
                r = sk_permanova(dm, lab[sel], permutations=args.permutations, seed=0, engine=engine)
                Fref[(engine, a, b)] = r["test statistic"]
        sel = np.flatnonzero(np.isin(lab, cats[:2]))  # warm-up (numba compilation)
        sk_permanova(DistanceMatrix(D[np.ix_(sel, sel)], validate=False), lab[sel], permutations=9, engine=engine)
        _, w, c = _timed(run)
        rows.append((f"scikit-bio permanova ({engine or 'default = cython'})", w, c, _load()))
    f_ours = dict(zip(zip(ours.group1, ours.group2), ours.statistic))
    for engine in (None, "numba"):
        rel = max(abs(f_ours[(a, b)] - Fref[(engine, a, b)]) / Fref[(engine, a, b)] for a, b in pairs)
        assert rel < 1e-8, f"F differs from scikit-bio ({engine}): {rel}"
    print("\nPairwise PERMANOVA (171 pairs): equal F asserted (max rel diff < 1e-8)")
    print(f"{'method':40s} {'wall s':>8s} {'cpu s':>8s} {'x stmorph wall':>15s} {'x stmorph cpu':>14s}  load after")
    for name, w, c, ld in rows:
        print(f"{name:40s} {w:8.2f} {c:8.2f} {w / w_o:15.1f} {c / c_o:14.1f}  {ld}")

    print("\nPairwise PERMDISP, full rank (scikit-bio dimensions = d = 50; its default 10 changes the statistic)")
    # scikit-bio is slow here: time a size-stratified subset of pairs (quantiles of pair size), fit
    # t = a * n^b per implementation and extrapolate to all pairs; the ratio on the same pairs is measured directly
    npair = {(a, b): int(((lab == a) | (lab == b)).sum()) for a, b in pairs}
    by_size = sorted(pairs, key=npair.get)
    q = np.linspace(0, len(by_size) - 1, args.skbio_disp_pairs).round().astype(int)
    sub = [by_size[i] for i in q]
    sizes_all = np.array([npair[p] for p in pairs], float)
    print(f"subset: {len(sub)} pairs, sizes {[npair[p] for p in sub]}")
    print(f"{'method':46s} {'pairs':>5s} {'wall s':>8s} {'cpu s':>8s}  note")
    for test in ("centroid", "median"):
        pairwise_permdisp(Z[:200], lab[:200], test=test, permutations=9, standardize=False)  # warm-up
        full, w_full, c_full = _timed(lambda test=test: pairwise_permdisp(
            Z, lab, test=test, permutations=args.permutations, standardize=False))
        print(f"{'stmorph pairwise_permdisp ' + test:46s} {len(pairs):5d} {w_full:8.2f} {c_full:8.2f}  "
              f"measured, all pairs, 2 threads, {_load()}")
        res = {}
        for impl in ("stmorph", "skbio", "skbio-numba"):
            ts, cs, fs = [], [], {}
            if impl == "skbio-numba":
                sel = np.flatnonzero(np.isin(lab, cats[:2]))
                sk_permdisp(DistanceMatrix(D[np.ix_(sel, sel)], validate=False), lab[sel], test=test, permutations=9,
                            dimensions=Z.shape[1], warn_neg_eigval=False, engine="numba")
            for a, b in sub:
                s = (lab == a) | (lab == b)
                sel = np.flatnonzero(s)
                if impl == "stmorph":
                    r, w, c = _timed(lambda s=s, test=test: pairwise_permdisp(
                        Z[s], lab[s], test=test, permutations=args.permutations, standardize=False, n_jobs=1))
                    fs[(a, b)] = float(r.statistic.iloc[0])
                else:
                    dm = DistanceMatrix(D[np.ix_(sel, sel)], validate=False)
                    r, w, c = _timed(lambda dm=dm, sel=sel, test=test, impl=impl: sk_permdisp(
                        dm, lab[sel], test=test, permutations=args.permutations, seed=0, dimensions=Z.shape[1],
                        warn_neg_eigval=False, engine="numba" if impl == "skbio-numba" else None))
                    fs[(a, b)] = float(r["test statistic"])
                ts.append(w)
                cs.append(c)
            n_sub = np.array([npair[p] for p in sub], float)
            slope, icpt = np.polyfit(np.log(n_sub), np.log(np.maximum(cs, 1e-4)), 1)
            est = float(np.exp(icpt) * (sizes_all ** slope).sum())
            res[impl] = (sum(ts), sum(cs), est, fs)
            print(f"{impl + ' ' + test + ' (same pairs, 1 thread)':46s} {len(sub):5d} {sum(ts):8.2f} {sum(cs):8.2f}  "
                  f"cpu ~ n^{slope:.2f}; extrapolated to {len(pairs)} pairs: {est:.1f} s CPU; {_load()}")
        for impl in ("skbio", "skbio-numba"):
            rel = max(abs(res["stmorph"][3][p] - res[impl][3][p]) / abs(res[impl][3][p]) for p in sub)
            print(f"  {impl}: {res[impl][0] / res['stmorph'][0]:.1f}x slower (wall), {res[impl][1] / res['stmorph'][1]:.1f}x "
                  f"(cpu) on the same pairs; extrapolated 171-pair CPU {res[impl][2]:.0f} s vs stmorph measured "
                  f"{c_full:.1f} s CPU = {res[impl][2] / c_full:.0f}x; max rel F diff {rel:.1e}")


def bench_ileum(args) -> None:
    from stmorph.eval import EvalConfig, evaluate_spaces
    from stmorph.pp import de_gene_subset, normalize_counts, pca_gene_subset, random_gene_subset

    tabs, y, rep = _ileum(args)
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
    cfg = EvalConfig(n_trees=args.n_trees, rf_max_samples=args.rf_max_samples)
    mx = [("TC", "stain")] + [(f"TC_{k}", "stain") for k in subsets]
    res, w, c = _timed(lambda: evaluate_spaces(spaces, y, config=cfg, multiplex=mx,
                                               ridge={"stain": tabs["counts"]}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from stmorph.eval import write_results

    write_results(res, out, extra={"cells": rep, "gene_subsets": subsets})
    s = res.summary
    print(f"\nileum evaluation: {w:.0f} s wall, {c:.0f} s cpu, {_load()} at the end; per analysis (wall / cpu s):")
    for k in [k for k in res.timings if not k.endswith(" cpu")]:
        print(f"  {k:28s} {res.timings[k]:8.1f} {res.timings[k + ' cpu']:8.1f}")
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
    for k in s["multiplex"]:
        print(f"\nmultiplex grid {k}:\n" + res.tables[f"multiplex_grid_{k}"].round(4).to_string())
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


def bench_forest(args) -> None:
    """Both random-forest backends on the ileum TC and stain spaces in one run: CPU, wall, per-label accuracy."""
    from stmorph.eval import normalize_counts, rf_classification

    tabs, y, _ = _ileum(args)
    spaces = {"TC": normalize_counts(tabs["counts"].to_numpy()), "stain": tabs["stain"].to_numpy()}
    rf_classification(spaces["stain"][:300], y.to_numpy()[:300] == y.iloc[0], n_trees=2, n_splits=2)  # compile
    rows, per_label = [], {}
    for name, X in spaces.items():
        for backend in ("sklearn", "stmorph"):
            for jobs in args.jobs:
                res, w, c = _timed(lambda X=X, jobs=jobs, backend=backend: rf_classification(
                    X, y.to_numpy(), n_trees=args.n_trees, n_jobs=jobs, backend=backend))
                rows.append({"space": name, "backend": backend, "n_jobs": jobs, "wall_s": round(w, 1),
                             "cpu_s": round(c, 1), "ms_per_tree_cpu": round(1000 * c / (5 * args.n_trees), 2),
                             "BA": round(res.balanced_accuracy, 4),
                             "fold_sd": round(float(np.std(res.fold_balanced_accuracy)), 4), "load": _load()})
                per_label[(name, backend)] = res.per_label
                print(rows[-1], flush=True)
    print(f"\nrandom forest, {args.n_trees} trees x 5 folds, balanced classes, 5,194 ileum cells:")
    print(pd.DataFrame(rows).to_string(index=False))
    pl = pd.DataFrame(per_label).round(3)
    for name in spaces:
        pl[(name, "diff")] = (pl[(name, "stmorph")] - pl[(name, "sklearn")]).round(3)
    print("\nper-label balanced accuracy:\n" + pl.sort_index(axis=1).to_string())
    print("max |diff| per space:", {n: float(pl[(n, "diff")].abs().max()) for n in spaces})


def _cluster_row(name: str, protocol: str, c: dict, seconds: float) -> dict:
    jac = c["jaccard"]
    vals = [v if v is not None else 0.0 for v in jac.values()]
    return {"space": name, "protocol": protocol, "k": c.get("k"), "res": c.get("resolution"),
            "weight": c.get("weight"), "n_clusters": c["n_clusters"], "bound_met": c["bound_met"],
            "silhouette": round(c["silhouette"], 4), "homogeneity": round(c["homogeneity"], 3),
            "completeness": round(c["completeness"], 3), "ami": round(c["ami"], 3),
            "jaccard_mean": round(float(np.mean(vals)), 3), "labels_matched": sum(v is not None for v in jac.values()),
            "wall_s": round(seconds, 1)}


def bench_protocol(args) -> None:
    """Both Leiden tuning protocols on the ileum TC and stain (LS2) spaces and their multiplex."""
    import json

    from stmorph.eval import EvalConfig, evaluate_spaces, normalize_counts

    tabs, y, rep = _ileum(args)
    spaces = {"TC": normalize_counts(tabs["counts"].to_numpy()), "LS2": tabs["stain"].to_numpy()}
    print(f"cells: {rep['n_cells']}, labels: {y.nunique()}; {_load()}", flush=True)
    rows, out = [], {}
    for protocol in args.protocols:
        cfg = EvalConfig(protocol=protocol, run_permanova=False, run_permdisp=False, run_classification=False)
        res, w, c = _timed(lambda cfg=cfg: evaluate_spaces(spaces, y, config=cfg, multiplex=[("TC", "LS2")]))
        out[protocol] = {"summary": res.summary, "timings": res.timings,
                         "grids": {k: v.to_dict(orient="list") for k, v in res.tables.items() if "grid" in k}}
        for name in spaces:
            rows.append(_cluster_row(name, protocol, res.summary["feature_spaces"][name]["clustering"],
                                     res.timings[f"{name}/clustering"]))
        rows.append(_cluster_row("TC+LS2", protocol, res.summary["multiplex"]["TC+LS2"], res.timings["TC+LS2/multiplex"]))
        print(f"{protocol}: {w:.0f} s wall, {c:.0f} s CPU (this process; Leiden runs in workers), {_load()}", flush=True)
        for k in ("TC", "LS2"):
            g = res.tables[f"leiden_grid_{k}"]
            print(f"  {k} grid: clusters {g.n_clusters.min()}-{g.n_clusters.max()}, eligible {int(g.eligible.sum())}/{len(g)}")
        print(f"  multiplex grid:\n{res.tables['multiplex_grid_TC+LS2'].round(4).to_string()}", flush=True)
    df = pd.DataFrame(rows)
    print("\n" + df.to_string(index=False))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "protocols.json").write_text(json.dumps(out, indent=1, default=str))
    df.to_csv(Path(args.out) / "protocols.csv", index=False)


def bench_tc_variants(args) -> None:
    """The study protocol's TC tuning on other TC preprocessings (what gives the study's 16 clusters?)."""
    from stmorph.eval import leiden_tune, normalize_counts, zscore

    tabs, y, _ = _ileum(args)
    raw = tabs["counts"].to_numpy().astype(float)
    variants = {"normalised + log1p, z-scored": zscore(normalize_counts(raw)), "raw counts": raw,
                "log1p of raw counts": np.log1p(raw)}
    for name, X in variants.items():
        res, w, c = _timed(lambda X=X: leiden_tune(X, protocol="study"))
        g = res.grid
        print(f"TC {name}: k={res.k} res={res.resolution} clusters={np.unique(res.clusters).size} "
              f"silhouette={res.silhouette:.4f}; grid clusters {g.n_clusters.min()}-{g.n_clusters.max()}, eligible "
              f"{int(g.eligible.sum())}/{len(g)}; {w:.0f} s wall; {_load()}", flush=True)
        top = g[g.eligible].sort_values("silhouette", ascending=False).head(5)
        print(top.round(4).to_string(index=False), flush=True)


def bench_scs(args) -> None:
    """SCS: the knot approximation against the exact value (3,000 simulated cells) and the ileum labels."""
    from stmorph.eval import colocalization_score

    rng = np.random.default_rng(0)
    n = args.scs_cells
    xy = rng.uniform(0, 1000, size=(n, 2))
    # 8 clusters: two tissue bands, two discs, four scattered at random over the rest
    lab = np.full(n, "", dtype=object)
    lab[xy[:, 0] < 120] = "band_x"
    lab[(lab == "") & (xy[:, 1] < 80)] = "band_y"
    lab[(lab == "") & (((xy - [600, 600]) ** 2).sum(1) < 120 ** 2)] = "disc_1"
    lab[(lab == "") & (((xy - [300, 800]) ** 2).sum(1) < 60 ** 2)] = "disc_2"
    rest = lab == ""
    lab[rest] = rng.choice(["rand_1", "rand_2", "rand_3", "rand_4"], size=int(rest.sum()))
    lab = lab.astype(str)
    colocalization_score(xy[:300], lab[:300], permutations=2)  # compile
    rows = {}
    for name, kw in (("exact", {"max_exact_pairs": 10**9}), ("knots 65536", {"max_exact_pairs": 0}),
                     ("knots 4096", {"max_exact_pairs": 0, "n_knots": 4096})):
        df, w, c = _timed(lambda kw=kw: colocalization_score(xy, lab, permutations=args.scs_permutations, **kw))
        rows[name] = df.set_index("cluster")
        print(f"{name:12s} {w:7.1f} s wall {c:7.1f} s CPU  bound (pairs) {df.attrs['max_interval_pairs']:.0f}  {_load()}",
              flush=True)
    tab = pd.concat({k: v[["scs", "p_value"]] for k, v in rows.items()}, axis=1)
    tab.insert(0, "n_cells", rows["exact"]["n_cells"])
    print(tab.round(6).to_string())
    for k in ("knots 65536", "knots 4096"):
        print(f"{k}: max |SCS - exact| = {np.abs(rows[k].scs - rows['exact'].scs).max():.2e}; "
              f"p-values equal: {np.allclose(rows[k].p_value, rows['exact'].p_value)}")
    # the ileum: SCS of the 19 published labels at the Baysor centroids
    d = Path(args.data) / "merfish_ileum"
    meta = pd.read_csv(d / "cell_meta_data.csv", index_col=0)
    meta.index = meta.index.astype(str)
    tabs, y, _ = _ileum(args)
    coords = meta.loc[y.index, ["x", "y"]].to_numpy()
    df, w, c = _timed(lambda: colocalization_score(coords, y.to_numpy(), permutations=args.scs_permutations))
    print(f"\nileum, {len(y)} cells, 19 labels, {args.scs_permutations} permutations ({df.attrs['method']}): "
          f"{w:.1f} s wall, {c:.1f} s CPU, {_load()}")
    print(df.sort_values("scs", ascending=False).round(4).to_string(index=False))


def bench_de_leakage(args) -> None:
    """Random-forest balanced accuracy of the DE gene panel chosen on all cells (leaky) vs inside each fold."""
    from stmorph.eval import rf_classification
    from stmorph.pp import de_gene_columns, de_gene_subset, normalize_counts

    tabs, y, _ = _ileum(args)
    genes = list(tabs["counts"].columns)
    TC = normalize_counts(tabs["counts"].to_numpy())
    panel = de_gene_subset(TC, genes, y.to_numpy())
    idx = [genes.index(g) for g in panel]
    print(f"DE panel on all cells: {len(panel)} genes {panel}; {_load()}", flush=True)
    leaky, w1, c1 = _timed(lambda: rf_classification(TC[:, idx], y.to_numpy(), n_trees=args.n_trees))
    chosen = []

    def select(Xtr, ytr):
        cols = de_gene_columns(Xtr, ytr)
        chosen.append([genes[j] for j in cols])
        return cols

    inside, w2, c2 = _timed(lambda: rf_classification(TC, y.to_numpy(), n_trees=args.n_trees, select=select))
    print(f"leaky (panel on all cells): BA {leaky.balanced_accuracy:.4f} (fold SD "
          f"{np.std(leaky.fold_balanced_accuracy):.4f}), {w1:.0f} s wall / {c1:.0f} s CPU")
    print(f"inside each training fold : BA {inside.balanced_accuracy:.4f} (fold SD "
          f"{np.std(inside.fold_balanced_accuracy):.4f}), {w2:.0f} s wall / {c2:.0f} s CPU")
    print(f"leakage (leaky - inside)  : {leaky.balanced_accuracy - inside.balanced_accuracy:+.4f}; per fold: "
          f"{np.round(leaky.fold_balanced_accuracy - inside.fold_balanced_accuracy, 4).tolist()}")
    for i, c in enumerate(chosen):
        print(f"  fold {i}: {len(c)} genes; differs from the all-cells panel by {sorted(set(c) ^ set(panel))}")
    pl = pd.DataFrame({"leaky": leaky.per_label, "inside": inside.per_label})
    pl["diff"] = pl.leaky - pl.inside
    print(pl.round(3).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ileum", action="store_true", help="run the real-data evaluation instead of the speed benchmark")
    ap.add_argument("--forest", action="store_true", help="compare the random-forest backends on the ileum")
    ap.add_argument("--jobs", type=int, nargs="+", default=[2], help="n_jobs values for --forest")
    ap.add_argument("--protocol-study", action="store_true", help="Leiden tuning: study protocol vs fast (ileum)")
    ap.add_argument("--protocols", nargs="+", default=["fast", "study"], help="protocols for --protocol-study")
    ap.add_argument("--tc-variants", action="store_true", help="with --protocol-study: the study protocol on TC "
                    "z-scored, raw and log1p counts")
    ap.add_argument("--scs", action="store_true", help="MUSE's SCS: approximation error and the ileum labels")
    ap.add_argument("--scs-cells", type=int, default=3000)
    ap.add_argument("--scs-permutations", type=int, default=1000)
    ap.add_argument("--de-leakage", action="store_true", help="DE panel: leaky vs chosen inside each fold (ileum)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/stmorph_eval_ileum")
    ap.add_argument("--n-trees", type=int, default=1000)
    ap.add_argument("--rf-max-samples", type=float, default=None)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--skbio-disp-pairs", type=int, default=8)
    args = ap.parse_args()
    if args.protocol_study and args.tc_variants:
        bench_tc_variants(args)
    elif args.protocol_study:
        bench_protocol(args)
    elif args.scs:
        bench_scs(args)
    elif args.de_leakage:
        bench_de_leakage(args)
    elif args.forest:
        bench_forest(args)
    elif args.ileum:
        bench_ileum(args)
    else:
        bench_stats(args)


if __name__ == "__main__":
    main()
