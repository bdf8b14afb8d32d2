"""stmorph.eval: the study's evaluation suite over any feature space.

* statistics: :func:`permanova`, :func:`permdisp`, :func:`pairwise_permanova`, :func:`pairwise_permdisp`
  (Euclidean, no n x n distance matrix), :func:`benjamini_hochberg`, :func:`geometric_median_batch`
* classification: :func:`rf_classification` (random forest: :func:`forest_predict_proba`)
* clustering: :func:`leiden_tune`, :func:`multiplex_leiden` (``protocol="fast"`` or the study's ``"study"``),
  :func:`cluster_metrics`, :func:`silhouette`, :func:`hungarian_jaccard`; their graphs :func:`knn_graph` and
  :func:`study_neighbors` (graph construction and community detection live in ``stmorph._cluster``)
* genes: :func:`ridge_gene_prediction`, :func:`latent_f_tests` (normalisation and gene panels are preprocessing:
  :mod:`stmorph.pp`; :func:`normalize_counts` stays importable from here)
* spatial: :func:`colocalization_score` (MUSE's spatial co-localization score, SCS, with permutation p-values),
  :func:`spatial_colocalization_score` (one cluster), :func:`knn_colocalization` (same-cluster kNN fraction)
* one call: :class:`EvalConfig` + :func:`evaluate_spaces`, :func:`write_results`
* inputs: :func:`read_feature_table`, :func:`read_label_table`, :func:`align_inputs`, :func:`drop_small_labels`
* scale: above :data:`EXACT_MAX_CELLS` cells the permutation tests and silhouettes run on seeded stratified
  subsamples (:func:`capped_subsample`, :func:`stratified_sample`), and above :data:`APPROX_KNN_MIN_CELLS` the
  Leiden graphs use approximate neighbours (``docs/distributed.md``, "Evaluation at scale")
"""

from .._cluster import knn_graph, study_neighbors
from ..pp._normalize import normalize_counts
from ._classify import ClassificationResult, rf_classification
from ._cluster import (
    LeidenResult,
    MultiplexResult,
    cluster_metrics,
    hungarian_jaccard,
    leiden_tune,
    multiplex_leiden,
    silhouette,
)
from ._evaluate import (
    EvalConfig,
    EvalResults,
    align_inputs,
    drop_small_labels,
    evaluate_spaces,
    read_feature_table,
    read_label_table,
    split_table_key,
    write_results,
)
from ._forest import forest_predict_proba
from ._genes import latent_f_tests, ridge_gene_prediction
from ._pairwise import benjamini_hochberg, pairwise_permanova, pairwise_permdisp
from ._permanova import permanova
from ._permdisp import geometric_median_batch, permdisp
from ._permutation import TestResult, zscore
from ._scale import (
    APPROX_KNN_MIN_CELLS,
    EXACT_MAX_CELLS,
    MAX_CELLS_PER_LABEL,
    SILHOUETTE_SAMPLE,
    capped_subsample,
    stratified_sample,
)
from ._spatial import colocalization_score, knn_colocalization, spatial_colocalization_score

__all__ = [
    "APPROX_KNN_MIN_CELLS",
    "ClassificationResult",
    "EXACT_MAX_CELLS",
    "EvalConfig",
    "EvalResults",
    "LeidenResult",
    "MAX_CELLS_PER_LABEL",
    "MultiplexResult",
    "SILHOUETTE_SAMPLE",
    "TestResult",
    "align_inputs",
    "benjamini_hochberg",
    "capped_subsample",
    "cluster_metrics",
    "colocalization_score",
    "drop_small_labels",
    "evaluate_spaces",
    "forest_predict_proba",
    "geometric_median_batch",
    "hungarian_jaccard",
    "knn_colocalization",
    "knn_graph",
    "latent_f_tests",
    "leiden_tune",
    "multiplex_leiden",
    "normalize_counts",
    "pairwise_permanova",
    "pairwise_permdisp",
    "permanova",
    "permdisp",
    "read_feature_table",
    "read_label_table",
    "rf_classification",
    "ridge_gene_prediction",
    "silhouette",
    "spatial_colocalization_score",
    "split_table_key",
    "stratified_sample",
    "study_neighbors",
    "write_results",
    "zscore",
]
