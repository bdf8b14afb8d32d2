"""Per-cell crops of a whole slide written once, tile by tile, to a chunked zarr store that training streams from.

Each task cuts its owned cells' stain crops from its window (the same boxes and normalisation as
:class:`stmorph.crops.CellCropDataset`, so the stored crops equal the dataset's) and, with ``genes``, renders their
transcript-spot planes; it writes them to one zarr group per tile (``tiles/tile_<id>.zarr``: ``rows``,
``stains`` ``(n, C, S, S)`` float32, ``spots`` ``(n, G, S, S)`` uint8), chunked by ``chunk_cells`` cells.
:func:`open_crops` reads the store back: by cell, tile by tile (streaming), or as a dask array.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from ..errors import StmorphInputError
from ._common import (
    array_hash,
    channel_ranges,
    crop_px,
    polygon_file,
    tile_masks,
    window_stains,
    write_polygon_inputs,
)
from ._engine import TileRun, TileTask, crop_task_factory, engine_client, read_manifest, run_tiles
from ._plan import plan_tiles
from ._source import SampleSource
from ._spots import (
    gene_codes,
    render_tile_spots,
    spot_origins_for,
    tile_molecule_index,
    write_molecule_inputs,
)

__all__ = ["write_crops", "open_crops", "CropStore", "StoreCropDataset"]

STORE_META = "crops.json"


def _create(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> Any:
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype)  # pragma: no cover - zarr 2


def tile_stains(
    task: TileTask, specs: list[dict[str, Any]], size: int, normalize: str | None,
    ranges: list[tuple[float, float]] | None, seg_spec: dict[str, Any] | None, mask: bool, sl: slice,
    cache: dict[str, Any],
) -> np.ndarray:
    """Stain crops of the task's cells ``sl`` as :meth:`stmorph.crops.CellCropDataset.get_batch` cuts them."""
    from ..crops import crop_masks, crop_stains

    if "wins" not in cache:
        cache["wins"], cache["local"] = window_stains(task, specs)
        cache["masks"] = tile_masks(task, seg_spec) if mask else None
    st = crop_stains(cache["wins"], None, size, boxes=cache["local"][sl], normalize=normalize,  # type: ignore[arg-type]
                     image_range=ranges)
    if cache["masks"] is not None:
        src, boxes = cache["masks"]
        st *= crop_masks(src, boxes[sl], size, task.data["ids"][sl])[:, None]
    return st


