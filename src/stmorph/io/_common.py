"""Shared helpers of the readers: table loading, id normalisation, counts from molecules, labels, reports, and the
sample every reader ends with (:func:`finish_sample`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._image import Segmentation
from ..errors import StmorphInputError
from ..sample import LABEL_ID_KEY, LABEL_KEY, SpatialSample, StainImage

logger = logging.getLogger("stmorph.io")

#: Feature-name prefixes of control probes/codewords (Xenium, MERSCOPE, CosMx); excluded from genes by default.
CONTROL_PREFIXES: tuple[str, ...] = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "BLANK_",
    "Blank-",
    "UnassignedCodeword_",
    "DeprecatedCodeword_",
    "Intergenic",
    "NegPrb",
    "SystemControl",
    "FalseCode",
)

#: Above this many matrix entries, counts are stored as a CSR sparse matrix instead of a dense float32 array.
DENSE_LIMIT = 50_000_000

_INT_FLOAT = re.compile(r"^-?\d+\.0+$")


class Report:
    """Collects what a reader dropped or changed; every note is logged (``logging.warning``) and kept.

    The notes end up in ``sample.provenance["report"]`` as ``{key: {"count": n, "message": text}}``.
    """

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.notes: dict[str, dict[str, Any]] = {}

    def warn(self, key: str, count: int, message: str) -> None:
        """Record ``count`` items affected by ``message`` (nothing when ``count`` is 0)."""
        count = int(count)
        if count <= 0:
            return
        self.notes[key] = {"count": count, "message": message}
        logger.warning("%s: %s", self.reader, message)

    def info(self, key: str, value: Any) -> None:
        """Record a fact without warning (e.g. how many control probes were kept out)."""
        self.notes[key] = value

    def as_dict(self) -> dict[str, Any]:
        return dict(self.notes)


# ---------------------------------------------------------------------------------------------------------
# files and tables
# ---------------------------------------------------------------------------------------------------------
def as_dir(path: str | PathLike, *, what: str) -> Path:
    """``path`` as an existing folder, or a clear error."""
    p = Path(path)
    if not p.exists():
        raise StmorphInputError(f"{what} folder not found", file=p, expected="an existing folder")
    if not p.is_dir():
        raise StmorphInputError(f"{what} reader expects a folder, got a file", file=p, expected="a folder")
    return p


def find_file(folder: Path, names: Sequence[str], *, required: bool, what: str) -> Path | None:
    """The first of ``names`` that exists in ``folder`` (names may be absolute paths)."""
    for name in names:
        p = Path(name)
        p = p if p.is_absolute() else folder / p
        if p.exists():
            return p
    if required:
        tried = ", ".join(str(n) for n in names)
        raise StmorphInputError(f"{what} not found (looked for {tried})", file=folder, expected=tried)
    return None


def read_table(path: Path, *, columns: Iterable[str] | None = None, dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read a csv / csv.gz / tsv / tsv.gz / parquet table; ``columns`` are required columns (clear error if absent)."""
    name = path.name.lower()
    if not path.exists():
        raise StmorphInputError("table not found", file=path, expected="an existing csv/tsv/parquet file")
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            df = pd.read_parquet(path)
        else:
            sep = "\t" if (name.endswith(".tsv") or name.endswith(".tsv.gz") or name.endswith(".txt")) else ","
            df = pd.read_csv(path, sep=sep, dtype=dtype, low_memory=False)
    except StmorphInputError:
        raise
    except Exception as exc:
        raise StmorphInputError(
            f"cannot read the table ({type(exc).__name__}: {exc})", file=path, expected="a csv/tsv/parquet table"
        ) from exc
    if columns is not None:
        require_columns(df, columns, file=path)
    return df


def require_columns(df: pd.DataFrame, columns: Iterable[str], *, file: str | PathLike) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = ", ".join(map(str, list(df.columns)[:12]))
        raise StmorphInputError(
            f"missing column(s) {missing}; the table has: {have}", file=file, column=str(missing[0]),
            expected=", ".join(map(str, columns)),
        )


