"""CNN features of a whole slide on a dask.distributed cluster, equal to the serial function's.

The driver builds the network once, exactly as :func:`stmorph.features.cnn_features` does (:func:`load_cnn`
with the same ``random_state``, so a random initialisation is the serial one), and writes it to
``<out_dir>/model/`` (a pickled module, or a TorchScript file); each worker process loads it once. Each task reads
its tile's window of every channel (and of the segmentation), cuts the owned cells' crops with the boxes
:func:`stmorph.crops.crop_boxes` placed on the whole image (shifted into window coordinates), normalises and masks
them as the serial function does, and runs the network on them (CPU, one thread): the raw per-channel features
are written per tile. The driver places them in the sample's cell order and runs the PCA once, on the whole table.

PyTorch picks its convolution kernel by the batch size (on the CPU a batch of one cell goes through another
kernel, whose float32 results differ in the last bit), so each task runs its cells in batches of the size the
serial function ran them in (``batch_size``, and the shorter last batch of each block of cells), padding a batch
it cannot fill with blank crops. The raw features then equal the serial ones bit for bit, and so does the PCA.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import shutil
import time
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from ..errors import StmorphInputError
from ..sample import missing_modality
from ._common import (
    array_hash,
    channel_ranges,
    crop_px,
    out_folder,
    polygon_file,
    tile_masks,
    window_stains,
    write_polygon_inputs,
)
from ._engine import TileTask, crop_task_factory, engine_client, run_tiles
from ._plan import plan_tiles
from ._source import SampleSource, file_stamp

__all__ = ["cnn_features"]


def serial_batch_sizes(n_cells: int, batch_size: int, block: int | None = None) -> np.ndarray:
    """The size of the forward batch each cell is in when :func:`stmorph.features.cnn_features` runs.

    The serial function crops ``block`` cells at a time and runs each block in batches of ``batch_size``; the last
    batch of a block holds the rest.

    Parameters
    ----------
    n_cells
        Cells of the sample.
    batch_size
        Crops per forward pass.
    block
        Cells cropped at once (default that of the serial function).

    Returns
    -------
    ``(n_cells,)`` int64.

    Examples
    --------
    >>> serial_batch_sizes(7, 3).tolist()
    [3, 3, 3, 3, 3, 3, 1]
    >>> serial_batch_sizes(7, 3, block=4).tolist()
    [3, 3, 3, 1, 3, 3, 3]
    """
    from ..features._cnn import _CROP_BLOCK

    blk, bs = int(block or _CROP_BLOCK), int(batch_size)
    r = np.arange(int(n_cells), dtype=np.int64)
    b0 = (r // blk) * blk
    in_block = np.minimum(blk, int(n_cells) - b0)
    k = (r - b0) // bs
    return np.minimum(bs, in_block - k * bs)


# ---------------------------------------------------------------------------------------------------------------
# the model: written once by the driver, loaded once per worker process
# ---------------------------------------------------------------------------------------------------------------
def _model_digest(net: Any) -> str:
    """SHA-1 of a network's architecture (its ``repr``) and of every tensor of its ``state_dict``."""
    h = hashlib.sha1(repr(net).encode())
    for name, v in net.state_dict().items():
        h.update(name.encode())
        h.update(array_hash(v.detach().cpu().numpy()).encode())
    return h.hexdigest()


def _save_model(net: Any, folder: Path, digest: str) -> Path:
    """Write the network to ``folder`` (unless the same one is there): ``cnn.ts`` for a TorchScript module,
    ``cnn.pkl`` (cloudpickle: classes defined in functions travel by value) otherwise."""
    import torch

    scripted = isinstance(net, torch.jit.ScriptModule)
    path = folder / ("cnn.ts" if scripted else "cnn.pkl")
    meta = folder / "model.json"
    if path.exists() and meta.exists():
        try:
            if json.loads(meta.read_text()).get("digest") == digest:
                return path
        except json.JSONDecodeError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if scripted:
            torch.jit.save(net, str(tmp))
        else:
            import cloudpickle

            with open(tmp, "wb") as f:
                cloudpickle.dump(net, f)
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({"digest": digest, "file": path.name}))
    return path


@functools.lru_cache(maxsize=2)
def _load_model(path: str, digest: str) -> Any:
    """The network of a model file, once per worker process (``digest`` keys the cache)."""
    import torch

    if path.endswith(".ts"):
        net = torch.jit.load(path, map_location="cpu")
    else:
        with open(path, "rb") as f:
            net = pickle.load(f)  # noqa: S301 - the driver's own file in the run folder
    return net.eval()


