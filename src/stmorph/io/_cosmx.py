"""Reader of the NanoString CosMx SMI flat-file export (AtoMx), and a writer of that layout for tests.

The export folder
-----------------
``read_cosmx`` reads the folder as AtoMx writes it (tables as ``.csv``, ``.csv.gz`` or ``.parquet``; ``<run>`` is
the dataset id, the common prefix of the tables)::

    <run>_tx_file.csv.gz            molecules: fov, cell_ID (0 = unassigned), x_global_px, y_global_px,
                                    x_local_px, y_local_px, z (plane index), target, CellComp [, cell]
    <run>_fov_positions_file.csv.gz FOV positions: fov, x_global_px, y_global_px (legacy) or
                                    FOV, x_global_px, y_global_px, x_global_mm, y_global_mm (AtoMx >= 1.3.2)
                                    or FOV, X_mm, Y_mm (some exports); millimetres -> pixels with the pixel size
    <run>_metadata_file.csv.gz      cells: fov, cell_ID, CenterX_global_px, CenterY_global_px, CenterX_local_px,
                                    CenterY_local_px, Area, ..., Mean.<stain>, Max.<stain> (optional)
    <run>_exprMat_file.csv.gz       counts: fov, cell_ID (0 = background), one column per target (optional)
    CellLabels/CellLabels_F001.tif  per-FOV label image; values are the cell_IDs of that FOV
    CellComposite/CellComposite_F001.jpg   per-FOV RGB composite of the morphology stains
    Morphology2D/<run>_F001.TIF     per-FOV multi-channel morphology stack (when exported)

Tables may also sit in a sub-folder (``flatFiles/<run>/``) and image folders anywhere up to three levels below
the folder; a folder holding several runs needs ``dataset_id=``.

Coordinates and stitching: one pixel grid for the whole slide
---------------------------------------------------------------
CosMx images each field of view (FOV) separately; the tables give every molecule and cell in *global* pixels
(one frame for the slide, origin at the bottom left, y pointing up, per NanoString's file description) and in
*local* pixels of its FOV. The per-FOV images are stored the usual way, row 0 at the top. stmorph needs one grid
(crops near a FOV border must see the neighbour FOV, every consumer sees one image), so the reader **stitches
all FOVs into one mosaic**:

* Image rows run against the global y axis and image columns along the global x axis (as spatialdata-io and sopa
  stitch CosMx: each FOV image flipped vertically is the FOV in the global y-up frame). The stitched grid keeps
  the images upright: ``column = x_global - X0 - 0.5`` and ``row = Y0 - y_global - 0.5``, where ``X0`` is the
  left edge of the left-most FOV and ``Y0`` the top edge of the top-most FOV (global pixel edges; the ``0.5``
  puts pixel centres at integers, stmorph's convention). The stitched grid is therefore the global frame
  mirrored vertically and shifted, in pixels of the same size.
* Where each FOV sits is taken from the data when possible: per FOV, the local -> global relation of its
  molecules (and cell centres) is fitted as ``global = s * local + c`` per axis, ``s = +-1``. Exports differ
  here: legacy exports have ``y_global = y_local + c`` (local y inverted relative to image rows, as NanoString
  documents: "the local y-axis coordinates should be inverted to align the transcript positions to images"),
  AtoMx >= 1.3.2 exports have ``y_global = c - y_local`` and give the FOV's *top* edge in the positions file
  (the "one-FOV shift" other readers correct for). The fit gives each FOV's global extent in both cases: left
  edge ``c`` (``s = +1``) or ``c - width``; top edge ``c + height`` (``s = +1``) or ``c``.
* FOVs without molecules or cells are placed from the FOV positions file, shifted by the median difference
  between fitted extents and listed positions over the other FOVs (without any fitted FOV: the positions are
  the bottom-left corner in legacy files, the top-left corner in files with millimetre columns). Differences
  between positions and fitted extents are recorded in ``provenance["report"]``.
* Every FOV image is pasted at its integer offset (rounded); where FOVs overlap, the later FOV wins. Label
  images are relabelled so that labels are unique across FOVs: the label of cell ``cell_ID`` of FOV ``f`` is
  ``cell_ID + offset[f]``, offsets being the running sum of the largest cell_ID of the FOVs before (in FOV order;
  the mapping is in ``provenance["label_offsets"]``). ``obs["label_id"]`` is that label (0 when the cell has no
  pixel in its FOV's label image).
* Small mosaics (at most ``in_memory_limit`` bytes over all layers) stay in memory (``SpatialSample.write``
  then copies them into the sample folder). Larger ones are written once as uncompressed TIFFs (memory-mapped
  when read) into ``stitch_dir`` (default ``<folder>/stmorph_stitched``, or the user's cache folder when the export
  is read-only) with a manifest; a later read with the
  same files and FOVs reuses them.

Names, cells, counts
--------------------
Cell ids are ``"<fov>_<cell_ID>"`` (``cell_ID`` is unique within a FOV only); ``obs`` keeps ``fov`` and
``cell_ID`` and the other metadata columns. Counts come from the expression matrix when present (what the
instrument reports; background rows ``cell_ID`` 0 dropped), else from the assigned molecules. Control targets
(``NegPrb*``, ``Negative*``, ``SystemControl*``, ``FalseCode*`` and the prefixes of
:data:`~stmorph.io.CONTROL_PREFIXES`) are dropped by default. Centroids come from the metadata file (global
pixels, converted into the stitched grid), else from the mean position of each cell's molecules.

Stains: the composite JPEG gives channels ``composite_R``, ``composite_G``, ``composite_B``. The Morphology2D
channels are named, in this order of preference, from the JSON description the instrument stores in the TIFF
(``ChannelOrder`` with ``ChannelId`` -> ``BiologicalTarget``), from ``Morphology_ChannelID_Dictionary.txt``, from
the ``Mean.<stain>`` columns of the metadata file (AtoMx writes them in channel order), else CosMx's channel
order ``B, G, Y, R, U`` (``U`` = DAPI, named ``"DAPI"``). The pixel size is 0.12028 um (CosMx's documented
value) unless given.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._atomic import atomic_dir
from .._image import LabelImage, StainImage, image_axes, open_channels
from ..errors import StmorphInputError
from ..sample import LABEL_ID_KEY, SpatialSample
from ._common import (
    CONTROL_PREFIXES,
    Report,
    apply_labels,
    as_dir,
    build_adata,
    centroids_from_molecules,
    counts_from_molecules,
    decode_strings,
    drop_nan_centroids,
    finalize_matrix,
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
from ._writers_common import cell_positions

__all__ = [
    "read_cosmx",
    "detect_cosmx",
    "write_cosmx_layout",
    "COSMX_PIXEL_SIZE",
    "COSMX_CONTROL_PREFIXES",
    "COSMX_CHANNEL_ORDER",
]

#: CosMx pixel size in micrometres (NanoString: "multiply the pixel value by 0.12028 um per pixel").
COSMX_PIXEL_SIZE = 0.12028
#: Control targets of CosMx (negative probes are ``NegPrb<n>`` in legacy exports, ``Negative<n>`` in AtoMx).
COSMX_CONTROL_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys((*CONTROL_PREFIXES, "Negative")))
#: The documented order of the CosMx morphology channels (``U`` is the DAPI channel).
COSMX_CHANNEL_ORDER: tuple[str, ...] = ("B", "G", "Y", "R", "U")

_TABLES = {"tx": "tx_file", "fov": "fov_positions_file", "meta": "metadata_file", "expr": "exprMat_file"}
_TABLE_EXT = (".csv.gz", ".csv", ".parquet")
_IMAGE_DIRS = {"labels": "CellLabels", "composite": "CellComposite", "morphology": "Morphology2D"}
_FOV_FILE = re.compile(r"_F(?:OV)?0*(\d+)(?:_[^.]*)?\.(?:tiff?|jpe?g|png)$", re.IGNORECASE)
_IN_MEMORY_LIMIT = 256 * 2**20
_STITCH_VERSION = 1
_MANIFEST = "stmorph_stitch.json"


# ---------------------------------------------------------------------------------------------------------------
# detection and file discovery
# ---------------------------------------------------------------------------------------------------------------
def detect_cosmx(path: Path) -> bool:
    """A ``*tx_file.csv[.gz]`` file, or a folder holding one (directly or in its ``flatFiles`` sub-folders).

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
    >>> detect_cosmx(Path("Lung5_Rep1"))  # doctest: +SKIP
    True
    """
    path = Path(path)
    if path.is_file():
        return "tx_file.csv" in path.name
    if not path.is_dir():
        return False
    if any(path.glob("*tx_file.csv*")):
        return True
    return any(path.glob("flatFiles/*tx_file.csv*")) or any(path.glob("flatFiles/*/*tx_file.csv*"))


def _table_candidates(folder: Path, suffix: str) -> dict[str, list[Path]]:
    """``{dataset_id: [files]}`` of the tables ``<dataset_id>_<suffix>.<ext>`` in ``folder``."""
    pat = re.compile(rf"^(.*?)_?{re.escape(suffix)}(\.csv\.gz|\.csv|\.parquet)$")
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        m = pat.match(p.name)
        if m and p.is_file() and not p.name.startswith("."):
            out.setdefault(m.group(1), []).append(p)
    for files in out.values():
        files.sort(key=lambda f: next(i for i, e in enumerate(_TABLE_EXT) if f.name.endswith(e)))
    return out


def _locate_tables(root: Path, dataset_id: str | None) -> tuple[Path, str]:
    """The folder holding the flat files and the dataset id (prefix of the tables)."""
    folders = [root]
    if not _table_candidates(root, _TABLES["tx"]):
        folders = sorted({p.parent for p in root.glob("*/*tx_file.*")} | {p.parent for p in root.glob("*/*/*tx_file.*")}
                         | {p.parent for p in root.glob("*/*/*/*tx_file.*")})
        folders = [f for f in folders if _table_candidates(f, _TABLES["tx"])]
    found = [(f, ds) for f in folders for ds in _table_candidates(f, _TABLES["tx"])]
    if dataset_id is not None:
        found = [(f, ds) for f, ds in found if ds == dataset_id]
    if not found:
        what = f"<dataset_id>_{_TABLES['tx']}.csv[.gz]" if dataset_id is None else f"{dataset_id}_{_TABLES['tx']}.csv[.gz]"
        raise StmorphInputError(
            "no CosMx transcript table found in the folder (nor in its sub-folders)", file=root,
            expected=f"a flat-file export with {what}",
        )
    if len(found) > 1:
        ids = [f"{ds} ({f})" for f, ds in found]
        raise StmorphInputError(
            f"the folder holds several CosMx runs: {ids}; choose one with dataset_id=", file=root,
            expected="one run per folder, or dataset_id=",
        )
    return found[0]


def _table(folder: Path, dataset_id: str, key: str, *, required: bool) -> Path | None:
    suffix = _TABLES[key]
    files = _table_candidates(folder, suffix).get(dataset_id, [])
    if files:
        return files[0]
    if required:
        raise StmorphInputError(
            f"the CosMx {suffix.replace('_', ' ')} is missing", file=folder,
            expected=f"{dataset_id}_{suffix}.csv, .csv.gz or .parquet in {folder}",
        )
    return None


def _image_dir(root: Path, tables: Path, name: str) -> Path | None:
    for base in (root, tables, tables.parent):
        if (base / name).is_dir():
            return base / name
    hits = sorted({p for pat in (f"*/{name}", f"*/*/{name}", f"*/*/*/{name}") for p in root.glob(pat) if p.is_dir()})
    if len(hits) > 1:
        raise StmorphInputError(
            f"several '{name}' folders below the export: {[str(h) for h in hits[:5]]}", file=root,
            expected=f"one {name} folder per run (read the run's own folder)",
        )
    return hits[0] if hits else None


def _fov_files(folder: Path | None, report: Report, what: str) -> dict[int, Path]:
    """``{fov: file}`` of the per-FOV images in ``folder`` (``..._F001.tif``)."""
    if folder is None:
        return {}
    out: dict[int, Path] = {}
    dup = 0
    for p in sorted(folder.iterdir()):
        m = _FOV_FILE.search(p.name)
        if not m or not p.is_file() or p.name.startswith("."):
            continue
        fov = int(m.group(1))
        if fov in out:
            dup += 1
            continue
        out[fov] = p
    report.warn(f"{what}_duplicate_files", dup, f"{dup} extra {what} files for FOVs already seen in {folder}; ignored")
    return out


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------
def _header(path: Path) -> list[str]:
    try:
        if path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as exc:
        raise StmorphInputError(
            f"cannot read the table ({type(exc).__name__}: {exc})", file=path, expected="a csv/csv.gz/parquet table"
        ) from exc


def _resolve(columns: Sequence[str], *names: str) -> str | None:
    """The first of ``names`` among ``columns`` (exact, then case-insensitive)."""
    for n in names:
        if n in columns:
            return n
    low = {c.lower(): c for c in columns}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return None


def _read_columns(path: Path, columns: Sequence[str], dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    try:
        if path.name.lower().endswith(".parquet"):
            return pd.read_parquet(path, columns=list(columns))
        return pd.read_csv(path, usecols=list(columns), dtype=dtype, low_memory=False)
    except Exception as exc:
        raise StmorphInputError(
            f"cannot read the table ({type(exc).__name__}: {exc})", file=path, expected="a csv/csv.gz/parquet table"
        ) from exc


def _need(path: Path, header: list[str], what: str, *alternatives: str) -> str:
    col = _resolve(header, *alternatives)
    if col is None:
        have = ", ".join(header[:14])
        raise StmorphInputError(
            f"missing column {alternatives[0]!r} ({what}); the table has: {have}", file=path, column=alternatives[0],
            expected=" or ".join(alternatives),
        )
    return col


def _int_column(s: pd.Series, *, file: Path, column: str) -> np.ndarray:
    v = pd.to_numeric(s, errors="coerce")
    if v.isna().any():
        bad = s[v.isna()].astype(str).unique()[:5].tolist()
        raise StmorphInputError(f"non-integer values {bad}", file=file, column=column, expected="integers")
    arr = v.to_numpy(np.float64)
    if np.any(np.mod(arr, 1.0) != 0):
        raise StmorphInputError("fractional values", file=file, column=column, expected="integers")
    return arr.astype(np.int64)


def _read_positions(path: Path, pixel_size: float, report: Report) -> tuple[pd.DataFrame, str]:
    """FOV positions in global pixels (index fov; columns x, y) and the file's convention (legacy / atomx)."""
    tab = read_table(path)
    cols = [str(c) for c in tab.columns]
    fov_col = _resolve(cols, "fov", "FOV")
    variants = [("x_global_px", "y_global_px", 1.0), ("x_global_mm", "y_global_mm", 1000.0 / pixel_size),
                ("X_mm", "Y_mm", 1000.0 / pixel_size)]
    for xc, yc, factor in variants:
        x, y = _resolve(cols, xc), _resolve(cols, yc)
        if fov_col is not None and x is not None and y is not None:
            scale = factor
            break
    else:
        raise StmorphInputError(
            f"unknown FOV positions columns {cols}", file=path, column="fov",
            expected="fov/FOV with x_global_px, y_global_px (pixels), x_global_mm, y_global_mm or X_mm, Y_mm (mm)",
        )
    fov = _int_column(tab[fov_col], file=path, column=fov_col)
    out = pd.DataFrame({"x": pd.to_numeric(tab[x], errors="coerce").to_numpy(np.float64) * scale,
                        "y": pd.to_numeric(tab[y], errors="coerce").to_numpy(np.float64) * scale}, index=fov)
    bad = ~np.isfinite(out.to_numpy()).all(axis=1)
    report.warn("fov_positions_nan", int(bad.sum()), f"{int(bad.sum())} FOV positions are not numbers ({path.name}); ignored")
    out = out[~bad]
    out = out[~out.index.duplicated(keep="first")]
    has_mm = any(_resolve(cols, c) is not None for c in ("x_global_mm", "X_mm"))
    convention = "atomx" if (has_mm or fov_col == "FOV") else "legacy"
    report.info("fov_positions_columns", {"fov": fov_col, "x": x, "y": y, "scale_to_px": scale, "convention": convention})
    return out, convention


