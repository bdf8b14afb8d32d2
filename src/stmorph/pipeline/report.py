"""Self-contained HTML report of a study, with PNG/SVG figures and CSV tables beside it.

The report only assembles: every figure is a :mod:`stmorph.pl` function of the evaluation's results (read back
with :func:`stmorph.pl.read_results`) and carries its own caption; the first sentence
(:func:`stmorph.pl.headline`) answers the study's question with the numbers. The HTML file embeds every figure
(base64 PNG), so it can be mailed or opened offline; the same figures are written as PNG and SVG to ``figures/``
and the numbers behind them as CSV to ``tables/``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd

from .. import pl
from .._versions import versions
from ..pl import label_colors
from ..pl._eval import _pairwise_matrix
from ..pl._results import read_tables, summary_of
from ..sample import SpatialSample

__all__ = ["write_report", "label_colors"]


class _Figures:
    """Writes each figure as PNG + SVG under ``figures/`` and returns its HTML: the PNG embedded, its caption."""

    def __init__(self, out: Path, *, dpi: int = 110, svg: bool = True) -> None:
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dpi, self.svg, self.n = dpi, svg, 0

    def save(self, fig: Any, name: str) -> str:
        if fig is None:
            return ""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        png = buf.getvalue()
        (self.dir / f"{name}.png").write_bytes(png)
        if self.svg:
            fig.savefig(self.dir / f"{name}.svg", bbox_inches="tight")
        self.n += 1
        cap = pl.caption(fig) or name.replace("_", " ")
        b64 = base64.b64encode(png).decode()
        return (f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(cap[:150])}" '
                f'src="data:image/png;base64,{b64}"/><figcaption><b>Figure {self.n}.</b> {html.escape(cap)} '
                f'<span class="files">figures/{html.escape(name)}.png{", .svg" if self.svg else ""}</span>'
                f'</figcaption></figure>')


def _results(source: Any, spaces: list[str] | None = None) -> Any:
    """The evaluation's results: an ``EvalResults`` as given, else read from its folder by known names."""
    if hasattr(source, "summary"):
        return source
    d = Path(source)
    if (d / "summary.json").is_file() or spaces is None:
        return pl.read_results(d)
    from ..eval import EvalResults

    # only tables (no summary.json): the spaces named by the caller give the tables' names
    return EvalResults(summary={"feature_spaces": {s: {} for s in spaces}}, tables=read_tables(d))


def _pairwise_heatmaps(results: Any, figs: Any, tables_dir: Path, spaces: list[str] | None = None) -> list[str]:
    """One grid of BH-adjusted pairwise p-values per test (one panel per space); the matrices go to CSV."""
    res = _results(results, spaces)
    parts = []
    for test, names in pl.pairwise_table_names(res).items():
        for space, tname in names.items():
            df = res.tables.get(tname)
            if df is not None and len(df) and (spaces is None or space in spaces):
                _pairwise_matrix(df, "padj").to_csv(Path(tables_dir) / f"pairwise_matrix_{test}_{space}.csv")
        fig = pl.pairwise_grid(res, test, spaces=spaces)
        if fig is not None:
            parts.append(figs.save(fig, f"pairwise_{test}"))
    return parts


def _reference(results: Any, config: Any, reference: str | None) -> str | None:
    """The counts space: ``reference``, else ``TC``, else the first space of kind ``counts`` in the config, else
    the first counts-like name."""
    spaces = list(summary_of(results).get("feature_spaces") or {})
    if reference is not None:
        return reference
    if "TC" in spaces:
        return "TC"
    for name, spec in (getattr(config, "spaces", None) or {}).items():
        if isinstance(spec, dict) and spec.get("kind") == "counts" and name in spaces:
            return name
    return pl.reference_space(results)


def _table_html(df: pd.DataFrame, *, digits: int = 3) -> str:
    """A table with its row names as the first column (one header row, named by the index's name)."""
    return df.reset_index().to_html(float_format=lambda v: f"{v:.{digits}f}", na_rep="", index=False, border=0,
                                    classes="num", escape=True)


