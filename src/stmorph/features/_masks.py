"""Masks for the feature extractors on plain arrays: each cell's label cropped with its box
(:func:`crop_label_image`, which is :func:`stmorph.crops.crop_masks`), and cell polygons rasterised into a label
image (:func:`rasterize_polygons`).

Kept in :mod:`stmorph.features` (not :mod:`stmorph.crops`, which imports torch) so that importing the features
namespace stays light.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import StmorphInputError

__all__ = ["crop_label_image", "rasterize_polygons"]


def crop_label_image(label_image: np.ndarray, boxes: np.ndarray, size: int, ids: np.ndarray) -> np.ndarray:
    """Binary masks of each cell's own label inside its crop box; see :func:`stmorph.crops.crop_masks`.

    Examples
    --------
    >>> lab = np.zeros((10, 10), int); lab[2:5, 2:5] = 7
    >>> int(crop_label_image(lab, np.array([[0, 0]]), 6, np.array([7]))[0].sum())
    9
    """
    from ..crops import crop_masks

    return crop_masks(label_image, boxes, size, ids)


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise cell polygons (Xenium/MERSCOPE boundaries, pixel ``[x, y]`` vertices) to a label image.

    Polygon ``i`` gets label ``i + 1``; where polygons overlap, the later one wins.

    Parameters
    ----------
    polygons
        One ``(k, 2)`` array of ``[x, y]`` pixel vertices per cell.
    shape
        ``(rows, columns)`` of the label image.

    Returns
    -------
    ``(rows, columns)`` int32 label image.

    Examples
    --------
    >>> sq = np.array([[1, 1], [4, 1], [4, 4], [1, 4]], float)
    >>> int((rasterize_polygons([sq], (6, 6)) == 1).sum())  # vertices on pixel centres 1..4, inclusive
    16
    """
    from skimage.draw import polygon as draw_polygon

    out = np.zeros(tuple(int(s) for s in shape), dtype=np.int32)
    for i, poly in enumerate(polygons):
        p = np.asarray(poly, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
            raise StmorphInputError(f"polygon {i} has shape {p.shape}", expected="(k >= 3, 2) [x, y] vertices")
        rr, cc = draw_polygon(p[:, 1], p[:, 0], shape=out.shape)
        out[rr, cc] = i + 1
    return out
