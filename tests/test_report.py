"""The report explains itself: the one-sentence answer, chance levels, recall named as recall, a caption under every
figure, figures that grow with the number of labels without overlapping labels, stmorph.pl as the only figure
code, and a 19-label report that renders in a browser."""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import stmorph.pl as pl

SRC = Path(__file__).resolve().parents[1] / "src" / "stmorph"


# -- crafted results --------------------------------------------------------------------------------------------
def _summary(recalls: dict[str, list[float]], labels: list[str], sd: dict[str, list[float]] | None = None) -> dict:
    fs = {}
    for name, r in recalls.items():
        c = {"balanced_accuracy": float(np.mean(r)), "per_label": dict(zip(labels, r))}
        if sd and name in sd:
            c["per_label_sd"] = dict(zip(labels, sd[name]))
        fs[name] = {"n_cells": 100, "classification": c}
    return {"feature_spaces": fs, "multiplex": {}, "ridge": {}, "config": {"alpha": 0.05, "permutations": 99,
                                                                          "permdisp_tests": ["median"]}}


def _results(n_labels: int, seed: int = 0, spaces: list[str] | None = None):
    """A full fake evaluation of ``n_labels`` labels: classification, clustering, multiplex, pairwise tables."""
    from stmorph.eval import EvalResults

    rng = np.random.default_rng(seed)
    labels = [f"type_{i}" for i in range(n_labels)]
    spaces = spaces or ["TC", "LS2", "CP"]
    s = _summary({n: list(rng.uniform(0.2, 1.0, n_labels)) for n in spaces}, labels)
    tables = {}
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    for n in spaces:
        jac = {lab: (None if rng.random() < 0.2 else float(rng.uniform(0, 1))) for lab in labels}
        s["feature_spaces"][n]["clustering"] = {"n_clusters": n_labels - 2, "silhouette": 0.1, "homogeneity": 0.7,
                                                "completeness": 0.8, "ami": 0.6, "ari": 0.5, "jaccard": jac}
        s["feature_spaces"][n]["permanova"] = {"n_pairs": len(pairs), "n_significant": 3}
        for t in ("permanova", "permdisp_median"):
            tables[f"{t}_{n}"] = pd.DataFrame({"group1": [a for a, _ in pairs], "group2": [b for _, b in pairs],
                                               "padj": rng.uniform(0.001, 1, len(pairs))})
    s["multiplex"]["TC+LS2"] = {"weight": 0.5, "n_clusters": 9, "silhouette": 0.05, "homogeneity": 0.6,
                                "completeness": 0.7, "ami": 0.5, "ari": 0.4, "jaccard": {lab: 0.5 for lab in labels}}
    s["ridge"]["LS2"] = {"r2": {f"g{i}": float(v) for i, v in enumerate(rng.normal(0.1, 0.1, 40))}}
    return EvalResults(summary=s, tables=tables)


# -- 1. the one-sentence answer -----------------------------------------------------------------------------------
LABS = ["a", "b", "c", "d", "e"]
RECALLS = {"TC": [0.5, 0.5, 0.5, 0.5, 0.5], "LS2": [0.8, 0.7, 0.62, 0.5, 0.3], "CP": [0.52, 0.5, 0.5, 0.5, 0.5]}


def test_headline_names_spaces_labels_gains_and_chance():
    s = _summary(RECALLS, LABS)
    assert pl.headline(s) == ("LS2 beats counts (TC) on 3 of 5 labels (a, b, c; recall +0.12 to +0.30), CP on none; "
                              "balanced accuracy TC 0.50, LS2 0.58, CP 0.50 (chance 0.20).")
    note = pl.margin_note(s)
    assert "by more than 0.05" in note and "recall" in note and "1 / number of labels" in note
    cmp = pl.compare_with_reference(s)
    assert cmp.attrs["margin_kind"] == "fixed"
    assert cmp.query("space == 'LS2' and loses")["label"].tolist() == ["e"]
    # a wider margin: only the two large gains count
    assert pl.headline(s, margin=0.15).startswith("LS2 beats counts (TC) on 2 of 5 labels (a, b; recall +0.20 to +0.30)")


