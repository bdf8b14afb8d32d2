"""Self-contained HTML report of a study, with PNG/SVG figures and CSV tables beside it.

The report is one HTML file with every figure embedded (base64 PNG), so it can be mailed or opened offline; the
same figures are written as PNG and SVG to ``figures/`` and the numbers behind them as CSV to ``tables/``. Label
colours are fixed once per study (:func:`label_colors`) and reused in every figure.
"""

from __future__ import annotations

import base64
import html
import io
import json
from os import PathLike
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..pl._eval import count_significant_pairs  # noqa: E402
from ..sample import SpatialSample  # noqa: E402

__all__ = ["write_report", "label_colors"]


def label_colors(labels: list[str] | pd.Index) -> dict[str, str]:
    """One colour per label, stable for a given label set (sorted order, tab20 then a hue wheel).

    Examples
    --------
    >>> label_colors(["b", "a"])["a"]
    '#1f77b4'
    """
    labs = sorted(map(str, pd.unique(pd.Series(list(labels)).astype(str))))
    base = [matplotlib.colors.to_hex(c) for c in plt.get_cmap("tab20").colors]
    base = base[0::2] + base[1::2]
    if len(labs) > len(base):
        extra = [matplotlib.colors.to_hex(matplotlib.colors.hsv_to_rgb((h, 0.65, 0.85))) for h in np.linspace(0, 1, len(labs) - len(base), endpoint=False)]
        base = base + extra
    return {lab: base[i] for i, lab in enumerate(labs)}


