"""Leiden clustering tuned by silhouette, multiplex Leiden of two spaces, and cluster-vs-label metrics."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._utils import progress
from ..errors import StmorphInputError

__all__ = [
    "silhouette",
    "hungarian_jaccard",
    "cluster_metrics",
    "LeidenResult",
    "leiden_tune",
    "MultiplexResult",
    "multiplex_leiden",
    "knn_graph",
]

DEFAULT_K_GRID = (10, 20, 30)
DEFAULT_RESOLUTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
DEFAULT_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def silhouette(X: np.ndarray, clusters: np.ndarray, *, D: np.ndarray | None = None) -> float:
    """Mean silhouette coefficient (Euclidean), equal to :func:`sklearn.metrics.silhouette_score`.

    Per-cluster distance sums come from one product of the distance matrix with the cluster indicator, so a
    precomputed distance matrix ``D`` is reused cheaply across many clusterings of the same cells (measured 5x
    faster than ``silhouette_score(D, c, metric="precomputed")`` on 5,000 cells).

    Parameters
    ----------
    X
        ``(n, d)`` features (ignored when ``D`` is given).
    clusters
        ``(n,)`` cluster labels (at least 2 and at most n - 1 distinct).
    D
        Optional precomputed ``(n, n)`` Euclidean distance matrix.

    Returns
    -------
    The mean silhouette; NaN with fewer than two clusters.

    Examples
    --------
    >>> X = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> round(silhouette(X, np.array([0, 0, 1, 1])), 3)
    0.98
    """
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    k = codes.max() + 1 if codes.size else 0
    n = codes.size
    if k < 2 or k >= n:
        return float("nan")
    if D is None:
        from sklearn.metrics import pairwise_distances

        D = pairwise_distances(np.asarray(X, dtype=np.float64))
    onehot = np.zeros((n, k), dtype=D.dtype)
    onehot[np.arange(n), codes] = 1.0
    sums = D @ onehot  # (n, k) distance sums to each cluster
    sizes = onehot.sum(axis=0)
    own = sizes[codes]
    a = sums[np.arange(n), codes] / np.maximum(own - 1, 1)
    mean_other = sums / sizes
    mean_other[np.arange(n), codes] = np.inf
    b = mean_other.min(axis=1)
    s = (b - a) / np.maximum(a, b)
    s[own == 1] = 0.0  # sklearn's convention for singletons
    s = np.nan_to_num(s)
    return float(s.mean())


def hungarian_jaccard(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float | None]:
    """Per-label Jaccard index after one-to-one Hungarian matching of labels to clusters.

    The matching maximises the summed Jaccard index ``|L & C| / |L | C|``. Labels left without a cluster (more
    labels than clusters) are reported as ``None``.

    Parameters
    ----------
    labels
        ``(n,)`` reference labels.
    clusters
        ``(n,)`` cluster assignments.

    Returns
    -------
    ``{label: jaccard or None}``.

    Examples
    --------
    >>> hungarian_jaccard(np.array(["a", "a", "b", "b", "c"]), np.array([1, 1, 2, 2, 2]))
    {'a': 1.0, 'b': 0.6666666666666666, 'c': None}
    """
    from scipy.optimize import linear_sum_assignment

    lab = pd.Categorical(np.asarray(labels).astype(str))
    clu = pd.Categorical(np.asarray(clusters).astype(str))
    C = pd.crosstab(lab, clu, dropna=False).to_numpy().astype(np.float64)
    nl = C.sum(axis=1, keepdims=True)
    nc = C.sum(axis=0, keepdims=True)
    J = C / (nl + nc - C)
    rows, cols = linear_sum_assignment(-J)
    out: dict[str, float | None] = {str(c): None for c in lab.categories}
    for r, c in zip(rows, cols):
        out[str(lab.categories[r])] = float(J[r, c])
    return out


def cluster_metrics(
    labels: np.ndarray, clusters: np.ndarray, X: np.ndarray | None = None, *, D: np.ndarray | None = None
) -> dict:
    """Agreement of clusters with reference labels.

    ``homogeneity`` is ``homogeneity_score(labels_true=labels, labels_pred=clusters)``: each *cluster* contains
    only one label. The study's code swapped the arguments, which computes completeness instead.

    Parameters
    ----------
    labels
        ``(n,)`` reference labels.
    clusters
        ``(n,)`` cluster assignments.
    X
        Optional features for the silhouette (Euclidean).
    D
        Optional precomputed distance matrix for the silhouette.

    Returns
    -------
    dict with ``n_clusters, silhouette, homogeneity, completeness, ami, ari, jaccard``.

    Examples
    --------
    >>> m = cluster_metrics(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2]))
    >>> round(m["homogeneity"], 3), round(m["completeness"], 3)
    (1.0, 0.667)
    """
    from sklearn.metrics import (
        adjusted_mutual_info_score,
        adjusted_rand_score,
        completeness_score,
        homogeneity_score,
    )

    y = np.asarray(labels).astype(str)
    c = np.asarray(clusters).astype(str)
    sil = silhouette(X, c, D=D) if (X is not None or D is not None) else float("nan")
    return {
        "n_clusters": int(np.unique(c).size),
        "silhouette": sil,
        "homogeneity": float(homogeneity_score(y, c)),
        "completeness": float(completeness_score(y, c)),
        "ami": float(adjusted_mutual_info_score(y, c)),
        "ari": float(adjusted_rand_score(y, c)),
        "jaccard": hungarian_jaccard(y, c),
    }


def knn_graph(X: np.ndarray, k: int, *, random_state: int = 0):
    """UMAP fuzzy-union kNN connectivities of ``X`` with exact neighbours (scanpy's ``pp.neighbors`` weights).

    Re-implemented in numpy (smooth kNN distances with ``local_connectivity=1``, fuzzy union) because scanpy's
    path compiles umap's numba kernels on first use (about 20 s here), which would dominate a one-space run.

    Parameters
    ----------
    X
        ``(n, d)`` features.
    k
        Number of neighbours including the cell itself (scanpy's convention).
    random_state
        Unused (exact neighbours are deterministic); kept for API symmetry.

    Returns
    -------
    ``(n, n)`` symmetric sparse connectivities (CSR).

    Examples
    --------
    >>> G = knn_graph(np.random.default_rng(0).normal(size=(50, 3)), 5)
    >>> G.shape, bool(abs(G - G.T).max() < 1e-12)
    ((50, 50), True)
    """
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    k = int(min(k, n))
    if k < 2:
        raise StmorphInputError(f"k={k}", expected="at least 2 neighbours (including the cell itself)")
    dist, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    d = dist[:, 1:]
    nbr = idx[:, 1:]
    rho = np.where(d > 0, d, np.inf).min(axis=1)
    rho[~np.isfinite(rho)] = 0.0
    target = np.log2(k)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    mid = np.ones(n)
    for _ in range(64):
        psum = np.exp(-np.maximum(d - rho[:, None], 0.0) / mid[:, None]).sum(axis=1)
        too_big = psum > target
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_big, lo, mid)
        mid = np.where(np.isfinite(hi), (lo + hi) / 2.0, mid * 2.0)
        if np.all(np.abs(psum - target) < 1e-5):
            break
    mean_d = dist.mean(axis=1)
    sigma = np.maximum(mid, 1e-3 * np.where(rho > 0, mean_d, mean_d.mean()))
    w = np.exp(-np.maximum(d - rho[:, None], 0.0) / sigma[:, None])
    W = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k - 1), nbr.ravel())), shape=(n, n))
    Wt = W.T.tocsr()
    G = (W + Wt - W.multiply(Wt)).tocsr()
    G.eliminate_zeros()
    return G


def _edges(G) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, edges (m, 2), weights (m,))`` of a symmetric sparse graph, one edge per neighbour pair."""
    G = G.tocsr()
    sources, targets = G.nonzero()
    mask = sources < targets
    return G.shape[0], np.column_stack([sources[mask], targets[mask]]), np.asarray(G[sources[mask], targets[mask]]).ravel()


def _to_igraph(G):
    """Weighted undirected igraph of a symmetric sparse graph or of an :func:`_edges` triple."""
    import igraph as ig

    n, edges, weights = G if isinstance(G, tuple) else _edges(G)
    g = ig.Graph(n=n, edges=edges, directed=False)
    g.es["weight"] = weights
    return g


def _pick_best(table: pd.DataFrame, warning: str) -> pd.Series:
    """The eligible grid row with the highest silhouette, else (with ``warning``) the one with the most clusters."""
    ok = table[table["eligible"]]
    if len(ok):
        return ok.loc[ok["silhouette"].idxmax()]
    warnings.warn(warning, stacklevel=3)
    return table.loc[table["n_clusters"].idxmax()]


def _leiden_task(task: tuple) -> np.ndarray:
    """One Leiden run from plain data (picklable, for worker processes): single space or multiplex."""
    kind, graphs, resolution, weights, random_state, backend = task
    if kind == "multiplex":
        return _leiden_multiplex([_to_igraph(e) for e in graphs], resolution, weights, random_state)
    return _leiden(_to_igraph(graphs), resolution, random_state, backend)


def _run_leiden_tasks(tasks: list[tuple], n_jobs: int | None, desc: str, disable: bool | None) -> list[np.ndarray]:
    """Run Leiden tasks, in worker processes when ``n_jobs`` allows (leidenalg holds the GIL, so threads do not
    help). Every run is seeded on its own, so the results do not depend on ``n_jobs``. Measured on the ileum
    stain space (21 runs of 5,194 cells, 2 idle cores): see ``benchmarks/RESULTS.md``."""
    import multiprocessing as mp
    import sys

    from .._utils import default_num_threads

    linux = sys.platform.startswith("linux")
    # by default only where fork exists: spawn re-imports the caller's script, which breaks scripts without a
    # `if __name__ == "__main__":` guard; an explicit n_jobs > 1 uses spawn there
    workers = (default_num_threads() if linux else 1) if n_jobs in (None, -1) else max(1, int(n_jobs))
    workers = min(workers, len(tasks))
    if workers <= 1:
        return [_leiden_task(t) for t in progress(tasks, desc=desc, disable=disable)]
    from concurrent.futures import ProcessPoolExecutor

    # fork is cheap and inherits the imports; elsewhere (macOS, Windows) spawn re-imports stmorph in each worker
    ctx = mp.get_context("fork" if linux else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        return list(progress(ex.map(_leiden_task, tasks), total=len(tasks), desc=desc, disable=disable))


def _leiden_multiplex(graphs, resolutions, weights, random_state: int, n_iterations: int = 2) -> np.ndarray:
    """leidenalg's multiplex optimiser over RB-configuration partitions (one per layer), with edge weights.

    This is what ``muon.tl.leiden`` runs (same partitions, optimiser and layer weights), except that muon builds
    its partitions without ``weights=`` unless ``partition_kwargs={"weights": "weight"}`` is passed, so by
    default it clusters the *unweighted* kNN graphs, and muon lists every edge twice (same objective up to a
    factor, but a different optimisation path). Here the connectivities are used, as in the single-space Leiden.
    """
    import leidenalg as la

    parts = [la.RBConfigurationVertexPartition(g, weights="weight", resolution_parameter=float(r))
             for g, r in zip(graphs, resolutions)]
    opt = la.Optimiser()
    opt.set_rng_seed(int(random_state))  # always seeded (muon seeds only a non-zero random_state)
    opt.optimise_partition_multiplex(parts, layer_weights=[float(w) for w in weights], n_iterations=n_iterations)
    return np.asarray(parts[0].membership)


def _leiden(g, resolution: float, random_state: int, backend: str = "leidenalg") -> np.ndarray:
    """Single-space Leiden (RB configuration = modularity with resolution, edge weights).

    ``"leidenalg"`` (default): the optimiser of the multiplex (:func:`_leiden_multiplex`) and of scanpy's leidenalg
    flavour, so a resolution tuned here means the same there. ``"igraph"``: igraph's ``community_leiden``, measured
    ~15-20x faster (0.04 vs 0.5-1.4 s per run on the ileum) and reaching a slightly higher quality, but with more
    clusters at the same resolution (ileum TC, k=10, res 0.2: 11 vs 5), so its resolutions do not transfer to the
    multiplex optimiser (that mismatch made TC+stain collapse to 3 clusters); use it only without multiplex.
    """
    if backend == "igraph":
        import random

        import igraph as ig

        ig.set_random_number_generator(random.Random(random_state))
        try:
            part = g.community_leiden(objective_function="modularity", weights="weight", resolution=resolution,
                                      n_iterations=2)
        finally:
            ig.set_random_number_generator(random)
        return np.asarray(part.membership)
    if backend != "leidenalg":
        raise StmorphInputError(f"leiden backend {backend!r}", expected="'leidenalg' or 'igraph'")
    import leidenalg as la

    part = la.RBConfigurationVertexPartition(g, weights="weight", resolution_parameter=float(resolution))
    opt = la.Optimiser()
    opt.set_rng_seed(int(random_state))
    opt.optimise_partition(part, n_iterations=2)
    return np.asarray(part.membership)


@dataclass
class LeidenResult:
    """Silhouette-tuned Leiden clustering.

    Attributes
    ----------
    clusters
        Cluster id per cell (strings).
    k, resolution
        The chosen neighbours and resolution.
    silhouette
        Silhouette of the chosen clustering in the feature space.
    grid
        One row per (k, resolution): ``k, resolution, n_clusters, silhouette, eligible``.
    graphs
        The kNN connectivities per k (reused by :func:`multiplex_leiden`).
    """

    clusters: np.ndarray
    k: int
    resolution: float
    silhouette: float
    grid: pd.DataFrame
    graphs: dict = field(default_factory=dict, repr=False)


def leiden_tune(
    X: np.ndarray,
    *,
    k_grid: Sequence[int] = DEFAULT_K_GRID,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    min_clusters: int = 5,
    random_state: int = 0,
    D: np.ndarray | None = None,
    show_progress: bool | None = None,
    backend: str = "leidenalg",
    n_jobs: int | None = -1,
) -> LeidenResult:
    """Leiden clustering with ``k`` and resolution chosen by the highest silhouette among grids with >= ``min_clusters``.

    One kNN graph per ``k`` is reused for all resolutions. If no grid point reaches ``min_clusters``, the
    clustering with the most clusters is kept (with a warning).

    Parameters
    ----------
    X
        ``(n, d)`` features (silhouettes are computed in this space).
    k_grid
        Neighbour counts to try.
    resolutions
        Leiden resolutions to try.
    min_clusters
        Lower bound on the number of clusters (the study: >= 5).
    random_state
        Seed for the graph and Leiden.
    D
        Optional precomputed Euclidean distance matrix of ``X``.
    show_progress
        Progress bar over the grid.
    backend
        ``"leidenalg"`` (default; the multiplex optimiser) or ``"igraph"`` (~15x faster; its resolutions do not
        transfer to :func:`multiplex_leiden`).
    n_jobs
        Worker processes for the Leiden runs (-1: all cores; 1: in this process). Results do not depend on it.

    Returns
    -------
    :class:`LeidenResult`

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(300, centers=6, random_state=1)
    >>> res = leiden_tune(X, k_grid=(15,), resolutions=(0.5, 1.0))
    >>> res.clusters.shape
    (300,)
    """
    from sklearn.metrics import pairwise_distances

    X = np.asarray(X, dtype=np.float64)
    if D is None:
        D = pairwise_distances(X)
    rows, results = [], {}
    grid = [(k, r) for k in k_grid for r in resolutions]
    disable = None if show_progress is None else not show_progress
    graphs = {k: knn_graph(X, k, random_state=random_state) for k in dict.fromkeys(k_grid)}
    edges = {k: _edges(G) for k, G in graphs.items()}
    memberships = _run_leiden_tasks([("single", edges[k], r, None, random_state, backend) for k, r in grid],
                                    n_jobs, "Leiden grid", disable)
    for (k, r), cl in zip(grid, memberships):
        n_cl = int(np.unique(cl).size)
        sil = silhouette(X, cl, D=D)
        rows.append({"k": int(k), "resolution": float(r), "n_clusters": n_cl, "silhouette": sil,
                     "eligible": n_cl >= min_clusters})
        results[(k, r)] = cl
    table = pd.DataFrame(rows)
    best = _pick_best(table, f"no (k, resolution) reached {min_clusters} clusters; keeping the one with the most")
    k, r = int(best["k"]), float(best["resolution"])
    return LeidenResult(results[(k, r)].astype(str), k, r, float(best["silhouette"]), table, graphs)


@dataclass
class MultiplexResult:
    """Multiplex Leiden of two feature spaces.

    Attributes
    ----------
    clusters
        Cluster id per cell.
    weight
        The weight of the first space (the second gets ``1 - weight``).
    silhouette
        Mean of the silhouettes in the two spaces.
    grid
        One row per weight: ``weight, n_clusters, silhouette_1, silhouette_2, silhouette, eligible``.
    """

    clusters: np.ndarray
    weight: float
    silhouette: float
    grid: pd.DataFrame


def multiplex_leiden(
    X1: np.ndarray,
    X2: np.ndarray,
    *,
    k: tuple[int, int],
    resolution: tuple[float, float],
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    min_clusters: int = 5,
    random_state: int = 0,
    graphs: tuple | None = None,
    D: tuple | None = None,
    show_progress: bool | None = None,
    n_jobs: int | None = -1,
) -> MultiplexResult:
    """Multiplex Leiden (muon's multiplex optimiser) of two spaces, modality weight chosen by mean silhouette.

    Each space keeps its own tuned ``k`` (kNN graph) and resolution; the weight ``w`` of space 1 (``1 - w`` for
    space 2) is chosen by the mean of the two spaces' silhouettes among weights giving >= ``min_clusters``.
    The optimisation equals ``muon.tl.leiden(mdata, resolution=..., mod_weights=..., partition_kwargs={"weights":
    "weight"})`` (muon's default drops the edge weights); the single-space Leiden of :func:`leiden_tune` uses
    the same optimiser (leidenalg), so the inherited resolutions mean the same thing.

    Parameters
    ----------
    X1, X2
        ``(n, d1)`` and ``(n, d2)`` features of the same cells.
    k
        Neighbours for each space (from :func:`leiden_tune`).
    resolution
        Resolution for each space.
    weights
        Weights of space 1 to try.
    min_clusters
        Lower bound on the number of clusters.
    random_state
        Seed.
    graphs
        Optional precomputed connectivities of the two spaces.
    D
        Optional precomputed distance matrices of the two spaces.
    show_progress
        Progress bar over weights.
    n_jobs
        Worker processes for the runs (-1: all cores; 1: in this process). Results do not depend on it.

    Returns
    -------
    :class:`MultiplexResult`

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(200, centers=5, random_state=0)
    >>> res = multiplex_leiden(X, X[:, ::-1], k=(15, 15), resolution=(1.0, 1.0), weights=(0.5,))
    >>> res.weight
    0.5
    """
    from sklearn.metrics import pairwise_distances

    X1 = np.asarray(X1, dtype=np.float64)
    X2 = np.asarray(X2, dtype=np.float64)
    if X1.shape[0] != X2.shape[0]:
        raise StmorphInputError(f"the two spaces have {X1.shape[0]} and {X2.shape[0]} cells", expected="the same cells")
    if graphs is None:
        graphs = (knn_graph(X1, k[0], random_state=random_state), knn_graph(X2, k[1], random_state=random_state))
    if D is None:
        D = (pairwise_distances(X1), pairwise_distances(X2))
    edges = [_edges(G) for G in graphs]
    rows, results = [], {}
    disable = None if show_progress is None else not show_progress
    weights = [float(w) for w in weights]
    memberships = _run_leiden_tasks([("multiplex", edges, resolution, (w, 1.0 - w), random_state, None)
                                     for w in weights], n_jobs, "multiplex weights", disable)
    for w, cl in zip(weights, memberships):
        cl = cl.astype(str)
        n_cl = int(np.unique(cl).size)
        s1, s2 = silhouette(X1, cl, D=D[0]), silhouette(X2, cl, D=D[1])
        rows.append({"weight": float(w), "n_clusters": n_cl, "silhouette_1": s1, "silhouette_2": s2,
                     "silhouette": (s1 + s2) / 2, "eligible": n_cl >= min_clusters})
        results[float(w)] = cl
    table = pd.DataFrame(rows)
    best = _pick_best(table, f"no weight reached {min_clusters} clusters; keeping the one with the most")
    w = float(best["weight"])
    return MultiplexResult(results[w], w, float(best["silhouette"]), table)
