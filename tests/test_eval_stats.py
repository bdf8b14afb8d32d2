"""PERMANOVA / PERMDISP / BH against scikit-bio, scipy, statsmodels and exact enumeration."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from stmorph.errors import StmorphInputError
from stmorph.eval import (
    benjamini_hochberg,
    geometric_median_batch,
    pairwise_permanova,
    pairwise_permdisp,
    permanova,
    permdisp,
    zscore,
)

skbio = pytest.importorskip("skbio")
from skbio import DistanceMatrix  # noqa: E402
from skbio.stats.distance import permanova as sk_permanova  # noqa: E402
from skbio.stats.distance import permdisp as sk_permdisp  # noqa: E402


def _data(sizes, d=5, seed=0, shift=0.6, scale=1.5):
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(len(sizes)), sizes)
    X = rng.normal(size=(lab.size, d))
    X[lab == 0] += shift
    X[lab == 1] *= scale
    return X, np.array([f"g{i}" for i in lab])


def _mc_ok(p, p_ref, perms, k=4.0):
    sd = np.sqrt(max(p_ref * (1 - p_ref), 1e-3) / perms)
    return abs(p - p_ref) <= k * sd + 2.0 / perms


@pytest.mark.parametrize("sizes", [(12, 20), (10, 15, 25)])
def test_permanova_matches_skbio(sizes):
    X, lab = _data(sizes)
    dm = DistanceMatrix(squareform(pdist(X)))
    ref = sk_permanova(dm, lab, permutations=499, seed=1)
    res = permanova(X, lab, permutations=499, random_state=1)
    assert res.statistic == pytest.approx(ref["test statistic"], rel=1e-10)
    assert _mc_ok(res.pvalue, ref["p-value"], 499)
    assert res.n == X.shape[0] and res.n_groups == len(sizes)


def test_permanova_pvalue_matches_exact_enumeration():
    # 4 vs 5 cells: 126 partitions; the Monte-Carlo p must match the exact permutation p
    X, lab = _data((4, 5), d=3, seed=3, shift=0.8)
    codes = (lab == "g1").astype(int)
    obs = permanova(X, codes, permutations=0).statistic
    fs = []
    for idx in combinations(range(9), 4):
        c = np.ones(9, int)
        c[list(idx)] = 0
        fs.append(permanova(X, c, permutations=0).statistic)
    exact = np.mean(np.asarray(fs) >= obs - 1e-9 * obs)
    res = permanova(X, codes, permutations=4999, random_state=0)
    assert np.isnan(permanova(X, codes, permutations=0).pvalue)
    assert abs(res.pvalue - exact) < 4 * np.sqrt(exact * (1 - exact) / 4999) + 1e-3


@pytest.mark.parametrize("test", ["centroid", "median"])
@pytest.mark.parametrize("sizes", [(15, 25), (10, 12, 20)])
def test_permdisp_matches_skbio_full_rank(test, sizes):
    X, lab = _data(sizes, d=4, seed=2)
    dm = DistanceMatrix(squareform(pdist(X)))
    ref = sk_permdisp(dm, lab, test=test, permutations=499, seed=0, dimensions=X.shape[1], warn_neg_eigval=False)
    res = permdisp(X, lab, test=test, permutations=499, random_state=0)
    assert res.statistic == pytest.approx(ref["test statistic"], rel=1e-6)
    assert _mc_ok(res.pvalue, ref["p-value"], 499)


def test_geometric_median_matches_skbio_kernel():
    from skbio.stats.distance._cutils import geomedian_axis_one

    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 6))
    masks = rng.random((5, 40)) < 0.5
    got = geometric_median_batch(X, masks)
    for m, g in zip(masks, got):
        np.testing.assert_allclose(g, np.asarray(geomedian_axis_one(X[m].T)), atol=1e-6)


@pytest.mark.parametrize("test", ["centroid", "median"])
def test_permdisp_fast_null_equals_exact_null(test):
    """The float32/loose-tolerance null re-checks near ties exactly: same p-value as the all-exact null."""
    from scipy.stats import f_oneway

    from stmorph.eval import _permdisp, _permutation

    X, lab = _data((60, 90), d=8, seed=5)
    X[:60] *= 1.15
    for seed in range(3):
        fast = permdisp(X, lab, test=test, permutations=299, random_state=seed)
        exact = permdisp(X, lab, test=test, permutations=299, random_state=seed, fast=False)
        assert fast.statistic == exact.statistic
        assert fast.pvalue == exact.pvalue
    # the fast null itself agrees with the exact kernel far inside the re-check band
    Xc = X - X.mean(axis=0)
    codes = (lab == lab[0]).astype(np.int64)
    sizes = np.bincount(codes).astype(float)
    pc = _permutation._permuted_codes(codes, 200, np.random.default_rng(0))
    sq = np.einsum("ij,ij->i", Xc, Xc)
    F0 = _permdisp._permdisp_f(Xc, pc, sizes, test, 1e-7)
    F1 = _permdisp._permdisp_f_fast(Xc, pc, sizes, test, _permdisp._DISP_FAST_RTOL * np.sqrt(sq.mean()))
    assert np.max(np.abs(F1 - F0) / np.maximum(1.0, F0)) < _permdisp._DISP_BAND / 20
    # the fused numba kernel == PERMDISP written out: centres (group means or geometric_median_batch), distances to
    # the own centre, scipy's one-way ANOVA (three groups)
    X3, lab3 = _data((20, 25, 30), d=5, seed=6)
    X3c = X3 - X3.mean(axis=0)
    c3 = np.unique(lab3, return_inverse=True)[1].astype(np.int64)
    pc3 = _permutation._permuted_codes(c3, 50, np.random.default_rng(1))
    s3 = np.bincount(c3).astype(float)
    ref = []
    for row in pc3:
        masks = row[None, :] == np.arange(3)[:, None]
        C = (geometric_median_batch(X3c, masks, eps=1e-7) if test == "median"
             else np.stack([X3c[m].mean(axis=0) for m in masks]))
        z = np.linalg.norm(X3c - C[row], axis=1)
        ref.append(f_oneway(*[z[m] for m in masks]).statistic)
    np.testing.assert_allclose(_permdisp._permdisp_f(X3c, pc3, s3, test, 1e-7), ref, rtol=1e-6)
    # three groups through the fast null as well
    X3[:20] *= 1.3
    a = permdisp(X3, lab3, test=test, permutations=199, random_state=2)
    b = permdisp(X3, lab3, test=test, permutations=199, random_state=2, fast=False)
    assert (a.statistic, a.pvalue) == (b.statistic, b.pvalue)


def test_bh_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    p = rng.uniform(size=50) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    # ties, zeros and ones, any shape (one family), NaNs left out of the family and kept in place
    P = rng.choice([0.0, 0.001, 0.01, 0.02, 0.02, 0.5, 1.0], size=(6, 7)) * rng.uniform(0.9, 1.0, size=(6, 7)).round(1)
    P[rng.random(P.shape) < 0.2] = np.nan
    got = benjamini_hochberg(P)
    ok = ~np.isnan(P)
    assert got.shape == P.shape and np.array_equal(np.isnan(got), ~ok)
    np.testing.assert_allclose(got[ok], multipletests(P[ok], method="fdr_bh")[1], rtol=1e-12)
    q = benjamini_hochberg(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(q[1]) and q[0] == pytest.approx(0.02)
    assert benjamini_hochberg(np.array([])).shape == (0,)
    assert np.isnan(benjamini_hochberg(np.array([np.nan, np.nan]))).all()


def test_pairwise_tables_and_power():
    X, lab = _data((30, 30, 30), d=6, seed=5, shift=2.0, scale=1.0)
    df = pairwise_permanova(X, lab, permutations=199)
    assert list(df.columns) == ["group1", "group2", "n1", "n2", "statistic", "pvalue", "padj", "significant"]
    assert len(df) == 3
    sig = dict(zip(zip(df.group1, df.group2), df.significant))
    assert sig[("g0", "g1")] and sig[("g0", "g2")] and not sig[("g1", "g2")]
    # pairwise F equals the two-group test on the z-scored data subset
    Z = zscore(X)
    sel = np.isin(lab, ["g0", "g1"])
    assert df.statistic.iloc[0] == pytest.approx(permanova(Z[sel], lab[sel], permutations=0).statistic)
    # deterministic and independent of the number of threads
    df1 = pairwise_permanova(X, lab, permutations=199, n_jobs=1)
    np.testing.assert_array_equal(df1.pvalue, df.pvalue)
    # dispersion differences are found by PERMDISP
    Xd, labd = _data((40, 40), d=4, seed=6, shift=0.0, scale=3.0)
    dd = pairwise_permdisp(Xd, labd, permutations=199, test="centroid")
    assert dd.significant.all()


def test_bad_inputs():
    with pytest.raises(StmorphInputError):
        permanova(np.zeros((5, 2)), ["a"] * 5)
    with pytest.raises(StmorphInputError):
        permanova(np.zeros((5, 2)), ["a", "b"])
    with pytest.raises(StmorphInputError):
        permdisp(np.ones((4, 2)), ["a", "a", "b", "b"], test="mean")
    X = np.ones((4, 2))
    X[0, 0] = np.nan
    with pytest.raises(StmorphInputError):
        permanova(X, ["a", "a", "b", "b"])


@pytest.mark.realdata
def test_ileum_stain_permanova_and_ridge(ileum_dir):
    import pandas as pd

    from stmorph.eval import align_inputs, latent_f_tests, normalize_counts, read_feature_table

    counts = read_feature_table(ileum_dir / "gene_counts.csv")
    stain = read_feature_table(ileum_dir / "stain_vae_embedding.csv")
    lab = pd.read_csv(ileum_dir / "cell_assignment.csv", index_col=0)["leiden_final"]
    lab.index = lab.index.astype(str)
    tabs, y, rep = align_inputs({"counts": counts, "stain": stain}, lab, exclude_labels=["Removed"])
    assert rep["n_cells"] == 5194 and y.nunique() == 19
    sel = y.isin(["Smooth Muscle", "Enterocyte (Mid Villus)"]).to_numpy()
    Z = zscore(tabs["stain"].to_numpy())[sel]
    res = permanova(Z, y.to_numpy()[sel], permutations=99)
    dm = DistanceMatrix(squareform(pdist(Z)))
    ref = sk_permanova(dm, y.to_numpy()[sel], permutations=0)
    assert res.statistic == pytest.approx(ref["test statistic"], rel=1e-9)
    assert res.pvalue == pytest.approx(0.01)  # smooth muscle is distinct in the stain space
    ft = latent_f_tests(tabs["stain"].to_numpy(), normalize_counts(tabs["counts"].to_numpy()), list(tabs["counts"].columns))
    assert 0 < (ft["padj"] < 0.05).sum() < len(ft)
