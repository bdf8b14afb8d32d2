"""Spatial co-localization of clusters: MUSE's spatial co-localization score (SCS) and a kNN neighbour fraction.

:func:`colocalization_score` is the SCS of Bao et al. 2022 (MUSE, Methods "Spatial co-localization score and
evaluation"): every pair of cells gets the spatial similarity ``r_ij = 1 / d_ij``; all pairs are ranked once by
``r`` (descending, i.e. by distance ascending). For a cluster C a GSEA-style running sum walks down the ranked pairs:
the ``r``-weighted cumulative distribution of the pairs within C (each adds ``r_ij / sum of r over the pairs within
C``) minus the unweighted cumulative distribution of all other pairs (each adds ``1 / number of other pairs``). The
SCS is the maximal signed deviation of that running sum from zero (the value of largest absolute deviation, with its
sign): positive when the cluster's cells are spatial neighbours of each other more than pairs in general are.
p-values come from label permutations.

Ties: pairs at exactly the same distance are one step of the walk (the running sum is read only after all of them),
so the result does not depend on how equal distances happen to be ordered. Cells at the same position (``d = 0``)
get ``r = 1 / (half the smallest positive distance between neighbouring cells)`` instead of infinity.

How it stays tractable. The running sum only changes its direction at pairs within C, so its extremes are read just
before and just after each (tie group of) within-C pair(s). There the within-C term needs the within-C pairs sorted
by distance (``n_C (n_C - 1) / 2`` of them, computed exactly), and the other-pairs term needs ``F(d)``, the number of
*all* pairs closer than ``d``, minus the within-C pairs among them. ``F`` does not depend on the labels, so it is
computed once for the observed score and every permutation:

* ``n (n - 1) / 2 <= max_exact_pairs`` (default 1,000,000, about 1,400 cells): all pair distances are sorted once
  and ``F`` is exact, so the SCS equals the definition (tested against a direct transcription that walks all pairs).
* above: one streaming pass over all pairs (numba, no pair is stored) counts the pairs within ``n_knots`` (65,536)
  equally spaced distance knots; ``F`` is exact at the knots and linearly interpolated between them. The
  other-pairs term is then off by at most the number of pairs in one knot interval divided by the number of other
  pairs (``df.attrs["max_interval_pairs"]``; about ``3 / n_knots`` of all pairs on a uniform tissue). Measured on
  3,000 simulated cells with 8 clusters, SCS 0.35-0.96 (``benchmarks/bench_eval.py --scs``): largest absolute
  difference from the exact SCS 8.7e-7 with 65,536 knots (6.6e-6 with 4,096), p-values (1,000 permutations)
  identical. It is also faster than the exact path there (54 vs 170 s wall for 1,000 permutations: the exact
  counts are looked up in a sorted array of 4.5 million distances), hence the low default threshold.

Cost: the within-C pairs of every cluster, sorted, per labelling (observed and each permutation), i.e.
``sum_C n_C^2 / 2`` pairs; permutations run in parallel (numba). Measured on the 5,194 ileum cells with the 19
published labels: 1,000 permutations in 108 s wall (113 s CPU, 2 shared cores at load ~4;
``benchmarks/RESULTS.md``).

:func:`knn_colocalization` is a different, simpler statistic kept under its own name: the mean fraction of a
cluster's cells' ``k`` nearest spatial neighbours that belong to the same cluster.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd

from .._utils import as_generator
from ..errors import StmorphInputError

__all__ = ["colocalization_score", "spatial_colocalization_score", "knn_colocalization"]

_ALTERNATIVES = ("greater", "two-sided")


# ----------------------------------------------------------------------------------------------------- kernels
@numba.njit(cache=True)
def _dist(xy: np.ndarray, i: int, j: int) -> float:
    s = 0.0
    for c in range(xy.shape[1]):
        t = xy[i, c] - xy[j, c]
        s += t * t
    return math.sqrt(s)


@numba.njit(cache=True)
def _within_dists(xy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Distances of all pairs among the cells ``idx`` (condensed order)."""
    m = idx.size
    out = np.empty(m * (m - 1) // 2)
    p = 0
    for a in range(m):
        ia = idx[a]
        for b in range(a + 1, m):
            out[p] = _dist(xy, ia, idx[b])
            p += 1
    return out


@numba.njit(parallel=True, cache=True)
def _knot_counts(xy: np.ndarray, h: float, K: int, n_blocks: int) -> np.ndarray:
    """``cum[k]`` = number of pairs with distance ``<= k h`` (k = 0..K), streaming over all pairs (rows interleaved
    over blocks, one histogram per block, so nothing of size n^2 is stored)."""
    n = xy.shape[0]
    hist = np.zeros((n_blocks, K + 1), dtype=np.int64)
    for blk in numba.prange(n_blocks):
        for i in range(blk, n, n_blocks):
            for j in range(i + 1, n):
                k = int(math.ceil(_dist(xy, i, j) / h))
                hist[blk, min(k, K)] += 1
    return np.cumsum(hist.sum(axis=0)).astype(np.float64)


@numba.njit(cache=True)
def _gallop(a: np.ndarray, x: float, lo: int, strict: bool) -> int:
    """First index ``i >= lo`` with ``a[i] > x`` (``strict``) or ``a[i] >= x``, for sorted ``a`` whose entries
    before ``lo`` all come before ``x``; exponential then binary search (queries arrive in ascending order)."""
    n = a.size
    step = 1
    hi = lo
    while hi < n and ((a[hi] <= x) if strict else (a[hi] < x)):
        lo = hi + 1
        hi = lo + step
        step *= 2
    if hi > n:
        hi = n
    while lo < hi:
        mid = (lo + hi) // 2
        if (a[mid] <= x) if strict else (a[mid] < x):
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True)
def _interp_count(d: float, cum: np.ndarray, h: float) -> float:
    """Pairs at most ``d`` away, linearly interpolated between the knots ``k h``."""
    K = cum.size - 1
    k = int(math.ceil(d / h))
    if k <= 0:
        return cum[0]
    if k > K:
        return cum[K]
    return cum[k - 1] + (cum[k] - cum[k - 1]) * (d - (k - 1) * h) / h


