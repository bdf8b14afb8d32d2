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
* ``segmentation`` - the cell segmentation on the stains' pixel grid, read lazily: a :class:`LabelImage`
  (raster of labels) or a :class:`PolygonSegmentation` (cell polygons rasterised on demand); ``.read()`` returns
  the 2-D label array. ``obs["label_id"]`` holds each cell's label value in it (0 = the cell has no mask).
* ``pixel_size`` - micrometres per pixel, ``name`` and ``provenance`` (reader, files, parameters).

Pixel coordinates are the one coordinate system inside stmorph: readers convert micrometres to pixels once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from ._atomic import atomic_dir
from ._image import LabelImage, PolygonSegmentation, Segmentation, StainImage
from ._utils import jsonable
from .errors import StmorphInputError

__all__ = [
    "StainImage", "LabelImage", "PolygonSegmentation", "SpatialSample", "MoleculeIndex", "LABEL_KEY", "LABEL_ID_KEY",
    "read_sample", "resolve_channels", "CHANNEL_ROLES", "missing_modality",
]

#: Default ``obs`` column for cell-type labels.
LABEL_KEY = "cell_type"
#: ``obs`` column with each cell's label value in :attr:`SpatialSample.segmentation` (0 = no mask).
LABEL_ID_KEY = "label_id"
_FORMAT_VERSION = 2

#: What :meth:`SpatialSample.require` checks: modality -> (what the message says is missing, default ``expected``).
_MODALITIES: dict[str, tuple[str, str]] = {
    "molecules": ("molecule table", "sample.molecules (x, y, gene, cell_id)"),
    "segmentation": ("segmentation", "sample.segmentation"),
    "images": ("stain images", "at least one channel in sample.images"),
}

Modality = Literal["molecules", "segmentation", "images"]


