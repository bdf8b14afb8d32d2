"""PERMANOVA / PERMDISP for every pair of labels, with Benjamini-Hochberg correction over the pairs."""

from __future__ import annotations

from itertools import combinations
from typing import Literal

import numpy as np
import pandas as pd

from .._utils import as_generator, progress
from ._permanova import permanova
from ._permdisp import permdisp
from ._permutation import _check_X, _encode, zscore
from ._scale import MAX_CELLS_PER_LABEL, _subsample_rng, _use_subsample, capped_subsample

__all__ = ["benjamini_hochberg", "pairwise_permanova", "pairwise_permdisp"]

_COLUMNS = ["group1", "group2", "n1", "n2", "statistic", "pvalue"]


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaNs stay NaN and are not counted).

    :func:`scipy.stats.false_discovery_control` (``method="bh"``) over the non-NaN values of the whole array, so
    an array of any shape is corrected as one family of tests.

    Parameters
    ----------
    pvalues
        Array of raw p-values in ``[0, 1]`` (or NaN), any shape.

    Returns
    -------
    Adjusted p-values of the same shape (equal to ``statsmodels`` ``multipletests(method="fdr_bh")``).

    Examples
    --------
    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03]))
    array([0.03, 0.04, 0.04])
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def _pairwise(
    kind: str,
    X: np.ndarray,
    labels: np.ndarray,
    *,
    permutations: int,
    random_state: int | np.random.Generator | None,
    standardize: bool,
    alpha: float,
    min_size: int,
    test: str = "median",
    n_jobs: int | None = None,
    show_progress: bool | None = None,
    subsample: bool | None = None,
    max_cells_per_label: int = MAX_CELLS_PER_LABEL,
) -> pd.DataFrame:
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from .._utils import default_num_threads

    X = _check_X(X)
    labels = np.asarray(labels)
    cats, codes = _encode(labels, X.shape[0])
    if standardize:
        X = zscore(X)
    sizes = np.bincount(codes, minlength=cats.size)
    keep = [i for i in range(cats.size) if sizes[i] >= min_size]
    pairs = list(combinations(keep, 2))
    # one independent child seed per pair: results do not depend on the number of threads
    base = as_generator(random_state).integers(0, 2**63 - 1)
    seeds = np.random.SeedSequence(int(base)).spawn(len(pairs))
    sub = None
    tested = sizes
    if _use_subsample(subsample, X.shape[0]):
        # one stratified subsample for all pairs (z-scored over every cell above), seeded by random_state
        rows = capped_subsample(codes, max_cells_per_label, _subsample_rng(base))
        X, codes = X[rows], codes[rows]
        tested = np.bincount(codes, minlength=cats.size)
        sub = {"max_cells_per_label": int(max_cells_per_label), "n_cells": int(rows.size)}

    def run(k: int) -> dict:
        a, b = pairs[k]
        sel = (codes == a) | (codes == b)
        rng = np.random.default_rng(seeds[k])
        if kind == "permanova":
            r = permanova(X[sel], codes[sel], permutations=permutations, random_state=rng, subsample=False)
        else:
            r = permdisp(X[sel], codes[sel], test=test, permutations=permutations, random_state=rng, subsample=False)
        row = {"group1": cats[a], "group2": cats[b], "n1": int(sizes[a]), "n2": int(sizes[b]),
               "statistic": r.statistic, "pvalue": r.pvalue}
        if sub is not None:
            row |= {"n1_tested": int(tested[a]), "n2_tested": int(tested[b])}
        return row

    workers = default_num_threads() if n_jobs in (None, -1) else max(1, int(n_jobs))
    # small products: one BLAS thread per pair and pairs in parallel threads (BLAS and numba release the GIL);
    # measured 2.7x less CPU than multi-threaded BLAS per pair on 2 cores
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        disable = None if show_progress is None else not show_progress
        rows = list(progress(pool.map(run, range(len(pairs))), desc=f"pairwise {kind}", total=len(pairs), disable=disable))
    columns = _COLUMNS + (["n1_tested", "n2_tested"] if sub is not None else [])
    df = pd.DataFrame(rows, columns=columns)
    df["padj"] = benjamini_hochberg(df["pvalue"].to_numpy()) if len(df) else []
    df["significant"] = df["padj"] < alpha
    df.attrs.update(test=kind, permutations=permutations, alpha=alpha)
    if sub is not None:
        df.attrs["subsample"] = sub
    return df


