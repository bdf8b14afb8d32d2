"""Reader and writer of the native 10x Xenium output layout (Xenium Onboard Analysis, XOA 1.x to 4.x).

What the reader takes from an output folder (10x's output-format documentation; spatialdata-io's reader):

* ``transcripts.parquet`` / ``transcripts.csv.gz``: one row per decoded transcript, ``x_location``,
  ``y_location``, ``z_location`` in micrometres, ``feature_name``, ``cell_id`` (``UNASSIGNED`` / -1 = none),
  ``overlaps_nucleus``, ``qv``.
* ``cells.parquet`` / ``cells.csv.gz``: one row per cell, ``x_centroid``, ``y_centroid`` (um), areas.
* ``cells.zarr.zip``: the segmentation masks on the morphology image's pixel grid: ``masks/0`` nuclei and
  ``masks/1`` cells (uint32, 0 = background). ``cell_id`` lists the cells in the order of the cells table: from
  XOA 1.3 an ``(N, 2)`` uint32 array (prefix, dataset suffix) spelled ``"aaaaficg-1"`` (8 hex nibbles of the
  prefix, 0 -> ``a`` ... 15 -> ``p``), before that plain integers. Label value -> cell: XOA >= 2.0
  ``polygon_sets/<mask>/cell_index[p]`` is the cell row of label ``p + 1`` (a cell may own several nuclei);
  XOA 1.3 - 1.x ``seg_mask_value[i]`` is the label of cell row ``i``; older stores: label ``i + 1`` is row ``i``.
* ``cell_boundaries.parquet`` / ``nucleus_boundaries.parquet`` (or ``.csv.gz``): one row per polygon vertex,
  ``cell_id``, ``vertex_x``, ``vertex_y`` (um; rings closed, rows of one polygon contiguous; from XOA 2.0 a
  ``label_id`` column tells the nuclei of one cell apart). The polygons simplify the masks (10x: for display).
* Stains: XOA >= 2.0 ``morphology_focus/morphology_focus_0000.ome.tif`` ... one channel a file (DAPI, then with
  the multimodal segmentation kit the boundary stain ATP1A1/CD45/E-Cadherin, the interior RNA stain 18S and the
  interior protein stain AlphaSMA/Vimentin), pyramidal OME-TIFF whose OME-XML may describe all channels as one
  multi-file image; XOA >= 4 names the files ``chNNNN_<name>.ome.tif``; XOA 1.x: ``morphology_focus.ome.tif``,
  ``morphology_mip.ome.tif`` (2-D) and ``morphology.ome.tif`` (z-stack).
* ``experiment.xenium`` (JSON): ``pixel_size`` in um of the morphology image (0.2125).

Micrometres become pixels of the stains' grid as ``(um - origin) / pixel_size`` for transcripts, centroids and
polygon vertices alike; the masks already lie on that grid.

:func:`convert_xenium` writes the sample folder that ``write(read_xenium(...))`` writes without loading the
transcripts whole: they are read in record batches, counted and written out batch by batch (``stmorph read
xenium`` uses it).

:func:`write_xenium_layout` writes a :class:`~stmorph.SpatialSample` in that layout (the synthetic tissue's
test bed): transcripts, cells, boundaries traced from the sample's segmentation, ``cells.zarr.zip`` masks and
pyramidal ``morphology_focus`` OME-TIFFs with channel names. :func:`stmorph.datasets.write_xenium_slide` writes
a slide of many tissues in the layout, out of core.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_dir
from .._image import LabelImage, PolygonSegmentation, image_axes, image_channel_names
from ..errors import StmorphInputError
from ..sample import LABEL_ID_KEY, SpatialSample, StainImage
from ._common import (
    CONTROL_PREFIXES,
    Report,
    apply_labels,
    as_dir,
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
    to_bool,
    unassign_unknown_cells,
)
from ._writers_common import cell_positions, int_counts

__all__ = [
    "read_xenium", "convert_xenium", "detect_xenium", "write_xenium_layout", "xenium_cell_id_strings", "xenium_cell_id_ints",
    "XENIUM_DEFAULT_PIXEL_SIZE",
]

#: Xenium morphology image pixel size (um) used when neither the argument nor experiment.xenium gives one.
XENIUM_DEFAULT_PIXEL_SIZE = 0.2125
_TRANSCRIPTS = ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv")
_CELLS = ("cells.parquet", "cells.csv.gz", "cells.csv")
_CELL_BOUNDARIES = ("cell_boundaries.parquet", "cell_boundaries.csv.gz", "cell_boundaries.csv")
_NUCLEUS_BOUNDARIES = ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv")
_CELLS_ZARR = "cells.zarr.zip"
_UNASSIGNED = ("-1", "UNASSIGNED")
_SEGMENTATIONS = ("auto", "cells", "nucleus", "boundaries")
#: Single-file morphology images, in order of preference, when there is no ``morphology_focus/`` folder.
_MORPHOLOGY_FILES = ("morphology_focus.ome.tif", "morphology_mip.ome.tif", "morphology_mip.tif", "morphology.ome.tif")
#: The stains of XOA 2.x ``morphology_focus_000N.ome.tif`` (10x's output documentation), for unnamed channels.
_FOCUS_STAINS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")
_GENERIC_CHANNEL = re.compile(r"^(?:channel|ch|c)?[\s:_-]*\d+(?:[\s:_-]+\d+)*$", re.IGNORECASE)
_CHECK_WINDOW = 2048  # side (pixels) of the window in which molecules are checked against the segmentation


def detect_xenium(path: Path) -> bool:
    """A folder with ``transcripts.parquet``/``transcripts.csv.gz`` (or ``experiment.xenium``)."""
    return path.is_dir() and (any((path / t).exists() for t in _TRANSCRIPTS) or (path / "experiment.xenium").exists())


# ---------------------------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------------------------
def read_xenium(
    path: str | PathLike,
    *,
    image: str | None = "auto",
    segmentation: str | None = "auto",
    pixel_size: float | None = None,
    origin: tuple[float, float] | None = None,
    exclude_controls: bool = True,
    min_qv: float | None = None,
    labels: str | PathLike | None = None,
    label_column: str = "cell_type",
    exclude_labels: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read a native 10x Xenium output folder into a :class:`~stmorph.SpatialSample`.

    Transcripts (``transcripts.parquet`` or ``transcripts.csv.gz``; micrometres) become molecules in pixels:
    ``pixel = (um - origin) / pixel_size``. ``cell_id`` -1 / ``UNASSIGNED`` / empty is unassigned. Cells and
    their centroids come from ``cells.parquet``/``cells.csv.gz`` (other columns into ``obs``) or, when absent,
    from the assigned transcripts (centroid = mean position). Counts always derive from the kept transcripts.

    Stains: every channel of ``morphology_focus/`` (XOA >= 2.0, one file a channel), else of
    ``morphology_focus.ome.tif``, ``morphology_mip.ome.tif``, ``morphology_mip.tif`` or ``morphology.ome.tif``
    (its middle z-plane), each a lazily read :class:`~stmorph.StainImage` (level 0 of a pyramid) named from
    the file's OME channel names, sanitised (``"ATP1A1/CD45/E-Cadherin"`` -> ``"ATP1A1_CD45_E-Cadherin"``;
    DAPI stays ``"DAPI"``). Unnamed channels take the XOA 2.x stains by file number, and the first channel of
    any other file is ``"DAPI"``.

    Segmentation: the cell masks of ``cells.zarr.zip`` (a lazily read :class:`~stmorph.LabelImage`), else the
    polygons of ``cell_boundaries`` (a :class:`~stmorph.PolygonSegmentation`), else those of
    ``nucleus_boundaries`` (noted in the report). ``obs["label_id"]`` gives each cell's label (0 = no mask). A
    sample of the assigned molecules is checked against the segmentation (``report["segmentation_check"]``).

    Parameters
    ----------
    path
        The Xenium output folder.
    image
        ``"auto"`` (above); a file name in ``path`` (or a path; all its channels), or a folder of channel files;
        ``None``: no stains. A name that is not found falls back to ``"auto"`` with a warning.
    segmentation
        ``"auto"`` (above), ``"cells"`` (cell masks of ``cells.zarr.zip``), ``"nucleus"`` (nucleus masks of
        ``cells.zarr.zip``, else ``nucleus_boundaries``), ``"boundaries"`` (``cell_boundaries`` polygons) or
        ``None`` (no segmentation). A named source that is absent is an error.
    pixel_size
        Micrometres per pixel; default ``pixel_size`` of ``experiment.xenium``, else 0.2125 (with a warning).
    origin
        ``(x, y)`` micrometres of pixel (0, 0); default ``(0, 0)``. For a crop, the crop's corner
        (``(1062.0, 212.0)`` for the shared breast crop).
    exclude_controls
        Drop control probes/codewords (``NegControlProbe_*``, ``BLANK_*``, ...) from genes and molecules.
    min_qv
        Drop transcripts with ``qv`` below this (Xenium's usual threshold is 20).
    labels
        Optional label table (first column cell id, ``label_column``), file name in ``path`` or a path.
    label_column, exclude_labels
        Label column (-> ``obs["cell_type"]``) and labels whose cells are dropped.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the folder name).

    Returns
    -------
    SpatialSample
        Counts, molecules (pixels; ``overlaps_nucleus``/``qv`` kept when present; ``z`` in um), stains,
        segmentation and ``obs["label_id"]``, provenance (files, channel sources, what was dropped).

    Examples
    --------
    >>> from stmorph.io import read_xenium
    >>> s = read_xenium("/work/shared/data/xenium_breast_crop", origin=(1062.0, 212.0))  # doctest: +SKIP
    >>> s.images["DAPI"].shape  # doctest: +SKIP
    (1800, 2400)
    >>> s = read_xenium("xenium_prime_output/")  # doctest: +SKIP
    >>> list(s.images), s.segmentation  # doctest: +SKIP
    (['DAPI', 'ATP1A1_CD45_E-Cadherin', '18S', 'AlphaSMA_Vimentin'], LabelImage(.../cells.zarr.zip, component='masks/1'))
    """
    folder, tx_file, report = _open_folder(path, segmentation)
    tx = read_table(tx_file, columns=_TX_NEED, dtype=_TX_DTYPE)
    exp, pixel_size, ps_source = _pixel_size(folder, pixel_size, report)
    ox, oy = (0.0, 0.0) if origin is None else (float(origin[0]), float(origin[1]))

    # -- transcripts -------------------------------------------------------------------------------------
    b = _prepare_transcripts(tx, pixel_size, (ox, oy), min_qv, exclude_controls, tx_file)
    _report_transcripts(report, len(tx), b.n_nan, b.n_low_qv, b.control_counts, len(b.control_features),
                        int(b.keep.sum()), min_qv=min_qv, exclude_controls=exclude_controls, file=tx_file)
    # cells derive from *all* assigned transcripts with coordinates (segmentation, not gene filtering)
    coords = b.coords
    all_mol = pd.DataFrame({"x": b.x_px[coords], "y": b.y_px[coords], "cell_id": b.cell_of[coords].to_numpy()})
    keep = b.keep
    mol = make_molecules(b.x_px[keep], b.y_px[keep], b.feature[keep].to_numpy(), b.cell_of[keep], b.z, **b.extra)
    del b, tx
    gene_names = pd.Index(sorted(mol["gene"].cat.categories.astype(str)))
    if len(gene_names) == 0:
        raise StmorphInputError("empty gene set", file=tx_file, column="feature_name", expected="at least one gene")

    # -- cells -------------------------------------------------------------------------------------------
    cells_file = find_file(folder, _CELLS, required=False, what="Xenium cells")
    assigned = pd.Index(all_mol["cell_id"].dropna().unique())
    files: dict[str, Any] = {"transcripts": str(tx_file)}
    table_ids: pd.Index | None = None  # the cells table's ids in file order (the row order of cells.zarr.zip)
    if cells_file is not None:
        obs, table_ids, cells, centroids = _cells_table(cells_file, (ox, oy), pixel_size)
        unassign_unknown_cells(mol, assigned, cells, report=report, file=cells_file, column="cell_id", what="transcript")
        files["cells"] = str(cells_file)
    else:
        cells = assigned
        if len(cells) == 0:
            raise StmorphInputError("no transcript is assigned to a cell", file=tx_file, column="cell_id", expected="cell ids")
        centroids = centroids_from_molecules(all_mol, cells)
        obs = None
        report.info("cells_from", "assigned transcripts (no cells table): centroid = mean transcript position")
    del all_mol

    X = counts_from_molecules(mol["cell_id"], mol["gene"], cells, gene_names)
    adata = _cells_adata(X, cells, gene_names, centroids, obs, report, cells_file or tx_file, folder, files,
                         labels=labels, label_column=label_column, exclude_labels=exclude_labels, genes=genes,
                         tx_file=tx_file, molecules=mol)

    # -- stains --------------------------------------------------------------------------------------------
    images, sources = _open_stains(folder, image, report)
    shape: tuple[int, int] | None = None
    if images:
        shape = _stain_shape(images)
        files["images"] = sources
        check_inside_image(mol["x"].to_numpy(), mol["y"].to_numpy(), shape, report, what="molecules", file=tx_file)

    # -- segmentation ----------------------------------------------------------------------------------------
    extent = (float(mol["x"].max()), float(mol["y"].max())) if len(mol) else (0.0, 0.0)
    seg, label_id, seg_info = _read_segmentation(
        folder, segmentation, adata.obs_names, table_ids, mol, extent, shape, float(pixel_size), (ox, oy), report
    )
    if seg is not None:
        adata.obs[LABEL_ID_KEY] = np.asarray(label_id, dtype=np.int64)
        files["segmentation"] = seg_info
    prov = _provenance(folder, files, ps_source, (ox, oy), exp, exclude_controls, min_qv)
    return finish_sample(adata, mol, images, float(pixel_size), name or folder.name, prov, report, seg)


