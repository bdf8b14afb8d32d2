"""``stmorph simulate``: write a synthetic tissue as a sample folder or a vendor layout (Baysor, Xenium, CosMx,
MERSCOPE)."""

from __future__ import annotations

from pathlib import Path

import typer

_LAYOUTS = ("sample", "baysor", "xenium", "cosmx", "merscope")
#: Above this many cells, ``--as xenium`` writes a slide of distinct tissues out of core (write_xenium_slide).
SLIDE_ABOVE = 20_000


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        out: Path = typer.Argument(..., help="Folder to write (must not exist unless --overwrite)."),
        layout_out: str = typer.Option(
            "sample", "--as", help="What to write: 'sample' (stmorph sample folder), or the native layout of "
            "'baysor', 'xenium', 'cosmx' (flat files, 2 x 2 FOVs) or 'merscope' (region folder)."
        ),
        n_cells: int = typer.Option(600, "--n-cells", help="Number of cells."),
        n_types: int = typer.Option(6, "--n-types", help="Number of cell types."),
        n_genes: int = typer.Option(60, "--n-genes", help="Number of genes."),
        tissue_layout: str = typer.Option("layers", "--layout", help="Spatial layout: layers, patches or random."),
        morphology_signal: float = typer.Option(
            1.0, "--morphology-signal", help="Scale of the morphology differences between types (0 = none)."
        ),
        expression_signal: float = typer.Option(
            1.0, "--expression-signal", help="Scale of the marker-gene fold changes (0 = identical expression)."
        ),
        morphology_only_types: int = typer.Option(
            1, "--morphology-only-types", help="Type pairs that share expression and differ only in morphology."
        ),
        expression_only_types: int = typer.Option(
            1, "--expression-only-types", help="Type pairs that share morphology and differ only in expression."
        ),
        z_planes: int = typer.Option(3, "--z-planes", help="Planes of the Baysor stain stacks."),
        pixel_size: float = typer.Option(0.5, "--pixel-size", help="Micrometres per pixel."),
        seed: int = typer.Option(0, "--seed", help="Random seed (the same seed gives the same tissue)."),
        tissue_cells: int | None = typer.Option(
            None, "--tissue-cells", help="With --as xenium: write a slide, a grid of distinct tissues of this many "
            f"cells each, tissue by tissue (memory flat in --n-cells), whenever --n-cells exceeds it. Default: "
            f"a slide of 2000-cell tissues above {SLIDE_ABOVE:,} cells, else one tissue in memory.",
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    ) -> None:
        """Simulate a tissue of cell types with expression, morphology, DAPI/membrane images and transcripts.

        With --as xenium and more than 20,000 cells (or more than --tissue-cells), the output is a slide: a grid
        of distinct tissues of one cell-type design, written tissue by tissue in the Xenium layout (memory flat
        in the number of cells; stmorph.datasets.write_xenium_slide).
        """
        from ..datasets._tissue import synthetic_tissue
        from ..errors import StmorphInputError
        from ..io._baysor import write_baysor_layout
        from ..io._cosmx import write_cosmx_layout
        from ..io._merscope import write_merscope_layout
        from ..io._xenium import write_xenium_layout

        if layout_out not in _LAYOUTS:
            raise StmorphInputError(f"unknown output kind '{layout_out}'", column="--as", expected=f"one of {_LAYOUTS}")
        if out.exists() and not overwrite:
            raise StmorphInputError("the output folder exists; pass --overwrite", file=out, expected="a new folder")
        if tissue_cells is not None and tissue_cells < 1:
            raise StmorphInputError(f"--tissue-cells {tissue_cells}", column="--tissue-cells", expected=">= 1")
        tissue_args = dict(
            n_types=n_types, n_genes=n_genes, layout=tissue_layout, morphology_signal=morphology_signal,
            expression_signal=expression_signal, morphology_only_types=morphology_only_types,
            expression_only_types=expression_only_types, z_planes=z_planes,
        )
        per_tissue = tissue_cells if tissue_cells is not None else 2000
        if layout_out == "xenium" and n_cells > (tissue_cells if tissue_cells is not None else SLIDE_ABOVE):
            from ..datasets._slides import write_xenium_slide

            write_xenium_slide(out, n_cells, tissue_cells=per_tissue, seed=seed, pixel_size=pixel_size,
                               overwrite=overwrite, **tissue_args)
            n_tissues = -(-n_cells // per_tissue)
            typer.echo(f"slide of {n_cells} cells: {n_tissues} distinct tissues of {per_tissue} cells "
                       f"(one cell-type design, seed {seed})")
            typer.echo(f"wrote {layout_out} to {out}")
            return
        sample = synthetic_tissue(n_cells, pixel_size=pixel_size, random_state=seed, **tissue_args)
        if layout_out == "sample":
            sample.write(out, overwrite=overwrite)
        else:
            writer = {"baysor": write_baysor_layout, "xenium": write_xenium_layout, "cosmx": write_cosmx_layout,
                      "merscope": write_merscope_layout}[layout_out]
            writer(sample, out, overwrite=overwrite)
        info = sample.adata.uns["synthetic_tissue"]
        typer.echo(repr(sample))
        typer.echo(f"  morphology-only pairs: {info['morphology_only_groups']}")
        typer.echo(f"  expression-only pairs: {info['expression_only_groups']}")
        typer.echo(f"wrote {layout_out} to {out}")
