"""Tests of the multi-modal baselines (stmorph.tl._baselines) against scikit-learn references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cross_decomposition import CCA

from stmorph import StmorphInputError
from stmorph.datasets import simulate_multimodal
from stmorph.tl import _baselines as bl


@pytest.fixture(scope="module")
def small():
    return simulate_multimodal(n_clusters=4, n_cells=120, n_features=(15, 12), latent_dim=6, random_state=0)


def _abs_corr(a, b):
    return abs(np.corrcoef(a, b)[0, 1])


def test_cca_matches_sklearn():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(300, 2))
    x = s @ rng.normal(size=(2, 5)) + 0.5 * rng.normal(size=(300, 5))
    y = s @ rng.normal(size=(2, 4)) + 0.5 * rng.normal(size=(300, 4))
    u, v, rho = bl.cca_arrays(x, y, 2)
    ref = CCA(n_components=2, max_iter=5000, tol=1e-10).fit(x, y)
    us, vs = ref.transform(x, y)
    for i in range(2):
        assert rho[i] == pytest.approx(_abs_corr(us[:, i], vs[:, i]), abs=1e-4)
        assert _abs_corr(u[:, i], us[:, i]) > 0.999
    # canonical variates: unit variance, paired correlation = rho, uncorrelated across pairs
    np.testing.assert_allclose(u.std(0, ddof=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.corrcoef(u[:, 0], v[:, 0])[0, 1], rho[0], atol=1e-4)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 1e-4


def _pca_by_eigh(X, k):
    """Principal component scores from the eigenvectors of the covariance matrix (not sklearn's SVD path)."""
    Xc = X - X.mean(axis=0)
    vals, vecs = np.linalg.eigh(Xc.T @ Xc / (len(X) - 1))
    order = np.argsort(vals)[::-1][:k]
    return Xc @ vecs[:, order], vals[order]


def test_concat_pca_equals_eigendecomposition(small):
    xs = [small["rna"].X, small["morph"].X]
    got = bl.concat_pca_arrays(xs, "standard", 5)
    # z-score each feature by its formula (population SD; constant features stay 0), concatenate, project on the
    # covariance eigenvectors
    def zs(x):
        x = np.asarray(x, np.float64)
        sd = x.std(axis=0)
        return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)

    z = np.hstack([zs(x) for x in xs])
    ref, var = _pca_by_eigh(z, 5)
    np.testing.assert_allclose(np.abs(got), np.abs(ref), atol=1e-3)
    # known structure of PCA scores: centred, uncorrelated, variances = the leading eigenvalues in order
    cov = np.cov(got.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(np.diag(cov), var, rtol=1e-3)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3 * var[0]
    mm = bl.concat_pca_arrays(xs, "minmax", 3)
    qt = bl.concat_pca_arrays(xs, "quantile", 3)
    assert mm.shape == qt.shape == (120, 3)
    with pytest.raises(StmorphInputError, match="scaling"):
        bl.concat_pca_arrays(xs, "robust", 3)


def test_mudata_wrappers(small):
    md = small.copy()
    bl.pca_single(md, "morph", 4)
    ref, _ = _pca_by_eigh(np.asarray(small["morph"].X, np.float64), 4)
    np.testing.assert_allclose(np.abs(md.obsm["X_pca_morph"]), np.abs(ref), atol=1e-3)
    bl.concat_pca(md, scaling="minmax", n_comps=6)
    bl.cca(md, n_comps=3)
    assert md.obsm["X_concat_minmax"].shape == (120, 6) and md.obsm["X_cca"].shape == (120, 6)
    corr = md.uns["baselines"]["X_cca"]["correlations"]
    assert corr == sorted(corr, reverse=True) and 0 < corr[0] <= 1
    cp = bl.cca(small, n_comps=2, key_added="X_c2", copy=True)
    assert "X_c2" in cp.obsm and "X_c2" not in small.obsm
    with pytest.raises(StmorphInputError, match="not in the MuData"):
        bl.pca_single(md, "protein")


def test_multiview_ae_is_deterministic(small):
    a = bl.multiview_ae(small, latent_dim=5, n_epochs=3, n_threads=1, copy=True)
    b = bl.multiview_ae(small, latent_dim=5, n_epochs=3, n_threads=1, copy=True)
    np.testing.assert_array_equal(a.obsm["X_mvae"], b.obsm["X_mvae"])
    assert a.obsm["X_mvae"].shape == (120, 5)
    assert a.uns["baselines"]["X_mvae"]["method"] == "multiview_ae"


@pytest.mark.slow
def test_mofa(small):
    pytest.importorskip("mofapy2")
    md = small.copy()
    bl.mofa(md, n_factors=3, random_state=0, n_iterations=50)
    emb = md.obsm["X_mofa"]
    assert emb.shape[0] == 120 and 1 <= emb.shape[1] <= 3 and np.isfinite(emb).all()


def test_mofa_scales_views(small):
    """MOFA+ as the MUSE paper runs it: each view scaled to unit variance, so a view's unit does not matter
    (without the scaling, the same rescaling changes the factors)."""
    pytest.importorskip("mofapy2")
    xs = [np.asarray(small["rna"].X, np.float64), np.asarray(small["morph"].X, np.float64)]
    kw = dict(n_iterations=30, random_state=0, use_float32=False)
    a = bl.mofa_arrays(xs, 3, **kw)
    b = bl.mofa_arrays([xs[0] * 100.0, xs[1]], 3, **kw)
    assert a.shape == b.shape == (120, 3)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-4 * np.abs(a).max())
    raw = bl.mofa_arrays(xs, 3, scale_views=False, **kw)
    raw100 = bl.mofa_arrays([xs[0] * 100.0, xs[1]], 3, scale_views=False, **kw)
    assert not np.allclose(np.abs(raw), np.abs(raw100), atol=1e-2 * np.abs(raw).max())