def _classification_table(results: Any, ref: str | None, margin: float) -> pd.DataFrame:
    ba = pl.balanced_accuracies(results)
    if ba.empty:
        return pd.DataFrame()
    L = pl.n_labels(results)
    chance = pl.chance_level(L)
    tab = pd.DataFrame(index=ba.index)
    tab.index.name = "feature space"
    tab["balanced accuracy"] = ba["balanced_accuracy"]
    if ba["sd"].notna().any():
        tab["SD over folds"] = ba["sd"]
    tab[f"chance (1/{L})"] = chance
    tab["times chance"] = ba["balanced_accuracy"] / chance
    rec = pl.per_label_recall(results)
    tab["lowest label recall"] = rec.min().reindex(tab.index)
    spaces = summary_of(results).get("feature_spaces") or {}
    leaky = {n: (e.get("classification") or {}) for n, e in spaces.items()}
    leaky = {n: c for n, c in leaky.items() if c.get("balanced_accuracy_leaky") is not None}
    if leaky:  # DE panels: chosen inside each training fold; the number had the panel been chosen on all cells
        tab["BA if panel chosen on all cells (leaky)"] = pd.Series(
            {n: c["balanced_accuracy_leaky"] for n, c in leaky.items()}).reindex(tab.index)
        tab["leak"] = pd.Series({n: c.get("leakage") for n, c in leaky.items()}, dtype=float).reindex(tab.index)
    if ref is not None:
        cmp = pl.compare_with_reference(results, ref, margin=margin)
        if not cmp.empty:
            g = cmp.groupby("space")
            for col, key in ((f"labels beating {ref}", "beats"), (f"labels losing to {ref}", "loses")):
                n = g[key].sum()
                tab[col] = [str(int(n[i])) if i in n.index else "(reference)" if i == ref else "" for i in tab.index]
    return tab


def _bound(entry: dict) -> str:
    """Whether the tuned clustering has more clusters than the protocol's lower bound (``bound_met``)."""
    if "bound_met" not in entry:
        return ""
    k = entry.get("min_clusters")
    more = f"> {k} clusters" if k is not None else "above the bound"
    return f"met ({more})" if entry["bound_met"] else f"NOT met: no grid point gave {more}"


def _bound_warning(results: Any) -> str:
    """A visible note when a clustering's tuning found no grid point above the cluster-count bound."""
    s = summary_of(results)
    missed = [n for n, e in (s.get("feature_spaces") or {}).items() if (e.get("clustering") or {}).get("bound_met") is False]
    missed += [f"multiplex {n}" for n, e in (s.get("multiplex") or {}).items() if e.get("bound_met") is False]
    if not missed:
        return ""
    return ("<p class='warn'>No point of the tuning grid gave more clusters than the protocol's lower bound for "
            f"{html.escape(', '.join(missed))}: the best clustering below the bound is shown, but it is not a "
            "clustering the protocol accepts (see <code>bound_met</code> in summary.json).</p>")


def _colocalization_table(results: Any) -> pd.DataFrame:
    col = summary_of(results).get("colocalization") or {}
    rows = [{"clustering": name, "cluster": str(c), **v} for name, clusters in col.items() for c, v in clusters.items()]
    return pd.DataFrame(rows).set_index(["clustering", "cluster"]) if rows else pd.DataFrame()


def _clustering_table(results: Any) -> pd.DataFrame:
    s = summary_of(results)
    alpha = (s.get("config") or {}).get("alpha", 0.05)
    rows = []
    names = {"n_clusters": "clusters", "silhouette": "silhouette", "homogeneity": "homogeneity",
             "completeness": "completeness", "ami": "AMI", "ari": "ARI"}
    for name, e in (s.get("feature_spaces") or {}).items():
        cl = e.get("clustering") or {}
        if not cl:
            continue
        row = {"clustering": name, **{v: cl.get(k) for k, v in names.items()}, "bound": _bound(cl)}
        for test in ("permanova", "permdisp"):
            t = e.get(test) or {}
            if t:
                label = "PERMANOVA" if test == "permanova" else f"PERMDISP ({t.get('test', 'median')})"
                row[f"{label}: pairs p_adj < {alpha:g}"] = f"{t.get('n_significant')}/{t.get('n_pairs')}"
        rows.append(row)
    for name, e in (s.get("multiplex") or {}).items():
        rows.append({"clustering": f"multiplex {name} (weight {e.get('weight')})",
                     **{v: e.get(k) for k, v in names.items()}, "bound": _bound(e)})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index("clustering")


