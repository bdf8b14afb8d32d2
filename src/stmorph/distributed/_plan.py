"""The tile plan: which tile owns which cell, and which window of the slide each tile reads.

A pure function over plain data. The slide's pixel grid is cut into square tiles of ``tile_size`` pixels; each
cell is owned by the one tile that contains its rounded centroid (the pixel :func:`stmorph.crops.crop_boxes`
centres its crop on), so every cell is owned exactly once. A tile reads a *window*: its own square widened by a
margin of half the largest crop on every side, and further, where needed, to contain every owned cell's crop box
as :func:`~stmorph.crops.crop_boxes` places it on the whole image (the ``"shift"`` rule moves boxes at the slide
border inwards by up to half a crop). The window is clipped to the image, so a part of a box outside the window is
outside the slide, exactly as in the serial code.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import StmorphInputError

__all__ = ["plan_tiles", "PLAN_COLUMNS", "tile_windows"]

#: Columns of the plan: tile id, its grid position, the owned square ``[r0, r1) x [c0, c1)``, the window read
#: ``[wr0, wr1) x [wc0, wc1)`` (clipped to the image), the number of owned cells and their rows (``cells``: an
#: ascending int64 array of rows of ``adata``).
PLAN_COLUMNS = ("tile", "tile_row", "tile_col", "r0", "r1", "c0", "c1", "wr0", "wr1", "wc0", "wc1", "n_cells", "cells")


def _centroids_and_shape(sample: Any, image_shape: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    from ..sample import SpatialSample

    if isinstance(sample, SpatialSample):
        cent = sample.centroids
        if image_shape is None:
            shapes = {im.shape for im in sample.images.values()}
            if sample.segmentation is not None:
                shapes.add(tuple(sample.segmentation.shape))
            if len(shapes) != 1:
                raise StmorphInputError(
                    f"the sample's images have shapes {sorted(shapes)}", expected="stain images (and segmentation) "
                    "on one pixel grid, or image_shape=",
                )
            image_shape = next(iter(shapes))
    elif isinstance(sample, str | PathLike):
        from ._source import SampleSource

        src = SampleSource.from_folder(sample)
        cent = src.centroids
        image_shape = image_shape or src.image_shape
    else:
        cent = np.asarray(sample, dtype=np.float64)
        if image_shape is None:
            raise StmorphInputError("plan_tiles got centroids but no image_shape", expected="image_shape=(rows, cols)")
    cent = np.asarray(cent, dtype=np.float64)
    if cent.ndim != 2 or cent.shape[1] < 2:
        raise StmorphInputError(f"centroids of shape {cent.shape}", expected="an (n, 2) array of [x, y] pixels")
    return cent[:, :2], (int(image_shape[0]), int(image_shape[1]))


def plan_tiles(
    sample: Any,
    tile_size: int = 2048,
    margin: int | None = None,
    *,
    crop_size: int | Sequence[int] | None = None,
    edge: Literal["shift", "pad"] = "shift",
    image_shape: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Cut the slide into tiles; each cell is owned by the tile containing its (rounded) centroid.

    Parameters
    ----------
    sample
        A :class:`~stmorph.SpatialSample`, a sample folder, or an ``(n, 2)`` array of ``[x, y]`` pixel centroids
        (then ``image_shape`` is required).
    tile_size
        Side of a tile in pixels (the owned square; the window adds the margin).
    margin
        Pixels added on every side of the owned square; default ``ceil(max(crop_size) / 2)`` (half the largest
        crop), ``0`` without ``crop_size``.
    crop_size
        Crop side(s) the tiles will cut. With it, each window is also widened to contain every owned cell's box
        as :func:`stmorph.crops.crop_boxes` places it on the whole image under ``edge`` (the ``"shift"`` rule moves
        boxes at the slide border inwards).
    edge
        ``"shift"`` or ``"pad"``, see :func:`stmorph.crops.crop_boxes`.
    image_shape
        ``(rows, columns)`` of the slide; default the sample's image shape.

    Returns
    -------
    pandas.DataFrame
        One row per tile that owns at least one cell, in row-major tile order, columns :data:`PLAN_COLUMNS`;
        ``attrs`` holds ``tile_size``, ``margin``, ``image_shape``, ``crop_sizes``, ``edge`` and ``n_cells``.

    Raises
    ------
    StmorphInputError
        When a rounded centroid lies outside the image, or ``tile_size``/``margin`` are not positive/non-negative.

    Examples
    --------
    >>> cent = np.array([[5.0, 5.0], [70.0, 10.0], [71.0, 90.0]])
    >>> plan = plan_tiles(cent, tile_size=64, crop_size=16, image_shape=(100, 100))
    >>> plan[["tile", "r0", "r1", "c0", "c1", "wr0", "wr1", "wc0", "wc1", "n_cells"]].to_numpy().tolist()
    [[0, 0, 64, 0, 64, 0, 72, 0, 72, 1], [1, 0, 64, 64, 100, 0, 72, 56, 100, 1], [3, 64, 100, 64, 100, 56, 100, 56, 100, 1]]
    >>> [c.tolist() for c in plan["cells"]]
    [[0], [1], [2]]
    """
    from ..crops import crop_boxes, round_half_up

    tile_size = int(tile_size)
    if tile_size <= 0:
        raise StmorphInputError(f"tile_size={tile_size}", expected="a positive number of pixels")
    if edge not in ("shift", "pad"):
        raise StmorphInputError(f"edge={edge!r}", expected="'shift' or 'pad'")
    cent, (h, w) = _centroids_and_shape(sample, image_shape)
    sizes = [] if crop_size is None else [int(s) for s in np.atleast_1d(np.asarray(crop_size))]
    if any(s <= 0 for s in sizes):
        raise StmorphInputError(f"crop_size={crop_size}", expected="positive crop sides in pixels")
    if margin is None:
        margin = -(-max(sizes) // 2) if sizes else 0
    margin = int(margin)
    if margin < 0:
        raise StmorphInputError(f"margin={margin}", expected="a non-negative number of pixels")
    if not np.all(np.isfinite(cent)):
        bad = np.flatnonzero(~np.all(np.isfinite(cent), axis=1))[:10].tolist()
        raise StmorphInputError(f"non-finite centroids at rows {bad}", expected="finite [x, y] pixel coordinates")
    row, col = round_half_up(cent[:, 1]), round_half_up(cent[:, 0])
    outside = (row < 0) | (row >= h) | (col < 0) | (col >= w)
    if outside.any():
        bad = np.flatnonzero(outside)
        raise StmorphInputError(
            f"{bad.size} centroid(s) lie outside the {h} x {w} image, e.g. rows {bad[:10].tolist()}",
            column="obsm['spatial']", expected="centroids in image pixels [x, y] inside the image",
        )
    n_tc = -(-w // tile_size)
    tr, tc = row // tile_size, col // tile_size
    tile = tr * n_tc + tc
    order = np.argsort(tile, kind="stable")  # rows ascending inside each tile
    ids, starts, counts = np.unique(tile[order], return_index=True, return_counts=True)
    t_row, t_col = ids // n_tc, ids % n_tc
    r0, c0 = t_row * tile_size, t_col * tile_size
    r1, c1 = np.minimum(r0 + tile_size, h), np.minimum(c0 + tile_size, w)
    wr0, wr1 = np.maximum(r0 - margin, 0), np.minimum(r1 + margin, h)
    wc0, wc1 = np.maximum(c0 - margin, 0), np.minimum(c1 + margin, w)
    for s in sizes:
        boxes = crop_boxes(cent, s, (h, w), edge=edge)[order]
        if ids.size:
            wr0 = np.minimum(wr0, np.maximum(np.minimum.reduceat(boxes[:, 0], starts), 0))
            wc0 = np.minimum(wc0, np.maximum(np.minimum.reduceat(boxes[:, 1], starts), 0))
            wr1 = np.maximum(wr1, np.minimum(np.maximum.reduceat(boxes[:, 0] + s, starts), h))
            wc1 = np.maximum(wc1, np.minimum(np.maximum.reduceat(boxes[:, 1] + s, starts), w))
    cells = np.split(order.astype(np.int64), starts[1:]) if ids.size else []
    plan = pd.DataFrame({
        "tile": ids.astype(np.int64), "tile_row": t_row.astype(np.int64), "tile_col": t_col.astype(np.int64),
        "r0": r0, "r1": r1, "c0": c0, "c1": c1, "wr0": wr0, "wr1": wr1, "wc0": wc0, "wc1": wc1,
        "n_cells": counts.astype(np.int64), "cells": pd.Series(cells, dtype=object),
    }, columns=list(PLAN_COLUMNS))
    for c in PLAN_COLUMNS[3:11]:
        plan[c] = plan[c].astype(np.int64)
    plan.attrs.update({
        "tile_size": tile_size, "margin": margin, "image_shape": [h, w], "crop_sizes": sizes, "edge": edge,
        "n_cells": int(cent.shape[0]),
    })
    return plan


def tile_windows(image_shape: tuple[int, int], block: int = 4096) -> list[tuple[int, int, int, int]]:
    """Non-overlapping ``(r0, r1, c0, c1)`` blocks covering an image (for chunked whole-image reductions).

    Examples
    --------
    >>> tile_windows((5, 7), block=4)
    [(0, 4, 0, 4), (0, 4, 4, 7), (4, 5, 0, 4), (4, 5, 4, 7)]
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    return [(r, min(r + block, h), c, min(c + block, w)) for r in range(0, h, block) for c in range(0, w, block)]
