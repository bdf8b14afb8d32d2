"""Community detection on neighbour graphs: Leiden (single graph and multiplex), Louvain, PhenoGraph.

* :func:`phenograph_leiden` - PhenoGraph (Levine et al. 2015): Jaccard-weighted kNN graph (:func:`jaccard_edges`)
  partitioned by igraph's Leiden or Louvain, seeded and without the ``phenograph`` package (MUSE's pseudo-labels);
* :func:`_leiden`, :func:`_leiden_multiplex` - leidenalg's RB-configuration optimiser on one graph or on several
  (muon's multiplex), the optimisers of the evaluation's ``"fast"`` protocol;
* :func:`_study_leiden`, :func:`_study_multiplex` - ``scanpy.tl.leiden`` and ``muon.tl.leiden`` as the study ran
  them (its ``"study"`` protocol);
* :func:`_run_leiden_tasks` - many seeded runs from plain data, in worker processes.
"""

from __future__ import annotations

import random
import time
from typing import Literal

import numpy as np

from .._utils import progress
from ..errors import StmorphInputError
from ._graphs import (
    APPROX_KNN_MIN_CELLS,
    STUDY_SEED,
    _from_parts,
    _quiet,
    _to_igraph,
    jaccard_edges,
    knn_indices,
)

__all__ = ["nearest_centroid_labels", "phenograph_leiden", "phenograph_scaling"]


def nearest_centroid_labels(X: np.ndarray, X_ref: np.ndarray, labels_ref: np.ndarray) -> np.ndarray:
    """Label every row of ``X`` with the label whose centroid (mean of ``X_ref`` rows) is nearest.

    A thin wrapper of :class:`sklearn.neighbors.NearestCentroid` returning int64 labels.

    Parameters
    ----------
    X
        ``(n, d)`` rows to label.
    X_ref
        ``(m, d)`` labelled rows.
    labels_ref
        ``(m,)`` integer labels of ``X_ref``.

    Returns
    -------
    ``(n,)`` int64 labels.

    Examples
    --------
    >>> ref = np.array([[0.0], [1.0], [10.0]])
    >>> nearest_centroid_labels(np.array([[2.0], [8.0]]), ref, np.array([0, 0, 1])).tolist()
    [0, 1]
    """
    from sklearn.neighbors import NearestCentroid

    model = NearestCentroid().fit(np.asarray(X_ref, dtype=np.float64), np.asarray(labels_ref, dtype=np.int64))
    return np.asarray(model.predict(np.asarray(X, dtype=np.float64)), dtype=np.int64)


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv].astype(np.int64)


def phenograph_scaling(
    n: int, *, approximate: bool | None = None, n_iterations: int | None = None, max_cells: int | None = None
) -> dict:
    """What :func:`phenograph_leiden` does at ``n`` rows with these arguments (for ``uns`` / ``summary.json``).

    Parameters
    ----------
    n
        Rows to cluster.
    approximate, n_iterations, max_cells
        As passed to :func:`phenograph_leiden` (``None``: its size-dependent defaults).

    Returns
    -------
    ``{"n_cells", "clustered_cells", "approximate_knn", "leiden_iterations", "propagated"}``: the rows in the
    graph, whether their neighbour search is NN-descent, the Leiden iterations (-1: until stable) and whether
    the other rows take the nearest centroid's label.

    Examples
    --------
    >>> phenograph_scaling(1_000)["leiden_iterations"], phenograph_scaling(1_000_000)["leiden_iterations"]
    (-1, 2)
    """
    m = int(n) if max_cells is None else min(int(n), int(max_cells))
    return {
        "n_cells": int(n),
        "clustered_cells": m,
        "approximate_knn": bool(m > APPROX_KNN_MIN_CELLS if approximate is None else approximate),
        "leiden_iterations": int((-1 if m <= APPROX_KNN_MIN_CELLS else 2) if n_iterations is None else n_iterations),
        "propagated": m < int(n),
    }