def normalize_ids(values: pd.Series | Sequence[Any], unassigned: Iterable[Any] = ()) -> pd.Series:
    """Cell ids as pandas ``string``: stripped, ``"12.0"`` -> ``"12"``, bytes decoded, unassigned/empty -> ``<NA>``."""
    s = pd.Series(values).reset_index(drop=True) if not isinstance(values, pd.Series) else values.reset_index(drop=True)
    if s.dtype == object and len(s) and isinstance(s.iloc[0], bytes):
        s = s.map(lambda v: v.decode() if isinstance(v, bytes) else v)
    if pd.api.types.is_float_dtype(s.dtype):
        arr = s.to_numpy(dtype=np.float64)
        integral = np.isfinite(arr) & (np.mod(arr, 1.0) == 0)
        out = s.astype(object)
        out[integral] = arr[integral].astype(np.int64).astype(str)
        out[~np.isfinite(arr)] = None
        s = out
    s = s.astype("string").str.strip()
    ints = s.str.match(_INT_FLOAT.pattern).fillna(False).to_numpy(dtype=bool)
    if ints.any():
        s[ints] = s[ints].str.replace(r"\.0+$", "", regex=True)
    bad = {str(u) for u in unassigned} | {""}
    s = s.mask(s.isin(list(bad)))
    return s.rename(None)


def decode_strings(s: pd.Series) -> pd.Series:
    """Decode a bytes column (Xenium parquet) into ``str``."""
    if s.dtype == object and len(s) and isinstance(s.iloc[0], bytes | bytearray):
        return s.map(lambda v: v.decode() if isinstance(v, bytes | bytearray) else v)
    return s


def is_control(genes: pd.Series | pd.Index | Sequence[str], prefixes: Sequence[str] = CONTROL_PREFIXES) -> np.ndarray:
    """Boolean mask of control probe names (prefix match)."""
    g = pd.Series(list(genes), dtype="string")
    if not len(prefixes):
        return np.zeros(len(g), dtype=bool)
    return g.str.startswith(tuple(prefixes)).fillna(False).to_numpy(dtype=bool)


