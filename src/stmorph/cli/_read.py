"""``stmorph read``: read any supported layout and write a stmorph sample folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("read")
    def read_cmd(
        format: str = typer.Argument(
            ...,
            help="Input format: 'auto' (detect from the files), or one of stmorph, spatialdata, xenium, baysor, "
            "merfish_tables, merscope, cosmx.",
        ),
        path: Path = typer.Argument(..., help="The input folder (or table file for merscope/cosmx)."),
        out: Path = typer.Option(..., "--out", "-o", help="Sample folder to write (written atomically)."),
        z: int | None = typer.Option(None, "--z", help="z-plane of stain stacks (Baysor); default the middle plane."),
        pixel_size: float | None = typer.Option(None, "--pixel-size", help="Micrometres per pixel (overrides the files)."),
        origin: tuple[float, float] | None = typer.Option(
            None, "--origin", help="x y micrometres of pixel (0, 0) (Xenium crops, generic tables in um)."
        ),
        min_qv: float | None = typer.Option(None, "--min-qv", help="Drop Xenium transcripts with qv below this."),
        copy_images: bool = typer.Option(False, "--copy-images", help="Copy the stain images into the sample folder."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    ) -> None:
        """Read a spatial transcriptomics output into a stmorph sample folder and print its summary."""
        import inspect
        import json

        from .. import io as sio
        from ..errors import StmorphInputError

        fmt = sio.detect_format(path) if format == "auto" else format
        if fmt not in sio.available_formats():
            raise StmorphInputError(f"unknown format '{format}'", expected=f"'auto' or one of {sio.available_formats()}")
        if out.exists() and not overwrite:
            raise StmorphInputError("the output folder exists; pass --overwrite", file=out, expected="a new folder")
        reader = sio._registry._READERS[fmt].read
        given = {"z": z, "pixel_size": pixel_size, "origin": origin, "min_qv": min_qv}
        kwargs = {k: v for k, v in given.items() if v is not None}
        params = inspect.signature(reader).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if fmt in ("merscope", "cosmx"):
            takes_any, params = False, inspect.signature(sio.read_generic).parameters
        bad = [k for k in kwargs if k not in params and not takes_any]
        if bad:
            raise StmorphInputError(
                f"option(s) {['--' + b.replace('_', '-') for b in bad]} do not apply to format '{fmt}'",
                expected=f"options of the {fmt} reader",
            )
        sample = sio.read(path, format=fmt, **kwargs)
        written = sio.write(sample, out, copy_images=copy_images, overwrite=overwrite)
        typer.echo(repr(sample))
        rep = sample.provenance.get("report", {})
        for key, note in rep.items():
            if isinstance(note, dict) and "message" in note:
                typer.echo(f"  note: {note['message']}")
            else:
                typer.echo(f"  {key}: {json.dumps(note)}")
        typer.echo(f"wrote {written}")
