"""Shared helpers of the vendor-layout writers (``write_baysor_layout``, ``write_xenium_layout``,
``write_merscope_layout``, ``write_cosmx_layout``): molecule-to-cell rows, integer counts, stain z-stacks.

The writers turn a :class:`~stmorph.SpatialSample` (usually a :func:`~stmorph.datasets.synthetic_tissue`) into
the files a vendor's software writes, so that each reader can be tested end to end on known truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..sample import SpatialSample

__all__ = ["defocus_stack", "cell_positions", "int_counts", "z_planes_of"]


def defocus_stack(image: np.ndarray, z_planes: int, *, sigma_per_plane: float = 1.2,
                  attenuation: float = 0.1) -> np.ndarray:
    """A (Z, H, W) stack whose middle plane (``z_planes // 2``) is ``image`` and the others defocused.

    Plane ``p`` is the image blurred with a Gaussian of ``sigma_per_plane * |p - mid|`` pixels, its signal
    above the background (the 1st percentile) dimmed by ``attenuation`` per plane.

    Parameters
    ----------
    image
        2-D uint16 image (the in-focus plane).
    z_planes
        Number of planes.
    sigma_per_plane
        Blur added per plane away from focus.
    attenuation
        Relative loss of signal per plane away from focus.

    Returns
    -------
    numpy.ndarray
        (z_planes, H, W) uint16 stack.

    Examples
    --------
    >>> img = np.full((32, 32), 100, dtype=np.uint16)
    >>> defocus_stack(img, 3).shape
    (3, 32, 32)
    """
    from scipy import ndimage

    mid = z_planes // 2
    img = np.asarray(image)
    bg = float(np.percentile(img, 1))
    out = np.empty((z_planes, *img.shape), dtype=np.uint16)
    f = img.astype(np.float32)
    for p in range(z_planes):
        d = abs(p - mid)
        if d == 0:
            out[p] = img
            continue
        plane = ndimage.gaussian_filter(f, sigma_per_plane * d)
        plane = bg + (plane - bg) * max(1.0 - attenuation * d, 0.0)
        out[p] = np.clip(np.rint(plane), 0, 65535).astype(np.uint16)
    return out


def cell_positions(sample: SpatialSample, mol: pd.DataFrame) -> np.ndarray:
    """Row of each molecule's cell in ``sample.adata`` (-1 = unassigned or not a cell of the sample)."""
    return pd.Index(sample.cell_ids).get_indexer(mol["cell_id"].astype("string").fillna("\x00__none__"))


def int_counts(sample: SpatialSample) -> np.ndarray:
    """The sample's counts as a dense int64 (cells x genes) matrix (rounded)."""
    X = sample.adata.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return np.rint(X).astype(np.int64)


def z_planes_of(sample: SpatialSample, z_planes: int | None) -> int:
    """``z_planes``, else the planes the sample was simulated with (``uns["synthetic_tissue"]``), else 3."""
    if z_planes is not None:
        return int(z_planes)
    info = sample.adata.uns.get("synthetic_tissue", {})
    return int(info.get("params", {}).get("z_planes", 3)) if isinstance(info, dict) else 3