def _read_expr(path: Path, cells: pd.Index | None, report: Report, controls: Sequence[str] | None,
               ) -> tuple[Any, pd.Index, list[str], pd.Index]:
    """Counts of the expression matrix: (matrix, cell ids, gene names, all cell ids of the file)."""
    header = _header(path)
    fov_col = _need(path, header, "field of view", "fov", "FOV")
    cell_col = _need(path, header, "cell id within the FOV", "cell_ID", "cellID")
    skip = {fov_col, cell_col, "cell", "cell_id", "slide_ID", "Unnamed: 0"}
    targets = [c for c in header if c not in skip]
    if not targets:
        raise StmorphInputError("the expression matrix has no target column", file=path, expected="one column per target")
    ctrl = is_control(targets, controls) if controls else np.zeros(len(targets), dtype=bool)
    genes = [t for t, c in zip(targets, ctrl) if not c]
    if controls:
        report.info("control_targets_excluded", int(ctrl.sum()))
    if not genes:
        raise StmorphInputError("every target of the expression matrix is a control", file=path, expected="gene targets")
    blocks, ids = [], []
    if path.name.lower().endswith(".parquet"):
        chunks: Iterable[pd.DataFrame] = [pd.read_parquet(path, columns=[fov_col, cell_col, *genes])]
    else:
        chunks = pd.read_csv(path, usecols=[fov_col, cell_col, *genes], chunksize=20000, low_memory=False)
    try:
        for ch in chunks:
            fov = _int_column(ch[fov_col], file=path, column=fov_col)
            cid = _int_column(ch[cell_col], file=path, column=cell_col)
            keep = cid != 0
            vals = ch.loc[keep, genes].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy(np.float32)
            blocks.append(sp.csr_matrix(vals))
            ids.append(pd.Series(fov[keep]).astype(str).to_numpy(object) + "_" + pd.Series(cid[keep]).astype(str).to_numpy(object))
    except StmorphInputError:
        raise
    except Exception as exc:
        raise StmorphInputError(f"cannot read the table ({type(exc).__name__}: {exc})", file=path) from exc
    X = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(genes)), dtype=np.float32)
    all_ids = pd.Index(np.concatenate(ids) if ids else np.array([], dtype=object))
    dup = all_ids.duplicated()
    report.warn("expr_duplicate_cells", int(dup.sum()), f"{int(dup.sum())} repeated cells in {path.name}; first kept")
    if dup.any():
        X, all_ids = X[~dup], all_ids[~dup]
    if cells is None:
        return X, all_ids, genes, all_ids
    pos = all_ids.get_indexer(cells)
    missing = int((pos < 0).sum())
    report.warn("cells_missing_from_expr", missing,
                f"{missing} cells of the metadata file have no row in {path.name}; their counts are 0")
    extra = len(all_ids.difference(cells))
    report.warn("expr_cells_without_metadata", extra, f"{extra} cells of {path.name} are not in the metadata file; dropped")
    rows = np.where(pos >= 0, pos, 0)
    Xc = X[rows]
    if missing:
        Xc = sp.csr_matrix(Xc.multiply((pos >= 0)[:, None].astype(np.float32)))
    return Xc, cells, genes, all_ids


