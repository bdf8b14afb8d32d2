"""``stmorph info``: summarise a sample folder or a supported layout."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(path: Path = typer.Argument(..., help="A sample folder written by stmorph (SpatialSample.write).")) -> None:
        """Print a one-line summary of a stmorph sample folder."""
        from ..sample import SpatialSample

        typer.echo(repr(SpatialSample.read(path)))
