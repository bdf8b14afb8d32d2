"""stmorph.io - readers of spatial transcriptomics outputs into :class:`~stmorph.SpatialSample`.

``read(path, format=None)`` detects the format from the files present (first match in this order):

============== =================================================================================
``stmorph``     a folder written by :meth:`SpatialSample.write` / :func:`write` (``sample.json``)
``spatialdata`` a SpatialData ``.zarr`` store (optional extra ``stmorph[spatialdata]``)
``xenium``      native 10x Xenium output (``transcripts.parquet``/``.csv.gz``, ``cells``, morphology image)
``baysor``      Baysor segmentation folder (``segmentation.csv`` + stats, counts, stain stacks)
``merfish_tables`` per-cell tables (``gene_counts.csv`` + ``cell_meta_data.csv`` + labels + embeddings)
``merscope``    Vizgen MERSCOPE region folder (transcripts, cell tables, boundaries, mosaics)
``cosmx``       NanoString CosMx flat-file export (FOVs stitched, CellLabels, images)
``generic``     any molecule table by column mapping (never auto-detected)
============== =================================================================================

Add formats with :func:`register_reader`.
"""

from __future__ import annotations

from pathlib import Path

from ..sample import SpatialSample
from ._baysor import detect_baysor, read_baysor
from ._common import CONTROL_PREFIXES
from ._cosmx import detect_cosmx, read_cosmx
from ._generic import PRESETS, read_generic
from ._merfish import detect_merfish_tables, read_merfish_tables
from ._merscope import detect_merscope, read_merscope
from ._registry import ReaderSpec, available_formats, detect_format, read, register_reader, write
from ._spatialdata import detect_spatialdata, from_spatialdata, read_spatialdata, to_spatialdata
from ._xenium import XENIUM_DEFAULT_PIXEL_SIZE, convert_xenium, detect_xenium, read_xenium

__all__ = [
    "read",
    "write",
    "register_reader",
    "available_formats",
    "detect_format",
    "ReaderSpec",
    "read_baysor",
    "read_merfish_tables",
    "read_xenium",
    "convert_xenium",
    "read_generic",
    "read_merscope",
    "read_cosmx",
    "read_stmorph",
    "read_spatialdata",
    "to_spatialdata",
    "from_spatialdata",
    "PRESETS",
    "CONTROL_PREFIXES",
    "XENIUM_DEFAULT_PIXEL_SIZE",
]


def read_stmorph(path: str | Path) -> SpatialSample:
    """Read a sample folder written by :func:`write` / :meth:`SpatialSample.write`.

    Parameters
    ----------
    path
        The folder (holds ``sample.json``).

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> from stmorph.io import read_stmorph
    >>> s = read_stmorph("ileum.stmorph")  # doctest: +SKIP
    """
    return SpatialSample.read(path)


def _detect_stmorph(path: Path) -> bool:
    return path.is_dir() and (path / "sample.json").exists()


register_reader("stmorph", detect=_detect_stmorph, read=read_stmorph, description="stmorph sample folder (sample.json)")
register_reader("spatialdata", detect=detect_spatialdata, read=read_spatialdata, description="SpatialData .zarr store")
register_reader("xenium", detect=detect_xenium, read=read_xenium, description="native 10x Xenium output folder")
register_reader("baysor", detect=detect_baysor, read=read_baysor, description="Baysor segmentation folder (MERFISH)")
register_reader(
    "merfish_tables", detect=detect_merfish_tables, read=read_merfish_tables,
    description="per-cell MERFISH tables: gene_counts.csv + cell_meta_data.csv (+ labels, embeddings)",
)
register_reader(
    "merscope", detect=detect_merscope, read=read_merscope,
    description="Vizgen MERSCOPE region folder (detected_transcripts.csv, cell_by_gene.csv, cell boundaries, mosaics)",
)
register_reader("cosmx", detect=detect_cosmx, read=read_cosmx, description="NanoString CosMx flat-file export (FOVs stitched)")
register_reader("generic", detect=None, read=read_generic, description="any molecule table, by column mapping (columns=...)")