def to_bool(s: pd.Series, *, file: str | PathLike, column: str) -> np.ndarray:
    """Parse a boolean column written as bool, 0/1 or true/false strings."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.fillna(0).to_numpy() != 0
    low = s.astype("string").str.strip().str.lower()
    known = low.isin(["true", "false", "1", "0", "t", "f", "yes", "no"]) | low.isna()
    if not known.all():
        bad = low[~known].unique()[:5].tolist()
        raise StmorphInputError(f"values {bad} are not booleans", file=file, column=column, expected="true/false or 1/0")
    return low.isin(["true", "1", "t", "yes"]).fillna(False).to_numpy(dtype=bool)


# ---------------------------------------------------------------------------------------------------------
# molecules, counts, centroids
# ---------------------------------------------------------------------------------------------------------
def drop_nan_coordinates(mol: pd.DataFrame, report: Report, *, file: str | PathLike) -> pd.DataFrame:
    """Drop molecules whose x or y is NaN/inf (warned and counted); error when none is left."""
    ok = np.isfinite(mol["x"].to_numpy(dtype=np.float64)) & np.isfinite(mol["y"].to_numpy(dtype=np.float64))
    n_bad = int((~ok).sum())
    if n_bad and n_bad == len(mol):
        raise StmorphInputError("every molecule has a NaN coordinate", file=file, column="x/y", expected="finite coordinates")
    report.warn("molecules_nan_coordinates", n_bad, f"dropped {n_bad} molecules with NaN/inf coordinates ({file})")
    return mol.loc[ok] if n_bad else mol


def check_inside_image(
    x: np.ndarray, y: np.ndarray, shape: tuple[int, int] | None, report: Report, *, what: str, file: str | PathLike
) -> None:
    """Warn (and count) points outside an image of ``shape`` = (rows, columns); error when all are outside."""
    if shape is None or len(x) == 0:
        return
    h, w = shape
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    n_out = int((~inside).sum())
    if n_out == len(x):
        raise StmorphInputError(
            f"all {len(x)} {what} lie outside the {h} x {w} image: check pixel_size / origin / the image",
            file=file,
            expected=f"pixel coordinates inside 0..{w} (x) and 0..{h} (y)",
        )
    report.warn(f"{what.replace(' ', '_')}_outside_image", n_out, f"{n_out} of {len(x)} {what} lie outside the {h} x {w} image")


def counts_from_molecules(cell_ids: pd.Series, genes: pd.Series, cells: pd.Index, gene_names: pd.Index) -> Any:
    """Cells x genes count matrix from assigned molecules (unknown cells/genes ignored)."""
    ci = cells.get_indexer(cell_ids.astype("string").fillna("\x00__none__"))
    gi = gene_names.get_indexer(genes.astype(str))
    keep = (ci >= 0) & (gi >= 0)
    m = sp.coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (ci[keep], gi[keep])), shape=(len(cells), len(gene_names))
    ).tocsr()
    m.sum_duplicates()
    return finalize_matrix(m)


def finalize_matrix(m: Any) -> Any:
    """Dense float32 for moderate sizes, CSR float32 above :data:`DENSE_LIMIT` entries."""
    n = m.shape[0] * m.shape[1]
    if sp.issparse(m):
        m = m.astype(np.float32)
        return m.toarray() if n <= DENSE_LIMIT else sp.csr_matrix(m)
    m = np.asarray(m, dtype=np.float32)
    return m if n <= DENSE_LIMIT else sp.csr_matrix(m)


def unassign_unknown_cells(
    mol: pd.DataFrame,
    assigned: pd.Index,
    cells: pd.Index,
    *,
    report: Report,
    file: Path,
    column: str,
    what: str = "molecule",
) -> None:
    """Reconcile the molecule table's cell ids with a cell table, in place.

    Molecules of cells absent from the cell table become unassigned (counted in ``report``); an error is raised
    when no assigned cell id is in the cell table at all (a mismatched id format, usually).
    """
    unknown = assigned.difference(cells)
    if len(assigned) and len(unknown) == len(assigned):
        raise StmorphInputError(
            f"no {what} cell id is in the cell table (e.g. {assigned[:3].tolist()} vs {cells[:3].tolist()})",
            file=file,
            column=column,
            expected=f"the cell ids of the {what} table",
        )
    if len(unknown):
        lost = mol["cell_id"].isin(unknown).fillna(False).to_numpy(bool)
        report.warn(
            "molecules_of_unknown_cells", int(lost.sum()),
            f"{int(lost.sum())} {what}s are assigned to {len(unknown)} cells absent from {file.name}; unassigned",
        )
        mol.loc[lost, "cell_id"] = pd.NA


def centroids_from_molecules(mol: pd.DataFrame, cells: pd.Index) -> np.ndarray:
    """Mean molecule position per cell, (n_cells, 2) ``[x, y]``; NaN for cells without molecules."""
    ci = cells.get_indexer(mol["cell_id"].astype("string").fillna("\x00__none__"))
    keep = ci >= 0
    n = np.bincount(ci[keep], minlength=len(cells)).astype(np.float64)
    sx = np.bincount(ci[keep], weights=mol["x"].to_numpy(np.float64)[keep], minlength=len(cells))
    sy = np.bincount(ci[keep], weights=mol["y"].to_numpy(np.float64)[keep], minlength=len(cells))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.column_stack([sx / n, sy / n])


def make_molecules(
    x: np.ndarray, y: np.ndarray, gene: pd.Series, cell_id: pd.Series, z: np.ndarray | None = None, **extra: Any
) -> pd.DataFrame:
    """The molecule table in stmorph's layout (float32 pixels, categorical gene, string cell id, RangeIndex)."""
    data: dict[str, Any] = {
        "x": np.asarray(x, dtype=np.float32),
        "y": np.asarray(y, dtype=np.float32),
        "gene": pd.Categorical(np.asarray(gene, dtype=object).astype(str)),
        "cell_id": pd.array(cell_id, dtype="string"),
    }
    if z is not None:
        data["z"] = np.asarray(z, dtype=np.float32)
    for k, v in extra.items():
        data[k] = np.asarray(v)
    return pd.DataFrame(data)


