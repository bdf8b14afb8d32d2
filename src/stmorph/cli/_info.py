"""``stmorph info``: summarise a sample folder or a supported layout."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        path: Path = typer.Argument(..., help="A sample folder written by stmorph (SpatialSample.write)."),
        as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON (n_cells, n_genes, channels, "
                                     "pixel_size, has_segmentation, ...)."),
    ) -> None:
        """Print a summary of a stmorph sample folder."""
        import json

        from ..sample import SpatialSample

        sample = SpatialSample.read(path)
        if as_json:
            typer.echo(json.dumps(sample.summary(), indent=2))
        else:
            typer.echo(repr(sample))