def test_headline_uses_fold_sd_when_the_summary_has_it():
    sd = {"TC": [0.05, 0.05, 0.05, 0.05, 0.05], "LS2": [0.1, 0.1, 0.2, 0.1, 0.1], "CP": [0.01] * 5}
    s = _summary(RECALLS, LABS, sd=sd)
    # c gains 0.12 but its recall varies by 0.2 over the folds: not counted; CP's +0.02 beats a 0.05 SD neither
    assert pl.headline(s).startswith("LS2 beats counts (TC) on 2 of 5 labels (a, b; recall +0.20 to +0.30), CP on none;")
    assert "fold" in pl.margin_note(s)
    assert pl.compare_with_reference(s).attrs["margin_kind"] == "fold_sd"


def test_headline_reference_choice_and_edge_cases():
    renamed = _summary({"counts": RECALLS["TC"], "LS2": RECALLS["LS2"]}, LABS)
    assert pl.reference_space(renamed) == "counts"
    assert pl.headline(renamed).startswith("LS2 beats counts (counts) on 3 of 5 labels")
    assert pl.headline(_summary({"LS2": RECALLS["LS2"]}, LABS)).startswith("No counts space to compare with")
    assert pl.headline(_summary({"TC": RECALLS["TC"]}, LABS)) == (
        "Only counts (TC) were evaluated: balanced accuracy 0.50 (chance 0.20), 5 labels.")
    none = _summary({"TC": RECALLS["TC"], "CP": RECALLS["CP"]}, LABS)
    assert pl.headline(none) == ("No feature space beats counts (TC) on any of 5 labels; balanced accuracy TC 0.50, "
                                 "CP 0.50 (chance 0.20).")
    assert pl.headline({"feature_spaces": {}}) == ""
    assert pl.chance_level(19) == pytest.approx(1 / 19)


# -- 2. figures grow with the labels and nothing overlaps ---------------------------------------------------------
def _boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_text() and t.get_visible()]


def _overlap(a, b, tol: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig


def _no_tick_overlap(fig) -> None:
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.axison and ax.get_visible()]
    px_per_pt = fig.dpi / 72
    for ax in axes:
        for texts in (ax.get_xticklabels(), ax.get_yticklabels()):
            texts = [t for t in texts if t.get_text() and t.get_visible()]
            angle = texts[0].get_rotation() % 180 if texts else 0
            if angle in (0, 90):  # axis-aligned boxes are the text: neighbours must not intersect
                bb = _boxes(fig, texts)
                for a, b in zip(bb, bb[1:]):
                    assert not _overlap(a, b), f"tick labels overlap in '{ax.get_title()}'"
            else:  # slanted labels: the gap between neighbours, across the text, must exceed the text height
                pos = np.sort([ax.transData.transform((t.get_position()[0], 0))[0] for t in texts])
                gap = np.diff(pos) * np.sin(np.radians(angle))
                assert (gap >= 0.9 * texts[0].get_fontsize() * px_per_pt).all(), f"slanted labels crowd in '{ax.get_title()}'"
        # titles and tick labels stay off the other panels and their titles
        for other in axes:
            if other is not ax and ax.get_title() and other.get_title():
                a, b = _boxes(fig, [ax.title]), _boxes(fig, [other.title])
                assert not _overlap(a[0], b[0]), f"titles '{ax.get_title()}' and '{other.get_title()}' overlap"
        for other in axes:
            if other is ax:
                continue
            frame = other.get_window_extent(fig.canvas.get_renderer())
            for b in _boxes(fig, [*ax.get_xticklabels(), *ax.get_yticklabels()]):
                assert not _overlap(b, frame, tol=1.0), f"a tick label of '{ax.get_title()}' covers '{other.get_title()}'"