def finalize_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Make ``obs`` h5ad-safe and stable across a write/read: strings -> categoricals, string index."""
    obs = obs.copy()
    obs.index = pd.Index(obs.index.astype(str), dtype=object, name=None)
    for c in list(obs.columns):
        s = obs[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            continue
        if pd.api.types.is_bool_dtype(s.dtype):
            obs[c] = s.astype(bool)
        elif s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            obs[c] = pd.Categorical(s.astype("string").astype(object))
    obs.columns = [str(c) for c in obs.columns]
    return obs


def build_adata(
    X: Any, cells: pd.Index, genes: pd.Index, centroids: np.ndarray, obs: pd.DataFrame | None = None
) -> ad.AnnData:
    """AnnData with counts, string cell ids, string gene names and ``obsm["spatial"]``."""
    obs = pd.DataFrame(index=cells) if obs is None else obs.reindex(cells)
    obs = finalize_obs(obs)
    var = pd.DataFrame(index=pd.Index([str(g) for g in genes], dtype=object))
    a = ad.AnnData(X=finalize_matrix(X), obs=obs, var=var)
    a.obsm["spatial"] = np.asarray(centroids, dtype=np.float64)
    return a


def label_series(values: pd.Series | np.ndarray, ids: pd.Series | Sequence[Any]) -> pd.Series:
    """A label table's labels indexed by its cell ids, normalised (:func:`normalize_ids`; no id -> ``<NA>``)."""
    return pd.Series(np.asarray(values), index=pd.Index(normalize_ids(ids).astype(object)))


def unassign_dropped_cells(mol: pd.DataFrame, adata: ad.AnnData) -> None:
    """Molecules of cells that are no longer in ``adata`` become unassigned (``cell_id`` ``<NA>``), in place."""
    mol.loc[~mol["cell_id"].isin(adata.obs_names).fillna(False).to_numpy(bool), "cell_id"] = pd.NA


def apply_labels(
    adata: ad.AnnData,
    labels: pd.Series,
    report: Report,
    *,
    file: str | PathLike,
    exclude_labels: Sequence[str],
    key: str = LABEL_KEY,
    molecules: pd.DataFrame | None = None,
) -> ad.AnnData:
    """Join ``labels`` (index = cell id) into ``obs[key]``; keep the intersection, drop excluded labels (reported).

    Labels without a cell id are ignored. With ``molecules``, the molecules of the cells dropped here become
    unassigned (in place).
    """
    labels = labels[labels.index.notna()]
    labels = labels[~labels.index.duplicated(keep="first")]
    common = adata.obs_names.intersection(labels.index, sort=False)
    if len(common) == 0:
        raise StmorphInputError(
            f"no cell id of the label table matches the counts (e.g. labels {labels.index[:3].tolist()} vs "
            f"cells {adata.obs_names[:3].tolist()})",
            file=file,
            expected="the same cell ids as the counts table",
        )
    n_unlab = adata.n_obs - len(common)
    report.warn("cells_without_label", n_unlab, f"dropped {n_unlab} cells missing from the label table {Path(file).name}")
    n_extra = len(labels) - len(common)
    report.warn("labels_without_cell", n_extra, f"{n_extra} ids of the label table {Path(file).name} are not cells; ignored")
    lab = labels.reindex(common).astype("string")
    nan_lab = lab.isna()
    report.warn("cells_nan_label", int(nan_lab.sum()), f"dropped {int(nan_lab.sum())} cells with an empty label")
    excluded = lab.isin(list(exclude_labels)).fillna(False)
    n_ex = int(excluded.sum())
    report.warn("cells_excluded_label", n_ex, f"dropped {n_ex} cells labelled {list(exclude_labels)}")
    keep = (~nan_lab & ~excluded).to_numpy(dtype=bool)
    if not keep.any():
        raise StmorphInputError("no labelled cell is left after excluding labels", file=file, expected="some kept labels")
    kept = common[keep]
    out = adata[kept].copy()
    out.obs[key] = pd.Categorical(lab[keep].astype(object).to_numpy())
    if molecules is not None:
        unassign_dropped_cells(molecules, out)
    return out


def set_label_ids(adata: ad.AnnData, label_ids: np.ndarray, report: Report, *, no_mask: str) -> None:
    """Store each cell's label in the segmentation (``obs["label_id"]``, 0 = no mask); count the cells without one.

    ``no_mask`` says what those cells lack, for the report: ``"{n} cells have no {no_mask} (label_id 0)"``.
    """
    adata.obs[LABEL_ID_KEY] = label_ids
    n = int((np.asarray(label_ids) == 0).sum())
    report.warn("cells_without_mask", n, f"{n} cells have no {no_mask} (label_id 0)")


