"""Reader of a native Vizgen MERSCOPE region folder (and a writer of that layout for tests).

A MERSCOPE region folder (``region_0/``) holds

* ``detected_transcripts.csv`` - one row per decoded transcript: an unnamed first column (a row index that
  restarts in every field of view), ``barcode_id, global_x, global_y, global_z, x, y, fov, gene, transcript_id,
  cell_id``. ``global_x``/``global_y`` are micrometres, ``global_z`` the index of the z-plane (0..6), ``x``/``y``
  pixels of the field-of-view image, ``cell_id`` the cell's EntityID or -1 (older exports have no ``cell_id``).
  ``Blank-*`` genes are blank (control) barcodes.
* ``cell_by_gene.csv`` - the instrument's counts: the cell id first (``cell``), one column per gene including
  the ``Blank-*`` barcodes.
* ``cell_metadata.csv`` - the cell id first (``EntityID``, unnamed in older exports), ``fov, volume, center_x,
  center_y, min_x, min_y, max_x, max_y`` (micrometres) and, from VPT, ``anisotropy, transcript_count,
  perimeter_area_ratio, solidity``.
* ``cell_boundaries.parquet`` - cell polygons: ``ID, EntityID, ZIndex, Geometry`` (WKB ``MultiPolygon`` in
  micrometres), ``Type, ZLevel, ParentID, ParentType, Name``; one row per cell and z-plane. Older exports have
  ``cell_boundaries/feature_data_<fov>.hdf5`` instead: ``featuredata/<cell id>/zIndex_<k>/p_<j>/coordinates``
  (``(1, n, 2)`` micrometre rings; a plane without ``p_`` groups has no polygon).
* ``images/mosaic_<stain>_z<k>.tif`` - one 2-D (Big)TIFF per stain (``DAPI``, ``PolyT``, ``Cellbound1..3``) and
  z-plane, and ``images/micron_to_mosaic_pixel_transform.csv``, the 3 x 3 affine micrometre -> mosaic pixel
  matrix (whitespace separated).

:func:`read_merscope` turns this into a :class:`~stmorph.SpatialSample` on the mosaic pixel grid;
:func:`write_merscope_layout` writes a (synthetic) sample in exactly this layout, so that the reader can be
tested end to end; :func:`detect_merscope` recognises the folder for :func:`stmorph.io.read`.

Facts of the format follow Vizgen's MERSCOPE output description, the Vizgen post-processing tool (VPT: the
boundary parquet's columns, the ``cell_by_gene`` and ``cell_metadata`` layouts, ``global_z`` as plane index) and
how spatialdata-io's MERSCOPE reader reads the folder (file names, the transform, ``EntityID``/``cell`` keys).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_dir
from .._image import PolygonSegmentation, StainImage, image_axes
from ..errors import StmorphInputError
from ..sample import LABEL_ID_KEY, SpatialSample
from ._common import (
    CONTROL_PREFIXES,
    Report,
    apply_labels,
    as_dir,
    build_adata,
    centroids_from_molecules,
    check_inside_image,
    counts_from_molecules,
    drop_nan_centroids,
    find_file,
    finish_sample,
    is_control,
    label_series,
    normalize_ids,
    read_table,
    require_columns,
    restrict_genes,
    unassign_unknown_cells,
)
from ._writers_common import cell_positions, defocus_stack, int_counts

__all__ = ["read_merscope", "detect_merscope", "write_merscope_layout", "MERSCOPE_STAIN_NAMES"]

_TRANSCRIPTS = "detected_transcripts.csv"
_CELL_BY_GENE = "cell_by_gene.csv"
_CELL_METADATA = "cell_metadata.csv"
_BOUNDARIES_PARQUET = "cell_boundaries.parquet"
_BOUNDARIES_HDF5_DIR = "cell_boundaries"
_IMAGES = "images"
_TRANSFORM = "micron_to_mosaic_pixel_transform.csv"
_MOSAIC = re.compile(r"^mosaic_(?P<stain>.+)_z(?P<z>\d+)\.tiff?$", re.IGNORECASE)
_UNASSIGNED = ("-1",)
_Z_STEP_UM = 1.5  # MERSCOPE images 7 planes 1.5 um apart

#: Stain names the writer gives the sample's images (others keep their name).
MERSCOPE_STAIN_NAMES: dict[str, str] = {"DAPI": "DAPI", "membrane": "Cellbound1", "polyT": "PolyT"}


# ---------------------------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------------------------
def detect_merscope(path: Path) -> bool:
    """A MERSCOPE region folder: ``detected_transcripts.csv``, or ``cell_by_gene.csv`` with the mosaic transform
    ``images/micron_to_mosaic_pixel_transform.csv``; or the ``detected_transcripts.csv`` file itself.

    Parameters
    ----------
    path
        A folder or file.

    Returns
    -------
    bool

    Examples
    --------
    >>> from pathlib import Path
    >>> detect_merscope(Path("region_0"))  # doctest: +SKIP
    True
    """
    path = Path(path)
    if path.is_file():
        return path.name == _TRANSCRIPTS
    if not path.is_dir():
        return False
    if (path / _TRANSCRIPTS).exists():
        return True
    return (path / _CELL_BY_GENE).exists() and (path / _IMAGES / _TRANSFORM).exists()


# ---------------------------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------------------------
def read_merscope(
    path: str | PathLike,
    *,
    z: int | None = None,
    stains: Sequence[str] | None = None,
    boundaries: str | PathLike | None = "auto",
    pixel_size: float | None = None,
    exclude_controls: bool = True,
    labels: str | PathLike | None = None,
    label_column: str = "cell_type",
    exclude_labels: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read a Vizgen MERSCOPE region folder (stains, transcripts, counts, cell polygons) into a sample.

    Everything lands on the mosaic pixel grid of ``images/mosaic_<stain>_z<k>.tif``: micrometres (transcripts,
    cell centres, polygons) are mapped with the 3 x 3 affine ``images/micron_to_mosaic_pixel_transform.csv``;
    the pixel size is ``1 / scale`` of that transform. Counts are the instrument's ``cell_by_gene.csv`` when
    present (control barcodes ``Blank-*`` dropped by default), else they are counted from the transcripts'
    ``cell_id``. Cells are those of ``cell_by_gene.csv`` (and ``cell_metadata.csv``: ``center_x, center_y`` give
    the centroids, the other columns go to ``obs``). The cell polygons of one z-plane become the segmentation, a
    :class:`~stmorph.PolygonSegmentation` (rasterised only where asked); ``obs["label_id"]`` numbers the cells
    1..n in file order (EntityIDs are 64-bit and are kept as ``obs_names`` and ``obs["EntityID"]``).

    Parameters
    ----------
    path
        The region folder (or its ``detected_transcripts.csv``).
    z
        The z-plane of the stains and the polygons (one plane for all); default the middle of the planes
        present (3 of 0..6). A cell without a polygon on that plane takes the nearest plane that has one.
    stains
        Stain names to load (``"DAPI"``, ``"PolyT"``, ``"Cellbound1"``, ...); default every stain present at
        plane ``z``; ``[]``: no image.
    boundaries
        ``"auto"`` (``cell_boundaries.parquet``, else the older ``cell_boundaries/`` HDF5 files, else none),
        ``"parquet"``, ``"hdf5"``, a path to a boundary parquet file (e.g. VPT's
        ``cellpose_micron_space.parquet``) or HDF5 folder, or ``None`` (no segmentation).
    pixel_size
        Micrometres per pixel, used only when the transform file is missing (micrometre 0 = pixel 0 then).
    exclude_controls
        Drop blank barcodes (``Blank-*`` and the other :data:`~stmorph.io.CONTROL_PREFIXES`) from genes and
        transcripts.
    labels
        Optional label table (first column the cell id, i.e. the EntityID; ``label_column``), a file name in
        ``path`` or a path.
    label_column, exclude_labels
        The label column (-> ``obs["cell_type"]``) and labels whose cells are dropped.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the folder's name).

    Returns
    -------
    SpatialSample
        Counts, molecules (mosaic pixels; ``z`` = ``global_z``, the plane index), the stains by name, the polygon
        segmentation, ``pixel_size`` and provenance (files, the plane chosen, the transform, what was dropped).

    Examples
    --------
    >>> from stmorph.io import read_merscope
    >>> s = read_merscope("202305010900_sample_VMSC00101/region_0", z=3, stains=["DAPI", "Cellbound1"])  # doctest: +SKIP
    >>> s.images["DAPI"].shape, s.segmentation  # doctest: +SKIP
    """
    p = Path(path)
    folder = p.parent if (p.is_file() and p.name == _TRANSCRIPTS) else as_dir(p, what="MERSCOPE region")
    report = Report("read_merscope")
    files: dict[str, Any] = {}

    # -- transform and pixel size ------------------------------------------------------------------------
    A, pixel_size, ps_source = _read_transform(folder, pixel_size, report, files)

    # -- mosaics and the z-plane ---------------------------------------------------------------------------
    mosaics = _scan_mosaics(folder / _IMAGES)
    bsource = _boundary_source(folder, boundaries)
    planes = sorted({k for per in mosaics.values() for k in per})
    plane_origin = "images"
    if not planes and bsource is not None:
        planes, plane_origin = _boundary_planes(*bsource), "cell boundaries"
    if z is None:
        z = planes[len(planes) // 2] if planes else 0
        report.info("z", {"z": int(z), "planes": [int(k) for k in planes], "chosen": f"middle plane of the {plane_origin}"})
    else:
        if isinstance(z, bool) or not isinstance(z, int | np.integer):
            raise StmorphInputError(f"z={z!r}", column="z", expected="an integer z-plane index")
        if mosaics and int(z) not in planes:
            raise StmorphInputError(
                f"no mosaic image at z-plane {z}", file=folder / _IMAGES,
                expected=f"one of the planes present: {[int(k) for k in planes]}",
            )
        report.info("z", {"z": int(z), "planes": [int(k) for k in planes], "chosen": "argument"})
    z = int(z)

    # -- transcripts ---------------------------------------------------------------------------------------
    tx_file = folder / _TRANSCRIPTS
    cbg_file = folder / _CELL_BY_GENE
    meta_file = folder / _CELL_METADATA
    if not tx_file.exists() and not cbg_file.exists():
        raise StmorphInputError(
            "neither detected_transcripts.csv nor cell_by_gene.csv found", file=folder,
            expected="a MERSCOPE region folder (detected_transcripts.csv, cell_by_gene.csv, cell_metadata.csv, images/)",
        )
    mol: pd.DataFrame | None = None
    all_assigned = pd.Index([])
    has_cell_id = False
    if tx_file.exists():
        mol, all_assigned, has_cell_id = _read_transcripts(tx_file, A, exclude_controls, report)
        files["transcripts"] = str(tx_file)
    else:
        report.warn("no_transcripts", 1, f"{_TRANSCRIPTS} not found in {folder}: the sample has no molecules")

    # -- cells: counts and metadata -------------------------------------------------------------------------
    cbg = None
    if cbg_file.exists():
        cbg = _read_cell_by_gene(cbg_file)
        files["cell_by_gene"] = str(cbg_file)
    meta = None
    if meta_file.exists():
        meta = _read_cell_metadata(meta_file)
        files["cell_metadata"] = str(meta_file)
    if cbg is not None and meta is not None:
        cells = cbg.index[cbg.index.isin(meta.index)]
        n_nometa = len(cbg.index) - len(cells)
        report.warn("cells_without_metadata", n_nometa, f"dropped {n_nometa} cells of {_CELL_BY_GENE} absent from {_CELL_METADATA}")
        n_nocount = int((~meta.index.isin(cbg.index)).sum())
        report.warn("cells_without_counts", n_nocount, f"dropped {n_nocount} cells of {_CELL_METADATA} absent from {_CELL_BY_GENE}")
        if len(cells) == 0:
            raise StmorphInputError(
                f"no cell id of {_CELL_BY_GENE} is in {_CELL_METADATA} (e.g. {cbg.index[:3].tolist()} vs "
                f"{meta.index[:3].tolist()})", file=meta_file, column=str(meta.attrs.get("id_column")),
                expected=f"the cell ids of {_CELL_BY_GENE}",
            )
    elif cbg is not None:
        cells = cbg.index
    elif meta is not None:
        cells = meta.index
    else:
        cells = _sorted_ids(all_assigned)
        report.info("cells_from", "assigned transcripts (no cell_by_gene.csv / cell_metadata.csv)")
    cells = pd.Index(cells, dtype=object)
    if len(cells) == 0:
        raise StmorphInputError(
            "no cell found", file=folder, expected="cells in cell_by_gene.csv / cell_metadata.csv or assigned transcripts",
        )

    # counts
    if cbg is not None:
        gene_cols = pd.Index(cbg.columns)
        ctrl = is_control(gene_cols) if exclude_controls else np.zeros(len(gene_cols), dtype=bool)
        report.info("control_features_excluded", int(ctrl.sum()))
        gene_names = pd.Index([str(g) for g in gene_cols[~ctrl]], dtype=object)
        if len(gene_names) == 0:
            raise StmorphInputError(
                "no gene column besides control barcodes", file=cbg_file, expected="one column per gene",
            )
        X = cbg.loc[cells, list(gene_cols[~ctrl])].to_numpy(dtype=np.float32)
        counts_source = _CELL_BY_GENE
        if mol is not None and has_cell_id:
            mx = counts_from_molecules(mol["cell_id"], mol["gene"], cells, gene_names)
            diff = np.asarray(mx.sum(axis=1)).ravel() != X.sum(axis=1)
            report.info("cells_counts_differ_from_transcripts", int(diff.sum()))
    else:
        if mol is None:  # pragma: no cover - guarded above
            raise StmorphInputError("no counts", file=folder, expected=_CELL_BY_GENE)
        gene_names = pd.Index(sorted(mol["gene"].cat.categories.astype(str)), dtype=object)
        X = counts_from_molecules(mol["cell_id"], mol["gene"], cells, gene_names)
        counts_source = f"{_TRANSCRIPTS} (cell_id)"
    if mol is not None:
        unassign_unknown_cells(mol, all_assigned, cells, report=report, file=tx_file, column="cell_id",
                               what="transcript")

    # -- cell polygons -> segmentation --------------------------------------------------------------------
    label_ids = np.arange(1, len(cells) + 1, dtype=np.int64)
    vertices = None
    poly_centroid = np.full((len(cells), 2), np.nan)
    seg_info: dict[str, Any] = {"source": None}
    if bsource is not None:
        kind, bpath = bsource
        if kind == "parquet":
            gid, geoms = _geoms_from_parquet(bpath, z, report)
        else:
            gid, geoms = _geoms_from_hdf5(bpath, z, report)
        files["boundaries"] = str(bpath)
        vertices, has_poly, poly_centroid = _vertices(gid, geoms, cells, A, report, file=bpath)
        n_nopoly = int((~has_poly).sum())
        report.warn("cells_without_polygon", n_nopoly, f"{n_nopoly} cells have no polygon on any plane (label_id 0)")
        label_ids[~has_poly] = 0
        seg_info = {"source": kind, "file": str(bpath), "z": z, "n_polygons": int(has_poly.sum())}
    else:
        report.warn("no_boundaries", 1, f"no cell boundaries in {folder} (boundaries={boundaries!r}): no segmentation")

    # -- centroids and obs ------------------------------------------------------------------------------
    if meta is not None:
        m = meta.loc[cells]
        cx, cy = _apply(A, m["center_x"].to_numpy(np.float64), m["center_y"].to_numpy(np.float64))
        centroids = np.column_stack([cx, cy])
        obs = m.drop(columns=[c for c in ("EntityID",) if c in m.columns])
        centroid_source = f"{_CELL_METADATA} center_x/center_y"
        missing = ~np.all(np.isfinite(centroids), axis=1)
        if missing.any() and np.isfinite(poly_centroid[missing]).all(axis=1).any():
            centroids[missing] = poly_centroid[missing]
            centroid_source += " (polygon centroids where they are empty)"
    else:
        centroids = poly_centroid.copy()
        obs = pd.DataFrame(index=cells)
        centroid_source = "polygon centroids"
    missing = ~np.all(np.isfinite(centroids), axis=1)
    if missing.any() and mol is not None:
        centroids[missing] = centroids_from_molecules(mol, cells)[missing]
        centroid_source += " (mean transcript position where a cell has none)"
    obs = obs.copy()
    obs["EntityID"] = pd.array(np.asarray(cells, dtype=object).astype(str), dtype="string")
    obs[LABEL_ID_KEY] = label_ids
    adata = build_adata(X, cells, gene_names, centroids, obs)
    n_empty = int((np.asarray(adata.X.sum(axis=1)).ravel() == 0).sum())
    report.warn("cells_without_counts_total", n_empty, f"{n_empty} cells have no count (kept with zero counts)")
    adata = drop_nan_centroids(adata, report, file=meta_file if meta is not None else folder)

    if labels is not None:
        lab_file = find_file(folder, [str(labels)], required=True, what="labels")
        assert lab_file is not None
        lt = read_table(lab_file)
        require_columns(lt, [label_column], file=lab_file)
        id_col = str(lt.columns[0]) if lt.columns[0] != label_column else "EntityID"
        require_columns(lt, [id_col], file=lab_file)
        adata = apply_labels(adata, label_series(lt[label_column], lt[id_col].astype("string")), report,
                             file=lab_file, exclude_labels=exclude_labels, molecules=mol)
        files["labels"] = str(lab_file)
    adata = restrict_genes(adata, genes, file=cbg_file if cbg is not None else tx_file)

    # -- stains ---------------------------------------------------------------------------------------------
    images, grid = _open_stains(folder, mosaics, z, stains, report, files)
    if grid is None:
        grid = _grid_from_extent(vertices, mol, centroids)
        if vertices is not None:
            report.info("grid_shape", {"shape": list(grid), "from": "the extent of polygons and transcripts (no image)"})
    elif mol is not None:
        check_inside_image(mol["x"].to_numpy(), mol["y"].to_numpy(), grid, report, what="molecules", file=tx_file)
    segmentation = None
    if vertices is not None:
        segmentation = PolygonSegmentation(vertices, grid)

    prov = {
        "reader": "merscope",
        "path": str(folder.resolve()),
        "files": files,
        "z": z,
        "stains": list(images),
        "transform": A.tolist(),
        "pixel_size_source": ps_source,
        "counts_source": counts_source,
        "centroid_source": centroid_source,
        "segmentation": seg_info,
        "exclude_controls": bool(exclude_controls),
        "control_prefixes": list(CONTROL_PREFIXES) if exclude_controls else [],
        "z_units": "z-plane index (global_z)",
    }
    return finish_sample(adata, mol, images, float(pixel_size), name or folder.name, prov, report, segmentation)


# ---------------------------------------------------------------------------------------------------------------
# reader helpers
# ---------------------------------------------------------------------------------------------------------------
def _apply(A: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the 3 x 3 affine ``A`` to points ``(x, y)``."""
    return A[0, 0] * x + A[0, 1] * y + A[0, 2], A[1, 0] * x + A[1, 1] * y + A[1, 2]


def _sorted_ids(ids: pd.Index) -> pd.Index:
    """Cell ids in numeric order when all are integers (EntityIDs), else in text order."""
    s = pd.Series(np.asarray(ids, dtype=object), dtype=object)
    if len(s) and s.map(lambda v: isinstance(v, str) and v.lstrip("-").isdigit()).all():
        order = np.argsort([int(v) for v in s], kind="stable")
    else:
        order = np.argsort(s.astype(str).to_numpy(), kind="stable")
    return pd.Index(s.to_numpy()[order], dtype=object)


def _read_transform(
    folder: Path, pixel_size: float | None, report: Report, files: dict[str, Any]
) -> tuple[np.ndarray, float, str]:
    """The micron -> mosaic pixel affine, the pixel size and where it came from."""
    tf = find_file(folder, [f"{_IMAGES}/{_TRANSFORM}", _TRANSFORM], required=False, what="transform")
    if tf is None:
        if pixel_size is None:
            raise StmorphInputError(
                f"the micron -> mosaic pixel transform is missing (looked for {_IMAGES}/{_TRANSFORM})",
                file=folder / _IMAGES / _TRANSFORM,
                expected="MERSCOPE's 3 x 3 affine transform file, or pixel_size= (micrometres per pixel)",
            )
        if not pixel_size > 0:
            raise StmorphInputError(f"pixel_size={pixel_size}", column="pixel_size", expected="micrometres per pixel > 0")
        s = 1.0 / float(pixel_size)
        report.warn(
            "no_transform", 1,
            f"{_TRANSFORM} not found: micrometres mapped to pixels as um / {pixel_size} (origin 0); the stains may "
            "not align with the transcripts",
        )
        return np.array([[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]]), float(pixel_size), "argument (no transform)"
    try:
        A = np.loadtxt(tf, dtype=np.float64, ndmin=2)
    except Exception as exc:
        raise StmorphInputError(
            f"cannot parse the transform ({type(exc).__name__}: {exc})", file=tf,
            expected="a 3 x 3 matrix of numbers separated by whitespace",
        ) from exc
    if A.shape != (3, 3) or not np.all(np.isfinite(A)):
        raise StmorphInputError(f"the transform has shape {A.shape} or non-finite values", file=tf,
                                expected="a finite 3 x 3 affine matrix (micron -> mosaic pixel)")
    det = float(np.linalg.det(A[:2, :2]))
    if not abs(det) > 0:
        raise StmorphInputError("the transform is singular (zero scale)", file=tf, expected="a non-zero scale")
    ps = float(1.0 / np.sqrt(abs(det)))
    files["transform"] = str(tf)
    if pixel_size is not None and abs(float(pixel_size) - ps) > 1e-3 * ps:
        report.warn(
            "pixel_size_ignored", 1,
            f"pixel_size={pixel_size} differs from the transform's {ps:.6g} um/px; the transform's is used",
        )
    return A, ps, _TRANSFORM


def _scan_mosaics(images_dir: Path) -> dict[str, dict[int, Path]]:
    """``{stain: {z: path}}`` of ``images/mosaic_<stain>_z<k>.tif``."""
    out: dict[str, dict[int, Path]] = {}
    if not images_dir.is_dir():
        return out
    for f in sorted(images_dir.iterdir()):
        m = _MOSAIC.match(f.name)
        if m and f.is_file():
            out.setdefault(m.group("stain"), {})[int(m.group("z"))] = f
    return out


def _boundary_source(folder: Path, boundaries: str | PathLike | None) -> tuple[str, Path] | None:
    """``(kind, path)`` of the cell boundaries to read, or ``None``."""
    if boundaries is None or boundaries is False:
        return None
    pq_file = folder / _BOUNDARIES_PARQUET
    h5_dir = folder / _BOUNDARIES_HDF5_DIR
    has_h5 = h5_dir.is_dir() and any(h5_dir.glob("feature_data_*.hdf5"))
    if isinstance(boundaries, str) and boundaries in ("auto", "parquet", "hdf5"):
        if boundaries in ("auto", "parquet") and pq_file.exists():
            return "parquet", pq_file
        if boundaries in ("auto", "hdf5") and has_h5:
            return "hdf5", h5_dir
        if boundaries == "auto":
            return None
        want = pq_file if boundaries == "parquet" else h5_dir / "feature_data_<fov>.hdf5"
        raise StmorphInputError(f"boundaries={boundaries!r} but the file is missing", file=want,
                                expected="the cell boundary file(s) of the region")
    bp = Path(boundaries)
    bp = bp if bp.is_absolute() else folder / bp
    if bp.is_dir():
        if not any(bp.glob("feature_data_*.hdf5")):
            raise StmorphInputError("no feature_data_<fov>.hdf5 in the boundary folder", file=bp,
                                    expected="MERSCOPE HDF5 cell boundaries")
        return "hdf5", bp
    if bp.is_file():
        return "parquet", bp
    raise StmorphInputError("cell boundary file not found", file=bp,
                            expected="'auto', 'parquet', 'hdf5', a boundary parquet file or an HDF5 folder")


def _boundary_planes(kind: str, path: Path) -> list[int]:
    """The z-planes that the boundaries hold (used when there is no image)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            if "ZIndex" not in names:
                return [0]
            zi = pq.read_table(path, columns=["ZIndex"]).column(0).to_numpy(zero_copy_only=False)
        except Exception as exc:
            raise StmorphInputError(f"cannot read the parquet file ({type(exc).__name__}: {exc})", file=path,
                                    expected="a cell boundary parquet file") from exc
        return sorted(int(v) for v in pd.unique(pd.Series(zi).dropna()))
    import h5py

    f = sorted(path.glob("feature_data_*.hdf5"))[0]
    try:
        with h5py.File(f, "r") as h:
            g = h.get("featuredata")
            if g is None or not len(g):
                return []
            first = g[next(iter(g.keys()))]
            return sorted(int(k[7:]) for k in first.keys() if k.startswith("zIndex_") and k[7:].isdigit())
    except OSError as exc:
        raise StmorphInputError(f"cannot open the HDF5 file ({type(exc).__name__}: {exc})", file=f,
                                expected="MERSCOPE feature_data_<fov>.hdf5") from exc


def _header(file: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(file, nrows=0).columns]
    except Exception as exc:
        raise StmorphInputError(f"cannot read the table ({type(exc).__name__}: {exc})", file=file,
                                expected="a comma-separated table with a header") from exc


def _read_transcripts(
    file: Path, A: np.ndarray, exclude_controls: bool, report: Report
) -> tuple[pd.DataFrame, pd.Index, bool]:
    """Molecules in pixels, the ids of all cells with an assigned transcript, and whether ``cell_id`` exists."""
    cols = _header(file)
    need = ["global_x", "global_y", "gene"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise StmorphInputError(
            f"missing column(s) {missing}; the table has: {', '.join(cols[:12])}", file=file, column=missing[0],
            expected="global_x, global_y (micrometres), global_z, gene, cell_id",
        )
    has_cell = "cell_id" in cols
    has_z = "global_z" in cols
    use = need + (["global_z"] if has_z else []) + (["cell_id"] if has_cell else [])
    dtype: dict[str, Any] = {"gene": "category"}
    if has_cell:
        dtype["cell_id"] = "category"
    try:
        tab = pd.read_csv(file, usecols=use, dtype=dtype)
    except Exception as exc:
        raise StmorphInputError(f"cannot read the transcripts ({type(exc).__name__}: {exc})", file=file,
                                expected="MERSCOPE detected_transcripts.csv") from exc
    if not len(tab):
        raise StmorphInputError("the transcript table is empty", file=file, expected="one row per transcript")
    xy = {}
    for c in ("global_x", "global_y") + (("global_z",) if has_z else ()):
        v = pd.to_numeric(tab[c], errors="coerce")
        if v.isna().all():
            raise StmorphInputError("the column holds no number", file=file, column=c, expected="micrometres (numbers)")
        xy[c] = v.to_numpy(np.float64)
    ok = np.isfinite(xy["global_x"]) & np.isfinite(xy["global_y"])
    n_nan = int((~ok).sum())
    report.warn("molecules_nan_coordinates", n_nan, f"dropped {n_nan} transcripts with NaN coordinates")
    gene_cat = tab["gene"].astype("category")
    gene_ok = gene_cat.notna().to_numpy(bool)
    n_nog = int((ok & ~gene_ok).sum())
    report.warn("molecules_no_gene", n_nog, f"dropped {n_nog} transcripts without a gene name")
    ok &= gene_ok
    if has_cell:
        cats = normalize_ids(pd.Series(tab["cell_id"].cat.categories.astype(str)), _UNASSIGNED)
        codes = tab["cell_id"].cat.codes.to_numpy()
        vals = cats.to_numpy(dtype=object, na_value=None)
        cell_of = pd.Series(np.where(codes >= 0, vals[np.maximum(codes, 0)] if len(vals) else None, None), dtype="string")
    else:
        cell_of = pd.Series(pd.NA, index=range(len(tab)), dtype="string")
    assigned = pd.Index(cell_of[ok].dropna().unique(), dtype=object)
    gcats = pd.Series(gene_cat.cat.categories.astype(str))
    ctrl_cat = is_control(gcats) if exclude_controls else np.zeros(len(gcats), dtype=bool)
    gcodes = gene_cat.cat.codes.to_numpy()
    ctrl = np.where(gcodes >= 0, ctrl_cat[np.maximum(gcodes, 0)] if len(ctrl_cat) else False, False)
    if exclude_controls:
        report.info("control_molecules_excluded", int((ctrl & ok).sum()))
    ok &= ~ctrl
    if not ok.any():
        raise StmorphInputError("no transcript is left after excluding blank barcodes / NaN rows", file=file,
                                column="gene", expected="gene transcripts besides Blank-* barcodes")
    if not has_cell:
        report.warn("molecules_unassigned_no_cell_id", int(ok.sum()),
                    f"{file.name} has no cell_id column (older export): all {int(ok.sum())} transcripts unassigned")
    px, py = _apply(A, xy["global_x"][ok], xy["global_y"][ok])
    # the molecule table of make_molecules, built from the categorical genes (no string per transcript)
    gene_kept = gene_cat[ok].cat.remove_unused_categories()
    gene_kept = gene_kept.cat.rename_categories([str(c) for c in gene_kept.cat.categories])
    data: dict[str, Any] = {
        "x": px.astype(np.float32),
        "y": py.astype(np.float32),
        "gene": pd.Categorical(gene_kept.to_numpy()),
        "cell_id": pd.array(cell_of[ok].to_numpy(), dtype="string"),
    }
    if has_z:
        data["z"] = xy["global_z"][ok].astype(np.float32)
    return pd.DataFrame(data), assigned, has_cell


def _read_ids_table(file: Path, id_names: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """A cell table indexed by its id column (``id_names`` if present, else the first column) as strings."""
    cols = _header(file)
    if not cols:
        raise StmorphInputError("the table has no column", file=file, expected="a cell id column")
    id_col = next((c for c in id_names if c in cols), cols[0])
    try:
        df = pd.read_csv(file, dtype={id_col: str}, low_memory=False)
    except Exception as exc:
        raise StmorphInputError(f"cannot read the table ({type(exc).__name__}: {exc})", file=file,
                                expected="a comma-separated cell table") from exc
    ids = normalize_ids(df.pop(id_col).astype("string"))
    df.index = pd.Index(ids.astype(object))
    n_bad = int(df.index.isna().sum())
    if n_bad == len(df) and len(df):
        raise StmorphInputError("every cell id is empty", file=file, column=id_col, expected="cell ids (EntityID)")
    df = df[df.index.notna()]
    dup = df.index.duplicated(keep="first")
    if dup.any():
        raise StmorphInputError(
            f"{int(dup.sum())} repeated cell ids, e.g. {df.index[dup][:3].tolist()}", file=file, column=id_col,
            expected="one row per cell",
        )
    df.attrs["id_column"] = id_col
    return df, id_col


def _read_cell_by_gene(file: Path) -> pd.DataFrame:
    """``cell_by_gene.csv`` as a cells x genes frame of numbers (string cell ids)."""
    df, id_col = _read_ids_table(file, ("cell", "EntityID"))
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c].dtype):
            bad = df[c][pd.to_numeric(df[c], errors="coerce").isna()].head(3).tolist()
            raise StmorphInputError(
                f"non-numeric counts, e.g. {bad}", file=file, column=str(c),
                expected=f"integer counts per gene (the first column, {id_col!r}, holds the cell ids)",
            )
    if df.isna().any().any():
        c = str(df.columns[df.isna().any().to_numpy()][0])
        raise StmorphInputError("empty counts", file=file, column=c, expected="integer counts")
    df.columns = [str(c) for c in df.columns]
    return df


def _read_cell_metadata(file: Path) -> pd.DataFrame:
    """``cell_metadata.csv`` indexed by the cell id; requires ``center_x, center_y``."""
    df, _ = _read_ids_table(file, ("EntityID",))
    require_columns(df, ["center_x", "center_y"], file=file)
    for c in ("center_x", "center_y"):
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().all() and len(v):
            raise StmorphInputError("the column holds no number", file=file, column=c, expected="micrometres")
        df[c] = v
    return df


def _geoms_from_parquet(file: Path, z: int, report: Report) -> tuple[np.ndarray, np.ndarray]:
    """Cell ids and (Multi)Polygons (micrometres) of the plane ``z`` (nearest plane with a polygon otherwise)."""
    import json

    import pyarrow.parquet as pq
    import shapely

    try:
        schema = pq.read_schema(file)
    except Exception as exc:
        raise StmorphInputError(f"cannot read the parquet file ({type(exc).__name__}: {exc})", file=file,
                                expected="MERSCOPE cell_boundaries.parquet") from exc
    names = list(schema.names)
    geo_col = None
    meta = schema.metadata or {}
    if b"geo" in meta:
        try:
            geo_col = json.loads(meta[b"geo"]).get("primary_column")
        except (ValueError, AttributeError):
            geo_col = None
    if geo_col not in names:
        geo_col = next((c for c in ("Geometry", "geometry") if c in names), None)
    id_col = next((c for c in ("EntityID", "cell_id", "cell") if c in names), None)
    if id_col is None or geo_col is None:
        col = "EntityID" if id_col is None else "Geometry"
        raise StmorphInputError(
            f"missing column {col!r}; the file has: {', '.join(names[:12])}", file=file, column=col,
            expected="EntityID, ZIndex, Geometry (WKB polygons in micrometres)",
        )
    cols = [id_col, geo_col] + [c for c in ("ZIndex", "Type") if c in names]
    tab = pq.read_table(file, columns=cols)
    df = pd.DataFrame({"id": normalize_ids(pd.Series(tab.column(id_col).to_numpy(zero_copy_only=False))).to_numpy(object)})
    if "ZIndex" in names:
        zi = pd.to_numeric(pd.Series(tab.column("ZIndex").to_numpy(zero_copy_only=False)), errors="coerce")
        df["zi"] = zi.fillna(-(10**9)).to_numpy(np.int64)
    else:
        df["zi"] = 0
        report.info("boundaries_no_zindex", "no ZIndex column: every polygon taken as plane 0")
    keep = df["id"].notna().to_numpy(bool)
    if "Type" in names:
        typ = pd.Series(tab.column("Type").to_numpy(zero_copy_only=False)).astype("string").str.lower()
        kinds = set(typ.dropna().unique())
        if "cell" in kinds and len(kinds) > 1:
            report.info("boundaries_types_ignored", sorted(k for k in kinds if k != "cell"))
            keep &= (typ == "cell").fillna(False).to_numpy(bool)
    raw = tab.column(geo_col).to_numpy(zero_copy_only=False)
    head = [v for v in raw[:50] if v is not None]
    if all(isinstance(v, bytes | bytearray) for v in head):
        parse = shapely.from_wkb
    elif all(isinstance(v, str) for v in head):
        parse = shapely.from_wkt
        report.info("boundaries_wkt", "the geometry column holds WKT text, not WKB")
    else:
        raise StmorphInputError(f"the geometries are not WKB (got {type(head[0]).__name__})", file=file,
                                column=geo_col, expected="WKB-encoded (Multi)Polygons")
    return _choose_planes(df["id"].to_numpy(object), df["zi"].to_numpy(np.int64), raw, parse, keep, z, report, file)


def _choose_planes(
    ids: np.ndarray, zi: np.ndarray, raw: np.ndarray, parse: Any, keep: np.ndarray, z: int, report: Report,
    file: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """One geometry per cell: the plane ``z``, else the nearest plane (the lower first) that has a polygon.

    Only the geometries needed are parsed: each cell's nearest plane first, the next ones for cells whose
    geometry there is empty or invalid (a whole export holds a row per cell and plane, 7 x the cells).
    """
    import shapely

    d = pd.DataFrame({"id": ids, "dist": np.abs(zi - int(z)), "zi": zi, "row": np.arange(len(ids))})[keep]
    d = d.sort_values(["dist", "zi"], kind="stable")
    rank = d.groupby("id", sort=False).cumcount().to_numpy()
    d_ids = pd.Index(d["id"].to_numpy(object))
    d_rows = d["row"].to_numpy()
    d_dist = d["dist"].to_numpy()
    pending = np.ones(len(d), dtype=bool)
    out_ids: list[np.ndarray] = []
    out_geoms: list[np.ndarray] = []
    n_other = 0
    n_bad = 0
    r = 0
    while True:
        sel = np.flatnonzero((rank == r) & pending)
        if not len(sel):
            break
        src = raw[d_rows[sel]]
        g = np.asarray(parse(src, on_invalid="ignore"), dtype=object)
        missing = shapely.is_missing(g)
        n_bad += int((missing & np.array([v is not None and len(v) > 0 for v in src])).sum())
        ok = ~missing
        ok[ok] = ~shapely.is_empty(g[ok])
        done = d_ids[sel[ok]]
        out_ids.append(np.asarray(done, dtype=object))
        out_geoms.append(g[ok])
        n_other += int((d_dist[sel[ok]] > 0).sum())
        pending &= ~d_ids.isin(done)
        r += 1
    report.warn("boundaries_invalid_geometry", n_bad, f"{n_bad} rows of {file.name} hold no valid geometry; ignored")
    gid = np.concatenate(out_ids) if out_ids else np.zeros(0, dtype=object)
    if not len(gid):
        raise StmorphInputError("no cell polygon in the boundary file", file=file, column="Geometry",
                                expected="non-empty (Multi)Polygons")
    report.info("cells_polygon_from_other_plane", n_other)
    return gid, np.concatenate(out_geoms)


def _geoms_from_hdf5(folder: Path, z: int, report: Report) -> tuple[np.ndarray, np.ndarray]:
    """Cell ids and MultiPolygons (micrometres) from ``feature_data_<fov>.hdf5`` files, plane ``z`` or nearest."""
    import h5py
    import shapely

    ids: list[str] = []
    geoms: list[Any] = []
    n_other = 0
    n_empty = 0
    for f in sorted(folder.glob("feature_data_*.hdf5")):
        try:
            h = h5py.File(f, "r")
        except Exception as exc:
            raise StmorphInputError(f"cannot open the HDF5 file ({type(exc).__name__}: {exc})", file=f,
                                    expected="MERSCOPE feature_data_<fov>.hdf5") from exc
        with h:
            grp = h.get("featuredata")
            if grp is None:
                raise StmorphInputError("no 'featuredata' group", file=f, column="featuredata",
                                        expected="featuredata/<cell id>/zIndex_<k>/p_<j>/coordinates")
            for key in grp.keys():
                feat = grp[key]
                zs = [int(k[7:]) for k in feat.keys() if k.startswith("zIndex_") and k[7:].isdigit()]
                found = None
                for zz in sorted(zs, key=lambda v: (abs(v - z), v)):
                    zg = feat[f"zIndex_{zz}"]
                    pkeys = sorted((k for k in zg.keys() if k.startswith("p_")),
                                   key=lambda k: int(k[2:]) if k[2:].isdigit() else 0)
                    rings = []
                    for pk in pkeys:
                        if "coordinates" not in zg[pk]:
                            raise StmorphInputError(
                                f"polygon {key}/zIndex_{zz}/{pk} has no coordinates", file=f,
                                column=f"featuredata/{key}/zIndex_{zz}/{pk}/coordinates",
                                expected="an (rings, n, 2) array of micrometres",
                            )
                        rings.extend(_exterior_rings(np.asarray(zg[pk]["coordinates"], dtype=np.float64)))
                    polys = [shapely.polygons(r) for r in rings if len(r) >= 3]
                    if polys:
                        found = (zz, shapely.multipolygons(polys))
                        break
                if found is None:
                    n_empty += 1
                    continue
                n_other += int(found[0] != z)
                ids.append(key)
                geoms.append(found[1])
    if not ids:
        raise StmorphInputError("no cell polygon in the HDF5 boundary files", file=folder,
                                expected="featuredata/<cell id>/zIndex_<k>/p_<j>/coordinates")
    report.info("cells_polygon_from_other_plane", n_other)
    report.warn("boundaries_cells_without_polygon", n_empty, f"{n_empty} features of the HDF5 files have no polygon")
    return normalize_ids(pd.Series(ids)).to_numpy(object), np.asarray(geoms, dtype=object)


def _exterior_rings(coords: np.ndarray) -> list[np.ndarray]:
    """Exterior rings (``(n, 2)``) of an HDF5 ``coordinates`` array: ``(n, 2)``, ``(rings, n, 2)`` (a polygon)
    or ``(polygons, rings, n, 2)`` (a multipolygon)."""
    if coords.ndim == 2 and coords.shape[-1] >= 2:
        return [coords[:, :2]]
    if coords.ndim == 3:
        return [coords[0, :, :2]]
    if coords.ndim == 4:
        return [c[0, :, :2] for c in coords]
    return []


def _vertices(
    gid: np.ndarray, geoms: np.ndarray, cells: pd.Index, A: np.ndarray, report: Report, *, file: Path
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Polygon vertices in pixels (``label_id, part, x, y``), which cells have one, and polygon centroids (px)."""
    import shapely

    pos = cells.get_indexer(pd.Index(gid, dtype=object))
    unknown = pos < 0
    report.warn("polygons_of_unknown_cells", int(unknown.sum()),
                f"{int(unknown.sum())} polygons of {file.name} belong to no cell of the cell tables; ignored")
    gid_pos, geoms = pos[~unknown], geoms[~unknown]
    centroid = np.full((len(cells), 2), np.nan)
    if len(geoms):
        c = shapely.centroid(geoms)
        cx, cy = _apply(A, shapely.get_x(c), shapely.get_y(c))
        centroid[gid_pos] = np.column_stack([cx, cy])
    parts, gi = shapely.get_parts(geoms, return_index=True)
    is_poly = shapely.get_type_id(parts) == 3
    report.warn("boundaries_non_polygon_parts", int((~is_poly).sum()),
                f"{int((~is_poly).sum())} non-polygon parts (lines, points) of cell geometries ignored")
    parts, gi = parts[is_poly], gi[is_poly]
    n_holes = int((shapely.get_num_interior_rings(parts) > 0).sum())
    if n_holes:
        report.info("polygons_with_holes_filled", n_holes)
    part_no = pd.Series(gi).groupby(gi).cumcount().to_numpy(np.int64)
    coords, ri = shapely.get_coordinates(shapely.get_exterior_ring(parts), return_index=True)
    last = np.r_[ri[1:] != ri[:-1], True] if len(ri) else np.zeros(0, dtype=bool)  # the closing vertex
    coords, ri = coords[~last], ri[~last]
    x, y = _apply(A, coords[:, 0], coords[:, 1])
    verts = pd.DataFrame({
        "label_id": (gid_pos[gi[ri]] + 1).astype(np.int64),
        "part": part_no[ri],
        "x": x,
        "y": y,
    })
    has = np.zeros(len(cells), dtype=bool)
    n_vert = verts.groupby(["label_id", "part"]).size()
    good = n_vert[n_vert >= 3].index.get_level_values(0).to_numpy(np.int64)
    has[good - 1] = True
    return verts, has, centroid


def _open_stains(
    folder: Path, mosaics: dict[str, dict[int, Path]], z: int, stains: Sequence[str] | None, report: Report,
    files: dict[str, Any],
) -> tuple[dict[str, StainImage], tuple[int, int] | None]:
    """The stains at plane ``z`` as lazy images, and the mosaic grid shape."""
    at_z = {s: per[z] for s, per in mosaics.items() if z in per}
    if stains is None:
        order = {"dapi": 0, "polyt": 1}
        chosen = sorted(at_z, key=lambda s: (order.get(s.lower(), 2), s.lower()))
        other = sorted(set(mosaics) - set(at_z))
        report.warn("stains_missing_at_z", len(other), f"stains {other} have no mosaic at z-plane {z}; not loaded")
    else:
        if isinstance(stains, str):
            stains = [stains]
        chosen = [str(s) for s in stains]
        missing = [s for s in chosen if s not in at_z]
        if missing:
            raise StmorphInputError(
                f"stain(s) {missing} have no mosaic at z-plane {z}", file=folder / _IMAGES / f"mosaic_{missing[0]}_z{z}.tif",
                expected=f"stains present at z={z}: {sorted(at_z)}",
            )
    if not mosaics:
        report.warn("no_images", 1, f"no mosaic_<stain>_z<k>.tif in {folder / _IMAGES}: the sample has no stain image")
    images: dict[str, StainImage] = {}
    grid: tuple[int, int] | None = None
    for s in chosen:
        f = at_z[s]
        axes, shape = image_axes(f)
        if "Y" not in axes or "X" not in axes:
            raise StmorphInputError(f"unsupported image axes {axes}", file=f, expected="a 2-D mosaic")
        hw = (int(shape[axes.index("Y")]), int(shape[axes.index("X")]))
        if grid is None:
            grid = hw
        elif hw != grid:
            report.warn(f"{s}_shape_differs", 1, f"mosaic {f.name} is {hw}, the first stain {grid}")
        images[s] = StainImage(f)
        files[s] = str(f)
    return images, grid


def _grid_from_extent(vertices: pd.DataFrame | None, mol: pd.DataFrame | None, centroids: np.ndarray) -> tuple[int, int]:
    """A grid covering the polygons, molecules and centroids (when no image gives one)."""
    xs = [centroids[:, 0]]
    ys = [centroids[:, 1]]
    if vertices is not None:
        xs.append(vertices["x"].to_numpy())
        ys.append(vertices["y"].to_numpy())
    if mol is not None:
        xs.append(mol["x"].to_numpy(np.float64))
        ys.append(mol["y"].to_numpy(np.float64))
    xmax = np.nanmax(np.concatenate(xs)) if sum(len(v) for v in xs) else 0.0
    ymax = np.nanmax(np.concatenate(ys)) if sum(len(v) for v in ys) else 0.0
    return int(max(np.ceil(ymax + 1.5), 1)), int(max(np.ceil(xmax + 1.5), 1))


# ---------------------------------------------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------------------------------------------
_ENTITY_BASE = 2_811_479_400_000_100_000  # EntityIDs are 64-bit integers like VPT's


def write_merscope_layout(
    sample: SpatialSample,
    out_dir: str | PathLike,
    *,
    z_planes: int = 7,
    micron_per_pixel: float | None = None,
    origin_um: tuple[float, float] = (-1583.25, 2406.5),
    write_hdf5: bool = False,
    label_key: str = "cell_type",
    control_fraction: float = 0.005,
    overwrite: bool = False,
    random_state: int = 0,
) -> Path:
    """Write a sample in the Vizgen MERSCOPE region layout (micrometres, polygons, mosaics per stain and plane).

    Files: ``detected_transcripts.csv`` (unnamed per-FOV row index, ``barcode_id, global_x, global_y, global_z,
    x, y, fov, gene, transcript_id, cell_id``; ``cell_id`` -1 = unassigned; a few ``Blank-*`` barcodes inside
    random cells), ``cell_by_gene.csv`` (``cell`` = EntityID, then genes and blanks in codebook order),
    ``cell_metadata.csv`` (``EntityID, fov, volume, center_x, center_y, min_x, min_y, max_x, max_y, anisotropy,
    transcript_count, perimeter_area_ratio, solidity``), ``cell_boundaries.parquet`` (``ID, EntityID, ZIndex,
    Geometry`` (WKB MultiPolygon, GeoParquet metadata), ``Type, ZLevel, ParentID, ParentType, Name``; one row per
    cell per plane, the polygon traced from the sample's segmentation), with ``write_hdf5`` also
    ``cell_boundaries/feature_data_<fov>.hdf5``, ``images/mosaic_<stain>_z<k>.tif`` (stain names from
    :data:`MERSCOPE_STAIN_NAMES`: DAPI, Cellbound1 for ``membrane``; the middle plane ``z_planes // 2`` is the
    sample's image, the others defocused) and ``images/micron_to_mosaic_pixel_transform.csv``. The ground truth
    goes to ``cell_types.csv`` (``EntityID, cell_type, source_cell_id``). Micrometres are
    ``origin_um + pixel * micron_per_pixel``; EntityIDs increase with the sample's cell order. Written atomically.

    Parameters
    ----------
    sample
        The sample: molecules, a segmentation with ``obs["label_id"]`` and stain images (e.g.
        :func:`~stmorph.datasets.synthetic_tissue`).
    out_dir
        The region folder to create.
    z_planes
        Number of z-planes (MERSCOPE images 7, 1.5 um apart).
    micron_per_pixel
        Micrometres per mosaic pixel; default the sample's pixel size, else 0.108 (MERSCOPE's).
    origin_um
        ``(x, y)`` micrometres of mosaic pixel (0, 0), the transform's offset.
    write_hdf5
        Also write the older per-FOV HDF5 boundaries.
    label_key
        ``obs`` column written to ``cell_types.csv``.
    control_fraction
        ``Blank-*`` transcripts as a fraction of the molecules (at least 4).
    overwrite
        Replace an existing folder.
    random_state
        Seed of the blank barcodes.

    Returns
    -------
    pathlib.Path
        The folder written.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue
    >>> from stmorph.io._merscope import write_merscope_layout
    >>> write_merscope_layout(synthetic_tissue(n_cells=50, n_types=3), "region_0")  # doctest: +SKIP
    """
    import shapely
    import tifffile

    mol = sample.require("molecules")
    sample.require("segmentation", suffix=" to trace cell polygons from",
                   expected="sample.segmentation and obs['label_id']")
    if int(z_planes) < 1:
        raise StmorphInputError(f"z_planes={z_planes}", column="z_planes", expected=">= 1")
    z_planes = int(z_planes)
    rng = np.random.default_rng(random_state)
    s = float(micron_per_pixel if micron_per_pixel is not None else (sample.pixel_size or 0.108))
    if not s > 0:
        raise StmorphInputError(f"micron_per_pixel={s}", column="micron_per_pixel", expected="> 0")
    ox, oy = float(origin_um[0]), float(origin_um[1])
    A = np.array([[1.0 / s, 0.0, -ox / s], [0.0, 1.0 / s, -oy / s], [0.0, 0.0, 1.0]])
    n = sample.n_cells
    entity = np.array([_ENTITY_BASE + i for i in range(n)], dtype=np.int64)

    # -- polygons traced from the segmentation -----------------------------------------------------------
    mask = np.asarray(sample.segmentation.read())
    H, W = mask.shape
    lids = sample.label_ids()
    geoms_px = _trace_cells(mask, lids)
    geoms_um = np.array([shapely.affinity.affine_transform(g, [s, 0, 0, s, ox, oy]) for g in geoms_px], dtype=object)

    # -- fields of view: a grid of ~3 x 3 tiles ----------------------------------------------------------
    fov_px = max(64, int(np.ceil(max(H, W) / 3)))
    nx = int(np.ceil(W / fov_px))

    def fov_of(xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
        fx = np.clip(np.floor((xp + 0.5) / fov_px), 0, nx - 1)
        fy = np.clip(np.floor((yp + 0.5) / fov_px), 0, int(np.ceil(H / fov_px)) - 1)
        return (fy * nx + fx).astype(np.int64)

    # -- transcripts (+ blank barcodes) -------------------------------------------------------------------
    pos = cell_positions(sample, mol)
    x = mol["x"].to_numpy(np.float64)
    y = mol["y"].to_numpy(np.float64)
    zum = mol["z"].to_numpy(np.float64) if "z" in mol else np.zeros(len(mol))
    n_ctrl = max(int(round(control_fraction * len(mol))), 4)
    assigned_rows = np.flatnonzero(pos >= 0)
    src = rng.choice(assigned_rows, n_ctrl) if len(assigned_rows) else rng.integers(0, max(len(mol), 1), n_ctrl)
    n_blank_kinds = 5
    blanks = [f"Blank-{i + 1}" for i in range(n_blank_kinds)]
    codebook = [str(g) for g in sample.gene_names] + blanks
    gene = np.concatenate([mol["gene"].astype(str).to_numpy(object), np.array(blanks, dtype=object)[np.arange(n_ctrl) % n_blank_kinds]])
    all_pos = np.concatenate([pos, pos[src]])
    xa, ya = np.concatenate([x, x[src]]), np.concatenate([y, y[src]])
    za = np.concatenate([zum, zum[src]])
    finite_z = za[np.isfinite(za)]
    z_mid = 0.5 * (finite_z.min() + finite_z.max()) if len(finite_z) else 0.0
    gz = np.clip(np.rint((np.nan_to_num(za, nan=z_mid) - z_mid) / _Z_STEP_UM) + z_planes // 2, 0, z_planes - 1)
    fov = fov_of(xa, ya)
    fov_x0 = (fov % nx) * fov_px - 0.5
    fov_y0 = (fov // nx) * fov_px - 0.5
    barcode = pd.Index(codebook).get_indexer(gene)
    tx = pd.DataFrame({
        "barcode_id": barcode.astype(np.int64),
        "global_x": np.round(ox + xa * s, 5),
        "global_y": np.round(oy + ya * s, 5),
        "global_z": gz.astype(np.float64),
        "x": np.round((xa - fov_x0) * s / 0.108, 3),  # the FOV camera's pixels
        "y": np.round((ya - fov_y0) * s / 0.108, 3),
        "fov": fov,
        "gene": gene,
        "transcript_id": [f"ENSTSYN{b:011d}" if b < len(sample.gene_names) else g for b, g in zip(barcode, gene)],
        "cell_id": np.where(all_pos >= 0, entity[np.maximum(all_pos, 0)] if n else -1, -1).astype(np.int64),
    })
    tx = tx.sort_values("fov", kind="stable").reset_index(drop=True)
    tx.index = tx.groupby("fov").cumcount().to_numpy()  # the unnamed first column restarts in every FOV

    # -- counts and metadata ---------------------------------------------------------------------------------
    counts = int_counts(sample)
    blank_counts = np.zeros((n, n_blank_kinds), dtype=np.int64)
    ok = all_pos[len(mol):] >= 0
    np.add.at(blank_counts, (all_pos[len(mol):][ok], np.arange(n_ctrl)[ok] % n_blank_kinds), 1)
    cbg = pd.DataFrame(np.hstack([counts, blank_counts]), columns=codebook, index=pd.Index(entity, name="cell"))
    cen = np.array([[g.centroid.x, g.centroid.y] if not g.is_empty else [np.nan, np.nan] for g in geoms_um])
    no_poly = ~np.isfinite(cen[:, 0])
    cen[no_poly] = np.column_stack([ox + sample.centroids[no_poly, 0] * s, oy + sample.centroids[no_poly, 1] * s])
    bounds = np.array([g.bounds if not g.is_empty else (np.nan,) * 4 for g in geoms_um])
    area = np.array([g.area for g in geoms_um])
    with np.errstate(invalid="ignore", divide="ignore"):
        meta = pd.DataFrame({
            "fov": fov_of((cen[:, 0] - ox) / s, (cen[:, 1] - oy) / s),
            "volume": area * _Z_STEP_UM * z_planes,
            "center_x": cen[:, 0],
            "center_y": cen[:, 1],
            "min_x": bounds[:, 0],
            "min_y": bounds[:, 1],
            "max_x": bounds[:, 2],
            "max_y": bounds[:, 3],
            "anisotropy": [_anisotropy(g) for g in geoms_um],
            "transcript_count": counts.sum(1) + blank_counts.sum(1),
            "perimeter_area_ratio": np.array([g.length for g in geoms_um]) / area,
            "solidity": area / np.array([g.convex_hull.area for g in geoms_um]),
        }, index=pd.Index(entity, name="EntityID"))

    # -- boundaries (one row per cell per plane) ---------------------------------------------------------
    wkb = shapely.to_wkb(geoms_um)
    ent_rep = np.repeat(entity, z_planes)
    zi_rep = np.tile(np.arange(z_planes, dtype=np.int64), n)
    bnd = {
        "ID": np.arange(n * z_planes, dtype=np.int64),
        "EntityID": ent_rep,
        "ZIndex": zi_rep,
        "Geometry": np.repeat(wkb, z_planes),
        "Type": ["cell"] * (n * z_planes),
        "ZLevel": (zi_rep + 1) * _Z_STEP_UM,
        "ParentID": [None] * (n * z_planes),
        "ParentType": [None] * (n * z_planes),
        "Name": [None] * (n * z_planes),
    }
    obs = sample.adata.obs
    labels = obs[label_key].astype(str).to_numpy(object) if label_key in obs else np.full(n, "unknown", dtype=object)
    truth = pd.DataFrame({"EntityID": entity, "cell_type": labels, "source_cell_id": np.asarray(sample.cell_ids, dtype=object)})

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tx.to_csv(tmp / _TRANSCRIPTS, index=True)
        cbg.to_csv(tmp / _CELL_BY_GENE)
        meta.to_csv(tmp / _CELL_METADATA)
        _write_geoparquet(bnd, tmp / _BOUNDARIES_PARQUET)
        if write_hdf5:
            _write_hdf5_boundaries(tmp / _BOUNDARIES_HDF5_DIR, entity, geoms_um, meta["fov"].to_numpy(), bounds,
                                   meta["volume"].to_numpy(), z_planes)
        img_dir = tmp / _IMAGES
        img_dir.mkdir()
        for chan, img in sample.images.items():
            stain = MERSCOPE_STAIN_NAMES.get(chan, "".join(c if c.isalnum() else "-" for c in str(chan)))
            stack = defocus_stack(np.asarray(img.read()), z_planes)
            for k in range(z_planes):
                tifffile.imwrite(img_dir / f"mosaic_{stain}_z{k}.tif", np.ascontiguousarray(stack[k]), bigtiff=True)
        np.savetxt(img_dir / _TRANSFORM, A, fmt="%.12g", delimiter=" ")
        truth.to_csv(tmp / "cell_types.csv", index=False)
    return Path(out_dir)


def _trace_cells(mask: np.ndarray, lids: np.ndarray) -> list[Any]:
    """One MultiPolygon (pixels) per cell whose rasterisation reproduces the cell's mask (empty when no mask)."""
    import shapely
    from scipy import ndimage
    from skimage.measure import find_contours

    out: list[Any] = []
    uniq = np.unique(lids[lids > 0])
    if len(uniq) and uniq.max() <= 4 * len(uniq) + 1024:
        slices = ndimage.find_objects(np.where(np.isin(mask, uniq), mask, 0).astype(np.int64))
        box = {int(l_): slices[int(l_) - 1] for l_ in uniq if int(l_) - 1 < len(slices)}
    else:
        box = {}
        for l_ in uniq:
            rr, cc = np.nonzero(mask == l_)
            if len(rr):
                box[int(l_)] = (slice(rr.min(), rr.max() + 1), slice(cc.min(), cc.max() + 1))
    empty = shapely.MultiPolygon()
    for lid in lids:
        sl = box.get(int(lid)) if lid > 0 else None
        if sl is None:
            out.append(empty)
            continue
        r0, c0 = sl[0].start, sl[1].start
        crop = np.pad(mask[sl] == lid, 1).astype(np.float32)
        polys = []
        for c in find_contours(crop, 0.5):
            if len(c) < 4:
                continue
            p = shapely.Polygon(np.column_stack([c[:, 1] + c0 - 1, c[:, 0] + r0 - 1]))
            if not p.is_valid:
                p = p.buffer(0)
            if p.area > 0:
                polys.append(p)
        # drop rings inside another ring (holes of the mask: rasterisation fills them anyway)
        outer = [p for p in polys if not any(q is not p and q.contains(p) for q in polys)]
        parts = []
        for p in outer:
            p = p.simplify(0.1, preserve_topology=True)
            parts.extend(p.geoms if isinstance(p, shapely.MultiPolygon) else [p])
        out.append(shapely.MultiPolygon(parts) if parts else empty)
    return out


def _anisotropy(g: Any) -> float:
    if g.is_empty:
        return float("nan")
    r = g.minimum_rotated_rectangle
    xy = np.asarray(r.exterior.coords)
    sides = np.hypot(*np.diff(xy, axis=0).T)
    return float(sides.max() / sides.min()) if sides.min() > 0 else float("nan")


def _write_geoparquet(cols: dict[str, Any], path: Path) -> None:
    """The boundary table as GeoParquet (WKB ``Geometry`` column with ``geo`` metadata, as geopandas writes)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {
        "ID": pa.array(cols["ID"], pa.int64()),
        "EntityID": pa.array(cols["EntityID"], pa.int64()),
        "ZIndex": pa.array(cols["ZIndex"], pa.int64()),
        "Geometry": pa.array(list(cols["Geometry"]), pa.binary()),
        "Type": pa.array(cols["Type"], pa.string()),
        "ZLevel": pa.array(cols["ZLevel"], pa.float64()),
        "ParentID": pa.array(cols["ParentID"], pa.string()),
        "ParentType": pa.array(cols["ParentType"], pa.string()),
        "Name": pa.array(cols["Name"], pa.string()),
    }
    table = pa.table(arrays)
    geo = {"version": "1.0.0", "primary_column": "Geometry",
           "columns": {"Geometry": {"encoding": "WKB", "geometry_types": ["MultiPolygon"]}}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, path)


def _write_hdf5_boundaries(
    folder: Path, entity: np.ndarray, geoms: np.ndarray, fov: np.ndarray, bounds: np.ndarray, volume: np.ndarray,
    z_planes: int,
) -> None:
    """Per-FOV ``feature_data_<fov>.hdf5`` in the older MERSCOPE (MERlin) layout."""
    import h5py

    folder.mkdir()
    for f in np.unique(fov):
        with h5py.File(folder / f"feature_data_{int(f)}.hdf5", "w") as h:
            grp = h.create_group("featuredata")
            for i in np.flatnonzero(fov == f):
                key = str(int(entity[i]))
                g = grp.create_group(key)
                g.attrs["id"] = np.bytes_(key)
                g.attrs["fov"] = int(f)
                g.attrs["bounding_box"] = np.nan_to_num(bounds[i])
                g.attrs["volume"] = float(np.nan_to_num(volume[i]))
                g["z_coordinates"] = (np.arange(z_planes) + 1) * _Z_STEP_UM
                for k in range(z_planes):
                    zg = g.create_group(f"zIndex_{k}")
                    for j, part in enumerate(getattr(geoms[i], "geoms", [])):
                        pg = zg.create_group(f"p_{j}")
                        pg.attrs["type"] = np.bytes_("Polygon")
                        pg["coordinates"] = np.asarray(part.exterior.coords, dtype=np.float64)[None, :, :2]
