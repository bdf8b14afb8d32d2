"""stmorph.pl"""

from ._eval import jaccard_heatmap, pairwise_pvalue_heatmap, per_label_bars, write_eval_figures  # noqa: F401