# ---------------------------------------------------------------------------------------------------------------
# FOV placement
# ---------------------------------------------------------------------------------------------------------------
def _fit_local_global(fov: np.ndarray, local: np.ndarray, glob: np.ndarray, default_sign: int,
                      max_rows: int = 400_000) -> dict[int, tuple[int, float, bool]]:
    """Per FOV: ``global = s * local + c`` -> ``{fov: (s, c, consistent)}`` (a sample of at most ``max_rows``)."""
    ok = np.isfinite(local) & np.isfinite(glob)
    fov, local, glob = fov[ok], local[ok], glob[ok]
    if len(fov) > max_rows:
        idx = np.linspace(0, len(fov) - 1, max_rows).astype(np.int64)
        fov, local, glob = fov[idx], local[idx], glob[idx]
    out: dict[int, tuple[int, float, bool]] = {}
    if not len(fov):
        return out
    order = np.argsort(fov, kind="stable")
    fov, local, glob = fov[order], local[order], glob[order]
    bounds = np.flatnonzero(np.diff(fov)) + 1
    signs: dict[int, int] = {}
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(fov)]):
        f = int(fov[lo])
        loc, g = local[lo:hi], glob[lo:hi]
        if hi - lo >= 2 and np.ptp(loc) > 0:
            signs[f] = 1 if float(np.mean((loc - loc.mean()) * (g - g.mean()))) >= 0 else -1
    majority = int(np.sign(sum(signs.values()))) or default_sign
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(fov)]):
        f = int(fov[lo])
        s = signs.get(f, majority)
        loc, g = local[lo:hi], glob[lo:hi]
        c = float(np.median(g - s * loc))
        resid = np.abs(g - s * loc - c)
        out[f] = (s, c, bool(np.quantile(resid, 0.99) <= 2.0))
    return out


def _place_fovs(
    fovs: list[int],
    shapes: dict[int, tuple[int, int]],
    fits_x: dict[int, tuple[int, float, bool]],
    fits_y: dict[int, tuple[int, float, bool]],
    positions: pd.DataFrame,
    convention: str,
    report: Report,
    pos_file: Path,
) -> pd.DataFrame:
    """Left / top global edges of each FOV (index fov): from the fitted local -> global relation, else positions."""
    rows = []
    bad = [f for f in fovs if f in fits_x and f in fits_y and not (fits_x[f][2] and fits_y[f][2])]
    report.warn("fov_local_global_inconsistent", len(bad),
                f"{len(bad)} FOVs whose local and global coordinates are not related by a shift ({bad[:5]}); placed "
                "from the FOV positions file")
    for f in fovs:
        h, w = shapes[f]
        left = top = np.nan
        if f in fits_x and f in fits_y and f not in bad:
            sx, cx, _ = fits_x[f]
            sy, cy, _ = fits_y[f]
            left = cx if sx > 0 else cx - w
            top = cy + h if sy > 0 else cy
        rows.append((f, left, top, h, w))
    pl = pd.DataFrame(rows, columns=["fov", "left", "top", "height", "width"]).set_index("fov")
    fitted = pl["left"].notna()
    both = fitted & pl.index.isin(positions.index)
    if both.any():
        dx = pl.loc[both, "left"] - positions.loc[pl.index[both], "x"].to_numpy()
        dy = pl.loc[both, "top"] - positions.loc[pl.index[both], "y"].to_numpy()
        shift_x, shift_y = float(np.median(dx)), float(np.median(dy))
        spread = float(max(np.max(np.abs(dx - shift_x)), np.max(np.abs(dy - shift_y))))
        h_mode = float(np.median(pl.loc[both, "height"]))
        edge = "bottom" if abs(shift_y - h_mode) <= 2 else ("top" if abs(shift_y) <= 2 else "other")
        report.info("fov_positions_vs_transcripts", {
            "x_shift_px": round(shift_x, 3), "y_shift_px": round(shift_y, 3), "max_deviation_px": round(spread, 3),
            "positions_y_is_fov_edge": edge,
        })
        n_off = int(((np.abs(dx - shift_x) > 2) | (np.abs(dy - shift_y) > 2)).sum())
        report.warn("fov_positions_disagree", n_off,
                    f"{n_off} FOVs of {pos_file.name} are off their transcripts' position by more than 2 px; the "
                    "transcripts' coordinates were used")
    else:
        shift_x = 0.0
        shift_y = float("nan")  # per FOV: its height (legacy: the position is the bottom-left corner) or 0
    need = ~fitted
    missing = [f for f in pl.index[need] if f not in positions.index]
    if missing:
        raise StmorphInputError(
            f"FOVs {missing[:10]} have no position in the FOV positions file and no local coordinates to place them",
            file=pos_file, column="fov", expected="every FOV of the export listed in the FOV positions file",
        )
    if need.any():
        idx = pl.index[need]
        pl.loc[idx, "left"] = positions.loc[idx, "x"].to_numpy() + shift_x
        if np.isfinite(shift_y):
            pl.loc[idx, "top"] = positions.loc[idx, "y"].to_numpy() + shift_y
        else:
            add = pl.loc[idx, "height"].to_numpy(np.float64) if convention == "legacy" else 0.0
            pl.loc[idx, "top"] = positions.loc[idx, "y"].to_numpy() + add
        report.info("fovs_placed_from_positions", [int(f) for f in idx])
    return pl


