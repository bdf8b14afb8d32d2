"""One visual convention for every stmorph figure: colours, colour maps, sizes that follow the number of labels.

* labels: one fixed colour per label (:func:`label_colors`), the same in every figure of a study;
* feature spaces: one fixed colour per space (:func:`space_colors`), the same in every bar chart;
* heatmaps: ``viridis`` for every "higher = better / more different" value (recall, Jaccard, -log10 p), with
  grey for "not applicable"; ``RdBu`` centred on 0 for differences (blue = better than the reference);
* sizes: cells of heatmaps and rows of bar charts get a fixed height per label, tick labels shrink from 8 to 5
  points as labels get more numerous, so 19 and 30 labels stay readable.

Figures carry their caption (:func:`caption`), which says what they show and how to read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "label_colors",
    "space_colors",
    "natural_sorted",
    "caption",
    "SCORE_CMAP",
    "DIFF_CMAP",
    "MISSING_COLOR",
]

SCORE_CMAP = "viridis"
"""Colour map of every "higher = better / more different" heatmap (recall, Jaccard, -log10 p)."""
DIFF_CMAP = "RdBu"
"""Colour map of differences to a reference (blue: higher than the reference, red: lower)."""
MISSING_COLOR = "#d9d9d9"
"""Cells of a heatmap without a value (a label against itself, an unmatched label)."""


def natural_sorted(values: Iterable[Any]) -> list[str]:
    """Labels as strings in natural order (``type_2`` before ``type_10``).

    Parameters
    ----------
    values
        Labels (any type; compared as strings).

    Returns
    -------
    The unique labels, sorted.

    Examples
    --------
    >>> natural_sorted(["type_10", "type_2", "type_1"])
    ['type_1', 'type_2', 'type_10']
    """
    def key(s: str) -> list:
        return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", s) if t]

    return sorted({str(v) for v in values}, key=key)


def _tab20_reordered() -> list[str]:
    import matplotlib

    base = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    return base[0::2] + base[1::2]


def label_colors(labels: Iterable[Any] | pd.Index) -> dict[str, str]:
    """One colour per label, stable for a given label set (natural order; tab20, then a hue wheel).

    Parameters
    ----------
    labels
        The labels (repeats allowed).

    Returns
    -------
    ``{label: hex colour}``.

    Examples
    --------
    >>> label_colors(["b", "a"])["a"]
    '#1f77b4'
    """
    import matplotlib

    labs = natural_sorted(pd.Series(list(labels)).astype(str))
    base = _tab20_reordered()
    if len(labs) > len(base):
        hues = np.linspace(0, 1, len(labs) - len(base), endpoint=False)
        base = base + [matplotlib.colors.to_hex(matplotlib.colors.hsv_to_rgb((h, 0.65, 0.85))) for h in hues]
    return {lab: base[i] for i, lab in enumerate(labs)}


def space_colors(spaces: Iterable[str]) -> dict[str, str]:
    """One colour per feature space or clustering, in the order given (tab10, then tab20's light shades).

    Parameters
    ----------
    spaces
        Names in display order.

    Returns
    -------
    ``{name: hex colour}``.

    Examples
    --------
    >>> space_colors(["TC", "LS2"])["TC"]
    '#1f77b4'
    """
    import matplotlib

    names = list(dict.fromkeys(map(str, spaces)))
    base = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    base += _tab20_reordered()[10:]
    return {n: base[i % len(base)] for i, n in enumerate(names)}


def caption(fig: Any) -> str:
    """The caption a stmorph figure carries: what it shows and how to read it (``""`` for other figures).

    Parameters
    ----------
    fig
        A matplotlib figure returned by a :mod:`stmorph.pl` function.

    Returns
    -------
    The caption text.

    Examples
    --------
    >>> caption(per_label_recall(res))  # doctest: +SKIP
    'Recall of each label ...'
    """
    return str(getattr(fig, "stmorph_caption", "") or "")


def _set_caption(fig: Any, text: str) -> Any:
    fig.stmorph_caption = " ".join(str(text).split())
    return fig


# -- sizes -------------------------------------------------------------------------------------------------
def tick_fontsize(n: int) -> float:
    """Tick-label size (points) for ``n`` labels on an axis: 8 up to 15, then down to 5 at 45 and more."""
    return float(np.clip(8 - (n - 15) * 0.1, 5, 8))


def cell_inches(n: int) -> float:
    """Side of one heatmap cell (inches) for ``n`` labels: room for one tick label of :func:`tick_fontsize`."""
    return max(0.17, 1.9 * tick_fontsize(n) / 72)


def text_inches(labels: Iterable[Any], fontsize: float) -> float:
    """Width (inches) of the longest of ``labels`` written at ``fontsize`` points (an estimate)."""
    longest = max((len(str(s)) for s in labels), default=1)
    return 0.62 * fontsize * longest / 72 + 0.1


def _figure(width: float, height: float, *, layout: str | None = "constrained") -> Any:
    """A matplotlib Figure not registered with pyplot (no global state; closed by garbage collection)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(float(width), float(height)), layout=layout)


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"
