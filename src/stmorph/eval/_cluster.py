"""Leiden clustering tuned by silhouette, multiplex Leiden of two spaces, and cluster-vs-label metrics.

Two tuning protocols share one interface (``protocol=`` of :func:`leiden_tune` and :func:`multiplex_leiden`):

``"fast"`` (default)
    stmorph's own kNN connectivities (:func:`knn_graph`, scanpy's UMAP weights with exact neighbours, no umap/numba
    start-up), leidenalg's RB-configuration optimiser on the undirected weighted graph (``n_iterations=2``), grid
    k in {10, 20, 30} x 7 resolutions, multiplex weights 0.1..0.9, runs in worker processes.
``"study"``
    the code of Moser, Hamid, Cimini 2025 (``optimize_leiden_hyperparams``): ``scanpy.pp.neighbors(adata,
    n_neighbors=k, n_pcs=0)`` on the features (no PCA), ``scanpy.tl.leiden`` (flavor leidenalg: directed graph,
    edge weights, ``n_iterations=-1``), k = 10, 15, ..., 50, resolutions 0.1, 0.2, ..., 1.0 then 1.2, 1.4, ..., 2.0
    (the study's ``resolution_threshold=1.0`` with the increment doubled after it), and the multiplex through
    ``muon.tl.leiden`` (muon's defaults: unweighted directed graphs, ``n_iterations=2``) with each space's tuned
    k and resolution, weights 0.05, 0.10, ..., 0.95, scored by the mean of the two spaces' silhouettes.

Both protocols enforce the study's bound strictly: a clustering with ``<= min_clusters`` (5) clusters is never
chosen. When no grid point meets it, the result says so (``bound_met=False``) and keeps the clustering with the most
clusters (highest silhouette among those), instead of passing it off as a tuned one.
"""

from __future__ import annotations

import contextlib
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
    "study_neighbors",
    "PROTOCOLS",
    "STUDY_K_GRID",
    "STUDY_RESOLUTIONS",
    "STUDY_WEIGHTS",
]

DEFAULT_K_GRID = (10, 20, 30)
DEFAULT_RESOLUTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
DEFAULT_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: the study's grid: k 10..50 step 5; resolutions 0.1..1.0 step 0.1, then step 0.2 up to 2.0; weights 0.05..0.95
STUDY_K_GRID = tuple(range(10, 51, 5))
STUDY_RESOLUTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11)) + (1.2, 1.4, 1.6, 1.8, 2.0)
STUDY_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: the study's seeds (``sc.pp.neighbors(..., random_state=137)``, ``mu.tl.leiden(..., random_state=137)``,
#: ``sc.tl.leiden`` with its default 0); ``random_state`` is added to each, so 0 reproduces them
STUDY_SEED = 137
PROTOCOLS = ("fast", "study")


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


def _pick_best(table: pd.DataFrame, warning: str) -> tuple[pd.Series, bool]:
    """The eligible grid row with the highest silhouette (first in grid order on ties, as the study's strict ``>``)
    and ``True``; else (with ``warning``) the row with the most clusters, highest silhouette among those, and
    ``False``."""
    ok = table[table["eligible"]]
    if len(ok):
        return ok.loc[ok["silhouette"].idxmax()], True
    warnings.warn(warning, stacklevel=3)
    most = table[table["n_clusters"] == table["n_clusters"].max()]
    sil = most["silhouette"].fillna(-np.inf)
    return most.loc[sil.idxmax()], False


def _leiden_task(task: tuple) -> np.ndarray:
    """One Leiden run from plain data (picklable, for worker processes): single space or multiplex, either
    protocol."""
    kind, graphs, resolution, weights, random_state, backend = task
    if kind == "multiplex":
        return _leiden_multiplex([_to_igraph(e) for e in graphs], resolution, weights, random_state)
    if kind == "study":
        return _study_leiden(graphs, resolution, random_state)
    if kind == "study_multiplex":
        return _study_multiplex(graphs, resolution, weights, random_state)
    return _leiden(_to_igraph(graphs), resolution, random_state, backend)


