"""stmorph.features: classical (CellProfiler via cp-measure) and pretrained-CNN morphology features of stain crops."""

from ._cellprofiler import (
    ALL_MODULES,
    DEFAULT_MODULES,
    DEFAULT_PARAMS,
    cellprofiler_features,
    measure_crop,
    measure_crops,
)
from ._cnn import SmallResNet, cnn_features, extract_cnn_features, load_cnn
from ._masks import crop_label_image, rasterize_polygons
from ._quality import image_quality, otsu_binary
from ._selection import DEFAULT_BLOCKLIST, select_features

__all__ = [
    "ALL_MODULES",
    "DEFAULT_BLOCKLIST",
    "DEFAULT_MODULES",
    "DEFAULT_PARAMS",
    "SmallResNet",
    "cellprofiler_features",
    "cnn_features",
    "crop_label_image",
    "extract_cnn_features",
    "image_quality",
    "load_cnn",
    "measure_crop",
    "measure_crops",
    "otsu_binary",
    "rasterize_polygons",
    "select_features",
]
