"""``stmorph evaluate``: the study's evaluation of feature spaces against labels."""

from __future__ import annotations

from pathlib import Path

import typer


def _parse_named(values: list[str], option: str) -> dict[str, Path]:
    from ..errors import StmorphInputError

    out: dict[str, Path] = {}
    for v in values:
        if "=" not in v:
            raise StmorphInputError(f"{option} {v!r}", expected=f"{option} NAME=PATH")
        name, path = v.split("=", 1)
        if not name or name in out:
            raise StmorphInputError(f"{option} {v!r}: empty or repeated name", expected="unique NAME=PATH")
        out[name] = Path(path)
    return out


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        features: list[str] = typer.Option(
            ..., "--features", help="Feature space as NAME=PATH (CSV with cell ids, or .h5ad); repeatable. A space named "
            "TC is taken as raw counts and normalised to the median total + log1p."),
        labels: Path = typer.Option(..., "--labels", help="CSV (or .h5ad) with cell ids and a label column."),
        label_column: str = typer.Option(None, "--label-column", help="Label column in --labels (default: the last column)."),
        id_column: str = typer.Option(None, "--id-column", help="Cell-id column of every CSV (default: the first column)."),
        multiplex: list[str] = typer.Option([], "--multiplex", help="Multiplex Leiden of two spaces, NAME1+NAME2; repeatable."),
        ridge: list[str] = typer.Option([], "--ridge", help="Predict genes from this space (needs --counts); repeatable."),
        counts: Path = typer.Option(None, "--counts", help="Counts table (cells x genes) for --ridge."),
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
        seed: int = typer.Option(0, "--seed", help="Random seed for every analysis."),
        no_figures: bool = typer.Option(False, "--no-figures", help="Skip the PNG figures."),
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
            write_results,
        )

        t0 = time.perf_counter()
        paths = _parse_named(features, "--features")
        tables = {name: read_feature_table(p, id_column=id_column) for name, p in paths.items()}
        if "TC" in tables:
            tc = tables["TC"]
            tables["TC"] = pd.DataFrame(normalize_counts(tc.to_numpy()), index=tc.index, columns=tc.columns)
        if labels.suffix == ".h5ad":
            import anndata as ad

            obs = ad.read_h5ad(labels, backed="r").obs
            col = label_column or obs.columns[-1]
            if col not in obs.columns:
                raise StmorphInputError("label column not found", file=labels, column=col, expected=f"one of {list(obs.columns)}")
            lab = obs[col].astype(str)
        else:
            if not labels.exists():
                raise StmorphInputError("file not found", file=labels, expected="a CSV with cell ids and labels")
            df = pd.read_csv(labels)
            idc = id_column if (id_column and id_column in df.columns) else df.columns[0]
            col = label_column or df.columns[-1]
            if col not in df.columns:
                raise StmorphInputError("label column not found", file=labels, column=col, expected=f"one of {list(df.columns)}")
            lab = pd.Series(df[col].astype(str).to_numpy(), index=df[idc].astype(str))
        all_tables = dict(tables)
        if ridge:
            if counts is None:
                raise StmorphInputError("--ridge needs --counts", expected="--counts PATH")
            all_tables["__counts__"] = read_feature_table(counts, id_column=id_column)
        aligned, lab, report = align_inputs(all_tables, lab, exclude_labels=exclude_label)
        for k, v in report["dropped"].items():
            if v:
                shown = "counts" if k == "__counts__" else k
                typer.echo(f"{shown}: {v} cells dropped (not shared by all inputs, or an excluded label)")
        pairs = []
        for m in multiplex:
            if "+" not in m:
                raise StmorphInputError(f"--multiplex {m!r}", expected="NAME1+NAME2")
            a, b = m.split("+", 1)
            pairs.append((a, b))
        cfg = EvalConfig(permutations=permutations, n_trees=n_trees, random_state=seed,
                         permdisp_tests=tuple(permdisp_test), rf_max_samples=rf_max_samples, rf_backend=rf_backend,
                         leiden_backend=leiden_backend)
        spaces = {k: v for k, v in aligned.items() if k != "__counts__"}
        ridge_in = {name: aligned["__counts__"] for name in ridge}
        res = evaluate_spaces(spaces, lab, config=cfg, multiplex=pairs, ridge=ridge_in)
        report["dropped"]["counts"] = report["dropped"].pop("__counts__", 0)
        report["inputs"].pop("__counts__", None)
        write_results(res, out, figures=not no_figures, extra={"cells": report,
                                                                "total_seconds": time.perf_counter() - t0})
        typer.echo(f"wrote {out / 'summary.json'} ({report['n_cells']} cells, {time.perf_counter() - t0:.1f} s)")
