"""Figures of evaluation results: balanced accuracy against chance, per-label recall, recall against counts,
pairwise PERMANOVA/PERMDISP p-values, Jaccard after matching, clustering metrics, gene prediction.

Every function takes an :class:`stmorph.eval.EvalResults` (or its summary dictionary, or a DataFrame where
noted) and returns a matplotlib :class:`~matplotlib.figure.Figure` that carries its caption
(:func:`stmorph.pl.caption`). The figures follow one convention (:mod:`stmorph.pl._style`): ``viridis`` for
"higher = better / more different", ``RdBu`` for differences to counts, grey for "no value", sizes that grow
with the number of labels.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._results import (
    balanced_accuracies,
    chance_level,
    compare_with_reference,
    pairwise_table_names,
    per_label_recall,
    reference_space,
    summary_of,
)
from ._style import (
    DIFF_CMAP,
    MISSING_COLOR,
    SCORE_CMAP,
    _figure,
    _set_caption,
    cell_inches,
    natural_sorted,
    space_colors,
    text_inches,
    tick_fontsize,
)

__all__ = [
    "balanced_accuracy_bars",
    "recall_heatmap",
    "recall_difference_heatmap",
    "per_label_bars",
    "pairwise_pvalue_heatmap",
    "pairwise_grid",
    "jaccard_heatmap",
    "clustering_metrics_bars",
    "ridge_r2_bars",
    "write_eval_figures",
    "count_significant_pairs",
]

_CLUSTER_METRICS = ("silhouette", "homogeneity", "completeness", "ami", "ari")


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=MISSING_COLOR)


def _pairwise_matrix(df: pd.DataFrame, value: str = "padj") -> pd.DataFrame:
    labs = natural_sorted(set(df["group1"].astype(str)) | set(df["group2"].astype(str)))
    M = pd.DataFrame(np.nan, index=labs, columns=labs)
    for g1, g2, v in zip(df["group1"].astype(str), df["group2"].astype(str), df[value]):
        M.loc[g1, g2] = v
        M.loc[g2, g1] = v
    return M


def count_significant_pairs(matrix: pd.DataFrame | np.ndarray, alpha: float = 0.05) -> tuple[int, int]:
    """Count the label pairs of a symmetric pairwise p-value matrix, each unordered pair once.

    The diagonal (a label against itself) is not a pair; a pair's p-value is read from the upper triangle, or
    from the lower one where only that is filled. Untested pairs (NaN in both) are not counted.

    Parameters
    ----------
    matrix
        ``(L, L)`` p-values (e.g. BH-adjusted), NaN where a pair was not tested.
    alpha
        Significance level (strictly below counts).

    Returns
    -------
    ``(n_significant, n_pairs)``.

    Examples
    --------
    >>> m = np.array([[np.nan, 0.01, 0.2], [0.01, np.nan, 0.03], [0.2, 0.03, np.nan]])
    >>> count_significant_pairs(m)
    (2, 3)
    """
    M = np.asarray(matrix, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"a square pairwise matrix is needed, got shape {M.shape}")
    iu = np.triu_indices(M.shape[0], k=1)
    upper, lower = M[iu], M.T[iu]
    p = np.where(np.isnan(upper), lower, upper)
    tested = ~np.isnan(p)
    return int((p[tested] < alpha).sum()), int(tested.sum())


def _annotate(ax: Any, vals: np.ndarray, fmt: str, fontsize: float, norm: Any, cmap: Any, *, bold: np.ndarray | None = None) -> None:
    for (i, j), v in np.ndenumerate(vals):
        if not np.isfinite(v):
            continue
        r, g, b, _ = cmap(norm(v))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=fontsize,
                color="white" if dark else "black",
                fontweight="bold" if bold is not None and bold[i, j] else "normal")


def _label_heatmap_size(n_rows: int, col_names: list[str], *, col_inches: float = 0.55, extra_width: float = 1.3,
                        row_names: list[str] | None = None) -> tuple[float, float, float]:
    fs = tick_fontsize(n_rows)
    ch = cell_inches(n_rows)
    ylab = text_inches(row_names or ["x" * 8], fs)
    xlab = text_inches(col_names, 8) * 0.75
    width = max(3.6, ylab + col_inches * len(col_names) + extra_width)
    height = max(2.4, ch * n_rows + xlab + 0.9)
    return width, height, fs


def balanced_accuracy_bars(results: Any) -> Any:
    """Balanced accuracy of every feature space as bars, with the chance level ``1 / number of labels``.

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.

    Returns
    -------
    The figure (``None`` without classification results).

    Examples
    --------
    >>> fig = balanced_accuracy_bars(res)  # doctest: +SKIP
    """
    ba = balanced_accuracies(results)
    if ba.empty:
        return None
    L = len(per_label_recall(results))
    chance = chance_level(L)
    names = list(ba.index)
    colors = space_colors(names)
    fig = _figure(max(5.5, 2.0 + text_inches(names, 8)), max(2.2, 0.38 * len(names) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(names))
    sd = ba["sd"].to_numpy(float)
    ax.barh(y, ba["balanced_accuracy"].to_numpy(float), color=[colors[n] for n in names],
            xerr=np.where(np.isfinite(sd), sd, 0.0) if np.isfinite(sd).any() else None, capsize=3)
    for yi, v in zip(y, ba["balanced_accuracy"]):
        inside = v > 0.8
        ax.text(v - 0.01 if inside else v + 0.01, yi, f"{v:.2f}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")
    ax.axvline(chance, color="0.2", ls="--", lw=1)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("balanced accuracy (mean recall over labels)")
    ax.set_title(f"Random forest, stratified CV, {L} labels; dashed line: chance 1/{L} = {chance:.2f}", fontsize=9)
    sd_txt = " Error bars: SD over the CV folds." if np.isfinite(sd).any() else ""
    return _set_caption(fig, f"Balanced accuracy of a random forest predicting the {L} labels from each feature space "
                             f"(mean over labels of the recall of each label, stratified cross-validation). The dashed "
                             f"line is chance, 1/{L} = {chance:.2f}: a space at chance finds the labels no better than "
                             f"guessing; 1 means every cell is assigned its label.{sd_txt}")


def _recall_frame(values: Any) -> pd.DataFrame:
    return values.astype(float) if isinstance(values, pd.DataFrame) else per_label_recall(values)


def recall_heatmap(values: Any) -> Any:
    """Recall of each label (rows) in each feature space (columns), annotated.

    Parameters
    ----------
    values
        ``EvalResults``, its summary, or a DataFrame labels x spaces of recalls.

    Returns
    -------
    The figure (``None`` without values).

    Examples
    --------
    >>> fig = recall_heatmap(pd.DataFrame({"TC": [0.9, 0.4]}, index=["a", "b"]))
    """
    rec = _recall_frame(values)
    if rec.empty:
        return None
    from matplotlib.colors import Normalize

    L = len(rec)
    cols = [str(c) for c in rec.columns]
    w, h, fs = _label_heatmap_size(L, cols, row_names=list(map(str, rec.index)))
    fig = _figure(w, h)
    ax = fig.subplots()
    cmap, norm = _cmap(SCORE_CMAP), Normalize(0, 1)
    vals = rec.to_numpy(float)
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, norm=norm, aspect="auto")
    _annotate(ax, vals, "{:.2f}", max(5.0, fs - 1), norm, cmap)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(L), list(map(str, rec.index)), fontsize=fs)
    ax.set_xlabel("feature space")
    ax.set_ylabel("label")
    ax.set_title("recall per label", fontsize=9)
    fig.colorbar(im, ax=ax, label="recall", shrink=min(1.0, 4.0 / h + 0.3))
    chance = chance_level(L)
    return _set_caption(fig, f"Recall of each label in each feature space: the fraction of the label's cells that the "
                             f"random forest assigns to that label (mean over the CV folds; the mean of a column is "
                             f"the space's balanced accuracy). Brighter is better; a classifier that guesses recalls "
                             f"each label {chance:.2f} (1/{L}) on average.")


def recall_difference_heatmap(results: Any, reference: str | None = None, *, margin: float = 0.05) -> Any:
    """Recall of each label in each space minus its recall in counts; the label-space pairs counted as "beats
    counts" (or "loses") by :func:`stmorph.pl.headline` are outlined.

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.
    reference
        The counts space (default: ``TC`` or the first counts-like name).
    margin
        Fixed margin when the summary holds no fold SDs.

    Returns
    -------
    The figure (``None`` without a counts space or without another space).

    Examples
    --------
    >>> fig = recall_difference_heatmap(res)  # doctest: +SKIP
    """
    cmp = compare_with_reference(results, reference, margin=margin)
    if cmp.empty:
        return None
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    ref = cmp.attrs["reference"]
    labels = natural_sorted(cmp["label"])
    spaces = list(dict.fromkeys(cmp["space"]))
    diff = cmp.pivot(index="label", columns="space", values="difference").loc[labels, spaces]
    beats = cmp.pivot(index="label", columns="space", values="beats").loc[labels, spaces].to_numpy(bool)
    loses = cmp.pivot(index="label", columns="space", values="loses").loc[labels, spaces].to_numpy(bool)
    L = len(labels)
    w, h, fs = _label_heatmap_size(L, spaces, col_inches=0.6, row_names=labels)
    fig = _figure(w, h)
    ax = fig.subplots()
    vals = diff.to_numpy(float)
    lim = max(0.1, float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 0.1)
    cmap, norm = _cmap(DIFF_CMAP), TwoSlopeNorm(0.0, -lim, lim)
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, norm=norm, aspect="auto")
    _annotate(ax, vals, "{:+.2f}", max(5.0, fs - 1), norm, cmap, bold=beats | loses)
    for (i, j), b in np.ndenumerate(beats | loses):
        if b:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.4, ec="black" if beats[i, j] else "0.45",
                                   ls="-" if beats[i, j] else ":"))
    ax.set_xticks(range(len(spaces)), spaces, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(L), labels, fontsize=fs)
    ax.set_xlabel("feature space")
    ax.set_ylabel("label")
    ax.set_title(f"recall minus {ref} recall", fontsize=9)
    fig.colorbar(im, ax=ax, label=f"recall difference to {ref}", shrink=min(1.0, 4.0 / h + 0.3))
    rule = ("more than the larger of the two fold SDs of that label's recall" if cmp.attrs.get("margin_kind") == "fold_sd"
            else f"more than {margin:.2f}")
    return _set_caption(fig, f"Where morphology adds to the counts: each cell is a space's recall of a label minus the "
                             f"recall of counts ({ref}) for that label. Blue: the space finds the label better than "
                             f"counts; red: worse. Framed cells (solid) differ by {rule} and are the ones the summary "
                             f"sentence counts as beating counts; dotted frames are losses by the same margin.")


def per_label_bars(values: pd.DataFrame, *, ylabel: str = "recall", title: str | None = None, ax: Any = None) -> Any:
    """Grouped bars of a per-label score (rows: labels, columns: feature spaces), one colour per space.

    Parameters
    ----------
    values
        DataFrame labels x spaces (NaN bars are left empty).
    ylabel
        Y-axis label.
    title
        Axes title.
    ax
        Matplotlib axes to draw into (a new figure when None).

    Returns
    -------
    The figure.

    Examples
    --------
    >>> fig = per_label_bars(pd.DataFrame({"TC": [0.9, 0.8]}, index=["a", "b"]))
    """
    L, S = len(values), max(1, values.shape[1])
    fs = tick_fontsize(L)
    if ax is None:
        fig = _figure(max(4.5, 0.16 * L * S + 2.5), 3.2 + text_inches(values.index, fs) * 0.9)
        ax = fig.subplots()
    fig = ax.figure
    colors = space_colors(values.columns)
    x = np.arange(L)
    w = 0.8 / S
    for i, col in enumerate(values.columns):
        ax.bar(x + i * w - 0.4 + w / 2, values[col].to_numpy(dtype=float), width=w, label=str(col), color=colors[str(col)])
    ax.set_xticks(x, list(map(str, values.index)), rotation=90, fontsize=fs)
    ax.set_xlim(-0.6, L - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="feature space")
    if title:
        ax.set_title(title, fontsize=9)
    return _set_caption(fig, f"{ylabel} of each label (x axis), one bar per feature space (colours in the legend).")


def pairwise_pvalue_heatmap(df: pd.DataFrame, *, value: str = "padj", title: str | None = None, alpha: float = 0.05,
                            vmax: float | None = None, ax: Any = None) -> Any:
    """Heatmap of pairwise test p-values between labels, as -log10 (brighter = more different).

    Parameters
    ----------
    df
        Output of :func:`stmorph.eval.pairwise_permanova` / :func:`~stmorph.eval.pairwise_permdisp`
        (columns ``group1``, ``group2`` and ``value``).
    value
        Column to show (``"padj"``: BH-adjusted, or ``"pvalue"``).
    title
        Axes title (default: ``n_sig/n_pairs pairs p_adj < alpha``).
    alpha
        Significance level marked on the colour bar and counted in the title.
    vmax
        Top of the colour scale in -log10 p (default: the smallest p-value present).
    ax
        Matplotlib axes to draw into (a new figure when None).

    Returns
    -------
    The figure.

    Examples
    --------
    >>> df = pd.DataFrame({"group1": ["a"], "group2": ["b"], "padj": [0.01]})
    >>> fig = pairwise_pvalue_heatmap(df)
    """
    M = _pairwise_matrix(df, value)
    n = len(M)
    fs = tick_fontsize(n)
    if ax is None:
        side = cell_inches(n) * n + text_inches(M.index, fs)
        fig = _figure(side + 1.4, side + 0.6)
        ax = fig.subplots()
    fig = ax.figure
    im = _draw_pvalues(ax, M, vmax=vmax, fontsize=fs)
    n_sig, n_pairs = count_significant_pairs(M, alpha)
    ax.set_title(title or f"{n_sig}/{n_pairs} pairs {'p_adj' if value == 'padj' else 'p'} < {alpha:g}", fontsize=9)
    _pvalue_colorbar(fig, im, [ax], alpha, value)
    return _set_caption(fig, _pvalue_caption("pairwise test", alpha, value))


def _draw_pvalues(ax: Any, M: pd.DataFrame, *, vmax: float | None, fontsize: float) -> Any:
    from matplotlib.colors import Normalize

    vals = M.to_numpy(float)
    with np.errstate(divide="ignore"):
        lg = -np.log10(np.clip(vals, 1e-300, None))
    top = vmax if vmax is not None else (float(np.nanmax(lg)) if np.isfinite(lg).any() else 1.0)
    im = ax.imshow(np.ma.masked_invalid(lg), cmap=_cmap(SCORE_CMAP), norm=Normalize(0, max(top, 1.4)))
    n = len(M)
    ax.set_xticks(range(n), list(M.columns), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), list(M.index), fontsize=fontsize)
    ax.tick_params(length=2, pad=1)
    return im


def _pvalue_colorbar(fig: Any, im: Any, axes: list, alpha: float, value: str) -> None:
    cb = fig.colorbar(im, ax=axes, shrink=0.6, aspect=25)
    cb.set_label(f"-log10 {'BH-adjusted p' if value == 'padj' else 'p'} (brighter = more different)")
    cb.ax.axhline(-np.log10(alpha), color="white", lw=1.5)
    cb.ax.axhline(-np.log10(alpha), color="black", lw=0.8, ls="--")
    cb.ax.text(-0.3, -np.log10(alpha), f"p = {alpha:g}", transform=cb.ax.get_yaxis_transform(), ha="right",
               va="center", fontsize=7)


def _pvalue_caption(what: str, alpha: float, value: str, n_perm: int | None = None) -> str:
    floor = (f" With {n_perm} permutations the smallest possible p is {1 / (n_perm + 1):.3g} "
             f"(-log10 = {np.log10(n_perm + 1):.1f}).") if n_perm else ""
    return (f"{what}: each cell is one pair of labels, coloured by -log10 of its "
            f"{'Benjamini-Hochberg-adjusted ' if value == 'padj' else ''}p-value; brighter cells are pairs the test "
            f"tells apart. The mark on the colour bar is p = {alpha:g}; the panel titles count the pairs below it "
            f"(each pair once). Grey: a label against itself.{floor}")


_TEST_TEXT = {
    "permanova": ("Pairwise PERMANOVA", "do two labels' cells have different centroids (locations) in the space?"),
    "permdisp_median": ("Pairwise PERMDISP (median)", "do two labels' cells differ in dispersion around their "
                                                      "spatial median?"),
    "permdisp_centroid": ("Pairwise PERMDISP (centroid)", "do two labels' cells differ in dispersion around their "
                                                          "centroid?"),
}


def pairwise_grid(results: Any, test: str = "permanova", *, spaces: list[str] | None = None,
                  ncols: int | None = None) -> Any:
    """Pairwise p-value heatmaps of one test, one panel per feature space, one colour scale.

    Parameters
    ----------
    results
        ``EvalResults`` (with its tables, e.g. from :func:`stmorph.pl.read_results`).
    test
        ``"permanova"``, ``"permdisp_median"`` or ``"permdisp_centroid"``.
    spaces
        Spaces to show (default: every space with the test's table).
    ncols
        Panels per row (default: 3 up to 15 labels, 2 up to 40, else 1, so that a page shows the tick labels at a
        readable size).

    Returns
    -------
    The figure (``None`` when no space has the test's table).

    Examples
    --------
    >>> fig = pairwise_grid(res, "permanova")  # doctest: +SKIP
    """
    s = summary_of(results)
    names = pairwise_table_names(s).get(test, {})
    tables = getattr(results, "tables", {}) or {}
    mats = {}
    for space, tname in names.items():
        if (spaces is None or space in spaces) and tname in tables and len(tables[tname]):
            mats[space] = _pairwise_matrix(tables[tname], "padj")
    if not mats:
        return None
    cfg = s.get("config") or {}
    alpha = float(cfg.get("alpha", 0.05))
    n_perm = cfg.get("permutations")
    vmax = np.log10(int(n_perm) + 1) if n_perm else None
    n = max(len(m) for m in mats.values())
    fs = tick_fontsize(n)
    labw = text_inches(next(iter(mats.values())).index, fs)
    side = cell_inches(n) * n
    k = len(mats)
    if ncols is None:
        ncols = 3 if n <= 15 else 2 if n <= 40 else 1
    nc = min(ncols, k)
    nr = int(np.ceil(k / nc))
    alpha_txt = f"{alpha:g}"
    titles = {sp: f"{sp}: {count_significant_pairs(M, alpha)[0]}/{count_significant_pairs(M, alpha)[1]} pairs "
                  f"p_adj < {alpha_txt}" for sp, M in mats.items()}
    col_w = max(side + labw + 0.15, text_inches(titles.values(), 8) + 0.3)  # neighbouring titles stay apart
    fig = _figure(nc * col_w + 1.1, nr * (side + labw + 0.4) + 0.45)
    axes = np.atleast_1d(fig.subplots(nr, nc, squeeze=False)).ravel()
    im = None
    for ax in axes[k:]:
        ax.set_axis_off()
    for ax, (space, M) in zip(axes, mats.items()):
        im = _draw_pvalues(ax, M, vmax=vmax, fontsize=fs)
        ax.set_title(titles[space], fontsize=8)
    name, question = _TEST_TEXT.get(test, (test.replace("_", " "), ""))
    fig.suptitle(name, fontsize=10)
    _pvalue_colorbar(fig, im, list(axes[:k]), alpha, "padj")
    return _set_caption(fig, f"{name}, {question} " + _pvalue_caption("One panel per feature space", alpha, "padj",
                                                                        int(n_perm) if n_perm else None))


def jaccard_heatmap(values: Any, *, title: str | None = None, ax: Any = None) -> Any:
    """Heatmap of per-label Jaccard indices after Hungarian matching of clusters to labels.

    Parameters
    ----------
    values
        ``EvalResults``, its summary (every space's clustering and every multiplex pair), or a DataFrame
        labels x clusterings (NaN = label left unmatched).
    title
        Axes title.
    ax
        Matplotlib axes to draw into (a new figure when None).

    Returns
    -------
    The figure (``None`` without values).

    Examples
    --------
    >>> fig = jaccard_heatmap(pd.DataFrame({"TC": [0.9, np.nan]}, index=["a", "b"]))
    """
    if isinstance(values, pd.DataFrame):
        df = values.astype(float)
    else:
        s = summary_of(values)
        jac = {n: (e.get("clustering") or {}).get("jaccard") for n, e in (s.get("feature_spaces") or {}).items()}
        jac |= {f"multiplex {n}": e.get("jaccard") for n, e in (s.get("multiplex") or {}).items()}
        jac = {k: v for k, v in jac.items() if v}
        if not jac:
            return None
        df = pd.DataFrame(jac).astype(float)
        df = df.loc[natural_sorted(df.index)]
    if df.empty:
        return None
    from matplotlib.colors import Normalize

    L = len(df)
    cols = [str(c) for c in df.columns]
    if ax is None:
        w, h, fs = _label_heatmap_size(L, cols, row_names=list(map(str, df.index)))
        fig = _figure(w, h)
        ax = fig.subplots()
    else:
        fs = tick_fontsize(L)
    fig = ax.figure
    cmap, norm = _cmap(SCORE_CMAP), Normalize(0, 1)
    vals = df.to_numpy(float)
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, norm=norm, aspect="auto")
    _annotate(ax, vals, "{:.2f}", max(5.0, fs - 1), norm, cmap)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(L), list(map(str, df.index)), fontsize=fs)
    ax.set_xlabel("clustering")
    ax.set_ylabel("label")
    ax.set_title(title or "Jaccard index per label", fontsize=9)
    fig.colorbar(im, ax=ax, label="Jaccard index", shrink=min(1.0, 4.0 / fig.get_size_inches()[1] + 0.3))
    return _set_caption(fig, "How well each label is recovered as one cluster: clusters of the Leiden clustering tuned "
                             "by silhouette (columns) are matched one-to-one to labels (Hungarian matching) and each "
                             "cell shows the Jaccard index |label and cluster| / |label or cluster| of the matched "
                             "pair: 1 = the cluster is exactly the label, 0 = no overlap. Grey: the label got no "
                             "cluster (fewer clusters than labels).")


def _metric_frame(results: Any) -> pd.DataFrame:
    s = summary_of(results)
    rows = {}
    for n, e in (s.get("feature_spaces") or {}).items():
        cl = e.get("clustering") or {}
        if cl:
            rows[n] = {m: cl.get(m) for m in (*_CLUSTER_METRICS, "n_clusters")}
    for n, e in (s.get("multiplex") or {}).items():
        rows[f"multiplex {n}"] = {m: e.get(m) for m in (*_CLUSTER_METRICS, "n_clusters")}
    return pd.DataFrame.from_dict(rows, orient="index").astype(float) if rows else pd.DataFrame()


def clustering_metrics_bars(results: Any) -> Any:
    """Clustering scores against the labels (silhouette, homogeneity, completeness, AMI, ARI): one group of bars
    per metric, one bar per clustering (feature spaces and multiplex pairs); the legend sits outside the axes.

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.

    Returns
    -------
    The figure (``None`` without clustering results).

    Examples
    --------
    >>> fig = clustering_metrics_bars(res)  # doctest: +SKIP
    """
    tab = _metric_frame(results)
    if tab.empty:
        return None
    metrics = [m for m in _CLUSTER_METRICS if m in tab.columns]
    names = list(tab.index)
    colors = space_colors(names)
    k = len(names)
    fig = _figure(max(6.0, 0.9 + len(metrics) * (0.13 * k + 0.4)) + text_inches(names, 8) + 0.6, 3.6)
    ax = fig.subplots()
    w = 0.8 / k
    x = np.arange(len(metrics))
    for i, n in enumerate(names):
        hatch = "//" if n.startswith("multiplex ") else None
        ax.bar(x + i * w - 0.4 + w / 2, tab.loc[n, metrics].to_numpy(float), width=w, color=colors[n], label=n,
               hatch=hatch, edgecolor="white" if hatch else None, linewidth=0)
    ax.set_xticks(x, [m if m in ("silhouette", "homogeneity", "completeness") else m.upper() for m in metrics])
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel("score (1 = clusters are the labels)")
    ax.set_title("Leiden clustering tuned by silhouette, scored against the labels", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="clustering")
    return _set_caption(fig, "Each feature space is clustered without the labels (Leiden, resolution and neighbours "
                             "chosen by the silhouette of the clustering); hatched bars are multiplex clusterings of "
                             "two spaces. Silhouette (-1 to 1) measures how compact and separated the clusters are; "
                             "homogeneity (each cluster holds one label), completeness (each label sits in one "
                             "cluster), AMI and ARI (agreement of clusters and labels, 0 = chance) compare the "
                             "clusters with the labels. Higher is better.")


def colocalization_bars(results: Any, *, alpha: float = 0.05) -> Any:
    """Spatial co-localization score (SCS, MUSE) of every cluster: one panel per clustering, one bar per cluster.

    Parameters
    ----------
    results
        ``EvalResults`` or its summary, with ``summary["colocalization"]`` (``stmorph.pipeline`` with
        ``colocalization = true``, or :func:`stmorph.eval.colocalization_score` results in that form).
    alpha
        Permutation p-value below which a bar is drawn in colour.

    Returns
    -------
    The figure (``None`` without co-localization results).

    Examples
    --------
    >>> fig = colocalization_bars(res)  # doctest: +SKIP
    """
    col = summary_of(results).get("colocalization") or {}
    col = {k: v for k, v in col.items() if v}
    if not col:
        return None
    n = len(col)
    widest = max(len(v) for v in col.values())
    fig = _figure(max(5.0, 1.2 + 0.28 * widest), 2.4 * n)
    axes = np.atleast_1d(fig.subplots(n, 1, squeeze=False)[:, 0])
    colors = space_colors(list(col))
    for ax, (name, clusters) in zip(axes, col.items(), strict=True):
        df = pd.DataFrame(clusters).T
        df["scs"] = pd.to_numeric(df["scs"], errors="coerce")
        df["p_value"] = pd.to_numeric(df["p_value"], errors="coerce")
        df = df.sort_values("scs", ascending=False)
        sig = df["p_value"] < alpha
        ax.bar(np.arange(len(df)), df["scs"].fillna(0).to_numpy(),
               color=[colors[name] if v else "0.8" for v in sig])
        ax.set_xticks(np.arange(len(df)), [str(c) for c in df.index], fontsize=tick_fontsize(len(df)))
        ax.set_ylabel("SCS")
        ax.set_title(f"{name}: {int(sig.sum())} of {len(df)} clusters co-localized (p < {alpha:g})", fontsize=9)
        ax.axhline(0, color="0.5", lw=0.5)
    axes[-1].set_xlabel("cluster (sorted by score)")
    return _set_caption(fig, "Spatial co-localization score of each cluster (MUSE's SCS: how much closer the cells "
                             "of a cluster lie to each other on the tissue than random cells of the same number, "
                             "tested by permutation). Coloured bars are clusters with a permutation p-value below "
                             f"{alpha:g}; grey bars are not distinguishable from random placement. A clustering "
                             "whose clusters co-localize picks up tissue structure, not only cell identity.")


def ridge_r2_bars(results: Any, space: str, *, top: int = 30) -> Any:
    """The genes best predicted from a feature space (ridge regression, held-out R²).

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.
    space
        A space listed under ``summary["ridge"]``.
    top
        Number of genes shown.

    Returns
    -------
    The figure (``None`` without results for ``space``).

    Examples
    --------
    >>> fig = ridge_r2_bars(res, "LS2")  # doctest: +SKIP
    """
    rr = (summary_of(results).get("ridge") or {}).get(space) or {}
    r2 = pd.Series(rr.get("r2", {}), dtype=float).dropna().sort_values(ascending=False)
    if r2.empty:
        return None
    shown = r2.head(top)
    fig = _figure(max(6.0, 0.2 * len(shown) + 1.5), 2.6 + text_inches(shown.index, 7) * 0.75)
    ax = fig.subplots()
    ax.bar(range(len(shown)), shown.to_numpy(), color=space_colors([space])[space])
    ax.set_xticks(range(len(shown)), list(shown.index), rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylabel("held-out R²")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_title(f"genes best predicted from {space} (top {len(shown)} of {len(r2)})", fontsize=9)
    n_pos = int((r2 > 0).sum())
    return _set_caption(fig, f"How much of each gene's normalised expression the {space} features predict: ridge "
                             f"regression fitted on 80% of the cells, R² on the other 20% (1 = perfect, 0 = no better "
                             f"than the mean, negative = worse). {n_pos} of {len(r2)} genes have R² > 0; the "
                             f"{len(shown)} best are shown.")


def write_eval_figures(results: Any, out_dir: str | PathLike, *, dpi: int = 120) -> list[Path]:
    """Write the evaluation's figures as PNG files (the same figures the HTML report shows).

    Parameters
    ----------
    results
        Output of :func:`stmorph.eval.evaluate_spaces` (or :func:`stmorph.pl.read_results`).
    out_dir
        Folder for the PNGs.
    dpi
        Resolution.

    Returns
    -------
    Paths written: ``balanced_accuracy.png``, ``per_label_balanced_accuracy.png`` (the per-label recall),
    ``recall_vs_counts.png``, ``pairwise_<test>.png``, ``jaccard.png``, ``clustering_metrics.png``,
    ``ridge_<space>.png``, as far as the results have them.

    Examples
    --------
    >>> write_eval_figures(res, "figures")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    figs: dict[str, Any] = {
        "balanced_accuracy": balanced_accuracy_bars(results),
        "per_label_balanced_accuracy": recall_heatmap(results),
        "recall_vs_counts": recall_difference_heatmap(results) if reference_space(results) else None,
    }
    for test in pairwise_table_names(results):
        figs[f"pairwise_{test}"] = pairwise_grid(results, test)
    figs["jaccard"] = jaccard_heatmap(results)
    figs["clustering_metrics"] = clustering_metrics_bars(results)
    for space in summary_of(results).get("ridge") or {}:
        figs[f"ridge_{space}"] = ridge_r2_bars(results, space)
    for name, fig in figs.items():
        if fig is None:
            continue
        p = out / f"{name}.png"
        fig.savefig(p, dpi=dpi)
        written.append(p)
    return written