# ---------------------------------------------------------------------------------------------------------------
# reader: the steps shared by read_xenium and convert_xenium
# ---------------------------------------------------------------------------------------------------------------
_TX_NEED = ["cell_id", "feature_name", "x_location", "y_location"]
_TX_USED = (*_TX_NEED, "z_location", "overlaps_nucleus", "qv")
_TX_DTYPE = {"cell_id": "string", "feature_name": "string"}


def _open_folder(path: str | PathLike, segmentation: str | None) -> tuple[Path, Path, Report]:
    """The Xenium folder, its transcripts file and a fresh report (after checking ``segmentation``)."""
    folder = as_dir(path, what="Xenium")
    if segmentation is not None and segmentation not in _SEGMENTATIONS:
        raise StmorphInputError(
            f"segmentation={segmentation!r}", expected=" | ".join(repr(s) for s in _SEGMENTATIONS) + " | None"
        )
    report = Report("read_xenium")
    tx_file = find_file(folder, _TRANSCRIPTS, required=True, what="Xenium transcripts")
    assert tx_file is not None
    return folder, tx_file, report


def _pixel_size(folder: Path, pixel_size: float | None, report: Report) -> tuple[dict[str, Any], float, str]:
    """``experiment.xenium`` (parsed), the pixel size and where it came from."""
    exp_file = folder / "experiment.xenium"
    ps_source = "argument"
    exp: dict[str, Any] = {}
    if exp_file.exists():
        try:
            exp = json.loads(exp_file.read_text())
        except (OSError, ValueError) as exc:
            raise StmorphInputError(f"cannot parse JSON ({exc})", file=exp_file, expected="Xenium experiment JSON") from exc
    if pixel_size is None and exp.get("pixel_size") is not None:
        pixel_size, ps_source = float(exp["pixel_size"]), "experiment.xenium"
    if pixel_size is None:
        pixel_size, ps_source = XENIUM_DEFAULT_PIXEL_SIZE, "default"
        report.warn("pixel_size_default", 1, f"pixel size unknown (no experiment.xenium): assuming {XENIUM_DEFAULT_PIXEL_SIZE} um/px")
    if not pixel_size > 0:
        raise StmorphInputError(f"pixel_size={pixel_size}", expected="a positive pixel size in um")
    return exp, float(pixel_size), ps_source


@dataclass
class _Transcripts:
    """One table (or batch) of transcripts, parsed: positions in pixels, ids, which rows are kept molecules."""

    coords: np.ndarray  # rows with finite x and y
    x_px: np.ndarray
    y_px: np.ndarray
    cell_of: pd.Series  # string, <NA> = unassigned
    feature: pd.Series  # string
    keep: np.ndarray  # the molecules: finite, qv, not a control
    n_nan: int
    n_low_qv: int
    control_counts: dict[str, int]  # kept-but-control molecules per name prefix
    control_features: set[str]
    z: np.ndarray | None  # of the kept rows
    extra: dict[str, np.ndarray]  # overlaps_nucleus / qv of the kept rows


def _prepare_transcripts(
    tx: pd.DataFrame, pixel_size: float, origin: tuple[float, float], min_qv: float | None, exclude_controls: bool,
    file: Path,
) -> _Transcripts:
    """Parse a transcripts table or batch: ids, pixels, the NaN / qv / control filters."""
    feature = decode_strings(tx["feature_name"]).astype("string")
    cell_of = normalize_ids(decode_strings(tx["cell_id"]), _UNASSIGNED)
    x_um = pd.to_numeric(tx["x_location"], errors="coerce").to_numpy(np.float64)
    y_um = pd.to_numeric(tx["y_location"], errors="coerce").to_numpy(np.float64)
    coords = np.isfinite(x_um) & np.isfinite(y_um)
    keep = coords.copy()
    x_px, y_px = (x_um - origin[0]) / pixel_size, (y_um - origin[1]) / pixel_size
    n_low = 0
    if min_qv is not None:
        if "qv" not in tx.columns:
            raise StmorphInputError("min_qv was given but the table has no qv column", file=file, column="qv")
        low = tx["qv"].to_numpy(np.float64) < float(min_qv)
        n_low = int((low & keep).sum())
        keep &= ~low
    ctrl = is_control(feature) if exclude_controls else np.zeros(len(tx), dtype=bool)
    per: dict[str, int] = {}
    features: set[str] = set()
    if exclude_controls:
        counts = feature[ctrl & keep].str.extract(r"^([A-Za-z]+)", expand=False).value_counts()
        per = {str(k): int(v) for k, v in counts.items()}
        features = {str(f) for f in feature[ctrl].dropna().unique()}
    keep &= ~ctrl
    extra = {}
    if "overlaps_nucleus" in tx.columns:
        extra["overlaps_nucleus"] = to_bool(tx["overlaps_nucleus"], file=file, column="overlaps_nucleus")[keep]
    if "qv" in tx.columns:
        extra["qv"] = tx["qv"].to_numpy(np.float32)[keep]
    z = tx["z_location"].to_numpy(np.float64)[keep] if "z_location" in tx.columns else None
    return _Transcripts(coords, x_px, y_px, cell_of, feature, keep, int((~coords).sum()), n_low, per, features, z,
                        extra)


def _report_transcripts(
    report: Report, n_rows: int, n_nan: int, n_low_qv: int, control_counts: dict[str, int], n_control_features: int,
    n_kept: int, *, min_qv: float | None, exclude_controls: bool, file: Path,
) -> None:
    """The notes (and errors) about the transcripts dropped: NaN coordinates, low qv, control probes."""
    if n_nan == n_rows:
        raise StmorphInputError("every transcript has a NaN coordinate", file=file, column="x_location")
    report.warn("molecules_nan_coordinates", n_nan, f"dropped {n_nan} transcripts with NaN coordinates")
    if min_qv is not None:
        report.info("molecules_low_qv_dropped", int(n_low_qv))
    if exclude_controls:
        report.info("control_molecules_excluded", dict(sorted(control_counts.items(), key=lambda kv: -kv[1])))
        report.info("control_features_excluded", int(n_control_features))
    if n_kept == 0:
        raise StmorphInputError(
            "no transcript is left after excluding control probes / low qv", file=file, column="feature_name",
            expected="gene transcripts besides control probes",
        )


def _cells_table(
    cells_file: Path, origin: tuple[float, float], pixel_size: float
) -> tuple[pd.DataFrame, pd.Index, pd.Index, np.ndarray]:
    """The cells table: ``obs`` (centroid columns), the ids in file order, the unique cells and their centroids
    (pixels)."""
    ctab = read_table(cells_file, columns=["cell_id", "x_centroid", "y_centroid"], dtype={"cell_id": "string"})
    ctab.index = pd.Index(normalize_ids(decode_strings(ctab.pop("cell_id"))).astype(object))
    table_ids = pd.Index(ctab.index)
    ctab = ctab[ctab.index.notna() & ~ctab.index.duplicated(keep="first")]
    cells = pd.Index(ctab.index)
    centroids = np.column_stack([
        (ctab["x_centroid"].to_numpy(np.float64) - origin[0]) / pixel_size,
        (ctab["y_centroid"].to_numpy(np.float64) - origin[1]) / pixel_size,
    ])
    return ctab, table_ids, cells, centroids


