"""Reader of any molecule table by column mapping, with presets for MERSCOPE and CosMx."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ..sample import SpatialSample
from ._common import (
    CONTROL_PREFIXES,
    Report,
    apply_labels,
    build_adata,
    centroids_from_molecules,
    check_inside_image,
    counts_from_molecules,
    decode_strings,
    drop_nan_centroids,
    find_file,
    is_control,
    make_molecules,
    normalize_ids,
    open_stack,
    plane_shape,
    read_table,
    require_columns,
    restrict_genes,
    unassign_unknown_cells,
)

__all__ = ["read_generic", "read_merscope", "read_cosmx", "PRESETS", "detect_merscope", "detect_cosmx"]

#: Column mappings and defaults of the vendor presets of :func:`read_generic`.
#:
#: * ``merscope`` - Vizgen ``detected_transcripts.csv`` (``global_x, global_y, global_z, gene, cell_id``; um,
#:   cell ``-1`` unassigned) and ``cell_metadata.csv`` (first column the cell id, ``center_x, center_y``). The
#:   micron -> mosaic pixel transform ``images/micron_to_mosaic_pixel_transform.csv`` is used when present.
#: * ``cosmx`` - NanoString ``*_tx_file.csv`` (``x_global_px, y_global_px, z, target, cell_ID, fov``; pixels,
#:   ``cell_ID`` 0 unassigned, cell ids unique per field of view: the cell id becomes ``"<fov>_<cell_ID>"``) and
#:   ``*_metadata_file.csv`` (``fov, cell_ID, CenterX_global_px, CenterY_global_px``), 0.12028 um per pixel.
PRESETS: dict[str, dict[str, Any]] = {
    "merscope": {
        "columns": {"x": "global_x", "y": "global_y", "z": "global_z", "gene": "gene", "cell_id": "cell_id"},
        "cell_columns": {"cell_id": None, "x": "center_x", "y": "center_y"},
        "units": "um",
        "pixel_size": None,
        "unassigned_values": ("-1",),
        "molecules": "detected_transcripts.csv",
        "cells": "cell_metadata.csv",
        "transform": "images/micron_to_mosaic_pixel_transform.csv",
    },
    "cosmx": {
        "columns": {"x": "x_global_px", "y": "y_global_px", "z": "z", "gene": "target", "cell_id": "cell_ID", "fov": "fov"},
        "cell_columns": {"cell_id": "cell_ID", "fov": "fov", "x": "CenterX_global_px", "y": "CenterY_global_px"},
        "units": "pixel",
        "pixel_size": 0.12028,
        "unassigned_values": ("0",),
        "molecules": "*tx_file.csv*",
        "cells": "*metadata_file.csv*",
        "transform": None,
    },
}


def detect_merscope(path: Path) -> bool:
    """A ``detected_transcripts.csv`` file or a folder holding one."""
    return path.name == "detected_transcripts.csv" or (path.is_dir() and (path / "detected_transcripts.csv").exists())


def detect_cosmx(path: Path) -> bool:
    """A ``*tx_file.csv[.gz]`` file or a folder holding one."""
    return ("tx_file.csv" in path.name) or (path.is_dir() and any(path.glob("*tx_file.csv*")))


def read_generic(
    molecules: str | PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    images: Mapping[str, str | PathLike | tuple[str | PathLike, int]] | None = None,
    cells: str | PathLike | None = None,
    cell_columns: Mapping[str, str | None] | None = None,
    labels: str | PathLike | None = None,
    label_column: str | None = None,
    exclude_labels: Sequence[str] = (),
    units: Literal["pixel", "um"] | None = None,
    pixel_size: float | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
    transform: np.ndarray | str | PathLike | None = None,
    unassigned_values: Sequence[Any] | None = None,
    exclude_controls: bool = True,
    control_prefixes: Sequence[str] = CONTROL_PREFIXES,
    preset: Literal["merscope", "cosmx"] | None = None,
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read any molecule table (+ optional images, cell and label tables) by naming its columns.

    Counts derive from the molecules; centroids come from the cell table or, without one, from the mean position
    of each cell's molecules. Coordinates convert to pixels once: with ``units="um"``,
    ``pixel = (coordinate - origin) / pixel_size`` (or the 3 x 3 affine ``transform`` micron -> pixel); with
    ``units="pixel"``, ``pixel = coordinate - origin``.

    Parameters
    ----------
    molecules
        The molecule table (csv, csv.gz, tsv, parquet). With a ``preset`` it may also be the vendor folder.
    columns
        ``{"x", "y", "gene", "cell_id"}`` (and optional ``"z"``, ``"fov"``) -> column names in the table. With
        ``"fov"``, cell ids become ``"<fov>_<cell>"`` (CosMx ids are unique per field of view).
    images
        ``{channel: path}`` or ``{channel: (path, z)}`` of stain images (relative paths: from the working
        directory, else beside the molecule table; 2-D or (Z, H, W) stacks; middle plane
        of a stack by default).
    cells
        Optional cell table; its mapped ``x, y`` give centroids (same units as the molecules); other columns go
        to ``obs``.
    cell_columns
        ``{"cell_id", "x", "y"}`` (and optional ``"fov"``) -> cell table columns; ``"cell_id": None`` means the
        first column.
    labels, label_column, exclude_labels
        Optional label table (first column cell id), its label column (default: the second column) ->
        ``obs["cell_type"]``, and labels whose cells are dropped.
    units
        ``"pixel"`` (default) or ``"um"``.
    pixel_size
        Micrometres per pixel (required for ``units="um"`` without ``transform``).
    origin
        ``(x, y)`` of pixel (0, 0) in the table's units.
    transform
        3 x 3 affine micron -> pixel matrix (array or whitespace-separated text file), as MERSCOPE writes.
    unassigned_values
        Cell id values meaning "no cell" (empty and NaN always do); default ``("-1", "0")`` without a preset.
    exclude_controls, control_prefixes
        Drop genes starting with these prefixes (negative controls, blanks).
    preset
        ``"merscope"`` or ``"cosmx"`` fills the mappings (see :data:`PRESETS`); explicit arguments win.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the table's folder name).

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> from stmorph.io import read_generic
    >>> s = read_generic("region_0/detected_transcripts.csv", preset="merscope",
    ...                  images={"DAPI": "region_0/images/mosaic_DAPI_z3.tif"})  # doctest: +SKIP
    >>> s = read_generic("tx.parquet", columns={"x": "px", "y": "py", "gene": "target", "cell_id": "cell"})  # doctest: +SKIP
    """
    report = Report("read_generic")
    mpath = Path(molecules)
    cfg: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise StmorphInputError(f"unknown preset '{preset}'", expected=f"one of {sorted(PRESETS)}")
        cfg = dict(PRESETS[preset])
        if mpath.is_dir():
            folder = mpath
            mpath = _glob_one(folder, cfg["molecules"], what=f"{preset} molecule table")
            if cells is None:
                hit = sorted(folder.glob(cfg["cells"]))
                cells = hit[0] if hit else None
        if transform is None and cfg.get("transform") and units in (None, "um") and pixel_size is None:
            t = mpath.parent / cfg["transform"]
            transform = t if t.exists() else None
    if mpath.is_dir():
        raise StmorphInputError("read_generic needs the molecule table file (or a preset)", file=mpath, expected="a table file")
    columns = dict(cfg.get("columns", {}), **(columns or {}))
    cell_columns = dict(cfg.get("cell_columns", {"cell_id": None, "x": "x", "y": "y"}), **(cell_columns or {}))
    units = units or cfg.get("units", "pixel")
    if units not in ("pixel", "um"):
        raise StmorphInputError(f"units={units!r}", expected="'pixel' or 'um'")
    pixel_size = pixel_size if pixel_size is not None else cfg.get("pixel_size")
    unassigned = tuple(str(v) for v in (unassigned_values if unassigned_values is not None else cfg.get("unassigned_values", ("-1", "0"))))
    missing_keys = [k for k in ("x", "y", "gene", "cell_id") if k not in columns]
    if missing_keys:
        raise StmorphInputError(
            f"the column mapping lacks {missing_keys}", column="columns", expected="a mapping with keys x, y, gene, cell_id [, z, fov]"
        )

    # -- coordinate conversion ---------------------------------------------------------------------------
    A = _affine(transform, units=units, pixel_size=pixel_size, origin=origin)
    if units == "um" and pixel_size is None:
        pixel_size = float(1.0 / np.sqrt(abs(np.linalg.det(A[:2, :2]))))

    def to_px(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return A[0, 0] * x + A[0, 1] * y + A[0, 2], A[1, 0] * x + A[1, 1] * y + A[1, 2]

    # -- molecules ---------------------------------------------------------------------------------------
    used = [columns[k] for k in ("x", "y", "gene", "cell_id", "z", "fov") if columns.get(k)]
    tab = read_table(mpath, columns=used, dtype={columns["cell_id"]: "string", columns["gene"]: "string"})
    x = pd.to_numeric(tab[columns["x"]], errors="coerce").to_numpy(np.float64)
    y = pd.to_numeric(tab[columns["y"]], errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise StmorphInputError("every molecule has a NaN coordinate", file=mpath, column=columns["x"], expected="numbers")
    report.warn("molecules_nan_coordinates", int((~ok).sum()), f"dropped {int((~ok).sum())} molecules with NaN coordinates")
    gene = decode_strings(tab[columns["gene"]]).astype("string")
    n_nogene = int((gene.isna().to_numpy() & ok).sum())
    report.warn("molecules_no_gene", n_nogene, f"dropped {n_nogene} molecules without a gene name")
    ok &= gene.notna().to_numpy(bool)
    cell_of = normalize_ids(decode_strings(tab[columns["cell_id"]]), unassigned)
    if columns.get("fov"):
        fov = normalize_ids(tab[columns["fov"]])
        cell_of = (fov + "_" + cell_of).astype("string")
    px, py = to_px(x, y)
    all_mol = pd.DataFrame({"x": px[ok], "y": py[ok], "cell_id": cell_of[ok].to_numpy()})
    ctrl = is_control(gene, control_prefixes) if exclude_controls else np.zeros(len(gene), dtype=bool)
    report.info("control_molecules_excluded", int((ctrl & ok).sum()))
    ok &= ~ctrl
    if not ok.any():
        raise StmorphInputError(
            "no molecule is left after excluding control probes", file=mpath, column=columns["gene"], expected="gene names"
        )
    z = None
    if columns.get("z") and columns["z"] in tab.columns:
        z = pd.to_numeric(tab[columns["z"]], errors="coerce").to_numpy(np.float64)[ok]
    mol = make_molecules(px[ok], py[ok], gene[ok].to_numpy(), cell_of[ok], z)
    gene_names = pd.Index(sorted(mol["gene"].cat.categories.astype(str)))
    files: dict[str, Any] = {"molecules": str(mpath)}

    # -- cells -------------------------------------------------------------------------------------------
    assigned = pd.Index(all_mol["cell_id"].dropna().unique())
    obs = None
    if cells is not None:
        cfile = Path(cells)
        ctab = read_table(cfile)
        id_col = cell_columns.get("cell_id") or str(ctab.columns[0])
        need = [id_col, cell_columns["x"], cell_columns["y"]] + ([cell_columns["fov"]] if cell_columns.get("fov") else [])
        require_columns(ctab, need, file=cfile)
        ids = normalize_ids(ctab[id_col].astype("string"))
        if cell_columns.get("fov"):
            ids = (normalize_ids(ctab[cell_columns["fov"]]) + "_" + ids).astype("string")
        ctab.index = pd.Index(ids.astype(object))
        ctab = ctab[ctab.index.notna() & ~ctab.index.duplicated(keep="first")]
        cell_index = pd.Index(ctab.index)
        cx, cy = to_px(ctab[cell_columns["x"]].to_numpy(np.float64), ctab[cell_columns["y"]].to_numpy(np.float64))
        centroids = np.column_stack([cx, cy])
        obs = ctab.drop(columns=[c for c in (id_col,) if c in ctab.columns])
        unassign_unknown_cells(mol, assigned, cell_index, report=report, file=cfile, column=id_col)
        files["cells"] = str(cfile)
    else:
        cell_index = assigned
        if len(cell_index) == 0:
            raise StmorphInputError("no molecule is assigned to a cell", file=mpath, column=columns["cell_id"], expected="cell ids")
        centroids = centroids_from_molecules(all_mol, cell_index)
        report.info("cells_from", "assigned molecules (no cell table): centroid = mean molecule position")
    X = counts_from_molecules(mol["cell_id"], mol["gene"], cell_index, gene_names)
    adata = build_adata(X, cell_index, gene_names, centroids, obs)
    n_empty = int((np.asarray(X.sum(axis=1)).ravel() == 0).sum())
    report.warn("cells_without_molecules", n_empty, f"{n_empty} cells have no kept molecule (kept with zero counts)")
    adata = drop_nan_centroids(adata, report, file=cells or mpath)

    if labels is not None:
        lfile = Path(labels)
        lt = read_table(lfile)
        if lt.shape[1] < 2:
            raise StmorphInputError("a label table needs a cell id column and a label column", file=lfile)
        lcol = label_column or str(lt.columns[1])
        require_columns(lt, [lcol], file=lfile)
        lab = pd.Series(lt[lcol].to_numpy(), index=pd.Index(normalize_ids(lt.iloc[:, 0]).astype(object)))
        adata = apply_labels(adata, lab[lab.index.notna()], report, file=lfile, exclude_labels=exclude_labels)
        mol.loc[~mol["cell_id"].isin(adata.obs_names).fillna(False).to_numpy(bool), "cell_id"] = pd.NA
        files["labels"] = str(lfile)
    adata = restrict_genes(adata, genes, file=mpath)

    # -- images ------------------------------------------------------------------------------------------
    imgs = {}
    shape = None
    for chan, spec in (images or {}).items():
        p, zz = (tuple(spec) if isinstance(spec, tuple | list) else (spec, None))
        # relative image paths: from the working directory, else beside the molecule table
        f = find_file(Path.cwd(), [str(p), str((mpath.parent / p).resolve())], required=True, what=f"image '{chan}'")
        assert f is not None
        imgs[chan], _ = open_stack(f, zz, report=report, name=chan)
        shape = shape or plane_shape(f)
        files[chan] = str(f)
    if shape is not None:
        check_inside_image(mol["x"].to_numpy(), mol["y"].to_numpy(), shape, report, what="molecules", file=mpath)

    prov = {
        "reader": "generic" if preset is None else preset,
        "path": str(mpath.resolve()),
        "files": files,
        "columns": dict(columns),
        "units": units,
        "origin": [float(origin[0]), float(origin[1])],
        "transform": A.tolist(),
        "exclude_controls": bool(exclude_controls),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_molecules": int(len(mol)),
        "report": report.as_dict(),
    }
    ps = None if pixel_size is None else float(pixel_size)
    return SpatialSample(adata, mol, imgs, ps, name or mpath.parent.name or "sample", prov)


def read_merscope(path: str | PathLike, **kwargs: Any) -> SpatialSample:
    """Read a Vizgen MERSCOPE region folder (or its ``detected_transcripts.csv``): :func:`read_generic` with
    ``preset="merscope"``.

    Parameters
    ----------
    path
        The region folder or the transcript table.
    **kwargs
        Passed to :func:`read_generic` (e.g. ``images={"DAPI": ("images/mosaic_DAPI_z3.tif", None)}``).

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> s = read_merscope("region_0/", images={"DAPI": "region_0/images/mosaic_DAPI_z3.tif"})  # doctest: +SKIP
    """
    return read_generic(path, preset="merscope", **kwargs)


def read_cosmx(path: str | PathLike, **kwargs: Any) -> SpatialSample:
    """Read a NanoString CosMx export folder (or its ``*_tx_file.csv``): :func:`read_generic` with
    ``preset="cosmx"``.

    Parameters
    ----------
    path
        The export folder or the transcript table.
    **kwargs
        Passed to :func:`read_generic`.

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> s = read_cosmx("Lung5_Rep1/")  # doctest: +SKIP
    """
    return read_generic(path, preset="cosmx", **kwargs)


def _glob_one(folder: Path, pattern: str, *, what: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        raise StmorphInputError(f"{what} not found", file=folder, expected=pattern)
    return hits[0]


def _affine(
    transform: np.ndarray | str | PathLike | None, *, units: str, pixel_size: float | None, origin: tuple[float, float]
) -> np.ndarray:
    """The 3 x 3 affine table-units -> pixel matrix."""
    if transform is not None:
        if isinstance(transform, np.ndarray):
            A = np.asarray(transform, dtype=np.float64)
        else:
            tf = Path(transform)
            try:
                A = np.loadtxt(tf, dtype=np.float64)
            except Exception as exc:
                raise StmorphInputError(f"cannot read the transform ({exc})", file=tf, expected="a 3 x 3 matrix") from exc
        if A.shape != (3, 3):
            raise StmorphInputError(f"the transform has shape {A.shape}", expected="a 3 x 3 affine matrix")
        return A
    ox, oy = float(origin[0]), float(origin[1])
    if units == "pixel":
        return np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy], [0.0, 0.0, 1.0]])
    if pixel_size is None or not pixel_size > 0:
        raise StmorphInputError(
            "units='um' needs pixel_size (or a transform) to convert to pixels", column="pixel_size",
            expected="micrometres per pixel > 0",
        )
    s = 1.0 / float(pixel_size)
    return np.array([[s, 0.0, -ox * s], [0.0, s, -oy * s], [0.0, 0.0, 1.0]])
