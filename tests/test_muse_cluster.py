"""Tests of the PhenoGraph-style clustering helper (stmorph._cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from stmorph import StmorphInputError
from stmorph._cluster import jaccard_edges, jaccard_graph, knn_indices, phenograph_leiden, phenograph_scaling


def _blobs(n_per=60, n_blobs=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, size=(n_blobs, d))
    X = np.vstack([c + rng.normal(0, 0.5, size=(n_per, d)) for c in centers])
    return X, np.repeat(np.arange(n_blobs), n_per)


def test_knn_matches_bruteforce():
    X, _ = _blobs(20, 3)
    idx = knn_indices(X, k=5)
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    np.fill_diagonal(D, np.inf)
    ref = np.argsort(D, axis=1, kind="stable")[:, :5]
    assert np.array_equal(np.sort(idx, 1), np.sort(ref, 1))


def test_jaccard_weights_by_hand():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    k = 6
    idx = knn_indices(X, k=k)
    W = jaccard_graph(idx).toarray()
    sets = [set(r) for r in idx]
    ref = np.zeros((40, 40))
    for i in range(40):
        for j in idx[i]:
            ref[i, j] = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
    ref = (ref + ref.T) / 2
    np.testing.assert_allclose(W, ref, atol=1e-6)
    assert np.allclose(W, W.T)
    # the edge list phenograph_leiden uses: every pair with a weight once, u < v, row-major
    n, edges, w = jaccard_edges(idx)
    iu, ju = np.nonzero(np.triu(ref, k=1))
    assert n == 40 and edges.tolist() == np.column_stack([iu, ju]).tolist()
    np.testing.assert_allclose(w, ref[iu, ju], atol=1e-6)
    bad = idx.copy()
    bad[3, 0] = -1  # an unfilled neighbour slot must not read another row's list
    with pytest.raises(StmorphInputError, match="outside"):
        jaccard_edges(bad)


@pytest.mark.parametrize("method", ["leiden", "louvain"])
def test_recovers_blobs_and_is_deterministic(method):
    X, truth = _blobs()
    a = phenograph_leiden(X, k=30, method=method, random_state=3)
    b = phenograph_leiden(X, k=30, method=method, random_state=3)
    assert np.array_equal(a, b)
    assert adjusted_rand_score(truth, a) == pytest.approx(1.0)
    # labels numbered by decreasing size
    counts = np.bincount(a)
    assert np.all(np.diff(counts) <= 0)


def test_resolution_increases_clusters():
    X, _ = _blobs(100, 2)
    lo = phenograph_leiden(X, k=15, resolution=0.5)
    hi = phenograph_leiden(X, k=15, resolution=5.0)
    assert hi.max() > lo.max()


def test_bad_input():
    with pytest.raises(StmorphInputError, match="NaN"):
        phenograph_leiden(np.array([[0.0, np.nan], [1, 1], [2, 2]]))
    with pytest.raises(StmorphInputError, match="method"):
        phenograph_leiden(np.zeros((5, 2)), method="kmeans")


def test_leiden_matches_leidenalg_modularity():
    # igraph's C Leiden (used for speed) must find partitions as good as leidenalg's on the same graph
    import igraph as ig
    import leidenalg
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    centers = rng.normal(0, 2.0, size=(6, 10))
    X = np.vstack([c + rng.normal(0, 1.0, size=(80, 10)) for c in centers])  # overlapping blobs
    W = sp.triu(jaccard_graph(knn_indices(X, k=20)), k=1).tocoo()
    g = ig.Graph(n=X.shape[0], edges=np.column_stack([W.row, W.col]))
    w = W.data.astype(float)
    ref = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=w.tolist(),
                                   resolution_parameter=1.0, seed=0, n_iterations=-1)
    ours = phenograph_leiden(X, k=20, random_state=0)
    q_ref = g.modularity(ref.membership, weights=w)
    q_ours = g.modularity(ours.tolist(), weights=w)
    assert q_ours == pytest.approx(q_ref, abs=0.01)
    assert adjusted_rand_score(ref.membership, ours) > 0.8


def test_nearest_centroid_by_hand_and_by_definition():
    from stmorph._cluster import nearest_centroid_labels

    # by hand: centroids of label 0 at 0.5 (rows 0, 1) and of label 1 at 10; 2 -> 0, 8 -> 1, 5.2 -> 0 (4.7 < 4.8)
    ref = np.array([[0.0], [1.0], [10.0]])
    assert nearest_centroid_labels(np.array([[2.0], [8.0], [5.2]]), ref, np.array([0, 0, 1])).tolist() == [0, 1, 0]
    # the definition: argmin over labels of the Euclidean distance to the label's mean, written out with loops
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(200, 5))
    lab = rng.integers(0, 4, size=200)
    X = rng.normal(size=(500, 5))
    centroids = {c: ref[lab == c].mean(axis=0) for c in np.unique(lab)}
    want = [min(centroids, key=lambda c: float(np.sqrt(((x - centroids[c]) ** 2).sum()))) for x in X]
    np.testing.assert_array_equal(nearest_centroid_labels(X, ref, lab), want)


def test_subsampled_clustering_recovers_blobs_and_reports_timings():
    X, truth = _blobs(n_per=150, n_blobs=4)
    t: dict[str, float] = {}
    a = phenograph_leiden(X, k=15, max_cells=200, random_state=1, timings=t)
    assert set(t) == {"knn", "graph", "leiden", "propagate"} and all(v >= 0 for v in t.values())
    assert adjusted_rand_score(truth, a) == pytest.approx(1.0)
    np.testing.assert_array_equal(a, phenograph_leiden(X, k=15, max_cells=200, random_state=1))
    # below max_cells nothing changes
    np.testing.assert_array_equal(phenograph_leiden(X, k=15, max_cells=10_000), phenograph_leiden(X, k=15))


def test_large_n_switches_to_two_leiden_iterations(monkeypatch):
    """Above APPROX_KNN_MIN_CELLS rows Leiden runs 2 iterations (not until stable); phenograph_scaling says so."""
    import stmorph._cluster._community as com

    assert phenograph_scaling(50_000) == {"n_cells": 50_000, "clustered_cells": 50_000, "approximate_knn": False,
                                          "leiden_iterations": -1, "propagated": False}
    big = phenograph_scaling(1_000_000, max_cells=20_000)
    assert big["clustered_cells"] == 20_000 and big["propagated"] and big["leiden_iterations"] == -1
    assert phenograph_scaling(1_000_000)["approximate_knn"] and phenograph_scaling(1_000_000)["leiden_iterations"] == 2
    seen: list[int] = []
    real = com._igraph_communities

    def spy(g, resolution, random_state, *, method="leiden", n_iterations=-1):
        seen.append(n_iterations)
        return real(g, resolution, random_state, method=method, n_iterations=n_iterations)

    monkeypatch.setattr(com, "_igraph_communities", spy)
    X, truth = _blobs(n_per=60, n_blobs=4)
    phenograph_leiden(X, k=15)
    monkeypatch.setattr(com, "APPROX_KNN_MIN_CELLS", 100)  # 240 rows count as large now
    labels = phenograph_leiden(X, k=15, approximate=False)
    assert seen == [-1, 2] and adjusted_rand_score(truth, labels) == pytest.approx(1.0)
