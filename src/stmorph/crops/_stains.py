"""Square stain crops around cell centroids: box placement and (memory-mapped) cropping.

Pure functions over plain arrays: no :class:`~stmorph.SpatialSample` inside, so they run unchanged on Dask
workers. Boxes are ``[row0, col0]`` of a ``size x size`` window; centres are ``[x, y]`` = ``[column, row]``
pixels (the convention of ``adata.obsm["spatial"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..errors import StmorphInputError

__all__ = ["crop_boxes", "crop_stains", "round_half_up", "image_ranges"]

EdgeMode = Literal["shift", "pad"]
NormMode = Literal["crop", "image", None]


def round_half_up(v: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves upwards (``floor(v + 0.5)``), as int64.

    Unlike :func:`numpy.rint` (halves to even) this never depends on the parity of the integer part, so a
    centre at 10.5 and one at 11.5 are both moved by +0.5.

    Parameters
    ----------
    v
        Real values.

    Returns
    -------
    The rounded values as ``int64``.

    Examples
    --------
    >>> round_half_up(np.array([0.5, 1.5, -0.5, 2.49])).tolist()
    [1, 2, 0, 2]
    """
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def _check_centers(centers: np.ndarray) -> np.ndarray:
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 2:
        raise StmorphInputError(f"centers have shape {c.shape}", expected="an (n, 2) array of [x, y] pixels")
    if not np.all(np.isfinite(c[:, :2])):
        bad = np.flatnonzero(~np.all(np.isfinite(c[:, :2]), axis=1))[:10].tolist()
        raise StmorphInputError(f"non-finite centers at rows {bad}", expected="finite [x, y] pixel coordinates")
    return c[:, :2]


