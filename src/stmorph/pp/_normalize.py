"""Normalisation of counts: scale each cell to a common total and take ``log1p`` (scanpy's default recipe)."""

from __future__ import annotations

import numpy as np

from ..errors import StmorphInputError

__all__ = ["normalize_counts"]


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
