"""Figures of a sample and its feature spaces: the tissue with its cells, example crops per label, UMAPs.

Each function returns a matplotlib :class:`~matplotlib.figure.Figure` carrying its caption
(:func:`stmorph.pl.caption`); label colours come from :func:`stmorph.pl.label_colors`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._style import _figure, _set_caption, label_colors, natural_sorted, text_inches, tick_fontsize

__all__ = ["sample_overview", "example_crops", "embedding_grid", "scale_bar_length"]

_NUCLEAR_NAMES = ("dapi", "hoechst", "nuclear", "nucleus", "nuclei", "dna")


def scale_bar_length(extent_um: float) -> float:
    """A round scale-bar length (1, 2, 5 x 10^k micrometres) of about a fifth of ``extent_um``.

    Examples
    --------
    >>> scale_bar_length(32.0)
    5.0
    >>> scale_bar_length(1000.0)
    200.0
    """
    target = max(float(extent_um) / 5, 1e-6)
    k = np.floor(np.log10(target))
    best = 1.0
    for m in (1.0, 2.0, 5.0):
        if m * 10**k <= target:
            best = m * 10**k
    return float(best)


def _draw_scale_bar(ax: Any, length_px: float, text: str, *, x0: float, y0: float, fontsize: float = 6,
                    color: str = "white") -> None:
    """A bar of ``length_px`` data units with ``text`` above it; (x0, y0) is its left end (data coordinates)."""
    from matplotlib import patheffects

    ax.plot([x0, x0 + length_px], [y0, y0], color=color, lw=2.2, solid_capstyle="butt",
            path_effects=[patheffects.withStroke(linewidth=3.2, foreground="black")])
    if text:
        ax.annotate(text, (x0 + length_px / 2, y0), xytext=(0, 2.5), textcoords="offset points", color=color,
                    fontsize=fontsize, ha="center", va="bottom",
                    path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")])


def _nuclear_channel(names: list[str]) -> str | None:
    for n in names:
        if any(k in n.lower() for k in _NUCLEAR_NAMES):
            return n
    return names[0] if names else None


def _strided(img: Any, step: int) -> np.ndarray:
    """Every ``step``-th row and column of a stain or label plane, reading lazily where the image allows it."""
    try:
        plane = img._lazy_plane()  # memory map or chunked zarr view: only the strided pixels are copied
    except AttributeError:
        plane = img.read()
    try:
        return np.asarray(plane[::step, ::step])
    except (TypeError, IndexError, ValueError):
        return np.asarray(img.read())[::step, ::step]


def _stretch(a: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.size == 0:
        return a
    p0, p1 = np.percentile(a, [lo, hi])
    if p1 <= p0:
        return np.zeros_like(a)
    return np.clip((a - p0) / (p1 - p0), 0, 1)


def _labels_array(sample: Any, labels: pd.Series | None, label_key: str) -> pd.Series | None:
    if labels is None:
        labels = sample.labels(label_key)
    if labels is None:
        return None
    return labels.reindex(sample.cell_ids).astype("string").astype(object)


def sample_overview(sample: Any, *, labels: pd.Series | None = None, label_key: str = "cell_type",
                    colors: dict[str, str] | None = None, channel: str | None = None, max_side: int = 1400) -> Any:
    """The tissue image with every cell drawn on it in its label's colour, beside the number of cells per label.

    Cells are drawn as segmentation outlines when the sample has a segmentation and cells stay at least 6
    pixels wide in the shown image, else as dots at their centroids. Large images are shown downsampled
    (every ``k``-th pixel so that the longer side is at most ``max_side``); only those pixels are read.

    Parameters
    ----------
    sample
        A :class:`stmorph.SpatialSample`.
    labels
        Labels indexed by cell id (default: ``sample.adata.obs[label_key]``).
    label_key
        The label column.
    colors
        ``{label: colour}`` (default: :func:`label_colors`).
    channel
        Stain shown (default: the nuclear stain, e.g. DAPI, else the first channel).
    max_side
        Longest side, in pixels, of the shown image.

    Returns
    -------
    The figure.

    Examples
    --------
    >>> fig = sample_overview(sample)  # doctest: +SKIP
    """
    lab = _labels_array(sample, labels, label_key)
    if colors is None and lab is not None:
        colors = label_colors(lab.dropna())
    colors = colors or {}
    names = natural_sorted(colors)
    xy = sample.centroids
    ch = channel if channel is not None else _nuclear_channel(list(sample.images))
    if ch is not None:
        H, W = sample.images[ch].shape
    else:
        W = int(np.ceil(xy[:, 0].max() + 1)) if len(xy) else 1
        H = int(np.ceil(xy[:, 1].max() + 1)) if len(xy) else 1
    step = max(1, int(np.ceil(max(H, W) / max_side)))
    n_lab = max(1, len(names))
    fs = tick_fontsize(n_lab)
    aspect = W / max(H, 1)
    img_h = float(np.clip(0.22 * n_lab + 1.5, 4.5, 9.0))
    img_w = float(np.clip(img_h * aspect, 3.0, 10.0))
    bar_w = 1.6 + text_inches(names or ["x"], fs)
    fig = _figure(img_w + bar_w + 0.6, img_h + 0.7)
    gs = fig.add_gridspec(1, 2, width_ratios=[img_w, bar_w])
    ax = fig.add_subplot(gs[0, 0])
    how = "dots at the cell centroids"
    if ch is not None:
        img = _stretch(_strided(sample.images[ch], step))
        ax.imshow(img, cmap="gray", extent=(-0.5, img.shape[1] * step - 0.5, img.shape[0] * step - 0.5, -0.5),
                  interpolation="nearest" if step == 1 else "antialiased")
    else:
        ax.set_facecolor("black")
    outlines = None
    if sample.segmentation is not None and lab is not None and len(xy) > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(xy).query(xy, k=2)
        if np.median(d[:, 1]) / step >= 6 and (step > 1 or H * W <= 6000 * 6000):
            outlines = _outline_rgba(sample, lab, colors, step)
    if outlines is not None:
        ax.imshow(outlines, extent=(-0.5, outlines.shape[1] * step - 0.5, outlines.shape[0] * step - 0.5, -0.5),
                  interpolation="nearest")
        how = "segmentation outlines"
    elif lab is not None:
        size = float(np.clip(4000.0 / max(len(xy), 1), 0.5, 12.0))
        arr = lab.to_numpy()
        for name in names:
            m = arr == name
            ax.scatter(xy[m, 0], xy[m, 1], s=size, c=colors[name], linewidths=0)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=2, c="#ffcc00", linewidths=0)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ps = sample.pixel_size
    if ps:
        bar_um = scale_bar_length(W * ps)
        _draw_scale_bar(ax, bar_um / ps, f"{bar_um:g} µm", x0=0.04 * W, y0=0.95 * H, fontsize=8)
    ax.set_title(f"{sample.name}: {sample.n_cells} cells on {ch or 'no stain'}"
                 + (f" (every {step}th pixel)" if step > 1 else ""), fontsize=9)
    if lab is not None:
        bx = fig.add_subplot(gs[0, 1])
        vc = lab.value_counts().reindex(names).fillna(0)
        y = np.arange(len(names))
        bx.barh(y, vc.to_numpy(), color=[colors[n] for n in names])
        bx.set_yticks(y, names, fontsize=fs)
        bx.set_ylim(len(names) - 0.5, -0.5)
        bx.set_xlabel("cells")
        bx.set_title("cells per label (colour key)", fontsize=9)
        for yi, v in zip(y, vc.to_numpy()):
            bx.text(v, yi, f" {int(v)}", va="center", fontsize=max(5.0, fs - 1))
        bx.set_xlim(0, vc.max() * 1.18 if vc.max() > 0 else 1)
    px = f"; pixel size {ps:g} µm" if ps else "; pixel size unknown, no scale bar"
    return _set_caption(fig, f"The tissue: the {ch or 'cell'} image{' (contrast stretched to the 1st-99.5th percentile)' if ch else ''} "
                             f"with every cell drawn as {how}, coloured by its label{px}. The bars on the right count "
                             f"the cells of each label and are the colour key for this and the other figures.")


def _outline_rgba(sample: Any, lab: pd.Series, colors: dict[str, str], step: int) -> np.ndarray | None:
    """RGBA image of the cells' outlines coloured by label, on the ``step``-strided grid."""
    import matplotlib
    from skimage.segmentation import find_boundaries

    seg = sample.segmentation
    try:
        if step == 1:
            L = np.asarray(seg.read())
        elif hasattr(seg, "_lazy_plane"):
            L = _strided(seg, step)
        else:  # polygons: rasterise the whole grid only when it is small
            if seg.shape[0] * seg.shape[1] > 8192 * 8192:
                return None
            L = np.asarray(seg.read())[::step, ::step]
        ids = sample.label_ids()
    except Exception:  # noqa: BLE001 - an overview falls back to centroid dots
        return None
    edge = find_boundaries(L, mode="inner") & (L > 0)
    lut_ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(lut_ids)
    sorted_ids = lut_ids[order]
    vals = L[edge].astype(np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, vals), 0, max(len(sorted_ids) - 1, 0))
    found = sorted_ids[pos] == vals if len(sorted_ids) else np.zeros(vals.shape, bool)
    cell_lab = lab.to_numpy()[order][pos]
    names = list(colors)
    table = np.array([matplotlib.colors.to_rgba(colors[k]) for k in names] + [(1.0, 1.0, 1.0, 0.4)], dtype=np.float32)
    codes = pd.Categorical(pd.Series(cell_lab, dtype=object), categories=names).codes
    rgba = np.zeros((*L.shape, 4), dtype=np.float32)
    rgba[edge] = table[np.where(found & (codes >= 0), codes, len(names))]
    # a light fill of each cell in its label's colour makes the label visible where outlines are thin
    inside = (L > 0) & ~edge
    vals = L[inside].astype(np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, vals), 0, max(len(sorted_ids) - 1, 0))
    ok = sorted_ids[pos] == vals if len(sorted_ids) else np.zeros(vals.shape, bool)
    fill_codes = pd.Categorical(pd.Series(lab.to_numpy()[order][pos], dtype=object), categories=names).codes
    fill = table[np.where(ok & (fill_codes >= 0), fill_codes, len(names))].copy()
    fill[:, 3] = np.where(ok & (fill_codes >= 0), 0.28, 0.0)
    rgba[inside] = fill
    return rgba


