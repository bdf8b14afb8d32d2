"""Reader of any molecule table by column mapping, with presets for MERSCOPE and CosMx.

:func:`read_generic` takes a molecule table and names its columns; stain images (any file
:class:`~stmorph.StainImage` reads, multi-channel files split into channels) and a cell segmentation (a label
image -> :class:`~stmorph.LabelImage`, or a polygon table -> :class:`~stmorph.PolygonSegmentation`) come with it.
Without a cell id column the segmentation assigns the molecules to cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._image import (
    IMAGE_SUFFIXES,
    LabelImage,
    PolygonSegmentation,
    StainImage,
    _plane_index,
    image_axes,
    image_channel_names,
    labels_at,
)
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
    finish_sample,
    is_control,
    label_series,
    make_molecules,
    normalize_ids,
    read_table,
    require_columns,
    restrict_genes,
    set_label_ids,
    unassign_unknown_cells,
)

__all__ = ["read_generic", "PRESETS"]

#: An image of ``read_generic(images=...)``: a path, ``(path, z)``, ``(path, z, channel)``, a dict with keys
#: ``path``, ``z``, ``channel``, or a ready :class:`~stmorph.StainImage`.
ImageSpec = str | PathLike | tuple | Mapping[str, Any] | StainImage
#: A segmentation of ``read_generic(segmentation=...)``: a label image or polygon table (path, ``(path, z)`` or
#: dict spec), or a ready :class:`~stmorph.LabelImage` / :class:`~stmorph.PolygonSegmentation`.
SegmentationSpec = str | PathLike | tuple | Mapping[str, Any] | LabelImage | PolygonSegmentation

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


def read_generic(
    molecules: str | PathLike,
    *,
    columns: Mapping[str, str | None] | None = None,
    images: Mapping[str, ImageSpec] | None = None,
    cells: str | PathLike | None = None,
    cell_columns: Mapping[str, str | None] | None = None,
    labels: str | PathLike | None = None,
    label_column: str | None = None,
    exclude_labels: Sequence[str] = (),
    units: Literal["pixel", "um"] | None = None,
    pixel_size: float | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
    transform: np.ndarray | str | PathLike | None = None,
    segmentation: SegmentationSpec | None = None,
    segmentation_columns: Mapping[str, str | None] | None = None,
    unassigned_values: Sequence[Any] | None = None,
    exclude_controls: bool = True,
    control_prefixes: Sequence[str] = CONTROL_PREFIXES,
    preset: Literal["merscope", "cosmx"] | None = None,
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read any molecule table (+ optional images, segmentation, cell and label tables) by naming its columns.

    Counts derive from the molecules; centroids come from the cell table or, without one, from the mean position
    of each cell's molecules. Coordinates convert to pixels once: with ``units="um"``,
    ``pixel = (coordinate - origin) / pixel_size`` (or the 3 x 3 affine ``transform`` micron -> pixel); with
    ``units="pixel"``, ``pixel = coordinate - origin``. Polygon tables of a ``segmentation`` are in the table's
    units too and convert the same way.

    **Cells and the segmentation.** Without a ``cell_id`` column (the mapping has none, or ``"cell_id": None``),
    molecules are assigned to the cell under them in ``segmentation`` (:func:`~stmorph.labels_at`; label 0 =
    unassigned) and the cells are the labels that hold molecules: cell id = the label value as a string (for a
    polygon table: the table's cell id), ``obs["label_id"]`` = the label. With a ``cell_id`` column and a
    segmentation, molecules keep the table's assignment and ``obs["label_id"]`` comes, in this order of
    preference, from

    1. the cell table's column ``cell_columns["label_id"]`` (empty -> 0);
    2. a polygon table: the label of the polygon with the cell's id;
    3. integer cell ids (all of them ``> 0``): the id itself;
    4. otherwise the label under most of the cell's molecules (ties: the smaller label; 0 when none of its
       molecules lies in a mask).

    In every case the fraction of assigned molecules lying in their own cell's mask is recorded in
    ``provenance["report"]["molecules_in_own_mask"]`` (a warning when under one half: ids or coordinates that do
    not match the segmentation).

    Parameters
    ----------
    molecules
        The molecule table (csv, csv.gz, tsv, parquet). With a ``preset`` it may also be the vendor folder.
    columns
        ``{"x", "y", "gene"}`` and optionally ``"cell_id"``, ``"z"``, ``"fov"`` -> column names in the table.
        With ``"fov"``, cell ids become ``"<fov>_<cell>"`` (CosMx ids are unique per field of view). Without
        ``"cell_id"`` (or with ``"cell_id": None``) a ``segmentation`` assigns molecules to cells.
    images
        ``{name: spec}`` of stain images. A spec is a path (TIFF/OME-TIFF, JPEG/PNG, zarr/OME-Zarr; relative
        paths: from the working directory, else beside the molecule table), ``(path, z)``, ``(path, z,
        channel)``, ``{"path": ..., "z": ..., "channel": ...}`` or a ready :class:`~stmorph.StainImage`.
        ``channel`` is an index or a channel name stored in the file. A z-stack (a ``Z`` axis, or a plain 3-D
        stack) gives its middle plane unless ``z`` is given. A multi-channel file (a ``C`` axis, or an RGB
        composite) without ``channel`` gives every channel, named ``"<name>_<channel name>"`` (the file's
        channel names, else the indices); use :func:`~stmorph.open_channels` for the file's names alone
        (``images={**open_channels(path), ...}``). All images must share one grid.
    cells
        Optional cell table; its mapped ``x, y`` give centroids (same units as the molecules); other columns go
        to ``obs``.
    cell_columns
        ``{"cell_id", "x", "y"}`` (and optional ``"fov"``, ``"label_id"``) -> cell table columns;
        ``"cell_id": None`` means the first column; ``"label_id"``: each cell's label in the segmentation.
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
    segmentation
        The cell segmentation on the stains' grid: a label image (any image :class:`~stmorph.StainImage` reads;
        ``(path, z)`` or a dict spec as for ``images`` picks a plane) -> :class:`~stmorph.LabelImage`; a polygon
        table (csv/tsv/parquet: one row per vertex, or a MERSCOPE-style WKB ``Geometry`` column, which needs
        shapely) -> :class:`~stmorph.PolygonSegmentation`; or a ready ``LabelImage``/``PolygonSegmentation``.
        A polygon table with several z-planes (its ``z`` column) keeps the plane ``z`` of ``(path, z)``, else the
        middle one. Without images, the grid of a polygon table spans the vertices and molecules.
    segmentation_columns
        Columns of a polygon table: ``"cell_id"`` (default the first of ``cell_id``, ``label_id``, ``EntityID``,
        ``cellID``, ``cell``), ``"x"``, ``"y"`` (default ``x``/``vertex_x``/``x_global_px``, likewise ``y``),
        ``"part"`` (rings of one cell), ``"geometry"`` (WKB polygons; default ``Geometry`` when there are no
        x/y columns), ``"z"`` (default ``ZIndex`` when present) and ``"fov"`` (ids become ``"<fov>_<cell>"``;
        default ``fov`` when the molecule mapping has a ``fov``). Integer ids > 0 are the labels; other ids get
        labels 1, 2, ... in table order.
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
    >>> s = read_generic("spots.csv", columns={"x": "x_um", "y": "y_um", "gene": "gene"}, units="um",
    ...                  pixel_size=0.108, images={"IF": "stains.ome.tif"},
    ...                  segmentation="masks.tif")  # doctest: +SKIP
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
    missing_keys = [k for k in ("x", "y", "gene") if not columns.get(k)]
    if missing_keys:
        raise StmorphInputError(
            f"the column mapping lacks {missing_keys}", column="columns", expected="a mapping with keys x, y, gene [, cell_id, z, fov]"
        )
    id_col = columns.get("cell_id") or None
    if id_col is None and segmentation is None:
        raise StmorphInputError(
            "the column mapping has no cell_id: give a segmentation (label image or polygon table) to assign the "
            "molecules to cells", column="columns", expected="columns['cell_id'] or segmentation=...",
        )

    # -- coordinate conversion ---------------------------------------------------------------------------
    A = _affine(transform, units=units, pixel_size=pixel_size, origin=origin)
    if units == "um" and pixel_size is None:
        pixel_size = float(1.0 / np.sqrt(abs(np.linalg.det(A[:2, :2]))))

    def to_px(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return A[0, 0] * x + A[0, 1] * y + A[0, 2], A[1, 0] * x + A[1, 1] * y + A[1, 2]

    # -- molecules ---------------------------------------------------------------------------------------
    used = [columns[k] for k in ("x", "y", "gene", "cell_id", "z", "fov") if columns.get(k)]
    dtypes = {columns["gene"]: "string"} | ({id_col: "string"} if id_col else {})
    tab = read_table(mpath, columns=used, dtype=dtypes)
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
    px, py = to_px(x, y)
    files: dict[str, Any] = {"molecules": str(mpath)}

    # -- images and segmentation (before the cells: without cell ids, the segmentation defines them) -------
    imgs, shape = _open_images(images, mpath, report, files)
    seg, label_of_id, seg_prov = None, None, None
    if segmentation is not None:
        seg, label_of_id, seg_prov = _load_segmentation(
            segmentation, segmentation_columns, mpath=mpath, to_px=to_px, unassigned=unassigned, shape=shape,
            points=(px[ok], py[ok]), fov=bool(columns.get("fov")), report=report,
        )
        files["segmentation"] = seg_prov.get("path")
        shape = shape or seg.shape

    mol_labels: np.ndarray | None = None
    if id_col is not None:
        cell_of = normalize_ids(decode_strings(tab[id_col]), unassigned)
        if columns.get("fov"):
            fov = normalize_ids(tab[columns["fov"]])
            cell_of = (fov + "_" + cell_of).astype("string")
    else:
        assert seg is not None
        mol_labels = labels_at(seg, px, py)
        cell_of = _ids_of_labels(mol_labels, label_of_id)
        n_out = int((ok & (mol_labels == 0)).sum())
        report.warn("molecules_outside_masks", n_out, f"{n_out} molecules lie outside every cell mask (unassigned)")
        report.info("molecules_assigned_from", "segmentation: each molecule belongs to the cell mask under it")
    all_mol = pd.DataFrame({"x": px[ok], "y": py[ok], "cell_id": cell_of[ok].to_numpy()})
    ctrl = is_control(gene, control_prefixes) if exclude_controls else np.zeros(len(gene), dtype=bool)
    report.info("control_molecules_excluded", int((ctrl & ok).sum()))
    ok_all = ok.copy()
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

    # -- cells -------------------------------------------------------------------------------------------
    assigned = pd.Index(all_mol["cell_id"].dropna().unique())
    if id_col is None:
        assigned = assigned[np.argsort(_labels_of_ids(assigned, label_of_id), kind="stable")]
    obs = None
    ctab_label = None
    if cells is not None:
        cfile = Path(cells)
        ctab = read_table(cfile)
        cid_col = cell_columns.get("cell_id") or str(ctab.columns[0])
        need = [cid_col, cell_columns["x"], cell_columns["y"]] + [
            cell_columns[k] for k in ("fov", "label_id") if cell_columns.get(k)
        ]
        require_columns(ctab, need, file=cfile)
        ids = normalize_ids(ctab[cid_col].astype("string"))
        if cell_columns.get("fov"):
            ids = (normalize_ids(ctab[cell_columns["fov"]]) + "_" + ids).astype("string")
        ctab.index = pd.Index(ids.astype(object))
        ctab = ctab[ctab.index.notna() & ~ctab.index.duplicated(keep="first")]
        cell_index = pd.Index(ctab.index)
        cx, cy = to_px(ctab[cell_columns["x"]].to_numpy(np.float64), ctab[cell_columns["y"]].to_numpy(np.float64))
        centroids = np.column_stack([cx, cy])
        if cell_columns.get("label_id"):
            ctab_label = pd.to_numeric(ctab[cell_columns["label_id"]], errors="coerce")
        obs = ctab.drop(columns=[c for c in (cid_col,) if c in ctab.columns])
        unassign_unknown_cells(mol, assigned, cell_index, report=report, file=cfile, column=cid_col)
        files["cells"] = str(cfile)
    else:
        if cell_columns.get("label_id"):
            raise StmorphInputError(
                "cell_columns['label_id'] names a column of the cell table, but no cell table was given",
                column=str(cell_columns["label_id"]), expected="cells=... or no 'label_id' mapping",
            )
        cell_index = assigned
        if len(cell_index) == 0:
            what = columns["cell_id"] if id_col else "segmentation"
            raise StmorphInputError("no molecule is assigned to a cell", file=mpath, column=what, expected="cell ids")
        centroids = centroids_from_molecules(all_mol, cell_index)
        report.info("cells_from", "assigned molecules (no cell table): centroid = mean molecule position")
    X = counts_from_molecules(mol["cell_id"], mol["gene"], cell_index, gene_names)
    adata = build_adata(X, cell_index, gene_names, centroids, obs)
    n_empty = int((np.asarray(X.sum(axis=1)).ravel() == 0).sum())
    report.warn("cells_without_molecules", n_empty, f"{n_empty} cells have no kept molecule (kept with zero counts)")
    adata = drop_nan_centroids(adata, report, file=cells or mpath)

    # -- each cell's label in the segmentation -----------------------------------------------------------
    if seg is not None and seg_prov is not None:
        if mol_labels is None:
            mol_labels = labels_at(seg, px, py)
        lid, source = _cell_label_ids(
            adata.obs_names, id_col=id_col, label_of_id=label_of_id, table_label=ctab_label,
            mol_cells=cell_of[ok_all], mol_labels=mol_labels[ok_all],
        )
        set_label_ids(adata, lid, report, no_mask="mask in the segmentation")
        seg_prov["label_id_from"] = source
        if id_col is not None:
            _check_own_mask(cell_of[ok_all], mol_labels[ok_all], adata.obs_names, lid, report)

    if labels is not None:
        lfile = Path(labels)
        lt = read_table(lfile)
        if lt.shape[1] < 2:
            raise StmorphInputError("a label table needs a cell id column and a label column", file=lfile)
        lcol = label_column or str(lt.columns[1])
        require_columns(lt, [lcol], file=lfile)
        adata = apply_labels(adata, label_series(lt[lcol], lt.iloc[:, 0]), report, file=lfile,
                             exclude_labels=exclude_labels, molecules=mol)
        files["labels"] = str(lfile)
    adata = restrict_genes(adata, genes, file=mpath)
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
        "segmentation": seg_prov,
    }
    ps = None if pixel_size is None else float(pixel_size)
    return finish_sample(adata, mol, imgs, ps, name or mpath.parent.name or "sample", prov, report, seg)


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


# ---------------------------------------------------------------------------------------------------------------
# images and segmentations of read_generic
# ---------------------------------------------------------------------------------------------------------------
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".parquet", ".pq")
_POLYGON_KEYS = ("cell_id", "x", "y", "part", "geometry", "z", "fov")


def _image_spec(spec: Any, *, what: str) -> tuple[Path, int | None, int | str | None]:
    """``(path, z, channel)`` of an image spec: a path, ``(path, z[, channel])`` or ``{"path", "z", "channel"}``."""
    if isinstance(spec, Mapping):
        extra = sorted(set(spec) - {"path", "z", "channel"})
        if "path" not in spec or extra:
            raise StmorphInputError(
                f"bad {what} spec {dict(spec)!r}", expected="{'path': ..., 'z': int or None, 'channel': int, name or None}"
            )
        p, z, ch = spec["path"], spec.get("z"), spec.get("channel")
    elif isinstance(spec, tuple | list):
        if not 1 <= len(spec) <= 3:
            raise StmorphInputError(f"bad {what} spec {spec!r}", expected="(path,), (path, z) or (path, z, channel)")
        p, z, ch = (list(spec) + [None, None])[:3]
    elif isinstance(spec, str | PathLike):
        p, z, ch = spec, None, None
    else:
        raise StmorphInputError(f"bad {what} spec of type {type(spec).__name__}", expected="a path, (path, z) or a dict")
    if z is not None:
        try:
            z = int(z)
        except (TypeError, ValueError) as exc:
            raise StmorphInputError(f"{what}: z={z!r} is not an integer", expected="an integer z-plane") from exc
    if ch is not None and not isinstance(ch, str):
        ch = int(ch)
    return Path(p), z, ch


def _find_input(p: Path, mpath: Path, *, what: str) -> Path:
    """``p`` from the working directory, else beside the molecule table (clear error when neither exists)."""
    f = find_file(Path.cwd(), [str(p), str((mpath.parent / p).resolve())], required=True, what=what)
    assert f is not None
    return f


def _stack_axis(axes: str, shape: Sequence[int]) -> tuple[int, int] | None:
    """``(position, length)`` of the z axis: ``Z``, else (without ``C``) a plain stack axis ``Q``/``I`` or planar ``S``."""
    if "Z" in axes:
        return axes.index("Z"), int(shape[axes.index("Z")])
    if "C" in axes:
        return None
    for pos, a in enumerate(axes):
        if a in "QI" or (a == "S" and pos < len(axes) - 1):
            return pos, int(shape[pos])
    return None


def _n_channels(axes: str, shape: Sequence[int]) -> int:
    """Channels of an image: its ``C`` axis, or the samples of an interleaved RGB composite (``...YXS``)."""
    if "C" in axes:
        return int(shape[axes.index("C")])
    if axes.endswith("S"):
        return int(shape[-1])
    return 1


def _channel_index(path: Path, channel: str, *, what: str) -> int:
    names = image_channel_names(path)
    if not names or channel not in names:
        raise StmorphInputError(
            f"{what} has no channel named '{channel}'", file=path,
            expected=f"one of {names}" if names else "a channel index (the file names no channels)",
        )
    return names.index(channel)


def _open_image_file(
    path: Path,
    z: int | None = None,
    channel: int | str | None = None,
    name: str | None = None,
    report: Report | None = None,
) -> dict[str, StainImage]:
    """The stain image(s) of one file, validated before any pixel is read.

    A z-stack gives its plane ``z`` (default the middle one); a multi-channel file gives the channel ``channel``
    (index or stored name) under ``name``, or, without ``channel``, every channel as ``"<name>_<channel name>"``
    (``name=None``: the stored channel names, else ``"<file stem>_<index>"``; a single channel: the file stem).
    """
    what = f"image '{name}'" if name else "the image"
    axes, shape = image_axes(path)
    stack = _stack_axis(axes, shape)
    n_ch = _n_channels(axes, shape)
    if isinstance(channel, str):
        channel = _channel_index(path, channel, what=what)
    zz: int | None = z
    if channel is not None and n_ch == 1 and stack is not None and z is None:
        pass  # a plain stack whose planes are channels: `channel` indexes the stack axis
    elif stack is None:
        if z not in (None, 0):
            raise StmorphInputError(
                f"z={z} was requested but {what} has no z axis (axes {axes}, shape {tuple(shape)})", file=path,
                expected="z=None or 0",
            )
        zz = None
    else:
        nz = stack[1]
        if z is None:
            zz = nz // 2
            if report is not None and nz > 1:
                report.info(f"{name or path.name}_z", {"z": zz, "n_planes": nz, "chosen": "middle plane"})
        elif not 0 <= z < nz:
            raise StmorphInputError(f"z-plane {z} is out of range for a stack of {nz} planes", file=path, expected=f"0 <= z < {nz}")
        elif report is not None:
            report.info(f"{name or path.name}_z", {"z": int(z), "n_planes": nz, "chosen": "argument"})
    stem = path.name.split(".")[0]
    if channel is None and n_ch > 1:
        stored = image_channel_names(path)
        if name is None:
            names = stored or [f"{stem}_{i}" for i in range(n_ch)]
        else:
            names = [f"{name}_{c}" for c in (stored or [str(i) for i in range(n_ch)])]
        out = {nm: StainImage(path, z=zz, channel=i) for i, nm in enumerate(names)}
    else:
        out = {name or stem: StainImage(path, z=zz, channel=channel)}
    for img in out.values():
        _plane_index(axes, shape, img.z, img.channel, path)  # a clear error now rather than at the first read
    return out


def _open_images(
    images: Mapping[str, Any] | None, mpath: Path, report: Report, files: dict[str, Any]
) -> tuple[dict[str, StainImage], tuple[int, int] | None]:
    """The named stain images of ``read_generic`` and their common grid ``(rows, columns)``."""
    imgs: dict[str, StainImage] = {}
    for chan, spec in (images or {}).items():
        chan = str(chan)
        if isinstance(spec, StainImage):
            new, src = {chan: spec}, spec.path
        else:
            p, z, ch = _image_spec(spec, what=f"image '{chan}'")
            src = _find_input(p, mpath, what=f"image '{chan}'")
            new = _open_image_file(src, z, ch, chan, report)
        for k, img in new.items():
            if k in imgs:
                raise StmorphInputError(f"two images are named '{k}'", file=src, expected="unique image names")
            imgs[k] = img
            if src is not None:
                files[k] = str(src)
    shape, first = None, None
    for k, img in imgs.items():
        s = tuple(int(v) for v in img.shape)
        if shape is None:
            shape, first = s, k
        elif s != shape:
            raise StmorphInputError(
                f"image '{k}' is {s[0]} x {s[1]} pixels but image '{first}' is {shape[0]} x {shape[1]}",
                file=img.path, expected="stain images on one pixel grid",
            )
    return imgs, shape  # type: ignore[return-value]


def _load_segmentation(
    segmentation: Any,
    columns: Mapping[str, str | None] | None,
    *,
    mpath: Path,
    to_px: Any,
    unassigned: Sequence[str],
    shape: tuple[int, int] | None,
    points: tuple[np.ndarray, np.ndarray],
    fov: bool,
    report: Report,
) -> tuple[LabelImage | PolygonSegmentation, pd.Series | None, dict[str, Any]]:
    """The segmentation, the label of each cell id (``None``: the id is the label as a string) and provenance."""
    label_of_id: pd.Series | None = None
    if isinstance(segmentation, LabelImage | PolygonSegmentation):
        seg = segmentation
        prov: dict[str, Any] = {"kind": seg.kind, "path": None if seg.path is None else str(seg.path)}
    else:
        p, z, ch = _image_spec(segmentation, what="segmentation")
        f = _find_input(p, mpath, what="segmentation")
        low = f.name.lower()
        if f.is_dir() or low.endswith(IMAGE_SUFFIXES):
            axes, ishape = image_axes(f)
            if isinstance(ch, str):
                ch = _channel_index(f, ch, what="the segmentation")
            seg = LabelImage(f, z=z, channel=ch)
            _plane_index(axes, ishape, seg.z, seg.channel, f)  # a label stack needs z=: say so now
            prov = {"kind": "raster", "path": str(f), "z": z, "channel": ch}
        elif low.endswith(_TABLE_SUFFIXES):
            if ch is not None:
                raise StmorphInputError("channel= applies to label images, not to polygon tables", file=f)
            seg, label_of_id, prov = _read_polygons(
                f, columns, z=z, to_px=to_px, unassigned=unassigned, shape=shape, points=points, fov=fov, report=report
            )
        else:
            raise StmorphInputError(
                "cannot tell whether the segmentation is a label image or a polygon table", file=f,
                expected=f"an image ({', '.join(IMAGE_SUFFIXES)}) or a table ({', '.join(_TABLE_SUFFIXES)})",
            )
    if shape is not None and tuple(seg.shape) != tuple(shape):
        raise StmorphInputError(
            f"the segmentation is {seg.shape[0]} x {seg.shape[1]} pixels but the images are {shape[0]} x {shape[1]}",
            file=prov.get("path"), expected="a segmentation on the stains' pixel grid",
        )
    prov["shape"] = [int(seg.shape[0]), int(seg.shape[1])]
    return seg, label_of_id, prov


def _read_polygons(
    f: Path,
    columns: Mapping[str, str | None] | None,
    *,
    z: int | None,
    to_px: Any,
    unassigned: Sequence[str],
    shape: tuple[int, int] | None,
    points: tuple[np.ndarray, np.ndarray],
    fov: bool,
    report: Report,
) -> tuple[PolygonSegmentation, pd.Series, dict[str, Any]]:
    """A polygon table (vertex rows or WKB geometries, in the table's units) as a PolygonSegmentation in pixels."""
    cols = dict(columns or {})
    bad = sorted(set(cols) - set(_POLYGON_KEYS))
    if bad:
        raise StmorphInputError(f"unknown segmentation column key(s) {bad}", expected=f"keys among {list(_POLYGON_KEYS)}")
    tab = read_table(f)

    def pick(key: str, candidates: Sequence[str]) -> str | None:
        if key in cols:
            c = cols[key]
            if c:
                require_columns(tab, [c], file=f)
            return c or None
        return next((c for c in candidates if c in tab.columns), None)

    idc = pick("cell_id", ("cell_id", "label_id", "EntityID", "cellID", "cell"))
    if idc is None:
        raise StmorphInputError(
            "the polygon table has no cell id column", file=f,
            expected="segmentation_columns={'cell_id': ...} (or a column cell_id, label_id, EntityID, cellID, cell)",
        )
    xc = pick("x", ("x", "vertex_x", "x_global_px"))
    yc = pick("y", ("y", "vertex_y", "y_global_px"))
    gc = pick("geometry", ("Geometry", "geometry")) if ("geometry" in cols or xc is None or yc is None) else None
    if gc is None and (xc is None or yc is None):
        raise StmorphInputError(
            f"the polygon table has no vertex x/y columns (columns: {', '.join(map(str, list(tab.columns)[:12]))})",
            file=f, expected="segmentation_columns={'x': ..., 'y': ...} or a WKB 'Geometry' column",
        )
    pc = pick("part", ())
    zc = pick("z", ("ZIndex",))
    fc = pick("fov", ("fov",) if fov else ())

    zsel = None
    if zc is not None:
        zv = pd.to_numeric(tab[zc], errors="coerce")
        levels = np.unique(zv.dropna().to_numpy())
        if z is not None or len(levels) > 1:
            if z is None:
                zsel, chosen = levels[len(levels) // 2], "middle plane"
            elif z in levels:
                zsel, chosen = z, "argument"
            else:
                raise StmorphInputError(
                    f"the polygon table has no z-plane {z}", file=f, column=zc, expected=f"one of {levels.tolist()}"
                )
            tab = tab[(zv == zsel).to_numpy()]
            zsel = zsel.item() if isinstance(zsel, np.generic) else zsel
            report.info("segmentation_z", {"z": zsel, "n_planes": int(len(levels)), "chosen": chosen})
    elif z is not None:
        raise StmorphInputError("z= was given but the polygon table has no z column", file=f, expected="segmentation_columns={'z': ...}")

    ids = normalize_ids(tab[idc], unassigned)
    if fc is not None:
        ids = (normalize_ids(tab[fc]) + "_" + ids).astype("string")
    ids_arr = ids.to_numpy(dtype=object, na_value=None)
    if gc is not None:
        try:
            import shapely
        except ImportError as exc:  # pragma: no cover - shapely is an optional dependency
            raise ImportError("reading WKB polygons (a 'Geometry' column) needs shapely: pip install shapely") from exc
        vals = tab[gc].to_numpy(dtype=object)
        try:
            geoms = shapely.from_wkb(vals)
        except Exception as exc:
            raise StmorphInputError(f"cannot decode the polygons ({exc})", file=f, column=gc, expected="WKB polygons") from exc
        parts, gidx = shapely.get_parts(geoms, return_index=True)
        coords, ridx = shapely.get_coordinates(shapely.get_exterior_ring(parts), return_index=True)
        vx, vy = coords[:, 0], coords[:, 1]
        vid = ids_arr[gidx[ridx]]
        part = ridx.astype(np.int64)  # one ring per polygon of each (multi)polygon; holes are ignored
    else:
        vx = pd.to_numeric(tab[xc], errors="coerce").to_numpy(np.float64)
        vy = pd.to_numeric(tab[yc], errors="coerce").to_numpy(np.float64)
        vid = ids_arr
        part = pd.factorize(tab[pc])[0].astype(np.int64) if pc is not None else np.zeros(len(tab), dtype=np.int64)
    keep = np.array([v is not None for v in vid], dtype=bool) & np.isfinite(vx) & np.isfinite(vy)
    report.warn(
        "segmentation_vertices_dropped", int((~keep).sum()),
        f"dropped {int((~keep).sum())} polygon vertices without a cell id or with NaN coordinates ({f.name})",
    )
    if not keep.any():
        raise StmorphInputError("the polygon table holds no usable vertex", file=f, expected="vertices with cell ids")
    vx, vy, vid, part = vx[keep], vy[keep], vid[keep], part[keep]
    gx, gy = to_px(vx, vy)
    codes, uniques = pd.factorize(pd.Series(vid, dtype=object))
    uniq = np.asarray(uniques, dtype=object).astype(str)
    as_int = all(u.isdigit() and len(u) <= 18 for u in uniq) and bool(len(uniq))
    labels = uniq.astype(np.int64) if as_int else np.zeros(0, dtype=np.int64)
    if not as_int or (labels <= 0).any() or len(np.unique(labels)) != len(labels):
        labels = np.arange(1, len(uniq) + 1, dtype=np.int64)
        report.info("segmentation_labels", "cell ids are not positive integers: labels 1, 2, ... in table order")
    label_of_id = pd.Series(labels, index=pd.Index(uniq, dtype=object))
    if shape is None:
        mx = np.concatenate([gx, points[0][np.isfinite(points[0])]])
        my = np.concatenate([gy, points[1][np.isfinite(points[1])]])
        shape = (max(int(np.ceil(my.max())) + 1, 1), max(int(np.ceil(mx.max())) + 1, 1))
        report.info("segmentation_grid", f"{shape[0]} x {shape[1]} pixels spanning the polygons and molecules (no images)")
    seg = PolygonSegmentation(pd.DataFrame({"label_id": labels[codes], "part": part, "x": gx, "y": gy}), shape)
    prov = {
        "kind": "polygons", "path": str(f), "z": zsel, "n_cells": int(len(uniq)),
        "columns": {"cell_id": idc, "x": xc, "y": yc, "geometry": gc, "part": pc, "z": zc, "fov": fc},
    }
    return seg, label_of_id, prov


def _labels_of_ids(ids: pd.Index, label_of_id: pd.Series | None) -> np.ndarray:
    """Labels of segmentation-derived cell ids (the id itself, or the polygon table's mapping; 0 if unknown)."""
    if label_of_id is None:  # ids "<label>"; other ids (from a cell table) have no mask
        s = pd.Series(np.asarray(pd.Index(ids).astype(str), dtype=object), dtype="string")
        is_int = s.str.fullmatch(r"\d{1,18}").fillna(False).to_numpy(bool)
        out = np.zeros(len(s), dtype=np.int64)
        out[is_int] = s[is_int].to_numpy(dtype=str).astype(np.int64)
        return out
    pos = label_of_id.index.get_indexer(pd.Index(ids).astype(str))
    return np.where(pos >= 0, label_of_id.to_numpy(np.int64)[np.maximum(pos, 0)], 0).astype(np.int64)


def _ids_of_labels(labels: np.ndarray, label_of_id: pd.Series | None) -> pd.Series:
    """Cell ids (``string``; ``<NA>`` for label 0) of molecules from the labels under them."""
    u, inv = np.unique(labels, return_inverse=True)
    if label_of_id is None:
        names = np.array([str(v) if v > 0 else None for v in u.tolist()], dtype=object)
    else:
        by_label = pd.Series(label_of_id.index.to_numpy(object), index=label_of_id.to_numpy(np.int64))
        pos = pd.Index(by_label.index).get_indexer(u)
        names = np.array([by_label.iloc[p] if p >= 0 and v > 0 else None for p, v in zip(pos, u.tolist())], dtype=object)
    return pd.Series(pd.array(names[inv.ravel()], dtype="string"))


def _int_ids(ids: pd.Index) -> np.ndarray | None:
    """The cell ids as int64 when every one is a positive integer, else ``None``."""
    s = np.asarray(pd.Index(ids).astype(str), dtype=object).astype(str)
    if not len(s) or not all(v.isdigit() and len(v) <= 18 for v in s):
        return None
    out = s.astype(np.int64)
    return out if (out > 0).all() else None


def _majority_labels(mol_cells: pd.Series, mol_labels: np.ndarray, cells: pd.Index) -> np.ndarray:
    """Per cell, the non-zero label under most of its molecules (ties: the smaller label; 0 when none)."""
    ci = cells.get_indexer(pd.Series(mol_cells).astype("string").fillna("\x00__none__"))
    keep = (ci >= 0) & (mol_labels > 0)
    out = np.zeros(len(cells), dtype=np.int64)
    if keep.any():
        cnt = pd.DataFrame({"c": ci[keep], "l": mol_labels[keep]}).groupby(["c", "l"], sort=False).size()
        cnt = cnt.reset_index(name="n").sort_values(["c", "n", "l"], ascending=[True, False, True], kind="stable")
        cnt = cnt.drop_duplicates("c")
        out[cnt["c"].to_numpy()] = cnt["l"].to_numpy(np.int64)
    return out


def _cell_label_ids(
    cells: pd.Index,
    *,
    id_col: str | None,
    label_of_id: pd.Series | None,
    table_label: pd.Series | None,
    mol_cells: pd.Series,
    mol_labels: np.ndarray,
) -> tuple[np.ndarray, str]:
    """Each cell's label in the segmentation (``obs["label_id"]``) and where it came from (see read_generic)."""
    if id_col is None:
        return _labels_of_ids(cells, label_of_id), "segmentation (molecules assigned to the mask under them)"
    if table_label is not None:
        v = table_label.reindex(cells)
        arr = v.to_numpy(np.float64, na_value=np.nan)
        bad = np.isfinite(arr) & ((arr < 0) | (np.mod(arr, 1) != 0))
        if bad.any():
            raise StmorphInputError(
                f"label ids {arr[bad][:3].tolist()} are not non-negative integers", column=str(table_label.name),
                expected="the cells' integer labels in the segmentation (0 = no mask)",
            )
        return np.where(np.isfinite(arr), arr, 0).astype(np.int64), "cell table column"
    if label_of_id is not None:
        return _labels_of_ids(cells, label_of_id), "polygon table cell ids"
    ints = _int_ids(cells)
    if ints is not None:
        return ints, "cell ids (integers)"
    return _majority_labels(mol_cells, mol_labels, cells), "label under most of the cell's molecules"


def _check_own_mask(mol_cells: pd.Series, mol_labels: np.ndarray, cells: pd.Index, lid: np.ndarray, report: Report) -> None:
    """Record the fraction of assigned molecules lying in their own cell's mask; warn when under one half."""
    ci = cells.get_indexer(pd.Series(mol_cells).astype("string").fillna("\x00__none__"))
    assigned = ci >= 0
    if not assigned.any():
        return
    own_lab = lid[ci[assigned]]
    own = (mol_labels[assigned] == own_lab) & (own_lab > 0)
    frac = float(own.mean())
    report.info("molecules_in_own_mask", round(frac, 4))
    if frac < 0.5:
        report.warn(
            "molecules_outside_own_mask", int((~own).sum()),
            f"only {frac:.0%} of the assigned molecules lie in their own cell's mask: check that the cell ids "
            "(or cell_columns['label_id']) and the coordinates (units, pixel_size, origin) match the segmentation",
        )