def _cells_adata(
    X: Any, cells: pd.Index, gene_names: pd.Index, centroids: np.ndarray, obs: pd.DataFrame | None, report: Report,
    table_file: Path, folder: Path, files: dict[str, Any], *, labels: str | PathLike | None, label_column: str,
    exclude_labels: Sequence[str], genes: Sequence[str] | None, tx_file: Path, molecules: pd.DataFrame | None,
) -> Any:
    """The cells' AnnData: counts, centroids, labels joined (cells dropped; with ``molecules`` their molecules
    unassigned, in place), genes restricted."""
    adata = build_adata(X, cells, gene_names, centroids, obs)
    n_empty = int((np.asarray(X.sum(axis=1)).ravel() == 0).sum())
    report.warn("cells_without_molecules", n_empty, f"{n_empty} cells have no kept transcript (kept with zero counts)")
    adata = drop_nan_centroids(adata, report, file=table_file)
    if labels is not None:
        lab_file = find_file(folder, [str(labels)], required=True, what="labels")
        assert lab_file is not None
        lt = read_table(lab_file)
        require_columns(lt, [label_column], file=lab_file)
        id_col = str(lt.columns[0]) if lt.columns[0] != label_column else "cell_id"
        require_columns(lt, [id_col], file=lab_file)
        adata = apply_labels(adata, label_series(lt[label_column], lt[id_col]), report, file=lab_file,
                             exclude_labels=exclude_labels, molecules=molecules)
        files["labels"] = str(lab_file)
    return restrict_genes(adata, genes, file=tx_file)


def _stain_shape(images: dict[str, StainImage]) -> tuple[int, int]:
    first = images["DAPI"] if "DAPI" in images else next(iter(images.values()))
    return first.shape


def _provenance(
    folder: Path, files: dict[str, Any], ps_source: str, origin: tuple[float, float], exp: dict[str, Any],
    exclude_controls: bool, min_qv: float | None,
) -> dict[str, Any]:
    return {
        "reader": "xenium",
        "path": str(folder.resolve()),
        "files": files,
        "pixel_size_source": ps_source,
        "origin_um": [origin[0], origin[1]],
        "analysis_sw_version": str(exp["analysis_sw_version"]) if exp.get("analysis_sw_version") else None,
        "exclude_controls": bool(exclude_controls),
        "control_prefixes": list(CONTROL_PREFIXES) if exclude_controls else [],
        "min_qv": min_qv,
        "z_units": "um",
    }


# ---------------------------------------------------------------------------------------------------------------
# streaming conversion: a Xenium folder to a sample folder, the transcripts read batch by batch
# ---------------------------------------------------------------------------------------------------------------
#: Assigned molecules kept for the segmentation check of :func:`convert_xenium` (above it, every k-th one).
_CHECK_SAMPLE = 2_000_000
#: Assigned molecules gathered before they are added to the counts of :func:`convert_xenium`.
_COUNT_FLUSH = 4_000_000