def finish_sample(
    adata: ad.AnnData,
    molecules: pd.DataFrame | None,
    images: dict[str, StainImage],
    pixel_size: float | None,
    name: str,
    provenance: dict[str, Any],
    report: Report,
    segmentation: Segmentation | None = None,
    *,
    count_molecules: bool = True,
) -> SpatialSample:
    """The reader's :class:`~stmorph.SpatialSample`, its provenance closed with the sizes and the report.

    ``provenance`` (reader, path, files, options) gets ``n_cells``, ``n_genes``, ``n_molecules`` (unless
    ``count_molecules`` is false: a reader of per-cell tables only) and ``report`` (:meth:`Report.as_dict`).
    """
    prov = dict(provenance)
    prov["n_cells"] = int(adata.n_obs)
    prov["n_genes"] = int(adata.n_vars)
    if count_molecules:
        prov["n_molecules"] = 0 if molecules is None else int(len(molecules))
    prov["report"] = report.as_dict()
    return SpatialSample(adata, molecules, images, pixel_size, name, prov, segmentation)


def drop_nan_centroids(adata: ad.AnnData, report: Report, *, file: str | PathLike) -> ad.AnnData:
    """Drop cells whose centroid is NaN (reported); error when none is left."""
    ok = np.all(np.isfinite(np.asarray(adata.obsm["spatial"], dtype=np.float64)), axis=1)
    if not ok.any():
        raise StmorphInputError("every cell centroid is NaN", file=file, column="x/y", expected="finite centroids")
    n_bad = int((~ok).sum())
    report.warn("cells_nan_centroid", n_bad, f"dropped {n_bad} cells with a NaN centroid ({Path(file).name})")
    return adata[ok].copy() if n_bad else adata


def restrict_genes(adata: ad.AnnData, genes: Sequence[str] | None, *, file: str | PathLike) -> ad.AnnData:
    """Keep only ``genes`` (in that order); error naming genes that the sample does not have."""
    if genes is None:
        return adata
    genes = [str(g) for g in genes]
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise StmorphInputError(
            f"{len(missing)} requested gene(s) are absent, e.g. {missing[:5]}", file=file, column="gene",
            expected="gene names present in the data",
        )
    return adata[:, genes].copy()


def image_shape(path: Path) -> tuple[int, ...]:
    """Shape of the first series of a TIFF without reading the pixels; clear error when unreadable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return tuple(int(v) for v in tf.series[0].shape)
    except Exception as exc:
        raise StmorphInputError(
            f"cannot read the stain image ({type(exc).__name__}: {exc})", file=path, expected="a readable TIFF"
        ) from exc


def open_stack(path: Path, z: int | None, *, report: Report, name: str) -> tuple[StainImage, int | None]:
    """A :class:`StainImage` of one plane of a (Z, H, W) stack (middle plane by default) or of a 2-D image."""
    shape = image_shape(path)
    if len(shape) == 2:
        if z not in (None, 0):
            raise StmorphInputError(f"z={z} was requested but the image is a single 2-D plane", file=path, expected="z=None or 0")
        return StainImage(path), None
    if len(shape) != 3:
        raise StmorphInputError(f"unsupported image shape {shape}", file=path, expected="a 2-D image or a (Z, H, W) stack")
    nz = shape[0]
    if z is None:
        z = nz // 2
        report.info(f"{name}_z", {"z": z, "n_planes": nz, "chosen": "middle plane"})
    elif not 0 <= int(z) < nz:
        raise StmorphInputError(f"z-plane {z} is out of range for a stack of {nz} planes", file=path, expected=f"0 <= z < {nz}")
    else:
        report.info(f"{name}_z", {"z": int(z), "n_planes": nz, "chosen": "argument"})
    img = StainImage(path, z=int(z))
    return img, int(z)


def plane_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) of a 2-D image or of one plane of a stack."""
    shape = image_shape(path)
    return (shape[-2], shape[-1])

