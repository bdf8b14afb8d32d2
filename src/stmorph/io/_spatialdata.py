"""Converters between :class:`~stmorph.SpatialSample` and :class:`spatialdata.SpatialData` (optional extra)."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import jsonable
from ..errors import StmorphInputError
from ..sample import LABEL_ID_KEY, LabelImage, SpatialSample, StainImage

__all__ = ["to_spatialdata", "from_spatialdata", "read_spatialdata", "detect_spatialdata"]

_INSTALL_HINT = "the SpatialData converters need the optional extra: pip install 'stmorph[spatialdata]'"
_UNS_KEY = "stmorph"
_Z_COLUMN = "z_stmorph"


def _import_spatialdata() -> Any:
    try:
        import spatialdata
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        if getattr(exc, "name", None) == "pkg_resources":
            raise ImportError("spatialdata is installed but its dependency xarray-schema needs pkg_resources, which "
                              "setuptools 81 removed: pip install 'setuptools<81' (or reinstall "
                              "'stmorph[spatialdata]')") from exc
        raise ImportError(_INSTALL_HINT) from exc
    return spatialdata


def to_spatialdata(
    sample: SpatialSample,
    *,
    cells_key: str = "cells",
    points_key: str = "transcripts",
    table_key: str = "table",
    labels_key: str = "segmentation",
    coordinate_system: str = "global",
    cell_radius: float | None = None,
) -> Any:
    """Convert a sample to a :class:`spatialdata.SpatialData` (pixel coordinates, identity transforms).

    Each stain channel becomes a 2-D image element named after the channel (dims ``c, y, x``), the molecules a
    points element (``feature_key="gene"``, ``instance_key="cell_id"``), the cells a circles shapes element at
    the centroids, and ``adata`` the table annotating the circles (``obs["region"]``, ``obs["cell_id"]``). The
    segmentation, when the sample has one, becomes a labels element (``labels_key``; ``obs["label_id"]`` stays in
    the table).
    ``pixel_size``, ``name`` and provenance travel in ``table.uns["stmorph"]``.

    Parameters
    ----------
    sample
        The sample.
    cells_key, points_key, table_key, labels_key
        Element names.
    coordinate_system
        Name of the (pixel) coordinate system.
    cell_radius
        Circle radius in pixels; default ``sqrt(area / pi)`` from ``obs["area"]`` when present, else 5.

    Returns
    -------
    spatialdata.SpatialData

    Examples
    --------
    >>> from stmorph.io import to_spatialdata, from_spatialdata
    >>> sdata = to_spatialdata(sample)  # doctest: +SKIP
    >>> back = from_spatialdata(sdata)  # doctest: +SKIP
    """
    sd = _import_spatialdata()
    from spatialdata.models import Image2DModel, Labels2DModel, PointsModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    tf = {coordinate_system: Identity()}
    images = {}
    for ch, img in sample.images.items():
        arr = np.asarray(img.read())[None]
        images[ch] = Image2DModel.parse(arr, dims=("c", "y", "x"), c_coords=[ch], transformations=tf)
    labels = {}
    if sample.segmentation is not None:
        labels[labels_key] = Labels2DModel.parse(np.asarray(sample.segmentation.read()), dims=("y", "x"),
                                                 transformations=tf)
    points = {}
    if sample.molecules is not None:
        m = sample.molecules.copy()
        m["cell_id"] = m["cell_id"].astype(object).where(m["cell_id"].notna(), None)
        if "z" in m:  # stmorph points are 2-D pixels; z travels as an extra column (PointsModel drops "z")
            m = m.rename(columns={"z": _Z_COLUMN})
        points[points_key] = PointsModel.parse(
            m, coordinates={"x": "x", "y": "y"}, feature_key="gene", instance_key="cell_id", transformations=tf
        )
    cen = sample.centroids
    if cell_radius is not None:
        radius = np.full(sample.n_cells, float(cell_radius))
    elif "area" in sample.adata.obs:
        area = pd.to_numeric(sample.adata.obs["area"], errors="coerce").to_numpy(np.float64)
        radius = np.where(np.isfinite(area) & (area > 0), np.sqrt(np.abs(area) / np.pi), 5.0)
    else:
        radius = np.full(sample.n_cells, 5.0)
    shapes = ShapesModel.parse(cen, geometry=0, radius=radius, index=pd.Index(sample.cell_ids.astype(str)), transformations=tf)
    table = sample.adata.copy()
    table.obs["region"] = pd.Categorical([cells_key] * table.n_obs)
    table.obs["cell_id"] = table.obs_names.astype(str)
    table.uns[_UNS_KEY] = {
        "name": sample.name,
        "pixel_size": -1.0 if sample.pixel_size is None else float(sample.pixel_size),
        "provenance_json": json.dumps(jsonable(sample.provenance)),
        "images": list(sample.images),
    }
    table = TableModel.parse(table, region=cells_key, region_key="region", instance_key="cell_id")
    return sd.SpatialData(images=images, labels=labels, points=points, shapes={cells_key: shapes},
                          tables={table_key: table})


def from_spatialdata(
    sdata: Any,
    *,
    table_key: str | None = None,
    points_key: str | None = None,
    image_keys: list[str] | None = None,
    labels_key: str | None = None,
    coordinate_system: str = "global",
    feature_key: str | None = None,
    instance_key: str | None = None,
    pixel_size: float | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Convert a :class:`spatialdata.SpatialData` to a sample.

    Counts come from the table; centroids from ``obsm["spatial"]`` or the annotated shapes (circle centres /
    polygon centroids). Coordinates are taken in ``coordinate_system`` and mapped to the pixels of the first
    image (inverse of its affine transform), so molecules and centroids land on the stain images. Every channel
    of every image becomes a :class:`~stmorph.StainImage` named after the channel (or the element when it has
    one channel); the highest resolution of multiscale images is used.

    Parameters
    ----------
    sdata
        The SpatialData object.
    table_key, points_key
        Elements to use (default: the only/first table and points element).
    image_keys
        Image elements to take (default: all).
    labels_key
        The labels element holding the cell segmentation (default: the one the table annotates, else
        ``"segmentation"``, else the only one). It becomes :attr:`~stmorph.SpatialSample.segmentation`; each cell's
        label is ``obs["label_id"]`` when present, else the table's instance id when the table annotates the labels.
    coordinate_system
        The coordinate system shared by the elements.
    feature_key, instance_key
        Gene and cell columns of the points (default: from the points' attributes).
    pixel_size
        Micrometres per pixel (default: the value stored by :func:`to_spatialdata`, else unknown).
    name
        Sample name.

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> import spatialdata as sd  # doctest: +SKIP
    >>> sample = from_spatialdata(sd.read_zarr("sample.zarr"))  # doctest: +SKIP
    """
    _import_spatialdata()
    from spatialdata import get_extent  # noqa: F401  (checks the API level)
    from spatialdata.transformations import get_transformation

    if not len(sdata.tables):
        raise StmorphInputError("the SpatialData object has no table", expected="a table of cells x genes")
    table_key = table_key or next(iter(sdata.tables))
    if table_key not in sdata.tables:
        raise StmorphInputError(f"no table '{table_key}'", expected=f"one of {list(sdata.tables)}")
    adata = sdata.tables[table_key].copy()
    meta = dict(adata.uns.pop(_UNS_KEY, {}) or {})

    # pixel frame: the first image's intrinsic coordinates
    image_keys = list(sdata.images) if image_keys is None else list(image_keys)
    to_px = np.eye(3)
    images: dict[str, StainImage] = {}
    for i, key in enumerate(image_keys):
        if key not in sdata.images:
            raise StmorphInputError(f"no image '{key}'", expected=f"one of {list(sdata.images)}")
        el = sdata.images[key]
        if not hasattr(el, "dims"):  # multiscale DataTree
            el = next(iter(el.values()))
            el = el[next(iter(el.data_vars))] if hasattr(el, "data_vars") else el
        affine = get_transformation(el, to_coordinate_system=coordinate_system).to_affine_matrix(
            input_axes=("x", "y"), output_axes=("x", "y")
        )
        if i == 0:
            to_px = np.linalg.inv(affine)
        elif not np.allclose(affine, np.linalg.inv(to_px)):
            raise StmorphInputError(f"image '{key}' is not aligned with '{image_keys[0]}'", expected="images of one pixel grid")
        arr = np.asarray(el.transpose("c", "y", "x").values)
        chans = [str(c) for c in el.coords["c"].values] if "c" in el.coords else [str(j) for j in range(arr.shape[0])]
        for j, ch in enumerate(chans):
            images[ch if arr.shape[0] > 1 or ch not in ("0",) else key] = StainImage(np.ascontiguousarray(arr[j]))

    def apply(xy: np.ndarray) -> np.ndarray:
        h = np.column_stack([xy, np.ones(len(xy))])
        return (h @ to_px.T)[:, :2]

    attrs = adata.uns.get("spatialdata_attrs", {})
    region = attrs.get("region")
    region = region[0] if isinstance(region, list | tuple | np.ndarray) else region
    segmentation = None
    lkeys = list(getattr(sdata, "labels", {}))
    if labels_key is None and lkeys:
        labels_key = region if region in lkeys else "segmentation" if "segmentation" in lkeys else (
            lkeys[0] if len(lkeys) == 1 else None)
    if labels_key is not None:
        if labels_key not in lkeys:
            raise StmorphInputError(f"no labels element '{labels_key}'", expected=f"one of {lkeys}")
        el = sdata.labels[labels_key]
        if not hasattr(el, "dims"):  # multiscale DataTree: the full resolution
            el = next(iter(el.values()))
            el = el[next(iter(el.data_vars))] if hasattr(el, "data_vars") else el
        affine = get_transformation(el, to_coordinate_system=coordinate_system).to_affine_matrix(
            input_axes=("x", "y"), output_axes=("x", "y")
        )
        if images and not np.allclose(affine, np.linalg.inv(to_px)):
            raise StmorphInputError(f"labels '{labels_key}' are not on the images' pixel grid",
                                    expected="a segmentation aligned with the stains")
        if not images:
            to_px = np.linalg.inv(affine)
        segmentation = LabelImage(np.ascontiguousarray(np.asarray(el.transpose("y", "x").values)))
        ik = attrs.get("instance_key")
        if LABEL_ID_KEY not in adata.obs and region == labels_key and ik and ik in adata.obs:
            adata.obs[LABEL_ID_KEY] = pd.to_numeric(adata.obs[ik]).astype(np.int64).to_numpy()
        elif LABEL_ID_KEY not in adata.obs:
            raise StmorphInputError(
                f"the labels '{labels_key}' are not annotated by the table and obs has no '{LABEL_ID_KEY}'",
                column=LABEL_ID_KEY, expected="the cell -> label mapping",
            )

    # centroids
    if "spatial" in adata.obsm:
        cen = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        if region in getattr(sdata, "shapes", {}):
            cen = _shape_centres(sdata, region, adata, attrs, coordinate_system, fallback=cen)
    elif region in sdata.shapes:
        cen = _shape_centres(sdata, region, adata, attrs, coordinate_system, fallback=None)
    elif segmentation is not None and region == labels_key:  # centres of the label masks, in label pixels
        from scipy import ndimage

        lab = segmentation.read()
        ids = adata.obs[LABEL_ID_KEY].to_numpy()
        com = np.asarray(ndimage.center_of_mass(np.ones(lab.shape, np.float32), lab, ids), dtype=np.float64)
        cen = (np.column_stack([com[:, 1], com[:, 0], np.ones(len(com))]) @ np.linalg.inv(to_px).T)[:, :2]
    else:
        raise StmorphInputError(
            "cannot find cell centroids: the table has no obsm['spatial'] and annotates no shapes",
            column="obsm['spatial']",
            expected="centroids or a shapes region",
        )
    adata.obsm["spatial"] = apply(cen)
    for c in ("region", attrs.get("instance_key")):
        if c and c in adata.obs and c != "cell_type":
            adata.obs = adata.obs.drop(columns=[c])
    adata.uns.pop("spatialdata_attrs", None)
    adata.obs_names = adata.obs_names.astype(str)

    molecules = None
    pkeys = list(sdata.points)
    if points_key is not None or pkeys:
        points_key = points_key or pkeys[0]
        if points_key not in sdata.points:
            raise StmorphInputError(f"no points element '{points_key}'", expected=f"one of {pkeys}")
        from spatialdata import transform

        pts = transform(sdata.points[points_key], to_coordinate_system=coordinate_system)
        pattrs = pts.attrs.get("spatialdata_attrs", {})
        fk = feature_key or pattrs.get("feature_key")
        ik = instance_key or pattrs.get("instance_key")
        df = pts.compute()
        if fk is None or fk not in df.columns:
            raise StmorphInputError("the points have no gene column", column=str(fk), expected="feature_key=...")
        xy = apply(df[["x", "y"]].to_numpy(np.float64))
        data: dict[str, Any] = {
            "x": xy[:, 0].astype(np.float32),
            "y": xy[:, 1].astype(np.float32),
            "gene": pd.Categorical(df[fk].astype(str).to_numpy()),
            "cell_id": pd.array(
                df[ik].astype("string").to_numpy() if ik and ik in df.columns else [pd.NA] * len(df), dtype="string"
            ),
        }
        for c in df.columns:
            if c not in ("x", "y", fk, ik) and c not in data:
                data[c] = df[c].to_numpy()
        molecules = pd.DataFrame(data).rename(columns={_Z_COLUMN: "z"})
        if "z" in molecules:
            molecules["z"] = molecules["z"].astype(np.float32)

    ps = pixel_size
    if ps is None and meta.get("pixel_size") is not None and float(meta["pixel_size"]) > 0:
        ps = float(meta["pixel_size"])
    prov = json.loads(meta["provenance_json"]) if meta.get("provenance_json") else {"reader": "spatialdata"}
    return SpatialSample(adata, molecules, images, ps, name or str(meta.get("name", "sample")), prov, segmentation)