def missing_modality(
    modality: Modality,
    channel: str | None = None,
    *,
    prefix: str = "",
    suffix: str = "",
    expected: str | None = None,
    file: str | PathLike | None = None,
) -> StmorphInputError:
    """The error raised when a sample lacks a modality: ``"{prefix}the sample has no {what}{suffix}"``.

    One wording for every consumer (crops, features, writers, the distributed engine); :meth:`SpatialSample.require`
    raises it. Code holding no :class:`SpatialSample` (a sample folder read lazily) raises it directly.

    Parameters
    ----------
    modality
        ``"molecules"`` (the molecule table), ``"segmentation"`` or ``"images"`` (stain images).
    channel
        With ``"images"``: the one channel needed (``"the sample has no 'DAPI' image"``).
    prefix, suffix
        Text before / after the sentence (``"masks were asked for but "``, ``"; spot planes need one"``).
    expected
        What was expected instead; default per modality (``sample.images['DAPI']`` for a channel).
    file
        The file that lacks it, if any.

    Returns
    -------
    StmorphInputError

    Examples
    --------
    >>> str(missing_modality("molecules", suffix="; spot planes need one", expected="sample.molecules"))
    'the sample has no molecule table; spot planes need one (expected: sample.molecules)'
    """
    if modality not in _MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {list(_MODALITIES)}")
    what, default = _MODALITIES[modality]
    if channel is not None:
        what, default = f"'{channel}' image", f"sample.images['{channel}']"
    return StmorphInputError(f"{prefix}the sample has no {what}{suffix}", file=file,
                             expected=default if expected is None else expected)


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
    segmentation
        Optional cell segmentation on the stains' grid (:class:`LabelImage` or :class:`PolygonSegmentation`);
        ``obs["label_id"]`` then gives each cell's label in it.

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
    segmentation: Segmentation | None = None

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

    @property
    def has_segmentation(self) -> bool:
        """Whether the sample carries a cell segmentation."""
        return self.segmentation is not None

    def label_ids(self) -> np.ndarray:
        """Each cell's label value in :attr:`segmentation` (``obs["label_id"]``; 0 = no mask), as int64."""
        self.require("segmentation", expected="a reader that loads one, or sample.segmentation = ...")
        if LABEL_ID_KEY not in self.adata.obs:
            raise StmorphInputError(
                f"the sample has a segmentation but no obs['{LABEL_ID_KEY}']", column=LABEL_ID_KEY,
                expected="each cell's label value in the segmentation",
            )
        return self.adata.obs[LABEL_ID_KEY].to_numpy().astype(np.int64)

    def require(
        self, modality: Modality, channel: str | None = None, *, prefix: str = "", suffix: str = "",
        expected: str | None = None,
    ) -> Any:
        """The sample's molecules, segmentation, images or one image; a clear error when it has none.

        Parameters
        ----------
        modality
            ``"molecules"``, ``"segmentation"`` or ``"images"``.
        channel
            With ``"images"``: the channel needed.
        prefix, suffix, expected
            Wording of the error, see :func:`missing_modality`.

        Returns
        -------
        :attr:`molecules` (a DataFrame), :attr:`segmentation`, :attr:`images` (a non-empty dict) or
        ``images[channel]``.

        Raises
        ------
        StmorphInputError
            ``"the sample has no molecule table"`` (``segmentation``, ``stain images``, ``'DAPI' image``).

        Examples
        --------
        >>> from stmorph.datasets import demo_tissue  # doctest: +SKIP
        >>> demo_tissue().require("images", "DAPI").shape  # doctest: +SKIP
        """
        if modality == "molecules":
            value: Any = self.molecules
        elif modality == "segmentation":
            value = self.segmentation
        elif modality == "images":
            value = self.images.get(channel) if channel is not None else (self.images or None)
        else:
            raise ValueError(f"unknown modality {modality!r}; expected one of {list(_MODALITIES)}")
        if value is None:
            raise missing_modality(modality, channel, prefix=prefix, suffix=suffix, expected=expected)
        return value

    def copy(self, *, adata: bool = True) -> SpatialSample:
        """A new sample sharing molecules, images and segmentation (``adata`` copied unless ``adata=False``)."""
        return SpatialSample(
            self.adata.copy() if adata else self.adata, self.molecules, dict(self.images), self.pixel_size, self.name,
            dict(self.provenance), self.segmentation,
        )

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
        seg = self.segmentation
        if seg is not None and not isinstance(seg, LabelImage | PolygonSegmentation):
            raise StmorphInputError(
                f"segmentation must be a LabelImage or PolygonSegmentation, got {type(seg).__name__}",
                expected="stmorph.LabelImage / stmorph.PolygonSegmentation",
            )
        if LABEL_ID_KEY in a.obs:
            lid = a.obs[LABEL_ID_KEY]
            if not pd.api.types.is_integer_dtype(lid.dtype) or (lid.to_numpy() < 0).any():
                raise StmorphInputError(
                    f"obs['{LABEL_ID_KEY}'] must hold non-negative integer labels, got {lid.dtype}",
                    column=LABEL_ID_KEY, expected="int labels of the segmentation (0 = no mask)",
                )

    # -- molecules -------------------------------------------------------------------------------------------
    def molecule_index(self, genes: list[str] | None = None) -> MoleculeIndex:
        """Group assigned molecules by cell (rows of ``adata``) in CSR order.

        Parameters
        ----------
        genes
            Gene order of the codes; default the sample's :attr:`gene_names`. Molecules of other genes are dropped.
        """
        self.require("molecules", suffix="; spot planes need one", expected="sample.molecules")
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
        return SpatialSample(new, mol, dict(self.images), self.pixel_size, self.name, dict(self.provenance),
                             self.segmentation)

    # -- persistence -----------------------------------------------------------------------------------------
    def write(self, path: str | PathLike, *, copy_images: bool = False, overwrite: bool = False) -> Path:
        """Write the sample to a folder: ``cells.h5ad``, ``molecules.parquet``, ``images/``, ``sample.json``.

        File-backed images are stored as references (absolute paths) unless ``copy_images``; in-memory images are
        always written as TIFF into ``images/``. The folder is written beside its final place and moved there in
        one step, so a failed write leaves nothing half-written.
        """
        import tifffile

        path = Path(path)
        with atomic_dir(path, overwrite=overwrite, unique=False) as tmp:
            (tmp / "images").mkdir()
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
            seg_spec = None
            seg = self.segmentation
            if isinstance(seg, PolygonSegmentation):
                seg.vertices.to_parquet(tmp / "segmentation.parquet", index=False)
                seg_spec = {"kind": "polygons", "path": "segmentation.parquet", "shape": list(seg.shape),
                            "relative": True}
            elif isinstance(seg, LabelImage):
                seg_spec = {"kind": "raster", **seg.to_spec()}
                if seg.path is None or copy_images:
                    # uncompressed, so that reading it back memory-maps instead of loading the grid
                    tifffile.imwrite(tmp / "segmentation.tif", np.ascontiguousarray(seg.read()))
                    seg_spec = {"kind": "raster", "path": "segmentation.tif", "z": None, "channel": None,
                                "relative": True}
            meta = {
                "format": "stmorph.SpatialSample",
                "version": _FORMAT_VERSION,
                "name": self.name,
                "pixel_size": self.pixel_size,
                "images": specs,
                "segmentation": seg_spec,
                "provenance": jsonable(self.provenance),
            }
            (tmp / "sample.json").write_text(json.dumps(meta, indent=2))
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
            images[name] = StainImage(p, z=spec.get("z"), channel=spec.get("channel"), component=spec.get("component"))
        segmentation: Segmentation | None = None
        seg_spec = meta.get("segmentation")
        if seg_spec:
            p = Path(seg_spec["path"])
            p = path / p if seg_spec.get("relative") else p
            if seg_spec.get("kind") == "polygons":
                segmentation = PolygonSegmentation(pd.read_parquet(p), tuple(seg_spec["shape"]))
            else:
                segmentation = LabelImage(p, z=seg_spec.get("z"), channel=seg_spec.get("channel"),
                                          component=seg_spec.get("component"))
        return cls(adata, molecules, images, meta.get("pixel_size"), meta.get("name", path.stem),
                   meta.get("provenance", {}), segmentation)

    def __repr__(self) -> str:
        n_mol = 0 if self.molecules is None else len(self.molecules)
        lab = self.labels()
        lab_s = f", {lab.nunique()} labels" if lab is not None else ""
        ps = f", {self.pixel_size} um/px" if self.pixel_size else ""
        seg = ", segmentation" if self.segmentation is not None else ""
        return (
            f"SpatialSample '{self.name}': {self.n_cells} cells x {self.adata.n_vars} genes{lab_s}, "
            f"{n_mol} molecules, images {self.channel_names}{ps}{seg}"
        )

    def summary(self) -> dict[str, Any]:
        """Plain facts about the sample (``stmorph info --json``)."""
        lab = self.labels()
        return {
            "name": self.name,
            "n_cells": int(self.n_cells),
            "n_genes": int(self.adata.n_vars),
            "n_molecules": 0 if self.molecules is None else int(len(self.molecules)),
            "channels": self.channel_names,
            "pixel_size": self.pixel_size,
            "has_segmentation": self.segmentation is not None,
            "segmentation": None if self.segmentation is None else self.segmentation.kind,
            "image_shape": list(self.images[self.channel_names[0]].shape) if self.images else None,
            "n_labels": None if lab is None else int(lab.nunique()),
            "labels": None if lab is None else {str(k): int(v) for k, v in lab.value_counts().items()},
            "reader": self.provenance.get("reader"),
        }


