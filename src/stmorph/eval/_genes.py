"""Gene prediction from a latent space: ridge R^2 per gene and latent-variable F-tests.

Normalisation and gene panels are preprocessing: :mod:`stmorph.pp` (``normalize_counts``, ``pca_gene_subset``,
``de_gene_subset``, ``de_gene_columns``, ``random_gene_subset``, ``wilcoxon_scores``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ._pairwise import benjamini_hochberg

__all__ = ["ridge_gene_prediction", "latent_f_tests"]


def ridge_gene_prediction(
    Z: np.ndarray,
    Y: np.ndarray,
    genes: Sequence[str],
    *,
    alpha: float = 1.0,
    test_size: float = 0.2,
    scale: bool = True,
    random_state: int = 0,
) -> pd.DataFrame:
    """Predict each gene from a latent space with ridge regression; test-set R^2 per gene.

    One multi-output ridge fit equals independent per-gene ridge fits with the same ``alpha``.

    Parameters
    ----------
    Z
        ``(n, L)`` latent features.
    Y
        ``(n, G)`` expression (e.g. :func:`stmorph.pp.normalize_counts` output).
    genes
        Gene names (length G).
    alpha
        Ridge penalty (study: 1).
    test_size
        Held-out fraction (study: 0.2).
    scale
        Standardise the latent features with a scaler fitted on the training cells.
    random_state
        Seed of the split.

    Returns
    -------
    DataFrame indexed by gene with column ``r2`` (sorted as ``genes``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.normal(size=(200, 3)); Y = np.c_[Z[:, 0] + 0.1 * rng.normal(size=200), rng.normal(size=200)]
    >>> ridge_gene_prediction(Z, Y, ["g1", "g2"])["r2"].round(1).tolist()
    [1.0, -0.0]
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    Z = np.asarray(Z, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Z.shape[0] != Y.shape[0] or Y.shape[1] != len(genes):
        raise StmorphInputError(f"latent {Z.shape}, expression {Y.shape}, {len(genes)} gene names",
                                expected="same cells and one name per gene")
    Ztr, Zte, Ytr, Yte = train_test_split(Z, Y, test_size=test_size, random_state=random_state)
    if scale:
        sc = StandardScaler().fit(Ztr)
        Ztr, Zte = sc.transform(Ztr), sc.transform(Zte)
    pred = Ridge(alpha=alpha).fit(Ztr, Ytr).predict(Zte)
    r2 = r2_score(Yte, pred, multioutput="raw_values")
    # genes constant in the test set: sklearn returns 0/1 conventions; make them NaN (undefined)
    r2 = np.where(Yte.std(axis=0) > 0, r2, np.nan)
    return pd.DataFrame({"r2": r2}, index=pd.Index(list(genes), name="gene"))


def latent_f_tests(Z: np.ndarray, Y: np.ndarray, genes: Sequence[str]) -> pd.DataFrame:
    """Univariate F-test of every (gene, latent variable) pair; BH over all tests; lowest adjusted p per gene.

    For one regressor with intercept, ``F = r^2 / (1 - r^2) (n - 2)`` (identical to
    :func:`sklearn.feature_selection.f_regression`), computed for all pairs from one correlation matrix.

    Parameters
    ----------
    Z
        ``(n, L)`` latent features.
    Y
        ``(n, G)`` expression.
    genes
        Gene names.

    Returns
    -------
    DataFrame indexed by gene: ``padj`` (lowest BH-adjusted p), ``best_latent`` (its latent index), ``f``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.normal(size=(100, 2)); Y = np.c_[Z[:, 1] + rng.normal(size=100), rng.normal(size=100)]
    >>> latent_f_tests(Z, Y, ["a", "b"])["best_latent"].tolist()[0]
    1
    """
    from scipy import stats

    Z = np.asarray(Z, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = Z.shape[0]
    Zc = Z - Z.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    zs = np.sqrt((Zc**2).sum(axis=0))
    ys = np.sqrt((Yc**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (Yc.T @ Zc) / np.outer(ys, zs)  # (G, L)
        F = r**2 / (1 - r**2) * (n - 2)
    p = stats.f.sf(F, 1, n - 2)
    padj = benjamini_hochberg(p)
    filled = np.where(np.isnan(padj), np.inf, padj)
    best = filled.argmin(axis=1)
    rows = np.arange(padj.shape[0])
    return pd.DataFrame(
        {"padj": padj[rows, best], "best_latent": best, "f": F[rows, best]},
        index=pd.Index(list(genes), name="gene"),
    )
