"""Figures for evaluation results: pairwise p-value heatmaps, per-label balanced accuracy, Jaccard."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["pairwise_pvalue_heatmap", "per_label_bars", "jaccard_heatmap", "write_eval_figures", "count_significant_pairs"]


def _pairwise_matrix(df: pd.DataFrame, value: str = "padj") -> pd.DataFrame:
    labs = sorted(set(df["group1"]) | set(df["group2"]))
    M = pd.DataFrame(np.nan, index=labs, columns=labs)
    for g1, g2, v in zip(df["group1"], df["group2"], df[value]):
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


def pairwise_pvalue_heatmap(df: pd.DataFrame, *, value: str = "padj", title: str | None = None, ax: Any = None) -> Any:
    """Heatmap of pairwise test p-values (-log10) between labels.

    Parameters
    ----------
    df
        Output of :func:`stmorph.eval.pairwise_permanova` / :func:`~stmorph.eval.pairwise_permdisp`.
    value
        Column to show (``"padj"`` or ``"pvalue"``).
    title
        Axes title.
    ax
        Matplotlib axes (new figure when None).

    Returns
    -------
    The matplotlib axes.

    Examples
    --------
    >>> df = pd.DataFrame({"group1": ["a"], "group2": ["b"], "padj": [0.01]})
    >>> ax = pairwise_pvalue_heatmap(df)
    """
    import matplotlib.pyplot as plt

    M = _pairwise_matrix(df, value)
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.35 * len(M), 0.8 + 0.35 * len(M)))
    im = ax.imshow(-np.log10(M.to_numpy(dtype=float)), cmap="viridis")
    ax.set_xticks(range(len(M)), M.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(M)), M.index, fontsize=7)
    ax.figure.colorbar(im, ax=ax, label=f"-log10 {value}")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def per_label_bars(values: pd.DataFrame, *, ylabel: str = "balanced accuracy", title: str | None = None, ax: Any = None) -> Any:
    """Grouped bars of a per-label score (rows: labels, columns: feature spaces).

    Parameters
    ----------
    values
        DataFrame labels x spaces (NaN bars are left empty).
    ylabel
        Y-axis label.
    title
        Axes title.
    ax
        Matplotlib axes (new figure when None).

    Returns
    -------
    The matplotlib axes.

    Examples
    --------
    >>> ax = per_label_bars(pd.DataFrame({"TC": [0.9, 0.8]}, index=["a", "b"]))
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.45 * len(values) * max(1, values.shape[1])), 3.5))
    x = np.arange(len(values))
    w = 0.8 / max(1, values.shape[1])
    for i, col in enumerate(values.columns):
        ax.bar(x + i * w - 0.4 + w / 2, values[col].to_numpy(dtype=float), width=w, label=str(col))
    ax.set_xticks(x, values.index, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def jaccard_heatmap(values: pd.DataFrame, *, title: str | None = None, ax: Any = None) -> Any:
    """Heatmap of per-label Jaccard indices (rows: labels, columns: clusterings; NaN = unmatched).

    Parameters
    ----------
    values
        DataFrame labels x clusterings.
    title
        Axes title.
    ax
        Matplotlib axes (new figure when None).

    Returns
    -------
    The matplotlib axes.

    Examples
    --------
    >>> ax = jaccard_heatmap(pd.DataFrame({"TC": [0.9, np.nan]}, index=["a", "b"]))
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(2 + 0.8 * values.shape[1], 1 + 0.3 * len(values)))
    im = ax.imshow(values.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(values.shape[1]), values.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(values)), values.index, fontsize=7)
    ax.figure.colorbar(im, ax=ax, label="Jaccard")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def write_eval_figures(results: Any, out_dir: str | PathLike) -> list[Path]:
    """Write the standard evaluation figures of an :class:`stmorph.eval.EvalResults` as PNG files.

    Parameters
    ----------
    results
        Output of :func:`stmorph.eval.evaluate_spaces`.
    out_dir
        Folder for the PNGs.

    Returns
    -------
    Paths written.

    Examples
    --------
    >>> write_eval_figures(res, "figures")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(ax, name):
        ax.figure.tight_layout()
        p = out / f"{name}.png"
        ax.figure.savefig(p, dpi=120)
        plt.close(ax.figure)
        written.append(p)

    for name, df in results.tables.items():
        if name.startswith(("permanova_", "permdisp_")) and len(df):
            save(pairwise_pvalue_heatmap(df, title=name), f"heatmap_{name}")
    fs = results.summary.get("feature_spaces", {})
    acc = {k: v["classification"]["per_label"] for k, v in fs.items() if "classification" in v}
    if acc:
        save(per_label_bars(pd.DataFrame(acc)), "per_label_balanced_accuracy")
    jac = {k: v["clustering"]["jaccard"] for k, v in fs.items() if "clustering" in v}
    jac |= {k: v["jaccard"] for k, v in results.summary.get("multiplex", {}).items()}
    if jac:
        save(jaccard_heatmap(pd.DataFrame(jac).astype(float)), "jaccard")
    return written
