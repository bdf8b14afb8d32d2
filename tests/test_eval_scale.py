"""Evaluation at scale: seeded subsamples above EXACT_MAX_CELLS, approximate neighbours above APPROX_KNN_MIN_CELLS,
and unchanged results below the thresholds.

Expectations come from the definitions (the test of a subsample is the test of those cells; a silhouette of a
sample is sklearn's silhouette of those cells), from distribution theory (the pseudo-F of two Gaussian groups) and
from memory bounds an n x n object could not meet.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import pairwise_distances, silhouette_score

from stmorph.eval import (
    EXACT_MAX_CELLS,
    MAX_CELLS_PER_LABEL,
    EvalConfig,
    capped_subsample,
    evaluate_spaces,
    leiden_tune,
    multiplex_leiden,
    pairwise_permanova,
    pairwise_permdisp,
    permanova,
    permdisp,
    silhouette,
    stratified_sample,
    write_results,
    zscore,
)
from stmorph.eval._cluster import _silhouettes_blockwise

ONLY_CLUSTERING = dict(run_permanova=False, run_permdisp=False, run_classification=False)


def _gaussian_blobs(n: int, n_labels: int, d: int = 4, spread: float = 3.0, seed: int = 0):
    """``n`` cells in ``n_labels`` isotropic unit-variance Gaussian blobs (centres ~ N(0, spread^2)), cheap at 1e5."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n_labels, n)
    X = rng.normal(0.0, spread, (n_labels, d))[lab] + rng.normal(size=(n, d))
    return X, np.array([f"t{i}" for i in lab])


def test_capped_and_stratified_samples():
    codes = np.repeat([0, 1, 2], [50, 7, 300])
    idx = capped_subsample(codes, 20, np.random.default_rng(0))
    assert np.bincount(codes[idx]).tolist() == [20, 7, 20]
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert np.array_equal(idx, capped_subsample(codes, 20, np.random.default_rng(0)))  # seeded
    assert not np.array_equal(idx, capped_subsample(codes, 20, np.random.default_rng(1)))
    # nothing above the cap: every row, and no random number drawn
    rng = np.random.default_rng(3)
    assert np.array_equal(capped_subsample(codes, 300, rng), np.arange(codes.size))
    assert rng.random() == np.random.default_rng(3).random()

    lab = np.repeat(["a", "b", "c", "d"], [6000, 3000, 994, 6])
    s = stratified_sample(lab, 1000, np.random.default_rng(0))
    counts = dict(zip(*np.unique(lab[s], return_counts=True)))
    # proportional shares (600, 300, 99.4 -> 99, 0.6 -> 1 by largest remainder), at least two of a stratum
    assert counts == {"a": 600, "b": 300, "c": 99, "d": 2}
    assert np.all(np.diff(s) > 0)
    assert np.array_equal(stratified_sample(lab, 20_000, np.random.default_rng(0)), np.arange(lab.size))


def test_subsampled_tests_are_the_tests_of_the_subsample():
    X, lab = _gaussian_blobs(3000, 3, spread=0.3, seed=1)
    codes = np.unique(lab, return_inverse=True)[1]
    # the subsample is drawn from random_state first, then the permutations: the same as testing those cells
    rng = np.random.default_rng(5)
    keep = capped_subsample(codes, 400, rng)
    ref = permanova(X[keep], lab[keep], permutations=99, random_state=rng, subsample=False)
    got = permanova(X, lab, permutations=99, random_state=5, subsample=True, max_cells_per_label=400)
    assert (got.statistic, got.pvalue, got.n, got.n_tested) == (ref.statistic, ref.pvalue, 3000, 1200)
    rng = np.random.default_rng(5)
    keep = capped_subsample(codes, 400, rng)
    ref = permdisp(X[keep], lab[keep], permutations=49, random_state=rng, subsample=False)
    got = permdisp(X, lab, permutations=49, random_state=5, subsample=True, max_cells_per_label=400)
    assert (got.statistic, got.pvalue, got.n_tested) == (ref.statistic, ref.pvalue, 1200)

    # below EXACT_MAX_CELLS the default is every cell: identical to subsample=False, no extra columns or attrs
    assert X.shape[0] <= EXACT_MAX_CELLS
    for fn in (pairwise_permanova, pairwise_permdisp):
        auto = fn(X, lab, permutations=49)
        pd.testing.assert_frame_equal(auto, fn(X, lab, permutations=49, subsample=False))
        assert list(auto.columns) == ["group1", "group2", "n1", "n2", "statistic", "pvalue", "padj", "significant"]
        assert "subsample" not in auto.attrs
    assert permanova(X, lab, permutations=0).n_tested == 3000

    # forced subsample: the labels' sizes and the tested cells, the same cells for PERMANOVA and PERMDISP
    a = pairwise_permanova(X, lab, permutations=49, subsample=True, max_cells_per_label=300)
    b = pairwise_permdisp(X, lab, permutations=49, subsample=True, max_cells_per_label=300)
    assert list(a.columns) == ["group1", "group2", "n1", "n2", "statistic", "pvalue", "n1_tested", "n2_tested",
                               "padj", "significant"]
    assert (a[["n1_tested", "n2_tested"]] == 300).all().all()
    assert (a.n1 + a.n2 > 600).all()
    assert a.attrs["subsample"] == b.attrs["subsample"] == {"max_cells_per_label": 300, "n_cells": 900}