def _crop_tile(
    task: TileTask,
    *,
    channel_specs: list[dict[str, Any]],
    size: int,
    normalize: str | None,
    ranges: list[tuple[float, float]] | None,
    seg_spec: dict[str, Any] | None,
    mask_stains: bool,
    codes: np.ndarray | None,
    mol_dir: str | None,
    gene_names: tuple[str, ...],
    spot_padding: int,
    spot_origin: str,
    chunk_cells: int,
) -> Path:
    import zarr

    n = len(task.rows)
    path = Path(task.tmp_dir or ".") / "crops.zarr"
    g = zarr.open_group(str(path), mode="w")
    cc = max(1, min(int(chunk_cells), max(n, 1)))
    rows = _create(g, "rows", (n,), (max(n, 1),), "int64")
    rows[:] = task.rows
    stains = spots = None
    if channel_specs:
        stains = _create(g, "stains", (n, len(channel_specs), size, size), (cc, len(channel_specs), size, size),
                         "float32")
    index = origins = None
    if codes is not None:
        spots = _create(g, "spots", (n, len(codes), size, size), (cc, len(codes), size, size), "uint8")
        index = tile_molecule_index(task, str(mol_dir), gene_names)
        origins = spot_origins_for(index, np.arange(n), task.data["centroids"], size, spot_origin, spot_padding,
                                   task.data["boxes"] if channel_specs else None)
    step = cc * max(1, 256 // cc)
    cache: dict[str, Any] = {}
    for b0 in range(0, n, step):
        sl = slice(b0, min(n, b0 + step))
        if stains is not None:
            stains[sl] = tile_stains(task, channel_specs, size, normalize, ranges, seg_spec, mask_stains, sl, cache)
        if spots is not None:
            assert index is not None and origins is not None and codes is not None
            spots[sl] = render_tile_spots(index, np.arange(sl.start, sl.stop), origins[sl], size, spot_padding, codes)
    g.attrs["tile"] = int(task.tile)
    g.attrs["window"] = [int(v) for v in task.window]
    return path


def write_crops(
    sample: Any,
    out_dir: str | PathLike,
    *,
    channels: Sequence[str] | None = None,
    size: int = 64,
    crop_um: float | None = None,
    genes: Sequence[str] | Literal["all"] | None = None,
    edge: Literal["shift", "pad"] = "shift",
    normalize: Literal["crop", "image", None] = "crop",
    mask_stains: bool = False,
    spot_padding: int = 3,
    spot_origin: Literal["centroid", "corner"] = "centroid",
    chunk_cells: int = 64,
    tile_size: int = 2048,
    client: Any = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    overwrite: bool | str = False,
    show_progress: bool | None = None,
) -> CropStore:
    """Write every cell's stain crops (and spot planes) once to a chunked zarr store, tile by tile.

    The crops equal :class:`stmorph.crops.CellCropDataset`'s for the same parameters (no rotation): boxes from
    :func:`stmorph.crops.crop_boxes` on the whole image, ``normalize="image"`` ranges over the whole images
    (computed once, block by block, on the cluster).

    Parameters
    ----------
    sample
        A sample folder or a :class:`~stmorph.SpatialSample`.
    out_dir
        The store: ``manifest.json``, ``done.jsonl``, ``crops.json`` and ``tiles/tile_<id>.zarr``. A killed run
        resumes from its finished tiles.
    channels
        Stain channels (default all); ``[]`` for spots only.
    size, crop_um
        Crop side in pixels, or in micrometres through the pixel size.
    genes
        Spot planes: ``None`` (none), ``"all"`` or gene names (their order).
    edge, normalize, mask_stains, spot_padding, spot_origin
        As in :class:`stmorph.crops.CellCropDataset` (``edge`` is its ``stain_edge``).
    chunk_cells
        Cells per zarr chunk.
    tile_size, client, n_workers, scheduler, retries, overwrite, show_progress
        See :func:`~stmorph.distributed.cellprofiler_features`.

    Returns
    -------
    CropStore

    Examples
    --------
    >>> store = write_crops("tissue.stmorph", "crops.zarr.d", size=64, n_workers=2)  # doctest: +SKIP
    >>> store.read_rows([0, 5])["stains"].shape  # doctest: +SKIP
    (2, 2, 64, 64)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "inputs"
    src = SampleSource.resolve(sample, inputs)
    chans = list(src.channels if channels is None else channels)
    specs = src.channel_specs(chans)
    if normalize not in ("crop", "image", None):
        raise StmorphInputError(f"normalize={normalize!r}", expected="'crop', 'image' or None")
    if spot_origin not in ("centroid", "corner"):
        raise StmorphInputError(f"spot_origin={spot_origin!r}", expected="'centroid' or 'corner'")
    size = crop_px(src, None if crop_um is not None else size, crop_um, default=64, what="crop")
    gene_list: list[str] = []
    if genes is not None:
        gene_list = list(src.var_names) if isinstance(genes, str) and genes == "all" else [str(g) for g in genes]
        if isinstance(genes, str) and genes != "all":
            raise StmorphInputError(f"genes={genes!r}", expected="'all', a list of gene names or None")
        missing = [g for g in gene_list if g not in set(src.var_names)]
        if missing:
            raise StmorphInputError(f"genes {missing[:10]} are not in the sample", column="var_names",
                                    expected="genes of the sample")
    if not chans and not gene_list:
        raise StmorphInputError("neither stain channels nor genes were asked for", expected="channels or genes")
    resolved = src.resolve_masks(True, None, inputs) if mask_stains else None
    ids = None if resolved is None else resolved[1]
    plan = plan_tiles(src.centroids, tile_size, crop_size=size, edge=edge, image_shape=src.image_shape)
    from ..crops import crop_boxes

    boxes = crop_boxes(src.centroids, size, src.image_shape, edge=edge)
    codes = gene_codes(src.var_names, gene_list) if gene_list else None
    cells_token = array_hash(src.centroids, ids, np.asarray(plan.attrs["image_shape"]), plan["tile"].to_numpy(),
                             np.concatenate(list(plan["cells"])) if len(plan) else None)

    make_task = crop_task_factory(
        {"boxes": boxes, "centroids": src.centroids, "ids": ids},
        (lambda tile: polygon_file(inputs, tile)) if resolved is not None and resolved[0]["kind"] == "polygons"
        else None,
    )

    def before_submit(pending: pd.DataFrame) -> None:
        if resolved is not None and resolved[0]["kind"] == "polygons":
            write_polygon_inputs(src, pending, inputs)
        if codes is not None:
            write_molecule_inputs(src, plan, inputs, cells_token[:16])

    with engine_client(client, n_workers, scheduler) as cl:
        ranges = channel_ranges(specs, cl, cache_dir=out) if normalize == "image" and specs else None
        params = {"channels": chans, "size": size, "genes": gene_list, "edge": edge, "normalize": normalize,
                  "ranges": ranges, "mask_stains": bool(mask_stains), "spot_padding": int(spot_padding),
                  "spot_origin": spot_origin, "chunk_cells": int(chunk_cells), "inputs": src.fingerprint_inputs(),
                  "cells": cells_token}
        common = {"channel_specs": specs, "size": size, "normalize": normalize, "ranges": ranges,
                  "seg_spec": None if resolved is None else resolved[0], "mask_stains": bool(mask_stains),
                  "codes": codes, "mol_dir": str((inputs / "molecules").resolve()) if codes is not None else None,
                  "gene_names": tuple(src.var_names), "spot_padding": int(spot_padding), "spot_origin": spot_origin,
                  "chunk_cells": int(chunk_cells)}
        run = run_tiles(_crop_tile, plan, out, make_task=make_task, common=common, params=params, kind="crops",
                        client=cl, retries=retries, overwrite=overwrite, before_submit=before_submit,
                        show_progress=show_progress)
    meta = {"format": "stmorph.distributed.crops", "version": 1, "channels": chans, "genes": gene_list,
            "crop_size": size, "normalize": normalize, "edge": edge, "ranges": ranges,
            "mask_stains": bool(mask_stains), "spot_padding": int(spot_padding), "spot_origin": spot_origin,
            "cell_ids": list(map(str, src.cell_ids)),
            "summary": run.summary()}
    with atomic_path(out / STORE_META) as tmp:
        tmp.write_text(json.dumps(meta))
    return CropStore(out, run)


class CropStore:
    """Crops written by :func:`write_crops`, read lazily: by cell, tile by tile, or as a dask array.

    The store order is the tiles' order (cells of one tile together, as written); :attr:`rows` maps it to rows of
    ``adata``.

    Attributes
    ----------
    rows : numpy.ndarray
        Row of ``adata`` of each stored cell (store order).
    cell_ids : pandas.Index
        Their ids.
    channels, genes : list of str
        Stain channels and spot-plane genes.
    crop_size : int
        Crop side.

    Examples
    --------
    >>> store = open_crops("crops.zarr.d")  # doctest: +SKIP
    >>> for rows, arrays in store.iter_tiles():  # doctest: +SKIP
    ...     arrays["stains"].shape
    >>> store.to_dask("stains")  # doctest: +SKIP
    """

    def __init__(self, path: str | PathLike, run: TileRun | None = None) -> None:
        import zarr

        self.path = Path(path)
        mf = self.path / STORE_META
        if not mf.exists():
            raise StmorphInputError("not a finished crop store (crops.json missing)", file=self.path,
                                    expected="a folder written by stmorph.distributed.write_crops")
        self.meta = json.loads(mf.read_text())
        if run is None:
            _, recs = read_manifest(self.path)
        else:
            recs = run.records
        self._groups = [zarr.open_group(str(self.path / f), mode="r") for f in recs["file"]]
        self._tile_rows = [np.asarray(g["rows"][:], dtype=np.int64) for g in self._groups]
        self.rows = np.concatenate(self._tile_rows) if self._tile_rows else np.zeros(0, np.int64)
        self._starts = np.cumsum([0] + [len(r) for r in self._tile_rows])
        ids = pd.Index(self.meta["cell_ids"])
        self.cell_ids = ids[self.rows]
        self._pos_of_row = np.full(len(ids), -1, dtype=np.int64)
        self._pos_of_row[self.rows] = np.arange(self.rows.size)
        self.channels: list[str] = list(self.meta["channels"])
        self.genes: list[str] = list(self.meta["genes"])
        self.crop_size = int(self.meta["crop_size"])

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def arrays(self) -> list[str]:
        """Names of the stored arrays (``"stains"``, ``"spots"``)."""
        return (["stains"] if self.channels else []) + (["spots"] if self.genes else [])

    def read(self, positions: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Crops of the cells at store ``positions`` (in that order), one read per touched tile."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"store positions out of range 0..{len(self) - 1}")
        tile = np.searchsorted(self._starts, pos, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for name in self.arrays:
            first = self._groups[0][name] if self._groups else None
            shape = (pos.size,) + (tuple(first.shape[1:]) if first is not None else ())
            arr = np.empty(shape, dtype=first.dtype if first is not None else np.float32)
            for t in np.unique(tile):
                sel = np.flatnonzero(tile == t)
                local = pos[sel] - self._starts[t]
                lo, hi = int(local.min()), int(local.max()) + 1
                arr[sel] = self._groups[t][name][lo:hi][local - lo]
            out[name] = arr
        return out

    def read_rows(self, rows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Crops of the cells at rows ``rows`` of ``adata``."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        pos = self._pos_of_row[r]
        if (pos < 0).any():
            raise StmorphInputError(f"rows {r[pos < 0][:10].tolist()} are not in the store", expected="stored cells")
        return self.read(pos)

    def iter_tiles(self) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(rows, {"stains": ..., "spots": ...})`` tile by tile (sequential reads: for streaming)."""
        for g, rows in zip(self._groups, self._tile_rows):
            yield rows, {name: g[name][:] for name in self.arrays}

    def to_dask(self, name: str = "stains") -> Any:
        """One array over the store (store order) as a :class:`dask.array.Array`, chunked as stored."""
        import dask.array as da

        if name not in self.arrays:
            raise StmorphInputError(f"array {name!r} not in the store", expected=f"one of {self.arrays}")
        return da.concatenate([da.from_zarr(g[name]) for g in self._groups], axis=0)

    def __repr__(self) -> str:
        return (f"CropStore({len(self)} cells, {len(self._groups)} tiles, crop {self.crop_size}px, channels "
                f"{self.channels}, {len(self.genes)} spot genes, {self.path})")


def open_crops(path: str | PathLike) -> CropStore:
    """Open a crop store written by :func:`write_crops`.

    Examples
    --------
    >>> store = open_crops("crops.zarr.d")  # doctest: +SKIP
    >>> len(store)  # doctest: +SKIP
    120
    """
    return CropStore(path)


class StoreCropDataset:
    """Training batches read from a crop store instead of rendered: a drop-in for a
    :class:`~stmorph.crops.CellCropDataset` in the VAE training loop (same cells, genes, rotations and counts).

    Crops are written once (:func:`write_crops`, on the cluster) and every epoch streams them back, one read per
    touched tile; the per-epoch rotations are applied here with the dataset's seeded rotation counts, so a batch
    equals the rendered one.

    Parameters
    ----------
    store
        A :class:`CropStore` (or its folder) holding every cell of ``like`` with its channels and genes.
    like
        The dataset this one replaces (a :class:`~stmorph.crops.CellCropDataset` of the same sample): cells,
        gene and channel order, counts, rotation and seed come from it.

    Examples
    --------
    >>> ds = StoreCropDataset("crops.zarr.d", vae.dataset(sample, train=True))  # doctest: +SKIP
    >>> ds.get_batch([0, 1])["spots"].shape  # doctest: +SKIP
    """

    def __init__(self, store: CropStore | str | PathLike, like: Any) -> None:
        self.store = store if isinstance(store, CropStore) else open_crops(store)
        self.like = like
        meta = self.store.meta
        want = {"crop_size": like.crop_size, "normalize": like.normalize, "edge": like.stain_edge,
                "mask_stains": bool(like.mask_stains), "spot_padding": like.spot_padding,
                "spot_origin": like.spot_origin}
        for key, value in want.items():
            if key in meta and meta[key] != value and not (key == "edge" and not like.channel_names):
                raise StmorphInputError(f"the crop store was written with {key}={meta[key]!r}", file=self.store.path,
                                        expected=f"{key}={value!r}, as the model's crops (write the store again)")
        missing_ch = [c for c in like.channel_names if c not in self.store.channels]
        missing_g = [g for g in like.gene_names if g not in self.store.genes] if like.has_spots else []
        if missing_ch or missing_g:
            raise StmorphInputError(f"the crop store lacks channels {missing_ch} / genes {missing_g[:5]}",
                                    file=self.store.path, expected="a store written with every channel and gene")
        self._ch = [self.store.channels.index(c) for c in like.channel_names]
        self._genes = [self.store.genes.index(g) for g in like.gene_names] if like.has_spots else []
        rows = np.asarray(like.cell_positions, dtype=np.int64)
        store_ids = pd.Index(self.meta_ids())
        if len(store_ids) != like.sample.n_cells or not store_ids.equals(pd.Index(like.sample.cell_ids.astype(str))):
            raise StmorphInputError("the crop store was written from another sample (its cell ids differ)",
                                    file=self.store.path, expected="a store written from this sample")
        if (self.store._pos_of_row[rows] < 0).any():
            raise StmorphInputError("the crop store lacks cells of the dataset", file=self.store.path,
                                    expected="a store of every training cell")
        self.cell_positions = rows
        self.gene_names, self.channel_names = like.gene_names, like.channel_names
        self.has_spots, self.crop_size = like.has_spots, like.crop_size

    def meta_ids(self) -> list[str]:
        """The cell ids of the sample the store was written from (row order)."""
        return list(map(str, self.store.meta["cell_ids"]))

    @property
    def rotate(self) -> bool:
        return bool(self.like.rotate)

    def __len__(self) -> int:
        return len(self.like)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose rotations are used (as the dataset it replaces)."""
        self.like.set_epoch(epoch)

    def get_batch(self, idx: Sequence[int], *, reuse_buffer: bool = False, spot_index: bool = False) -> dict[str, Any]:
        """The cells ``idx`` as the replaced dataset's ``get_batch`` returns them, read from the store."""
        import torch

        from ..crops import rotate_crops

        idx = self.like._check_idx(idx)
        arrays = self.store.read_rows(self.cell_positions[idx])
        ks = self.like.rotations(idx) if self.rotate else None
        out: dict[str, Any] = {"index": torch.from_numpy(idx.copy())}
        if self.has_spots:
            sp = arrays["spots"]
            sp = (sp if self._genes == list(range(sp.shape[1])) else sp[:, self._genes]).astype(np.float32)
            if ks is not None:
                sp = np.ascontiguousarray(rotate_crops(sp, ks))
            out["spots"] = torch.from_numpy(sp)
            if spot_index:
                out["spot_index"] = torch.from_numpy(np.flatnonzero(sp))
        if self.channel_names:
            st = arrays["stains"]
            st = st if self._ch == list(range(st.shape[1])) else st[:, self._ch]
            if ks is not None:
                st = rotate_crops(st, ks)
            out["stains"] = torch.from_numpy(np.ascontiguousarray(st, dtype=np.float32))
        counts = self.like._counts[idx].toarray().astype(np.float32, copy=False)
        out["counts"] = torch.from_numpy(np.ascontiguousarray(counts))
        return out
