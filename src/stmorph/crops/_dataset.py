"""PyTorch dataset of per-cell crops (stain channels + transcript-spot planes + counts) from a SpatialSample.

The dataset only stores small per-cell metadata (positions, boxes, origins); stain crops are cut from the
memory-mapped images and spot planes rendered from the CSR molecule index at each access, by the pure
kernels in :mod:`stmorph.crops._stains` and :mod:`stmorph.crops._spots`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from ..errors import StmorphInputError
from ..sample import SpatialSample
from ._rotate import rotate_crops, rotation_ks
from ._spots import (
    SpotBufferPool,
    SpotRenderer,
    _check_cells,
    _pixel_flat,
    flat_to_coords,
    gene_lookup,
    spot_origins,
)
from ._stains import crop_boxes, crop_stains, image_ranges, round_half_up

__all__ = ["CellCropDataset", "select_cells"]

log = logging.getLogger("stmorph")


def select_cells(sample: SpatialSample, cells: Any = None) -> np.ndarray:
    """Row positions of ``cells`` in ``sample.adata``.

    Parameters
    ----------
    sample
        The sample.
    cells
        ``None`` (all cells), cell ids (strings / :class:`pandas.Index`), a boolean mask over the cells, or
        integer row positions.

    Returns
    -------
    ``(n,)`` int64 row positions, in the given order.

    Examples
    --------
    >>> select_cells(sample, ["c2", "c1"])  # doctest: +SKIP
    array([1, 0])
    """
    n = sample.n_cells
    if cells is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise StmorphInputError(f"boolean cell mask of shape {arr.shape}", expected=f"shape ({n},)")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size and np.issubdtype(arr.dtype, np.integer):
        pos = arr.astype(np.int64).reshape(-1)
        bad = pos[(pos < 0) | (pos >= n)]
        if bad.size:
            raise StmorphInputError(f"cell positions {bad[:10].tolist()} out of range", expected=f"0 <= position < {n}")
        return pos
    ids = pd.Index(arr.reshape(-1).astype(str))
    pos = sample.cell_ids.get_indexer(ids)
    if (pos < 0).any():
        missing = ids[pos < 0][:10].tolist()
        raise StmorphInputError(f"cell ids {missing} are not in the sample", column="obs_names", expected="existing cell ids")
    return pos.astype(np.int64)


class CellCropDataset(Dataset):
    """Per-cell crops of a :class:`~stmorph.SpatialSample` for PyTorch.

    Item ``i`` is a dict of tensors: ``"index"`` (int64, ``i``), ``"stains"`` (float32 ``(C, S, S)``, when
    ``channels`` are given), ``"spots"`` (float32 binary ``(G, S, S)``, when ``genes`` is not ``None``) and
    ``"counts"`` (float32 ``(G,)``, the cell's counts from ``adata.X`` for :attr:`gene_names`).

    Parameters
    ----------
    sample
        The sample (``adata``, ``molecules`` for spot planes, ``images`` for stains).
    cells
        Cells to use (ids, boolean mask or row positions; see :func:`select_cells`); default all.
    crop_size
        Crop side ``S`` in pixels.
    channels
        Stain channel names (keys of ``sample.images``), in output order. Empty: no stain crops.
    genes
        Spot-plane genes: ``"all"`` (the sample's gene order), a list of names (its order), or ``None`` (no spot
        planes; ``counts`` then cover all sample genes).
    min_gene_counts
        Keep only genes with at least this many transcripts (``adata.X`` column sums over the kept cells).
    min_cell_transcripts
        Drop cells with fewer transcripts than this (``adata.X`` row sums over the requested genes). Applied
        before the gene filter; the number dropped is logged and stored in :attr:`n_dropped_cells`.
    spot_padding
        Spot square side minus 2 (see :func:`~stmorph.crops.render_spot_planes`).
    spot_origin
        ``"centroid"``: spot crops centred on the centroid. When ``channels`` are given the spot planes use the
        stain boxes, so spots and stains stay pixel-aligned also where ``stain_edge="shift"`` moves a box at the
        image border. ``"corner"``: crop anchored at the top-left of the cell's transcripts (see
        :func:`~stmorph.crops.spot_origins`).
    stain_edge
        ``"shift"`` or ``"pad"``, see :func:`~stmorph.crops.crop_boxes`.
    normalize
        Stain normalisation, see :func:`~stmorph.crops.crop_stains` (``"image"`` ranges are computed once here).
    rotate
        Random 0/90/180/270-degree rotations (training only): ``k`` per cell is a pure function of
        ``(seed, epoch, cell row)``, identical for all channels of the cell. Change epochs with :meth:`set_epoch`.
    seed
        Seed of the rotations.
    mask_stains
        Zero the stain pixels outside each cell's own mask in :attr:`SpatialSample.segmentation` (cell labels from
        ``obs["label_id"]``).

    Attributes
    ----------
    cell_ids : pandas.Index
        Ids of the kept cells (dataset order).
    cell_positions : numpy.ndarray
        Their rows in ``sample.adata``.
    gene_names : list of str
        Kept genes (planes and counts), sample order (or the order of ``genes``).
    channel_names : list of str
        Stain channels.
    n_dropped_cells : int
        Cells removed by ``min_cell_transcripts``.

    Examples
    --------
    >>> ds = CellCropDataset(sample, crop_size=64, channels=["DAPI"], genes="all", rotate=True)  # doctest: +SKIP
    >>> for batch in ds.loader(128, shuffle=True):  # doctest: +SKIP
    ...     batch["spots"].shape, batch["stains"].shape
    """

    def __init__(
        self,
        sample: SpatialSample,
        *,
        cells: Any = None,
        crop_size: int = 100,
        channels: Sequence[str] = (),
        genes: Sequence[str] | Literal["all"] | None = "all",
        min_gene_counts: int = 0,
        min_cell_transcripts: int = 0,
        spot_padding: int = 3,
        spot_origin: Literal["centroid", "corner"] = "centroid",
        stain_edge: Literal["shift", "pad"] = "shift",
        normalize: Literal["crop", "image", None] = "crop",
        rotate: bool = False,
        seed: int = 0,
        mask_stains: bool = False,
    ) -> None:
        self.sample = sample
        self.crop_size = int(crop_size)
        if self.crop_size <= 0:
            raise StmorphInputError(f"crop_size={crop_size}", expected="a positive number of pixels")
        if spot_origin not in ("centroid", "corner"):
            raise StmorphInputError(f"spot_origin={spot_origin!r}", expected="'centroid' or 'corner'")
        if stain_edge not in ("shift", "pad"):
            raise StmorphInputError(f"stain_edge={stain_edge!r}", expected="'shift' or 'pad'")
        if normalize not in ("crop", "image", None):
            raise StmorphInputError(f"normalize={normalize!r}", expected="'crop', 'image' or None")
        self.spot_padding = int(spot_padding)
        self.spot_origin = spot_origin
        self.stain_edge = stain_edge
        self.normalize = normalize
        self.rotate = bool(rotate)
        self.mask_stains = bool(mask_stains)
        self.seed = int(seed)
        self.epoch = 0

        # -- channels -------------------------------------------------------------------------------------
        if isinstance(channels, str):
            channels = [channels]
        self.channel_names = list(channels)
        missing_ch = [c for c in self.channel_names if c not in sample.images]
        if missing_ch:
            raise StmorphInputError(
                f"stain channels {missing_ch} are not in the sample",
                expected=f"one of the available channels {sample.channel_names}",
            )

        # -- genes ----------------------------------------------------------------------------------------
        sample_genes = sample.gene_names
        self.has_spots = genes is not None and not (not isinstance(genes, str) and len(genes) == 0)
        if genes is None or (not isinstance(genes, str) and len(genes) == 0):
            req = list(sample_genes)
        elif isinstance(genes, str):
            if genes != "all":
                raise StmorphInputError(f"genes={genes!r}", expected="'all', a list of gene names or None")
            req = list(sample_genes)
        else:
            req = [str(g) for g in genes]
            missing_g = [g for g in req if g not in set(sample_genes)]
            if missing_g:
                raise StmorphInputError(
                    f"genes {missing_g[:10]} are not in the sample ({len(missing_g)} missing)",
                    column="var_names",
                    expected=f"genes of the sample, e.g. {sample_genes[:5]}",
                )
            if len(set(req)) != len(req):
                raise StmorphInputError("genes contains duplicates", expected="each gene at most once")
        var_index = pd.Index(sample_genes)
        req_cols = var_index.get_indexer(req)

        # -- cells and filters ----------------------------------------------------------------------------
        pos = select_cells(sample, cells)
        X = sample.adata.X
        X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
        Xr = X[pos][:, req_cols]
        cell_tot = np.asarray(Xr.sum(axis=1)).reshape(-1)
        keep_cells = cell_tot >= min_cell_transcripts
        self.n_dropped_cells = int((~keep_cells).sum())
        if self.n_dropped_cells:
            log.info("CellCropDataset: dropped %d of %d cells with < %d transcripts", self.n_dropped_cells, pos.size, min_cell_transcripts)
        pos = pos[keep_cells]
        Xr = Xr[keep_cells]
        gene_tot = np.asarray(Xr.sum(axis=0)).reshape(-1)
        keep_genes = gene_tot >= min_gene_counts
        self.gene_names = [g for g, k in zip(req, keep_genes) if k]
        self.n_dropped_genes = int((~keep_genes).sum())
        self._counts = sp.csr_matrix(Xr[:, np.flatnonzero(keep_genes)], dtype=np.float32)
        self.cell_positions = pos
        self.cell_ids = sample.cell_ids[pos]
        centers = sample.centroids[pos]

        # -- stains ---------------------------------------------------------------------------------------
        self._images: list[np.ndarray] = []
        self._boxes: np.ndarray | None = None
        self._ranges: list[tuple[float, float]] | None = None
        if self.channel_names:
            self._images = [sample.images[c].read() for c in self.channel_names]
            shapes = {c: im.shape for c, im in zip(self.channel_names, self._images)}
            if len(set(shapes.values())) > 1:
                raise StmorphInputError(f"stain channels differ in shape: {shapes}", expected="channels of one shape")
            h, w = self._images[0].shape
            col, row = round_half_up(centers[:, 0]), round_half_up(centers[:, 1])
            out = (row < 0) | (row >= h) | (col < 0) | (col >= w)
            if out.any():
                bad = self.cell_ids[out][:10].tolist()
                raise StmorphInputError(
                    f"{int(out.sum())} cell centroid(s) lie outside the {h} x {w} stain images, e.g. cells {bad}",
                    column="obsm['spatial']",
                    expected="centroids in image pixels [x, y] inside the image",
                )
            self._boxes = crop_boxes(centers, self.crop_size, (h, w), edge=stain_edge)
            if self.mask_stains:
                from ._masks import resolve_masks

                seg, ids = resolve_masks(sample, True)  # type: ignore[misc]
                self._mask_source, self._mask_ids = seg, ids[pos]
            if normalize == "image":
                self._ranges = image_ranges(self._images)

        # -- spots ----------------------------------------------------------------------------------------
        self._index = None
        self._renderer: SpotRenderer | None = None
        self._pool: SpotBufferPool | None = None
        self._origins: np.ndarray | None = None
        self._lut: np.ndarray | None = None
        self._codes: np.ndarray | None = None
        if self.has_spots:
            self._index = sample.molecule_index()
            self._codes = pd.Index(self._index.gene_names).get_indexer(self.gene_names)
            self._lut, _ = gene_lookup(len(self._index.gene_names), self._codes)
            if spot_origin == "centroid" and self._boxes is not None:
                self._origins = self._boxes
            else:
                self._origins = spot_origins(
                    self._index, pos, centers, self.crop_size, mode=spot_origin, padding=self.spot_padding
                )
        self._ks = rotation_ks(self.seed, self.epoch, sample.n_cells) if self.rotate else None

    def __getstate__(self) -> dict[str, Any]:
        # render buffers are caches (hundreds of MB): never pickle them to DataLoader workers
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_renderer"] = None
        return state

    # -- torch Dataset API --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.cell_positions.size)

    def __getitem__(self, i: Any) -> dict[str, torch.Tensor]:
        """One cell (or, given a list of indices, a batch via :meth:`get_batch`)."""
        if isinstance(i, slice):
            return self.get_batch(np.arange(len(self))[i])
        if isinstance(i, list | tuple | np.ndarray | torch.Tensor) and np.ndim(np.asarray(i)) > 0:
            return self.get_batch(i)
        b = self.get_batch([int(i)])
        return {k: v[0] for k, v in b.items()}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose rotations are used (rotations depend only on seed, epoch and cell).

        Parameters
        ----------
        epoch
            Epoch number.
        """
        self.epoch = int(epoch)
        if self.rotate:
            self._ks = rotation_ks(self.seed, self.epoch, self.sample.n_cells)

    def rotations(self, idx: Sequence[int]) -> np.ndarray:
        """The rotation counts ``k`` of dataset items ``idx`` in the current epoch (zeros if ``rotate`` is off).

        Parameters
        ----------
        idx
            Dataset indices.

        Returns
        -------
        ``(len(idx),)`` int64.
        """
        idx = self._check_idx(idx)
        if self._ks is None:
            return np.zeros(idx.size, dtype=np.int64)
        return self._ks[self.cell_positions[idx]]

    def _check_idx(self, idx: Any) -> np.ndarray:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        arr = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"dataset index out of range for {n} cells: {arr[(arr < -n) | (arr >= n)][:5].tolist()}")
        return np.where(arr < 0, arr + n, arr)

    def get_batch(self, idx: Sequence[int], *, reuse_buffer: bool = False,
                  spot_index: bool = False) -> dict[str, torch.Tensor]:
        """A batch of cells, rendered in one vectorised call (the fast path).

        Parameters
        ----------
        idx
            Dataset indices.
        reuse_buffer
            Render the spot planes into one float32 buffer owned by the dataset, clearing only the pixels of the
            previous call (:class:`~stmorph.crops.SpotRenderer`). The returned ``"spots"`` tensor is then a view
            that the next ``reuse_buffer=True`` call overwrites: use the batch before asking for the next one,
            and never with prefetching loaders. The default (``False``) is nearly as fast and safe: buffers are
            recycled by a :class:`~stmorph.crops.SpotBufferPool` only once every view of them is gone (a fresh
            ``np.zeros`` per batch is several times slower because of page faults; see
            ``benchmarks/bench_crops.py``).
        spot_index
            Also return ``"spot_index"``, the sorted flat indices of the ones of ``spots``, from the renderer's list
            of drawn pixels (cheaper than scanning the planes; the VAE training loop asks for it).

        Returns
        -------
        ``{"index": (B,) int64, "spots": (B, G, S, S) float32, "stains": (B, C, S, S) float32,
        "counts": (B, G) float32}`` (``spots``/``stains`` only when configured) and ``"spot_index"`` (nnz,)
        int64 when asked for.
        """
        idx = self._check_idx(idx)
        ks = None if self._ks is None else self._ks[self.cell_positions[idx]]
        out: dict[str, torch.Tensor] = {"index": torch.from_numpy(idx.copy())}
        S = self.crop_size
        if self.has_spots:
            assert self._index is not None and self._origins is not None and self._lut is not None
            cells = _check_cells(self._index, self.cell_positions[idx])
            if reuse_buffer:
                if self._renderer is None or self._renderer.buffer.shape[0] < idx.size:
                    self._renderer = SpotRenderer(
                        self._index, S, idx.size, padding=self.spot_padding, genes=self._codes, dtype=np.float32
                    )
                spots = self._renderer.render(cells, self._origins[idx], rotations=ks)
            else:
                # recycled buffers, reused only once the caller has dropped every view of them (safe); several
                # times faster than a fresh np.zeros per batch (page faults), see benchmarks/bench_crops.py
                if self._pool is None:
                    self._pool = SpotBufferPool(self._index, S, padding=self.spot_padding, genes=self._codes)
                spots = self._pool.render(cells, self._origins[idx], rotations=ks)
            out["spots"] = torch.from_numpy(spots)
            if spot_index:  # the renderer knows its non-zeros: no scan of the planes
                out["spot_index"] = torch.from_numpy((self._renderer if reuse_buffer else self._pool).last_index())
        if self.channel_names:
            assert self._boxes is not None
            st = crop_stains(
                self._images,
                None,  # type: ignore[arg-type]
                S,
                boxes=self._boxes[idx],
                normalize=self.normalize,
                image_range=self._ranges,
            )
            if self.mask_stains:
                from ._masks import crop_masks

                st *= crop_masks(self._mask_source, self._boxes[idx], S, self._mask_ids[idx])[:, None]
            if ks is not None:
                st = rotate_crops(st, ks)
            out["stains"] = torch.from_numpy(st)
        counts = self._counts[idx].toarray().astype(np.float32, copy=False)
        out["counts"] = torch.from_numpy(np.ascontiguousarray(counts))
        return out

    def spot_pixels(self, idx: Sequence[int]) -> torch.Tensor:
        """Sparse form of the batch's spot planes: ``(nnz, 4)`` int64 ``[batch row, plane, row, col]``.

        Same pixels (rotations included) as ``get_batch(idx)["spots"]``, for a sparse first layer.

        Parameters
        ----------
        idx
            Dataset indices.

        Returns
        -------
        Sorted unique coordinates as an int64 tensor.
        """
        if not self.has_spots:
            raise StmorphInputError("this dataset has no spot planes (genes=None)", expected="genes='all' or a list")
        idx = self._check_idx(idx)
        ks = None if self._ks is None else self._ks[self.cell_positions[idx]]
        assert self._index is not None and self._origins is not None and self._lut is not None
        G, S = len(self.gene_names), self.crop_size
        flat = _pixel_flat(self._index, self.cell_positions[idx], self._origins[idx], S, self.spot_padding, self._lut, G, ks)
        return torch.from_numpy(flat_to_coords(flat, G, S))

    def loader(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False, reuse_buffer: bool = False
    ) -> Iterable[dict]:
        """An iterable over :meth:`get_batch` batches; each pass over it is one epoch.

        Pass ``e`` (counting from 0) shuffles with a generator seeded by ``(seed, e)`` and, when ``rotate`` is
        on, calls :meth:`set_epoch` ``(e)`` first, so a run reproduces exactly.

        Parameters
        ----------
        batch_size
            Cells per batch.
        shuffle
            Shuffle the order each epoch.
        seed
            Seed of the shuffling.
        drop_last
            Drop the last incomplete batch.
        reuse_buffer
            Passed to :meth:`get_batch` (each batch is valid until the next one is drawn).

        Returns
        -------
        A re-iterable loader with ``len()`` = batches per epoch.

        Examples
        --------
        >>> dl = ds.loader(64, shuffle=True, seed=1)  # doctest: +SKIP
        >>> for epoch in range(10):  # doctest: +SKIP
        ...     for batch in dl: ...
        """
        if int(batch_size) <= 0:
            raise StmorphInputError(f"batch_size={batch_size}", expected="a positive integer")
        return _BatchLoader(self, int(batch_size), bool(shuffle), int(seed), bool(drop_last), bool(reuse_buffer))

    def __repr__(self) -> str:
        return (
            f"CellCropDataset({len(self)} cells, crop {self.crop_size}px, channels {self.channel_names}, "
            f"{len(self.gene_names) if self.has_spots else 0} spot planes, rotate={self.rotate})"
        )


class _BatchLoader:
    def __init__(
        self, ds: CellCropDataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool, reuse_buffer: bool
    ) -> None:
        self.ds, self.batch_size, self.shuffle, self.seed, self.drop_last = ds, batch_size, shuffle, seed, drop_last
        self.reuse_buffer = reuse_buffer
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        if self.ds.rotate:
            self.ds.set_epoch(epoch)
        n = len(self.ds)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        for k in range(len(self)):
            yield self.ds.get_batch(order[k * self.batch_size : (k + 1) * self.batch_size], reuse_buffer=self.reuse_buffer)
