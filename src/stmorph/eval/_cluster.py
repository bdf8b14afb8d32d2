"""Leiden clustering tuned by silhouette, multiplex Leiden of two spaces, and cluster-vs-label metrics.

The graphs and the Leiden runs themselves come from :mod:`stmorph._cluster` (graph construction and community
detection); this module holds the tuning protocols and the metrics. Two tuning protocols share one interface
(``protocol=`` of :func:`leiden_tune` and :func:`multiplex_leiden`):

``"fast"`` (default)
    stmorph's own kNN connectivities (:func:`knn_graph`, scanpy's UMAP weights with exact neighbours, approximate
    above :data:`~stmorph.eval.APPROX_KNN_MIN_CELLS` cells, no umap start-up), leidenalg's RB-configuration
    optimiser on the undirected weighted graph (``n_iterations=2``), grid k in {10, 20, 30} x 7 resolutions,
    multiplex weights 0.1..0.9, runs in worker processes.
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

Silhouettes use every cell up to :data:`~stmorph.eval.EXACT_MAX_CELLS` cells (one ``n x n`` distance matrix) and a
seeded stratified sample of :data:`~stmorph.eval.SILHOUETTE_SAMPLE` cells above (:mod:`stmorph.eval._scale`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._cluster import _graphs, knn_graph, study_neighbors
from .._cluster._community import _run_leiden_tasks
from .._cluster._graphs import _csr_parts, _edges
from ..errors import StmorphInputError
from . import _scale
from ._scale import _subsample_rng, stratified_sample

__all__ = [
    "silhouette",
    "hungarian_jaccard",
    "cluster_metrics",
    "LeidenResult",
    "leiden_tune",
    "MultiplexResult",
    "multiplex_leiden",
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
PROTOCOLS = ("fast", "study")


def _silhouette_from_sums(sums: np.ndarray, codes: np.ndarray) -> float:
    """Mean silhouette from the per-cluster distance sums ``(n, k)`` of every cell and its cluster codes."""
    n, k = sums.shape
    sizes = np.bincount(codes, minlength=k).astype(sums.dtype)
    own = sizes[codes]
    a = sums[np.arange(n), codes] / np.maximum(own - 1, 1)
    mean_other = sums / sizes
    mean_other[np.arange(n), codes] = np.inf
    b = mean_other.min(axis=1)
    s = (b - a) / np.maximum(a, b)
    s[own == 1] = 0.0  # sklearn's convention for singletons
    s = np.nan_to_num(s)
    return float(s.mean())


def _silhouettes_blockwise(X: np.ndarray, clusterings: Sequence[np.ndarray], *, block: int = 1024,
                           max_columns: int = 1024) -> list[float]:
    """Mean silhouettes of several clusterings of the rows of ``X`` without an ``n x n`` matrix.

    Distances are computed in blocks of ``block`` rows and multiplied by the stacked cluster indicators of up to
    ``max_columns`` clusters at a time, so memory stays ``O(n (block + max_columns))``; time is ``O(n^2 (d + k))``,
    meant for a sample of :data:`~stmorph.eval.SILHOUETTE_SAMPLE` cells.
    """
    from sklearn.metrics import pairwise_distances

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    codes = [np.unique(np.asarray(c), return_inverse=True)[1].ravel() for c in clusterings]
    ks = [int(c.max()) + 1 if c.size else 0 for c in codes]
    out = [float("nan")] * len(codes)
    todo = [j for j, k in enumerate(ks) if 2 <= k < n]
    while todo:
        group, width = [], 0
        while todo and (not group or width + ks[todo[0]] <= max_columns):
            group.append(todo.pop(0))
            width += ks[group[-1]]
        offsets = np.concatenate([[0], np.cumsum([ks[j] for j in group])])
        onehot = np.zeros((n, width))
        for off, j in zip(offsets, group):
            onehot[np.arange(n), off + codes[j]] = 1.0
        sums = np.empty((n, width))
        for start in range(0, n, block):
            stop = min(n, start + block)
            Db = pairwise_distances(X[start:stop], X)
            Db[np.arange(stop - start), np.arange(start, stop)] = 0.0  # exact zeros on the diagonal
            sums[start:stop] = Db @ onehot
        for i, j in enumerate(group):
            out[j] = _silhouette_from_sums(sums[:, offsets[i] : offsets[i + 1]], codes[j])
    return out


def silhouette(
    X: np.ndarray,
    clusters: np.ndarray,
    *,
    D: np.ndarray | None = None,
    sample_size: int | None = None,
    random_state: int = 0,
) -> float:
    """Mean silhouette coefficient (Euclidean), equal to :func:`sklearn.metrics.silhouette_score`.

    Per-cluster distance sums come from one product of the distance matrix with the cluster indicator, so a
    precomputed distance matrix ``D`` is reused cheaply across many clusterings of the same cells (measured 5x
    faster than ``silhouette_score(D, c, metric="precomputed")`` on 5,000 cells).

    Above :data:`~stmorph.eval.EXACT_MAX_CELLS` cells (without ``D``) the silhouette is that of a sample of
    :data:`~stmorph.eval.SILHOUETTE_SAMPLE` cells stratified by cluster (proportional allocation,
    :func:`~stmorph.eval.stratified_sample`, seeded by ``random_state``), computed in row blocks: like
    ``silhouette_score(..., sample_size=...)``, but stratified and without an ``n x n`` matrix.

    Parameters
    ----------
    X
        ``(n, d)`` features (ignored when ``D`` is given).
    clusters
        ``(n,)`` cluster labels (at least 2 and at most n - 1 distinct).
    D
        Optional precomputed ``(n, n)`` Euclidean distance matrix (then every cell is used).
    sample_size
        Use a stratified sample of about this many cells (``None``: :data:`~stmorph.eval.SILHOUETTE_SAMPLE` above
        :data:`~stmorph.eval.EXACT_MAX_CELLS` cells, else every cell).
    random_state
        Seed of the sample.

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
    codes = codes.ravel()
    n = codes.size
    if D is None:
        if sample_size is None and n > _scale.EXACT_MAX_CELLS:
            sample_size = _scale.SILHOUETTE_SAMPLE
        if sample_size is not None and sample_size < n:
            cells = stratified_sample(codes, sample_size, _subsample_rng(random_state))
            return _silhouettes_blockwise(np.asarray(X)[cells], [codes[cells]])[0]
    k = codes.max() + 1 if codes.size else 0
    if k < 2 or k >= n:
        return float("nan")
    if D is None:
        from sklearn.metrics import pairwise_distances

        D = pairwise_distances(np.asarray(X, dtype=np.float64))
    onehot = np.zeros((n, k), dtype=D.dtype)
    onehot[np.arange(n), codes] = 1.0
    return _silhouette_from_sums(D @ onehot, codes)


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
        Optional features for the silhouette (Euclidean; above :data:`~stmorph.eval.EXACT_MAX_CELLS` cells, on a
        stratified sample, see :func:`silhouette`).
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


