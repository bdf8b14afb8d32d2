"""Cell masks inside crops, and crop sizes given in micrometres.

* :func:`crop_masks` - each cell's own segmentation label inside its crop box, read window by window from a
  :class:`~stmorph.LabelImage`, a :class:`~stmorph.PolygonSegmentation` or a plain array
  (:func:`stmorph.features.crop_label_image` calls it);
* :func:`resolve_masks` - what a consumer's ``masks=`` argument means (the sample's own segmentation, a label
  image file, an array) and each cell's label in it;
* :func:`crop_size_px` - one crop-size rule for every consumer (pixels, or micrometres through the sample's pixel
  size), with a warning when the crop is smaller than the median cell diameter.
"""

from __future__ import annotations

import warnings
from os import PathLike
from typing import Any

import numpy as np

from .._image import LabelImage, PolygonSegmentation, Segmentation
from ..errors import StmorphInputError

__all__ = [
    "crop_masks", "resolve_masks", "check_masks_found", "crop_size_px", "median_cell_diameter_px", "SAMPLE_MASKS",
]

#: The value of ``masks=`` that means "the sample's own segmentation".
SAMPLE_MASKS = "sample"

#: Wording of the error when ``masks=True`` but the sample has no segmentation
#: (:func:`stmorph.sample.missing_modality`).
MASKS_NEED_SEGMENTATION: dict[str, str] = {
    "prefix": "masks were asked for but ",
    "expected": "a sample read with its segmentation (stmorph read ...), or a label image file as masks",
}


def crop_masks(
    segmentation: Segmentation | np.ndarray, boxes: np.ndarray, size: int, ids: np.ndarray
) -> np.ndarray:
    """Binary masks of each cell's own label inside its crop box (``False`` outside the image).

    Parameters
    ----------
    segmentation
        A :class:`~stmorph.LabelImage`, :class:`~stmorph.PolygonSegmentation` or ``(H, W)`` integer array
        (0 = background).
    boxes
        ``(n, 2)`` ``[row0, col0]`` boxes (:func:`stmorph.crops.crop_boxes`).
    size
        Crop side in pixels.
    ids
        ``(n,)`` label of each cell in ``segmentation``.

    Returns
    -------
    ``(n, size, size)`` bool.

    Examples
    --------
    >>> lab = np.zeros((10, 10), int); lab[2:5, 2:5] = 7
    >>> int(crop_masks(lab, np.array([[0, 0]]), 6, np.array([7]))[0].sum())
    9
    """
    seg = LabelImage(np.asarray(segmentation)) if isinstance(segmentation, np.ndarray) else segmentation
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
    ids = np.asarray(ids).reshape(-1)
    if ids.shape[0] != boxes.shape[0]:
        raise StmorphInputError(f"{ids.shape[0]} mask ids for {boxes.shape[0]} boxes", expected="one id per box")
    out = np.zeros((boxes.shape[0], size, size), dtype=bool)
    for i, (r0, c0) in enumerate(boxes):
        if ids[i] > 0:
            out[i] = seg.window(r0, r0 + size, c0, c0 + size) == ids[i]
    return out