def test_subsampled_permanova_f_agrees_with_the_exact_f_at_the_subsample_size():
    """Two separable Gaussian groups (unit noise, d dims, means ``delta`` apart), m cells each (n = 2m): SS_A is a
    noncentral chi^2_d(lambda = m delta^2 / 2) and SS_W a chi^2 with d (n - 2) degrees of freedom, so
    F = SS_A / (SS_W / (n - 2)) has mean ~ (d + lambda) / d and relative SD ~ sqrt(2 (d + 2 lambda) / (d + lambda)^2
    + 2 / (d (n - 2))) (1.2% here; 40 simulated pairs gave 1.2-1.5%). The F of the capped subsample of a
    100,000-cell dataset and the exact F of an independent dataset with the cap's size per group are two
    independent draws of that distribution: they agree within 4 SD of their difference (sqrt(2) x 1.2%)."""
    d, delta, m = 4, 4.0, MAX_CELLS_PER_LABEL
    rng = np.random.default_rng(11)

    def two_groups(n_per_group):
        X = rng.normal(size=(2 * n_per_group, d))
        X[:n_per_group, 0] += delta
        return X, np.repeat(["a", "b"], n_per_group)

    X_big, lab_big = two_groups(50_000)
    X_small, lab_small = two_groups(m)
    assert X_big.shape[0] > EXACT_MAX_CELLS >= X_small.shape[0]
    sub = permanova(X_big, lab_big, permutations=19, random_state=0)  # subsampled by default above the threshold
    exact = permanova(X_small, lab_small, permutations=19, random_state=0)
    assert sub.n == 100_000 and sub.n_tested == exact.n_tested == exact.n == 2 * m
    lam = m * delta**2 / 2
    rel_sd = np.sqrt(2 * (d + 2 * lam) / (d + lam) ** 2 + 2 / (d * (2 * m - 2)))
    assert abs(sub.statistic / exact.statistic - 1) < 4 * np.sqrt(2) * rel_sd
    assert abs(exact.statistic / ((d + lam) / d) - 1) < 4 * rel_sd
    assert abs(sub.statistic / ((d + lam) / d) - 1) < 4 * rel_sd
    # the whole dataset's F is ~10x larger (F grows with n): the subsample was really used
    full = permanova(X_big, lab_big, permutations=0, subsample=False)
    assert full.statistic > 8 * sub.statistic
    assert sub.pvalue == exact.pvalue == 0.05


def test_sampled_silhouettes_are_sklearns_silhouettes_of_the_sample():
    X, lab = _gaussian_blobs(3000, 5, d=3, spread=1.5, seed=2)
    clusters = np.char.add("c", (X[:, 0] > 0).astype(int).astype(str))
    # the blockwise silhouette (no n x n matrix) equals the exact one, for several clusterings at once
    blocks = _silhouettes_blockwise(X, [lab, clusters, np.zeros(3000)], block=700, max_columns=5)
    assert blocks[0] == pytest.approx(silhouette_score(X, lab), rel=1e-10)
    assert blocks[1] == pytest.approx(silhouette_score(X, clusters), rel=1e-10)
    assert np.isnan(blocks[2])
    # below the threshold: every cell, identical to the precomputed-distance path
    assert silhouette(X, lab) == silhouette(X, lab, D=pairwise_distances(X))
    # a sample: sklearn's silhouette of exactly the stratified sample's cells
    s = silhouette(X, lab, sample_size=500, random_state=3)
    codes = np.unique(lab, return_inverse=True)[1]
    cells = stratified_sample(codes, 500, np.random.default_rng([3, 0x5CA1E]))
    assert s == pytest.approx(silhouette_score(X[cells], lab[cells]), rel=1e-10)
    assert abs(s - silhouette_score(X, lab)) < 0.05


def _leiden_grid(Z, k, resolutions):
    """The clusterings of leiden_tune's "fast" grid, run directly (same graph, optimiser and seed)."""
    from stmorph._cluster import knn_graph
    from stmorph._cluster._community import _leiden
    from stmorph._cluster._graphs import _to_igraph

    g = _to_igraph(knn_graph(Z, k))
    return [_leiden(g, r, 0) for r in resolutions]


