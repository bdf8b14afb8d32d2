"""The in-memory model of one imaging-based spatial transcriptomics sample.

A :class:`SpatialSample` holds

* ``adata`` - cells x genes counts (:class:`anndata.AnnData`). ``obs_names`` are the cell ids (strings),
  ``obs["cell_type"]`` holds the label when known, ``obsm["spatial"]`` the centroids **in image pixels** as
  ``[x, y]`` = ``[column, row]``.
* ``molecules`` - the molecule (transcript) table, a :class:`pandas.DataFrame` with columns ``x``, ``y``
  (pixels, float), ``gene`` (categorical), ``cell_id`` (string; ``<NA>`` = not assigned to a cell) and
  optionally ``z``.
* ``images`` - named stain channels (``"DAPI"``, ``"membrane"``, ...) as :class:`StainImage`, 2-D arrays read
  lazily from disk (memory-mapped where the TIFF allows it).
* ``pixel_size`` - micrometres per pixel, ``name`` and ``provenance`` (reader, files, parameters).

Pixel coordinates are the one coordinate system inside stmorph: readers convert micrometres to pixels once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .errors import StmorphInputError

__all__ = ["StainImage", "SpatialSample", "MoleculeIndex", "LABEL_KEY", "read_sample"]

#: Default ``obs`` column for cell-type labels.
LABEL_KEY = "cell_type"
_FORMAT_VERSION = 1


class StainImage:
    """One 2-D stain channel, read lazily.

    Parameters
    ----------
    source
        A path to a TIFF file (2-D image or a z-stack) or an in-memory 2-D array.
    z
        The z-plane to take from a stack (first axis of a 3-D image). Required to pick a plane from a stack;
        ``None`` with a 3-D stack is an error. Ignored for 2-D images.
    channel_axis
        Optional: for multi-channel TIFFs, the index along the first axis (after the z-plane) to use.

    Examples
    --------
    >>> img = StainImage(np.zeros((64, 64), dtype=np.uint16))
    >>> img.shape
    (64, 64)
    """

    def __init__(self, source: str | PathLike | np.ndarray, *, z: int | None = None, channel: int | None = None):
        self.z = None if z is None else int(z)
        self.channel = None if channel is None else int(channel)
        self._array: np.ndarray | None = None
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise StmorphInputError(
                    f"an in-memory stain image must be 2-D, got shape {source.shape}", expected="a (rows, columns) array"
                )
            self.path: Path | None = None
            self._array = source
        else:
            self.path = Path(source)
            if not self.path.exists():
                raise StmorphInputError("stain image not found", file=self.path, expected="an existing TIFF file")

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self) -> np.ndarray:
        """Return the 2-D plane (memory-mapped when possible, cached after the first call)."""
        if self._array is None:
            self._array = self._load()
        return self._array

    def _load(self) -> np.ndarray:
        import tifffile

        assert self.path is not None
        try:
            try:
                arr = tifffile.memmap(self.path, mode="r")
            except (ValueError, OSError, tifffile.TiffFileError):
                arr = tifffile.imread(self.path)
        except Exception as exc:  # unreadable or corrupt TIFF
            raise StmorphInputError(
                f"cannot read the stain image ({type(exc).__name__}: {exc})", file=self.path, expected="a readable TIFF"
            ) from exc
        arr = np.asarray(arr) if not isinstance(arr, np.memmap) else arr
        # squeeze singleton leading axes (e.g. (1, H, W))
        while arr.ndim > 2 and arr.shape[0] == 1 and self.z is None:
            arr = arr[0]
        if arr.ndim == 3:
            if self.z is None and self.channel is None:
                raise StmorphInputError(
                    f"the image is a stack of {arr.shape[0]} planes; choose one with z=",
                    file=self.path,
                    expected="a z-plane index",
                )
            idx = self.z if self.z is not None else self.channel
            if not 0 <= idx < arr.shape[0]:
                raise StmorphInputError(
                    f"plane {idx} is out of range for a stack of {arr.shape[0]} planes",
                    file=self.path,
                    expected=f"0 <= z < {arr.shape[0]}",
                )
            arr = arr[idx]
        elif arr.ndim == 4:
            if self.z is None or self.channel is None:
                raise StmorphInputError(
                    f"the image has shape {arr.shape}; give both z= and channel=", file=self.path, expected="z and channel"
                )
            if not (0 <= self.z < arr.shape[0] and 0 <= self.channel < arr.shape[1]):
                raise StmorphInputError(
                    f"(z={self.z}, channel={self.channel}) is out of range for shape {arr.shape}", file=self.path
                )
            arr = arr[self.z, self.channel]
        elif arr.ndim == 2:
            if self.z not in (None, 0):
                raise StmorphInputError(
                    f"z={self.z} was requested but the image is a single 2-D plane", file=self.path, expected="z=None or 0"
                )
        else:
            raise StmorphInputError(f"unsupported image shape {arr.shape}", file=self.path, expected="a 2-D image or a z-stack")
        return arr

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the plane."""
        return tuple(self.read().shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.read().dtype

    def to_spec(self) -> dict[str, Any]:
        """A JSON-serialisable reference to this image (used by :meth:`SpatialSample.write`)."""
        return {"path": None if self.path is None else str(self.path.resolve()), "z": self.z, "channel": self.channel}

    def __repr__(self) -> str:
        src = "in-memory" if self.path is None else str(self.path)
        z = "" if self.z is None else f", z={self.z}"
        return f"StainImage({src}{z})"


@dataclass(frozen=True)
class MoleculeIndex:
    """Assigned molecules grouped by cell (CSR layout), for fast per-cell rendering.

    Molecules of cell ``i`` (row ``i`` of ``adata``) are ``x[indptr[i]:indptr[i+1]]`` etc. ``gene`` holds
    integer codes into ``gene_names``; molecules of genes absent from ``gene_names`` are dropped.
    """

    x: np.ndarray  # float32 pixels (column)
    y: np.ndarray  # float32 pixels (row)
    gene: np.ndarray  # int32 code into gene_names
    indptr: np.ndarray  # int64, n_cells + 1
    gene_names: tuple[str, ...]

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    def counts_per_cell(self) -> np.ndarray:
        return np.diff(self.indptr)


@dataclass
class SpatialSample:
    """One spatial transcriptomics sample: counts, molecules, stain images and metadata.

    Parameters
    ----------
    adata
        Cells x genes counts; ``obs_names`` are cell ids; ``obsm["spatial"]`` pixel centroids ``[x, y]``.
    molecules
        Molecule table with ``x, y, gene, cell_id`` (and optional ``z``), pixel coordinates; may be ``None``.
    images
        Stain channels by name.
    pixel_size
        Micrometres per pixel (``None`` if unknown).
    name
        Sample name.
    provenance
        Where the sample came from (reader, files, arguments); stored with the sample.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue  # doctest: +SKIP
    >>> sample = synthetic_tissue(n_cells=200, random_state=0)  # doctest: +SKIP
    >>> sample.write("tissue.stmorph")  # doctest: +SKIP
    >>> SpatialSample.read("tissue.stmorph")  # doctest: +SKIP
    """

    adata: ad.AnnData
    molecules: pd.DataFrame | None = None
    images: dict[str, StainImage] = field(default_factory=dict)
    pixel_size: float | None = None
    name: str = "sample"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()
        self._molecule_index: MoleculeIndex | None = None

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return self.adata.n_obs

    @property
    def cell_ids(self) -> pd.Index:
        return self.adata.obs_names

    @property
    def gene_names(self) -> list[str]:
        """Gene order of the sample (``adata.var_names``): the order of spot planes."""
        return list(self.adata.var_names)

    @property
    def centroids(self) -> np.ndarray:
        """(n_cells, 2) centroids in pixels, ``[x, y]``."""
        return np.asarray(self.adata.obsm["spatial"], dtype=np.float64)

    @property
    def channel_names(self) -> list[str]:
        return list(self.images)

    def labels(self, key: str = LABEL_KEY) -> pd.Series | None:
        """The label column ``obs[key]``, or ``None`` when the sample has no labels."""
        return self.adata.obs[key] if key in self.adata.obs else None

    # -- validation ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the invariants of the data model; raise :class:`StmorphInputError` otherwise."""
        a = self.adata
        if not isinstance(a, ad.AnnData):
            raise StmorphInputError("adata must be an AnnData object", expected="anndata.AnnData")
        if not a.obs_names.is_unique:
            dup = a.obs_names[a.obs_names.duplicated()][:5].tolist()
            raise StmorphInputError(f"cell ids are not unique, e.g. {dup}", column="obs_names", expected="unique cell ids")
        if "spatial" not in a.obsm:
            raise StmorphInputError("adata.obsm['spatial'] (cell centroids in pixels) is missing", expected="(n_cells, 2) array")
        sp = np.asarray(a.obsm["spatial"])
        if sp.ndim != 2 or sp.shape[1] < 2:
            raise StmorphInputError(f"adata.obsm['spatial'] has shape {sp.shape}", expected="(n_cells, 2) [x, y] pixels")
        if not np.all(np.isfinite(sp[:, :2])):
            bad = a.obs_names[~np.all(np.isfinite(sp[:, :2]), axis=1)][:5].tolist()
            raise StmorphInputError(f"NaN/inf centroids for cells {bad}", column="obsm['spatial']", expected="finite pixel coordinates")
        if self.molecules is not None:
            m = self.molecules
            missing = [c for c in ("x", "y", "gene", "cell_id") if c not in m.columns]
            if missing:
                raise StmorphInputError(f"molecule table lacks columns {missing}", expected="x, y, gene, cell_id")
            if not isinstance(m["gene"].dtype, pd.CategoricalDtype):
                self.molecules = m = m.assign(gene=m["gene"].astype("category"))
        for k, img in self.images.items():
            if not isinstance(img, StainImage):
                raise StmorphInputError(f"image '{k}' must be a StainImage", expected="stmorph.StainImage")

    # -- molecules -------------------------------------------------------------------------------------------
    def molecule_index(self, genes: list[str] | None = None) -> MoleculeIndex:
        """Group assigned molecules by cell (rows of ``adata``) in CSR order.

        Parameters
        ----------
        genes
            Gene order of the codes; default the sample's :attr:`gene_names`. Molecules of other genes are dropped.
        """
        if self.molecules is None:
            raise StmorphInputError("this sample has no molecule table; spot planes need one", expected="sample.molecules")
        use_cache = genes is None
        if use_cache and self._molecule_index is not None:
            return self._molecule_index
        gene_names = tuple(self.gene_names if genes is None else genes)
        m = self.molecules
        cell_pos = pd.Index(self.cell_ids).get_indexer(m["cell_id"].astype("string").fillna("\x00__unassigned__"))
        gene_pos = pd.Index(gene_names).get_indexer(m["gene"].astype(str))
        keep = (cell_pos >= 0) & (gene_pos >= 0)
        cell_pos = cell_pos[keep]
        order = np.argsort(cell_pos, kind="stable")
        counts = np.bincount(cell_pos, minlength=self.n_cells)
        indptr = np.zeros(self.n_cells + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        idx = MoleculeIndex(
            x=m["x"].to_numpy(np.float32)[keep][order],
            y=m["y"].to_numpy(np.float32)[keep][order],
            gene=gene_pos[keep][order].astype(np.int32),
            indptr=indptr,
            gene_names=gene_names,
        )
        if use_cache:
            self._molecule_index = idx
        return idx

    # -- subsetting ------------------------------------------------------------------------------------------
    def subset(self, cells: np.ndarray | list | pd.Index) -> SpatialSample:
        """A new sample restricted to ``cells`` (ids or a boolean mask); molecules of other cells are unassigned."""
        if isinstance(cells, np.ndarray) and cells.dtype == bool:
            new = self.adata[cells].copy()
        else:
            new = self.adata[pd.Index(cells).astype(str)].copy()
        mol = None
        if self.molecules is not None:
            mol = self.molecules.copy()
            outside = ~mol["cell_id"].isin(new.obs_names)
            mol.loc[outside, "cell_id"] = pd.NA
        return SpatialSample(new, mol, dict(self.images), self.pixel_size, self.name, dict(self.provenance))

    # -- persistence -----------------------------------------------------------------------------------------
    def write(self, path: str | PathLike, *, copy_images: bool = False, overwrite: bool = False) -> Path:
        """Write the sample to a folder: ``cells.h5ad``, ``molecules.parquet``, ``images/``, ``sample.json``.

        File-backed images are stored as references (absolute paths) unless ``copy_images``; in-memory images are
        always written as TIFF into ``images/``. The folder is written beside its final place and moved there in
        one step, so a failed write leaves nothing half-written.
        """
        import tifffile

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(f".{path.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "images").mkdir(parents=True)
        try:
            self.adata.write_h5ad(tmp / "cells.h5ad")
            if self.molecules is not None:
                self.molecules.to_parquet(tmp / "molecules.parquet", index=False)
            specs = {}
            for name, img in self.images.items():
                spec = img.to_spec()
                if img.path is None or copy_images:
                    fname = f"images/{_safe_name(name)}.tif"
                    tifffile.imwrite(tmp / fname, np.ascontiguousarray(img.read()))
                    spec = {"path": fname, "z": None, "channel": None, "relative": True}
                specs[name] = spec
            meta = {
                "format": "stmorph.SpatialSample",
                "version": _FORMAT_VERSION,
                "name": self.name,
                "pixel_size": self.pixel_size,
                "images": specs,
                "provenance": _jsonable(self.provenance),
            }
            (tmp / "sample.json").write_text(json.dumps(meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def read(cls, path: str | PathLike) -> SpatialSample:
        """Read a sample written by :meth:`write`."""
        path = Path(path)
        meta_file = path / "sample.json"
        if not meta_file.exists():
            raise StmorphInputError("not a stmorph sample folder (sample.json missing)", file=path, expected="a folder from SpatialSample.write")
        meta = json.loads(meta_file.read_text())
        adata = ad.read_h5ad(path / "cells.h5ad")
        mol_file = path / "molecules.parquet"
        molecules = pd.read_parquet(mol_file) if mol_file.exists() else None
        images = {}
        for name, spec in meta.get("images", {}).items():
            p = Path(spec["path"])
            if spec.get("relative"):
                p = path / p
            images[name] = StainImage(p, z=spec.get("z"), channel=spec.get("channel"))
        return cls(adata, molecules, images, meta.get("pixel_size"), meta.get("name", path.stem), meta.get("provenance", {}))

    def __repr__(self) -> str:
        n_mol = 0 if self.molecules is None else len(self.molecules)
        lab = self.labels()
        lab_s = f", {lab.nunique()} labels" if lab is not None else ""
        ps = f", {self.pixel_size} um/px" if self.pixel_size else ""
        return (
            f"SpatialSample '{self.name}': {self.n_cells} cells x {self.adata.n_vars} genes{lab_s}, "
            f"{n_mol} molecules, images {self.channel_names}{ps}"
        )


def read_sample(path: str | PathLike) -> SpatialSample:
    """Read a sample folder written by :meth:`SpatialSample.write`."""
    return SpatialSample.read(path)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)