# ---------------------------------------------------------------------------------------------------------------
# morphology channel names
# ---------------------------------------------------------------------------------------------------------------
def _description_channels(path: Path) -> list[str] | None:
    """Channel names from the JSON description CosMx stores in a Morphology2D TIFF (``ChannelOrder``, ...)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            desc = tf.pages[0].description or ""
    except Exception:
        return None
    if "ChannelId" not in desc and "ChannelOrder" not in desc:
        return None
    order: str | None = None
    mapping: dict[str, str] = {}

    def walk(node: Any) -> None:
        nonlocal order
        if isinstance(node, dict):
            if isinstance(node.get("ChannelOrder"), str) and order is None:
                order = node["ChannelOrder"]
            if "ChannelId" in node and node.get("BiologicalTarget"):
                mapping.setdefault(str(node["ChannelId"]), str(node["BiologicalTarget"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        walk(json.loads(desc))
    except ValueError:  # not JSON: look for the keys as text
        ids = re.findall(r'"ChannelId"\s*:\s*"(.*?)"', desc)
        targets = re.findall(r'"BiologicalTarget"\s*:\s*"(.*?)"', desc)
        mapping = dict(zip(ids, targets))
        m = re.search(r'"ChannelOrder"\s*:\s*"(.*?)"', desc)
        order = m.group(1) if m else None
    if not order:
        return None
    letters = list(order) if "," not in order else [s.strip() for s in order.split(",")]
    return [mapping.get(c, "DAPI" if c == "U" else c) for c in letters]


def _morphology_names(first: Path, n: int, folder: Path, tables: Path, meta_header: list[str] | None,
                      report: Report) -> list[str]:
    names = _description_channels(first)
    source = "tiff description"
    if names is None or len(names) != n:
        names, source = None, ""
        for base in (folder.parent, tables, tables.parent):
            d = base / "Morphology_ChannelID_Dictionary.txt"
            if d.is_file():
                try:
                    tab = pd.read_csv(d, sep="\t")
                    col = _resolve([str(c) for c in tab.columns], "BiologicalTarget")
                    if col is not None and len(tab) == n:
                        names, source = [str(v) for v in tab[col]], d.name
                except Exception:
                    names = None
                break
    if names is None and meta_header is not None:
        means = [c[5:] for c in meta_header if c.startswith("Mean.")]
        if len(means) == n:
            names, source = means, "metadata Mean.* columns"
    if names is None:
        if n == len(COSMX_CHANNEL_ORDER):
            names, source = ["DAPI" if c == "U" else c for c in COSMX_CHANNEL_ORDER], "CosMx channel order B, G, Y, R, U"
        else:
            names, source = [f"morphology_{i}" for i in range(n)], "generated"
    names = [n_.replace("/", ".") for n_ in names]
    seen: dict[str, int] = {}
    out = []
    for nm in names:
        seen[nm] = seen.get(nm, 0) + 1
        out.append(nm if seen[nm] == 1 else f"{nm}_{seen[nm]}")
    report.info("morphology_channels", {"names": out, "source": source})
    return out


# ---------------------------------------------------------------------------------------------------------------
# stitching
# ---------------------------------------------------------------------------------------------------------------
def _file_stamp(p: Path) -> list[Any]:
    st = p.stat()
    return [str(p.resolve()), int(st.st_size), int(st.st_mtime_ns)]


def _stitch(
    placement: pd.DataFrame,
    shape: tuple[int, int],
    label_files: dict[int, Path],
    layers: list[tuple[str, dict[int, tuple[Path, int | None]]]],
    max_cell_id: dict[int, int],
    *,
    in_memory: bool | None,
    in_memory_limit: int,
    stitch_dir: Path,
    report: Report,
) -> tuple[LabelImage | None, dict[str, StainImage], dict[int, int], dict[int, np.ndarray], dict[str, Any]]:
    """Paste the per-FOV images into one mosaic per layer (and one label mosaic)."""
    import tifffile

    H, W = shape
    fovs = [int(f) for f in placement.index]
    dtypes: dict[str, np.dtype] = {}
    for name, src in layers:
        f0 = next(f for f in fovs if f in src)
        p, ch = src[f0]
        dtypes[name] = StainImage(p, channel=ch).dtype
    label_dtype = np.dtype(np.int32)
    total = H * W * (sum(d.itemsize for d in dtypes.values()) + (label_dtype.itemsize if label_files else 0))
    memory = in_memory if in_memory is not None else total <= in_memory_limit
    files = sorted({p for _, src in layers for p, _ in src.values()} | set(label_files.values()))
    key_obj = {
        "version": _STITCH_VERSION, "shape": [H, W], "files": [_file_stamp(p) for p in files],
        "placement": [[f, int(r.row0), int(r.col0)] for f, r in placement.iterrows()],
        "layers": [[n, sorted([int(f), str(p), c] for f, (p, c) in src.items())] for n, src in layers],
        "max_cell_id": sorted([int(k), int(v)] for k, v in max_cell_id.items()),
    }
    key = hashlib.sha1(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()
    info: dict[str, Any] = {"in_memory": bool(memory), "bytes": int(total), "shape": [H, W]}
    fname = {name: f"{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.tif" for i, (name, _) in enumerate(layers)}
    if not memory:
        manifest = stitch_dir / _MANIFEST
        info["stitch_dir"] = str(stitch_dir)
        if manifest.is_file():
            try:
                man = json.loads(manifest.read_text())
            except ValueError:
                man = {}
            if man.get("key") == key and all((stitch_dir / f).is_file() for f in man.get("files", {}).values()):
                report.info("stitched_images_reused", str(stitch_dir))
                seg = LabelImage(stitch_dir / man["labels"]) if man.get("labels") else None
                imgs = {n: StainImage(stitch_dir / f) for n, f in man["files"].items()}
                offsets = {int(k): int(v) for k, v in man["offsets"].items()}
                present = {int(k): np.asarray(v, dtype=np.int64) for k, v in man["present"].items()}
                info["reused"] = True
                return seg, imgs, offsets, present, info
        if stitch_dir.exists() and any(stitch_dir.iterdir()) and not manifest.is_file():
            raise StmorphInputError(
                "the stitch folder exists and was not written by stmorph; refusing to overwrite it", file=stitch_dir,
                expected="a new folder or one written by read_cosmx (stitch_dir=...)",
            )
        try:
            stitch_dir.parent.mkdir(parents=True, exist_ok=True)
            probe = stitch_dir.parent / f".stmorph_write_probe_{key[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise StmorphInputError(
                f"cannot write the stitched mosaic next to the export ({exc})", file=stitch_dir.parent,
                expected="a writable folder: pass stitch_dir=... (or in_memory=True for small slides)",
            ) from exc

    def run(target: Path | None):
        def alloc(name: str, dtype: np.dtype) -> np.ndarray:
            if target is None:
                return np.zeros((H, W), dtype=dtype)
            big = H * W * dtype.itemsize > 2**32 - 2**25
            return tifffile.memmap(target / name, shape=(H, W), dtype=dtype, bigtiff=big)

        lab = alloc("labels.tif", label_dtype) if label_files else None
        outs = {name: alloc(fname[name], dtypes[name]) for name, _ in layers}
        offsets: dict[int, int] = {}
        present: dict[int, np.ndarray] = {}
        running = 0
        skipped: list[str] = []
        for f in fovs:
            r0, c0 = int(placement.at[f, "row0"]), int(placement.at[f, "col0"])
            offsets[f] = running
            top_id = int(max_cell_id.get(f, 0))
            if lab is not None and f in label_files:
                arr = LabelImage(label_files[f]).read()
                arr = np.asarray(arr)
                if arr.size and arr.min() < 0:
                    raise StmorphInputError("negative labels", file=label_files[f], expected="cell_IDs >= 0")
                cnt = np.bincount(arr.ravel().astype(np.int64)) if arr.size else np.zeros(1, np.int64)
                present[f] = np.flatnonzero(cnt[1:]) + 1
                top_id = max(top_id, len(cnt) - 1)
                h, w = min(arr.shape[0], H - r0), min(arr.shape[1], W - c0)
                block = arr[:h, :w].astype(np.int64)
                lab[r0:r0 + h, c0:c0 + w] = np.where(block > 0, block + running, 0).astype(label_dtype)
            running += top_id
            for name, src in layers:
                if f not in src:
                    continue
                p, ch = src[f]
                arr = np.asarray(StainImage(p, channel=ch).read())
                if arr.shape != (int(placement.at[f, "height"]), int(placement.at[f, "width"])):
                    skipped.append(f"{name}@F{f}")
                    continue
                h, w = min(arr.shape[0], H - r0), min(arr.shape[1], W - c0)
                outs[name][r0:r0 + h, c0:c0 + w] = arr[:h, :w]
        if running >= 2**31:
            raise StmorphInputError("more than 2**31 labels over all FOVs", expected="fewer cells")
        report.warn("fov_images_wrong_shape", len(skipped),
                    f"{len(skipped)} FOV images differ in shape from the FOV's label image and were left out: {skipped[:5]}")
        if target is not None:
            for a in [lab, *outs.values()]:
                if a is not None:
                    a.flush()
            del lab, outs
            man = {"key": key, "labels": "labels.tif" if label_files else None, "files": fname,
                   "offsets": {str(k): v for k, v in offsets.items()},
                   "present": {str(k): v.tolist() for k, v in present.items()}, "inputs": key_obj}
            (target / _MANIFEST).write_text(json.dumps(man))
            return None, None, offsets, present
        return lab, outs, offsets, present

    if memory:
        lab, outs, offsets, present = run(None)
        seg = LabelImage(lab) if lab is not None else None
        imgs = {n: StainImage(a) for n, a in outs.items()}
        return seg, imgs, offsets, present, info
    with atomic_dir(stitch_dir, overwrite=True) as tmp:
        _, _, offsets, present = run(tmp)
    seg = LabelImage(stitch_dir / "labels.tif") if label_files else None
    imgs = {n: StainImage(stitch_dir / fname[n]) for n, _ in layers}
    return seg, imgs, offsets, present, info


# ---------------------------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------------------------
def read_cosmx(
    path: str | PathLike,
    *,
    fovs: Sequence[int] | None = None,
    pixel_size: float | None = None,
    images: Sequence[str] | None = ("composite", "morphology"),
    exclude_controls: bool = True,
    labels: str | PathLike | None = None,
    label_column: str = "cell_type",
    exclude_labels: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    name: str | None = None,
    dataset_id: str | None = None,
    stitch_dir: str | PathLike | None = None,
    in_memory: bool | None = None,
    in_memory_limit: int = _IN_MEMORY_LIMIT,
) -> SpatialSample:
    """Read a NanoString CosMx flat-file export folder into one stitched :class:`~stmorph.SpatialSample`.

    All FOVs (or those of ``fovs``) are placed on one pixel grid (see the module documentation for the
    conventions): molecules, centroids, the relabelled ``CellLabels`` segmentation and the stain mosaics.

    Parameters
    ----------
    path
        The export folder (or its ``*_tx_file.csv[.gz]``).
    fovs
        Read only these FOVs (numbers as in the ``fov`` column); default all.
    pixel_size
        Micrometres per pixel (default 0.12028, CosMx's documented value); also converts millimetre FOV positions.
    images
        Which stains to stitch: ``"composite"`` (``CellComposite`` RGB -> ``composite_R/G/B``) and/or
        ``"morphology"`` (``Morphology2D`` channels); ``None`` or ``()``: none.
    exclude_controls
        Drop control targets (:data:`COSMX_CONTROL_PREFIXES`) from the genes and the molecules.
    labels
        Cell-type labels: a table (file name in the folder or a path) with ``fov`` + ``cell_ID`` columns or a
        cell id column (first column, ``"<fov>_<cell_ID>"``), or ``"metadata"`` to take ``label_column`` from the
        metadata file (e.g. an AtoMx cell-typing column).
    label_column, exclude_labels
        Label column (-> ``obs["cell_type"]``) and labels whose cells are dropped.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the dataset id).
    dataset_id
        The run's table prefix, when the folder holds several runs.
    stitch_dir
        Folder for the stitched TIFFs of large mosaics (default ``<folder>/stmorph_stitched``).
    in_memory
        Keep the mosaics in memory (``True``), write them to ``stitch_dir`` (``False``), or decide by size
        (``None``: in memory up to ``in_memory_limit`` bytes).
    in_memory_limit
        Bytes over all mosaic layers up to which ``in_memory=None`` keeps them in memory.

    Returns
    -------
    SpatialSample
        Counts (``obs``: metadata columns, ``fov``, ``cell_ID``, ``label_id``), molecules in stitched pixels
        (``z`` = CosMx plane index, ``fov``, ``CellComp``), stitched stains and segmentation, provenance with the
        FOV placement, the label offsets and a report of what was dropped.

    Examples
    --------
    >>> from stmorph.io import read_cosmx
    >>> s = read_cosmx("Lung5_Rep1/Lung5_Rep1-Flat_files_and_images")  # doctest: +SKIP
    >>> s.images["DAPI"].shape, s.segmentation  # doctest: +SKIP
    """
    p = Path(path)
    if p.is_file():
        p = p.parent
    root = as_dir(p, what="CosMx")
    report = Report("read_cosmx")
    ps = float(pixel_size) if pixel_size is not None else COSMX_PIXEL_SIZE
    if not ps > 0:
        raise StmorphInputError(f"pixel_size={pixel_size}", column="pixel_size", expected="a positive pixel size in um")
    image_kinds = tuple(images or ())
    unknown = [k for k in image_kinds if k not in ("composite", "morphology")]
    if unknown:
        raise StmorphInputError(f"unknown image kinds {unknown}", column="images", expected="'composite' and/or 'morphology'")
    controls = COSMX_CONTROL_PREFIXES if exclude_controls else ()
    want = None if fovs is None else {int(f) for f in fovs}

    tables, ds = _locate_tables(root, dataset_id)
    tx_file = _table(tables, ds, "tx", required=True)
    pos_file = _table(tables, ds, "fov", required=True)
    meta_file = _table(tables, ds, "meta", required=False)
    expr_file = _table(tables, ds, "expr", required=False)
    assert tx_file is not None and pos_file is not None
    files: dict[str, Any] = {"tx": str(tx_file), "fov_positions": str(pos_file)}

    positions, convention = _read_positions(pos_file, ps, report)

    # -- molecules ---------------------------------------------------------------------------------------------
    hdr = _header(tx_file)
    c_fov = _need(tx_file, hdr, "field of view", "fov", "FOV")
    c_cell = _need(tx_file, hdr, "cell id within the FOV", "cell_ID", "cellID")
    c_gx = _need(tx_file, hdr, "global x in pixels", "x_global_px")
    c_gy = _need(tx_file, hdr, "global y in pixels", "y_global_px")
    c_tg = _need(tx_file, hdr, "target name", "target")
    c_lx, c_ly = _resolve(hdr, "x_local_px"), _resolve(hdr, "y_local_px")
    c_z, c_comp = _resolve(hdr, "z"), _resolve(hdr, "CellComp")
    use = [c for c in (c_fov, c_cell, c_gx, c_gy, c_tg, c_lx, c_ly, c_z, c_comp) if c is not None]
    tx = _read_columns(tx_file, use, dtype={c_tg: "string"})
    t_fov = _int_column(tx[c_fov], file=tx_file, column=c_fov)
    t_cell = _int_column(tx[c_cell], file=tx_file, column=c_cell)
    gx = pd.to_numeric(tx[c_gx], errors="coerce").to_numpy(np.float64)
    gy = pd.to_numeric(tx[c_gy], errors="coerce").to_numpy(np.float64)
    target = decode_strings(tx[c_tg]).astype("string")
    keep = np.isfinite(gx) & np.isfinite(gy) & target.notna().to_numpy(bool)
    if want is not None:
        keep &= np.isin(t_fov, list(want))
    n_bad = int((~(np.isfinite(gx) & np.isfinite(gy) & target.notna().to_numpy(bool))).sum())
    report.warn("molecules_invalid", n_bad, f"dropped {n_bad} molecules without coordinates or target ({tx_file.name})")
    tx_fovs = set(np.unique(t_fov[keep]).tolist())
    if want is not None:
        absent = sorted(want - tx_fovs - set(positions.index))
        if absent:
            raise StmorphInputError(f"requested FOVs {absent} are not in the export", file=tx_file, column=c_fov,
                                    expected=f"FOVs among {sorted(tx_fovs)[:20]}")
    missing_pos = sorted(tx_fovs - set(positions.index))
    if tx_fovs and len(missing_pos) == len(tx_fovs):
        raise StmorphInputError(
            f"no FOV of the transcript table is in the FOV positions file (e.g. {missing_pos[:5]} vs "
            f"{positions.index[:5].tolist()}): the files are not of one run", file=pos_file, column="fov",
            expected=f"the FOVs of {tx_file.name}",
        )
    report.warn("fovs_without_position", len(missing_pos),
                f"FOVs {missing_pos[:10]} of {tx_file.name} are missing from {pos_file.name}")

    # -- metadata ----------------------------------------------------------------------------------------------
    meta = None
    meta_header = None
    if meta_file is not None:
        meta = read_table(meta_file)
        meta_header = [str(c) for c in meta.columns]
        m_fov = _need(meta_file, meta_header, "field of view", "fov", "FOV")
        m_cell = _need(meta_file, meta_header, "cell id within the FOV", "cell_ID", "cellID")
        mf = _int_column(meta[m_fov], file=meta_file, column=m_fov)
        mc = _int_column(meta[m_cell], file=meta_file, column=m_cell)
        sel = mc != 0
        if want is not None:
            sel &= np.isin(mf, list(want))
        meta = meta.loc[sel].copy()
        meta = meta.rename(columns={m_fov: "fov", m_cell: "cell_ID"})
        meta["fov"], meta["cell_ID"] = mf[sel], mc[sel]
        meta.index = pd.Index((meta["fov"].astype(str) + "_" + meta["cell_ID"].astype(str)).to_numpy(object))
        dup = meta.index.duplicated()
        report.warn("metadata_duplicate_cells", int(dup.sum()), f"{int(dup.sum())} repeated cells in {meta_file.name}")
        meta = meta[~dup]
        extra_fovs = sorted(set(meta["fov"].unique().tolist()) - tx_fovs - set(positions.index))
        if extra_fovs:
            raise StmorphInputError(
                f"FOVs {extra_fovs[:10]} of the metadata file are neither in the transcripts nor in the FOV positions",
                file=meta_file, column="fov", expected=f"the FOVs of {tx_file.name}",
            )
        files["metadata"] = str(meta_file)

    # -- FOV images --------------------------------------------------------------------------------------------
    dirs = {k: _image_dir(root, tables, v) for k, v in _IMAGE_DIRS.items()}
    label_files = _fov_files(dirs["labels"], report, "CellLabels")
    comp_files = _fov_files(dirs["composite"], report, "CellComposite") if "composite" in image_kinds else {}
    morph_files = _fov_files(dirs["morphology"], report, "Morphology2D") if "morphology" in image_kinds else {}
    for kind in image_kinds:
        if dirs[kind] is None:
            report.warn(f"no_{kind}_images", 1, f"no {_IMAGE_DIRS[kind]} folder in {root}; no {kind} stains")
    if dirs["labels"] is None:
        report.warn("no_cell_labels", 1, f"no CellLabels folder in {root}; the sample has no segmentation")

    data_fovs = set(tx_fovs) | (set(meta["fov"].unique().tolist()) if meta is not None else set())
    img_fovs = set(label_files) | set(comp_files) | set(morph_files)
    if want is not None:
        img_fovs &= want
    orphan = sorted(img_fovs - data_fovs - set(positions.index))
    report.warn("images_without_fov", len(orphan), f"images of FOVs {orphan[:10]} not in any table; ignored")
    all_fovs = sorted(data_fovs | (img_fovs - set(orphan)))
    if not all_fovs:
        raise StmorphInputError("no FOV to read", file=tx_file, column=c_fov, expected="molecules in the selected FOVs")

    # FOV shapes: label image, else morphology / composite, else the usual shape, else the local extent
    shapes: dict[int, tuple[int, int]] = {}
    for f in all_fovs:
        for src in (label_files, morph_files, comp_files):
            if f in src:
                axes, shp = image_axes(src[f])
                shapes[f] = (int(shp[axes.index("Y")]), int(shp[axes.index("X")]))
                break
    if len(shapes) < len(all_fovs):
        if shapes:
            usual = pd.Series([f"{h},{w}" for h, w in shapes.values()]).mode().iloc[0]
            hw = tuple(int(v) for v in usual.split(","))
        else:
            lx = tx[c_lx].to_numpy(np.float64) if c_lx else np.array([0.0])
            ly = tx[c_ly].to_numpy(np.float64) if c_ly else np.array([0.0])
            hw = (int(math.ceil(np.nanmax(ly))) + 1, int(math.ceil(np.nanmax(lx))) + 1)
            report.info("fov_shape_from_local_coordinates", list(hw))
        for f in all_fovs:
            shapes.setdefault(f, hw)  # type: ignore[arg-type]

    # -- placement ---------------------------------------------------------------------------------------------
    fit_fov, fit_lx, fit_ly, fit_gx, fit_gy = [], [], [], [], []
    if c_lx and c_ly:
        fit_fov.append(t_fov[keep])
        fit_lx.append(pd.to_numeric(tx[c_lx], errors="coerce").to_numpy(np.float64)[keep])
        fit_ly.append(pd.to_numeric(tx[c_ly], errors="coerce").to_numpy(np.float64)[keep])
        fit_gx.append(gx[keep])
        fit_gy.append(gy[keep])
    if meta is not None:
        cols = [_resolve(meta_header, n) for n in ("CenterX_local_px", "CenterY_local_px", "CenterX_global_px",
                                                   "CenterY_global_px")]
        if all(c is not None for c in cols):
            fit_fov.append(meta["fov"].to_numpy(np.int64))
            for lst, c in zip((fit_lx, fit_ly, fit_gx, fit_gy), cols):
                lst.append(pd.to_numeric(meta[c], errors="coerce").to_numpy(np.float64))
    if fit_fov:
        ff = np.concatenate(fit_fov)
        fits_x = _fit_local_global(ff, np.concatenate(fit_lx), np.concatenate(fit_gx), +1)
        fits_y = _fit_local_global(ff, np.concatenate(fit_ly), np.concatenate(fit_gy), +1)
    else:
        fits_x, fits_y = {}, {}
        report.info("fov_placement", "no local coordinates: FOVs placed from the FOV positions file")
    pl = _place_fovs(all_fovs, shapes, fits_x, fits_y, positions, convention, report, pos_file)
    X0 = float(pl["left"].min())
    Y0 = float(pl["top"].max())
    pl["col0"] = np.rint(pl["left"] - X0).astype(np.int64)
    pl["row0"] = np.rint(Y0 - pl["top"]).astype(np.int64)
    grid = (int((pl["row0"] + pl["height"]).max()), int((pl["col0"] + pl["width"]).max()))

    def to_grid(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x - X0 - 0.5, Y0 - y - 0.5

    # -- molecules in the grid ---------------------------------------------------------------------------------
    mx, my = to_grid(gx[keep], gy[keep])
    cid = t_cell[keep]
    mfov = t_fov[keep]
    cell_of = _cell_ids(mfov, cid)
    tgt = target[keep].to_numpy()
    ctrl = is_control(pd.Series(tgt), controls) if controls else np.zeros(len(tgt), dtype=bool)
    if controls:
        per = pd.Series(tgt[ctrl]).astype(str).str.extract(r"^([A-Za-z]+)", expand=False).value_counts()
        report.info("control_molecules_excluded", {str(k): int(v) for k, v in per.items()})
    all_mol = pd.DataFrame({"x": mx, "y": my, "cell_id": cell_of})
    extra = {"fov": mfov[~ctrl]}
    if c_comp is not None:
        extra["CellComp"] = pd.Categorical(tx[c_comp].astype("string").to_numpy()[keep][~ctrl].astype(str))
    z = pd.to_numeric(tx[c_z], errors="coerce").to_numpy(np.float64)[keep][~ctrl] if c_z else None
    if not (~ctrl).any():
        raise StmorphInputError("no molecule is left after excluding control targets", file=tx_file, column=c_tg,
                                expected="gene targets besides controls")
    mol = make_molecules(mx[~ctrl], my[~ctrl], tgt[~ctrl], cell_of[~ctrl], z, **extra)
    if "CellComp" in extra:
        mol["CellComp"] = mol["CellComp"].astype("category")
    del tx

    # -- cells and counts --------------------------------------------------------------------------------------
    assigned = pd.Index(all_mol["cell_id"].dropna().unique())
    cells: pd.Index
    obs: pd.DataFrame | None = None
    centroids: np.ndarray | None = None
    if meta is not None:
        cells = pd.Index(meta.index)
        cxg, cyg = _resolve(meta_header, "CenterX_global_px"), _resolve(meta_header, "CenterY_global_px")
        if cxg is not None and cyg is not None:
            centroids = np.column_stack(to_grid(pd.to_numeric(meta[cxg], errors="coerce").to_numpy(np.float64),
                                                pd.to_numeric(meta[cyg], errors="coerce").to_numpy(np.float64)))
        else:
            report.warn("metadata_without_centres", 1, f"{meta_file.name} has no CenterX/Y_global_px: centroids from molecules")
        obs = meta
    if expr_file is not None:
        X, ex_cells, gene_names, _ = _read_expr(expr_file, cells if meta is not None else None, report, controls)
        if meta is None:
            cells = ex_cells
            if want is not None:
                sel = np.isin(np.array([int(s.split("_")[0]) for s in cells], dtype=np.int64), list(want))
                X, cells = X[sel], cells[sel]
        gene_index = pd.Index(gene_names)
        counts_from = "exprMat_file"
        files["exprMat"] = str(expr_file)
    else:
        if meta is None:
            cells = assigned
        gene_index = pd.Index(sorted(pd.unique(mol["gene"].astype(str))))
        X = None
        counts_from = "molecules"
    if len(cells) == 0:
        raise StmorphInputError("no cell in the export", file=meta_file or expr_file or tx_file, column="cell_ID",
                                expected="cells with cell_ID > 0")
    unassign_unknown_cells(mol, assigned, cells, report=report, file=meta_file or expr_file or tx_file,
                           column="cell_ID", what="molecule")
    if X is None:
        X = counts_from_molecules(mol["cell_id"], mol["gene"], cells, gene_index)
    if centroids is None:
        centroids = centroids_from_molecules(all_mol, cells)
        report.info("centroids_from", "molecules (mean position)")
    if obs is None:
        parts = pd.Series(cells, dtype="string").str.split("_", n=1, expand=True)
        obs = pd.DataFrame({"fov": parts[0].astype(np.int64).to_numpy(), "cell_ID": parts[1].astype(np.int64).to_numpy()},
                           index=cells)
    adata = build_adata(finalize_matrix(X), cells, gene_index, centroids, obs)
    adata.obs["fov"] = adata.obs["fov"].astype(np.int64)
    adata.obs["cell_ID"] = adata.obs["cell_ID"].astype(np.int64)
    n_empty = int((np.asarray(adata.X.sum(axis=1)).ravel() == 0).sum())
    report.warn("cells_without_counts", n_empty, f"{n_empty} cells have no counts (kept)")
    adata = drop_nan_centroids(adata, report, file=meta_file or tx_file)

    # -- stitched stains and segmentation ----------------------------------------------------------------------
    layers: list[tuple[str, dict[int, tuple[Path, int | None]]]] = []
    use_fovs = set(pl.index)
    comp = {f: p for f, p in comp_files.items() if f in use_fovs}
    if comp:
        ch = open_channels(comp[min(comp)])
        for i, nm in enumerate(ch):
            layers.append((f"composite_{nm}", {f: (p, i if len(ch) > 1 else None) for f, p in comp.items()}))
        files["CellComposite"] = str(dirs["composite"])
    morph = {f: p for f, p in morph_files.items() if f in use_fovs}
    if morph:
        first = morph[min(morph)]
        n_ch = len(open_channels(first))
        names = _morphology_names(first, n_ch, first.parent, tables, meta_header, report)
        names = [nm if nm not in {n for n, _ in layers} else f"morphology_{nm}" for nm in names]
        wrong = [f for f, p in morph.items() if len(open_channels(p)) != n_ch]
        report.warn("morphology_channel_mismatch", len(wrong), f"Morphology2D files of FOVs {wrong[:5]} have another "
                    f"channel count than {first.name}; left out")
        for i, nm in enumerate(names):
            layers.append((nm, {f: (p, i if n_ch > 1 else None) for f, p in morph.items() if f not in wrong}))
        files["Morphology2D"] = str(dirs["morphology"])
    labs = {f: p for f, p in label_files.items() if f in use_fovs}
    max_id = {}
    cf = adata.obs["fov"].to_numpy(np.int64)
    cc = adata.obs["cell_ID"].to_numpy(np.int64)
    for f in pl.index:
        sel = cf == f
        max_id[int(f)] = int(cc[sel].max()) if sel.any() else 0
    seg = None
    imgs: dict[str, StainImage] = {}
    offsets: dict[int, int] = {}
    stitch_info: dict[str, Any] = {"shape": list(grid)}
    if labs or layers:
        sdir = Path(stitch_dir) if stitch_dir is not None else _default_stitch_dir(root, report)
        seg, imgs, offsets, present, stitch_info = _stitch(
            pl, grid, labs, layers, max_id, in_memory=in_memory, in_memory_limit=int(in_memory_limit),
            stitch_dir=sdir, report=report,
        )
        if labs:
            files["CellLabels"] = str(dirs["labels"])
            lab_id = np.zeros(adata.n_obs, dtype=np.int64)
            for f in np.unique(cf):
                sel = cf == f
                if int(f) not in present:
                    continue
                has = np.isin(cc[sel], present[int(f)])
                lab_id[np.flatnonzero(sel)[has]] = cc[sel][has] + offsets[int(f)]
            set_label_ids(adata, lab_id, report, no_mask="pixel in their FOV's CellLabels image")

    # -- labels, genes -----------------------------------------------------------------------------------------
    if labels is not None:
        lab = _read_labels(labels, root, tables, meta, label_column, meta_file)
        adata = apply_labels(adata, lab, report, file=meta_file if str(labels) == "metadata" else Path(str(labels)),
                             exclude_labels=exclude_labels, molecules=mol)
        files["labels"] = str(labels)
    adata = restrict_genes(adata, genes, file=expr_file or tx_file)

    prov = {
        "reader": "cosmx",
        "path": str(root.resolve()),
        "dataset_id": ds,
        "files": files,
        "pixel_size_source": "argument" if pixel_size is not None else "CosMx default (0.12028 um)",
        "counts_from": counts_from,
        "exclude_controls": bool(exclude_controls),
        "control_prefixes": list(controls),
        "z_units": "CosMx z plane index",
        "fovs": [int(f) for f in pl.index],
        "grid": {
            "shape": list(grid), "x0_global_px": X0, "y0_global_px": Y0,
            "transform": "column = x_global_px - x0 - 0.5; row = y0 - y_global_px - 0.5",
        },
        "fov_placement": {str(int(f)): {"row0": int(r.row0), "col0": int(r.col0), "height": int(r.height),
                                        "width": int(r.width), "left_global_px": float(r.left),
                                        "top_global_px": float(r.top)} for f, r in pl.iterrows()},
        "label_offsets": {str(k): int(v) for k, v in offsets.items()},
        "stitching": stitch_info,
    }
    return finish_sample(adata, mol, imgs, ps, name or ds or root.name, prov, report, seg)


def _default_stitch_dir(root: Path, report: Report) -> Path:
    """``<export>/stmorph_stitched`` when the export folder is writable, else a folder in the user's cache
    (``$XDG_CACHE_HOME/stmorph`` or ``~/.cache/stmorph``) named after the export: read-only exports work too."""
    import os

    if os.access(root, os.W_OK):
        return root / "stmorph_stitched"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stmorph" / "cosmx_stitched"
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    out = base / f"{root.name}-{tag}"
    report.info("stitch_dir", f"the export folder is read-only: stitched mosaics go to {out}")
    return out


def _cell_ids(fov: np.ndarray, cell: np.ndarray) -> pd.arrays.StringArray:
    """``"<fov>_<cell_ID>"`` per row (``<NA>`` where ``cell_ID`` is 0), building each distinct string once."""
    out = np.full(len(fov), None, dtype=object)
    has = cell != 0
    if has.any():
        pairs, inv = np.unique(np.column_stack([fov[has], cell[has]]), axis=0, return_inverse=True)
        names = np.array([f"{int(f)}_{int(c)}" for f, c in pairs], dtype=object)
        out[has] = names[inv.ravel()]
    return pd.array(out, dtype="string")


def _read_labels(labels: str | PathLike, root: Path, tables: Path, meta: pd.DataFrame | None, label_column: str,
                 meta_file: Path | None) -> pd.Series:
    if str(labels) == "metadata":
        if meta is None:
            raise StmorphInputError("labels='metadata' but the export has no metadata file", file=root,
                                    expected="<run>_metadata_file.csv")
        require_columns(meta, [label_column], file=meta_file or root)
        return pd.Series(meta[label_column].to_numpy(), index=meta.index)
    lfile = find_file(root, [str(labels), str(tables / str(labels))], required=True, what="labels")
    assert lfile is not None
    lt = read_table(lfile)
    require_columns(lt, [label_column], file=lfile)
    cols = [str(c) for c in lt.columns]
    f_col, c_col = _resolve(cols, "fov", "FOV"), _resolve(cols, "cell_ID")
    if f_col is not None and c_col is not None:
        ids = (normalize_ids(lt[f_col]) + "_" + normalize_ids(lt[c_col])).astype("string")
    else:
        id_col = _resolve(cols, "cell_id") or (cols[0] if cols[0] != label_column else None)
        if id_col is None:
            raise StmorphInputError("the label table has no cell id column", file=lfile,
                                    expected="fov + cell_ID columns, or a first column of '<fov>_<cell_ID>' ids")
        ids = normalize_ids(lt[id_col])
    return label_series(lt[label_column], ids)


# ---------------------------------------------------------------------------------------------------------------
# the writer (synthetic exports for tests)
# ---------------------------------------------------------------------------------------------------------------
_LEGACY_MEAN_NAMES = ("MembraneStain", "PanCK", "CD45", "CD3", "DAPI")
_ATOMX_MEAN_NAMES = ("B", "G", "Y", "R", "DAPI")
_TARGETS = ("Membrane", "PanCK", "CD45", "CD3", "DAPI")


def write_cosmx_layout(
    sample: SpatialSample,
    out_dir: str | PathLike,
    *,
    fov_grid: tuple[int, int] = (2, 2),
    version: Literal["atomx", "legacy"] = "atomx",
    run_name: str = "Run1000_S1",
    origin_px: tuple[float, float] = (10000.0, 50000.0),
    pixel_size: float = COSMX_PIXEL_SIZE,
    label_key: str = "cell_type",
    control_fraction: float = 0.005,
    overwrite: bool = False,
    random_state: int = 0,
) -> Path:
    """Write a sample (a synthetic tissue) as a CosMx flat-file export, cut into a grid of FOVs.

    The sample's grid becomes ``fov_grid = (rows, columns)`` FOVs of equal size (the last ones padded), FOV 1 at
    the top left, numbered row by row. Global pixels put the sample's left edge at ``origin_px[0]`` and its top
    edge at ``origin_px[1]`` with y pointing up (``y_global = top - y - 0.5``, ``x_global = left + x + 0.5``).
    ``version="atomx"`` writes the AtoMx >= 1.3.2 conventions (``FOV, x_global_px, y_global_px, x_global_mm,
    y_global_mm`` = the FOV's top-left corner; ``y_local = top_of_fov - y_global``, image-like; controls
    ``Negative<n>`` / ``SystemControl<n>``; ``cell`` ids ``c_1_<fov>_<cell_ID>``), ``"legacy"`` the first public
    releases (``fov, x_global_px, y_global_px`` = bottom-left corner; ``y_local = y_global - bottom``, inverted
    relative to image rows; controls ``NegPrb<n>``).

    Files: ``<run>_tx_file.csv.gz``, ``<run>_fov_positions_file.csv.gz``, ``<run>_metadata_file.csv.gz``,
    ``<run>_exprMat_file.csv.gz``, ``CellLabels/CellLabels_F###.tif`` (uint32, the FOV's cell_IDs), ``CellComposite/
    CellComposite_F###.jpg`` (RGB: membrane, 0, DAPI), ``Morphology2D/<run>_F###.TIF`` (channels B, G, Y, R, U =
    membrane, three dim noise stains named PanCK, CD45, CD3, and DAPI, with the JSON channel description the
    instrument stores: ``ChannelOrder``, ``ChannelId``, ``BiologicalTarget``) and ``cell_types.csv`` (``cell_id`` =
    ``"<fov>_<cell_ID>"``, ``cell_type`` from ``label_key``, ``source_cell_id`` = the sample's id: the ground
    truth).

    A cell belongs to the FOV holding its centroid; in that FOV's label image only its part inside the FOV is
    kept (the parts in other FOVs are background there), its molecules outside the FOV are unassigned
    (``cell_ID`` 0 in their FOV) and the expression matrix counts the assigned molecules, as on the instrument.
    A few control molecules (``control_fraction`` of the molecules) are added at molecules' positions.

    Parameters
    ----------
    sample
        The sample: molecules, a segmentation, images ``"DAPI"`` (and ``"membrane"``).
    out_dir
        Folder to create (written atomically).
    fov_grid
        ``(rows, columns)`` of FOVs.
    version
        ``"atomx"`` or ``"legacy"`` file conventions.
    run_name
        The dataset id (prefix of the tables).
    origin_px
        Global ``(x, y)`` pixels of the sample's left and top edges.
    pixel_size
        Micrometres per pixel used for the millimetre FOV positions (the instrument's 0.12028 by default).
    label_key
        ``obs`` column written to ``cell_types.csv``.
    control_fraction
        Control molecules as a fraction of the molecules (at least 4).
    overwrite
        Replace an existing folder.
    random_state
        Seed of the control molecules and the noise stains.

    Returns
    -------
    pathlib.Path
        The folder written.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue
    >>> from stmorph.io._cosmx import write_cosmx_layout
    >>> write_cosmx_layout(synthetic_tissue(n_cells=50, n_types=3), "cosmx_dir")  # doctest: +SKIP
    """
    import tifffile
    from PIL import Image

    if version not in ("atomx", "legacy"):
        raise StmorphInputError(f"version={version!r}", column="version", expected="'atomx' or 'legacy'")
    sample.require("molecules")
    sample.require("segmentation", expected="sample.segmentation (a label image)")
    sample.require("images", "DAPI")
    n_rows, n_cols = int(fov_grid[0]), int(fov_grid[1])
    if n_rows < 1 or n_cols < 1:
        raise StmorphInputError(f"fov_grid={fov_grid}", column="fov_grid", expected="(rows, columns) >= 1")
    rng = np.random.default_rng(random_state)
    legacy = version == "legacy"
    seg = np.asarray(sample.segmentation.read()).astype(np.int64)
    H, W = seg.shape
    dapi = np.asarray(sample.images["DAPI"].read())
    memb = np.asarray(sample.images["membrane"].read()) if "membrane" in sample.images else np.zeros_like(dapi)
    fh, fw = int(math.ceil(H / n_rows)), int(math.ceil(W / n_cols))
    GX, GT = float(origin_px[0]), float(origin_px[1])

    def fov_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        col = np.clip(np.floor(np.asarray(x) + 0.5).astype(np.int64), 0, W - 1) // fw
        row = np.clip(np.floor(np.asarray(y) + 0.5).astype(np.int64), 0, H - 1) // fh
        return row * n_cols + col + 1

    def fov_edges(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i, j = np.divmod(np.asarray(f) - 1, n_cols)
        return GX + j * fw, GT - i * fh  # left, top (global)

    def local(gx: np.ndarray, gy: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left, top = fov_edges(f)
        return gx - left, (gy - (top - fh)) if legacy else (top - gy)

    # cells -> FOV and per-FOV cell_IDs
    n = sample.n_cells
    cents = sample.centroids
    cell_fov = fov_of(cents[:, 0], cents[:, 1])
    cell_local_id = np.zeros(n, dtype=np.int64)
    for f in np.unique(cell_fov):
        sel = np.flatnonzero(cell_fov == f)
        cell_local_id[sel] = np.arange(1, len(sel) + 1)
    label_of_cell = sample.label_ids() if LABEL_ID_KEY in sample.adata.obs else np.arange(1, n + 1)

    # molecules (+ controls at molecules' positions)
    mol = sample.molecules
    pos = cell_positions(sample, mol)
    x, y = mol["x"].to_numpy(np.float64), mol["y"].to_numpy(np.float64)
    z_um = mol["z"].to_numpy(np.float64) if "z" in mol else np.zeros(len(mol))
    info = sample.adata.uns.get("synthetic_tissue", {})
    z_step = float(info.get("params", {}).get("z_step_um", 1.5)) if isinstance(info, dict) else 1.5
    in_nuc = mol["in_nucleus"].to_numpy(bool) if "in_nucleus" in mol else np.zeros(len(mol), dtype=bool)
    target = mol["gene"].astype(str).to_numpy(object)
    n_ctrl = max(int(round(control_fraction * len(mol))), 4)
    src = rng.integers(0, len(mol), n_ctrl) if len(mol) else np.zeros(0, dtype=np.int64)
    if legacy:
        ctrl_names = [f"NegPrb{i % 5 + 1}" for i in range(n_ctrl)]
    else:
        ctrl_names = [(f"Negative{i % 5 + 1}" if i % 2 == 0 else f"SystemControl{i % 7 + 1}") for i in range(n_ctrl)]
    x = np.concatenate([x, x[src]])
    y = np.concatenate([y, y[src]])
    z_um = np.concatenate([z_um, z_um[src]])
    in_nuc = np.concatenate([in_nuc, in_nuc[src]])
    pos = np.concatenate([pos, pos[src]])
    target = np.concatenate([target, np.asarray(ctrl_names, dtype=object)])
    mfov = fov_of(x, y)
    own = (pos >= 0) & (cell_fov[np.maximum(pos, 0)] == mfov)
    mcell = np.where(own, cell_local_id[np.maximum(pos, 0)], 0)
    gx, gy = GX + x + 0.5, GT - (y + 0.5)
    lx, ly = local(gx, gy, mfov)
    none = "0" if legacy else "None"
    comp = np.where(mcell == 0, none, np.where(in_nuc, "Nuclear", "Cytoplasm"))
    zplane = np.rint(z_um / z_step).astype(np.int64)
    tx = pd.DataFrame({"fov": mfov, "cell_ID": mcell})
    if not legacy:
        tx["cell"] = [f"c_1_{f}_{c}" for f, c in zip(mfov, mcell)]
    tx["x_local_px"], tx["y_local_px"] = np.round(lx, 4), np.round(ly, 4)
    tx["x_global_px"], tx["y_global_px"] = np.round(gx, 4), np.round(gy, 4)
    if legacy:  # legacy column order: global before local
        tx = tx[["fov", "cell_ID", "x_global_px", "y_global_px", "x_local_px", "y_local_px"]]
    tx["z"], tx["target"], tx["CellComp"] = zplane, target, comp
    order = np.lexsort((mcell, mfov))
    tx = tx.iloc[order].reset_index(drop=True)

    # expression matrix: counts of the assigned molecules (+ background rows cell_ID 0)
    gene_cols = list(sample.gene_names) + sorted(set(ctrl_names), key=lambda s: (len(s), s))
    fovs_all = np.arange(1, n_rows * n_cols + 1)
    expr = tx.groupby(["fov", "cell_ID", "target"]).size().unstack("target", fill_value=0)
    expr = expr.reindex(columns=gene_cols, fill_value=0)
    want_rows = [(int(f), 0) for f in fovs_all] + [(int(cell_fov[i]), int(cell_local_id[i])) for i in range(n)]
    want_rows = sorted(set(want_rows))
    expr = expr.reindex(pd.MultiIndex.from_tuples(want_rows), fill_value=0)
    expr.index.names = ["fov", "cell_ID"]
    expr = expr.reset_index()

    # per-FOV images
    padded = {}
    for nm, arr in (("seg", seg), ("dapi", dapi), ("memb", memb)):
        pad = np.zeros((n_rows * fh, n_cols * fw), dtype=arr.dtype)
        pad[:H, :W] = arr
        padded[nm] = pad
    maxval = float(max(np.max(dapi), np.max(memb), 1))
    lab_map = np.zeros(int(max(seg.max(), label_of_cell.max(initial=0))) + 1, dtype=np.int64)
    desc = json.dumps({
        "ChannelOrder": "".join(COSMX_CHANNEL_ORDER),
        "Version": "stmorph-synthetic",
        "MorphologyChannels": [
            {"ChannelId": c, "BiologicalTarget": t, "Fluorophore": "synthetic"} for c, t in zip(COSMX_CHANNEL_ORDER, _TARGETS)
        ],
    })
    mean_names = _LEGACY_MEAN_NAMES if legacy else _ATOMX_MEAN_NAMES
    meta_rows = []
    lab_img: dict[int, np.ndarray] = {}
    morph_img: dict[int, np.ndarray] = {}
    comp_img: dict[int, np.ndarray] = {}
    for f in fovs_all:
        i, j = divmod(int(f) - 1, n_cols)
        win = (slice(i * fh, (i + 1) * fh), slice(j * fw, (j + 1) * fw))
        mine = np.flatnonzero(cell_fov == f)
        lab_map[:] = 0
        lab_map[label_of_cell[mine][label_of_cell[mine] > 0]] = cell_local_id[mine][label_of_cell[mine] > 0]
        lab = lab_map[padded["seg"][win]].astype(np.uint32)
        lab_img[int(f)] = lab
        noise = [rng.integers(20, 60, (fh, fw)).astype(np.uint16) for _ in range(3)]
        stack = np.stack([padded["memb"][win].astype(np.uint16), *noise, padded["dapi"][win].astype(np.uint16)])
        morph_img[int(f)] = stack
        rgb = np.zeros((fh, fw, 3), dtype=np.uint8)
        rgb[..., 0] = np.clip(padded["memb"][win] / maxval * 255, 0, 255).astype(np.uint8)
        rgb[..., 2] = np.clip(padded["dapi"][win] / maxval * 255, 0, 255).astype(np.uint8)
        comp_img[int(f)] = rgb
        ids = lab.ravel().astype(np.int64)
        area = np.bincount(ids, minlength=len(mine) + 1)
        sums = [np.bincount(ids, weights=ch.ravel().astype(np.float64), minlength=len(mine) + 1) for ch in stack]
        maxs = [pd.Series(ch.ravel()).groupby(ids).max().reindex(range(len(mine) + 1), fill_value=0).to_numpy()
                for ch in stack]
        rr, cc = np.nonzero(lab)
        vals = lab[rr, cc].astype(np.int64)
        bb = pd.DataFrame({"id": vals, "r": rr, "c": cc}).groupby("id").agg(r0=("r", "min"), r1=("r", "max"),
                                                                         c0=("c", "min"), c1=("c", "max"))
        left, top = fov_edges(np.array([f]))
        for k in mine:
            lid = int(cell_local_id[k])
            gxc, gyc = GX + cents[k, 0] + 0.5, GT - (cents[k, 1] + 0.5)
            lxc, lyc = local(np.array([gxc]), np.array([gyc]), np.array([f]))
            hgt = int(bb.at[lid, "r1"] - bb.at[lid, "r0"] + 1) if lid in bb.index else 0
            wid = int(bb.at[lid, "c1"] - bb.at[lid, "c0"] + 1) if lid in bb.index else 0
            row = {"fov": int(f), "cell_ID": lid, "Area": int(area[lid]),
                   "AspectRatio": round(wid / hgt, 2) if hgt else 0.0,
                   "CenterX_local_px": int(np.rint(lxc[0])), "CenterY_local_px": int(np.rint(lyc[0])),
                   "CenterX_global_px": round(float(gxc), 4), "CenterY_global_px": round(float(gyc), 4),
                   "Width": wid, "Height": hgt}
            for nm, s, mx in zip(mean_names, sums, maxs):
                row[f"Mean.{nm}"] = int(round(s[lid] / area[lid])) if area[lid] else 0
                row[f"Max.{nm}"] = int(mx[lid])
            if not legacy:
                row["cell_id"] = f"c_1_{int(f)}_{lid}"
            meta_rows.append(row)
    meta = pd.DataFrame(meta_rows)
    left, top = fov_edges(fovs_all)
    if legacy:
        fovpos = pd.DataFrame({"fov": fovs_all, "x_global_px": left, "y_global_px": top - fh})
    else:
        fovpos = pd.DataFrame({"FOV": fovs_all, "x_global_px": left, "y_global_px": top,
                               "x_global_mm": np.round(left * pixel_size / 1000.0, 7),
                               "y_global_mm": np.round(top * pixel_size / 1000.0, 7)})
    obs = sample.adata.obs
    truth = pd.DataFrame({
        "cell_id": [f"{int(f)}_{int(c)}" for f, c in zip(cell_fov, cell_local_id)],
        "cell_type": obs[label_key].astype(str).to_numpy(object) if label_key in obs else "unknown",
        "source_cell_id": np.asarray(sample.cell_ids, dtype=object),
    })
    gz = {"method": "gzip", "compresslevel": 1, "mtime": 0}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tx.to_csv(tmp / f"{run_name}_tx_file.csv.gz", index=False, compression=gz)
        fovpos.to_csv(tmp / f"{run_name}_fov_positions_file.csv.gz", index=False, compression=gz)
        meta.to_csv(tmp / f"{run_name}_metadata_file.csv.gz", index=False, compression=gz)
        expr.to_csv(tmp / f"{run_name}_exprMat_file.csv.gz", index=False, compression=gz)
        truth.to_csv(tmp / "cell_types.csv", index=False)
        for d in _IMAGE_DIRS.values():
            (tmp / d).mkdir()
        for f in fovs_all:
            tag = f"F{int(f):03d}"
            tifffile.imwrite(tmp / "CellLabels" / f"CellLabels_{tag}.tif", lab_img[int(f)])
            tifffile.imwrite(tmp / "Morphology2D" / f"{run_name}_{tag}.TIF", morph_img[int(f)], description=desc,
                             metadata=None, photometric="minisblack")
            Image.fromarray(comp_img[int(f)], mode="RGB").save(tmp / "CellComposite" / f"CellComposite_{tag}.jpg",
                                                               quality=90)
    return Path(out_dir)
