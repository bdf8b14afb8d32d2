"""Gene panels for limited-panel experiments: top PCA-loading genes, top differentially expressed genes (Wilcoxon
rank-sum, also inside each training fold), seeded random genes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import StmorphInputError

__all__ = ["pca_gene_subset", "wilcoxon_scores", "de_gene_columns", "de_gene_subset", "random_gene_subset"]


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

    The feature selection behind :func:`de_gene_subset`, in the form ``select=`` of
    :func:`stmorph.eval.rf_classification` takes: pass it there to choose the panel inside each training fold, so
    the held-out cells' labels never choose the genes.

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
    test cells' labels into the features: use ``stmorph.eval.rf_classification(X_all_genes, labels,
    select=de_gene_columns)`` (or ``stmorph.eval.evaluate_spaces(..., fold_panels=...)``) to choose it inside each
    training fold instead; on the ileum the leak is measured in ``benchmarks/RESULTS.md``.

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
