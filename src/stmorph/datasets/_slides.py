"""Synthetic slides: a grid of distinct synthetic tissues, drawn one at a time and written out of core.

* :class:`TissueGrid` - the grid: tissue ``k`` of ``ceil(n_cells / tissue_cells)`` is its own
  :func:`~stmorph.datasets.synthetic_tissue` drawn from ``(seed, k)`` with one shared ``design_random_state``, so
  ``type_k`` means the same program everywhere and no cell is a copy of another. Iterating the grid draws the
  tissues one by one (a generator): at most the tissue being drawn and the one just handed out are alive.
  ``benchmarks/bench_scale.py::make_slide`` (the sample-folder slide) and :func:`write_xenium_slide` share it.
* :func:`write_xenium_slide` - a slide of ``n_cells`` cells in the native 10x Xenium layout, written tissue by
  tissue: memory stays at a few tissues' worth whatever ``n_cells``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_dir
from .._utils import progress
from ..errors import StmorphInputError
from ..sample import SpatialSample

__all__ = ["SlideTissue", "TissueGrid", "write_xenium_slide"]

#: Cells of one tissue of a slide (the benchmarks' default).
TISSUE_CELLS = 2000
_TRANSCRIPT_ID0 = 281474976710656  # the first transcript id of XOA outputs (2 ** 48)


# ---------------------------------------------------------------------------------------------------------------
# the grid of tissues
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlideTissue:
    """One tissue of a :class:`TissueGrid`, placed on the slide.

    Attributes
    ----------
    index
        Position ``k`` in the grid (row-major).
    row, col
        Grid row and column.
    origin
        ``(y, x)`` pixel of the block's top-left corner on the slide.
    sample
        The tissue (``synthetic_tissue``): cell ``i`` of ``sample.adata`` is label ``i + 1`` of ``cells``.
    cells, nuclei
        The tissue's cell and nucleus label images (a nucleus carries its cell's label).
    n_cells
        Cells of the slide in this tissue: the first ``n_cells`` rows (fewer than the tissue's in the last one).
    first_cell
        Row of the tissue's first cell among the slide's cells.

    Examples
    --------
    >>> t = next(iter(TissueGrid(500, tissue_cells=300, n_genes=20)))
    >>> t.index, t.n_cells, t.first_cell, t.block[0].start
    (0, 300, 0, 0)
    """

    index: int
    row: int
    col: int
    origin: tuple[int, int]
    sample: SpatialSample
    cells: np.ndarray
    nuclei: np.ndarray
    n_cells: int
    first_cell: int

    @property
    def block(self) -> tuple[slice, slice]:
        """The tissue's block of the slide's pixel grid, ``(rows, columns)``."""
        h, w = self.cells.shape
        return slice(self.origin[0], self.origin[0] + h), slice(self.origin[1], self.origin[1] + w)


class TissueGrid:
    """A slide of ``n_cells`` cells as a grid of distinct synthetic tissues, drawn lazily one at a time.

    The first tissue (``synthetic_tissue(tissue_cells)`` from ``(seed, 0)``) fixes the block size; every later one
    is drawn into a block of that size from ``(seed, d)`` with the next draw number ``d``; a tissue whose cells do
    not fit into the block is drawn again with the next number (counted in :attr:`redrawn`). All share
    ``design_random_state=seed``. The grid is ``ceil(sqrt(n_tissues))`` columns wide.

    Parameters
    ----------
    n_cells
        Cells of the slide (the last tissue's cells beyond it are left out: :attr:`SlideTissue.n_cells`).
    tissue_cells
        Cells of one tissue.
    seed
        Seed of the cell types' design and of the tissues' draws.
    **tissue_kwargs
        Further arguments of :func:`~stmorph.datasets.synthetic_tissue` (``n_types``, ``n_genes``, ``layout``,
        ``pixel_size``, ...; not ``image_size`` or the seeds).

    Attributes
    ----------
    n_tissues, rows, cols
        Tissues and the grid's rows and columns.
    block
        ``(h, w)`` pixels of a block; :attr:`shape` ``(rows * h, cols * w)`` of the slide.
    channels
        Stain name -> dtype of the tissues' images.
    pixel_size
        Micrometres per pixel.
    redrawn
        Tissues drawn again so far because their cells did not fit.

    Examples
    --------
    >>> grid = TissueGrid(600, tissue_cells=300, n_genes=20)
    >>> grid.n_tissues, grid.rows, grid.cols
    (2, 1, 2)
    >>> [t.n_cells for t in grid]
    [300, 300]
    """

    def __init__(self, n_cells: int, *, tissue_cells: int = TISSUE_CELLS, seed: int = 0, **tissue_kwargs: Any) -> None:
        bad = {"image_size", "random_state", "design_random_state", "return_masks", "n_cells"} & set(tissue_kwargs)
        if bad:
            raise StmorphInputError(f"TissueGrid sets {sorted(bad)} itself", column=sorted(bad)[0],
                                    expected="other synthetic_tissue arguments")
        if int(n_cells) < 1 or int(tissue_cells) < 1:
            raise StmorphInputError(f"n_cells={n_cells}, tissue_cells={tissue_cells}", column="n_cells",
                                    expected="at least one cell")
        self.n_cells, self.tissue_cells, self.seed = int(n_cells), int(tissue_cells), int(seed)
        self.tissue_kwargs = dict(tissue_kwargs)
        self._first: tuple[SpatialSample, np.ndarray, np.ndarray] | None = self._draw(0, None)
        sample = self._first[0]
        self.block: tuple[int, int] = tuple(int(v) for v in sample.images["DAPI"].shape)  # type: ignore[assignment]
        self.channels: dict[str, np.dtype] = {k: np.asarray(v.read()).dtype for k, v in sample.images.items()}
        self.pixel_size = float(sample.pixel_size or 0.5)
        self.n_tissues = math.ceil(self.n_cells / self.tissue_cells)
        self.cols = math.ceil(math.sqrt(self.n_tissues))
        self.rows = math.ceil(self.n_tissues / self.cols)
        self.redrawn = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` pixels of the slide."""
        return self.rows * self.block[0], self.cols * self.block[1]

    def __len__(self) -> int:
        return self.n_tissues

    def _draw(self, draw: int, image_size: tuple[int, int] | None) -> tuple[SpatialSample, np.ndarray, np.ndarray]:
        from ._tissue import synthetic_tissue

        out = synthetic_tissue(n_cells=self.tissue_cells, image_size=image_size,
                               random_state=np.random.default_rng([self.seed, draw]), design_random_state=self.seed,
                               return_masks="both", **self.tissue_kwargs)
        return out  # type: ignore[return-value]

    def __iter__(self) -> Iterator[SlideTissue]:
        """The tissues in grid order, each drawn when asked for (the first one was drawn by the constructor)."""
        h, w = self.block
        draw = 0
        self.redrawn = 0
        for k in range(self.n_tissues):
            drawn = None
            if k == 0:
                drawn, self._first = self._first, None
                if drawn is None:  # a second pass over the grid: the first tissue again
                    drawn = self._draw(0, None)
            while drawn is None:
                draw += 1
                try:
                    drawn = self._draw(draw, (h, w))
                except StmorphInputError:  # the cells did not fit into the block: draw another tissue
                    self.redrawn += 1
            r, c = divmod(k, self.cols)
            sample, cells, nuclei = drawn
            del drawn
            yield SlideTissue(k, r, c, (r * h, c * w), sample, cells, nuclei,
                              min(self.tissue_cells, self.n_cells - k * self.tissue_cells), k * self.tissue_cells)
            del sample, cells, nuclei  # nothing of this tissue stays here while the next one is drawn


# ---------------------------------------------------------------------------------------------------------------
# the Xenium slide
# ---------------------------------------------------------------------------------------------------------------
def write_xenium_slide(
    out_dir: str | PathLike,
    n_cells: int,
    *,
    tissue_cells: int = TISSUE_CELLS,
    seed: int = 0,
    pixel_size: float = 0.5,
    origin_um: tuple[float, float] = (0.0, 0.0),
    control_fraction: float = 0.005,
    boundaries: bool = True,
    cells_zarr: bool | None = None,
    pyramid: bool = True,
    xenium_cell_ids: bool = True,
    tile: int = 256,
    overwrite: bool = False,
    show_progress: bool | None = None,
    **tissue_kwargs: Any,
) -> Path:
    """Write a synthetic slide of ``n_cells`` cells in the native 10x Xenium layout, out of core.

    The slide is a :class:`TissueGrid`: distinct ``tissue_cells``-cell tissues of one cell-type design in a grid
    (as ``benchmarks/bench_scale.py::make_slide``). The tissues are drawn one at a time and each is written before
    the next is drawn, so memory holds a few tissues whatever ``n_cells`` (the stains pass through scratch files
    on disk, about ``4 * height * width`` bytes, removed at the end). Files, as :func:`write_xenium_layout` writes
    them for one tissue, with micrometres ``origin_um + slide pixels * pixel_size``:

    * ``transcripts.parquet`` - one row group per tissue: ``transcript_id`` (uint64), ``cell_id``
      (``"UNASSIGNED"`` for background molecules), ``overlaps_nucleus`` (uint8), ``feature_name``,
      ``x_location``, ``y_location``, ``z_location``, ``qv`` (float32, as XOA writes them), plus
      ``control_fraction`` ``NegControlProbe_*`` / ``BLANK_*`` rows at molecules of random cells;
    * ``cells.parquet`` - ``cell_id, x_centroid, y_centroid, transcript_counts, control_probe_counts,
      total_counts, cell_area, nucleus_area`` (square micrometres), one row group per tissue;
    * ``cell_boundaries.parquet``, ``nucleus_boundaries.parquet`` - closed rings along the masks' pixel edges
      (``cell_id, vertex_x, vertex_y, label_id``; ``label_id`` the label in ``cells.zarr.zip``);
    * ``cells.zarr.zip`` - XOA 2.x masks (``masks/1`` cells labelled ``row + 1`` of ``cells.parquet``,
      ``masks/0`` nuclei), written one chunk per tissue (chunks are the tissues' blocks), ``cell_id``,
      ``cell_summary``, ``polygon_sets/<mask>/cell_index``;
    * ``morphology_focus/morphology_focus_0000.ome.tif`` (DAPI) and ``_0001`` (membrane, named
      ``ATP1A1/CD45/E-Cadherin``): tiled, zlib-compressed OME-TIFFs written tile by tile, with a pyramid of
      2x-decimated levels as sub-IFDs (each level from a scratch copy of the one above);
    * ``experiment.xenium`` (``pixel_size``, ``num_cells``, the grid under ``stmorph_slide``) and
      ``cell_types.csv`` (``cell_id, cell_type, tissue``: the ground truth).

    Cells beyond ``n_cells`` in the last tissue are left out: no mask, their transcripts unassigned.

    Parameters
    ----------
    out_dir
        Folder to create (written beside its place and moved there when complete).
    n_cells
        Cells of the slide.
    tissue_cells
        Cells of one tissue.
    seed
        Seed of the cell-type design, the tissues, quality values, transcript ids and control rows.
    pixel_size
        Micrometres per pixel of the stains (``synthetic_tissue`` draws cells in pixels at 0.5 um/px).
    origin_um
        ``(x, y)`` micrometres of pixel ``(0, 0)``.
    control_fraction
        Control-probe rows per tissue as a fraction of its molecules (at least 4).
    boundaries
        Write ``cell_boundaries.parquet`` and ``nucleus_boundaries.parquet``.
    cells_zarr
        Write ``cells.zarr.zip``; default when zarr can be imported.
    pyramid
        Write reduced levels of the stains (else level 0 only).
    xenium_cell_ids
        Xenium-style cell ids (``"aaaaaaab-1"`` for row 0, ...); else ``"<tissue>_cell_<i>"``.
    tile
        Tile side of the OME-TIFFs (a multiple of 16).
    overwrite
        Replace an existing folder.
    show_progress
        Progress bar over the tissues (default: unless ``STMORPH_PROGRESS=0``).
    **tissue_kwargs
        Passed to :func:`~stmorph.datasets.synthetic_tissue` for every tissue (``n_types``, ``n_genes``,
        ``layout``, signals, ...).

    Returns
    -------
    pathlib.Path
        The folder written.

    Examples
    --------
    >>> from stmorph.datasets import write_xenium_slide
    >>> from stmorph.io import read_xenium
    >>> write_xenium_slide("slide_xenium", 100_000)  # doctest: +SKIP
    PosixPath('slide_xenium')
    >>> read_xenium("slide_xenium").n_cells  # doctest: +SKIP
    100000
    """
    from ..io._xenium import _zarr_available

    if not pixel_size > 0:
        raise StmorphInputError(f"pixel_size={pixel_size}", column="pixel_size", expected="> 0")
    if tile < 16 or tile % 16:
        raise StmorphInputError(f"tile={tile}", column="tile", expected="a positive multiple of 16")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    grid = TissueGrid(n_cells, tissue_cells=tissue_cells, seed=seed, pixel_size=float(pixel_size), **tissue_kwargs)
    use_zarr = cells_zarr if cells_zarr is not None else _zarr_available()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        scratch = tmp / ".scratch"
        scratch.mkdir()
        writer = _SlideWriter(tmp, scratch, grid, float(pixel_size), origin_um, control_fraction, boundaries,
                              use_zarr, xenium_cell_ids)
        try:
            for t in progress(grid, desc="xenium slide", total=len(grid), disable=None if show_progress is None
                              else not show_progress, unit="tissue"):
                writer.add(t)
                del t
            writer.finish(pyramid=pyramid, tile=int(tile))
        finally:
            writer.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return out


class _SlideWriter:
    """The open files of a Xenium slide being written; :meth:`add` writes one tissue everywhere."""

    def __init__(self, folder: Path, scratch: Path, grid: TissueGrid, ps: float, origin: tuple[float, float],
                 control_fraction: float, boundaries: bool, use_zarr: bool, xenium_ids: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder, self.scratch, self.grid, self.ps = folder, scratch, grid, ps
        self.x0, self.y0 = float(origin[0]), float(origin[1])
        self.control_fraction, self.boundaries, self.xenium_ids = float(control_fraction), boundaries, xenium_ids
        self.next_tid = 0
        self.n_nuclei = 0
        self.gene_names: list[str] | None = None
        self.schemas = {
            "transcripts": pa.schema([("transcript_id", pa.uint64()), ("cell_id", pa.string()),
                                      ("overlaps_nucleus", pa.uint8()), ("feature_name", pa.string()),
                                      ("x_location", pa.float32()), ("y_location", pa.float32()),
                                      ("z_location", pa.float32()), ("qv", pa.float32())]),
            "cells": pa.schema([("cell_id", pa.string()), ("x_centroid", pa.float64()), ("y_centroid", pa.float64()),
                                ("transcript_counts", pa.int64()), ("control_probe_counts", pa.int64()),
                                ("total_counts", pa.int64()), ("cell_area", pa.float64()),
                                ("nucleus_area", pa.float64())]),
        }
        bschema = pa.schema([("cell_id", pa.string()), ("vertex_x", pa.float32()), ("vertex_y", pa.float32()),
                             ("label_id", pa.uint32())])
        names = ["transcripts", "cells"] + (["cell_boundaries", "nucleus_boundaries"] if boundaries else [])
        self.writers = {n: pq.ParquetWriter(folder / f"{n}.parquet", self.schemas.get(n, bschema)) for n in names}
        self.labels = open(folder / "cell_types.csv", "w", newline="")  # noqa: SIM115 - closed in close()
        self.labels.write("cell_id,cell_type,tissue\n")
        # stains: raw level-0 scratch files, filled block by block
        h, w = grid.shape
        self.raw: dict[str, Path] = {}
        for name, dt in grid.channels.items():
            p = scratch / f"{name}.raw"
            with open(p, "wb") as f:
                f.truncate(h * w * np.dtype(dt).itemsize)
            self.raw[name] = p
        self.zroot = _open_cells_zarr(scratch / "cells.zarr", grid, ps, (self.x0, self.y0)) if use_zarr else None

    # -- one tissue ---------------------------------------------------------------------------------------------
    def add(self, t: SlideTissue) -> None:
        import pyarrow as pa

        from ..io._writers_common import cell_positions

        s, n_k, row0 = t.sample, t.n_cells, t.first_cell
        r0, c0 = t.origin
        ps, seed = self.ps, self.grid.seed
        rng = np.random.default_rng([seed, 1, t.index])
        if self.gene_names is None:
            self.gene_names = list(s.gene_names)
        rows = np.arange(row0, row0 + n_k)
        ids = (_xenium_ids(rows) if self.xenium_ids
               else np.array([f"{t.index}_{c}" for c in s.cell_ids[:n_k]], dtype=object))
        cells_lab = np.where(t.cells <= n_k, t.cells, 0).astype(np.uint32)  # labels = local row + 1
        nuc_lab = np.where(t.nuclei <= n_k, t.nuclei, 0).astype(np.uint32)

        # -- transcripts (+ control probes at molecules of random cells) ----------------------------------------
        mol = s.molecules
        assert mol is not None
        pos = cell_positions(s, mol)
        pos[pos >= n_k] = -1  # the cells left out of the slide: unassigned
        x = mol["x"].to_numpy(np.float64) + c0
        y = mol["y"].to_numpy(np.float64) + r0
        z = mol["z"].to_numpy(np.float64)
        in_nuc = mol["in_nucleus"].to_numpy(bool)
        feature = mol["gene"].astype(str).to_numpy(object)
        n_ctrl = max(int(round(self.control_fraction * len(mol))), 4)
        assigned = np.flatnonzero(pos >= 0)
        src = rng.choice(assigned, n_ctrl) if len(assigned) else rng.integers(0, max(len(mol), 1), n_ctrl)
        half = n_ctrl // 2
        ctrl = np.array([f"NegControlProbe_{i % 5 + 1:05d}" for i in range(half)]
                        + [f"BLANK_{i % 5 + 1:04d}" for i in range(n_ctrl - half)], dtype=object)
        all_pos = np.concatenate([pos, pos[src]])
        m = len(all_pos)
        tid = _TRANSCRIPT_ID0 + self.next_tid + np.sort(rng.choice(10 * m, m, replace=False))
        self.next_tid += 10 * m
        tx = pa.table({
            "transcript_id": pa.array(tid.astype(np.uint64)),
            "cell_id": pa.array(np.where(all_pos >= 0, ids[np.maximum(all_pos, 0)] if n_k else "", "UNASSIGNED"),
                                type=pa.string()),
            "overlaps_nucleus": pa.array(np.concatenate([in_nuc, in_nuc[src]]).astype(np.uint8)),
            "feature_name": pa.array(np.concatenate([feature, ctrl]), type=pa.string()),
            "x_location": pa.array((self.x0 + np.concatenate([x, x[src]]) * ps).astype(np.float32)),
            "y_location": pa.array((self.y0 + np.concatenate([y, y[src]]) * ps).astype(np.float32)),
            "z_location": pa.array(np.concatenate([z, z[src]]).astype(np.float32)),
            "qv": pa.array(rng.uniform(20.0, 40.0, m).astype(np.float32)),
        }, schema=self.schemas["transcripts"])
        self.writers["transcripts"].write_table(tx)
        del tx, x, y, z, feature, all_pos

        # -- cells ------------------------------------------------------------------------------------------------
        X = s.adata.X[:n_k]
        counts = np.rint(X.toarray() if hasattr(X, "toarray") else np.asarray(X)).astype(np.int64).sum(1)
        src_pos = pos[src]
        ctrl_counts = np.bincount(src_pos[src_pos >= 0], minlength=n_k)[:n_k]
        obs = s.adata.obs.iloc[:n_k]
        cen = np.asarray(s.centroids[:n_k], dtype=np.float64)
        x_c = self.x0 + (cen[:, 0] + c0) * ps
        y_c = self.y0 + (cen[:, 1] + r0) * ps
        area = obs["cell_area"].to_numpy(np.float64) * ps * ps
        nuc_area_px = obs["nucleus_area"].to_numpy(np.float64)
        self.writers["cells"].write_table(pa.table({
            "cell_id": pa.array(ids, type=pa.string()), "x_centroid": x_c, "y_centroid": y_c,
            "transcript_counts": counts, "control_probe_counts": ctrl_counts.astype(np.int64),
            "total_counts": counts + ctrl_counts, "cell_area": area, "nucleus_area": nuc_area_px * ps * ps,
        }, schema=self.schemas["cells"]))
        pd.DataFrame({"cell_id": ids, "cell_type": obs["cell_type"].astype(str).to_numpy(), "tissue": t.index}).to_csv(
            self.labels, header=False, index=False)

        # -- nuclei numbered p + 1 over the slide (XOA >= 2.0), boundaries ------------------------------------------
        from ..io._xenium import _number_nuclei

        nuc_local, nuc_row = _number_nuclei(nuc_lab)  # labels 1..p of this tissue, each nucleus' local cell row
        n_nuc = len(nuc_row)
        if self.boundaries:
            origin_k = (self.x0 + c0 * ps, self.y0 + r0 * ps)
            self.writers["cell_boundaries"].write_table(
                _rings_table(cells_lab, np.arange(n_k), ids, origin_k, ps, label0=row0))
            self.writers["nucleus_boundaries"].write_table(
                _rings_table(nuc_local, nuc_row, ids, origin_k, ps, label0=self.n_nuclei))

        # -- masks and per-cell arrays of cells.zarr.zip -----------------------------------------------------------
        if self.zroot is not None:
            blk = t.block
            self.zroot["masks/1"][blk] = np.where(cells_lab > 0, cells_lab + np.uint32(row0), 0).astype(np.uint32)
            self.zroot["masks/0"][blk] = np.where(nuc_local > 0, nuc_local + np.uint32(self.n_nuclei), 0).astype(
                np.uint32)
            # (prefix, suffix) of the Xenium ids; for other ids the reader matches the store's rows by row order
            self.zroot["cell_id"][row0:row0 + n_k] = np.column_stack([rows + 1, np.ones(n_k)]).astype(np.uint32)
            nuc_area = np.bincount(nuc_local.ravel(), minlength=n_nuc + 1)[1:] * ps * ps
            per_cell = np.bincount(nuc_row, minlength=n_k)[:n_k]
            self.zroot["cell_summary"][row0:row0 + n_k] = np.column_stack([
                x_c, y_c, area, np.full(n_k, np.nan), np.full(n_k, np.nan),
                np.bincount(nuc_row, weights=nuc_area, minlength=n_k)[:n_k], np.zeros(n_k), per_cell.astype(np.float64),
            ])
            self.zroot["polygon_sets/1/cell_index"][row0:row0 + n_k] = rows.astype(np.uint32)
            self.zroot["polygon_sets/0/cell_index"][self.n_nuclei:self.n_nuclei + n_nuc] = (nuc_row + row0).astype(
                np.uint32)
        self.n_nuclei += n_nuc

        # -- stains into the level-0 scratch files, row by row of the block --------------------------------------
        w_slide = self.grid.shape[1]
        for name, img in s.images.items():
            a = np.ascontiguousarray(np.asarray(img.read()), dtype=self.grid.channels[name])
            item = a.dtype.itemsize
            fd = os.open(self.raw[name], os.O_WRONLY)
            try:
                for i in range(a.shape[0]):
                    os.pwrite(fd, a[i].tobytes(), ((r0 + i) * w_slide + c0) * item)
            finally:
                os.close(fd)

    # -- the end ------------------------------------------------------------------------------------------------------
    def finish(self, *, pyramid: bool, tile: int) -> None:
        """Close the tables, zip the masks, write the stains from the scratch files and ``experiment.xenium``."""
        for w in self.writers.values():
            w.close()
        self.writers = {}
        self.labels.close()
        grid, folder = self.grid, self.folder
        if self.zroot is not None:
            self.zroot["polygon_sets/0/cell_index"].resize((self.n_nuclei,))
            self.zroot = None
            _zip_dir(self.scratch / "cells.zarr", folder / "cells.zarr.zip")
        (folder / "morphology_focus").mkdir()
        names = {"membrane": "ATP1A1/CD45/E-Cadherin"}
        stains = ["DAPI"] + [k for k in grid.channels if k != "DAPI"]
        for k, key in enumerate(stains):
            _write_ome_from_raw(folder / "morphology_focus" / f"morphology_focus_{k:04d}.ome.tif", self.raw[key],
                                grid.shape, grid.channels[key], names.get(key, key), self.ps, tile=tile,
                                pyramid=pyramid, scratch=self.scratch)
        experiment: dict[str, Any] = {
            "pixel_size": self.ps, "run_name": f"synthetic_slide_{grid.n_cells}", "num_cells": grid.n_cells,
            "analysis_sw_version": "stmorph-synthetic", "stmorph_origin_um": [self.x0, self.y0],
            "images": {"morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"},
            "stmorph_slide": {"tissues": grid.n_tissues, "tissue_cells": grid.tissue_cells, "grid": [grid.rows, grid.cols],
                              "block": list(grid.block), "seed": grid.seed, "redrawn": grid.redrawn,
                              "tissue_kwargs": {k: _plain(v) for k, v in grid.tissue_kwargs.items()}},
        }
        if (folder / "cells.zarr.zip").exists():
            experiment["xenium_explorer_files"] = {"cells_zarr_filepath": "cells.zarr.zip"}
        (folder / "experiment.xenium").write_text(json.dumps(experiment, indent=2))

    def close(self) -> None:
        """Close whatever is still open (after an error)."""
        for w in self.writers.values():
            w.close()
        self.writers = {}
        if not self.labels.closed:
            self.labels.close()


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None)) else str(v)


def _xenium_ids(rows: np.ndarray) -> np.ndarray:
    """Xenium-style ids of slide rows (row 0 -> ``"aaaaaaab-1"``)."""
    from ..io._xenium import xenium_cell_id_strings

    return xenium_cell_id_strings(rows + 1, np.ones(len(rows), dtype=np.int64)).astype(object)


def _rings_table(raster: np.ndarray, row_of_label: np.ndarray, ids: np.ndarray, origin: tuple[float, float], ps: float,
                 *, label0: int) -> Any:
    """Boundary rows of the labels of ``raster`` (``1..``): label ``l`` is cell ``ids[row_of_label[l - 1]]``;
    ``label_id`` is ``l + label0`` (the label in the slide's masks)."""
    import pyarrow as pa

    from ..io._xenium import _trace

    rings = _trace(raster)
    if rings:
        lab = np.concatenate([np.full(len(xy), lab, dtype=np.int64) for lab, _part, xy in rings])
        xy = np.concatenate([xy for _lab, _part, xy in rings])
    else:
        lab, xy = np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    return pa.table({
        "cell_id": pa.array(ids[np.asarray(row_of_label)[lab - 1]] if len(lab) else np.zeros(0, object), type=pa.string()),
        "vertex_x": (origin[0] + xy[:, 0] * ps).astype(np.float32),
        "vertex_y": (origin[1] + xy[:, 1] * ps).astype(np.float32),
        "label_id": (lab + label0).astype(np.uint32),
    })


def _open_cells_zarr(path: Path, grid: TissueGrid, ps: float, origin: tuple[float, float]) -> Any:
    """The ``cells.zarr`` group (zarr format 2) with its arrays created empty: masks chunked by tissue block,
    per-cell arrays by tissue; ``polygon_sets/0/cell_index`` cut to the number of nuclei at the end."""
    import zarr

    n, tc = grid.n_cells, grid.tissue_cells
    columns = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x", "nucleus_centroid_y",
               "nucleus_area", "z_level", "nucleus_count"]
    arrays: dict[str, tuple[tuple[int, ...], Any, tuple[int, ...], dict[str, Any]]] = {
        "cell_id": ((n, 2), np.uint32, (tc, 2), {}),
        "cell_summary": ((n, 8), np.float64, (tc, 8), {"column_names": columns}),
        "masks/0": (grid.shape, np.uint32, grid.block, {}),
        "masks/1": (grid.shape, np.uint32, grid.block, {}),
        "polygon_sets/0/cell_index": ((n,), np.uint32, (tc,), {}),  # nuclei <= cells
        "polygon_sets/1/cell_index": ((n,), np.uint32, (tc,), {}),
    }
    attrs = {"stmorph_origin_um": list(origin), "pixel_size": ps}
    if int(zarr.__version__.split(".")[0]) >= 3:
        root = zarr.open_group(str(path), mode="w", zarr_format=2, attributes=attrs)
        for key, (shape, dt, chunks, a) in arrays.items():
            root.create_array(key, shape=shape, dtype=dt, chunks=chunks, fill_value=0, attributes=a)
    else:  # pragma: no cover - zarr 2
        root = zarr.open_group(str(path), mode="w")
        root.attrs.update(attrs)
        for key, (shape, dt, chunks, a) in arrays.items():
            root.create_dataset(key, shape=shape, dtype=dt, chunks=chunks, fill_value=0).attrs.update(a)
    return root


