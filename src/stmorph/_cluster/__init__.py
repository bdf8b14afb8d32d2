"""Graph construction and community detection, shared by MUSE's pseudo-labels and the evaluation's Leiden tuning.

* :mod:`._graphs` - one neighbour search (exact up to :data:`APPROX_KNN_MIN_CELLS` cells, NN-descent above) and
  the graphs built on it: neighbour indices and PhenoGraph's Jaccard graph, UMAP connectivities
  (:func:`knn_graph`), the study's scanpy graph (:func:`study_neighbors`);
* :mod:`._community` - Leiden / Louvain on those graphs: PhenoGraph (:func:`phenograph_leiden`), leidenalg single
  and multiplex, the study's scanpy/muon calls, and the worker-process runner of many seeded runs.

The tuning protocols and the clustering metrics that use them live in :mod:`stmorph.eval._cluster`.
"""

from ._community import nearest_centroid_labels, phenograph_leiden, phenograph_scaling
from ._graphs import (
    APPROX_KNN_MIN_CELLS,
    SCANPY_APPROX_MIN_CELLS,
    STUDY_SEED,
    jaccard_edges,
    jaccard_graph,
    knn_graph,
    knn_indices,
    study_neighbors,
)

__all__ = [
    "APPROX_KNN_MIN_CELLS",
    "SCANPY_APPROX_MIN_CELLS",
    "STUDY_SEED",
    "jaccard_edges",
    "jaccard_graph",
    "knn_graph",
    "knn_indices",
    "nearest_centroid_labels",
    "phenograph_leiden",
    "phenograph_scaling",
    "study_neighbors",
]
