"""MUSE-style spatial co-localization score of clusters, with a label-permutation p-value."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._utils import as_generator
from ..errors import StmorphInputError

__all__ = ["colocalization_score"]


def colocalization_score(
    coords: np.ndarray,
    clusters: np.ndarray,
    *,
    n_neighbors: int = 10,
    permutations: int = 999,
    random_state: int | np.random.Generator | None = 0,
) -> pd.DataFrame:
    """Spatial co-localization of each cluster (Bao et al. 2022, MUSE): are its cells spatial neighbours?

    The score of cluster ``c`` is the mean, over its cells, of the fraction of their ``n_neighbors`` nearest
    spatial neighbours that also belong to ``c``. The null permutes cluster labels over the fixed positions;
    ``p = (1 + #{score_perm >= score}) / (1 + permutations)``. ``expected`` is the null mean, ``enrichment`` =
    score / expected.

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
    >>> df = colocalization_score(xy, np.repeat(["a", "b"], 50), permutations=99)
    >>> df["pvalue"].tolist()
    [0.01, 0.01]
    """
    from sklearn.neighbors import NearestNeighbors

    xy = np.asarray(coords, dtype=np.float64)
    cats, codes = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    n = codes.size
    if xy.ndim != 2 or xy.shape[0] != n:
        raise StmorphInputError(f"coordinates {xy.shape} and {n} cluster labels", expected="one (x, y) per cell")
    k = int(min(n_neighbors, n - 1))
    nbr = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
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