def resolve_masks(sample: Any, masks: Any, mask_ids: Any = None) -> tuple[Segmentation, np.ndarray] | None:
    """The segmentation meant by a consumer's ``masks=`` argument and each cell's label in it.

    Parameters
    ----------
    sample
        The :class:`~stmorph.SpatialSample`.
    masks
        ``None``/``False``: no masks. ``True`` or ``"sample"``: the sample's own segmentation
        (:attr:`~stmorph.SpatialSample.segmentation`, labels from ``obs["label_id"]``). A path: a label image file
        on the stains' grid. An array, :class:`~stmorph.LabelImage` or :class:`~stmorph.PolygonSegmentation`.
    mask_ids
        Label of each cell: an array, an ``obs`` column name, or ``None``: ``obs["label_id"]`` when present, else
        ``1..n`` in row order.

    Returns
    -------
    ``(segmentation, ids)`` or ``None`` when no masks are asked for.

    Raises
    ------
    StmorphInputError
        When the sample has no segmentation but one is asked for, the ids do not fit, or no cell has a single
        pixel of its label in the masks (wrong ids or another grid: measuring would silently return nothing).

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue
    >>> s = synthetic_tissue(n_cells=20, n_types=2, n_genes=6, random_state=0)
    >>> seg, ids = resolve_masks(s, True)
    >>> ids[:3].tolist()
    [1, 2, 3]
    """

    if masks is None or masks is False:
        return None
    if masks is True or (isinstance(masks, str) and masks == SAMPLE_MASKS):
        seg: Segmentation = sample.require("segmentation", **MASKS_NEED_SEGMENTATION)
    elif isinstance(masks, LabelImage | PolygonSegmentation):
        seg = masks
    elif isinstance(masks, str | PathLike):
        seg = LabelImage(masks)
    else:
        arr = np.asarray(masks)
        if arr.ndim != 2:
            raise StmorphInputError(f"a label image of shape {arr.shape}", expected="a 2-D label image, a path or True")
        seg = LabelImage(arr)
    ids = mask_label_ids(sample.adata.obs, mask_ids)
    shapes = {im.shape for im in sample.images.values()}
    if shapes and seg.shape not in shapes:
        raise StmorphInputError(
            f"the masks (label image) have shape {seg.shape} but the stain images {sorted(shapes)}",
            expected="masks on the stains' grid",
        )
    return seg, ids