FIGURES = {
    "recall_heatmap": pl.recall_heatmap,
    "recall_difference_heatmap": pl.recall_difference_heatmap,
    "jaccard_heatmap": pl.jaccard_heatmap,
    "pairwise_grid": lambda r: pl.pairwise_grid(r, "permanova"),
    "balanced_accuracy_bars": pl.balanced_accuracy_bars,
    "clustering_metrics_bars": pl.clustering_metrics_bars,
    "ridge_r2_bars": lambda r: pl.ridge_r2_bars(r, "LS2"),
}


@pytest.mark.parametrize("name", ["recall_heatmap", "recall_difference_heatmap", "jaccard_heatmap", "pairwise_grid"])
def test_figures_grow_with_the_number_of_labels(name):
    small, big = FIGURES[name](_results(5)), FIGURES[name](_results(30))
    assert big.get_size_inches()[1] > small.get_size_inches()[1] + 1.0
    for n in (19, 30):
        _no_tick_overlap(_drawn(FIGURES[name](_results(n))))


def test_few_labels_and_many_spaces_stay_readable():
    res = _results(6, spaces=["TC", "TC_pca_panel", "LS1", "LS2", "LS5", "CP", "MUSE_TC_LS2", "concat_TC_LS2"])
    for name in ("pairwise_grid", "recall_difference_heatmap", "jaccard_heatmap", "clustering_metrics_bars",
                 "balanced_accuracy_bars"):
        _no_tick_overlap(_drawn(FIGURES[name](res)))
    assert pl.clustering_metrics_bars(res).get_size_inches()[0] < 12  # fits a page without shrinking


def test_legends_sit_outside_the_axes():
    res = _results(30)
    for fig in (pl.clustering_metrics_bars(res), pl.per_label_bars(pl.per_label_recall(res))):
        _drawn(fig)
        ax = fig.axes[0]
        leg = ax.get_legend()
        r = fig.canvas.get_renderer()
        assert not _overlap(leg.get_window_extent(r), ax.get_window_extent(r))
        _no_tick_overlap(fig)


def test_every_pl_figure_has_a_caption_and_names_recall():
    res = _results(19)
    for name, fn in FIGURES.items():
        fig = fn(res)
        assert len(pl.caption(fig)) > 80, name
    rec = pl.recall_heatmap(res)
    assert "recall" in rec.axes[-1].get_ylabel()  # the colour bar
    assert "1/19" in pl.caption(pl.balanced_accuracy_bars(res))
    assert "chance 1/19" in pl.balanced_accuracy_bars(res).axes[0].get_title()


# -- 3. the report and the run stage do not import each other -----------------------------------------------------
def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_report_and_run_have_no_import_cycle():
    rep = _imports(SRC / "pipeline" / "report.py", "stmorph.pipeline")
    run = _imports(SRC / "pipeline" / "_run.py", "stmorph.pipeline")
    assert not any(m == "stmorph.pipeline._run" or m.startswith("stmorph.pipeline._run.") for m in rep)
    assert "stmorph.pipeline" not in rep  # the package imports _run
    assert "stmorph._versions" in rep and "stmorph._versions" in run  # one neutral module for the versions
    assert "_versions" not in {n.name for n in ast.parse((SRC / "pipeline" / "_run.py").read_text()).body
                               if isinstance(n, ast.FunctionDef)}
    # the report draws nothing itself: no matplotlib drawing calls, every figure comes from stmorph.pl
    text = (SRC / "pipeline" / "report.py").read_text()
    assert not re.search(r"\b(imshow|subplots|\.bar\(|barh|scatter|colorbar)\b", text)


