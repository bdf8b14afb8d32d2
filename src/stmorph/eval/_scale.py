"""Evaluation at scale: the sizes above which the evaluation subsamples or approximates, and its seeded samplers.

Up to :data:`EXACT_MAX_CELLS` cells every analysis uses every cell, exactly as before these thresholds existed.
Above it nothing of size ``n x n`` is built:

=============================================  =====================================  ==================================
step                                           up to the threshold                    above the threshold
=============================================  =====================================  ==================================
PERMANOVA / PERMDISP (global and pairwise)     every cell                             each label capped at
                                                                                      :data:`MAX_CELLS_PER_LABEL` cells
                                                                                      (:func:`capped_subsample`, seeded)
silhouettes (Leiden tuning, cluster metrics)   every cell, ``n x n`` distance matrix  :data:`SILHOUETTE_SAMPLE` cells,
                                                                                      proportionally stratified
                                                                                      (:func:`stratified_sample`), in
                                                                                      row blocks
kNN graphs of the Leiden tuning (``"fast"``)   exact search                           NN-descent above
                                                                                      :data:`APPROX_KNN_MIN_CELLS`
=============================================  =====================================  ==================================

PERMANOVA itself is ``O(n d)`` per permutation at any size (group sums of squares, no distance matrix) and PERMDISP
``O(n d)`` per Weiszfeld iteration, so ``subsample=False`` runs them exactly on every cell without an ``n x n``
object; the cap bounds their time (PERMDISP on 1M cells x 999 permutations would take hours) and keeps the
pseudo-F, which grows with the number of cells, on the scale of a few thousand cells per label.

The functions read :data:`EXACT_MAX_CELLS` and :data:`SILHOUETTE_SAMPLE` from this module when they run (the names
re-exported by :mod:`stmorph.eval` are copies); ``evaluate_spaces`` records what it did in ``summary["scaling"]``.
"""

from __future__ import annotations

import numpy as np

from .._cluster import APPROX_KNN_MIN_CELLS

__all__ = [
    "EXACT_MAX_CELLS",
    "MAX_CELLS_PER_LABEL",
    "SILHOUETTE_SAMPLE",
    "APPROX_KNN_MIN_CELLS",
    "capped_subsample",
    "stratified_sample",
]

#: Up to this many cells the permutation tests and the silhouettes use every cell (the silhouettes' ``n x n``
#: float64 distance matrix is 3.2 GB at 20,000 cells); above it they run on seeded subsamples.
EXACT_MAX_CELLS = 20_000
#: Above :data:`EXACT_MAX_CELLS` cells, PERMANOVA and PERMDISP keep at most this many cells of each label.
MAX_CELLS_PER_LABEL = 5_000
#: Above :data:`EXACT_MAX_CELLS` cells, silhouettes are computed on a stratified sample of about this many cells.
SILHOUETTE_SAMPLE = 10_000
# entropy word mixed into the seed of the subsamples, so their draws never coincide with the permutations' streams
_SUBSAMPLE_STREAM = 0x5CA1E


def _use_subsample(subsample: bool | None, n: int) -> bool:
    """``subsample``, or (``None``) whether ``n`` exceeds :data:`EXACT_MAX_CELLS`."""
    return n > EXACT_MAX_CELLS if subsample is None else bool(subsample)


def _subsample_rng(seed: int | None) -> np.random.Generator:
    """The generator of a subsample seeded by ``seed`` (kept apart from the permutations' streams)."""
    return np.random.default_rng([int(seed or 0), _SUBSAMPLE_STREAM])


def capped_subsample(codes: np.ndarray, max_per_label: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of a stratified subsample with at most ``max_per_label`` cells of each label.

    Labels with at most ``max_per_label`` cells keep every cell; larger labels keep a uniform random
    ``max_per_label`` of theirs (without replacement). No random number is drawn when no label is larger.

    Parameters
    ----------
    codes
        ``(n,)`` integer label codes ``0..G-1``.
    max_per_label
        The cap (at least 1).
    rng
        Generator of the draws.

    Returns
    -------
    Sorted int64 row indices.

    Examples
    --------
    >>> codes = np.repeat([0, 1], [10, 3])
    >>> idx = capped_subsample(codes, 4, np.random.default_rng(0))
    >>> np.bincount(codes[idx]).tolist()
    [4, 3]
    """
    codes = np.asarray(codes, dtype=np.int64)
    max_per_label = max(1, int(max_per_label))
    sizes = np.bincount(codes)
    if not (sizes > max_per_label).any():
        return np.arange(codes.size, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    keep = []
    for g, size in enumerate(sizes):
        rows = order[bounds[g] : bounds[g + 1]]
        keep.append(rng.choice(rows, size=max_per_label, replace=False) if size > max_per_label else rows)
    return np.sort(np.concatenate(keep)).astype(np.int64)


def stratified_sample(strata: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of a proportionally stratified random sample of about ``size`` cells.

    Each stratum gets its share ``size * n_s / n`` (largest remainders rounded up), and at least ``min(n_s, 2)``
    cells so that no stratum is lost or left a singleton (so the sample may exceed ``size`` by up to twice the
    number of strata); its cells are drawn uniformly without replacement. Proportional allocation keeps every
    cell's weight equal, so a mean over the sample (a silhouette) estimates the mean over all cells without bias,
    with less variance than a uniform sample when the strata differ.

    Parameters
    ----------
    strata
        ``(n,)`` labels (any type); one value throughout gives a uniform sample.
    size
        Target sample size; ``>= n`` returns every row.
    rng
        Generator of the draws.

    Returns
    -------
    Sorted int64 row indices.

    Examples
    --------
    >>> lab = np.repeat(["a", "b"], [900, 100])
    >>> idx = stratified_sample(lab, 100, np.random.default_rng(0))
    >>> np.unique(lab[idx], return_counts=True)[1].tolist()
    [90, 10]
    """
    codes = np.unique(np.asarray(strata), return_inverse=True)[1].astype(np.int64).ravel()
    n = codes.size
    size = int(size)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    sizes = np.bincount(codes)
    quota = size * sizes / n
    alloc = np.floor(quota).astype(np.int64)
    short = size - int(alloc.sum())
    if short > 0:
        alloc[np.argsort(-(quota - alloc), kind="stable")[:short]] += 1
    alloc = np.minimum(sizes, np.maximum(alloc, np.minimum(sizes, 2)))
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    keep = [rng.choice(order[bounds[g] : bounds[g + 1]], size=int(a), replace=False) for g, a in enumerate(alloc) if a]
    return np.sort(np.concatenate(keep)).astype(np.int64)