def example_crops(sample: Any, *, labels: pd.Series | None = None, label_key: str = "cell_type",
                  colors: dict[str, str] | None = None, size: int = 64, per_label: int | None = None,
                  spots: bool = True, outline: bool = True, random_state: int = 0) -> Any:
    """Example cells of every label: every stain channel (and the transcript spots), one row per label.

    Each stain is shown with one contrast for all crops (1st-99.5th percentile over the crops shown), so
    brightness compares across labels; every crop carries a scale bar (micrometres when the sample's pixel
    size is known) and, with a segmentation, the outline of the centre cell.

    Parameters
    ----------
    sample
        A :class:`stmorph.SpatialSample`.
    labels
        Labels indexed by cell id (default: ``sample.adata.obs[label_key]``).
    label_key
        The label column.
    colors
        ``{label: colour}`` for the row names.
    size
        Crop side in pixels (the cell's centroid in the middle).
    per_label
        Example cells per label (default: as many as fit 12 columns, at most 3).
    spots
        Add a composite of the cell's transcript spots (one hue per gene) when the sample has molecules.
    outline
        Outline the centre cell's mask when the sample has a segmentation.
    random_state
        Seed of the choice of cells.

    Returns
    -------
    The figure (``None`` without labels or without images and molecules).

    Examples
    --------
    >>> fig = example_crops(sample, size=64)  # doctest: +SKIP
    """
    import matplotlib

    lab = _labels_array(sample, labels, label_key)
    chans = list(sample.images)
    has_spots = spots and sample.molecules is not None
    if lab is None or (not chans and not has_spots):
        return None
    if colors is None:
        colors = label_colors(lab.dropna())
    names = natural_sorted(lab.dropna())
    panels = len(chans) + (1 if has_spots else 0)
    k = per_label if per_label is not None else int(np.clip(12 // panels, 1, 3))
    rng = np.random.default_rng(random_state)
    arr = lab.to_numpy()
    picks = {}
    for name in names:
        pos = np.flatnonzero(arr == name)
        picks[name] = np.sort(rng.choice(pos, size=min(k, len(pos)), replace=False)) if len(pos) else np.array([], int)
    from ..crops import render_spot_planes, round_half_up, spot_origins

    half = size // 2
    cells = np.concatenate([picks[n] for n in names]).astype(np.int64)
    centers = sample.centroids[cells]
    r0 = round_half_up(centers[:, 1]).astype(np.int64) - half
    c0 = round_half_up(centers[:, 0]).astype(np.int64) - half
    stains = {ch: np.stack([sample.images[ch].window(r, r + size, c, c + size) for r, c in zip(r0, c0)]).astype(np.float32)
              if len(cells) else np.zeros((0, size, size), np.float32) for ch in chans}
    ranges = {ch: (np.percentile(v, [1, 99.5]) if v.size else (0.0, 1.0)) for ch, v in stains.items()}
    masks = None
    if outline and sample.segmentation is not None:
        try:
            ids = sample.label_ids()[cells]
            masks = np.stack([sample.segmentation.window(r, r + size, c, c + size) == i for r, c, i in zip(r0, c0, ids)])
        except Exception:  # noqa: BLE001 - outlines are a help, not a requirement
            masks = None
    comp = None
    if has_spots and len(cells):
        idx = sample.molecule_index()
        origins = spot_origins(idx, cells, centers, size, mode="centroid")
        planes = render_spot_planes(idx, cells, origins, size, padding=1)
        g = planes.shape[1]
        hues = matplotlib.colormaps["hsv"](np.linspace(0, 1, max(g, 1), endpoint=False))[:, :3]
        comp = np.clip(np.tensordot(planes.astype(np.float32), hues, axes=(1, 0)), 0, 1)  # (n, S, S, 3)
    cols = k * panels
    cell_in = 0.95
    name_w = text_inches(names, 8)
    fig = _figure(name_w + cols * cell_in + 0.3, len(names) * cell_in + 0.7, layout=None)
    left = (name_w + 0.15) / fig.get_figwidth()
    top = 1 - 0.45 / fig.get_figheight()
    fig.subplots_adjust(left=left, right=0.99, top=top, bottom=0.02, wspace=0.04, hspace=0.06)
    axes = np.asarray(fig.subplots(len(names), cols, squeeze=False))
    ps = sample.pixel_size
    bar_um = scale_bar_length(size * ps) if ps else None
    bar_px = bar_um / ps if ps else float(round(size / 5))
    col_titles = [*chans, *(["spots"] if has_spots else [])]
    i = 0
    for r, name in enumerate(names):
        for e in range(k):
            for p in range(panels):
                ax = axes[r, e * panels + p]
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if r == 0:
                    ax.set_title(col_titles[p], fontsize=7)
                if e >= len(picks[name]):
                    ax.set_facecolor("white")
                    continue
                j = i + e
                if p < len(chans):
                    lo, hi = ranges[chans[p]]
                    ax.imshow(np.clip((stains[chans[p]][j] - lo) / max(hi - lo, 1e-9), 0, 1), cmap="gray",
                              vmin=0, vmax=1, interpolation="nearest")
                elif comp is not None:
                    ax.imshow(comp[j], interpolation="nearest")
                if masks is not None and masks[j].any():
                    ax.contour(masks[j], levels=[0.5], colors=[colors.get(name, "yellow")], linewidths=0.7)
                _draw_scale_bar(ax, bar_px, (f"{bar_um:g} µm" if ps else f"{bar_px:g} px") if (e == 0 and p == 0) else "",
                                x0=size * 0.08, y0=size * 0.9, fontsize=5.5)
                ax.set_xlim(-0.5, size - 0.5)
                ax.set_ylim(size - 0.5, -0.5)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8, color=colors.get(name, "black"),
                              labelpad=4)
        i += len(picks[name])
    bar_txt = f"{bar_um:g} µm" if ps else f"{bar_px:g} pixels (the sample has no pixel size)"
    side = f"{size} px = {size * ps:g} µm" if ps else f"{size} px"
    return _set_caption(fig, f"{k} randomly chosen cell(s) per label (rows), each shown as {size} x {size}-pixel crops "
                             f"({side}) centred on the cell: every stain channel ({', '.join(chans) or 'none'}) with "
                             f"one contrast per channel for all crops (1st-99.5th percentile), so brightness compares "
                             f"across labels"
                             + ("; 'spots': the cell's transcripts, one hue per gene" if has_spots else "")
                             + ("; the line is the centre cell's segmentation outline" if masks is not None else "")
                             + f". Scale bar: {bar_txt}.")


def embedding_grid(frames: dict[str, pd.DataFrame], labels: pd.Series | None = None, *,
                   colors: dict[str, str] | None = None, random_state: int = 0, ncols: int = 3,
                   max_cells: int = 20000) -> Any:
    """UMAP of every feature space (z-scored features, PCA to 50 dimensions above 50), cells coloured by label.

    Parameters
    ----------
    frames
        Feature spaces by name (cells x features, indexed by cell id).
    labels
        Labels indexed by cell id.
    colors
        ``{label: colour}`` (default: :func:`label_colors`).
    random_state
        Seed of PCA, neighbours and UMAP.
    ncols
        Panels per row.
    max_cells
        Cells subsampled (the same cells in every space) above this number.

    Returns
    -------
    The figure.

    Examples
    --------
    >>> fig = embedding_grid({"TC": counts_df}, labels)  # doctest: +SKIP
    """
    import anndata as ad
    import scanpy as sc

    names = list(frames)
    if colors is None and labels is not None:
        colors = label_colors(labels.dropna().astype(str))
    colors = colors or {}
    lnames = natural_sorted(colors)
    nc = min(ncols, max(1, len(names)))
    nr = int(np.ceil(len(names) / nc))
    leg_cols = 1 if len(lnames) <= 20 else 2
    leg_w = (text_inches(lnames, 8) + 0.35) * leg_cols if lnames else 0.0
    fig = _figure(3.6 * nc + leg_w + 0.3, 3.5 * nr + 0.3)
    axes = np.atleast_1d(fig.subplots(nr, nc, squeeze=False)).ravel()
    for ax in axes[len(names):]:
        ax.set_axis_off()
    common = None
    for df in frames.values():
        common = df.index if common is None else common.intersection(df.index)
    rng = np.random.default_rng(random_state)
    if common is not None and len(common) > max_cells:
        common = common[np.sort(rng.choice(len(common), max_cells, replace=False))]
    n_cells = len(common) if common is not None else 0
    size = float(np.clip(3000.0 / max(n_cells, 1), 1.0, 12.0))
    lab = labels.reindex(common).astype("string").astype(object).to_numpy() if labels is not None else None
    for ax, name in zip(axes, names):
        X = frames[name].loc[common].to_numpy(np.float32)
        X = (X - X.mean(0)) / (X.std(0) + 1e-8)
        a = ad.AnnData(X)
        rep = "X"
        if X.shape[1] > 50:
            sc.pp.pca(a, n_comps=min(50, X.shape[0] - 1, X.shape[1] - 1), random_state=random_state)
            rep = "X_pca"
        sc.pp.neighbors(a, n_neighbors=min(15, max(2, X.shape[0] - 1)), use_rep=rep, random_state=random_state)
        sc.tl.umap(a, random_state=random_state)
        u = a.obsm["X_umap"]
        if lab is not None:
            for ln in lnames:
                m = lab == ln
                ax.scatter(u[m, 0], u[m, 1], s=size, c=colors[ln], linewidths=0, rasterized=True)
        else:
            ax.scatter(u[:, 0], u[:, 1], s=size, c="0.3", linewidths=0, rasterized=True)
        ax.set_title(f"{name} ({frames[name].shape[1]} features)", fontsize=9)
        ax.set_xlabel("UMAP 1", fontsize=8)
        ax.set_ylabel("UMAP 2", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if lnames:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color=colors[k], label=k, markersize=5) for k in lnames]
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False, ncols=leg_cols,
                   title="label", title_fontsize=8, handletextpad=0.2, columnspacing=0.8)
    sub = f" ({n_cells} of the cells, the same in every space)" if common is not None and n_cells < max(len(f) for f in frames.values()) else ""
    return _set_caption(fig, f"Each feature space embedded in two dimensions by UMAP{sub} (features z-scored; PCA to 50 "
                             f"dimensions first when there are more), cells coloured by label. Labels that form their "
                             f"own islands are separated by that space; mixed colours are labels the space does not "
                             f"tell apart. UMAP distorts distances: read it for neighbourhoods, not for sizes or gaps.")
