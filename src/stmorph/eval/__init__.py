"""stmorph.eval: the study's evaluation suite over any feature space.

* statistics: :func:`permanova`, :func:`permdisp`, :func:`pairwise_permanova`, :func:`pairwise_permdisp`
  (Euclidean, no n x n distance matrix), :func:`benjamini_hochberg`
* classification: :func:`rf_classification` (random forest: :func:`forest_predict_proba`)
* clustering: :func:`leiden_tune`, :func:`multiplex_leiden` (``protocol="fast"`` or the study's ``"study"``),
  :func:`cluster_metrics`, :func:`silhouette`, :func:`hungarian_jaccard`, :func:`study_neighbors`
* genes: :func:`ridge_gene_prediction`, :func:`latent_f_tests`, gene subsets (:func:`pca_gene_subset`,
  :func:`de_gene_subset`, :func:`random_gene_subset`; :func:`de_gene_columns` chooses the DE panel inside each
  training fold), :func:`normalize_counts`
* spatial: :func:`colocalization_score` (MUSE's spatial co-localization score, SCS, with permutation p-values),
  :func:`spatial_colocalization_score` (one cluster), :func:`knn_colocalization` (same-cluster kNN fraction)
* one call: :class:`EvalConfig` + :func:`evaluate_spaces`, :func:`write_results`
* inputs: :func:`read_feature_table`, :func:`read_label_table`, :func:`align_inputs`, :func:`drop_small_labels`
"""

from ._classify import ClassificationResult, rf_classification
from ._cluster import (
    LeidenResult,
    MultiplexResult,
    cluster_metrics,
    hungarian_jaccard,
    knn_graph,
    leiden_tune,
    multiplex_leiden,
    silhouette,
    study_neighbors,
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
from ._genes import (
    de_gene_columns,
    de_gene_subset,
    latent_f_tests,
    normalize_counts,
    pca_gene_subset,
    random_gene_subset,
    ridge_gene_prediction,
    wilcoxon_scores,
)
from ._spatial import colocalization_score, knn_colocalization, spatial_colocalization_score
from ._stats import (
    TestResult,
    benjamini_hochberg,
    geometric_median_batch,
    pairwise_permanova,
    pairwise_permdisp,
    permanova,
    permdisp,
    zscore,
)

__all__ = [
    "ClassificationResult",
    "EvalConfig",
    "EvalResults",
    "LeidenResult",
    "MultiplexResult",
    "TestResult",
    "align_inputs",
    "benjamini_hochberg",
    "cluster_metrics",
    "colocalization_score",
    "de_gene_columns",
    "de_gene_subset",
    "drop_small_labels",
    "evaluate_spaces",
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
    "pca_gene_subset",
    "permanova",
    "permdisp",
    "random_gene_subset",
    "read_feature_table",
    "read_label_table",
    "rf_classification",
    "forest_predict_proba",
    "ridge_gene_prediction",
    "silhouette",
    "spatial_colocalization_score",
    "split_table_key",
    "study_neighbors",
    "wilcoxon_scores",
    "write_results",
    "zscore",
]