# -- 4. a 19-label report, end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report19(tmp_path_factory):
    from stmorph.datasets import synthetic_tissue
    from stmorph.eval import EvalConfig, evaluate_spaces, normalize_counts, write_results
    from stmorph.pipeline.report import write_report

    out = tmp_path_factory.mktemp("report19")
    sample = synthetic_tissue(n_cells=570, n_types=19, n_genes=40, random_state=0)
    lab = sample.labels("cell_type").astype(str)
    X = sample.adata.X.toarray() if hasattr(sample.adata.X, "toarray") else np.asarray(sample.adata.X)
    rng = np.random.default_rng(0)
    morph = sample.adata.obs[["cell_area", "nucleus_area"]].to_numpy(float)
    frames = {"TC": pd.DataFrame(normalize_counts(X), index=sample.cell_ids),
              "CP": pd.DataFrame(np.c_[morph, rng.normal(size=(len(lab), 4))], index=sample.cell_ids),
              "LS2": pd.DataFrame(rng.normal(size=(len(lab), 6)), index=sample.cell_ids)}
    for k, f in frames.items():
        f.columns = [f"{k}_{i}" for i in range(f.shape[1])]
    cfg = EvalConfig(permutations=19, n_trees=20, k_grid=(10,), resolutions=(0.5, 1.0), min_clusters=2,
                     multiplex_weights=(0.5,), permdisp_tests=("median",), rf_n_jobs=1, leiden_n_jobs=1)
    res = evaluate_spaces({k: f.to_numpy() for k, f in frames.items()}, lab, config=cfg, multiplex=[("TC", "CP")],
                          ridge={"CP": pd.DataFrame(X, columns=sample.gene_names)})
    write_results(res, out / "eval")
    pl.write_eval_figures(res, out / "eval" / "figures")
    page = write_report(sample, frames, out / "eval", out / "report", seed=0, title="19 labels")
    return {"page": page, "html": page.read_text(), "res": res, "sample": sample, "frames": frames, "out": out}


