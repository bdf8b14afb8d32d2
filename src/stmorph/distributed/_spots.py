"""Transcript spots per tile: the molecule table partitioned by owning tile once, then rendered in the tasks.

The driver streams ``molecules.parquet`` (or the sample's table) once and writes each assigned molecule, with its
cell's row and its gene's code, under ``inputs/molecules/tile=<id>/`` (hive partitions, :mod:`pyarrow.dataset`),
so that a task reads only the molecules of the cells it owns. Spot planes are then drawn by
:func:`stmorph.crops.render_spot_planes` from a molecule index of the tile's cells, with the slide's
coordinates, exactly as :class:`stmorph.crops.CellCropDataset` draws them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..sample import MoleculeIndex
from ._engine import TileTask
from ._source import SampleSource

__all__ = ["write_molecule_inputs", "tile_molecule_index", "molecule_dir"]


def molecule_dir(inputs_dir: Path) -> Path:
    return inputs_dir / "molecules"


def write_molecule_inputs(source: SampleSource, plan: pd.DataFrame, inputs_dir: Path, token: str) -> Path:
    """Partition the assigned molecules by the tile that owns their cell (once per plan; ``token`` names it).

    Columns written: ``row`` (int64, the cell's row of ``adata``), ``x``, ``y`` (float32 pixels), ``gene`` (int32
    code into the sample's genes). Molecules of unknown cells or genes are dropped, as
    :meth:`stmorph.SpatialSample.molecule_index` drops them.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    out = molecule_dir(inputs_dir)
    marker = out / f"_DONE-{token}"
    if marker.exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    tile_of_row = np.full(source.n_cells, -1, dtype=np.int64)
    for t, cells in zip(plan["tile"], plan["cells"]):
        tile_of_row[np.asarray(cells, dtype=np.int64)] = int(t)
    cell_index = pd.Index(source.cell_ids)
    gene_index = pd.Index(source.var_names)
    schema = pa.schema([("row", pa.int64()), ("x", pa.float32()), ("y", pa.float32()), ("gene", pa.int32()),
                        ("tile", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        for m in source.molecule_batches():
            cid = m["cell_id"].astype("string").fillna("\x00__unassigned__")
            row = cell_index.get_indexer(cid)
            gene = gene_index.get_indexer(m["gene"].astype(str))
            keep = (row >= 0) & (gene >= 0)
            row = row[keep]
            yield pa.RecordBatch.from_arrays([
                pa.array(row.astype(np.int64)), pa.array(m["x"].to_numpy(np.float32)[keep]),
                pa.array(m["y"].to_numpy(np.float32)[keep]), pa.array(gene[keep].astype(np.int32)),
                pa.array(tile_of_row[row]),
            ], schema=schema)

    out.mkdir(parents=True, exist_ok=True)
    pads.write_dataset(
        batches(), out, schema=schema, format="parquet", partitioning=pads.partitioning(pa.schema([("tile", pa.int64())]), flavor="hive"),
        existing_data_behavior="overwrite_or_ignore", max_partitions=1_000_000, max_open_files=512,
    )
    marker.touch()
    return out


def tile_molecule_index(task: TileTask, mol_dir: str, gene_names: tuple[str, ...]) -> MoleculeIndex:
    """The molecule index (CSR over the task's owned cells, in ``task.rows`` order) of a tile's molecules."""
    import pyarrow.parquet as pq

    part = Path(mol_dir) / f"tile={int(task.tile)}"
    rows = np.asarray(task.rows, dtype=np.int64)
    if part.exists():
        tab = pq.read_table(part, columns=["row", "x", "y", "gene"])
        mrow = tab.column("row").to_numpy()
        x, y = tab.column("x").to_numpy(), tab.column("y").to_numpy()
        gene = tab.column("gene").to_numpy().astype(np.int32)
    else:
        mrow = np.zeros(0, np.int64)
        x = y = np.zeros(0, np.float32)
        gene = np.zeros(0, np.int32)
    pos = np.searchsorted(rows, mrow)
    ok = (pos < rows.size) & (rows[np.minimum(pos, max(rows.size - 1, 0))] == mrow) if rows.size else np.zeros(0, bool)
    pos = pos[ok]
    order = np.argsort(pos, kind="stable")
    counts = np.bincount(pos, minlength=rows.size)
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return MoleculeIndex(x=np.asarray(x, np.float32)[ok][order], y=np.asarray(y, np.float32)[ok][order],
                         gene=gene[ok][order], indptr=indptr, gene_names=tuple(gene_names))


def render_tile_spots(
    index: MoleculeIndex, local: np.ndarray, origins: np.ndarray, size: int, padding: int, codes: np.ndarray,
) -> np.ndarray:
    """Spot planes (uint8) of the task-local cells ``local`` at ``origins`` (slide coordinates)."""
    from ..crops import render_spot_planes

    return render_spot_planes(index, local, origins, size, padding=padding, genes=codes)


def spot_origins_for(
    index: MoleculeIndex, local: np.ndarray, centers: np.ndarray, size: int, mode: str, padding: int,
    boxes: np.ndarray | None,
) -> np.ndarray:
    """Crop origins of the spot planes as :class:`~stmorph.crops.CellCropDataset` sets them."""
    from ..crops import spot_origins

    if mode == "centroid" and boxes is not None:
        return boxes
    return spot_origins(index, local, centers, size, mode=mode, padding=padding)  # type: ignore[arg-type]


def gene_codes(var_names: list[str], genes: list[str]) -> np.ndarray:
    return pd.Index(var_names).get_indexer(genes).astype(np.int64)
