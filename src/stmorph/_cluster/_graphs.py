"""Neighbour graphs: one kNN search (exact or NN-descent) and the graphs built on it.

* :func:`knn_indices` - neighbour indices (self removed), the input of PhenoGraph's :func:`jaccard_graph`;
* :func:`knn_graph` - UMAP fuzzy-union connectivities (scanpy's ``pp.neighbors`` weights), the graph of the
  evaluation's ``"fast"`` Leiden protocol;
* :func:`study_neighbors` - scanpy's own ``pp.neighbors``, the graph of the study's protocol;
* :func:`_edges`, :func:`_to_igraph`, :func:`_csr_parts`, :func:`_from_parts` - the same graphs as igraph graphs
  or as plain arrays (cheap to pickle for worker processes).

Scaling: :func:`knn_indices` and :func:`knn_graph` share one search (:func:`_neighbors`), exact (scikit-learn) up to
:data:`APPROX_KNN_MIN_CELLS` cells and approximate (pynndescent's NN-descent) above, unless asked otherwise;
the Jaccard weights are computed only on the ``n * k`` graph edges (:func:`jaccard_edges`, one numba pass).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import scipy.sparse as sp

from ..errors import StmorphInputError

__all__ = [
    "APPROX_KNN_MIN_CELLS",
    "STUDY_SEED",
    "SCANPY_APPROX_MIN_CELLS",
    "knn_indices",
    "knn_graph",
    "jaccard_edges",
    "jaccard_graph",
    "study_neighbors",
]

#: Above this many rows the neighbour search (``approximate=None``) switches from exact search to NN-descent.
APPROX_KNN_MIN_CELLS = 50_000
#: the study's neighbour seed (``sc.pp.neighbors(..., random_state=137)``, also muon's ``mu.tl.leiden`` seed);
#: ``random_state`` is added to it, so 0 reproduces the study
STUDY_SEED = 137
#: scanpy's ``pp.neighbors`` (:func:`study_neighbors`) searches exactly below this many cells, with NN-descent from it on
SCANPY_APPROX_MIN_CELLS = 8192


def _neighbors(
    X: np.ndarray,
    n_neighbors: int,
    *,
    approximate: bool | None = None,
    n_jobs: int | None = None,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_neighbors`` nearest rows of every row of ``X`` (the row itself included), Euclidean distance.

    The one neighbour search of stmorph's graphs: scikit-learn's exact search, or pynndescent's NN-descent when
    ``approximate`` (``None``: above :data:`APPROX_KNN_MIN_CELLS` rows). ``X`` is searched in its own dtype.

    Returns
    -------
    ``(distances, indices)``, both ``(n, n_neighbors)``, nearest first (usually the row itself first; with
    duplicated rows another row at distance 0 may come first).
    """
    if approximate is None:
        approximate = X.shape[0] > APPROX_KNN_MIN_CELLS
    if approximate:
        from pynndescent import NNDescent

        index = NNDescent(X, n_neighbors=int(n_neighbors), random_state=int(random_state), n_jobs=n_jobs or 1,
                          low_memory=True, compressed=True)
        idx, dist = index.neighbor_graph
        return dist, idx
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=int(n_neighbors), n_jobs=n_jobs).fit(X).kneighbors(X)


