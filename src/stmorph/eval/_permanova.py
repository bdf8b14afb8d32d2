"""PERMANOVA on Euclidean feature spaces, without an n x n distance matrix.

For Euclidean distances the PERMANOVA pseudo-F follows from group sums of squares:

* ``SS_T = sum_i ||x_i - mean||^2`` (equals ``sum_{i<j} d_ij^2 / n``, scikit-bio's ``s_T``),
* ``SS_A = sum_g ||S_g||^2 / n_g`` with ``S_g`` the group sum of the *centred* data,
* ``SS_W = SS_T - SS_A`` (equals ``sum_g sum_{i<j in g} d_ij^2 / n_g``, scikit-bio's ``s_W``),

so ``F = (SS_A / (g - 1)) / (SS_W / (n - g))``, identical to scikit-bio's pseudo-F on the Euclidean distance
matrix. A permutation only relabels cells, so the group sums of a whole batch of permutations are one matrix
product of a 0/1 indicator matrix with the data: O(n d) per permutation instead of O(n^2), at any number of cells.
Above :data:`~stmorph.eval.EXACT_MAX_CELLS` cells the test runs (by default) on a seeded subsample with at most
:data:`~stmorph.eval.MAX_CELLS_PER_LABEL` cells per label (:mod:`stmorph.eval._scale`).
"""

from __future__ import annotations

import numpy as np

from .._utils import as_generator
from ._permutation import (
    TestResult,
    _check_permutations,
    _check_X,
    _chunk_size,
    _encode,
    _group_sums,
    _pvalue,
    _random_subsets,
    _run_perm_test,
)
from ._scale import MAX_CELLS_PER_LABEL, _use_subsample, capped_subsample

__all__ = ["permanova"]


def _permanova_f(Xc: np.ndarray, ss_t: float, pcodes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pseudo-F of centred data ``Xc`` for each row of permuted codes ``pcodes`` (B, n)."""
    n, G = pcodes.shape[1], sizes.size
    S = _group_sums(Xc, pcodes, G)
    ss_a = np.einsum("bgd,bgd->bg", S, S) @ (1.0 / sizes)
    ss_w = ss_t - ss_a
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ss_a / (G - 1)) / (ss_w / (n - G))


def _permanova_two_groups(
    Xc: np.ndarray,
    ss_t: float,
    codes: np.ndarray,
    sizes: np.ndarray,
    permutations: int,
    rng: np.random.Generator,
    chunk: int,
) -> tuple[float, float]:
    """Two-group PERMANOVA: with centred data S_other = -S_small, so SS_A = ||S_small||^2 (1/n_s + 1/n_o).

    The null uses float32 products (about 2x faster); permuted F within 1e-4 (relative) of the observed F are
    recomputed in float64 so that ties and near-ties are counted exactly as in float64.
    """
    n = Xc.shape[0]
    s = int(np.argmin(sizes))
    m = int(sizes[s])
    coef = 1.0 / m + 1.0 / (n - m)

    def f_from(S: np.ndarray) -> np.ndarray:
        ss_a = np.einsum("ij,ij->i", S, S) * coef
        with np.errstate(divide="ignore", invalid="ignore"):
            return ss_a / ((ss_t - ss_a) / (n - 2))

    stat = float(f_from(((codes == s).astype(np.float64) @ Xc)[None, :])[0])
    _check_permutations(permutations)
    X32 = Xc.astype(np.float32)
    null = np.empty(permutations)
    for start in range(0, permutations, chunk):
        B = min(permutations, start + chunk) - start
        ind = _random_subsets(n, m, B, rng, dtype=np.float32)
        F = f_from((ind @ X32).astype(np.float64))
        near = np.abs(F - stat) <= 1e-4 * abs(stat)
        if near.any():
            F[near] = f_from(ind[near].astype(np.float64) @ Xc)
        null[start : start + B] = F
    return stat, _pvalue(stat, null)


def permanova(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    permutations: int = 999,
    random_state: int | np.random.Generator | None = 0,
    subsample: bool | None = None,
    max_cells_per_label: int = MAX_CELLS_PER_LABEL,
) -> TestResult:
    """PERMANOVA pseudo-F test on Euclidean distances between the rows of ``X``.

    Equal to ``skbio.stats.distance.permanova`` on ``DistanceMatrix(pdist(X))`` (identical F; p-values agree
    within Monte-Carlo error), computed from group sums of squares without building the distance matrix.

    Parameters
    ----------
    X
        ``(n, d)`` features (z-score them first for the study's setting, see :func:`~stmorph.eval.zscore`).
    labels
        ``(n,)`` group labels.
    permutations
        Number of label permutations (0 skips the test: p-value NaN).
    random_state
        Seed or generator for the permutations (and the subsample).
    subsample
        Test a seeded stratified subsample with at most ``max_cells_per_label`` cells of each label
        (:func:`~stmorph.eval.capped_subsample`, drawn from ``random_state`` before the permutations). ``None``:
        only above :data:`~stmorph.eval.EXACT_MAX_CELLS` cells; ``False``: every cell at any size (``O(n d)``
        per permutation, no ``n x n`` object).
    max_cells_per_label
        The cap of ``subsample``.

    Returns
    -------
    :class:`TestResult` (``n_tested``: the cells tested).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))]
    >>> res = permanova(X, np.repeat(["a", "b"], 20), permutations=99)
    >>> res.pvalue
    0.01
    """
    X = _check_X(X)
    n = X.shape[0]
    cats, codes = _encode(labels, n)
    rng = as_generator(random_state)
    if _use_subsample(subsample, n):
        keep = capped_subsample(codes, max_cells_per_label, rng)
        X, codes = X[keep], codes[keep]
    Xc = X - X.mean(axis=0)
    ss_t = float(np.einsum("ij,ij->", Xc, Xc))
    sizes = np.bincount(codes, minlength=cats.size).astype(np.float64)

    chunk = _chunk_size(X.shape[0], cats.size)
    if cats.size == 2:
        stat, p = _permanova_two_groups(Xc, ss_t, codes, sizes, permutations, rng, chunk)
    else:

        def stat_fn(pc: np.ndarray) -> np.ndarray:
            return _permanova_f(Xc, ss_t, pc, sizes)

        stat, p = _run_perm_test(stat_fn, codes, sizes, permutations, rng, chunk)
    return TestResult(stat, p, n, int(cats.size), int(permutations), n_tested=int(X.shape[0]))