def convert_xenium(
    path: str | PathLike,
    out: str | PathLike,
    *,
    overwrite: bool = False,
    copy_images: bool = False,
    batch_rows: int = 250_000,
    image: str | None = "auto",
    segmentation: str | None = "auto",
    pixel_size: float | None = None,
    origin: tuple[float, float] | None = None,
    exclude_controls: bool = True,
    min_qv: float | None = None,
    labels: str | PathLike | None = None,
    label_column: str = "cell_type",
    exclude_labels: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> Path:
    """Convert a native 10x Xenium output folder into a stmorph sample folder, streaming the transcripts.

    The result is the folder ``write(read_xenium(path, ...), out)`` would write, with the same counts, cells,
    molecules, stains, segmentation and report, but the transcripts are never loaded whole: they are read in
    record batches of ``batch_rows`` rows (parquet; chunks of a csv), filtered (NaN coordinates, ``min_qv``,
    control probes) and mapped to pixels batch by batch; the counts are summed per cell and gene as they come and
    the molecules go to disk batch by batch (a first pass to a scratch file in the output folder, then
    ``molecules.parquet`` with the final gene categories and cell ids). Memory holds a batch, the counts and
    the cells, not the molecules.

    Differences from the in-memory reader: without a cells table the centroids (mean transcript positions) are
    summed batch by batch, equal up to floating-point rounding; above 2,000,000 assigned molecules the
    segmentation check (``report["segmentation_check"]``) looks at every k-th of them.

    Parameters
    ----------
    path
        The Xenium output folder.
    out
        The sample folder to write (atomically: beside its place, moved there when complete).
    overwrite
        Replace an existing ``out``.
    copy_images
        Copy the stains into the sample folder instead of referencing them.
    batch_rows
        Transcripts per batch.
    image, segmentation, pixel_size, origin, exclude_controls, min_qv, labels, label_column, exclude_labels, genes, name
        As :func:`read_xenium`.

    Returns
    -------
    pathlib.Path
        The sample folder.

    Examples
    --------
    >>> from stmorph.io import convert_xenium
    >>> convert_xenium("xenium_output/", "sample.stmorph", min_qv=20)  # doctest: +SKIP
    PosixPath('sample.stmorph')
    """
    return _convert_xenium(
        path, out, overwrite=overwrite, copy_images=copy_images, batch_rows=batch_rows, image=image,
        segmentation=segmentation, pixel_size=pixel_size, origin=origin, exclude_controls=exclude_controls,
        min_qv=min_qv, labels=labels, label_column=label_column, exclude_labels=exclude_labels, genes=genes, name=name,
    )[0]


def _convert_xenium(
    path: str | PathLike,
    out: str | PathLike,
    *,
    overwrite: bool = False,
    copy_images: bool = False,
    batch_rows: int = 250_000,
    image: str | None = "auto",
    segmentation: str | None = "auto",
    pixel_size: float | None = None,
    origin: tuple[float, float] | None = None,
    exclude_controls: bool = True,
    min_qv: float | None = None,
    labels: str | PathLike | None = None,
    label_column: str = "cell_type",
    exclude_labels: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> tuple[Path, SpatialSample]:
    """:func:`convert_xenium`; also returns the sample without its molecules (``provenance["n_molecules"]``)."""
    folder, tx_file, report = _open_folder(path, segmentation)
    batches = _iter_transcripts(tx_file, max(int(batch_rows), 1))  # checks the columns before anything else
    exp, pixel_size, ps_source = _pixel_size(folder, pixel_size, report)
    ox, oy = (0.0, 0.0) if origin is None else (float(origin[0]), float(origin[1]))
    cells_file = find_file(folder, _CELLS, required=False, what="Xenium cells")
    table = _cells_table(cells_file, (ox, oy), pixel_size) if cells_file is not None else None
    stain_report = Report("read_xenium")  # its notes join the report where read_xenium makes them
    images, sources = _open_stains(folder, image, stain_report)
    shape = _stain_shape(images) if images else None
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        acc = _TranscriptStream(None if table is None else table[2], shape)
        pass1 = tmp / ".molecules_pass1.parquet"
        try:
            for tx in batches:
                acc.add(_prepare_transcripts(tx, pixel_size, (ox, oy), min_qv, exclude_controls, tx_file), pass1)
        finally:
            acc.close()
        _report_transcripts(report, acc.n_rows, acc.n_nan, acc.n_low_qv, acc.control_counts,
                            len(acc.control_features), acc.n_kept, min_qv=min_qv, exclude_controls=exclude_controls,
                            file=tx_file)
        gene_names = pd.Index(sorted(acc.genes))
        if len(gene_names) == 0:
            raise StmorphInputError("empty gene set", file=tx_file, column="feature_name", expected="at least one gene")

        files: dict[str, Any] = {"transcripts": str(tx_file)}
        table_ids: pd.Index | None = None
        if table is not None:
            assert cells_file is not None
            obs, table_ids, cells, centroids = table
            acc.reconcile(cells, report, cells_file)
            files["cells"] = str(cells_file)
        else:
            cells = acc.cell_index()
            if len(cells) == 0:
                raise StmorphInputError("no transcript is assigned to a cell", file=tx_file, column="cell_id",
                                        expected="cell ids")
            centroids = acc.centroids()
            obs = None
            report.info("cells_from", "assigned transcripts (no cells table): centroid = mean transcript position")
        gene_lut = np.asarray(gene_names.get_indexer(acc.gene_list()), dtype=np.int64)
        X = acc.counts(len(cells), gene_lut, len(gene_names))
        adata = _cells_adata(X, cells, gene_names, centroids, obs, report, cells_file or tx_file, folder, files,
                             labels=labels, label_column=label_column, exclude_labels=exclude_labels, genes=genes,
                             tx_file=tx_file, molecules=None)
        del X
        # the molecules of the cells that labels dropped become unassigned (as apply_labels does in memory)
        cell_kept = cells.isin(adata.obs_names) if labels is not None else np.ones(len(cells), dtype=bool)

        report.notes.update(stain_report.notes)
        if images:
            assert shape is not None
            files["images"] = sources
            acc.check_inside(shape, report, tx_file)
        checked = acc.check_sample(cells, cell_kept)
        seg, label_id, seg_info = _read_segmentation(
            folder, segmentation, adata.obs_names, table_ids, checked, acc.extent(), shape, float(pixel_size),
            (ox, oy), report,
        )
        if seg is not None:
            adata.obs[LABEL_ID_KEY] = np.asarray(label_id, dtype=np.int64)
            files["segmentation"] = seg_info
        prov = _provenance(folder, files, ps_source, (ox, oy), exp, exclude_controls, min_qv)
        sample = finish_sample(adata, None, images, float(pixel_size), name or folder.name, prov, report, seg)
        sample.provenance["n_molecules"] = int(acc.n_kept)

        _write_molecules(pass1, tmp / "molecules.parquet", gene_lut, gene_names, np.asarray(cells, dtype=object),
                         cell_kept)
        pass1.unlink()
        part = tmp / ".sample"
        sample.write(part, copy_images=copy_images)
        for p in part.iterdir():
            os.replace(p, tmp / p.name)
        part.rmdir()
    return out, sample


def _iter_transcripts(tx_file: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The columns of the transcripts that the reader uses, ``batch_rows`` rows at a time; the required columns
    are checked when this is called (not at the first batch)."""
    name = tx_file.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            # pre_buffer=False: with it, iter_batches keeps every range it has read until the iterator ends
            pf = pq.ParquetFile(tx_file, pre_buffer=False)
            present = list(pf.schema_arrow.names)
        else:
            present = list(pd.read_csv(tx_file, nrows=0).columns)
    except Exception as exc:
        raise StmorphInputError(f"cannot read the table ({type(exc).__name__}: {exc})", file=tx_file,
                                expected="a csv/tsv/parquet table") from exc
    require_columns(pd.DataFrame(columns=present), _TX_NEED, file=tx_file)
    cols = [c for c in present if c in _TX_USED]

    def gen() -> Iterator[pd.DataFrame]:
        if name.endswith((".parquet", ".pq")):
            for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
                if rb.num_rows:
                    yield rb.to_pandas()
        else:
            with pd.read_csv(tx_file, chunksize=batch_rows, usecols=cols, dtype=_TX_DTYPE, low_memory=False) as r:
                for chunk in r:
                    if len(chunk):
                        yield chunk

    return gen()


class _TranscriptStream:
    """What :func:`convert_xenium` gathers from the transcript batches.

    Counts per cell and gene (a sparse matrix, the batches' (cell, gene) pairs added to it every few million
    molecules), the report's numbers,
    the cell ids seen (without a cells table: the cells, in order of first appearance, and their coordinate
    sums), the genes in order of first appearance, a sample of the assigned molecules for the segmentation check,
    and the kept molecules themselves, written to a scratch parquet file (pixels, gene and cell codes).
    """

    def __init__(self, cells: pd.Index | None, shape: tuple[int, int] | None) -> None:
        self.table_cells = cells
        self.shape = shape
        self.n_rows = self.n_nan = self.n_low_qv = self.n_kept = 0
        self.control_counts: dict[str, int] = {}
        self.control_features: set[str] = set()
        self.genes: dict[str, int] = {}
        self._ids: dict[str, int] = {}  # without a cells table: the cells seen
        self._index = pd.Index([], dtype=object)
        self._sums = np.zeros((0, 3))  # x, y, n per cell (without a cells table)
        self.any_assigned = self.any_known = False
        self.first_assigned: list[str] = []
        self.unknown: set[str] = set()
        self.n_unknown = 0
        self._total: Any = None  # the counts so far (CSR, int32; cells x genes in order of first appearance)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (cell, gene) codes not yet added
        self._n_pending = 0
        self.n_out = 0
        self.max_xy = (-np.inf, -np.inf)
        self._check: list[dict[str, np.ndarray]] = []
        self._check_n = 0
        self.stride = 1
        self._writer: Any = None

    # -- one batch --------------------------------------------------------------------------------------------
    def add(self, b: _Transcripts, pass1: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n0_kept = self.n_kept
        self.n_rows += len(b.coords)
        self.n_nan += b.n_nan
        self.n_low_qv += b.n_low_qv
        for k, v in b.control_counts.items():
            self.control_counts[k] = self.control_counts.get(k, 0) + v
        self.control_features |= b.control_features
        keep = b.keep
        self.n_kept += int(keep.sum())
        # cells: the assigned ids of every transcript with coordinates
        ids = b.cell_of[b.coords]
        uniq = pd.Index(pd.unique(ids.dropna()).astype(object))
        if len(uniq):
            self.any_assigned = True
            self.first_assigned.extend(uniq[: max(0, 3 - len(self.first_assigned))].tolist())
        if self.table_cells is not None:
            known = self.table_cells.get_indexer(uniq) >= 0
            self.any_known |= bool(known.any())
            self.unknown.update(uniq[~known].tolist())
            index = self.table_cells
        else:
            new = uniq[~uniq.isin(self._index)] if len(self._index) else uniq
            if len(new):
                for i in new:
                    self._ids[i] = len(self._ids)
                self._index = pd.Index(list(self._ids), dtype=object)
                grow = np.zeros((len(self._index), 3))
                grow[: len(self._sums)] = self._sums
                self._sums = grow
            code_all = self._index.get_indexer(ids.astype(object).fillna("\x00__none__"))
            ok = code_all >= 0
            for j, v in enumerate((b.x_px[b.coords][ok], b.y_px[b.coords][ok], np.ones(int(ok.sum())))):
                self._sums[:, j] += np.bincount(code_all[ok], weights=v, minlength=len(self._index))
            index = self._index
        kept_ids = b.cell_of[keep]
        code = index.get_indexer(kept_ids.astype(object).fillna("\x00__none__")).astype(np.int32)
        if self.table_cells is not None:
            self.n_unknown += int((kept_ids.notna().to_numpy(bool) & (code < 0)).sum())
        # genes, as make_molecules names them
        feat = np.asarray(b.feature[keep].to_numpy(), dtype=object).astype(str)
        for g in pd.unique(feat):
            if g not in self.genes:
                self.genes[g] = len(self.genes)
        gcode = pd.Index(list(self.genes)).get_indexer(feat).astype(np.int32)
        # counts
        a = code >= 0
        if a.any():
            self._pending.append((code[a], gcode[a]))
            self._n_pending += int(a.sum())
            if self._n_pending >= _COUNT_FLUSH:
                self._add_pending()
        # molecules, extents, stains' grid
        x = b.x_px[keep].astype(np.float32)
        y = b.y_px[keep].astype(np.float32)
        if len(x):
            self.max_xy = (max(self.max_xy[0], float(x.max())), max(self.max_xy[1], float(y.max())))
        if self.shape is not None:
            h, w = self.shape
            self.n_out += int((~((x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5))).sum())
        cols: dict[str, Any] = {"x": x, "y": y, "gene": gcode, "cell": code}
        if b.z is not None:
            cols["z"] = b.z.astype(np.float32)
        cols.update(b.extra)
        table = pa.table(cols)
        if self._writer is None:
            self._writer = pq.ParquetWriter(pass1, table.schema)
        self._writer.write_table(table)
        # a sample of the assigned molecules (every stride-th kept molecule) for the segmentation check
        ordinal = n0_kept + np.arange(len(x))
        pick = a & (ordinal % self.stride == 0)
        part = {"x": x[pick], "y": y[pick], "cell": code[pick], "ordinal": ordinal[pick]}
        if "overlaps_nucleus" in b.extra:
            part["overlaps_nucleus"] = b.extra["overlaps_nucleus"][pick]
        self._check.append(part)
        self._check_n += int(pick.sum())
        while self._check_n > _CHECK_SAMPLE:
            self.stride *= 2
            self._check = [{k: v[p["ordinal"] % self.stride == 0] for k, v in p.items()} for p in self._check]
            self._check_n = sum(len(p["x"]) for p in self._check)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _add_pending(self) -> None:
        """Add the pending (cell, gene) codes to the counts (growing the matrix to the cells and genes seen)."""
        import scipy.sparse as sp

        n_cells = len(self.table_cells) if self.table_cells is not None else len(self._index)
        shape = (n_cells, len(self.genes))
        if self._total is not None and self._total.shape != shape:
            self._total.resize(shape)
        if self._pending:
            rows = np.concatenate([p[0] for p in self._pending])
            cols = np.concatenate([p[1] for p in self._pending])
            self._pending, self._n_pending = [], 0
            m = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=shape)
            del rows, cols
            self._total = m if self._total is None else self._total + m
        elif self._total is None:
            self._total = sp.csr_matrix(shape, dtype=np.int32)

    # -- after the last batch ---------------------------------------------------------------------------------
    def gene_list(self) -> list[str]:
        return list(self.genes)

    def cell_index(self) -> pd.Index:
        return pd.Index(self._index)

    def centroids(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.column_stack([self._sums[:, 0] / self._sums[:, 2], self._sums[:, 1] / self._sums[:, 2]])

    def reconcile(self, cells: pd.Index, report: Report, cells_file: Path) -> None:
        """As :func:`unassign_unknown_cells`: an error when no assigned id is a cell of the table, else a note on
        the transcripts of unknown cells (their codes are already -1)."""
        if self.any_assigned and not self.any_known:
            raise StmorphInputError(
                f"no transcript cell id is in the cell table (e.g. {self.first_assigned[:3]} vs {cells[:3].tolist()})",
                file=cells_file, column="cell_id", expected="the cell ids of the transcript table",
            )
        if self.unknown:
            report.warn("molecules_of_unknown_cells", self.n_unknown,
                        f"{self.n_unknown} transcripts are assigned to {len(self.unknown)} cells absent from "
                        f"{cells_file.name}; unassigned")

    def counts(self, n_cells: int, gene_lut: np.ndarray, n_genes: int) -> Any:
        import scipy.sparse as sp

        from ._common import finalize_matrix

        self._add_pending()
        m, self._total = self._total, None
        assert m is not None and m.shape == (n_cells, len(gene_lut))
        # columns in the order of first appearance -> the sorted gene names
        m = sp.csr_matrix((m.data.astype(np.float32), gene_lut[m.indices].astype(m.indices.dtype), m.indptr),
                          shape=(n_cells, n_genes))
        m.sort_indices()
        return finalize_matrix(m)

    def check_inside(self, shape: tuple[int, int], report: Report, file: Path) -> None:
        """As :func:`check_inside_image` on all kept molecules."""
        if self.n_kept == 0:
            return
        h, w = shape
        if self.n_out == self.n_kept:
            raise StmorphInputError(
                f"all {self.n_kept} molecules lie outside the {h} x {w} image: check pixel_size / origin / the image",
                file=file, expected=f"pixel coordinates inside 0..{w} (x) and 0..{h} (y)",
            )
        report.warn("molecules_outside_image", self.n_out,
                    f"{self.n_out} of {self.n_kept} molecules lie outside the {h} x {w} image")

    def check_sample(self, cells: pd.Index, cell_kept: np.ndarray) -> pd.DataFrame:
        """The sampled assigned molecules as a molecule table (cell ids of the cells still in the sample)."""
        parts = self._check
        cat = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ("x", "y")}
        code = np.concatenate([p["cell"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        ok = (code >= 0) & cell_kept[np.maximum(code, 0)] if len(cells) else np.zeros(len(code), dtype=bool)
        ids = np.where(ok, np.asarray(cells, dtype=object)[np.maximum(code, 0)] if len(cells) else None, None)
        frame = {"x": cat["x"], "y": cat["y"], "cell_id": pd.array(ids, dtype="string")}
        if parts and "overlaps_nucleus" in parts[0]:
            frame["overlaps_nucleus"] = np.concatenate([p["overlaps_nucleus"] for p in parts])
        return pd.DataFrame(frame)

    def extent(self) -> tuple[float, float]:
        return (self.max_xy[0], self.max_xy[1]) if self.n_kept else (0.0, 0.0)


def _write_molecules(
    pass1: Path, dest: Path, gene_lut: np.ndarray, gene_names: pd.Index, cells: np.ndarray, cell_kept: np.ndarray
) -> None:
    """The scratch molecules as the sample's ``molecules.parquet``, row group by row group: the table
    :func:`make_molecules` builds in memory (float32 pixels, categorical gene over every gene, string cell id,
    ``z``, ``overlaps_nucleus``, ``qv``), as ``DataFrame.to_parquet`` writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cats = pd.Index(np.asarray(gene_names, dtype=object))
    writer = None
    pf = pq.ParquetFile(pass1)
    try:
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i)
            code = t.column("cell").to_numpy()
            ok = code >= 0
            ok[ok] = cell_kept[code[ok]]
            ids = np.full(len(code), None, dtype=object)
            ids[ok] = cells[code[ok]]
            data: dict[str, Any] = {
                "x": t.column("x").to_numpy(),
                "y": t.column("y").to_numpy(),
                "gene": pd.Categorical.from_codes(gene_lut[t.column("gene").to_numpy()], categories=cats),
                "cell_id": pd.array(ids, dtype="string"),
            }
            for c in ("z", "overlaps_nucleus", "qv"):
                if c in t.column_names:
                    data[c] = t.column(c).to_numpy()
            table = pa.Table.from_pandas(pd.DataFrame(data), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(dest, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


# ---------------------------------------------------------------------------------------------------------------
# stains
# ---------------------------------------------------------------------------------------------------------------
def _channel_name(raw: str | None) -> str | None:
    """A short, file-system-safe channel name (``"DAPI"`` kept), ``None`` for an empty or generic name."""
    if raw is None:
        return None
    raw = str(raw).strip()
    if not raw or _GENERIC_CHANNEL.match(raw):
        return None
    if re.split(r"[^A-Za-z0-9]+", raw)[0].lower() == "dapi":
        return "DAPI"
    name = re.sub(r"\s*-\s+|\s+-\s*", "_", raw)  # "Interior - RNA" -> "Interior_RNA"; "E-Cadherin" stays
    name = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_.-")
    return name or None


def _default_channel_name(file_name: str, channel: int, n_channels: int, first: bool) -> str:
    """The name of an unnamed channel from its file's name (XOA conventions) and its position in the file."""
    stem = file_name.split(".")[0]
    m = re.match(r"^ch\d+_(.+)$", stem, re.IGNORECASE)  # XOA >= 4: chNNNN_<name>.ome.tif
    if m:
        return _channel_name(m.group(1)) or stem
    m = re.match(r"^morphology_focus_(\d+)$", stem)  # XOA 2.x/3.x: morphology_focus_000N.ome.tif
    if m:
        k = int(m.group(1)) + channel
        return (_channel_name(_FOCUS_STAINS[k]) or stem) if k < len(_FOCUS_STAINS) else f"{stem}_{channel}"
    if channel == 0 and (first or stem.startswith("morphology")):
        return "DAPI"
    if n_channels == len(_FOCUS_STAINS) and stem.startswith("morphology"):
        return _channel_name(_FOCUS_STAINS[channel]) or f"{stem}_{channel}"
    return f"{stem}_{channel}" if n_channels > 1 else stem


def _series_files(path: Path) -> list[str]:
    """Names of the files whose pages make up the first series of a TIFF (several for a multi-file OME-TIFF)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            out = []
            for page in tf.series[0].levels[0].pages:
                parent = getattr(page, "parent", None)
                fh = getattr(parent, "filehandle", None)
                out.append(Path(fh.name).name if fh is not None else path.name)
            return out
    except Exception:  # not a TIFF, or an odd layout: the file itself
        return [path.name]


def _check_codec(path: Path, report: Report) -> None:
    """Warn when the pixels of a TIFF need a codec that is not installed (XOA >= 2 stains are JPEG 2000 tiles)."""
    import tifffile

    if path.suffix.lower() not in (".tif", ".tiff"):
        return
    try:
        with tifffile.TiffFile(path) as tf:
            comp = tf.series[0].levels[0].keyframe.compression
    except Exception:  # unreadable files fail with a clear error when their pixels are read
        return
    try:
        tifffile.TIFF.DECOMPRESSORS[int(comp)]
    except KeyError as exc:
        report.warn(f"{path.name}_codec_missing", 1, f"{path.name} is {getattr(comp, 'name', comp)}-compressed and "
                                                     f"cannot be decoded here ({exc.args[0]}): pip install imagecodecs")


def _stain_files(folder: Path, image: str, report: Report) -> list[Path]:
    if image != "auto":
        p = Path(image) if Path(image).is_absolute() else folder / image
        if p.is_file():
            return [p]
        if p.is_dir():
            found = _tiffs_in(p)
            if found:
                return found
        if image != "morphology_mip.tif":  # the former default: silently the Xenium morphology images
            report.warn("image_not_found", 1, f"image {image!r} not found in {folder}: looking for the Xenium "
                                              "morphology images")
    focus = folder / "morphology_focus"
    if focus.is_dir():
        found = _tiffs_in(focus)
        if found:
            return found
    for cand in _MORPHOLOGY_FILES:
        if (folder / cand).is_file():
            return [folder / cand]
    return []


def _tiffs_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff")
                  and not p.name.startswith("._"))


def _open_stains(folder: Path, image: str | None, report: Report) -> tuple[dict[str, StainImage], dict[str, Any]]:
    """Every channel of the Xenium morphology images as named :class:`StainImage` s, and where each comes from."""
    if image is None:
        return {}, {}
    files = _stain_files(folder, image, report)
    if not files:
        report.warn("no_image", 1, f"no morphology image found in {folder} (looked for morphology_focus/, "
                                   f"{', '.join(_MORPHOLOGY_FILES)})")
        return {}, {}
    images: dict[str, StainImage] = {}
    sources: dict[str, Any] = {}
    covered: set[str] = set()
    for f in files:
        if f.name in covered:  # a channel of a multi-file OME-TIFF already opened from its first file
            continue
        axes, shape = image_axes(f)
        cax = next((a for a in "CSQI" if a in axes), None)
        n = int(shape[axes.index(cax)]) if cax else 1
        page_files = _series_files(f) if f.suffix.lower() in (".tif", ".tiff") else [f.name]
        covered.update(page_files)
        _check_codec(f, report)
        stored = image_channel_names(f)
        z = shape[axes.index("Z")] // 2 if "Z" in axes else None
        if z is not None:
            report.info(f"{f.name}_z", {"z": int(z), "n_planes": int(shape[axes.index("Z")]), "chosen": "middle plane"})
        for c in range(n):
            raw = stored[c] if stored else None
            # the file holding channel c: another file of a multi-file OME-TIFF holds one channel, at its index 0
            src = page_files[c] if len(page_files) == n else f.name
            own = src == f.name
            nm = _channel_name(raw) or _default_channel_name(src, c if own else 0, n if own else 1, not images)
            base, k = nm, 2
            while nm in images:
                nm, k = f"{base}_{k}", k + 1
            images[nm] = StainImage(f, z=z, channel=c if n > 1 else None)
            sources[nm] = {"file": str(f), "channel": c if n > 1 else None, "name_in_file": raw}
    report.info("channels", {k: v["name_in_file"] for k, v in sources.items()})
    return images, sources


# ---------------------------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------------------------
def xenium_cell_id_strings(prefix: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Xenium's string cell ids from the ``(prefix, dataset suffix)`` uint32 pairs of ``cells.zarr.zip``.

    Each of the prefix's 8 hex nibbles (most significant first) becomes a letter (0 -> ``a`` ... 15 -> ``p``),
    followed by ``-<suffix>``.

    Parameters
    ----------
    prefix, suffix
        ``(n,)`` integer arrays (columns 0 and 1 of ``cell_id``).

    Returns
    -------
    ``(n,)`` array of str.

    Examples
    --------
    >>> xenium_cell_id_strings(np.array([1, 0xFFFFFFFF]), np.array([1, 1])).tolist()
    ['aaaaaaab-1', 'pppppppp-1']
    """
    prefix = np.asarray(prefix, dtype=np.uint64).astype(np.uint32)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    letters = ((prefix[:, None] >> shifts) & 0xF).astype(np.uint8) + ord("a")
    pre = letters.view("S8").ravel().astype("U8")
    return np.char.add(pre, np.char.add("-", np.asarray(suffix).astype(np.int64).astype("U")))


def xenium_cell_id_ints(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(prefix, suffix)`` uint32 pairs of Xenium string cell ids (inverse of :func:`xenium_cell_id_strings`).

    Parameters
    ----------
    ids
        Ids like ``"aaaaficg-1"``.

    Returns
    -------
    (prefix, suffix) uint32 arrays.

    Examples
    --------
    >>> xenium_cell_id_ints(["aaaaaaab-1"])
    (array([1], dtype=uint32), array([1], dtype=uint32))
    """
    pre, suf = [], []
    for s in ids:
        m = re.fullmatch(r"([a-p]{1,8})-(\d+)", str(s))
        if m is None:
            raise StmorphInputError(f"{s!r} is not a Xenium cell id", column="cell_id", expected="ids like 'aaaaficg-1'")
        pre.append(int("".join("0123456789abcdef"[ord(ch) - ord("a")] for ch in m.group(1)), 16))
        suf.append(int(m.group(2)))
    return np.asarray(pre, dtype=np.uint32), np.asarray(suf, dtype=np.uint32)


def _read_segmentation(
    folder: Path,
    mode: str | None,
    cells: pd.Index,
    table_ids: pd.Index | None,
    mol: pd.DataFrame,
    extent: tuple[float, float],
    shape: tuple[int, int] | None,
    pixel_size: float,
    origin: tuple[float, float],
    report: Report,
) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
    """The segmentation (LabelImage / PolygonSegmentation), each cell's label and a description of the source.

    ``mol`` holds the molecules checked against the segmentation (all of them, or a sample); ``extent`` is the
    largest molecule ``(x, y)`` (the polygons' grid when there is no stain)."""
    if mode is None:
        return None, None, {}
    zfile = folder / _CELLS_ZARR
    cb = find_file(folder, _CELL_BOUNDARIES, required=False, what="cell boundaries")
    nb = find_file(folder, _NUCLEUS_BOUNDARIES, required=False, what="nucleus boundaries")
    plan: list[tuple[str, Any]] = {
        "auto": [("mask", 1), ("polygons", "cell"), ("polygons", "nucleus")],
        "cells": [("mask", 1)],
        "nucleus": [("mask", 0), ("polygons", "nucleus")],
        "boundaries": [("polygons", "cell")],
    }[mode]
    for kind, which in plan:
        if kind == "mask" and not zfile.is_file():
            continue
        bfile = cb if which == "cell" else nb
        if kind == "polygons" and bfile is None:
            continue
        try:
            if kind == "mask":
                seg, label_of, info, window = _mask_segmentation(zfile, int(which), table_ids, cells, shape, report)
            else:
                assert bfile is not None
                seg, label_of, info, window = _polygon_segmentation(
                    bfile, which, cells, extent, shape, pixel_size, origin, report)
        except (ImportError, StmorphInputError) as exc:
            if mode != "auto":
                raise
            report.warn(f"segmentation_{kind}_{which}_unreadable", 1, f"segmentation source skipped: {exc}")
            continue
        if mode == "auto" and (kind, which) == ("polygons", "nucleus"):
            report.warn("segmentation_nucleus_only", 1, f"no cell masks or cell boundaries: the nucleus boundaries "
                                                        f"({bfile.name}) are the segmentation")
        label_id = label_of.reindex(cells).fillna(0).to_numpy(np.int64)
        n_none = int((label_id == 0).sum())
        report.warn("cells_without_mask", n_none, f"{n_none} of {len(cells)} cells have no mask in {info['file']} "
                                                  f"(obs['label_id'] = 0)")
        _check_segmentation(window, seg.shape, mol, label_of, info, report)
        return seg, label_id, info
    if mode != "auto":
        want = {"cells": f"{_CELLS_ZARR} (masks/1)", "nucleus": f"{_CELLS_ZARR} (masks/0) or nucleus_boundaries",
                "boundaries": "cell_boundaries.parquet/.csv.gz"}[mode]
        raise StmorphInputError(f"segmentation={mode!r} but no {want} was found", file=folder, expected=want)
    report.warn("no_segmentation", 1, f"no segmentation in {folder.name} (no {_CELLS_ZARR}, cell_boundaries or "
                                      "nucleus_boundaries): sample.segmentation is None")
    return None, None, {}


def _mask_segmentation(
    zfile: Path, mask: int, table_ids: pd.Index | None, cells: pd.Index, shape: tuple[int, int] | None, report: Report
) -> tuple[LabelImage, pd.Series, dict[str, Any], Any]:
    """``masks/<mask>`` of ``cells.zarr.zip`` as a LabelImage and the label of each cell id."""
    from .._image import _zarr_open

    what = "nucleus" if mask == 0 else "cell"
    try:
        root = _zarr_open(zfile)
        arr = root["masks"][str(mask)]
    except ImportError:
        raise
    except Exception as exc:
        raise StmorphInputError(f"cannot read masks/{mask} ({type(exc).__name__}: {exc})", file=zfile,
                                expected="a Xenium cells.zarr.zip with masks/0 (nuclei) and masks/1 (cells)") from exc
    if arr.ndim != 2 or not np.issubdtype(np.dtype(arr.dtype), np.integer):
        raise StmorphInputError(f"masks/{mask} has shape {arr.shape} and dtype {arr.dtype}", file=zfile,
                                expected="a 2-D integer label mask")
    members = _members(root)
    # cell ids of the rows
    row_ids: pd.Index | None = None
    if "cell_id" in members:
        raw = np.asarray(root["cell_id"][...])
        if raw.ndim == 2 and raw.shape[1] == 2:
            row_ids = pd.Index(xenium_cell_id_strings(raw[:, 0], raw[:, 1]).astype(object))
        else:
            row_ids = pd.Index(normalize_ids(pd.Series(raw.reshape(len(raw), -1)[:, 0])).astype(object))
    # label value -> row
    if f"polygon_sets/{mask}/cell_index" in members:
        rows = np.asarray(root[f"polygon_sets/{mask}/cell_index"][...], dtype=np.int64).ravel()
        lab = np.arange(1, len(rows) + 1, dtype=np.int64)
        rule = f"polygon_sets/{mask}/cell_index: label p + 1 is cell row cell_index[p] (XOA >= 2.0)"
    elif "seg_mask_value" in members:
        lab = np.asarray(root["seg_mask_value"][...], dtype=np.int64).ravel()
        rows = np.arange(len(lab), dtype=np.int64)
        rule = "seg_mask_value: label of cell row i (XOA 1.3 - 1.x)"
    else:
        n_rows = len(row_ids) if row_ids is not None else (len(table_ids) if table_ids is not None else 0)
        rows = np.arange(n_rows, dtype=np.int64)
        lab = rows + 1
        rule = "no label table in the store: label i + 1 is cell row i (XOA < 1.3)"
    # rows -> the sample's cell ids
    by_id = row_ids is not None and len(cells.intersection(row_ids)) >= max(1, len(cells) // 2)
    if by_id:
        assert row_ids is not None
        ids_of_rows, matched = row_ids, "cell_id array of the store"
    elif table_ids is not None and (len(table_ids) == len(row_ids) if row_ids is not None
                                    else len(table_ids) > int(rows.max(initial=-1))):
        ids_of_rows, matched = table_ids, "row order of the cells table"
        if row_ids is not None:  # XOA keeps the store's rows in the cells table's order; the check below tells
            report.info("segmentation_ids_by_row", {
                "count": len(table_ids),
                "message": f"the cell ids of {zfile.name} do not match the cells table: cells matched by row order"})
    else:
        raise StmorphInputError(
            f"cannot tell which cell each label of masks/{mask} belongs to (cell ids of the store "
            f"{None if row_ids is None else row_ids[:3].tolist()} vs cells {cells[:3].tolist()})", file=zfile,
            column="cell_id", expected="the cell ids of the cells table",
        )
    ok = (rows >= 0) & (rows < len(ids_of_rows))
    pairs = pd.DataFrame({"label": lab[ok], "cell": np.asarray(ids_of_rows, dtype=object)[rows[ok]]})
    pairs = pairs[pairs["cell"].notna()].sort_values("label", kind="stable")
    n_multi = int(pairs["cell"].duplicated().groupby(pairs["cell"]).any().sum())
    if n_multi:
        report.info(f"cells_with_several_{what}_masks", {
            "count": n_multi, "message": f"{n_multi} cells own several {what} labels: obs['label_id'] is the first"})
    label_of = pairs.drop_duplicates("cell").set_index("cell")["label"]
    seg = LabelImage(zfile, component=f"masks/{mask}")
    mshape = (int(arr.shape[0]), int(arr.shape[1]))
    if shape is not None and mshape != tuple(shape):
        report.warn("segmentation_shape_mismatch", 1, f"masks/{mask} is {mshape[0]} x {mshape[1]} pixels but the "
                                                      f"stains are {shape[0]} x {shape[1]}")
    info = {"file": str(zfile), "source": f"masks/{mask}", "kind": what, "label_rule": rule, "cells_matched_by": matched}

    def window(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return np.asarray(arr[r0:r1, c0:c1])

    return seg, label_of, info, window


def _members(root: Any) -> set[str]:
    """Paths of the arrays/groups of a zarr group that the reader looks for."""
    out = set()
    for key in ("cell_id", "seg_mask_value", "polygon_sets/0/cell_index", "polygon_sets/1/cell_index"):
        try:
            root[key]
        except Exception:  # KeyError in zarr 2 and 3, or a store error
            continue
        out.add(key)
    return out


def _polygon_segmentation(
    bfile: Path,
    which: str,
    cells: pd.Index,
    extent: tuple[float, float],
    shape: tuple[int, int] | None,
    pixel_size: float,
    origin: tuple[float, float],
    report: Report,
) -> tuple[PolygonSegmentation, pd.Series, dict[str, Any], Any]:
    """Boundary polygons (one row per vertex, um) as a PolygonSegmentation; labels 1..n by cell."""
    t = read_table(bfile, columns=["cell_id", "vertex_x", "vertex_y"], dtype={"cell_id": "string"})
    cid = normalize_ids(decode_strings(t["cell_id"]), _UNASSIGNED)
    x = (pd.to_numeric(t["vertex_x"], errors="coerce").to_numpy(np.float64) - origin[0]) / pixel_size
    y = (pd.to_numeric(t["vertex_y"], errors="coerce").to_numpy(np.float64) - origin[1]) / pixel_size
    ok = np.isfinite(x) & np.isfinite(y) & cid.notna().to_numpy(bool)
    report.warn(f"{which}_boundary_vertices_dropped", int((~ok).sum()),
                f"dropped {int((~ok).sum())} vertices of {bfile.name} without a cell id or with NaN coordinates")
    if not ok.any():
        raise StmorphInputError("no usable polygon vertex", file=bfile, column="vertex_x", expected="finite vertices")
    cid = cid[ok].reset_index(drop=True).astype(object)
    x, y = x[ok], y[ok]
    # one polygon = a run of consecutive rows of one cell (and one label_id: the nuclei of one cell, XOA >= 2.0)
    key = cid if "label_id" not in t else cid + "\x00" + t["label_id"].astype(str).to_numpy()[ok]
    run = np.cumsum(np.r_[True, key.to_numpy()[1:] != key.to_numpy()[:-1]])
    part = pd.Series(run).groupby(cid.to_numpy()).rank(method="dense").to_numpy(np.int64) - 1
    # labels: the sample's cells first (in obs order), then cells of the file that the sample does not keep
    in_file = pd.Index(pd.unique(cid))
    ordered = cells[cells.isin(in_file)].append(in_file[~in_file.isin(cells)])
    label_of = pd.Series(np.arange(1, len(ordered) + 1, dtype=np.int64), index=ordered)
    n_other = int((~in_file.isin(cells)).sum())
    if n_other:
        report.info(f"{which}_boundaries_of_other_cells", {
            "count": n_other, "message": f"{n_other} cells of {bfile.name} are not in the sample: labels above "
                                         f"{len(ordered) - n_other}"})
    verts = pd.DataFrame({"label_id": label_of.reindex(cid).to_numpy(np.int64), "part": part, "x": x, "y": y})
    if shape is None:  # no stain: a grid holding every vertex and molecule
        mx = max(float(np.nanmax(x)), extent[0])
        my = max(float(np.nanmax(y)), extent[1])
        shape = (int(np.ceil(my)) + 2, int(np.ceil(mx)) + 2)
        report.info("segmentation_grid", {"shape": list(shape), "message": "no stain image: grid from the extents"})
    seg = PolygonSegmentation(verts, shape)
    info = {"file": str(bfile), "source": bfile.name, "kind": which, "label_rule": "running number 1..n by cell",
            "cells_matched_by": "cell_id"}
    return seg, label_of, info, seg.window


def _check_segmentation(
    window: Any, shape: tuple[int, int], mol: pd.DataFrame, label_of: pd.Series, info: dict[str, Any], report: Report
) -> None:
    """Fraction of the assigned molecules in one window that lie inside their own cell's label (for nuclei: of
    the molecules flagged ``overlaps_nucleus``)."""
    a = mol["cell_id"].notna().to_numpy(bool)
    if info["kind"] == "nucleus" and "overlaps_nucleus" in mol:
        a &= mol["overlaps_nucleus"].to_numpy(bool)
    if not a.any():
        return
    want = label_of.reindex(mol["cell_id"][a].astype(object)).fillna(0).to_numpy(np.int64)
    col = np.floor(mol["x"].to_numpy(np.float64)[a] + 0.5).astype(np.int64)
    row = np.floor(mol["y"].to_numpy(np.float64)[a] + 0.5).astype(np.int64)
    h, w = shape
    use = (want > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    if not use.any():
        report.warn("segmentation_no_molecule_inside", 1, "no assigned molecule lies on the segmentation grid: check "
                                                          "origin / pixel_size")
        return
    half = _CHECK_WINDOW // 2
    rc, cc = int(np.median(row[use])), int(np.median(col[use]))
    r0, c0 = max(0, min(rc - half, h - _CHECK_WINDOW)), max(0, min(cc - half, w - _CHECK_WINDOW))
    r1, c1 = min(h, r0 + _CHECK_WINDOW), min(w, c0 + _CHECK_WINDOW)
    sel = use & (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
    n = int(sel.sum())
    if n == 0:
        return
    got = np.asarray(window(r0, r1, c0, c1))[row[sel] - r0, col[sel] - c0]
    frac = float(np.mean(got == want[sel]))
    report.info("segmentation_check", {"molecules": n, "inside_own_cell": round(frac, 4), "window": [r0, r1, c0, c1]})
    if frac < 0.5:
        report.warn("segmentation_misaligned", n, f"only {frac:.0%} of {n} assigned molecules lie inside their cell's "
                                                  f"{info['kind']} mask ({info['source']}): check origin / pixel_size")


# ---------------------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------------------
def write_xenium_layout(
    sample: SpatialSample,
    out_dir: str | PathLike,
    *,
    pixel_size: float | None = None,
    origin_um: tuple[float, float] = (0.0, 0.0),
    label_key: str = "cell_type",
    control_fraction: float = 0.005,
    boundaries: bool = True,
    cells_zarr: bool | None = None,
    morphology_focus: bool = True,
    nucleus_labels: np.ndarray | None = None,
    channel_names: Mapping[str, str] | None = None,
    xenium_cell_ids: bool = False,
    overwrite: bool = False,
    random_state: int = 0,
) -> Path:
    """Write a sample in the native 10x Xenium output layout (micrometres).

    Files: ``transcripts.csv.gz`` (``transcript_id, cell_id, overlaps_nucleus, feature_name, x_location,
    y_location, z_location, qv``; ``cell_id`` is the sample's cell id or ``"UNASSIGNED"``; a few
    ``NegControlProbe_*`` and ``BLANK_*`` rows, assigned to random cells at one of their molecules),
    ``cells.csv.gz`` and ``cells.parquet`` (``cell_id, x_centroid, y_centroid, transcript_counts,
    control_probe_counts, total_counts, cell_area, nucleus_area``; areas in square micrometres),
    ``morphology_mip.tif`` (the DAPI image), ``experiment.xenium`` (JSON with ``pixel_size``) and
    ``cell_types.csv`` (``cell_id, cell_type``, the ground truth). Micrometres are ``origin_um + pixels *
    pixel_size``.

    With a segmentation (``sample.segmentation`` and ``obs["label_id"]``): ``cell_boundaries.parquet`` and
    ``nucleus_boundaries.parquet`` (``cell_id, vertex_x, vertex_y, label_id``; closed rings traced along the
    masks' pixel edges, so that rasterising them gives the masks back), and ``cells.zarr.zip`` in the XOA 2.x
    layout (``masks/1`` cells with label ``row + 1`` of the cells table, ``masks/0`` nuclei, ``cell_id``,
    ``cell_summary``, ``polygon_sets/<mask>/cell_index``). Stains: ``morphology_focus/morphology_focus_0000.ome.tif``
    (DAPI), ``_0001`` (``"membrane"`` as the boundary stain ATP1A1/CD45/E-Cadherin), then the sample's other
    images, each a tiled, zlib-compressed, pyramidal (sub-IFDs) OME-TIFF with its channel name in the OME-XML.

    Parameters
    ----------
    sample
        The sample (needs molecules and a DAPI image).
    out_dir
        Folder to create.
    pixel_size
        Micrometres per pixel; default the sample's, else 0.2125 (Xenium's).
    origin_um
        ``(x, y)`` in micrometres of pixel ``(0, 0)``.
    label_key
        ``obs`` column written to ``cell_types.csv``.
    control_fraction
        Control-probe rows as a fraction of the molecules (at least 2 of each kind).
    boundaries
        Write ``cell_boundaries.parquet`` and ``nucleus_boundaries.parquet``.
    cells_zarr
        Write ``cells.zarr.zip``; default when zarr can be imported.
    morphology_focus
        Write the ``morphology_focus/`` OME-TIFFs.
    nucleus_labels
        The nuclei on the stains' grid, labelled with their cell's label of ``sample.segmentation``; default an
        estimate: the DAPI pixels above Otsu's threshold inside each cell.
    channel_names
        OME channel name of each sample image (default ``{"membrane": "ATP1A1/CD45/E-Cadherin"}``; others keep
        their name).
    xenium_cell_ids
        Write Xenium-style cell ids (``"aaaaaaab-1"``, ... in row order) instead of the sample's ids, everywhere.
    overwrite
        Replace an existing folder.
    random_state
        Seed for quality values, transcript ids and control rows.

    Returns
    -------
    pathlib.Path
        The folder written.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue, write_xenium_layout
    >>> write_xenium_layout(synthetic_tissue(n_cells=50, n_types=4), "xenium_dir")  # doctest: +SKIP
    """
    import tifffile

    mol = sample.require("molecules")
    sample.require("images", "DAPI")
    rng = np.random.default_rng(random_state)
    ps = float(pixel_size if pixel_size is not None else (sample.pixel_size or XENIUM_DEFAULT_PIXEL_SIZE))
    x0, y0 = float(origin_um[0]), float(origin_um[1])
    n = sample.n_cells
    ids = np.asarray(sample.cell_ids, dtype=object)
    if xenium_cell_ids:
        ids = xenium_cell_id_strings(np.arange(1, n + 1), np.ones(n, dtype=np.int64)).astype(object)
    pos = cell_positions(sample, mol)
    x = mol["x"].to_numpy(np.float64)
    y = mol["y"].to_numpy(np.float64)
    z = mol["z"].to_numpy(np.float64) if "z" in mol else np.zeros(len(mol))
    in_nuc = mol["in_nucleus"].to_numpy(bool) if "in_nucleus" in mol else np.zeros(len(mol), dtype=bool)
    feature = mol["gene"].astype(str).to_numpy(object)
    # control probes: each at a molecule of a random assigned cell (so it falls inside that cell)
    n_ctrl = max(int(round(control_fraction * len(mol))), 4)
    assigned_rows = np.flatnonzero(pos >= 0)
    src = rng.choice(assigned_rows, n_ctrl) if len(assigned_rows) else rng.integers(0, max(len(mol), 1), n_ctrl)
    half = n_ctrl // 2
    ctrl_names = np.array([f"NegControlProbe_{i % 5 + 1:05d}" for i in range(half)]
                          + [f"BLANK_{i % 5 + 1:04d}" for i in range(n_ctrl - half)], dtype=object)
    all_pos = np.concatenate([pos, pos[src]])
    cell_id = np.where(all_pos >= 0, ids[np.maximum(all_pos, 0)] if n else "UNASSIGNED", "UNASSIGNED")
    m_total = len(mol) + n_ctrl
    tx = pd.DataFrame({
        "transcript_id": 281474976710656 + np.sort(rng.choice(10 * m_total, m_total, replace=False)),
        "cell_id": cell_id,
        "overlaps_nucleus": np.concatenate([in_nuc, in_nuc[src]]).astype(np.int64),
        "feature_name": np.concatenate([feature, ctrl_names]),
        "x_location": np.round(x0 + np.concatenate([x, x[src]]) * ps, 4),
        "y_location": np.round(y0 + np.concatenate([y, y[src]]) * ps, 4),
        "z_location": np.round(np.concatenate([z, z[src]]), 4),
        "qv": np.round(rng.uniform(20.0, 40.0, m_total), 3),
    })
    counts = int_counts(sample)
    ctrl_counts = np.bincount(pos[src][pos[src] >= 0], minlength=n) if n else np.zeros(0, dtype=np.int64)
    obs = sample.adata.obs
    area_px = obs["cell_area"].to_numpy(np.float64) if "cell_area" in obs else np.full(n, np.nan)
    nuc_px = obs["nucleus_area"].to_numpy(np.float64) if "nucleus_area" in obs else np.full(n, np.nan)
    cells = pd.DataFrame({
        "cell_id": ids,
        "x_centroid": x0 + sample.centroids[:, 0] * ps,
        "y_centroid": y0 + sample.centroids[:, 1] * ps,
        "transcript_counts": counts.sum(1),
        "control_probe_counts": ctrl_counts,
        "total_counts": counts.sum(1) + ctrl_counts,
        "cell_area": area_px * ps * ps,
        "nucleus_area": nuc_px * ps * ps,
    })
    labels = obs[label_key].astype(str).to_numpy(object) if label_key in obs else np.full(n, "unknown", dtype=object)

    # -- segmentation: cell and nucleus rasters relabelled to the XOA convention (cell row + 1) -------------
    dapi = np.asarray(sample.images["DAPI"].read())
    cell_raster = nuc_raster = None
    if sample.segmentation is not None and LABEL_ID_KEY in obs:
        own = obs[LABEL_ID_KEY].to_numpy().astype(np.int64)
        cell_raster = _relabel(np.asarray(sample.segmentation.read()), own)
        if nucleus_labels is not None:
            nl = np.asarray(nucleus_labels)
            if nl.shape != cell_raster.shape:
                raise StmorphInputError(f"nucleus_labels has shape {nl.shape}, the segmentation {cell_raster.shape}",
                                        expected="nuclei on the stains' grid")
            nuc_rows = _relabel(nl, own)
        else:
            nuc_rows = _estimate_nuclei(dapi, cell_raster)
        nuc_raster, nuc_cell_row = _number_nuclei(nuc_rows)
    use_zarr = cells_zarr if cells_zarr is not None else _zarr_available()

    names = {"membrane": "ATP1A1/CD45/E-Cadherin", **dict(channel_names or {})}
    stains = ["DAPI"] + [k for k in sample.images if k != "DAPI"]
    experiment = {
        "pixel_size": ps, "run_name": sample.name, "analysis_sw_version": "stmorph-synthetic",
        "stmorph_origin_um": [x0, y0],
        "images": {"morphology_mip_filepath": "morphology_mip.tif"},
    }
    if morphology_focus:
        experiment["images"]["morphology_focus_filepath"] = "morphology_focus/morphology_focus_0000.ome.tif"
    if cell_raster is not None and use_zarr:
        experiment["xenium_explorer_files"] = {"cells_zarr_filepath": _CELLS_ZARR}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        gz = {"method": "gzip", "compresslevel": 1, "mtime": 0}  # fast, and byte-identical for one seed
        tx.to_csv(tmp / "transcripts.csv.gz", index=False, compression=gz)
        cells.to_csv(tmp / "cells.csv.gz", index=False, compression=gz)
        cells.to_parquet(tmp / "cells.parquet", index=False)
        tifffile.imwrite(tmp / "morphology_mip.tif", np.ascontiguousarray(dapi))
        if morphology_focus:
            (tmp / "morphology_focus").mkdir()
            for k, key in enumerate(stains):
                _write_ome_pyramid(tmp / "morphology_focus" / f"morphology_focus_{k:04d}.ome.tif",
                                   np.asarray(sample.images[key].read()), names.get(key, key), ps)
        if cell_raster is not None:
            assert nuc_raster is not None
            if boundaries:
                _boundaries_table(cell_raster, np.arange(n) + 1, ids, (x0, y0), ps).to_parquet(
                    tmp / "cell_boundaries.parquet", index=False)
                _boundaries_table(nuc_raster, nuc_cell_row + 1, ids, (x0, y0), ps, nuclei=True).to_parquet(
                    tmp / "nucleus_boundaries.parquet", index=False)
            if use_zarr:
                _write_cells_zarr(tmp / _CELLS_ZARR, cell_raster, nuc_raster, nuc_cell_row, ids, cells, ps, (x0, y0))
        (tmp / "experiment.xenium").write_text(json.dumps(experiment, indent=2))
        pd.DataFrame({"cell_id": ids, "cell_type": labels}).to_csv(tmp / "cell_types.csv", index=False)
    return Path(out_dir)


def _zarr_available() -> bool:
    try:
        import zarr  # noqa: F401
    except ImportError:  # pragma: no cover - zarr comes with anndata
        return False
    return True


def _relabel(raster: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``raster`` (labels ``own[i]`` of cell row ``i``) relabelled to ``row + 1``; labels of no cell -> 0."""
    keep = own > 0
    row1 = pd.Series(np.flatnonzero(keep) + 1, index=own[keep])
    row1 = row1[~row1.index.duplicated(keep="first")]
    values, inverse = np.unique(np.asarray(raster), return_inverse=True)
    new = row1.reindex(values.astype(np.int64)).fillna(0).to_numpy(np.uint32)
    return new[inverse].reshape(np.shape(raster))


def _estimate_nuclei(dapi: np.ndarray, cell_rows: np.ndarray) -> np.ndarray:
    """Nuclei as the DAPI pixels above Otsu's threshold (over the cells' pixels) inside each cell."""
    from skimage.filters import threshold_otsu

    inside = cell_rows > 0
    if not inside.any():
        return np.zeros_like(cell_rows)
    vals = dapi[inside].astype(np.float64)
    t = threshold_otsu(vals) if np.ptp(vals) > 0 else vals.max()
    return np.where(inside & (dapi > t), cell_rows, 0).astype(np.uint32)


def _number_nuclei(nuc_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei labelled ``p + 1`` (p = 0.. over the cells that have one) and the cell row of each, XOA >= 2.0."""
    rows_with = np.unique(nuc_rows[nuc_rows > 0]).astype(np.int64)  # values are cell row + 1
    lut = np.zeros(int(nuc_rows.max(initial=0)) + 1, dtype=np.uint32)
    lut[rows_with] = np.arange(1, len(rows_with) + 1, dtype=np.uint32)
    return lut[nuc_rows], rows_with - 1


def _trace(raster: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Closed rings along the pixel edges of each label of ``raster``: ``(label, part, (k, 2) [x, y] pixels)``."""
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    out = []
    for lab0, sl in enumerate(ndimage.find_objects(raster)):
        if sl is None:
            continue
        lab = lab0 + 1
        r0, c0 = sl[0].start - 1, sl[1].start - 1
        crop = np.pad(raster[sl] == lab, 1).astype(np.float32)
        for part, ring in enumerate(find_contours(crop, 0.5)):
            ring = approximate_polygon(ring, tolerance=0.0)
            out.append((lab, part, np.column_stack([ring[:, 1] + c0, ring[:, 0] + r0])))
    return out


def _boundaries_table(
    raster: np.ndarray, label_cell_row1: np.ndarray, ids: np.ndarray, origin: tuple[float, float], ps: float,
    *, nuclei: bool = False,
) -> pd.DataFrame:
    """A ``cell_boundaries``/``nucleus_boundaries`` table: one row per vertex, micrometres, rings closed."""
    rings = _trace(raster)
    parts = []
    for lab, _part, xy in rings:
        row = int(label_cell_row1[lab - 1]) - 1
        parts.append(pd.DataFrame({
            "cell_id": ids[row], "vertex_x": (origin[0] + xy[:, 0] * ps).astype(np.float32),
            "vertex_y": (origin[1] + xy[:, 1] * ps).astype(np.float32), "label_id": np.uint32(lab),
        }))
    if not parts:
        return pd.DataFrame({"cell_id": pd.Series([], dtype=object), "vertex_x": np.zeros(0, np.float32),
                             "vertex_y": np.zeros(0, np.float32), "label_id": np.zeros(0, np.uint32)})
    return pd.concat(parts, ignore_index=True)


def _write_ome_pyramid(path: Path, arr: np.ndarray, name: str, ps: float) -> None:
    """A tiled, zlib-compressed OME-TIFF with reduced levels as sub-IFDs and its channel name in the OME-XML."""
    import tifffile

    arr = np.ascontiguousarray(arr)
    levels = []
    lvl = arr
    while min(lvl.shape) >= 128 and len(levels) < 3:
        lvl = lvl[::2, ::2]
        levels.append(np.ascontiguousarray(lvl))
    opts: dict[str, Any] = {"photometric": "minisblack", "tile": (128, 128), "compression": "zlib"}
    with tifffile.TiffWriter(path, bigtiff=False, ome=True) as tw:
        tw.write(arr, subifds=len(levels), resolutionunit="CENTIMETER", resolution=(1e4 / ps, 1e4 / ps),
                 metadata={"axes": "YX", "Channel": {"Name": [name]}, "PhysicalSizeX": ps, "PhysicalSizeY": ps,
                           "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}, **opts)
        for lv in levels:
            tw.write(lv, subfiletype=1, **opts)


def _write_cells_zarr(
    path: Path, cell_raster: np.ndarray, nuc_raster: np.ndarray, nuc_cell_row: np.ndarray, ids: np.ndarray,
    cells: pd.DataFrame, ps: float, origin: tuple[float, float],
) -> None:
    """``cells.zarr.zip`` in the XOA 2.x layout (zarr format 2 in an uncompressed zip)."""
    import shutil
    import zipfile

    import zarr

    n = len(ids)
    try:
        prefix, suffix = xenium_cell_id_ints(ids)
    except StmorphInputError:  # the sample's ids are not Xenium ids: the rows follow the cells table
        prefix, suffix = np.arange(1, n + 1, dtype=np.uint32), np.ones(n, dtype=np.uint32)
    rows = np.arange(n)
    nuc_area = np.bincount(nuc_raster.ravel(), minlength=len(nuc_cell_row) + 1)[1:] * ps * ps
    nuc_per_cell = np.bincount(nuc_cell_row, minlength=n)
    summary = np.column_stack([
        cells["x_centroid"].to_numpy(np.float64), cells["y_centroid"].to_numpy(np.float64),
        cells["cell_area"].to_numpy(np.float64), np.full(n, np.nan), np.full(n, np.nan),
        np.bincount(nuc_cell_row, weights=nuc_area, minlength=n), np.zeros(n), nuc_per_cell.astype(np.float64),
    ])
    columns = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x", "nucleus_centroid_y",
               "nucleus_area", "z_level", "nucleus_count"]
    chunks = (min(4096, cell_raster.shape[0]), min(4096, cell_raster.shape[1]))
    tmp = path.with_name(path.name + ".dir")
    arrays: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
        "cell_id": (np.column_stack([prefix, suffix]).astype(np.uint32), {}),
        "cell_summary": (summary, {"column_names": columns}),
        "masks/0": (nuc_raster.astype(np.uint32), {}),
        "masks/1": (cell_raster.astype(np.uint32), {}),
        "polygon_sets/0/cell_index": (nuc_cell_row.astype(np.uint32), {}),
        "polygon_sets/1/cell_index": (rows.astype(np.uint32), {}),
    }
    try:
        if int(zarr.__version__.split(".")[0]) >= 3:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2,
                                   attributes={"stmorph_origin_um": list(origin), "pixel_size": ps})
            for key, (data, attrs) in arrays.items():
                a = root.create_array(key, shape=data.shape, dtype=data.dtype, attributes=attrs,
                                      chunks=chunks if key.startswith("masks") else data.shape)
                a[...] = data
        else:  # pragma: no cover - zarr 2
            root = zarr.open_group(str(tmp), mode="w")
            root.attrs.update({"stmorph_origin_um": list(origin), "pixel_size": ps})
            for key, (data, attrs) in arrays.items():
                a = root.create_dataset(key, data=data, chunks=chunks if key.startswith("masks") else data.shape)
                a.attrs.update(attrs)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                zf.write(f, f.relative_to(tmp).as_posix())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