def knn_indices(
    X: np.ndarray,
    k: int = 30,
    *,
    n_jobs: int | None = None,
    approximate: bool | None = None,
    random_state: int = 0,
) -> np.ndarray:
    """Indices of the ``k`` nearest neighbours of every row (self excluded), Euclidean distance.

    Parameters
    ----------
    X
        ``(n, d)`` data matrix (searched in float32).
    k
        Number of neighbours; capped at ``n - 1``.
    n_jobs
        Threads for the search (``None``: the library's default).
    approximate
        Use approximate NN-descent (pynndescent) instead of the exact search (scikit-learn). ``None``:
        exact up to :data:`APPROX_KNN_MIN_CELLS` rows, approximate above (the exact all-pairs search is
        ``O(n^2 d)``: about 5 CPU s at 20,000 x 128 and ~25x that at 100,000).
    random_state
        Seed of NN-descent.

    Returns
    -------
    ``(n, k)`` integer array of neighbour indices, nearest first.

    Examples
    --------
    >>> X = np.array([[0.0], [1.0], [10.0], [11.0]])
    >>> knn_indices(X, k=1).ravel().tolist()
    [1, 0, 3, 2]
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    k = int(min(k, n - 1))
    if k < 1:
        raise StmorphInputError(f"need at least 2 rows to build a neighbour graph, got {n}", expected=">= 2 cells")
    _, idx = _neighbors(X, k + 1, approximate=approximate, n_jobs=n_jobs, random_state=random_state)
    # drop self; with duplicated points self may not be in column 0, so remove it explicitly per row
    rows = np.arange(n)[:, None]
    is_self = idx == rows
    has_self = is_self.any(axis=1)
    out = np.empty((n, k), dtype=np.int64)
    out[has_self] = idx[has_self][~is_self[has_self]].reshape(-1, k)
    out[~has_self] = idx[~has_self, :k]
    return out


def knn_graph(
    X: np.ndarray,
    k: int,
    *,
    random_state: int = 0,
    approximate: bool | None = None,
    n_jobs: int | None = None,
) -> sp.csr_matrix:
    """UMAP fuzzy-union kNN connectivities of ``X`` (scanpy's ``pp.neighbors`` weights).

    Re-implemented in numpy (smooth kNN distances with ``local_connectivity=1``, fuzzy union) because scanpy's
    path compiles umap's numba kernels on first use (about 20 s here), which would dominate a one-space run.
    Neighbours come from the search of :func:`knn_indices` (in float64): exact up to :data:`APPROX_KNN_MIN_CELLS`
    cells, NN-descent above.

    Parameters
    ----------
    X
        ``(n, d)`` features.
    k
        Number of neighbours including the cell itself (scanpy's convention).
    random_state
        Seed of the approximate search (the exact search is deterministic).
    approximate
        Approximate neighbour search (``None``: only above :data:`APPROX_KNN_MIN_CELLS` cells).
    n_jobs
        Threads for the neighbour search.

    Returns
    -------
    ``(n, n)`` symmetric sparse connectivities (CSR).

    Examples
    --------
    >>> G = knn_graph(np.random.default_rng(0).normal(size=(50, 3)), 5)
    >>> G.shape, bool(abs(G - G.T).max() < 1e-12)
    ((50, 50), True)
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    k = int(min(k, n))
    if k < 2:
        raise StmorphInputError(f"k={k}", expected="at least 2 neighbours (including the cell itself)")
    dist, idx = _neighbors(X, k, approximate=approximate, n_jobs=n_jobs, random_state=random_state)
    dist = np.asarray(dist, dtype=np.float64)
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


def jaccard_edges(idx: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The edges of PhenoGraph's Jaccard-weighted kNN graph, each pair once (``u < v``, row-major order).

    The edge ``i -> j`` (``j`` among the neighbours of ``i``) gets ``s = |N(i) & N(j)| / |N(i) | N(j)|``
    (``|N(i) | N(j)| = 2k - |N(i) & N(j)|``); the graph is symmetrised as ``(S + S.T) / 2``, so a pair listed by
    both cells weighs ``s`` and a pair listed by one ``s / 2``; pairs without a shared neighbour have no edge,
    as in PhenoGraph.

    One pass over the ``n * k`` edges, merging the two sorted neighbour lists of each (a numba kernel), in
    place of the sparse product ``(A @ A.T) .* A`` it replaced, which formed every two-step pair (~k^2 per
    cell): at 1,000,000 cells x 30 neighbours that product took 303 s and ~2.8 GB above the neighbour table
    (MUSE's final clustering, 2 loaded cores); the kernel gives the same weights (float32, the same arithmetic).

    Parameters
    ----------
    idx
        ``(n, k)`` neighbour indices (self excluded, no repeats), e.g. from :func:`knn_indices`.

    Returns
    -------
    ``(n, edges (m, 2) int64, weights (m,) float64)``, the input of :func:`_to_igraph`.

    Examples
    --------
    >>> n, edges, w = jaccard_edges(np.array([[1, 2], [0, 2], [0, 1], [2, 1]]))
    >>> edges.tolist(), w.round(3).tolist()
    ([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]], [0.333, 0.333, 0.333, 0.167, 0.167])
    """
    from ._jaccard_kernels import jaccard_edges as _kernel

    idx = np.asarray(idx)
    if idx.ndim != 2:
        raise StmorphInputError(f"neighbour indices of shape {idx.shape}", expected="a 2-D (cells, k) array")
    n = idx.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        # e.g. NN-descent's -1 for an unfilled neighbour slot: the kernel would read another row's list
        raise StmorphInputError(f"neighbour indices outside 0..{n - 1} (min {idx.min()}, max {idx.max()})",
                                expected="indices of rows of the same table")
    srt = np.sort(idx.astype(np.int64, copy=False), axis=1)
    u, v, w, m = _kernel(np.ascontiguousarray(srt))
    del srt
    u, v, w = u[:m], v[:m], w[:m]
    order = np.argsort(u * np.int64(n) + v, kind="stable")
    return n, np.column_stack([u[order], v[order]]), w[order].astype(np.float64)


def jaccard_graph(idx: np.ndarray) -> sp.csr_matrix:
    """Symmetric Jaccard-weighted kNN graph from neighbour indices (PhenoGraph's kernel), as a sparse matrix.

    The weights of :func:`jaccard_edges` (which :func:`~stmorph._cluster.phenograph_leiden` uses directly).

    Parameters
    ----------
    idx
        ``(n, k)`` neighbour indices (self excluded), e.g. from :func:`knn_indices`.

    Returns
    -------
    ``(n, n)`` symmetric :class:`scipy.sparse.csr_matrix` of edge weights (float32).

    Examples
    --------
    >>> idx = np.array([[1, 2], [0, 2], [0, 1], [2, 1]])
    >>> W = jaccard_graph(idx)
    >>> W.shape
    (4, 4)
    """
    n, edges, w = jaccard_edges(idx)
    w32 = w.astype(np.float32)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    return sp.csr_matrix((np.concatenate([w32, w32]), (rows, cols)), shape=(n, n))


@contextlib.contextmanager
def _quiet():
    """Silence scanpy's/muon's warnings about their defaults inside a block (the study's defaults are wanted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def study_neighbors(X: np.ndarray, k: int, *, random_state: int = 0) -> sp.csr_matrix:
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
    # an empty graph + add_edges, not Graph(n, edges=...): with a numpy edge list the constructor took 92 s and a
    # transient 3 GB for 20M edges, add_edges 23 s and 0.9 GB (1M vertices, python-igraph 1.0, loaded machine)
    g = ig.Graph(n=n, directed=False)
    g.add_edges(np.ascontiguousarray(edges, dtype=np.int64))
    g.es["weight"] = weights
    return g


def _csr_parts(G) -> tuple:
    """A CSR matrix as plain arrays (cheap to pickle for worker processes)."""
    G = G.tocsr()
    return (G.shape[0], G.indptr, G.indices, G.data)


def _from_parts(parts) -> sp.csr_matrix:
    """The CSR matrix of :func:`_csr_parts`."""
    n, indptr, indices, data = parts
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))