def write_report(
    sample: SpatialSample | None,
    frames: dict[str, pd.DataFrame],
    eval_dir: str | PathLike | Any,
    out: str | PathLike,
    *,
    config: Any = None,
    timings: dict[str, Any] | None = None,
    title: str | None = None,
    label_key: str | None = None,
    seed: int | None = None,
    labels: pd.Series | None = None,
    reference: str | None = None,
    margin: float = 0.05,
    svg: bool = True,
) -> Path:
    """Write ``report.html`` plus ``figures/`` (PNG + SVG) and ``tables/`` (CSV) into ``out``.

    Parameters
    ----------
    sample
        The study's sample (labels, centroids, images for example crops); ``None`` (``stmorph evaluate`` without
        ``--sample``) leaves out the sample overview and the example crops.
    frames
        Feature spaces by name (cells x features), for the UMAPs.
    eval_dir
        Folder with the evaluation's ``summary.json`` and ``tables/`` (read by :func:`stmorph.pl.read_results`),
        or the ``EvalResults`` themselves.
    out
        Output folder.
    config, timings, title
        Run parameters, stage timings and a title shown in the report.
    label_key
        The label column of ``sample`` (default: ``config.label_key`` or ``cell_type``).
    seed
        Seed of the UMAPs and of the choice of example cells (default: ``config.seed`` or 0).
    labels
        The labels (indexed by cell id) when they do not come from ``sample.obs[label_key]``.
    reference
        The counts space the others are compared with (default: ``TC``, else the config's first space of kind
        ``counts``, else the first counts-like name).
    margin
        Recall difference that counts as "beats counts" when the summary holds no fold SDs.
    svg
        Also write every figure as SVG.

    Returns
    -------
    The path of ``report.html``.

    Examples
    --------
    >>> write_report(sample, frames, "eval/", "report/")  # doctest: +SKIP
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = out / "tables"
    tables.mkdir(exist_ok=True)
    results = _results(eval_dir)
    summary = summary_of(results)
    label_key = label_key or getattr(config, "label_key", None) or "cell_type"
    seed = int(seed if seed is not None else getattr(config, "seed", 0) or 0)
    if labels is None and sample is not None:
        labels = sample.labels(label_key)
    colors = label_colors(labels.dropna().astype(str)) if labels is not None else {}
    figs = _Figures(out, svg=svg)
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, html)
    ref = _reference(results, config, reference)
    rec = pl.per_label_recall(results)
    L = len(rec)
    chance = pl.chance_level(L) if L else float("nan")

    # -- sample ------------------------------------------------------------------------------------------
    if sample is not None:
        parts = [figs.save(pl.sample_overview(sample, labels=labels, colors=colors or None), "sample_overview"),
                 f"<p>{html.escape(repr(sample))}</p>"]
        sections.append(("sample", "Sample", "".join(parts)))
        try:
            fig = pl.example_crops(sample, labels=labels, colors=colors or None, random_state=seed)
            if fig is not None:
                sections.append(("crops", "Example crops per label", figs.save(fig, "example_crops")))
        except Exception as exc:  # noqa: BLE001 - a report must not die on a figure; say what happened
            sections.append(("crops", "Example crops per label", f"<p class='warn'>not drawn: {html.escape(str(exc))}</p>"))

    # -- classification ----------------------------------------------------------------------------------
    if L:
        rec.to_csv(tables / "recall_per_label.csv")
        tab = _classification_table(results, ref, margin)
        tab.to_csv(tables / "balanced_accuracy.csv")
        parts = [figs.save(pl.balanced_accuracy_bars(results), "balanced_accuracy"), _table_html(tab, digits=2)]
        parts.append(figs.save(pl.recall_heatmap(results), "recall_per_label"))
        if ref is not None and rec.shape[1] > 1:
            cmp = pl.compare_with_reference(results, ref, margin=margin)
            cmp.to_csv(tables / "recall_vs_counts.csv", index=False)
            parts.append(figs.save(pl.recall_difference_heatmap(results, ref, margin=margin), "recall_vs_counts"))
        parts.append("<details><summary>Per-label recall as a table (tables/recall_per_label.csv)</summary>"
                     + _table_html(rec.rename_axis(index="label (recall)"), digits=2) + "</details>")
        sections.append(("classification", "Random-forest balanced accuracy and per-label recall", "".join(parts)))

    # -- pairwise tests ----------------------------------------------------------------------------------
    pw = _pairwise_heatmaps(results, figs, tables)
    if pw:
        sections.append(("pairwise", "Pairwise PERMANOVA / PERMDISP (BH-adjusted)", "".join(pw)))

    # -- clustering --------------------------------------------------------------------------------------
    ctab = _clustering_table(results)
    if not ctab.empty:
        ctab.to_csv(tables / "clustering_metrics.csv")
        parts = [_bound_warning(results), figs.save(pl.clustering_metrics_bars(results), "clustering_metrics"),
                 _table_html(ctab)]
        jfig = pl.jaccard_heatmap(results)
        if jfig is not None:
            jac = {n: (e.get("clustering") or {}).get("jaccard") for n, e in (summary.get("feature_spaces") or {}).items()}
            jac |= {f"multiplex {n}": e.get("jaccard") for n, e in (summary.get("multiplex") or {}).items()}
            pd.DataFrame({k: v for k, v in jac.items() if v}).rename_axis("label").to_csv(tables / "jaccard.csv")
            parts.append(figs.save(jfig, "jaccard"))
        sections.append(("clustering", "Clustering against the labels (Leiden, multiplex Leiden, Jaccard)", "".join(parts)))
    coloc = _colocalization_table(results)
    if not coloc.empty:
        coloc.to_csv(tables / "colocalization.csv")
        sections.append(("colocalization", "Spatial co-localization of the clusters (SCS)",
                         figs.save(pl.colocalization_bars(results), "colocalization")
                         + "<details><summary>Scores and p-values (tables/colocalization.csv)</summary>"
                         + _table_html(coloc) + "</details>"))

    # -- embeddings --------------------------------------------------------------------------------------
    if frames:
        sections.append(("umap", "Feature spaces (UMAP, coloured by label)",
                         figs.save(pl.embedding_grid(frames, labels, colors=colors or None, random_state=seed), "umaps")))

    # -- gene prediction ---------------------------------------------------------------------------------
    for name, rr in (summary.get("ridge") or {}).items():
        r2 = pd.Series(rr.get("r2", {}), dtype=float).sort_values(ascending=False)
        if r2.empty:
            continue
        r2.rename_axis("gene").to_csv(tables / f"ridge_r2_{name}.csv", header=["r2"])
        sections.append((f"ridge-{name}", f"Gene prediction from {name}", figs.save(pl.ridge_r2_bars(results, name), f"ridge_{name}")))

    # -- parameters, versions, timings -------------------------------------------------------------------
    params: dict[str, Any] = {}
    if config is not None:
        params = {k: getattr(config, k) for k in ("sample", "spaces", "evaluate", "report", "seed", "label_key", "device") if hasattr(config, k)}
    elif summary.get("config"):
        params = {"evaluate": summary["config"]}
    meta = ("<details><summary>Run parameters</summary><pre>" + html.escape(json.dumps(params, indent=2, default=str))
            + "</pre></details>")
    meta += "<h3>Versions</h3>" + _table_html(pd.Series(versions(), name="version").rename_axis("package").to_frame())
    if timings:
        tdf = pd.DataFrame(timings).T
        tdf.index.name = "stage"
        tdf.to_csv(tables / "timings.csv")
        meta += "<h3>Timings (seconds; cached = reused from an earlier run)</h3>" + _table_html(tdf, digits=1)
    sections.append(("parameters", "Parameters, versions and timings", meta))

    # -- page --------------------------------------------------------------------------------------------
    source = Path(str(eval_dir)).name if isinstance(eval_dir, str | PathLike) else "evaluation"
    title = title or f"stmorph report: {sample.name if sample is not None else source}"
    answer = pl.headline(results, ref, margin=margin) if L else ""
    note = pl.margin_note(results, ref, margin=margin) if L else ""
    cells = (summary.get("cells") or {})
    n_cells = cells.get("n_used") or cells.get("n_cells") or next(
        (e.get("n_cells") for e in (summary.get("feature_spaces") or {}).values() if e.get("n_cells")), None)
    facts = []
    if n_cells:
        facts.append(f"{n_cells} cells")
    if L:
        facts.append(f"{L} labels ({html.escape(label_key)}), chance balanced accuracy 1/{L} = {chance:.3f}")
    spaces = list(summary.get("feature_spaces") or {})
    if spaces:
        facts.append(f"{len(spaces)} feature spaces: {html.escape(', '.join(spaces))}"
                     + (f"; counts = {html.escape(ref)}" if ref else ""))
    answer_html = (f'<p class="answer">{html.escape(answer)}</p><p class="note">{html.escape(note)}</p>' if answer
                   else '<p class="note">The evaluation has no classification results, so there is no one-sentence answer.</p>')
    body = "\n".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{c}</section>' for a, h, c in sections)
    toc = "".join(f'<li><a href="#{a}">{html.escape(h)}</a></li>' for a, h, _ in sections)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>{html.escape(title)}</title>
<style>
body {{ font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
        padding: 0 1em; color: #222; line-height: 1.4; }}
h1 {{ border-bottom: 2px solid #4c72b0; }} h2 {{ margin-top: 2em; color: #2a4d7f; }}
.answer {{ font-size: 1.15em; background: #eef3fa; border-left: 5px solid #4c72b0; padding: 0.7em 1em; }}
.note {{ font-size: 0.85em; color: #555; }}
figure {{ margin: 1.2em 0 2em 0; }} figure img {{ max-width: 100%; height: auto; display: block; }}
figcaption {{ font-size: 0.85em; color: #444; max-width: 60em; margin-top: 0.4em; }}
figcaption .files {{ color: #999; margin-left: 0.5em; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }}
td, th {{ border: 1px solid #ddd; padding: 3px 6px; text-align: right; }} th {{ background: #f3f3f3; }}
details {{ margin: 0.8em 0; }} summary {{ cursor: pointer; color: #2a4d7f; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.8em; }} .warn {{ color: #a33; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>What does cell morphology add to the transcripts? Every feature space is scored on how well it finds the same
labels: {'; '.join(facts)}. Figures are also saved as PNG/SVG in <code>figures/</code> and the numbers as CSV in
<code>tables/</code>.</p>
{answer_html}
<ol>{toc}</ol>
{body}
</body></html>
"""
    path = out / "report.html"
    path.write_text(doc)
    return path