def phenograph_leiden(
    X: np.ndarray,
    k: int = 30,
    resolution: float = 1.0,
    random_state: int = 0,
    method: Literal["leiden", "louvain"] = "leiden",
    *,
    n_jobs: int | None = None,
    n_iterations: int | None = None,
    approximate: bool | None = None,
    timings: dict[str, float] | None = None,
    max_cells: int | None = None,
    show_progress: bool | None = False,
) -> np.ndarray:
    """Cluster the rows of ``X`` PhenoGraph-style: Jaccard kNN graph + Leiden (or Louvain) modularity.

    Parameters
    ----------
    X
        ``(n, d)`` data (e.g. PCA scores or an embedding).
    k
        Neighbours per cell (PhenoGraph's default 30).
    resolution
        Resolution of the modularity (RB configuration model); 1.0 is plain modularity.
    random_state
        Seed of the community detection.
    method
        ``"leiden"`` (igraph's Leiden, modularity objective) or ``"louvain"`` (igraph's multilevel,
        PhenoGraph's default algorithm).
    n_jobs
        Threads for the neighbour search.
    n_iterations
        Leiden iterations; ``-1`` runs until the partition is stable. ``None``: ``-1`` up to
        :data:`APPROX_KNN_MIN_CELLS` rows, ``2`` above (leidenalg's and scanpy's default). Measured on a MUSE
        latent of 100,000 cells (13 clusters): until stable 64 s of Leiden, 2 iterations 5.5 s, the two
        partitions at ARI 0.93 and equally close to the cell types (0.442 vs 0.437).
    approximate
        Approximate neighbour search (see :func:`knn_indices`; ``None``: only above
        :data:`APPROX_KNN_MIN_CELLS` cells).
    timings
        Optional dict to which the seconds spent in the neighbour search (``"knn"``), the Jaccard graph
        (``"graph"``) and the community detection (``"leiden"``) are added.
    max_cells
        If set and ``n > max_cells``: cluster a uniform random subsample of ``max_cells`` rows (seeded by
        ``random_state``) and give every other row the label of the nearest cluster centroid (Euclidean).
        Bounds the cost of the neighbour search and of the community detection for large ``n`` (MUSE uses
        it for its pseudo-labels); ``None`` clusters every row.

    Returns
    -------
    ``(n,)`` int64 labels ``0..c-1``, numbered by decreasing cluster size.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 0.1, (50, 5)), rng.normal(3, 0.1, (50, 5))])
    >>> labels = phenograph_leiden(X, k=20)
    >>> len(set(labels[:50])), len(set(labels[50:])), bool(labels[0] != labels[-1])
    (1, 1, True)
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise StmorphInputError(f"expected a 2-D (cells, features) matrix, got shape {X.shape}", expected="2-D array")
    if not np.all(np.isfinite(X)):
        raise StmorphInputError("the matrix to cluster contains NaN or infinite values", expected="finite values")
    if method not in ("leiden", "louvain"):
        raise StmorphInputError(f"unknown clustering method {method!r}", expected="'leiden' or 'louvain'")
    n = X.shape[0]
    if n <= 2:
        return np.zeros(n, dtype=np.int64)
    if max_cells is not None and n > max_cells:
        sel = np.sort(np.random.default_rng(int(random_state)).choice(n, size=int(max_cells), replace=False))
        sub = phenograph_leiden(X[sel], k=k, resolution=resolution, random_state=random_state, method=method,
                                n_jobs=n_jobs, n_iterations=n_iterations, approximate=approximate, timings=timings,
                                show_progress=show_progress)
        t = time.perf_counter()
        labels = nearest_centroid_labels(X, X[sel], sub)
        labels[sel] = sub
        if timings is not None:
            timings["propagate"] = timings.get("propagate", 0.0) + time.perf_counter() - t
        return _relabel_by_size(labels)
    n_iterations = phenograph_scaling(n, n_iterations=n_iterations)["leiden_iterations"]
    bar = progress(None, total=3, desc=f"clustering {n:,} cells",
                   disable=None if show_progress is None else not show_progress)
    t0 = time.perf_counter()
    bar.set_postfix_str("neighbours")
    idx = knn_indices(X, k=k, n_jobs=n_jobs, approximate=approximate, random_state=random_state)
    bar.update(1)
    t1 = time.perf_counter()
    bar.set_postfix_str("Jaccard graph")
    graph = jaccard_edges(idx)
    del idx
    g = _to_igraph(graph)
    del graph
    bar.update(1)
    t2 = time.perf_counter()
    bar.set_postfix_str(method)
    # igraph's own C implementations of Leiden and Louvain. Measured on the MUSE demo data (1,000 cells, k=30): the
    # same partitions / modularity as leidenalg's RBConfigurationVertexPartition in 5 of 6 cases (equal modularity
    # to 3 decimals in all 6), 13-20x faster (15 ms vs 0.2-0.45 s CPU per call); MUSE clusters ~11 times per run.
    membership = _igraph_communities(g, resolution, random_state, method=method, n_iterations=n_iterations)
    bar.update(1)
    bar.close()
    if timings is not None:
        t3 = time.perf_counter()
        for key, v in (("knn", t1 - t0), ("graph", t2 - t1), ("leiden", t3 - t2)):
            timings[key] = timings.get(key, 0.0) + v
    return _relabel_by_size(membership)


def _igraph_communities(
    g, resolution: float, random_state: int, *, method: str = "leiden", n_iterations: int = -1
) -> np.ndarray:
    """igraph's Leiden (modularity objective) or Louvain (multilevel) on the edge attribute ``"weight"``.

    Seeded through igraph's RNG (a :class:`random.Random` of ``random_state``, restored afterwards).
    """
    import igraph as ig

    ig.set_random_number_generator(random.Random(int(random_state)))
    try:
        if method == "leiden":
            comm = g.community_leiden(objective_function="modularity", weights="weight", resolution=float(resolution),
                                      n_iterations=n_iterations)
        else:
            comm = g.community_multilevel(weights="weight", resolution=float(resolution))
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(comm.membership)


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
        return _igraph_communities(g, resolution, random_state, n_iterations=2)
    if backend != "leidenalg":
        raise StmorphInputError(f"leiden backend {backend!r}", expected="'leidenalg' or 'igraph'")
    import leidenalg as la

    part = la.RBConfigurationVertexPartition(g, weights="weight", resolution_parameter=float(resolution))
    opt = la.Optimiser()
    opt.set_rng_seed(int(random_state))
    opt.optimise_partition(part, n_iterations=2)
    return np.asarray(part.membership)


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
