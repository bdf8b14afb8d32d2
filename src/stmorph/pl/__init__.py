"""stmorph.pl: the figures of a study, from results objects, for notebooks and for the HTML report.

Every figure function returns a matplotlib :class:`~matplotlib.figure.Figure` that carries its caption
(:func:`caption`: what it shows and how to read it). One convention throughout: fixed colours per label
(:func:`label_colors`) and per feature space (:func:`space_colors`), ``viridis`` for "higher = better / more
different", ``RdBu`` for differences to counts, grey for "no value", sizes that grow with the number of labels.

* evaluation (``EvalResults`` or its summary): :func:`balanced_accuracy_bars` (with chance), :func:`recall_heatmap`,
  :func:`recall_difference_heatmap` (against counts), :func:`pairwise_grid` / :func:`pairwise_pvalue_heatmap`,
  :func:`jaccard_heatmap`, :func:`clustering_metrics_bars`, :func:`colocalization_bars`, :func:`ridge_r2_bars`,
  :func:`per_label_bars`;
  :func:`write_eval_figures` writes them all
* sample and spaces: :func:`sample_overview`, :func:`example_crops`, :func:`embedding_grid`
* numbers behind them: :func:`read_results` (an evaluation folder back into ``EvalResults``),
  :func:`per_label_recall`, :func:`chance_level`, :func:`compare_with_reference`, :func:`headline` (the one-sentence
  answer), :func:`margin_note`

Examples
--------
>>> import stmorph as sm  # doctest: +SKIP
>>> res = sm.pl.read_results("eval_out")  # doctest: +SKIP
>>> print(sm.pl.headline(res))  # doctest: +SKIP
>>> sm.pl.recall_difference_heatmap(res)  # doctest: +SKIP
"""

from ._eval import (
    balanced_accuracy_bars,
    clustering_metrics_bars,
    colocalization_bars,
    count_significant_pairs,
    jaccard_heatmap,
    pairwise_grid,
    pairwise_pvalue_heatmap,
    per_label_bars,
    recall_difference_heatmap,
    recall_heatmap,
    ridge_r2_bars,
    write_eval_figures,
)
from ._results import (
    balanced_accuracies,
    chance_level,
    compare_with_reference,
    headline,
    margin_note,
    n_labels,
    pairwise_table_names,
    per_label_recall,
    per_label_recall_sd,
    read_results,
    reference_space,
)
from ._sample import embedding_grid, example_crops, sample_overview, scale_bar_length
from ._style import caption, label_colors, natural_sorted, space_colors

__all__ = [
    "balanced_accuracies",
    "balanced_accuracy_bars",
    "caption",
    "chance_level",
    "clustering_metrics_bars",
    "colocalization_bars",
    "compare_with_reference",
    "count_significant_pairs",
    "embedding_grid",
    "example_crops",
    "headline",
    "jaccard_heatmap",
    "label_colors",
    "margin_note",
    "n_labels",
    "natural_sorted",
    "pairwise_grid",
    "pairwise_pvalue_heatmap",
    "pairwise_table_names",
    "per_label_bars",
    "per_label_recall",
    "per_label_recall_sd",
    "read_results",
    "recall_difference_heatmap",
    "recall_heatmap",
    "reference_space",
    "ridge_r2_bars",
    "sample_overview",
    "scale_bar_length",
    "space_colors",
    "write_eval_figures",
]