def mask_label_ids(obs: Any, mask_ids: Any = None) -> np.ndarray:
    """Each cell's label in the masks: ``mask_ids`` (an array or an ``obs`` column name) or, by default,
    ``obs["label_id"]`` when present, else ``1..n`` in row order; int64, one per row of ``obs``.

    Examples
    --------
    >>> import pandas as pd
    >>> mask_label_ids(pd.DataFrame(index=["a", "b"])).tolist()
    [1, 2]
    """
    from ..sample import LABEL_ID_KEY

    n = len(obs)
    if mask_ids is None:
        ids = obs[LABEL_ID_KEY].to_numpy() if LABEL_ID_KEY in obs else np.arange(1, n + 1)
    elif isinstance(mask_ids, str):
        if mask_ids not in obs:
            raise StmorphInputError("mask id column not found", column=mask_ids, expected="an obs column of label ids")
        ids = obs[mask_ids].to_numpy()
    else:
        ids = np.asarray(mask_ids)
    try:
        ids = np.asarray(ids).astype(np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise StmorphInputError(f"mask ids are not integers ({exc})", expected="integer labels") from exc
    if ids.size != n:
        raise StmorphInputError(f"{ids.size} mask ids for {n} cells", expected="one label id per cell")
    return ids


def check_masks_found(masks: np.ndarray, cell_ids: Any, *, total: int | None = None) -> int:
    """Raise when no crop holds any pixel of its cell; warn with the count of empty masks; return that count."""
    empty = ~masks.reshape(masks.shape[0], -1).any(axis=1)
    n_empty = int(empty.sum())
    if n_empty == masks.shape[0] and masks.shape[0] > 0 and (total is None or total == masks.shape[0]):
        raise StmorphInputError(
            f"none of the {masks.shape[0]} cells has a pixel of its own label inside its crop: the mask ids do not "
            "match the label image (or it is on another grid)", column="label_id",
            expected="each cell's label value in the masks (obs['label_id'] or mask_ids=)",
        )
    if n_empty:
        ex = list(np.asarray(cell_ids)[empty][:5])
        warnings.warn(f"{n_empty} of {masks.shape[0]} cells have an empty mask in their crop (e.g. {ex}); their "
                      "features are undefined", RuntimeWarning, stacklevel=3)
    return n_empty


def median_cell_diameter_px(sample: Any) -> float | None:
    """Median cell diameter in pixels, ``2 sqrt(area / pi)`` of the segmentation's cell areas (``None`` when the
    sample has no segmentation).

    Areas come from the polygons (shoelace formula) or from counting each label's pixels.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue
    >>> s = synthetic_tissue(n_cells=30, n_types=2, n_genes=6, random_state=0)
    >>> 5 < median_cell_diameter_px(s) < 40
    True
    """
    seg = sample.segmentation
    if seg is None:
        return None
    if isinstance(seg, PolygonSegmentation):
        v = seg.vertices
        x, y = v["x"].to_numpy(), v["y"].to_numpy()
        key = v["label_id"].to_numpy() * 1_000_003 + v["part"].to_numpy()
        nxt = np.roll(np.arange(len(v)), -1)
        first = np.r_[True, key[1:] != key[:-1]]
        last = np.r_[key[1:] != key[:-1], True]
        starts = np.flatnonzero(first)
        nxt[last] = starts[np.cumsum(first)[last] - 1]
        cross = x * y[nxt] - x[nxt] * y
        ring = np.cumsum(first) - 1
        area_ring = np.abs(np.bincount(ring, weights=cross)) / 2
        labels = v["label_id"].to_numpy()[starts]
        _, inv = np.unique(labels, return_inverse=True)
        areas = np.bincount(inv, weights=area_ring)
    else:
        counts = np.bincount(np.asarray(seg.read()).ravel().astype(np.int64))
        areas = counts[1:][counts[1:] > 0].astype(np.float64)
    if len(areas) == 0:
        return None
    return float(2.0 * np.sqrt(np.median(areas) / np.pi))


def crop_size_px(
    sample: Any, size: int | None = None, crop_um: float | None = None, *, default: int = 100, what: str = "crop"
) -> int:
    """The crop side in pixels from ``size`` (pixels) or ``crop_um`` (micrometres), with a warning when it is
    smaller than the median cell diameter.

    Parameters
    ----------
    sample
        The :class:`~stmorph.SpatialSample` (its ``pixel_size`` converts micrometres).
    size
        Crop side in pixels.
    crop_um
        Crop side in micrometres (exclusive with ``size``): ``round(crop_um / pixel_size)`` pixels.
    default
        Pixels when neither is given.
    what
        Name of the consumer in messages.

    Returns
    -------
    int

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue
    >>> s = synthetic_tissue(n_cells=30, n_types=2, n_genes=6, pixel_size=0.5, random_state=0)
    >>> crop_size_px(s, crop_um=40)
    80
    """
    if size is not None and crop_um is not None:
        raise StmorphInputError("give the crop size in pixels or in micrometres, not both", expected="size or crop_um")
    if crop_um is not None:
        if not crop_um > 0:
            raise StmorphInputError(f"crop_um={crop_um}", expected="a positive size in micrometres")
        if not sample.pixel_size:
            raise StmorphInputError(
                "a crop size in micrometres needs the sample's pixel size, which is unknown", column="pixel_size",
                expected="a sample with pixel_size, or a crop size in pixels",
            )
        px = int(round(float(crop_um) / float(sample.pixel_size)))
    else:
        px = int(default if size is None else size)
    if px <= 0:
        raise StmorphInputError(f"{what} size {px} px", expected="a positive number of pixels")
    diam = median_cell_diameter_px(sample)
    if diam is not None and px < diam:
        um = f" ({px * sample.pixel_size:.1f} um)" if sample.pixel_size else ""
        d_um = f" ({diam * sample.pixel_size:.1f} um)" if sample.pixel_size else ""
        warnings.warn(
            f"the {what} of {px} px{um} is smaller than the median cell diameter of {diam:.0f} px{d_um}: crops cut "
            "most cells; give a larger size (e.g. --crop-um)", UserWarning, stacklevel=2,
        )
    return px