# ---------------------------------------------------------------------------------------------------------------
# one tile
# ---------------------------------------------------------------------------------------------------------------
def _cnn_tile(
    task: TileTask,
    *,
    model_file: str,
    model_digest: str,
    channel_specs: list[dict[str, Any]],
    size: int,
    edge: str,
    crop_normalize: str,
    ranges: list[tuple[float, float]] | None,
    seg_spec: dict[str, Any] | None,
    input_size: int,
    device: str,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One tile: raw CNN features of its owned cells, in batches of the serial function's sizes."""
    from ..crops import crop_masks, crop_stains
    from ..features import extract_cnn_features

    net = _load_model(model_file, model_digest)
    wins, local = window_stains(task, channel_specs)
    mask_src = tile_masks(task, seg_spec)
    ids = task.data.get("ids")
    batch = task.data["batch"]
    n = len(task.rows)
    kw: dict[str, Any] = {"image_range": ranges} if crop_normalize == "image" else {}
    feats: np.ndarray | None = None
    n_empty = 0
    for bs in np.unique(batch):
        group = np.flatnonzero(batch == bs)
        for g0 in range(0, group.size, int(bs)):
            idx = group[g0 : g0 + int(bs)]
            crops = crop_stains(wins, None, size, boxes=local[idx], edge=edge,  # type: ignore[arg-type]
                                normalize=crop_normalize, **kw)  # type: ignore[arg-type]
            if mask_src is not None:
                mk = crop_masks(mask_src[0], mask_src[1][idx], size, ids[idx])
                n_empty += int((~mk.reshape(mk.shape[0], -1).any(axis=1)).sum())
                crops *= mk[:, None]
            if idx.size < bs:  # blank crops fill the batch to the serial size (outputs are per crop)
                crops = np.concatenate([crops, np.zeros((int(bs) - idx.size, *crops.shape[1:]), crops.dtype)])
            out = extract_cnn_features(crops, net, input_size=input_size, batch_size=int(bs), device=device)
            if feats is None:
                feats = np.empty((n, out.shape[1]), dtype=np.float32)
            feats[idx] = out[: idx.size]
    if feats is None:
        feats = np.zeros((0, 0), dtype=np.float32)
    return {"rows": task.rows, "features": feats}, {"empty_masks": n_empty}


def _assemble(files: list[Path], n: int) -> np.ndarray:
    """Per-tile raw features placed into one ``(n, features)`` float32 array in cell-row order."""
    full: np.ndarray | None = None
    owned = np.zeros(n, dtype=np.int64)
    for f in files:
        with np.load(f) as z:
            rows, feats = z["rows"].astype(np.int64), z["features"]
        if rows.size == 0:
            continue
        if full is None:
            full = np.empty((n, feats.shape[1]), dtype=np.float32)
        if feats.shape != (rows.size, full.shape[1]):
            raise RuntimeError(f"tile file {f} holds features of shape {feats.shape}, expected "
                               f"{(rows.size, full.shape[1])}")
        full[rows] = feats
        owned[rows] += 1
    if full is None or not (owned == 1).all():
        bad = np.flatnonzero(owned != 1)[:10].tolist()
        raise RuntimeError(f"cells at rows {bad} are missing from the tiles or owned twice")
    return full


def cnn_features(
    sample: Any,
    model: Any = "small_resnet",
    weights: str | PathLike | None = None,
    *,
    out_dir: str | PathLike | None = None,
    size: int = 100,
    channels: Sequence[str] | None = None,
    n_components: int | None = 500,
    input_size: int = 299,
    crop_normalize: Literal["crop", "image"] = "crop",
    edge: Literal["shift", "pad"] = "shift",
    batch_size: int = 32,
    device: str = "cpu",
    key_added: str = "X_cnn",
    random_state: int | None = 0,
    masks: Any = None,
    mask_ids: np.ndarray | str | None = None,
    crop_um: float | None = None,
    tile_size: int = 2048,
    client: Any = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    overwrite: bool | str = False,
    show_progress: bool | None = None,
) -> pd.DataFrame:
    """MUSE-style CNN features of every cell, the network run tile by tile on a dask.distributed cluster.

    The same features as :func:`stmorph.features.cnn_features` with ``device="cpu"`` (equal values: the same
    network, crops and forward batch sizes; the PCA once, on the whole table), for slides of any size: workers read
    only their tiles' windows, and the run resumes from its finished tiles when started again on ``out_dir``.

    Parameters
    ----------
    sample
        A sample folder (workers open its images lazily; the driver reads only its cell table) or a
        :class:`~stmorph.SpatialSample` (in-memory images are written to ``out_dir/inputs`` first).
    model, weights
        See :func:`stmorph.features.load_cnn`. The network is built once here (a random initialisation seeded
        by ``random_state``, as the serial function does) and written to ``out_dir/model`` for the workers, which
        load it once per process; a module given as an object travels with its class (cloudpickle).
    out_dir
        Output folder (manifest, plan, the model, per-tile raw features as ``.npz``). ``None``: a temporary
        folder, removed at the end (no resume).
    size, channels, n_components, input_size, crop_normalize, edge, batch_size, key_added, random_state, masks, mask_ids, crop_um
        As in :func:`stmorph.features.cnn_features`. The tiles hold the raw features, so ``n_components``,
        ``random_state`` (except through a random initialisation) and ``key_added`` are not part of the run's
        fingerprint: another PCA of a finished run reuses its tiles.
    device
        Torch device of the workers (``"cpu"``; ``"auto"`` takes a GPU when the worker has one, then the values
        equal the serial ones on that device to float32 rounding only).
    tile_size
        Tile side in pixels (:func:`~stmorph.distributed.plan_tiles`); the window adds half a crop on each side.
    client, n_workers, scheduler
        Where to run (:func:`~stmorph.distributed.engine_client`): a client, a new local cluster of
        ``n_workers`` processes, or the scheduler at an address.
    retries
        Extra attempts of a failing tile.
    overwrite
        ``True``: discard an earlier run in ``out_dir``; ``"changed"``: only one with other parameters; ``False``
        (default): resume, refusing a folder that holds a run with other parameters (model, weights, crops).
    show_progress
        Progress bar.

    Returns
    -------
    pandas.DataFrame
        Cells x components (raw features with ``n_components=None``), float32, index ``cell_id`` in the sample's
        cell order, columns ``<key without "X_">_<i>`` (the names ``stmorph features cnn`` writes);
        ``attrs["info"]`` holds what the serial function writes to ``uns[key_added]`` plus ``"distributed"``
        (tiles, workers, timings). For a :class:`~stmorph.SpatialSample` the values are also written to
        ``adata.obsm[key_added]`` and ``uns[key_added]``, as the serial function does.

    Raises
    ------
    StmorphInputError
        On bad input (unknown channels, a missing weights file, ``crop_normalize``, ``edge``, ``n_components``,
        ``batch_size``, ``input_size``), before anything runs; or when no cell's mask is found in its crop.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue  # doctest: +SKIP
    >>> from stmorph.features import SmallResNet  # doctest: +SKIP
    >>> synthetic_tissue(n_cells=120, random_state=0).write("tissue.stmorph")  # doctest: +SKIP
    >>> df = cnn_features("tissue.stmorph", SmallResNet(widths=(8, 16)), size=32, input_size=64, n_components=10,
    ...                   n_workers=2, out_dir="cnn_tiles")  # doctest: +SKIP
    >>> df.shape  # doctest: +SKIP
    (120, 10)
    """
    from ..features import load_cnn
    from ..features._cnn import _pca

    t0 = time.perf_counter()
    if crop_normalize not in ("crop", "image"):
        raise StmorphInputError(f"crop_normalize={crop_normalize!r}", expected="'crop' or 'image'")
    if edge not in ("shift", "pad"):
        raise StmorphInputError(f"edge={edge!r}", expected="'shift' or 'pad'")
    if n_components is not None and (isinstance(n_components, bool) or int(n_components) < 1):
        raise StmorphInputError(f"n_components={n_components!r}", expected="a positive number of components or None")
    if int(batch_size) < 1:
        raise StmorphInputError(f"batch_size={batch_size!r}", expected="a positive number of crops")
    if int(input_size) < 1:
        raise StmorphInputError(f"input_size={input_size!r}", expected="a positive side in pixels")
    net = load_cnn(model, weights, random_state=random_state)  # the serial call: same network, same seed
    digest = _model_digest(net)
    out, temporary = out_folder(out_dir)
    try:
        inputs = out / "inputs"
        src = SampleSource.resolve(sample, inputs)
        chans = list(src.channels if channels is None else channels)
        if not chans:
            raise missing_modality("images")
        specs = src.channel_specs(chans)
        if src.n_cells == 0:
            raise StmorphInputError("the sample has no cells", expected="at least one cell")
        size = crop_px(src, None if crop_um is not None else size, crop_um, default=100, what="CNN crop")
        resolved = src.resolve_masks(masks, mask_ids, inputs)
        seg_spec = None if resolved is None else resolved[0]
        ids = None if resolved is None else resolved[1]
        model_file = _save_model(net, out / "model", digest).resolve()
        from ..crops import crop_boxes

        plan = plan_tiles(src.centroids, tile_size, crop_size=size, edge=edge, image_shape=src.image_shape)
        boxes = crop_boxes(src.centroids, size, src.image_shape, edge=edge)
        polygons = seg_spec is not None and seg_spec["kind"] == "polygons"
        make_task = crop_task_factory(
            {"boxes": boxes, "ids": ids, "batch": serial_batch_sizes(src.n_cells, int(batch_size))},
            (lambda tile: polygon_file(inputs, tile)) if polygons else None,
        )

        def before_submit(pending: pd.DataFrame) -> None:
            if polygons:
                write_polygon_inputs(src, pending, inputs)

        with engine_client(client, n_workers, scheduler) as cl:
            ranges = channel_ranges(specs, cl, cache_dir=out) if crop_normalize == "image" else None
            run_params = {
                "model": digest, "size": size, "channels": chans, "input_size": int(input_size),
                "crop_normalize": crop_normalize, "edge": edge, "batch_size": int(batch_size), "device": device,
                "ranges": ranges,
                "masks": None if seg_spec is None else {**seg_spec, "stamp": file_stamp(seg_spec) if seg_spec.get("path")
                                                        else None},
                "inputs": src.fingerprint_inputs(), "cells": array_hash(src.centroids, ids),
                "polygons": array_hash(src.polygons().vertices.to_numpy()) if polygons else None,
            }
            common = {"model_file": str(model_file), "model_digest": digest, "channel_specs": specs, "size": size,
                      "edge": edge, "crop_normalize": crop_normalize, "ranges": ranges, "seg_spec": seg_spec,
                      "input_size": int(input_size), "device": device}
            run = run_tiles(_cnn_tile, plan, out, make_task=make_task, common=common, params=run_params, kind="cnn",
                            client=cl, retries=retries, overwrite=overwrite, before_submit=before_submit,
                            show_progress=show_progress)
        t_cnn = time.perf_counter() - t0
        feats = _assemble(list(run.files().values()), src.n_cells)
        n = src.n_cells
        n_empty = int(run.records["empty_masks"].sum()) if "empty_masks" in run.records else 0
        if resolved is not None and n_empty == n:
            raise StmorphInputError(
                f"none of the {n} cells has a pixel of its own label inside its crop: the mask ids do not match the "
                "label image (or it is on another grid)", column="label_id",
                expected="each cell's label value in the masks (obs['label_id'] or mask_ids=)",
            )
        if n_empty:
            warnings.warn(f"{n_empty} of {n} cells have an empty mask in their crop; their features are undefined",
                          RuntimeWarning, stacklevel=2)
        reduced, evr = _pca(feats, n_components, random_state)
        info: dict[str, Any] = {
            "method": "cnn",
            "model": model if isinstance(model, str) else type(model).__name__,
            "weights": None if weights is None else str(Path(weights).resolve()),
            "channels": chans,
            "size": int(size),
            "input_size": int(input_size),
            "crop_normalize": crop_normalize,
            "masks": resolved is not None,
            "n_raw_features": int(feats.shape[1]),
            "n_components": int(reduced.shape[1]),
            "explained_variance_ratio": None if evr is None else evr.tolist(),
            "seconds": round(time.perf_counter() - t0, 3),
            "seconds_cnn": round(t_cnn, 3),
            "distributed": {**run.summary(), "tile_size": int(tile_size), "out_dir": "" if temporary else str(out)},
        }
        base = key_added[2:] if key_added.startswith("X_") else key_added
        result = pd.DataFrame(reduced, index=pd.Index(src.cell_ids, name="cell_id"),
                              columns=[f"{base}_{i}" for i in range(reduced.shape[1])], copy=False)
        result.attrs["info"] = info
        if src.sample is not None:
            src.sample.adata.obsm[key_added] = reduced
            src.sample.adata.uns[key_added] = info
        return result
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