def _zip_dir(src: Path, dest: Path) -> None:
    """``src`` folder as an uncompressed zip (a zarr ZipStore), file by file."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(src).as_posix())
    shutil.rmtree(src, ignore_errors=True)


def _write_ome_from_raw(path: Path, raw: Path, shape: tuple[int, int], dtype: Any, name: str, ps: float, *,
                        tile: int, pyramid: bool, scratch: Path) -> None:
    """A tiled, zlib-compressed OME-TIFF of the raw row-major image ``raw``, written tile by tile.

    Each level is read in strips of ``tile`` rows; while a level is written, its 2x-decimated copy (``[::2, ::2]``)
    goes to the next level's scratch file. Levels are added while the next one is at least a tile on its shorter
    side (at most 8). ``raw`` is removed.
    """
    import tifffile

    dtype = np.dtype(dtype)
    n_levels = 0
    if pyramid:
        h, w = shape
        while n_levels < 8 and min((h + 1) // 2, (w + 1) // 2) >= tile:
            h, w = (h + 1) // 2, (w + 1) // 2
            n_levels += 1
    big = shape[0] * shape[1] * dtype.itemsize * 4 // 3 > 2**31
    # buffersize: tifffile gathers this many bytes of tiles per round of its compression threads (default 512 MB)
    opts: dict[str, Any] = {"photometric": "minisblack", "tile": (tile, tile), "compression": "zlib", "dtype": dtype,
                            "buffersize": 16 * 2**20}
    src, shp = raw, shape
    with tifffile.TiffWriter(path, bigtiff=big, ome=True) as tw:
        for level in range(n_levels + 1):
            nxt = scratch / f"{raw.stem}_level{level + 1}.raw" if level < n_levels else None
            fh = open(nxt, "wb") if nxt is not None else None  # noqa: SIM115 - closed below
            try:
                tiles = _tiles_of_raw(src, shp, dtype, tile, fh)
                if level == 0:
                    tw.write(tiles, shape=shp, subifds=n_levels, resolutionunit="CENTIMETER",
                             resolution=(1e4 / ps, 1e4 / ps),
                             metadata={"axes": "YX", "Channel": {"Name": [name]}, "PhysicalSizeX": ps,
                                       "PhysicalSizeY": ps, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"},
                             **opts)
                else:
                    tw.write(tiles, shape=shp, subfiletype=1, **opts)
                tiles.close()
            finally:
                if fh is not None:
                    fh.close()
            src.unlink()
            if nxt is not None:
                src, shp = nxt, ((shp[0] + 1) // 2, (shp[1] + 1) // 2)


def _tiles_of_raw(raw: Path, shape: tuple[int, int], dtype: np.dtype, tile: int, down: Any) -> Iterator[np.ndarray]:
    """The tiles of a raw row-major image in TIFF order, read a strip of ``tile`` rows at a time; each strip's
    ``[::2, ::2]`` is written to ``down`` (the next level) before its tiles are handed out."""
    h, w = shape
    with open(raw, "rb") as f:
        for r in range(0, h, tile):
            n = min(tile, h - r)
            strip = np.fromfile(f, dtype=dtype, count=n * w).reshape(n, w)
            if down is not None:
                down.write(np.ascontiguousarray(strip[::2, ::2]).tobytes())
                down.flush()
            for c in range(0, w, tile):
                yield strip[:, c:c + tile]
