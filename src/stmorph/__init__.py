"""stmorph: what does cell morphology add to the transcripts?

Namespaces (scanpy style, imported lazily so ``import stmorph`` stays fast):

* :mod:`stmorph.io` - readers (Baysor/MERFISH, Xenium, generic tables, SpatialData) into :class:`SpatialSample`
* :mod:`stmorph.datasets` - simulators: synthetic tissue with morphology, MUSE's multi-modal simulator
* :mod:`stmorph.crops` - stain crops, transcript-spot planes and the PyTorch dataset
* :mod:`stmorph.tl` - tools writing embeddings into AnnData/MuData (VAEs, MUSE, baselines)
* :mod:`stmorph.features` - CellProfiler and pretrained-CNN features from stain crops
* :mod:`stmorph.eval` - PERMANOVA/PERMDISP, classification, clustering, gene prediction
* :mod:`stmorph.pl` - plots
* :mod:`stmorph.pipeline` - the one-command study and its report
* :mod:`stmorph.distributed` - per-cell work of whole slides, tile by tile on dask.distributed
"""

from __future__ import annotations

import importlib
from typing import Any

from ._threads import _passive_openmp, settings
from .errors import StmorphInputError
from .sample import (
    LABEL_ID_KEY,
    LABEL_KEY,
    LabelImage,
    PolygonSegmentation,
    SpatialSample,
    StainImage,
    read_sample,
)

_passive_openmp()  # before torch/numba start their OpenMP pools

__version__ = "0.3.0"

_SUBMODULES = {"io", "datasets", "crops", "pp", "tl", "features", "eval", "pl", "pipeline", "models", "distributed"}

__all__ = [
    "SpatialSample", "StainImage", "LabelImage", "PolygonSegmentation", "StmorphInputError", "read_sample", "LABEL_KEY",
    "LABEL_ID_KEY", "settings", "__version__", *sorted(_SUBMODULES),
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'stmorph' has no attribute {name!r}")