def crop_boxes(
    centers: np.ndarray,
    size: int,
    image_shape: tuple[int, int],
    *,
    edge: EdgeMode = "shift",
) -> np.ndarray:
    """Place one ``size x size`` box per cell.

    The box is centred on the rounded centre: ``row0 = round(y) - size // 2``, ``col0 = round(x) - size // 2``
    (``round`` = :func:`round_half_up`; for even ``size`` the centre pixel is the first of the lower half, i.e.
    the box covers ``size // 2`` pixels before the centre and ``size // 2 - 1`` after it).

    Parameters
    ----------
    centers
        ``(n, 2)`` centres ``[x, y]`` = ``[column, row]`` in pixels.
    size
        Side of the square box in pixels.
    image_shape
        ``(rows, columns)`` of the image.
    edge
        ``"shift"``: boxes that would cross the image border are shifted to lie inside it (the behaviour of the
        Moser et al. study; the cell is then off-centre). ``"pad"``: boxes stay centred and may extend outside the
        image; :func:`crop_stains` fills the outside pixels with ``pad_value``.

    Returns
    -------
    ``(n, 2)`` int64 ``[row0, col0]``.

    Raises
    ------
    StmorphInputError
        When a rounded centre lies outside the image (the rows are named), when ``size`` is not positive, or when
        ``edge="shift"`` and the image is smaller than ``size``.

    Examples
    --------
    >>> crop_boxes(np.array([[2.0, 3.0], [50.0, 50.0]]), 10, (60, 60)).tolist()
    [[0, 0], [45, 45]]
    >>> crop_boxes(np.array([[2.0, 3.0]]), 10, (60, 60), edge="pad").tolist()
    [[-2, -3]]
    """
    size = int(size)
    if size <= 0:
        raise StmorphInputError(f"crop size {size}", expected="a positive number of pixels")
    if edge not in ("shift", "pad"):
        raise StmorphInputError(f"edge={edge!r}", expected="'shift' or 'pad'")
    h, w = int(image_shape[0]), int(image_shape[1])
    c = _check_centers(centers)
    col = round_half_up(c[:, 0])
    row = round_half_up(c[:, 1])
    outside = (row < 0) | (row >= h) | (col < 0) | (col >= w)
    if outside.any():
        bad = np.flatnonzero(outside)
        raise StmorphInputError(
            f"{bad.size} centre(s) lie outside the {h} x {w} image, e.g. rows {bad[:10].tolist()} at "
            f"[x, y] = {c[bad[:3]].tolist()}",
            expected="centroids inside the image, in pixels [x, y] = [column, row]",
        )
    boxes = np.stack([row - size // 2, col - size // 2], axis=1).astype(np.int64)
    if edge == "shift":
        if size > h or size > w:
            raise StmorphInputError(
                f"crop size {size} exceeds the image ({h} x {w}); boxes cannot be shifted inside",
                expected="edge='pad' or a smaller crop size",
            )
        np.clip(boxes[:, 0], 0, h - size, out=boxes[:, 0])
        np.clip(boxes[:, 1], 0, w - size, out=boxes[:, 1])
    return boxes


def _as_channel_list(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            chans = [images]
        elif images.ndim == 3:
            chans = [images[i] for i in range(images.shape[0])]
        else:
            raise StmorphInputError(f"images have shape {images.shape}", expected="a (C, H, W) array or a list of 2-D arrays")
    else:
        chans = list(images)
    if not chans:
        raise StmorphInputError("no image channels were given", expected="at least one 2-D image")
    shape0 = None
    for i, im in enumerate(chans):
        if getattr(im, "ndim", None) != 2:
            raise StmorphInputError(f"channel {i} has shape {getattr(im, 'shape', None)}", expected="a 2-D image")
        if shape0 is None:
            shape0 = im.shape
        elif im.shape != shape0:
            raise StmorphInputError(
                f"channel {i} has shape {im.shape} but channel 0 has {shape0}", expected="channels of the same shape"
            )
    return chans


def image_ranges(images: Sequence[np.ndarray] | np.ndarray) -> list[tuple[float, float]]:
    """Per-channel ``(min, max)`` of whole images (one full read of each image).

    Parameters
    ----------
    images
        A list of 2-D arrays or a ``(C, H, W)`` array.

    Returns
    -------
    One ``(min, max)`` tuple per channel, as Python floats.

    Examples
    --------
    >>> image_ranges([np.array([[1, 5], [2, 3]])])
    [(1.0, 5.0)]
    """
    return [(float(np.min(im)), float(np.max(im))) for im in _as_channel_list(images)]


def crop_stains(
    images: Sequence[np.ndarray] | np.ndarray,
    centers: np.ndarray,
    size: int,
    *,
    edge: EdgeMode = "shift",
    pad_value: float = 0.0,
    normalize: NormMode = None,
    image_range: Sequence[tuple[float, float]] | None = None,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Cut ``size x size`` crops of every channel around each centre.

    Only the boxes are read, so memory-mapped images (``tifffile.memmap``) are never loaded whole.

    Parameters
    ----------
    images
        ``C`` channels: a list of 2-D arrays of one shape, or a ``(C, H, W)`` array.
    centers
        ``(n, 2)`` centres ``[x, y]`` in pixels.
    size
        Crop side in pixels.
    edge
        Box placement at the image border, see :func:`crop_boxes`.
    pad_value
        Value of the pixels outside the image (``edge="pad"`` only). It is written after normalisation, i.e. it
        is a value in the normalised units.
    normalize
        ``"crop"``: per crop and channel, min-max scaling to ``[0, 1]`` over the pixels inside the image (a
        constant crop becomes 0). ``"image"``: per channel, ``(v - lo) / (hi - lo)`` clipped to ``[0, 1]`` with
        ``(lo, hi)`` from ``image_range`` or else each image's min and max (computed once per call; pass
        ``image_range`` to avoid re-reading large images). ``None``: raw values as float32.
    image_range
        Per-channel ``(lo, hi)`` for ``normalize="image"``.
    boxes
        Optional precomputed ``(n, 2)`` boxes from :func:`crop_boxes` (then ``centers`` is only used for its
        length and may be ``None``).

    Returns
    -------
    ``(n, C, size, size)`` float32.

    Examples
    --------
    >>> img = np.arange(100, dtype=np.uint16).reshape(10, 10)
    >>> crop_stains([img], np.array([[5.0, 5.0]]), 3)[0, 0]
    array([[44., 45., 46.],
           [54., 55., 56.],
           [64., 65., 66.]], dtype=float32)
    """
    chans = _as_channel_list(images)
    h, w = chans[0].shape
    size = int(size)
    if normalize not in ("crop", "image", None):
        raise StmorphInputError(f"normalize={normalize!r}", expected="'crop', 'image' or None")
    if boxes is None:
        boxes = crop_boxes(centers, size, (h, w), edge=edge)
    else:
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
    n, n_ch = boxes.shape[0], len(chans)
    out = np.empty((n, n_ch, size, size), dtype=np.float32)
    if n == 0:
        return out
    r0, c0 = boxes[:, 0], boxes[:, 1]
    inside = (r0 >= 0).all() and (c0 >= 0).all() and (r0 + size <= h).all() and (c0 + size <= w).all()
    if inside:
        # one slice per cell and channel: reads only the box from a memmap (measured faster than one fancy
        # index over all boxes for 100-300 px crops, see benchmarks/bench_crops.py)
        for i in range(n):
            a, b = int(r0[i]), int(c0[i])
            for ch, im in enumerate(chans):
                out[i, ch] = im[a : a + size, b : b + size]
        valid = None
    else:
        out.fill(np.nan)
        ra, rb = np.maximum(r0, 0), np.minimum(r0 + size, h)
        ca, cb = np.maximum(c0, 0), np.minimum(c0 + size, w)
        for i in range(n):
            if rb[i] <= ra[i] or cb[i] <= ca[i]:
                continue
            dst_r = slice(int(ra[i] - r0[i]), int(rb[i] - r0[i]))
            dst_c = slice(int(ca[i] - c0[i]), int(cb[i] - c0[i]))
            for ch, im in enumerate(chans):
                out[i, ch, dst_r, dst_c] = im[int(ra[i]) : int(rb[i]), int(ca[i]) : int(cb[i])]
        ar = np.arange(size)
        rv = ((r0[:, None] + ar) >= 0) & ((r0[:, None] + ar) < h)
        cv = ((c0[:, None] + ar) >= 0) & ((c0[:, None] + ar) < w)
        valid = rv[:, None, :, None] & cv[:, None, None, :]  # (n, 1, S, S)

    if normalize == "crop":
        if valid is None:
            lo = out.min(axis=(2, 3), keepdims=True)
            hi = out.max(axis=(2, 3), keepdims=True)
        else:
            lo = np.where(valid, out, np.inf).min(axis=(2, 3), keepdims=True)
            hi = np.where(valid, out, -np.inf).max(axis=(2, 3), keepdims=True)
        rng = hi - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(rng > 0, 1.0 / np.where(rng > 0, rng, 1.0), 0.0).astype(np.float32)
        out -= lo.astype(np.float32)
        out *= scale
    elif normalize == "image":
        ranges = list(image_range) if image_range is not None else image_ranges(chans)
        if len(ranges) != n_ch:
            raise StmorphInputError(
                f"image_range has {len(ranges)} entries for {n_ch} channels", expected="one (lo, hi) per channel"
            )
        for ch, (lo_v, hi_v) in enumerate(ranges):
            span = float(hi_v) - float(lo_v)
            if span > 0:
                out[:, ch] -= np.float32(lo_v)
                out[:, ch] *= np.float32(1.0 / span)
                np.clip(out[:, ch], 0.0, 1.0, out=out[:, ch])
            else:
                out[:, ch] = 0.0
    if valid is not None:
        np.copyto(out, np.float32(pad_value), where=~np.broadcast_to(valid, out.shape))
    return out
