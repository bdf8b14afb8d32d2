"""stmorph.pp: preprocessing of samples before feature learning and evaluation.

* :func:`normalize_counts` - counts scaled to the median total and ``log1p`` (scanpy's default recipe)
* gene panels: :func:`pca_gene_subset`, :func:`de_gene_subset` (:func:`de_gene_columns` chooses the DE panel inside
  each training fold, :func:`wilcoxon_scores` are its rank-sum scores), :func:`random_gene_subset`
* :func:`annotate_by_reference` - cell-type labels from reference expression profiles (for samples without labels)
"""

from ._annotate import annotate_by_reference, reference_profiles
from ._normalize import normalize_counts
from ._panels import de_gene_columns, de_gene_subset, pca_gene_subset, random_gene_subset, wilcoxon_scores

__all__ = [
    "annotate_by_reference",
    "de_gene_columns",
    "de_gene_subset",
    "normalize_counts",
    "pca_gene_subset",
    "random_gene_subset",
    "reference_profiles",
    "wilcoxon_scores",
]
