"""``stmorph read``: read any supported layout and write a stmorph sample folder.

Image and segmentation options take a path with an optional selector after its last ``:``
(``PATH:3`` = z-plane 3, ``PATH:z=3``, ``PATH:channel=DAPI``, ``PATH:c=1``, ``PATH:z=3,c=DAPI``):

* ``--image NAME=PATH[:SEL]`` - one stain named ``NAME``; a multi-channel file (an OME-TIFF with a ``C`` axis, an
  RGB composite) without a channel selector gives every channel as ``NAME_<channel name>``;
* ``--image PATH[:SEL]`` - every channel of the file under the file's own channel names (else
  ``<file stem>_<index>``); a single-channel file is named after the file;
* ``--segmentation PATH[:SEL]`` - a label image, or a polygon table (csv/parquet) whose columns
  ``--segmentation-columns`` names.

A z-stack gives its middle plane unless a z-plane is selected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

_NAME = re.compile(r"^[^/\\:.=]+$")  # an image name: no path separators, dots, colons or '='
_SELECTOR = re.compile(r"^(\d+|((z|c|channel)=[^,:/=]+)(,(z|c|channel)=[^,:/=]+)*)$")


def parse_mapping(text: str | None, *, option: str) -> dict[str, str | None] | None:
    """``"x=gx,y=gy,cell_id="`` -> ``{"x": "gx", "y": "gy", "cell_id": None}`` (an empty value means "none")."""
    from ..errors import StmorphInputError

    if text is None:
        return None
    out: dict[str, str | None] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise StmorphInputError(f"{option}: cannot read '{item}'", expected="KEY=COLUMN pairs separated by commas")
        out[key.strip()] = value.strip() or None
    return out


def parse_image(text: str) -> tuple[str | None, str, int | None, int | str | None]:
    """``NAME=PATH[:SEL]`` or ``PATH[:SEL]`` -> ``(name or None, path, z, channel)`` (see the module docstring)."""
    from ..errors import StmorphInputError

    name: str | None = None
    rest = text
    head, eq, tail = text.partition("=")
    if eq and _NAME.match(head) and not Path(text).exists():
        name, rest = head.strip(), tail
    z: int | None = None
    channel: int | str | None = None
    path, colon, sel = rest.rpartition(":")
    if colon and path and _SELECTOR.match(sel) and not Path(rest).exists():
        rest = path
        if sel.isdigit():
            z = int(sel)
        else:
            for part in sel.split(","):
                key, _, value = part.partition("=")
                if key == "z":
                    if not value.isdigit():
                        raise StmorphInputError(f"'{text}': z={value} is not an integer", expected="z=<plane index>")
                    z = int(value)
                else:
                    channel = int(value) if value.isdigit() else value
    if not rest:
        raise StmorphInputError(f"'{text}' names no file", expected="NAME=PATH[:SEL] or PATH[:SEL]")
    return name, rest, z, channel


def _image_arg(text: str, base: Path) -> dict[str, Any]:
    """One ``--image`` as ``images=`` entries: a plain path, ``(path, z)``, or ready StainImages."""
    from ..io._generic import _open_image_file

    name, path, z, channel = parse_image(text)
    if name is not None and channel is None:
        return {name: path if z is None else (path, z)}
    p = Path(path)
    if not p.exists() and (base / p).exists():
        p = base / p
    if not p.exists():
        from ..errors import StmorphInputError

        raise StmorphInputError(f"image '{name or path}' not found", file=p, expected="an existing image file")
    return dict(_open_image_file(p, z, channel, name))


def _seg_arg(text: str) -> Any:
    _, path, z, channel = parse_image(text)
    if channel is not None:
        return {"path": path, "z": z, "channel": channel}
    return path if z is None else (path, z)


def register(app: typer.Typer) -> None:
    @app.command("read")
    def read_cmd(
        format: str = typer.Argument(
            ...,
            help="Input format: 'auto' (detect from the files), or one of stmorph, spatialdata, xenium, baysor, "
            "merfish_tables, merscope, cosmx, generic.",
        ),
        path: Path = typer.Argument(..., help="The input folder (or the molecule table for generic/merscope/cosmx)."),
        out: Path = typer.Option(..., "--out", "-o", help="Sample folder to write (written atomically)."),
        columns: str | None = typer.Option(
            None, "--columns", help="Molecule table columns: x=..,y=..,gene=..[,cell_id=..,z=..,fov=..]. Without "
            "cell_id (or with 'cell_id=') the --segmentation assigns molecules to cells.",
        ),
        image: list[str] | None = typer.Option(
            None, "--image", help="A stain image, repeatable: NAME=PATH, NAME=PATH:Z, NAME=PATH:z=Z,channel=C "
            "(C an index or a channel name), or PATH alone for every channel of the file under its own names.",
        ),
        segmentation: str | None = typer.Option(
            None, "--segmentation", help="Cell segmentation: a label image (PATH or PATH:z=Z) or a polygon table "
            "(csv/parquet; vertices in the table's units, or a WKB Geometry column).",
        ),
        segmentation_columns: str | None = typer.Option(
            None, "--segmentation-columns", help="Polygon table columns: cell_id=..,x=..,y=..[,part=..,geometry=..,"
            "z=..,fov=..].",
        ),
        cells: Path | None = typer.Option(None, "--cells", help="Cell table (centroids, per-cell columns into obs)."),
        cell_columns: str | None = typer.Option(
            None, "--cell-columns", help="Cell table columns: cell_id=..,x=..,y=..[,fov=..,label_id=..]."
        ),
        labels: Path | None = typer.Option(None, "--labels", help="Label table (first column the cell id)."),
        label_column: str | None = typer.Option(None, "--label-column", help="Label column of --labels."),
        exclude_label: list[str] | None = typer.Option(
            None, "--exclude-label", help="Drop cells with this label (repeatable)."
        ),
        units: str | None = typer.Option(None, "--units", help="Units of the table coordinates: pixel or um."),
        pixel_size: float | None = typer.Option(None, "--pixel-size", help="Micrometres per pixel (overrides the files)."),
        origin: tuple[float, float] | None = typer.Option(
            None, "--origin", help="X Y of pixel (0, 0) in the table's units (Xenium crops, generic tables)."
        ),
        transform: Path | None = typer.Option(
            None, "--transform", help="3 x 3 micron -> pixel affine matrix (whitespace-separated text file)."
        ),
        z: int | None = typer.Option(None, "--z", help="z-plane of stain stacks (Baysor); default the middle plane."),
        min_qv: float | None = typer.Option(None, "--min-qv", help="Drop Xenium transcripts with qv below this."),
        copy_images: bool = typer.Option(False, "--copy-images", help="Copy the stain images into the sample folder."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    ) -> None:
        """Read a spatial transcriptomics output into a stmorph sample folder and print its summary.

        Xenium transcripts are streamed in batches into the sample folder (memory flat in the number of
        transcripts); other formats are read whole, then written.

        Example: stmorph read generic spots.csv --out s.stmorph --columns x=x_um,y=y_um,gene=target
        --units um --pixel-size 0.108 --image DAPI=dapi.tif --segmentation masks.tif
        """
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
        given: dict[str, Any] = {
            "z": z, "pixel_size": pixel_size, "origin": origin, "min_qv": min_qv, "units": units,
            "columns": parse_mapping(columns, option="--columns"),
            "segmentation_columns": parse_mapping(segmentation_columns, option="--segmentation-columns"),
            "cell_columns": parse_mapping(cell_columns, option="--cell-columns"),
            "cells": None if cells is None else str(cells),
            "labels": None if labels is None else str(labels),
            "label_column": label_column,
            "exclude_labels": list(exclude_label) if exclude_label else None,
            "transform": None if transform is None else str(transform),
            "segmentation": None if segmentation is None else _seg_arg(segmentation),
        }
        kwargs = {k: v for k, v in given.items() if v is not None}
        if image:
            kwargs["images"] = {}  # checked for applicability before any file is opened
        params = inspect.signature(reader).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        bad = [k for k in kwargs if k not in params and not takes_any]
        if bad:
            flags = {"exclude_labels": "exclude_label", "images": "image"}
            raise StmorphInputError(
                f"option(s) {['--' + flags.get(b, b).replace('_', '-') for b in bad]} do not apply to format '{fmt}'",
                expected=f"options of the {fmt} reader",
            )
        if image:
            base = path if path.is_dir() else path.parent
            for spec in image:
                for key, value in _image_arg(spec, base).items():
                    if key in kwargs["images"]:
                        raise StmorphInputError(f"two images are named '{key}'", expected="unique image names")
                    kwargs["images"][key] = value
        if reader is sio.read_xenium:  # the transcripts streamed to the sample folder, never loaded whole
            from ..io._xenium import _convert_xenium

            written, sample = _convert_xenium(path, out, copy_images=copy_images, overwrite=overwrite, **kwargs)
            n_mol = sample.provenance.get("n_molecules", 0)
            typer.echo(repr(sample).replace(", 0 molecules,", f", {n_mol} molecules,"))
        else:
            sample = sio.read(path, format=fmt, **kwargs)
            written = sio.write(sample, out, copy_images=copy_images, overwrite=overwrite)
            typer.echo(repr(sample))
        rep = sample.provenance.get("report", {})
        for key, note in rep.items():
            if isinstance(note, dict) and "message" in note:
                typer.echo(f"  note: {note['message']}")
            else:
                typer.echo(f"  {key}: {json.dumps(note)}")
        typer.echo(_segmentation_line(sample))
        typer.echo(f"wrote {written}")


def _segmentation_line(sample: Any) -> str:
    """One line saying whether a segmentation was loaded, its kind and grid, and how many cells have a mask."""
    seg = sample.segmentation
    if seg is None:
        return "segmentation: none"
    h, w = seg.shape
    where = f" from {seg.path}" if getattr(seg, "path", None) is not None else ""
    line = f"segmentation: {seg.kind} {h} x {w}{where}"
    if "label_id" in sample.adata.obs:
        n_mask = int((sample.adata.obs["label_id"].to_numpy() > 0).sum())
        line += f"; {n_mask} of {sample.n_cells} cells have a mask"
    return line