@numba.njit(cache=True)
def _scs_walk(d: np.ndarray, eps: float, ref: np.ndarray, h: float, exact: bool, n_pairs: float) -> float:
    """The SCS of one cluster from its sorted within-cluster pair distances ``d``. ``ref``: all pair distances
    sorted (``exact``) or the knot counts ``cum`` with knot spacing ``h``."""
    P = d.size
    m_tot = n_pairs - P
    if P == 0 or m_tot <= 0:
        return np.nan
    h_tot = 0.0
    for q in range(P):
        h_tot += 1.0 / max(d[q], eps)
    best = 0.0
    H = 0.0
    s = 0
    cl = 0
    cr = 0
    while s < P:
        e = s + 1
        while e < P and d[e] == d[s]:
            e += 1
        if exact:
            cl = _gallop(ref, d[s], cl, False)
            cr = _gallop(ref, d[s], max(cr, cl), True)
            below, upto = float(cl), float(cr)
        else:
            below = upto = _interp_count(d[s], ref, h)
        # just before this tie group: every pair closer than d[s] has been walked
        dev = H / h_tot - max(below - s, 0.0) / m_tot
        if abs(dev) > abs(best):
            best = dev
        for q in range(s, e):
            H += 1.0 / max(d[q], eps)
        # just after it
        dev = H / h_tot - max(upto - e, 0.0) / m_tot
        if abs(dev) > abs(best):
            best = dev
        s = e
    return best


@numba.njit(parallel=True, cache=True)
def _scs_labellings(xy: np.ndarray, codes: np.ndarray, G: int, eps: float, ref: np.ndarray, h: float,
                    exact: bool, n_pairs: float) -> np.ndarray:
    """SCS of every cluster for each labelling (rows of ``codes``), labellings in parallel."""
    B = codes.shape[0]
    out = np.empty((B, G))
    for b in numba.prange(B):
        c = codes[b]
        order = np.argsort(c, kind="mergesort")
        counts = np.bincount(c, minlength=G)
        start = 0
        for g in range(G):
            idx = order[start:start + counts[g]]
            start += counts[g]
            d = _within_dists(xy, idx)
            d.sort()
            out[b, g] = _scs_walk(d, eps, ref, h, exact, n_pairs)
    return out