def _shape_centres(
    sdata: Any, region: str, adata: Any, attrs: dict, cs: str, *, fallback: np.ndarray | None
) -> np.ndarray:
    from spatialdata import transform

    shp = transform(sdata.shapes[region], to_coordinate_system=cs)
    ik = attrs.get("instance_key")
    ids = adata.obs[ik].astype(str).to_numpy() if ik and ik in adata.obs else adata.obs_names.astype(str).to_numpy()
    geo = shp.geometry
    cx = pd.Series(geo.centroid.x.to_numpy(), index=shp.index.astype(str))
    cy = pd.Series(geo.centroid.y.to_numpy(), index=shp.index.astype(str))
    out = np.column_stack([cx.reindex(ids).to_numpy(), cy.reindex(ids).to_numpy()])
    if fallback is not None:
        bad = ~np.isfinite(out).all(axis=1)
        out[bad] = fallback[bad]
    return out


def read_spatialdata(path: str | PathLike, **kwargs: Any) -> SpatialSample:
    """Read a SpatialData ``.zarr`` store into a sample (see :func:`from_spatialdata` for ``kwargs``).

    Parameters
    ----------
    path
        The ``.zarr`` folder.
    **kwargs
        Passed to :func:`from_spatialdata`.

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> sample = read_spatialdata("sample.zarr")  # doctest: +SKIP
    """
    sd = _import_spatialdata()
    p = Path(path)
    if not p.exists():
        raise StmorphInputError("SpatialData store not found", file=p, expected="a .zarr folder")
    return from_spatialdata(sd.read_zarr(p), name=kwargs.pop("name", p.stem), **kwargs)


def detect_spatialdata(path: Path) -> bool:
    """A ``.zarr`` folder with SpatialData elements."""
    return path.is_dir() and path.suffix == ".zarr" and any(
        (path / k).is_dir() for k in ("tables", "images", "points", "shapes", "labels")
    )

