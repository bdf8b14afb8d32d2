"""stmorph.distributed: per-cell work of whole slides on dask.distributed (100k-1M cells).

The slide is cut into tiles (:func:`plan_tiles`); each cell is owned by the tile containing its centroid and each
tile reads only its window (the tile plus half the largest crop) of the stains and the segmentation. One engine
(:func:`run_tiles`) runs a task per tile on a ``dask.distributed`` client - the one given, the scheduler at an
address (a SLURM cluster through dask-jobqueue), the active one, or a :class:`~distributed.LocalCluster` of worker
processes - streams the results back as they finish, writes each tile's output into a folder with a manifest, and
resumes a killed run from its finished tiles.

Per-cell kinds built on it:

* :func:`cellprofiler_features` - CellProfiler features equal to :func:`stmorph.features.cellprofiler_features`;
* :func:`cnn_features` - CNN features equal to :func:`stmorph.features.cnn_features` (the network run per tile,
  the PCA once on the whole table);
* :func:`write_crops` / :func:`open_crops` - stain (and spot) crops written once to a chunked zarr store that
  training can stream from;
* :func:`vae_latents` - the latent space of a trained :class:`~stmorph.models.vae.CropVAE`.
"""

from ._cnn import cnn_features
from ._crops import CropStore, StoreCropDataset, open_crops, write_crops
from ._engine import TileRun, TileTask, TileTaskError, engine_client, read_manifest, run_tiles, worker_memory
from ._features import cellprofiler_features
from ._plan import PLAN_COLUMNS, plan_tiles
from ._source import SampleSource
from ._vae import vae_latents

__all__ = [
    "CropStore",
    "PLAN_COLUMNS",
    "SampleSource",
    "StoreCropDataset",
    "TileRun",
    "TileTask",
    "TileTaskError",
    "cellprofiler_features",
    "cnn_features",
    "engine_client",
    "open_crops",
    "plan_tiles",
    "read_manifest",
    "run_tiles",
    "vae_latents",
    "worker_memory",
    "write_crops",
]
