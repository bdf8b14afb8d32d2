"""stmorph.crops: stain crops, transcript-spot planes and the PyTorch dataset of per-cell crops.

Pure kernels over plain arrays (usable on Dask workers unchanged):

* :func:`crop_boxes`, :func:`crop_stains` - square stain crops around centroids (memory-map friendly)
* :func:`render_spot_planes`, :func:`spot_pixels`, :func:`spot_origins`, :class:`SpotRenderer` - binary
  per-gene spot planes rendered on the fly from the CSR molecule index
* :func:`rotate_crops`, :func:`rotation_ks` - seeded 90-degree rotations, one per cell

* :func:`crop_masks`, :func:`resolve_masks`, :func:`crop_size_px` - cell masks in crops, crop sizes in um

and the :class:`CellCropDataset` built on them.
"""

from ._dataset import CellCropDataset, select_cells
from ._masks import (
    SAMPLE_MASKS,
    check_masks_found,
    crop_masks,
    crop_size_px,
    median_cell_diameter_px,
    resolve_masks,
)
from ._rotate import rotate_crops, rotation_ks
from ._spots import (
    SpotBufferPool,
    SpotRenderer,
    flat_to_coords,
    gene_lookup,
    render_spot_planes,
    spot_origins,
    spot_pixels,
    square_extent,
)
from ._stains import crop_boxes, crop_stains, image_ranges, round_half_up

__all__ = [
    "CellCropDataset",
    "SAMPLE_MASKS",
    "check_masks_found",
    "crop_masks",
    "crop_size_px",
    "median_cell_diameter_px",
    "resolve_masks",
    "SpotBufferPool",
    "SpotRenderer",
    "crop_boxes",
    "crop_stains",
    "flat_to_coords",
    "gene_lookup",
    "image_ranges",
    "render_spot_planes",
    "rotate_crops",
    "rotation_ks",
    "round_half_up",
    "select_cells",
    "spot_origins",
    "spot_pixels",
    "square_extent",
]