def pairwise_permanova(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    permutations: int = 999,
    random_state: int | np.random.Generator | None = 0,
    standardize: bool = True,
    alpha: float = 0.05,
    min_size: int = 2,
    n_jobs: int | None = None,
    show_progress: bool | None = None,
    subsample: bool | None = None,
    max_cells_per_label: int = MAX_CELLS_PER_LABEL,
) -> pd.DataFrame:
    """PERMANOVA for every pair of labels, with Benjamini-Hochberg correction over the pairs.

    Parameters
    ----------
    X
        ``(n, d)`` features.
    labels
        ``(n,)`` labels.
    permutations
        Permutations per pair (study: 999).
    random_state
        Seed or generator; each pair gets an independent child seed (and the subsample its own).
    standardize
        Z-score the features over all cells first (study setting).
    alpha
        Significance level applied to the BH-adjusted p-values.
    min_size
        Labels with fewer cells are left out.
    n_jobs
        Threads over pairs (``None`` or -1: all cores).
    show_progress
        Show a progress bar (``None``: follow ``STMORPH_PROGRESS``).
    subsample
        Test every pair on one seeded stratified subsample with at most ``max_cells_per_label`` cells of each
        label (:func:`~stmorph.eval.capped_subsample`; z-scoring still uses every cell). ``None``: only above
        :data:`~stmorph.eval.EXACT_MAX_CELLS` cells; ``False``: every cell at any size.
    max_cells_per_label
        The cap of ``subsample``.

    Returns
    -------
    DataFrame with columns ``group1, group2, n1, n2, statistic, pvalue, padj, significant`` (``n1, n2``: the
    labels' cells). With a subsample, also ``n1_tested, n2_tested`` (the cells tested), and
    ``df.attrs["subsample"]`` is ``{"max_cells_per_label", "n_cells"}`` (absent without one).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); X[:20] += 3
    >>> df = pairwise_permanova(X, np.repeat(["a", "b", "c"], 20), permutations=99)
    >>> df["significant"].tolist()
    [True, True, False]
    """
    return _pairwise(
        "permanova", X, labels, permutations=permutations, random_state=random_state, standardize=standardize,
        alpha=alpha, min_size=min_size, n_jobs=n_jobs, show_progress=show_progress, subsample=subsample,
        max_cells_per_label=max_cells_per_label,
    )


def pairwise_permdisp(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    test: Literal["median", "centroid"] = "median",
    permutations: int = 999,
    random_state: int | np.random.Generator | None = 0,
    standardize: bool = True,
    alpha: float = 0.05,
    min_size: int = 2,
    n_jobs: int | None = None,
    show_progress: bool | None = None,
    subsample: bool | None = None,
    max_cells_per_label: int = MAX_CELLS_PER_LABEL,
) -> pd.DataFrame:
    """PERMDISP for every pair of labels, with Benjamini-Hochberg correction over the pairs.

    Parameters
    ----------
    X
        ``(n, d)`` features.
    labels
        ``(n,)`` labels.
    test
        ``"median"`` (spatial median) or ``"centroid"``.
    permutations
        Permutations per pair.
    random_state
        Seed or generator.
    standardize
        Z-score the features over all cells first.
    alpha
        Significance level for the adjusted p-values.
    min_size
        Labels with fewer cells are left out.
    n_jobs
        Threads over pairs (``None`` or -1: all cores).
    show_progress
        Show a progress bar (``None``: follow ``STMORPH_PROGRESS``).
    subsample
        As in :func:`pairwise_permanova` (the same seed gives the same cells).
    max_cells_per_label
        The cap of ``subsample``.

    Returns
    -------
    DataFrame as :func:`pairwise_permanova`'s.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); X[:20] *= 4
    >>> df = pairwise_permdisp(X, np.repeat(["a", "b", "c"], 20), permutations=99)
    >>> df["significant"].tolist()
    [True, True, False]
    """
    return _pairwise(
        "permdisp", X, labels, permutations=permutations, random_state=random_state, standardize=standardize,
        alpha=alpha, min_size=min_size, test=test, n_jobs=n_jobs, show_progress=show_progress,
        subsample=subsample, max_cells_per_label=max_cells_per_label,
    )