class _Figures(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures, self.captions, self.imgs, self._in = 0, [], 0, False

    def handle_starttag(self, tag, attrs):
        if tag == "figure":
            self.figures += 1
        elif tag == "figcaption":
            self._in = True
            self.captions.append("")
        elif tag == "img":
            self.imgs += 1

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.captions[-1] += data


def test_read_results_gives_back_what_was_written(report19):
    res, back = report19["res"], pl.read_results(report19["out"] / "eval")
    assert set(back.tables) == set(res.tables)
    pd.testing.assert_frame_equal(back.tables["permanova_TC"], res.tables["permanova_TC"], check_dtype=False)
    assert list(back.tables["classification_TC"].index) == list(res.tables["classification_TC"].index)
    pd.testing.assert_frame_equal(pl.per_label_recall(back), pl.per_label_recall(res))
    assert (report19["out"] / "eval" / "figures" / "per_label_balanced_accuracy.png").is_file()  # write_eval_figures


def test_report_states_the_answer_and_chance(report19):
    page = report19["html"]
    assert pl.n_labels(report19["res"]) == 19
    answer = re.search(r'<p class="answer">(.*?)</p>', page, re.S).group(1)
    assert "(TC)" in answer and "(chance 0.05)" in answer
    assert "chance balanced accuracy 1/19 = 0.053" in page
    assert "chance (1/19)" in page  # the balanced-accuracy table
    assert "label (recall)" in page and "per-label balanced accuracy" not in page.lower()
    head = pd.read_csv(report19["out"] / "report" / "tables" / "recall_per_label.csv", nrows=0).columns[0]
    assert head == "label"
    assert "balanced_accuracy_per_label" not in page


def test_every_report_figure_has_a_caption(report19):
    p = _Figures()
    p.feed(report19["html"])
    assert p.figures >= 10 and p.figures == len(p.captions) == p.imgs
    for cap in p.captions:
        assert len(cap.strip()) > 80, cap
    figs = {f.stem for f in (report19["out"] / "report" / "figures").glob("*.png")}
    assert {"sample_overview", "example_crops", "balanced_accuracy", "recall_per_label", "recall_vs_counts",
            "pairwise_permanova", "pairwise_permdisp_median", "clustering_metrics", "jaccard", "umaps",
            "ridge_CP"} <= figs


def test_crops_show_every_channel_with_a_scale_bar_and_the_overview_draws_cells(report19):
    sample = report19["sample"]
    fig = pl.example_crops(sample, random_state=0)
    n_lab = sample.labels("cell_type").nunique()
    panels = len(sample.images) + 1  # stains + spots
    axes = np.array(fig.axes).reshape(n_lab, -1)
    assert axes.shape[1] % panels == 0
    assert [ax.get_title() for ax in axes[0, :panels]] == [*sample.images, "spots"]
    for ax in axes.ravel():
        if ax.images:
            assert ax.lines, "every crop carries a scale bar"
    assert "5 µm" in pl.caption(fig) and "µm" in "".join(t.get_text() for t in axes[0, 0].texts)
    ov = pl.sample_overview(sample)
    img_ax = ov.axes[0]
    assert len(img_ax.images) == 2  # the DAPI image and the cells' outlines coloured by label
    assert "segmentation outlines" in pl.caption(ov) and "DAPI" in img_ax.get_title()


def test_umap_legend_outside_the_panels(report19):
    fig = _drawn(pl.embedding_grid(report19["frames"], report19["sample"].labels("cell_type").astype(str)))
    r = fig.canvas.get_renderer()
    leg = fig.legends[0].get_window_extent(r)
    for ax in fig.axes:
        assert not _overlap(leg, ax.get_window_extent(r))


def test_report_renders_in_headless_chromium(report19, chromium_page_check):
    check = chromium_page_check(report19["page"])
    assert check["images"] >= 10 and check["broken"] == 0, check
    assert check["error"] is None, check["error"]


def test_report_shows_bound_leakage_and_colocalization(tmp_path):
    """A clustering whose tuning found no grid point above the bound is flagged, DE-panel spaces show the leaky
    number beside the honest one, and co-localization scores get a figure and a table."""
    from stmorph.pipeline.report import write_report

    res = _results(6)
    s = res.summary
    s["feature_spaces"]["TC"]["clustering"] |= {"bound_met": False, "min_clusters": 5}
    s["feature_spaces"]["LS2"]["clustering"] |= {"bound_met": True, "min_clusters": 5}
    s["multiplex"]["TC+LS2"] |= {"bound_met": False, "min_clusters": 5}
    c = s["feature_spaces"]["CP"]["classification"]
    c |= {"balanced_accuracy_leaky": c["balanced_accuracy"] + 0.07, "leakage": 0.07}
    s["colocalization"] = {"TC": {"0": {"n_cells": 40, "scs": 3.2, "p_value": 0.001},
                                  "1": {"n_cells": 35, "scs": 0.1, "p_value": 0.6}}}
    html = write_report(None, {}, res, tmp_path / "r").read_text()
    assert html.count("NOT met") == 2 and "met (&gt; 5 clusters)" in html
    assert "No point of the tuning grid" in html and "TC, multiplex TC+LS2" in html
    table = pd.read_csv(tmp_path / "r" / "tables" / "balanced_accuracy.csv", index_col=0)
    assert table.loc["CP", "leak"] == pytest.approx(0.07)
    assert np.isnan(table.loc["TC", "leak"])
    assert "1 of 2 clusters co-localized" not in html  # titles live in the figure, the caption explains it
    assert (tmp_path / "r" / "figures" / "colocalization.png").is_file()
    coloc = pd.read_csv(tmp_path / "r" / "tables" / "colocalization.csv")
    assert set(coloc["cluster"].astype(str)) == {"0", "1"} and coloc["scs"].max() == pytest.approx(3.2)
    assert "Spatial co-localization score of each cluster" in html


def test_evaluation_computes_and_never_draws():
    """No module of stmorph.eval imports stmorph.pl or matplotlib (figures are pl's, from results objects)."""
    for path in sorted((SRC / "eval").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert not re.match(r"^(\.\.pl|stmorph\.pl|matplotlib)", mod), (path.name, mod)
                assert not (node.level == 2 and node.module is None and any(a.name == "pl" for a in node.names)), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith(("matplotlib", "stmorph.pl")) for a in node.names), path.name
