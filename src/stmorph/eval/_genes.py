"""Gene prediction from a latent space and gene subsets for limited-panel experiments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ._stats import benjamini_hochberg

__all__ = [
    "normalize_counts",
    "ridge_gene_prediction",
    "latent_f_tests",
    "pca_gene_subset",
    "de_gene_subset",
    "de_gene_columns",
    "wilcoxon_scores",
    "random_gene_subset",
]


def normalize_counts(counts: np.ndarray, *, target_sum: float | None = None) -> np.ndarray:
    """Scale each cell to the median total count (or ``target_sum``) and take ``log1p`` (scanpy's default recipe).

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` non-negative counts.
    target_sum
        Total per cell after scaling; default the median total over cells with counts.

    Returns
    -------
    float64 ``log1p`` of the scaled counts (cells with zero total stay zero).

    Examples
    --------
    >>> normalize_counts(np.array([[1, 1], [2, 0]])).round(3)
    array([[0.693, 0.693],
           [1.099, 0.   ]])
    """
    C = np.asarray(counts, dtype=np.float64)
    if C.ndim != 2:
        raise StmorphInputError(f"counts must be 2-D, got {C.shape}", expected="(cells, genes)")
    if (C < 0).any() or not np.isfinite(C).all():
        raise StmorphInputError("counts contain negative or non-finite values", expected="non-negative counts")
    tot = C.sum(axis=1)
    if target_sum is None:
        target_sum = float(np.median(tot[tot > 0])) if (tot > 0).any() else 1.0
    scale = np.divide(target_sum, tot, out=np.zeros_like(tot), where=tot > 0)
    return np.log1p(C * scale[:, None])


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
        ``(n, G)`` expression (e.g. :func:`normalize_counts` output).
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


def pca_gene_subset(X: np.ndarray, genes: Sequence[str], *, n_pcs: int = 15, n_top: int = 3) -> list[str]:
    """Genes with the largest absolute loadings: top ``n_top`` of each of the first ``n_pcs`` PCs, unique.

    Parameters
    ----------
    X
        ``(n, G)`` normalised expression (PCA centres it; no scaling).
    genes
        Gene names.
    n_pcs
        Number of principal components (study: 15).
    n_top
        Genes per component (study: 3).

    Returns
    -------
    Unique gene names in PC order.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 6)) * np.array([10, 1, 1, 1, 1, 5])
    >>> pca_gene_subset(X, list("abcdef"), n_pcs=2, n_top=1)
    ['a', 'f']
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float64)
    n_pcs = int(min(n_pcs, min(X.shape)))
    load = PCA(n_components=n_pcs, svd_solver="full").fit(X).components_
    out: list[str] = []
    for comp in load:
        for j in np.argsort(-np.abs(comp), kind="stable")[:n_top]:
            if genes[j] not in out:
                out.append(genes[j])
    return out


def wilcoxon_scores(X: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Rank-sum z-scores of every gene for each label versus the rest (scanpy's ``wilcoxon`` scores, no tie correction).

    ``z = (R - n1 (n + 1) / 2) / sqrt(n1 n2 (n + 1) / 12)`` with ``R`` the rank sum of the label's cells; computed
    with one ranking per gene instead of scanpy's ``rank_genes_groups``, whose first call compiles numba kernels
    (about 30 s here).

    Parameters
    ----------
    X
        ``(n, G)`` expression.
    labels
        ``(n,)`` labels.

    Returns
    -------
    DataFrame labels x genes (positional gene columns).

    Examples
    --------
    >>> wilcoxon_scores(np.array([[1.0], [2.0], [3.0], [4.0]]), np.array(["a", "a", "b", "b"])).round(2).values.tolist()
    [[-1.55], [1.55]]
    """
    from scipy.stats import rankdata

    X = np.asarray(X, dtype=np.float64)
    cats, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    n = X.shape[0]
    R = rankdata(X, axis=0)
    onehot = np.zeros((cats.size, n))
    onehot[codes, np.arange(n)] = 1.0
    sums = onehot @ R
    n1 = onehot.sum(axis=1)[:, None]
    z = (sums - n1 * (n + 1) / 2) / np.sqrt(n1 * (n - n1) * (n + 1) / 12)
    return pd.DataFrame(z, index=cats)


def de_gene_columns(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Column indices of the top Wilcoxon rank-sum gene of each label versus the rest (unique, sorted-label order).

    The feature selection behind :func:`de_gene_subset`, in the form ``rf_classification(select=...)`` takes: pass
    it there to choose the panel inside each training fold, so the held-out cells' labels never choose the genes.

    Parameters
    ----------
    X
        ``(n, G)`` normalised (log) expression.
    labels
        ``(n,)`` labels.

    Returns
    -------
    int64 column indices.

    Examples
    --------
    >>> X = np.log1p(np.array([[5.0, 0, 1], [6, 0, 0], [0, 4, 1], [0, 5, 0]]))
    >>> de_gene_columns(X, np.array(["x", "x", "y", "y"])).tolist()
    [0, 1]
    """
    z = wilcoxon_scores(X, labels).to_numpy()
    out: list[int] = []
    for row in z:
        j = int(np.argmax(row))
        if j not in out:
            out.append(j)
    return np.asarray(out, dtype=np.int64)


def de_gene_subset(X: np.ndarray, genes: Sequence[str], labels: np.ndarray) -> list[str]:
    """The top Wilcoxon rank-sum gene of each label versus the rest (highest z, as scanpy ranks), unique.

    The panel is chosen with the labels. Classifying those same labels with it in a cross-validation leaks the
    test cells' labels into the features: use ``rf_classification(X_all_genes, labels, select=de_gene_columns)``
    (or ``evaluate_spaces(..., fold_panels=...)``) to choose it inside each training fold instead; on the ileum
    the leak is measured in ``benchmarks/RESULTS.md``.

    Parameters
    ----------
    X
        ``(n, G)`` normalised (log) expression.
    genes
        Gene names.
    labels
        ``(n,)`` labels.

    Returns
    -------
    Unique gene names in sorted-label order.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(1.0, size=(60, 4)).astype(float); X[:30, 2] += 5; X[30:, 0] += 5
    >>> de_gene_subset(np.log1p(X), list("abcd"), np.repeat(["x", "y"], 30))
    ['c', 'a']
    """
    return [str(genes[j]) for j in de_gene_columns(X, labels)]


def random_gene_subset(genes: Sequence[str], n: int, *, random_state: int = 0) -> list[str]:
    """A seeded random subset of ``n`` genes (in the original gene order).

    Parameters
    ----------
    genes
        Gene names.
    n
        Subset size.
    random_state
        Seed.

    Returns
    -------
    List of gene names.

    Examples
    --------
    >>> random_gene_subset(list("abcdef"), 3, random_state=1) == random_gene_subset(list("abcdef"), 3, random_state=1)
    True
    """
    if not 0 < n <= len(genes):
        raise StmorphInputError(f"n={n} genes requested from {len(genes)}", expected="0 < n <= number of genes")
    idx = np.sort(np.random.default_rng(random_state).choice(len(genes), size=n, replace=False))
    return [genes[i] for i in idx]