def _silhouette_sample(n: int, strata: np.ndarray | None, random_state: int) -> np.ndarray:
    """The rows of the tuning's silhouettes above :data:`~stmorph.eval.EXACT_MAX_CELLS` cells: a sample of
    :data:`~stmorph.eval.SILHOUETTE_SAMPLE` cells stratified by ``strata`` (uniform without), seeded."""
    if strata is None:
        strata = np.zeros(n, dtype=np.int8)
    elif len(strata) != n:
        raise StmorphInputError(f"strata of length {len(strata)} for {n} cells", expected="one stratum per cell")
    return stratified_sample(strata, _scale.SILHOUETTE_SAMPLE, _subsample_rng(random_state))


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


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise StmorphInputError(f"clustering protocol {protocol!r}", expected=f"one of {list(PROTOCOLS)}")


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
    silhouette_cells
        The rows the silhouettes were computed on (a stratified sample above
        :data:`~stmorph.eval.EXACT_MAX_CELLS` cells); ``None``: every cell.
    approximate_knn
        Whether the kNN graphs used approximate neighbours (``"fast"``: above
        :data:`~stmorph.eval.APPROX_KNN_MIN_CELLS` cells; ``"study"``: scanpy's, from 8,192 cells).
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
    silhouette_cells: np.ndarray | None = field(default=None, repr=False)
    approximate_knn: bool = False


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
    strata: np.ndarray | None = None,
) -> LeidenResult:
    """Leiden clustering with ``k`` and resolution chosen by the highest silhouette among clusterings with more than
    ``min_clusters`` clusters.

    One kNN graph per ``k`` is reused for all resolutions. If no grid point has more than ``min_clusters``
    clusters, the clustering with the most clusters is returned with ``bound_met=False`` (and a warning).

    At scale (``docs/distributed.md``, "Evaluation at scale"): the ``"fast"`` graphs use approximate neighbours
    above :data:`~stmorph.eval.APPROX_KNN_MIN_CELLS` cells, and above :data:`~stmorph.eval.EXACT_MAX_CELLS`
    cells (without ``D``) every grid point's silhouette is computed on one sample of
    :data:`~stmorph.eval.SILHOUETTE_SAMPLE` cells stratified by ``strata`` (seeded by ``random_state``), so the
    grid points are compared on the same cells and no ``n x n`` matrix is built.

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
    strata
        ``(n,)`` labels (e.g. the reference labels) stratifying the silhouettes' sample above
        :data:`~stmorph.eval.EXACT_MAX_CELLS` cells (proportional allocation); ``None``: a uniform sample.
        Unused below the threshold.

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
    n = X.shape[0]
    cells = None
    if D is None and n > _scale.EXACT_MAX_CELLS:
        cells = _silhouette_sample(n, strata, random_state)
    elif D is None:
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
    if cells is not None:
        sils = _silhouettes_blockwise(X[cells], [np.asarray(cl)[cells] for cl in memberships])
    for i, ((k, r), cl) in enumerate(zip(grid, memberships)):
        n_cl = int(np.unique(cl).size)
        sil = silhouette(X, cl, D=D) if cells is None else sils[i]
        rows.append({"k": int(k), "resolution": float(r), "n_clusters": n_cl, "silhouette": sil,
                     "eligible": n_cl > min_clusters})
        results[(k, r)] = cl
    table = pd.DataFrame(rows)
    best, met = _pick_best(table, f"no (k, resolution) gave more than {min_clusters} clusters; keeping the one with "
                                  "the most (bound_met=False)")
    k, r = int(best["k"]), float(best["resolution"])
    approximate = n >= _graphs.SCANPY_APPROX_MIN_CELLS if protocol == "study" else n > _graphs.APPROX_KNN_MIN_CELLS
    return LeidenResult(np.asarray(results[(k, r)]).astype(str), k, r, float(best["silhouette"]), table, graphs,
                        bound_met=met, min_clusters=int(min_clusters), protocol=protocol, silhouette_cells=cells,
                        approximate_knn=approximate)


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
    silhouette_cells
        The rows the silhouettes were computed on (a stratified sample above
        :data:`~stmorph.eval.EXACT_MAX_CELLS` cells); ``None``: every cell.
    """

    clusters: np.ndarray
    weight: float
    silhouette: float
    grid: pd.DataFrame
    bound_met: bool = True
    min_clusters: int = 5
    protocol: str = "fast"
    silhouette_cells: np.ndarray | None = field(default=None, repr=False)


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
    strata: np.ndarray | None = None,
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
    strata
        As in :func:`leiden_tune`: above :data:`~stmorph.eval.EXACT_MAX_CELLS` cells (without ``D``) the
        silhouettes use one sample stratified by ``strata`` (the same cells as :func:`leiden_tune`'s with the same
        ``strata`` and ``random_state``).

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
    n = X1.shape[0]
    cells = None
    if D is None and n > _scale.EXACT_MAX_CELLS:
        cells = _silhouette_sample(n, strata, random_state)
    elif D is None:
        D = (pairwise_distances(X1), pairwise_distances(X2))
    rows, results = [], {}
    disable = None if show_progress is None else not show_progress
    if protocol == "study":
        parts = [_csr_parts(G) for G in graphs]
        tasks = [("study_multiplex", parts, resolution, (w, round(1.0 - w, 10)), random_state, None) for w in weights]
    else:
        edges = [_edges(G) for G in graphs]
        tasks = [("multiplex", edges, resolution, (w, 1.0 - w), random_state, None) for w in weights]
    memberships = [np.asarray(cl).astype(str) for cl in _run_leiden_tasks(tasks, n_jobs, "multiplex weights", disable)]
    if cells is not None:
        sub = [cl[cells] for cl in memberships]
        sils = list(zip(_silhouettes_blockwise(X1[cells], sub), _silhouettes_blockwise(X2[cells], sub)))
    for i, (w, cl) in enumerate(zip(weights, memberships)):
        n_cl = int(np.unique(cl).size)
        s1, s2 = (silhouette(X1, cl, D=D[0]), silhouette(X2, cl, D=D[1])) if cells is None else sils[i]
        rows.append({"weight": float(w), "n_clusters": n_cl, "silhouette_1": s1, "silhouette_2": s2,
                     "silhouette": (s1 + s2) / 2, "eligible": n_cl > min_clusters})
        results[float(w)] = cl
    table = pd.DataFrame(rows)
    best, met = _pick_best(table, f"no weight gave more than {min_clusters} clusters; keeping the one with the most "
                                  "(bound_met=False)")
    w = float(best["weight"])
    return MultiplexResult(results[w], w, float(best["silhouette"]), table, bound_met=met,
                           min_clusters=int(min_clusters), protocol=protocol, silhouette_cells=cells)
