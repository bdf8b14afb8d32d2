"""What the tasks read: a sample's stain channels and segmentation as small, picklable specs, opened lazily.

The driver (the process that plans and submits) holds the per-cell table (ids, centroids, label ids); tasks get
file references only and read the windows they need through :meth:`stmorph.StainImage.window`. In-memory images
of a :class:`~stmorph.SpatialSample` are written once, uncompressed (memory-mappable), under
``<out_dir>/inputs/`` so that worker processes (on this machine or on a cluster sharing the file system) can read
them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from .._image import LabelImage, PolygonSegmentation, StainImage
from ..errors import StmorphInputError
from ..sample import missing_modality

__all__ = ["SampleSource", "open_image", "image_spec"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_tiff(arr: np.ndarray, folder: Path, stem: str) -> Path:
    """Write ``arr`` uncompressed (memory-mappable) as ``<stem>-<content hash>.tif`` unless present."""
    import tifffile

    arr = np.ascontiguousarray(arr)
    digest = hashlib.sha1(arr.view(np.uint8).reshape(-1)).hexdigest()[:12]
    path = folder / f"{_safe(stem)}-{arr.dtype.str.strip('<>|=')}-{digest}.tif"
    if not path.exists():
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, arr)
    return path


def image_spec(img: StainImage, inputs_dir: Path | None = None, name: str = "image") -> dict[str, Any]:
    """A JSON-able reference to a stain or label image that a worker opens with :func:`open_image`.

    File-backed images are referenced by absolute path; an in-memory image is written to ``inputs_dir`` first.

    Parameters
    ----------
    img
        A :class:`~stmorph.StainImage` or :class:`~stmorph.LabelImage`.
    inputs_dir
        Folder for in-memory images.
    name
        File stem for an in-memory image.

    Returns
    -------
    dict
        ``{"path", "z", "channel", "component", "label"}``.

    Examples
    --------
    >>> spec = image_spec(StainImage("dapi.tif"))  # doctest: +SKIP
    """
    label = isinstance(img, LabelImage)
    if img.path is None:
        if inputs_dir is None:
            raise StmorphInputError(f"the image '{name}' is held in memory", expected="an out_dir to write it to")
        path = _write_tiff(img.read(), Path(inputs_dir), name)
        return {"path": str(path.resolve()), "z": None, "channel": None, "component": None, "label": label}
    return {"path": str(Path(img.path).resolve()), "z": img.z, "channel": img.channel, "component": img.component,
            "label": label}


def open_image(spec: dict[str, Any]) -> StainImage:
    """Open the image of a spec from :func:`image_spec`; reads nothing yet.

    Not cached: a task opens its images, copies its window out and drops them, so that the pages of a
    memory-mapped slide it touched are unmapped when the task ends (they would otherwise count in the worker's
    resident memory, which dask watches to pause or restart workers).

    Examples
    --------
    >>> img = open_image({"path": "/data/dapi.tif", "z": None, "channel": None, "component": None})  # doctest: +SKIP
    >>> img.window(0, 256, 0, 256).shape  # doctest: +SKIP
    (256, 256)
    """
    cls = LabelImage if spec.get("label") else StainImage
    return cls(spec["path"], z=spec.get("z"), channel=spec.get("channel"), component=spec.get("component"))


def read_window(spec: dict[str, Any], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """A copy of rows ``r0:r1``, columns ``c0:c1`` of an image (only the window is read; nothing stays mapped)."""
    return np.array(open_image(spec).window(r0, r1, c0, c1), copy=True)


def file_stamp(spec: dict[str, Any]) -> list[Any]:
    """``[path, size, mtime_ns]`` of an image spec's file (a changed file changes a run's fingerprint)."""
    p = Path(spec["path"])
    try:
        st = p.stat()
    except OSError:
        return [str(p), None, None]
    if p.is_dir():  # zarr store: its metadata files stand for it
        return [str(p), None, int(st.st_mtime_ns)]
    return [str(p), int(st.st_size), int(st.st_mtime_ns)]


@dataclass
class SampleSource:
    """The driver's view of a sample: the per-cell table and references to its images.

    Build it with :meth:`from_folder` (reads ``sample.json`` and the cell table of ``cells.h5ad``, not the counts,
    molecules or pixels) or :meth:`from_sample`.

    Examples
    --------
    >>> src = SampleSource.from_folder("tissue.stmorph")  # doctest: +SKIP
    >>> src.image_shape, len(src.cell_ids)  # doctest: +SKIP
    ((347, 347), 120)
    """

    cell_ids: pd.Index
    centroids: np.ndarray
    obs: pd.DataFrame
    var_names: list[str]
    image_shape: tuple[int, int]
    channels: dict[str, dict[str, Any]]
    segmentation_spec: dict[str, Any] | None
    pixel_size: float | None = None
    folder: Path | None = None
    sample: Any = None
    _polygons: PolygonSegmentation | None = field(default=None, repr=False)

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | PathLike) -> SampleSource:
        """Read a sample folder written by :meth:`stmorph.SpatialSample.write` (cell table and image references)."""
        import anndata as ad

        path = Path(path)
        meta_file = path / "sample.json"
        if not meta_file.exists():
            raise StmorphInputError("not a stmorph sample folder (sample.json missing)", file=path,
                                    expected="a folder from SpatialSample.write / stmorph read")
        meta = json.loads(meta_file.read_text())
        channels: dict[str, dict[str, Any]] = {}
        for name, spec in meta.get("images", {}).items():
            p = Path(spec["path"])
            p = path / p if spec.get("relative") else p
            channels[name] = {"path": str(p.resolve()), "z": spec.get("z"), "channel": spec.get("channel"),
                              "component": spec.get("component"), "label": False}
        seg_spec = None
        seg_meta = meta.get("segmentation")
        if seg_meta:
            p = Path(seg_meta["path"])
            p = path / p if seg_meta.get("relative") else p
            if seg_meta.get("kind") == "polygons":
                seg_spec = {"kind": "polygons", "path": str(p.resolve()), "shape": list(seg_meta["shape"])}
            else:
                seg_spec = {"kind": "raster", "path": str(p.resolve()), "z": seg_meta.get("z"),
                            "channel": seg_meta.get("channel"), "component": seg_meta.get("component"),
                            "label": True}
        a = ad.read_h5ad(path / "cells.h5ad", backed="r")
        try:
            obs = a.obs.copy()
            cent = np.asarray(a.obsm["spatial"], dtype=np.float64)[:, :2]
            var_names = [str(v) for v in a.var_names]
        finally:
            a.file.close()
        shape = cls._grid_shape(channels, seg_spec)
        return cls(pd.Index(obs.index.astype(str)), cent, obs, var_names, shape, channels, seg_spec,
                   meta.get("pixel_size"), path, None)

    @classmethod
    def from_sample(cls, sample: Any, inputs_dir: str | PathLike | None = None) -> SampleSource:
        """Wrap an in-memory :class:`~stmorph.SpatialSample`; in-memory images are written to ``inputs_dir``."""
        inputs = None if inputs_dir is None else Path(inputs_dir)
        channels = {name: image_spec(img, inputs, f"image-{name}") for name, img in sample.images.items()}
        seg = sample.segmentation
        seg_spec: dict[str, Any] | None = None
        polygons = None
        if isinstance(seg, PolygonSegmentation):
            seg_spec = {"kind": "polygons", "path": None, "shape": list(seg.shape)}
            polygons = seg
        elif isinstance(seg, LabelImage):
            seg_spec = {"kind": "raster", **image_spec(seg, inputs, "segmentation")}
        shape = cls._grid_shape(channels, seg_spec)
        return cls(pd.Index(sample.cell_ids.astype(str)), sample.centroids[:, :2], sample.adata.obs,
                   [str(v) for v in sample.adata.var_names], shape, channels, seg_spec, sample.pixel_size, None,
                   sample, polygons)

    @classmethod
    def resolve(cls, sample_or_path: Any, inputs_dir: str | PathLike | None = None) -> SampleSource:
        """:meth:`from_folder` for a path, :meth:`from_sample` for a sample, the source itself otherwise."""
        from ..sample import SpatialSample

        if isinstance(sample_or_path, SampleSource):
            return sample_or_path
        if isinstance(sample_or_path, SpatialSample):
            return cls.from_sample(sample_or_path, inputs_dir)
        if isinstance(sample_or_path, str | PathLike):
            return cls.from_folder(sample_or_path)
        raise StmorphInputError(f"got {type(sample_or_path).__name__}",
                                expected="a SpatialSample or the path of a sample folder")

    @staticmethod
    def _grid_shape(channels: dict[str, dict[str, Any]], seg_spec: dict[str, Any] | None) -> tuple[int, int]:
        shapes = {name: open_image(spec).shape for name, spec in channels.items()}
        if seg_spec is not None:
            shapes["segmentation"] = (tuple(seg_spec["shape"]) if seg_spec["kind"] == "polygons"
                                      else open_image(seg_spec).shape)
        if not shapes:
            raise StmorphInputError("the sample has no stain images or segmentation", expected="stain images")
        if len(set(shapes.values())) > 1:
            raise StmorphInputError(f"images of different shapes: {shapes}", expected="one pixel grid")
        s = next(iter(shapes.values()))
        return int(s[0]), int(s[1])

    # -- per-cell data ---------------------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    def channel_specs(self, channels: list[str]) -> list[dict[str, Any]]:
        """Worker specs of ``channels`` (clear error naming the sample's channels otherwise)."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise StmorphInputError(f"channels {missing} not in the sample", expected=f"some of {list(self.channels)}")
        return [self.channels[c] for c in channels]

    def polygons(self) -> PolygonSegmentation:
        """The polygon segmentation (read from its parquet file once)."""
        if self._polygons is None:
            assert self.segmentation_spec is not None and self.segmentation_spec["kind"] == "polygons"
            self._polygons = PolygonSegmentation(pd.read_parquet(self.segmentation_spec["path"]),
                                                 tuple(self.segmentation_spec["shape"]))
        return self._polygons

    def resolve_masks(
        self, masks: Any, mask_ids: Any = None, inputs_dir: str | PathLike | None = None
    ) -> tuple[dict[str, Any], np.ndarray] | None:
        """What ``masks=`` means (as :func:`stmorph.crops.resolve_masks`): a segmentation spec and each cell's label.

        Returns
        -------
        ``(spec, ids)`` or ``None`` when no masks are asked for. ``spec["kind"]`` is ``"raster"`` or ``"polygons"``.
        """
        from ..crops import SAMPLE_MASKS
        from ..crops._masks import MASKS_NEED_SEGMENTATION

        if masks is None or masks is False:
            return None
        inputs = None if inputs_dir is None else Path(inputs_dir)
        if masks is True or (isinstance(masks, str) and masks == SAMPLE_MASKS):
            if self.segmentation_spec is None:
                raise missing_modality("segmentation", **MASKS_NEED_SEGMENTATION)
            spec = self.segmentation_spec
        elif isinstance(masks, PolygonSegmentation):
            self._polygons = masks
            spec = {"kind": "polygons", "path": None, "shape": list(masks.shape)}
        elif isinstance(masks, LabelImage):
            spec = {"kind": "raster", **image_spec(masks, inputs, "masks")}
        elif isinstance(masks, str | PathLike):
            spec = {"kind": "raster", **image_spec(LabelImage(masks), inputs, "masks")}
        else:
            arr = np.asarray(masks)
            if arr.ndim != 2:
                raise StmorphInputError(f"a label image of shape {arr.shape}", expected="a 2-D label image, a path or True")
            spec = {"kind": "raster", **image_spec(LabelImage(arr), inputs, "masks")}
        from ..crops._masks import mask_label_ids

        ids = mask_label_ids(self.obs, mask_ids)
        shape = tuple(spec["shape"]) if spec["kind"] == "polygons" else open_image(spec).shape
        if tuple(shape) != tuple(self.image_shape):
            raise StmorphInputError(
                f"the masks (label image) have shape {tuple(shape)} but the stain images {[tuple(self.image_shape)]}",
                expected="masks on the stains' grid",
            )
        return spec, ids

    def row_sums(self, genes: list[str] | None = None, *, chunk: int = 65536) -> np.ndarray:
        """Transcripts per cell over ``genes`` (default all), from the counts (read in row chunks from a folder)."""
        import scipy.sparse as sp

        cols = None if genes is None else pd.Index(self.var_names).get_indexer(genes)
        if cols is not None and (cols < 0).any():
            raise StmorphInputError("genes not in the sample", column="var_names", expected="genes of the sample")

        def _sum(x: Any) -> np.ndarray:
            x = x if cols is None else x[:, cols]
            return np.asarray(x.sum(axis=1)).reshape(-1) if sp.issparse(x) else np.asarray(x).sum(axis=1)

        if self.sample is not None:
            return _sum(self.sample.adata.X).astype(np.float64)
        import anndata as ad

        assert self.folder is not None
        a = ad.read_h5ad(self.folder / "cells.h5ad", backed="r")
        try:
            out = np.concatenate([_sum(a.X[i : i + chunk]) for i in range(0, a.n_obs, chunk)]) if a.n_obs else np.zeros(0)
        finally:
            a.file.close()
        return out.astype(np.float64)

    def molecule_batches(self, batch_size: int = 4_000_000) -> Iterator[pd.DataFrame]:
        """The molecule table (``x, y, gene, cell_id``) in row batches, streamed from ``molecules.parquet``."""
        if self.sample is not None:
            mol = self.sample.require("molecules", suffix="; spot planes need one", expected="sample.molecules")
            yield mol[["x", "y", "gene", "cell_id"]]
            return
        import pyarrow.parquet as pq

        assert self.folder is not None
        f = self.folder / "molecules.parquet"
        if not f.exists():
            raise missing_modality("molecules", suffix="; spot planes need one", expected="molecules.parquet", file=f)
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=batch_size, columns=["x", "y", "gene", "cell_id"]):
            yield batch.to_pandas()

    def fingerprint_inputs(self) -> dict[str, Any]:
        """File stamps of every image, for a run's fingerprint."""
        out: dict[str, Any] = {name: file_stamp(spec) for name, spec in self.channels.items()}
        if self.segmentation_spec is not None and self.segmentation_spec.get("path"):
            out["segmentation"] = file_stamp(self.segmentation_spec)
        out["n_cells"] = self.n_cells
        return out