class _Figures:
    """Collects figures: saves PNG + SVG under figures/ and keeps a base64 PNG for the HTML."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)

    def save(self, fig: plt.Figure, name: str) -> str:
        fig.savefig(self.dir / f"{name}.png", dpi=110, bbox_inches="tight")
        fig.savefig(self.dir / f"{name}.svg", bbox_inches="tight")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        b64 = base64.b64encode(buf.getvalue()).decode()
        return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}"/><figcaption>{html.escape(name)}.png / .svg</figcaption></figure>'


def _heatmap(df: pd.DataFrame, title: str, cbar: str, *, vmin: float | None = 0.0, vmax: float | None = 1.0,
             cmap: str = "viridis", annotate: bool = True, fmt: str = "{:.2f}") -> plt.Figure:
    h = max(2.5, 0.32 * df.shape[0] + 1.2)
    w = max(3.5, 0.55 * df.shape[1] + 2.5)
    fig, ax = plt.subplots(figsize=(w, h))
    vals = df.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(vals), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(df.shape[1]), [str(c) for c in df.columns], rotation=45, ha="right")
    ax.set_yticks(range(df.shape[0]), [str(i) for i in df.index])
    ax.set_xlabel(df.columns.name or "")
    ax.set_ylabel(df.index.name or "")
    if annotate and df.size <= 400:
        for (i, j), v in np.ndenumerate(vals):
            if np.isfinite(v):
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="white" if (vmax is not None and v < 0.5 * ((vmax or 1) + (vmin or 0))) else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar, shrink=0.8)
    return fig


def _sample_overview(sample: SpatialSample, label_key: str, colors: dict[str, str]) -> plt.Figure:
    xy = sample.centroids
    labels = sample.labels(label_key)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, c="0.3")
    else:
        lab = labels.astype(str).to_numpy()
        for name in sorted(colors):
            m = lab == name
            ax.scatter(xy[m, 0], xy[m, 1], s=5, c=colors[name], label=name, linewidths=0)
        ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.set_title(f"{sample.name}: {sample.n_cells} cells")
    ax = axes[1]
    if labels is not None:
        vc = labels.astype(str).value_counts()
        ax.barh(vc.index[::-1], vc.to_numpy()[::-1], color=[colors[v] for v in vc.index[::-1]])
        ax.set_xlabel("cells")
        ax.set_title("cells per label")
    else:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _umaps(frames: dict[str, pd.DataFrame], labels: pd.Series | None, colors: dict[str, str], seed: int) -> plt.Figure:
    import anndata as ad
    import scanpy as sc

    names = list(frames)
    ncol = min(3, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 4.0 * nrow), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    n_cells = max(len(f) for f in frames.values())
    size = float(np.clip(3000.0 / max(n_cells, 1), 1.0, 12.0))
    for ax, name in zip(axes.ravel(), names, strict=False):
        df = frames[name]
        X = df.to_numpy(np.float32)
        X = (X - X.mean(0)) / (X.std(0) + 1e-8)
        a = ad.AnnData(X)
        if X.shape[1] > 50:
            sc.pp.pca(a, n_comps=min(50, X.shape[0] - 1, X.shape[1] - 1), random_state=seed)
            rep = "X_pca"
        else:
            rep = "X"
        sc.pp.neighbors(a, n_neighbors=15, use_rep=rep, random_state=seed)
        sc.tl.umap(a, random_state=seed)
        u = a.obsm["X_umap"]
        if labels is not None:
            lab = labels.reindex(df.index).astype(str).to_numpy()
            for lname in sorted(colors):
                m = lab == lname
                ax.scatter(u[m, 0], u[m, 1], s=size, c=colors[lname], label=lname, linewidths=0)
        else:
            ax.scatter(u[:, 0], u[:, 1], s=size, c="0.3")
        ax.set_title(f"{name} ({df.shape[1]} features)")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None:
        handles = [plt.Line2D([], [], marker="o", ls="", color=colors[k], label=k) for k in sorted(colors)]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _example_crops(sample: SpatialSample, label_key: str, colors: dict[str, str], seed: int, size: int = 64, per_label: int = 3) -> plt.Figure | None:
    labels = sample.labels(label_key)
    if labels is None or (not sample.images and sample.molecules is None):
        return None
    from ..crops import crop_stains, render_spot_planes, spot_origins

    rng = np.random.default_rng(seed)
    labs = sorted(colors)
    chans = list(sample.images)[:2]
    cols = per_label * (len(chans) + (1 if sample.molecules is not None else 0))
    fig, axes = plt.subplots(len(labs), cols, figsize=(1.25 * cols, 1.3 * len(labs)), squeeze=False)
    lab_arr = labels.astype(str).to_numpy()
    idx_all = sample.molecule_index() if sample.molecules is not None else None
    for r, lab in enumerate(labs):
        pos = np.flatnonzero(lab_arr == lab)
        pick = rng.choice(pos, size=min(per_label, len(pos)), replace=False) if len(pos) else []
        c = 0
        for p in pick:
            center = sample.centroids[[p]]
            if chans:
                crops = crop_stains([sample.images[ch].read() for ch in chans], center, size, normalize="crop")
                for k in range(len(chans)):
                    axes[r, c].imshow(crops[0, k], cmap="gray")
                    if r == 0:
                        axes[r, c].set_title(chans[k], fontsize=7)
                    c += 1
            if idx_all is not None:
                origins = spot_origins(idx_all, np.array([p]), center, size, mode="centroid")
                planes = render_spot_planes(idx_all, np.array([p]), origins, size, padding=1)[0]
                g = planes.shape[0]
                # colour each gene by a fixed hue; show the composite of all planes
                hues = plt.get_cmap("hsv")(np.linspace(0, 1, max(g, 1), endpoint=False))[:, :3]
                comp = np.tensordot(planes.astype(np.float32).transpose(1, 2, 0), hues, axes=(2, 0))
                comp = np.clip(comp, 0, 1)
                axes[r, c].imshow(comp)
                if r == 0:
                    axes[r, c].set_title("spots", fontsize=7)
                c += 1
        axes[r, 0].set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=8, color=colors[lab])
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
    fig.suptitle(f"example {size}x{size} px crops per label (stains min-max per crop; spots: all genes, one hue per gene)", fontsize=9)
    fig.tight_layout()
    return fig


def _metrics_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, res in summary.get("feature_spaces", {}).items():
        cl = res.get("clustering", {}) or {}
        rows.append({"space": name, "balanced_accuracy": (res.get("classification") or {}).get("balanced_accuracy"),
                     **{k: cl.get(k) for k in ("n_clusters", "silhouette", "homogeneity", "completeness", "ami", "ari")},
                     "permanova_significant": f"{(res.get('permanova') or {}).get('n_significant')}/{(res.get('permanova') or {}).get('n_pairs')}",
                     "permdisp_significant": f"{(res.get('permdisp') or {}).get('n_significant')}/{(res.get('permdisp') or {}).get('n_pairs')}"})
    for name, res in (summary.get("multiplex") or {}).items():
        rows.append({"space": f"multiplex {name} (w={res.get('weight')})", "balanced_accuracy": None,
                     **{k: res.get(k) for k in ("n_clusters", "silhouette", "homogeneity", "completeness", "ami", "ari")}})
    return pd.DataFrame(rows).set_index("space") if rows else pd.DataFrame()


def _metric_bars(tab: pd.DataFrame) -> plt.Figure:
    metrics = [m for m in ("silhouette", "homogeneity", "completeness", "ami", "ari") if m in tab.columns]
    data = tab[metrics].astype(float)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(data)), 3.8))
    w = 0.8 / max(1, len(metrics))
    x = np.arange(len(data))
    for i, m in enumerate(metrics):
        ax.bar(x + i * w - 0.4 + w / 2, data[m].to_numpy(), width=w, label=m)
    ax.set_xticks(x, [str(s) for s in data.index], rotation=30, ha="right")
    ax.set_ylabel("score")
    ax.set_title("clustering against labels (Leiden tuned by silhouette)")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.legend(fontsize=8, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    fig.tight_layout()
    return fig


def _pairwise_heatmaps(eval_dir: Path, figs: _Figures, tables_dir: Path, spaces: list[str]) -> list[str]:
    """One grid of heatmaps (one panel per feature space) of BH-adjusted pairwise p-values per test.

    Reads the evaluation's pairwise tables (CSV files named ``pairwise_<test>_<space>.csv`` or similar, with label
    pair columns and an adjusted p-value column).
    """
    by_test: dict[str, dict[str, pd.DataFrame]] = {}
    for f in sorted(eval_dir.rglob("*.csv")):
        stem = f.stem
        low = stem.lower()
        if not ("permanova" in low or "permdisp" in low):
            continue
        space = next((s for s in sorted(spaces, key=len, reverse=True) if low.endswith("_" + s.lower())), None)
        if space is None:
            continue
        test = stem[: -(len(space) + 1)].replace("pairwise_", "")
        df = pd.read_csv(f)
        cols = {c.lower(): c for c in df.columns}
        a = cols.get("label_a") or cols.get("group1") or cols.get("a")
        b = cols.get("label_b") or cols.get("group2") or cols.get("b")
        pcol = cols.get("p_adj") or cols.get("padj") or cols.get("q_value") or cols.get("p_value")
        if a is None or b is None or pcol is None:
            continue
        labs = sorted(set(df[a].astype(str)) | set(df[b].astype(str)))
        mat = pd.DataFrame(np.nan, index=labs, columns=labs)
        for ra, rb, pv in zip(df[a].astype(str), df[b].astype(str), df[pcol], strict=True):
            mat.loc[ra, rb] = pv
            mat.loc[rb, ra] = pv
        mat.to_csv(tables_dir / f"pairwise_matrix_{test}_{space}.csv")
        by_test.setdefault(test, {})[space] = mat
    parts = []
    for test, mats in by_test.items():
        names = [s for s in spaces if s in mats]
        ncol = min(3, len(names))
        nrow = int(np.ceil(len(names) / ncol))
        n_lab = max(m.shape[0] for m in mats.values())
        side = max(3.2, 0.22 * n_lab + 1.8)
        fig, axes = plt.subplots(nrow, ncol, figsize=(side * ncol + 1, side * nrow), squeeze=False)
        im = None
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        for ax, name in zip(axes.ravel(), names, strict=False):
            m = mats[name]
            im = ax.imshow(np.ma.masked_invalid(m.to_numpy(float)), cmap="magma", vmin=0, vmax=0.1)
            ticks = range(m.shape[0])
            fs = 7 if m.shape[0] <= 20 else 5
            ax.set_xticks(ticks, m.columns, rotation=90, fontsize=fs)
            ax.set_yticks(ticks, m.index, fontsize=fs)
            n_sig, n_pairs = count_significant_pairs(m, 0.05)  # each unordered pair once, no diagonal
            ax.set_title(f"{name}: {n_sig}/{n_pairs} pairs p_adj < 0.05", fontsize=9)
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), label="BH-adjusted p (dark = different)", shrink=0.6)
        fig.suptitle(f"pairwise {test.replace('_', ' ')} per label pair", fontsize=11)
        parts.append(figs.save(fig, f"pairwise_{test}"))
    return parts


def write_report(
    sample: SpatialSample | None,
    frames: dict[str, pd.DataFrame],
    eval_dir: str | PathLike,
    out: str | PathLike,
    *,
    config: Any = None,
    timings: dict[str, Any] | None = None,
    title: str | None = None,
    label_key: str | None = None,
    seed: int | None = None,
    labels: pd.Series | None = None,
) -> Path:
    """Write ``report.html`` plus ``figures/`` (PNG + SVG) and ``tables/`` (CSV) into ``out``.

    Parameters
    ----------
    sample
        The study's sample (labels, centroids, images for example crops); ``None`` (``stmorph evaluate`` without
        ``--sample``) leaves out the sample overview and the example crops.
    frames
        Feature spaces by name (cells x features).
    eval_dir
        Folder with the evaluation's ``summary.json`` and CSV tables.
    out
        Output folder.
    config, timings, title
        Run parameters, stage timings and a title shown in the report.
    labels
        The labels (indexed by cell id) when they do not come from ``sample.obs[label_key]``.

    Returns
    -------
    The path of ``report.html``.

    Examples
    --------
    >>> write_report(sample, frames, "eval/", "report/")  # doctest: +SKIP
    """
    from ._run import _versions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = out / "tables"
    tables.mkdir(exist_ok=True)
    eval_dir = Path(eval_dir)
    label_key = label_key or getattr(config, "label_key", "cell_type")
    seed = int(seed if seed is not None else getattr(config, "seed", 0))
    summary = json.loads((eval_dir / "summary.json").read_text()) if (eval_dir / "summary.json").exists() else {}
    if labels is None and sample is not None:
        labels = sample.labels(label_key)
    colors = label_colors(labels.astype(str)) if labels is not None else {}
    figs = _Figures(out)
    sections: list[tuple[str, str]] = []

    if sample is not None:
        # sample overview
        parts = [figs.save(_sample_overview(sample, label_key, colors), "sample_overview")]
        parts.append(f"<p>{html.escape(repr(sample))}</p>")
        sections.append(("Sample", "".join(parts)))

        # example crops
        try:
            fig = _example_crops(sample, label_key, colors, seed)
            if fig is not None:
                sections.append(("Example crops per label", figs.save(fig, "example_crops")))
        except Exception as exc:  # a report must not die on a figure; say what happened
            sections.append(("Example crops per label", f"<p class='warn'>not drawn: {html.escape(str(exc))}</p>"))

    # UMAPs
    sections.append(("Feature spaces (UMAP, coloured by label)", figs.save(_umaps(frames, labels, colors, seed), "umaps")))

    # classification
    fs = summary.get("feature_spaces", {})
    per_label = pd.DataFrame({n: (r.get("classification") or {}).get("per_label", {}) for n, r in fs.items()})
    if not per_label.empty:
        per_label.index.name, per_label.columns.name = "label", "feature space"
        overall = {n: (r.get("classification") or {}).get("balanced_accuracy") for n, r in fs.items()}
        per_label.to_csv(tables / "balanced_accuracy_per_label.csv")
        cap = ", ".join(f"{n}: {v:.3f}" for n, v in overall.items() if v is not None)
        sections.append(("Random-forest balanced accuracy per label",
                         figs.save(_heatmap(per_label, "balanced accuracy per label (stratified 5-fold CV)", "balanced accuracy"), "balanced_accuracy")
                         + f"<p>Overall balanced accuracy: {html.escape(cap)}</p>"))

    # pairwise tests
    pw = _pairwise_heatmaps(eval_dir, figs, tables, list(frames))
    if pw:
        sections.append(("Pairwise PERMANOVA / PERMDISP (BH-adjusted)", "".join(pw)))

    # clustering metrics
    tab = _metrics_table(summary)
    if not tab.empty:
        tab.to_csv(tables / "clustering_metrics.csv")
        sections.append(("Clustering metrics per space and multiplex pair",
                         figs.save(_metric_bars(tab), "clustering_metrics") + tab.to_html(float_format=lambda v: f"{v:.3f}", na_rep="")))

    # Jaccard after Hungarian matching
    jac = {n: (r.get("clustering") or {}).get("jaccard", {}) for n, r in fs.items()}
    jac.update({f"multiplex {n}": r.get("jaccard", {}) for n, r in (summary.get("multiplex") or {}).items()})
    jac_df = pd.DataFrame(jac).astype(float)
    if not jac_df.empty:
        jac_df.index.name, jac_df.columns.name = "label", "feature space"
        jac_df.to_csv(tables / "jaccard.csv")
        sections.append(("Jaccard index per label after Hungarian matching",
                         figs.save(_heatmap(jac_df, "Jaccard (blank = label left unmatched)", "Jaccard"), "jaccard")))

    # ridge
    for name, rr in (summary.get("ridge") or {}).items():
        r2 = pd.Series(rr.get("r2", {}), dtype=float).sort_values(ascending=False)
        if r2.empty:
            continue
        r2.to_csv(tables / f"ridge_r2_{name}.csv", header=["r2"])
        top = r2.head(30)
        fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(top) + 2), 3.5))
        ax.bar(top.index, top.to_numpy(), color="#4c72b0")
        ax.set_xticks(range(len(top)), top.index, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("test R²")
        ax.set_title(f"genes best predicted from {name} (ridge, 80/20 split; top {len(top)} of {len(r2)})")
        ax.axhline(0, color="0.5", lw=0.5)
        fig.tight_layout()
        sections.append((f"Gene prediction from {name}", figs.save(fig, f"ridge_{name}")))

    # parameters, versions, timings
    params = {}
    if config is not None:
        params = {k: getattr(config, k) for k in ("sample", "spaces", "evaluate", "report", "seed", "label_key", "device") if hasattr(config, k)}
    meta_html = "<h3>Run parameters</h3><pre>" + html.escape(json.dumps(params, indent=2, default=str)) + "</pre>"
    meta_html += "<h3>Versions</h3>" + pd.Series(_versions(), name="version").to_frame().to_html()
    if timings:
        tdf = pd.DataFrame(timings).T
        tdf.index.name = "stage"
        tdf.to_csv(tables / "timings.csv")
        meta_html += "<h3>Timings (seconds; cached = reused from an earlier run)</h3>" + tdf.to_html()
    sections.append(("Parameters, versions and timings", meta_html))

    title = title or f"stmorph report: {sample.name if sample is not None else eval_dir.name}"
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>{c}</section>" for h, c in sections)
    toc = "".join(f"<li>{html.escape(h)}</li>" for h, _ in sections)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>{html.escape(title)}</title>
<style>
body {{ font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
h1 {{ border-bottom: 2px solid #4c72b0; }} h2 {{ margin-top: 2em; color: #2a4d7f; }}
figure {{ margin: 1em 0; }} figure img {{ max-width: 100%; }} figcaption {{ font-size: 0.8em; color: #777; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} td, th {{ border: 1px solid #ddd; padding: 3px 6px; text-align: right; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.8em; }} .warn {{ color: #a33; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>What does cell morphology add to the transcripts? Every feature space below is evaluated against the same labels
({html.escape(label_key)}); figures are also saved as PNG/SVG in <code>figures/</code> and the numbers as CSV in
<code>tables/</code>.</p>
<ol>{toc}</ol>
{body}
</body></html>
"""
    path = out / "report.html"
    path.write_text(doc)
    return path