@contextlib.contextmanager
def _quiet():
    """Silence scanpy's/muon's warnings about their defaults inside a block (the study's defaults are wanted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def study_neighbors(X: np.ndarray, k: int, *, random_state: int = 0):
    """The study's kNN graph: ``scanpy.pp.neighbors(adata, n_neighbors=k, n_pcs=0, random_state=137 + random_state)``.

    ``n_pcs=0`` makes scanpy use ``adata.X`` (the features themselves, no PCA). Connectivities are UMAP's fuzzy
    union; neighbours are exact below 8,192 cells (scanpy's brute-force shortcut for Euclidean metrics), else
    pynndescent's approximation.

    Parameters
    ----------
    X
        ``(n, d)`` features.
    k
        ``n_neighbors`` (including the cell itself, scanpy's convention).
    random_state
        Added to the study's seed 137.

    Returns
    -------
    ``(n, n)`` sparse connectivities (CSR).

    Examples
    --------
    >>> G = study_neighbors(np.random.default_rng(0).normal(size=(40, 3)), 5)  # doctest: +SKIP
    >>> G.shape  # doctest: +SKIP
    (40, 40)
    """
    import anndata as ad

    X = np.asarray(X, dtype=np.float64)
    if int(k) < 2 or int(k) > X.shape[0]:
        raise StmorphInputError(f"k={k} for {X.shape[0]} cells", expected="2 <= k <= number of cells")
    with _quiet():
        import scanpy as sc

        a = ad.AnnData(X)
        sc.pp.neighbors(a, n_neighbors=int(k), n_pcs=0, random_state=STUDY_SEED + int(random_state))
    return a.obsp["connectivities"].tocsr()


def _csr_parts(G) -> tuple:
    """A CSR matrix as plain arrays (cheap to pickle for worker processes)."""
    G = G.tocsr()
    return (G.shape[0], G.indptr, G.indices, G.data)


def _from_parts(parts):
    import scipy.sparse as sp

    n, indptr, indices, data = parts
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def _study_leiden(graph, resolution: float, random_state: int) -> np.ndarray:
    """``scanpy.tl.leiden(adata, resolution=r, flavor="leidenalg")`` on the study's connectivities (scanpy's
    defaults: directed graph, edge weights, ``n_iterations=-1``; seed ``random_state``, the study used 0)."""
    import anndata as ad

    G = _from_parts(graph)
    with _quiet():
        import scanpy as sc

        a = ad.AnnData(np.zeros((G.shape[0], 0), dtype=np.float32))
        sc.tl.leiden(a, resolution=float(resolution), adjacency=G, key_added="clusters", flavor="leidenalg",
                     random_state=int(random_state))
    return a.obs["clusters"].to_numpy().astype(str)


def _study_multiplex(graphs, resolutions, weights, random_state: int) -> np.ndarray:
    """``muon.tl.leiden(mdata, resolution={m: r}, mod_weights={m: w}, random_state=137 + random_state)`` with
    muon's defaults (partitions without edge weights, directed graphs, ``n_iterations=2``), as the study ran it."""
    import anndata as ad
    import mudata as md

    with _quiet():
        import muon as mu

        md.set_options(pull_on_update=False)
        mods = {}
        for name, g in zip(("m1", "m2"), graphs):
            G = _from_parts(g)
            a = ad.AnnData(np.zeros((G.shape[0], 0), dtype=np.float32))
            a.obsp["connectivities"] = G
            a.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
            mods[name] = a
        mdata = md.MuData(mods)
        mu.tl.leiden(mdata, resolution={"m1": float(resolutions[0]), "m2": float(resolutions[1])},
                     mod_weights={"m1": float(weights[0]), "m2": float(weights[1])}, key_added="clusters",
                     random_state=STUDY_SEED + int(random_state))
    return mdata.obs["clusters"].to_numpy().astype(str)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise StmorphInputError(f"clustering protocol {protocol!r}", expected=f"one of {list(PROTOCOLS)}")


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
    bound_met
        Whether the chosen clustering has more than ``min_clusters`` clusters. ``False`` means no grid point
        reached the bound and ``clusters`` is the clustering with the most clusters, not a tuned one.
    min_clusters
        The bound: clusterings with at most this many clusters were not eligible.
    protocol
        ``"fast"`` or ``"study"``.
    """

    clusters: np.ndarray
    k: int
    resolution: float
    silhouette: float
    grid: pd.DataFrame
    graphs: dict = field(default_factory=dict, repr=False)
    bound_met: bool = True
    min_clusters: int = 5
    protocol: str = "fast"


def _grid_or_default(values, protocol: str, fast: tuple, study: tuple) -> tuple:
    return tuple(values) if values is not None else (study if protocol == "study" else fast)


def leiden_tune(
    X: np.ndarray,
    *,
    k_grid: Sequence[int] | None = None,
    resolutions: Sequence[float] | None = None,
    min_clusters: int = 5,
    random_state: int = 0,
    D: np.ndarray | None = None,
    show_progress: bool | None = None,
    backend: str = "leidenalg",
    n_jobs: int | None = -1,
    protocol: str = "fast",
) -> LeidenResult:
    """Leiden clustering with ``k`` and resolution chosen by the highest silhouette among clusterings with more than
    ``min_clusters`` clusters.

    One kNN graph per ``k`` is reused for all resolutions. If no grid point has more than ``min_clusters``
    clusters, the clustering with the most clusters is returned with ``bound_met=False`` (and a warning).

    Parameters
    ----------
    X
        ``(n, d)`` features (graphs and silhouettes are computed in this space).
    k_grid
        Neighbour counts to try (default: the protocol's, ``(10, 20, 30)`` or ``10, 15, ..., 50``).
    resolutions
        Leiden resolutions to try (default: the protocol's, see the module docstring).
    min_clusters
        Clusterings with ``<= min_clusters`` clusters are never chosen (the study's ``nClusters <= 5``: skip).
    random_state
        Seed for Leiden (``"study"``: also added to the study's neighbour seed 137).
    D
        Optional precomputed Euclidean distance matrix of ``X``.
    show_progress
        Progress bar over the grid.
    backend
        ``"fast"`` protocol only: ``"leidenalg"`` (default; the multiplex optimiser) or ``"igraph"`` (~15x faster;
        its resolutions do not transfer to :func:`multiplex_leiden`).
    n_jobs
        Worker processes for the Leiden runs (-1: all cores; 1: in this process). Results do not depend on it.
    protocol
        ``"fast"`` (default) or ``"study"`` (the study's scanpy code and grid; module docstring).

    Returns
    -------
    :class:`LeidenResult`

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(300, centers=6, random_state=1)
    >>> res = leiden_tune(X, k_grid=(15,), resolutions=(0.5, 1.0))
    >>> res.clusters.shape, res.bound_met
    ((300,), True)
    """
    from sklearn.metrics import pairwise_distances

    _check_protocol(protocol)
    if protocol == "study" and backend != "leidenalg":
        raise StmorphInputError(f"backend={backend!r} with protocol='study'", expected="the study's scanpy leidenalg")
    X = np.asarray(X, dtype=np.float64)
    k_grid = _grid_or_default(k_grid, protocol, DEFAULT_K_GRID, STUDY_K_GRID)
    resolutions = _grid_or_default(resolutions, protocol, DEFAULT_RESOLUTIONS, STUDY_RESOLUTIONS)
    if not k_grid or not resolutions:
        raise StmorphInputError("empty Leiden grid", expected="at least one k and one resolution")
    if D is None:
        D = pairwise_distances(X)
    rows, results = [], {}
    grid = [(int(k), float(r)) for k in k_grid for r in resolutions]
    disable = None if show_progress is None else not show_progress
    ks = list(dict.fromkeys(int(k) for k in k_grid))
    if protocol == "study":
        graphs = {k: study_neighbors(X, k, random_state=random_state) for k in ks}
        parts = {k: _csr_parts(G) for k, G in graphs.items()}
        tasks = [("study", parts[k], r, None, random_state, None) for k, r in grid]
    else:
        graphs = {k: knn_graph(X, k, random_state=random_state) for k in ks}
        edges = {k: _edges(G) for k, G in graphs.items()}
        tasks = [("single", edges[k], r, None, random_state, backend) for k, r in grid]
    memberships = _run_leiden_tasks(tasks, n_jobs, "Leiden grid", disable)
    for (k, r), cl in zip(grid, memberships):
        n_cl = int(np.unique(cl).size)
        sil = silhouette(X, cl, D=D)
        rows.append({"k": int(k), "resolution": float(r), "n_clusters": n_cl, "silhouette": sil,
                     "eligible": n_cl > min_clusters})
        results[(k, r)] = cl
    table = pd.DataFrame(rows)
    best, met = _pick_best(table, f"no (k, resolution) gave more than {min_clusters} clusters; keeping the one with "
                                  "the most (bound_met=False)")
    k, r = int(best["k"]), float(best["resolution"])
    return LeidenResult(np.asarray(results[(k, r)]).astype(str), k, r, float(best["silhouette"]), table, graphs,
                        bound_met=met, min_clusters=int(min_clusters), protocol=protocol)


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
    bound_met
        Whether the chosen clustering has more than ``min_clusters`` clusters (``False``: no weight reached it;
        ``clusters`` is then the weight with the most clusters).
    min_clusters
        The bound.
    protocol
        ``"fast"`` or ``"study"``.
    """

    clusters: np.ndarray
    weight: float
    silhouette: float
    grid: pd.DataFrame
    bound_met: bool = True
    min_clusters: int = 5
    protocol: str = "fast"


def multiplex_leiden(
    X1: np.ndarray,
    X2: np.ndarray,
    *,
    k: tuple[int, int],
    resolution: tuple[float, float],
    weights: Sequence[float] | None = None,
    min_clusters: int = 5,
    random_state: int = 0,
    graphs: tuple | None = None,
    D: tuple | None = None,
    show_progress: bool | None = None,
    n_jobs: int | None = -1,
    protocol: str = "fast",
) -> MultiplexResult:
    """Multiplex Leiden (muon's multiplex optimiser) of two spaces, modality weight chosen by mean silhouette.

    Each space keeps its own tuned ``k`` (kNN graph) and resolution; the weight ``w`` of space 1 (``1 - w`` for
    space 2) is chosen by the mean of the two spaces' silhouettes among weights giving more than ``min_clusters``
    clusters. ``"fast"``: the optimisation equals ``muon.tl.leiden(mdata, resolution=..., mod_weights=...,
    partition_kwargs={"weights": "weight"})`` on :func:`knn_graph` graphs (muon's default drops the edge weights);
    the single-space Leiden of :func:`leiden_tune` uses the same optimiser, so the inherited resolutions mean the
    same thing. ``"study"``: ``muon.tl.leiden`` itself with its defaults on :func:`study_neighbors` graphs, as the
    study ran it.

    Parameters
    ----------
    X1, X2
        ``(n, d1)`` and ``(n, d2)`` features of the same cells.
    k
        Neighbours for each space (from :func:`leiden_tune`).
    resolution
        Resolution for each space.
    weights
        Weights of space 1 to try (default: the protocol's, 0.1..0.9 or 0.05..0.95).
    min_clusters
        Clusterings with ``<= min_clusters`` clusters are never chosen.
    random_state
        Seed.
    graphs
        Optional precomputed connectivities of the two spaces (built with the same protocol).
    D
        Optional precomputed distance matrices of the two spaces.
    show_progress
        Progress bar over weights.
    n_jobs
        Worker processes for the runs (-1: all cores; 1: in this process). Results do not depend on it.
    protocol
        ``"fast"`` (default) or ``"study"``.

    Returns
    -------
    :class:`MultiplexResult`

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(200, centers=7, random_state=0)
    >>> res = multiplex_leiden(X, X[:, ::-1], k=(15, 15), resolution=(1.0, 1.0), weights=(0.5,))
    >>> res.weight
    0.5
    """
    from sklearn.metrics import pairwise_distances

    _check_protocol(protocol)
    X1 = np.asarray(X1, dtype=np.float64)
    X2 = np.asarray(X2, dtype=np.float64)
    if X1.shape[0] != X2.shape[0]:
        raise StmorphInputError(f"the two spaces have {X1.shape[0]} and {X2.shape[0]} cells", expected="the same cells")
    weights = [float(w) for w in _grid_or_default(weights, protocol, DEFAULT_WEIGHTS, STUDY_WEIGHTS)]
    if not weights or not all(0.0 < w < 1.0 for w in weights):
        raise StmorphInputError(f"multiplex weights {weights}", expected="weights strictly between 0 and 1")
    if graphs is None:
        build = study_neighbors if protocol == "study" else knn_graph
        graphs = (build(X1, k[0], random_state=random_state), build(X2, k[1], random_state=random_state))
    if D is None:
        D = (pairwise_distances(X1), pairwise_distances(X2))
    rows, results = [], {}
    disable = None if show_progress is None else not show_progress
    if protocol == "study":
        parts = [_csr_parts(G) for G in graphs]
        tasks = [("study_multiplex", parts, resolution, (w, round(1.0 - w, 10)), random_state, None) for w in weights]
    else:
        edges = [_edges(G) for G in graphs]
        tasks = [("multiplex", edges, resolution, (w, 1.0 - w), random_state, None) for w in weights]
    memberships = _run_leiden_tasks(tasks, n_jobs, "multiplex weights", disable)
    for w, cl in zip(weights, memberships):
        cl = np.asarray(cl).astype(str)
        n_cl = int(np.unique(cl).size)
        s1, s2 = silhouette(X1, cl, D=D[0]), silhouette(X2, cl, D=D[1])
        rows.append({"weight": float(w), "n_clusters": n_cl, "silhouette_1": s1, "silhouette_2": s2,
                     "silhouette": (s1 + s2) / 2, "eligible": n_cl > min_clusters})
        results[float(w)] = cl
    table = pd.DataFrame(rows)
    best, met = _pick_best(table, f"no weight gave more than {min_clusters} clusters; keeping the one with the most "
                                  "(bound_met=False)")
    w = float(best["weight"])
    return MultiplexResult(results[w], w, float(best["silhouette"]), table, bound_met=met,
                           min_clusters=int(min_clusters), protocol=protocol)