def test_scaled_clustering_paths(monkeypatch, tmp_path):
    """With the threshold lowered to 400 cells, a 1,200-cell evaluation takes every scaled path of the silhouettes
    and tests; with the real threshold the same data gives the exact results and an empty ``subsampled``."""
    from stmorph.eval import _scale

    X, lab = _gaussian_blobs(1200, 7, d=5, spread=6.0, seed=4)
    Y = X[:, ::-1] + np.random.default_rng(4).normal(size=X.shape)
    Zx, Zy = zscore(X), zscore(Y)
    cfg = EvalConfig(permutations=19, k_grid=(10,), resolutions=(0.5, 1.0), multiplex_weights=(0.5,),
                     leiden_n_jobs=1, n_trees=10, permdisp_tests=("centroid",))
    exact = evaluate_spaces({"A": X, "B": Y}, lab, config=cfg, multiplex=[("A", "B")])
    assert exact.summary["scaling"] == {"n_cells": 1200, "exact_max_cells": EXACT_MAX_CELLS,
                                        "approx_knn_min_cells": 50_000, "subsampled": {}, "approximate_knn": False}
    monkeypatch.setattr(_scale, "EXACT_MAX_CELLS", 400)
    monkeypatch.setattr(_scale, "SILHOUETTE_SAMPLE", 300)
    res = evaluate_spaces({"A": X, "B": Y}, lab, config=cfg, multiplex=[("A", "B")])
    sc = res.summary["scaling"]
    assert sc["exact_max_cells"] == 400 and sc["approximate_knn"] is False
    assert sc["subsampled"]["silhouette"] == {"stratified_by": "label (proportional)", "n_cells": 300}
    assert sc["subsampled"]["permanova"]["n_cells"] == sc["subsampled"]["permdisp_centroid"]["n_cells"] == 1200

    # the tuning's clusterings are the exact run's; only the silhouettes differ: sklearn's silhouettes of one
    # label-stratified sample, the same for every grid point, the summary and the multiplex weights
    grid, grid_exact = res.tables["leiden_grid_A"], exact.tables["leiden_grid_A"]
    assert grid["n_clusters"].tolist() == grid_exact["n_clusters"].tolist()
    lr = leiden_tune(Zx, k_grid=(10,), resolutions=(0.5, 1.0), n_jobs=1, strata=lab)
    pd.testing.assert_frame_equal(lr.grid, grid)
    c = lr.silhouette_cells
    assert len(c) == 300 and np.array_equal(c, stratified_sample(lab, 300, np.random.default_rng([0, 0x5CA1E])))
    for sil, cl in zip(grid["silhouette"], _leiden_grid(Zx, 10, (0.5, 1.0))):
        assert sil == pytest.approx(silhouette_score(Zx[c], cl[c]), rel=1e-10)
    assert res.summary["feature_spaces"]["A"]["clustering"]["silhouette"] == pytest.approx(lr.silhouette, rel=1e-12)
    mr = multiplex_leiden(Zx, Zy, k=(10, 10), resolution=(0.5, 0.5), weights=(0.5,), n_jobs=1, strata=lab)
    assert np.array_equal(mr.silhouette_cells, c)
    assert mr.grid["silhouette_1"].iloc[0] == pytest.approx(silhouette_score(Zx[c], mr.clusters[c]), rel=1e-10)
    # the scaling entry reaches summary.json
    write_results(res, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["scaling"] == sc


@pytest.mark.slow
def test_evaluate_spaces_at_60k_cells_without_n_by_n_objects():
    """60,000 cells: above EXACT_MAX_CELLS (subsampled tests and silhouettes) and APPROX_KNN_MIN_CELLS (NN-descent)."""
    from stmorph._cluster import knn_indices

    n = 60_000
    X, lab = _gaussian_blobs(n, 3, d=4, spread=3.0, seed=0)
    # NN-descent's numba kernels compile once per process (~30 s CPU here, independent of n): outside the measure
    knn_indices(X[:2000], 10, approximate=True)
    cfg = EvalConfig(permutations=39, run_classification=False, k_grid=(10,), resolutions=(0.02, 0.05),
                     leiden_n_jobs=1, leiden_backend="igraph", permdisp_tests=("median",), min_clusters=2)
    tracemalloc.start()
    try:
        res = evaluate_spaces({"A": X}, lab, config=cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # an n x n float64 matrix is 28.8 GB here, and even one (n x 10,000) block 4.8 GB
    assert peak < 1.5 * 2**30
    sc = res.summary["scaling"]
    assert sc["n_cells"] == n and sc["approximate_knn"] is True
    per_label = np.unique(lab, return_counts=True)[1]
    assert (per_label > MAX_CELLS_PER_LABEL).all()
    for test in ("permanova", "permdisp_median"):
        assert sc["subsampled"][test] == {"stratified_by": "label", "max_cells_per_label": MAX_CELLS_PER_LABEL,
                                          "n_cells": 3 * MAX_CELLS_PER_LABEL}
    assert sc["subsampled"]["silhouette"]["n_cells"] == 10_000
    pm = res.tables["permanova_A"]
    assert (pm[["n1_tested", "n2_tested"]] == MAX_CELLS_PER_LABEL).all().all()
    assert (pm.pvalue == 1 / 40).all() and pm.significant.all()
    cl = res.summary["feature_spaces"]["A"]["clustering"]
    assert cl["ari"] > 0.9 and 0 < cl["silhouette"] < 1
