"""``stmorph evaluate``: the study's evaluation of feature spaces against labels."""

from __future__ import annotations

from pathlib import Path

import typer


def _parse_named(values: list[str], option: str) -> dict[str, str]:
    """``NAME=PATH`` options as ``{name: path}`` (the path may end in ``:KEY`` for .h5ad/.loom)."""
    from ..errors import StmorphInputError

    out: dict[str, str] = {}
    for v in values:
        if "=" not in v:
            raise StmorphInputError(f"{option} {v!r}", expected=f"{option} NAME=PATH")
        name, path = v.split("=", 1)
        if not name or name in out:
            raise StmorphInputError(f"{option} {v!r}: empty or repeated name", expected="unique NAME=PATH")
        out[name] = path
    return out


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        features: list[str] = typer.Option(
            ..., "--features", help="Feature space as NAME=PATH; repeatable. PATH: a CSV/TSV or parquet table with cell "
            "ids, or .h5ad/.loom with the key after a colon: file.h5ad:X_ls2_cpu (an obsm key or layer; file.h5ad:X "
            "for X). An .h5ad with embeddings in obsm needs the key. A space named TC is taken as raw counts and "
            "normalised to the median total + log1p."),
        labels: Path = typer.Option(..., "--labels", help="Table (CSV/TSV/parquet) with cell ids and a label column, "
                                    "or .h5ad (obs). Cells without a label are dropped and counted."),
        label_column: str = typer.Option(None, "--label-column", help="Label column in --labels (default: the last column)."),
        id_column: str = typer.Option(None, "--id-column", help="Cell-id column of every table (default: the first column "
                                      "named cell_id, cell, CellID, barcode, index, id, ..., else the first column)."),
        min_overlap: float = typer.Option(0.5, "--min-overlap", help="Refuse inputs with fewer than this fraction of "
                                          "their cell ids shared by all inputs (a wrong id column)."),
        min_label_size: int = typer.Option(None, "--min-label-size", help="Leave out labels with fewer cells (default: "
                                           "the cross-validation folds, 5, as stmorph run does)."),
        multiplex: list[str] = typer.Option([], "--multiplex", help="Multiplex Leiden of two spaces, NAME1+NAME2; repeatable."),
        ridge: list[str] = typer.Option([], "--ridge", help="Predict genes from this space (needs --counts); repeatable."),
        counts: Path = typer.Option(None, "--counts", help="Counts table (cells x genes: CSV/TSV, parquet, .h5ad, .loom) for --ridge."),
        exclude_label: list[str] = typer.Option([], "--exclude-label", help="Drop cells with this label; repeatable."),
        out: Path = typer.Option(..., "--out", help="Output folder (summary.json, tables/, figures/)."),
        permutations: int = typer.Option(999, "--permutations", help="Permutations per pairwise test."),
        n_trees: int = typer.Option(1000, "--n-trees", help="Random-forest trees (study: 1000)."),
        rf_max_samples: float = typer.Option(None, "--rf-max-samples", help="Bootstrap fraction per tree (default: "
                                             "full size, the study's). 0.1 is ~4x faster but changes the accuracies."),
        rf_backend: str = typer.Option("stmorph", "--rf-backend", help="Random forest: stmorph (numba, the "
                                       "same algorithm as sklearn's; ~5x less CPU on dense features) or sklearn."),
        permdisp_test: list[str] = typer.Option(["median", "centroid"], "--permdisp-test",
                                                help="PERMDISP centre(s): median and/or centroid; repeatable."),
        leiden_backend: str = typer.Option("leidenalg", "--leiden-backend", help="Leiden optimiser for the tuning: "
                                           "leidenalg (default, = the multiplex optimiser) or igraph (~15x faster; "
                                           "not with --multiplex)."),
        protocol: str = typer.Option("fast", "--protocol", help="Leiden tuning: fast (default; stmorph's graphs, "
                                     "21-point grid) or study (the study's code: scanpy neighbors with n_pcs=0 + "
                                     "scanpy leiden, k 10..50 x 15 resolutions, multiplex through muon, weights "
                                     "0.05..0.95; minutes on 5,000 cells)."),
        seed: int = typer.Option(0, "--seed", help="Random seed for every analysis."),
        no_figures: bool = typer.Option(False, "--no-figures", help="Skip the PNG figures."),
        html_report: bool = typer.Option(True, "--report/--no-report", help="Also write the HTML report "
                                         "(OUT/report/report.html), the same as `stmorph run` writes."),
        sample_path: Path = typer.Option(None, "--sample", help="The sample folder the features come from: adds "
                                         "the tissue overview and example crops to the report."),
    ) -> None:
        """Evaluate feature spaces: pairwise PERMANOVA/PERMDISP, RF classification, tuned Leiden, multiplex, ridge."""
        import time

        import pandas as pd

        from ..errors import StmorphInputError
        from ..eval import (
            EvalConfig,
            align_inputs,
            evaluate_spaces,
            normalize_counts,
            read_feature_table,
            read_label_table,
            write_results,
        )

        t0 = time.perf_counter()
        paths = _parse_named(features, "--features")
        tables = {name: read_feature_table(p, id_column=id_column) for name, p in paths.items()}
        if "TC" in tables:
            tc = tables["TC"]
            tables["TC"] = pd.DataFrame(normalize_counts(tc.to_numpy()), index=tc.index, columns=tc.columns)
        lab = read_label_table(labels, label_column=label_column, id_column=id_column)
        all_tables = dict(tables)
        if ridge:
            if counts is None:
                raise StmorphInputError("--ridge needs --counts", expected="--counts PATH")
            all_tables["--counts"] = read_feature_table(counts, id_column=id_column)
        cfg = EvalConfig(permutations=permutations, n_trees=n_trees, random_state=seed,
                         permdisp_tests=tuple(permdisp_test), rf_max_samples=rf_max_samples, rf_backend=rf_backend,
                         leiden_backend=leiden_backend, protocol=protocol)
        min_size = cfg.n_splits if min_label_size is None else min_label_size
        # the same input path as `stmorph run` (stratified CV needs a cell of every label per fold)
        aligned, lab, report = align_inputs(all_tables, lab, exclude_labels=exclude_label, min_overlap=min_overlap,
                                            min_label_size=min_size)
        if report["missing_labels"]:
            typer.echo(f"labels: {report['missing_labels']} cells without a label dropped")
        if report["small_labels_left_out"]:
            typer.echo(f"labels with fewer than {min_size} cells left out: {report['small_labels_left_out']}")
        for k, v in report["dropped"].items():
            if v:
                shown = "counts" if k == "--counts" else k
                typer.echo(f"{shown}: {v} cells dropped (not shared by all inputs, without a label, or an excluded "
                           "or too small label)")
        pairs = []
        for m in multiplex:
            if "+" not in m:
                raise StmorphInputError(f"--multiplex {m!r}", expected="NAME1+NAME2")
            a, b = m.split("+", 1)
            pairs.append((a, b))
        spaces = {k: v for k, v in aligned.items() if k != "--counts"}
        unknown = sorted({n for p in pairs for n in p} - set(spaces))
        if unknown:
            raise StmorphInputError(f"--multiplex names {unknown} are not feature spaces", column="--multiplex",
                                    expected=f"names among {sorted(spaces)}")
        ridge_in = {name: aligned["--counts"] for name in ridge}
        res = evaluate_spaces(spaces, lab, config=cfg, multiplex=pairs, ridge=ridge_in)
        report["dropped"]["counts"] = report["dropped"].pop("--counts", 0)
        report["inputs"].pop("--counts", None)
        if "--counts" in report["shared_fraction"]:
            report["shared_fraction"]["counts"] = report["shared_fraction"].pop("--counts")
        write_results(res, out, extra={"cells": report,
                                                                "total_seconds": time.perf_counter() - t0})
        if not no_figures:
            from ..pl import write_eval_figures

            write_eval_figures(res, out / "figures")
        typer.echo(f"wrote {out / 'summary.json'} ({report['n_cells']} cells, {time.perf_counter() - t0:.1f} s)")
        if html_report:
            from ..pipeline.report import write_report
            from ..sample import LABEL_KEY, read_sample

            smp = None
            if sample_path is not None:
                smp = read_sample(sample_path)
                keep = smp.cell_ids.isin(lab.index)
                if not keep.any():
                    raise StmorphInputError("no cell of the sample is among the evaluated cells", file=sample_path,
                                            expected="the sample the feature tables come from")
                smp = smp.subset(keep)
                smp.adata.obs[LABEL_KEY] = pd.Categorical(lab.reindex(smp.cell_ids).astype(str).to_numpy())
            page = write_report(smp, spaces, out, out / "report", labels=lab, seed=seed,
                                title=f"stmorph evaluate: {', '.join(spaces)}")
            typer.echo(f"wrote {page}")