#: Stain roles that presets ask for, and the channel names that fill them in vendor exports (lower case, tried in
#: this order; a channel matches when its name contains the alias). "membrane": CosMx "Membrane"/"CD298_B2M",
#: MERSCOPE "Cellbound1..3", Xenium "ATP1A1/CD45/E-Cadherin" (boundary stain).
CHANNEL_ROLES: dict[str, tuple[str, ...]] = {
    "DAPI": ("dapi", "hoechst", "dna", "nucle"),
    "membrane": ("membrane", "cellbound1", "cellbound", "boundary", "atp1a1", "cadherin", "cd298", "b2m", "wga",
                 "pank", "panck"),
}


def resolve_channels(available: list[str], wanted: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Map the channel names a preset asks for (``"DAPI"``, ``"membrane"``) to the sample's channels.

    A name present in ``available`` maps to itself; else a case-insensitive exact match; else the first channel
    whose name contains one of the role's aliases (:data:`CHANNEL_ROLES`, tried in order).

    Parameters
    ----------
    available
        The sample's channel names.
    wanted
        The names asked for.

    Returns
    -------
    dict of wanted name -> sample channel

    Raises
    ------
    StmorphInputError
        When a name cannot be matched (the message lists the sample's channels).

    Examples
    --------
    >>> resolve_channels(["DAPI", "Cellbound1", "Cellbound2", "PolyT"], ["DAPI", "membrane"])
    {'DAPI': 'DAPI', 'membrane': 'Cellbound1'}
    >>> resolve_channels(["DAPI", "ATP1A1_CD45_E-Cadherin", "18S"], ["membrane"])
    {'membrane': 'ATP1A1_CD45_E-Cadherin'}
    """
    out: dict[str, str] = {}
    low = {c.lower(): c for c in available}
    for w in wanted:
        if w in available:
            out[w] = w
            continue
        if w.lower() in low:
            out[w] = low[w.lower()]
            continue
        hit = None
        for alias in CHANNEL_ROLES.get(w, (w.lower(),)):
            cands = sorted(c for c in available if alias in c.lower())
            if cands:
                hit = cands[0]
                break
        if hit is None:
            raise StmorphInputError(
                f"no channel of the sample fills the '{w}' role", column="channels",
                expected=f"one of the sample's channels {list(available)} (choose with channels=/--channels)",
            )
        out[w] = hit
    return out


def read_sample(path: str | PathLike) -> SpatialSample:
    """Read a sample folder written by :meth:`SpatialSample.write`."""
    return SpatialSample.read(path)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