# ----------------------------------------------------------------------------------------------------- helpers
def _coords(coords: np.ndarray, n: int | None = None) -> np.ndarray:
    xy = np.ascontiguousarray(np.asarray(coords, dtype=np.float64))
    if xy.ndim != 2 or xy.shape[0] < 2 or (n is not None and xy.shape[0] != n):
        raise StmorphInputError(f"coordinates of shape {xy.shape} for {n if n is not None else '?'} cells",
                                expected="(n_cells, 2) or (n_cells, 3) coordinates, one row per cell, n >= 2")
    if not np.isfinite(xy).all():
        raise StmorphInputError("coordinates contain NaN or infinite values", expected="finite coordinates")
    return xy


def _eps(xy: np.ndarray) -> float:
    """Half the smallest positive distance between a cell and one of its 8 nearest neighbours (for ``d = 0``)."""
    from scipy.spatial import cKDTree

    k = min(xy.shape[0], 9)
    dd, _ = cKDTree(xy).query(xy, k=k)
    pos = dd[:, 1:][dd[:, 1:] > 0]
    return float(pos.min()) / 2 if pos.size else 1.0


def _pair_counts(xy: np.ndarray, max_exact_pairs: int, n_knots: int) -> tuple:
    """``(ref, h, exact, bound)`` for :func:`_scs_walk`: all pair distances sorted (exact), or the counts of pairs
    within ``n_knots`` equally spaced distance knots ``k h`` (one streaming pass). ``bound``: the largest number of
    pairs in one knot interval (0 when exact)."""
    from .._utils import default_num_threads

    n = xy.shape[0]
    n_pairs = n * (n - 1) // 2
    if n_pairs <= max_exact_pairs:
        d = _within_dists(xy, np.arange(n))
        d.sort()
        return d, 1.0, True, 0.0
    if int(n_knots) < 2:
        raise StmorphInputError(f"n_knots={n_knots}", expected="at least 2 distance knots")
    diag = float(np.sqrt(((xy.max(axis=0) - xy.min(axis=0)) ** 2).sum()))
    h = max(diag, 1e-300) * (1 + 1e-9) / int(n_knots)
    cum = _knot_counts(xy, h, int(n_knots), max(1, 2 * default_num_threads()))
    return cum, h, False, float(np.diff(cum).max(initial=0.0))


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise StmorphInputError(f"alternative={alternative!r}", expected=f"one of {list(_ALTERNATIVES)}")


# ----------------------------------------------------------------------------------------------------- public
def spatial_colocalization_score(
    coords: np.ndarray,
    in_cluster: np.ndarray,
    *,
    max_exact_pairs: int = 1_000_000,
    n_knots: int = 65_536,
) -> float:
    """MUSE's spatial co-localization score (SCS) of one cluster (definition in :mod:`stmorph.eval._spatial`).

    Parameters
    ----------
    coords
        ``(n, 2)`` (or 3) spatial coordinates.
    in_cluster
        ``(n,)`` boolean mask of the cluster's cells (or integer indices of them).
    max_exact_pairs
        Up to this many cell pairs the count of all closer pairs is exact; above, it is interpolated between
        ``n_knots`` exactly counted distance knots (error bound in the module docstring).
    n_knots
        Distance knots of the approximate count.

    Returns
    -------
    The SCS in ``[-1, 1]``; NaN when the cluster has fewer than 2 cells or holds every cell.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(0, 10, size=(60, 2))
    >>> spatial_colocalization_score(xy, xy[:, 0] < 3) > 0.5  # a band of the tissue: its cells are neighbours
    True
    """
    xy = _coords(coords)
    n = xy.shape[0]
    sel = np.asarray(in_cluster)
    idx = np.flatnonzero(sel) if sel.dtype == bool else np.unique(sel.astype(np.int64))
    if sel.dtype == bool and sel.shape != (n,):
        raise StmorphInputError(f"mask of shape {sel.shape} for {n} cells", expected="one boolean per cell")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise StmorphInputError("cluster indices out of range", expected=f"indices in [0, {n})")
    ref, h, exact, _ = _pair_counts(xy, max_exact_pairs, n_knots)
    d = _within_dists(xy, idx.astype(np.int64))
    d.sort()
    return float(_scs_walk(d, _eps(xy), ref, h, exact, float(n * (n - 1) // 2)))


def colocalization_score(
    coords: np.ndarray,
    clusters: np.ndarray,
    *,
    permutations: int = 1000,
    random_state: int | np.random.Generator | None = 0,
    alternative: str = "greater",
    max_exact_pairs: int = 1_000_000,
    n_knots: int = 65_536,
    batch: int = 50,
) -> pd.DataFrame:
    """MUSE's spatial co-localization score (SCS) of every cluster of a labelling, with permutation p-values.

    The SCS (Bao et al. 2022; definition and the exact/approximate computation in :mod:`stmorph.eval._spatial`)
    is positive when a cluster's cells are closer to each other than cell pairs in general, as a cell type that
    occupies one region of the tissue. The null permutes the labels over the fixed positions (cluster sizes kept):
    ``p = (1 + #{SCS_perm >= SCS}) / (1 + permutations)`` (``alternative="two-sided"``: compares ``|SCS|``).

    Parameters
    ----------
    coords
        ``(n, 2)`` (or 3) spatial coordinates.
    clusters
        ``(n,)`` cluster labels.
    permutations
        Label permutations for the p-values (the paper: 1,000; 0 skips them).
    random_state
        Seed of the permutations.
    alternative
        ``"greater"`` (co-localized clusters) or ``"two-sided"``.
    max_exact_pairs
        Up to this many cell pairs everything is exact (default: about 1,400 cells); above, the count of all pairs
        closer than a distance is interpolated between ``n_knots`` exactly counted knots (error bound and
        measurements in :mod:`stmorph.eval._spatial`).
    n_knots
        Distance knots of that count.
    batch
        Permutations generated and scored at once (memory: ``batch x n`` integers).

    Returns
    -------
    DataFrame with columns ``cluster, n_cells, scs, p_value`` (one row per cluster, sorted by name);
    ``df.attrs`` holds ``method`` (``"exact"`` or ``"knots"``), ``max_interval_pairs`` (the interpolation's
    bound in pairs; 0 when exact), ``permutations`` and ``alternative``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(0, 10, size=(200, 2))
    >>> lab = np.where(xy[:, 0] < 3, "left", rng.choice(["m1", "m2"], size=200))
    >>> df = colocalization_score(xy, lab, permutations=99)
    >>> left = df.set_index("cluster").loc["left"]
    >>> float(left["p_value"]), bool(left["scs"] > 0.5)
    (0.01, True)
    """
    _check_alternative(alternative)
    cats, codes = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    n = codes.size
    xy = _coords(coords, n)
    G = cats.size
    codes = codes.astype(np.int64)
    ref, h, exact, bound = _pair_counts(xy, max_exact_pairs, n_knots)
    eps = _eps(xy)
    n_pairs = float(n * (n - 1) // 2)
    obs = _scs_labellings(xy, codes[None, :], G, eps, ref, h, exact, n_pairs)[0]
    sizes = np.bincount(codes, minlength=G)
    pval = np.full(G, np.nan)
    if permutations:
        rng = as_generator(random_state)
        ge = np.zeros(G)
        done = 0
        while done < permutations:
            B = min(int(batch), permutations - done)
            perm = rng.permuted(np.broadcast_to(codes, (B, n)), axis=1)
            null = _scs_labellings(xy, np.ascontiguousarray(perm), G, eps, ref, h, exact, n_pairs)
            if alternative == "greater":
                ge += (null >= obs - 1e-12).sum(axis=0)
            else:
                ge += (np.abs(null) >= np.abs(obs) - 1e-12).sum(axis=0)
            done += B
        pval = (1 + ge) / (1 + permutations)
        pval[~np.isfinite(obs)] = np.nan
    df = pd.DataFrame({"cluster": cats, "n_cells": sizes.astype(int), "scs": obs, "p_value": pval})
    df.attrs.update(method="exact" if exact else "knots", max_interval_pairs=bound, permutations=int(permutations),
                    alternative=alternative)
    return df


def knn_colocalization(
    coords: np.ndarray,
    clusters: np.ndarray,
    *,
    n_neighbors: int = 10,
    permutations: int = 999,
    random_state: int | np.random.Generator | None = 0,
) -> pd.DataFrame:
    """Mean same-cluster fraction among each cell's ``n_neighbors`` nearest spatial neighbours, per cluster.

    Not MUSE's SCS (that is :func:`colocalization_score`): the score of cluster ``c`` is the mean, over its
    cells, of the fraction of their ``n_neighbors`` nearest spatial neighbours that also belong to ``c``. The null
    permutes cluster labels over the fixed positions; ``p = (1 + #{score_perm >= score}) / (1 + permutations)``.
    ``expected`` is the null mean, ``enrichment`` = score / expected.

    Parameters
    ----------
    coords
        ``(n, 2)`` (or 3) spatial coordinates.
    clusters
        ``(n,)`` cluster labels.
    n_neighbors
        Spatial neighbours per cell (excluding the cell).
    permutations
        Number of label permutations.
    random_state
        Seed or generator.

    Returns
    -------
    DataFrame indexed by cluster: ``n_cells, score, expected, enrichment, pvalue``.

    Examples
    --------
    >>> xy = np.r_[np.random.default_rng(0).uniform(0, 1, (50, 2)), np.random.default_rng(1).uniform(5, 6, (50, 2))]
    >>> df = knn_colocalization(xy, np.repeat(["a", "b"], 50), permutations=99)
    >>> df["pvalue"].tolist()
    [0.01, 0.01]
    """
    from .._cluster._graphs import _neighbors

    xy = np.asarray(coords, dtype=np.float64)
    cats, codes = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    n = codes.size
    if xy.ndim != 2 or xy.shape[0] != n:
        raise StmorphInputError(f"coordinates {xy.shape} and {n} cluster labels", expected="one (x, y) per cell")
    k = int(min(n_neighbors, n - 1))
    # exact at any size: a k-d tree on 2-D/3-D coordinates is O(n log n)
    nbr = _neighbors(xy, k + 1, approximate=False)[1][:, 1:]
    G = cats.size
    sizes = np.bincount(codes, minlength=G).astype(np.float64)

    def score(c: np.ndarray) -> np.ndarray:  # c: (B, n)
        B = c.shape[0]
        same = (c[:, nbr] == c[:, :, None]).mean(axis=2)  # (B, n)
        idx = (c + (np.arange(B) * G)[:, None]).ravel()
        return np.bincount(idx, weights=same.ravel(), minlength=B * G).reshape(B, G) / sizes

    obs = score(codes[None, :])[0]
    rng = as_generator(random_state)
    chunk = max(1, int(2e6 // max(1, n * k)))
    ge = np.zeros(G)
    total = np.zeros(G)
    for start in range(0, permutations, chunk):
        B = min(permutations, start + chunk) - start
        null = score(rng.permuted(np.broadcast_to(codes, (B, n)), axis=1))
        ge += (null >= obs - 1e-12).sum(axis=0)
        total += null.sum(axis=0)
    expected = total / permutations if permutations else np.full(G, np.nan)
    pval = (1 + ge) / (1 + permutations) if permutations else np.full(G, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        enr = obs / expected
    return pd.DataFrame(
        {"n_cells": sizes.astype(int), "score": obs, "expected": expected, "enrichment": enr, "pvalue": pval},
        index=pd.Index(cats, name="cluster"),
    )
