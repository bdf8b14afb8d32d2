"""CellProfiler features of a whole slide on a dask.distributed cluster, equal to the serial function's.

Each task reads its tile's window of every channel (and of the segmentation), cuts the owned cells' crops with
the boxes :func:`stmorph.crops.crop_boxes` placed on the whole image (shifted into window coordinates), scales
them by the channel maxima computed once up front, and measures them with
:func:`stmorph.features.measure_crops` - the same calls as :func:`stmorph.features.cellprofiler_features`. The
raw per-tile measurements are concatenated in cell order and feature selection and NaN filling are applied once,
on the whole table, so the result equals the serial one.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ..sample import missing_modality
from ._common import (
    array_hash,
    channel_scales,
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

__all__ = ["cellprofiler_features"]


def _cp_tile(
    task: TileTask,
    *,
    channel_specs: list[dict[str, Any]],
    channels: list[str],
    scales: list[float],
    size: int,
    edge: str,
    seg_spec: dict[str, Any] | None,
    modules: list[str],
    otsu: list[str],
    params: dict[str, dict[str, Any]] | None,
    accelerator: str | None,
    engine: str,
    batch_size: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One tile: raw CellProfiler measurements of its owned cells (rows of ``adata`` as index)."""
    from ..crops import crop_masks, crop_stains
    from ..features import measure_crops

    wins, local = window_stains(task, channel_specs)
    mask_src = tile_masks(task, seg_spec)
    ids = task.data.get("ids")
    n = len(task.rows)
    frames = []
    n_empty = 0
    for b0 in range(0, n, max(1, int(batch_size))):
        sl = slice(b0, min(n, b0 + int(batch_size)))
        crops = crop_stains(wins, None, size, boxes=local[sl], edge=edge, normalize="image",  # type: ignore[arg-type]
                            image_range=[(0.0, s if s > 0 else 1.0) for s in scales])
        mk = None
        if mask_src is not None:
            mk = crop_masks(mask_src[0], mask_src[1][sl], size, ids[sl])
            n_empty += int((~mk.reshape(mk.shape[0], -1).any(axis=1)).sum())
        frames.append(measure_crops(crops, channels, mk, modules=modules, otsu_channels=otsu, params=params,
                                    n_jobs=1, accelerator=accelerator, engine=engine,  # type: ignore[arg-type]
                                    progress_desc=f"tile {task.tile}"))
    df = pd.concat(frames, axis=0) if frames else pd.DataFrame()
    df.index = pd.Index(task.rows, name="row")
    df.columns = [str(c) for c in df.columns]
    return df, {"empty_masks": n_empty}


def _assemble(files: list, n: int) -> pd.DataFrame:
    """Raw per-tile tables placed into one ``(n, features)`` float64 table in cell-row order (one copy of the
    table in memory, plus one tile at a time); columns in the serial (first-appearance in row order) order."""
    import pyarrow.parquet as pq

    first_row, names = [], []
    for f in files:
        rows = pq.read_table(f, columns=["row"]).column("row").to_numpy()
        first_row.append(int(rows.min()) if rows.size else -1)
        names.append([c for c in pq.read_schema(f).names if c != "row" and not c.startswith("__index")])
    columns: list[str] = []
    seen: set[str] = set()
    for i in np.argsort(first_row, kind="stable"):
        for c in names[i]:
            if c not in seen:
                seen.add(c)
                columns.append(c)
    pos = {c: j for j, c in enumerate(columns)}
    values = np.full((n, len(columns)), np.nan)
    owned = np.zeros(n, dtype=np.int64)
    for f, cols in zip(files, names):
        tab = pd.read_parquet(f)
        rows = tab.index.to_numpy().astype(np.int64)
        owned[rows] += 1
        if cols:
            values[np.ix_(rows, [pos[c] for c in cols])] = tab[cols].to_numpy(dtype=np.float64)
    if not (owned == 1).all():
        bad = np.flatnonzero(owned != 1)[:10].tolist()
        raise RuntimeError(f"cells at rows {bad} are missing from the tiles or owned twice")
    return pd.DataFrame(values, columns=columns, copy=False)


def cellprofiler_features(
    sample: Any,
    *,
    out_dir: str | PathLike | None = None,
    size: int = 100,
    channels: Sequence[str] | None = None,
    otsu_channels: Sequence[str] | None = ("DAPI",),
    masks: Any = None,
    mask_ids: np.ndarray | str | None = None,
    crop_um: float | None = None,
    modules: Sequence[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    intensity_scale: str | float = "image",
    edge: Literal["shift", "pad"] = "shift",
    select: bool = True,
    selection: dict[str, Any] | None = None,
    fill_nan: Literal["median"] | None = "median",
    key_added: str | None = None,
    batch_size: int = 256,
    accelerator: str | None = "auto",
    engine: Literal["fast", "cp_measure"] = "fast",
    tile_size: int = 2048,
    client: Any = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    overwrite: bool | str = False,
    show_progress: bool | None = None,
) -> pd.DataFrame:
    """CellProfiler features of every cell, computed tile by tile on a dask.distributed cluster.

    The same features as :func:`stmorph.features.cellprofiler_features` (equal values: the same crops, the same
    measurement calls, selection and NaN filling once on the whole table), for slides of any size: workers read
    only their tiles' windows, and the run resumes from its finished tiles when started again on ``out_dir``.

    Parameters
    ----------
    sample
        A sample folder (workers open its images lazily; the driver reads only its cell table) or a
        :class:`~stmorph.SpatialSample` (in-memory images are written to ``out_dir/inputs`` first).
    out_dir
        Output folder (manifest, plan, per-tile raw measurements as parquet). ``None``: a temporary folder,
        removed at the end (no resume).
    size, channels, otsu_channels, masks, mask_ids, crop_um, modules, params, intensity_scale, edge, select, selection, fill_nan, key_added, batch_size, accelerator, engine
        As in :func:`stmorph.features.cellprofiler_features` (``batch_size``: cells cropped at once in a task).
    tile_size
        Tile side in pixels (:func:`~stmorph.distributed.plan_tiles`); the window adds half a crop on each side.
    client, n_workers, scheduler
        Where to run (:func:`~stmorph.distributed.engine_client`): a client, a new local cluster of
        ``n_workers`` processes, or the scheduler at an address.
    retries
        Extra attempts of a failing tile.
    overwrite
        ``True``: discard an earlier run in ``out_dir``; ``"changed"``: only one with other parameters; ``False``
        (default): resume, refusing a folder that holds a run with other parameters.
    show_progress
        Progress bar.

    Returns
    -------
    pandas.DataFrame
        Cells x selected features, float32 (index ``cell_id``, the sample's cell order); ``attrs["info"]`` holds
        what the serial function writes to ``uns[key]`` plus ``"distributed"`` (tiles, workers, timings). For a
        :class:`~stmorph.SpatialSample` the table is also written to ``adata.obsm[key]`` / ``uns`` as the serial
        function does.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue  # doctest: +SKIP
    >>> synthetic_tissue(n_cells=120, random_state=0).write("tissue.stmorph")  # doctest: +SKIP
    >>> df = cellprofiler_features("tissue.stmorph", size=32, masks=True, n_workers=2,
    ...                            out_dir="cp_tiles")  # doctest: +SKIP
    >>> df.shape  # doctest: +SKIP
    (120, 90)
    """
    from ..features import DEFAULT_MODULES
    from ..features._cellprofiler import _check_engine, _check_modules, _merged_params, finalize_features

    t0 = time.perf_counter()
    mods = list(_check_modules(DEFAULT_MODULES if modules is None else modules))
    _merged_params(params)  # validates module names
    _check_engine(engine)
    if fill_nan not in ("median", None):
        raise StmorphInputError(f"fill_nan={fill_nan!r}", expected="'median' or None")
    out, temporary = out_folder(out_dir)
    try:
        inputs = out / "inputs"
        src = SampleSource.resolve(sample, inputs)
        chans = list(src.channels if channels is None else channels)
        if not chans:
            raise missing_modality("images")
        specs = src.channel_specs(chans)
        if otsu_channels == ("DAPI",):
            otsu = [c for c in otsu_channels if c in chans]
        else:
            otsu = list(otsu_channels or ())
        size = crop_px(src, None if crop_um is not None else size, crop_um, default=100, what="CellProfiler crop")
        resolved = src.resolve_masks(masks, mask_ids, inputs)
        key = key_added or f"X_cp_{size}"
        from ..crops import crop_boxes

        plan = plan_tiles(src.centroids, tile_size, crop_size=size, edge=edge, image_shape=src.image_shape)
        boxes = crop_boxes(src.centroids, size, src.image_shape, edge=edge)
        seg_spec = None if resolved is None else resolved[0]
        ids = None if resolved is None else resolved[1]

        make_task = crop_task_factory(
            {"boxes": boxes, "ids": ids},
            (lambda tile: polygon_file(inputs, tile)) if seg_spec is not None and seg_spec["kind"] == "polygons"
            else None,
        )

        def before_submit(pending: pd.DataFrame) -> None:
            if seg_spec is not None and seg_spec["kind"] == "polygons":
                write_polygon_inputs(src, pending, inputs)

        with engine_client(client, n_workers, scheduler) as cl:
            scales = channel_scales(specs, intensity_scale, cl, out)
            run_params = {
                "size": size, "channels": chans, "otsu": otsu, "modules": mods, "params": params or {},
                "scales": scales, "edge": edge, "engine": engine, "accelerator": accelerator,
                "masks": None if seg_spec is None else {**seg_spec, "stamp": file_stamp(seg_spec) if seg_spec.get("path")
                                                        else None},
                "inputs": src.fingerprint_inputs(), "cells": array_hash(src.centroids, ids),
                "polygons": (array_hash(src.polygons().vertices.to_numpy())
                             if seg_spec is not None and seg_spec["kind"] == "polygons" else None),
            }
            common = {"channel_specs": specs, "channels": chans, "scales": scales, "size": size, "edge": edge,
                      "seg_spec": seg_spec, "modules": mods, "otsu": otsu, "params": params,
                      "accelerator": accelerator, "engine": engine, "batch_size": int(batch_size)}
            run = run_tiles(_cp_tile, plan, out, make_task=make_task, common=common, params=run_params,
                            kind="cellprofiler", client=cl, retries=retries, overwrite=overwrite,
                            before_submit=before_submit, show_progress=show_progress)
        t_measure = time.perf_counter() - t0
        df = _assemble(list(run.files().values()), src.n_cells)
        df.index = pd.Index(src.cell_ids, name="cell_id")
        n = src.n_cells
        n_empty_masks = int(run.records["empty_masks"].sum()) if "empty_masks" in run.records else 0
        if resolved is not None and 0 < n_empty_masks < n:
            warnings.warn(f"{n_empty_masks} of {n} cells have an empty mask in their crop; their features are "
                          "undefined", RuntimeWarning, stacklevel=2)
        df, summary = finalize_features(
            df, masks=resolved is not None, n_empty_masks=n_empty_masks, modules=mods, channels=chans, select=select,
            selection=selection, fill_nan=fill_nan, key=key,
        )
        info: dict[str, Any] = {
            "method": "cellprofiler (cp-measure)", "engine": engine, "size": int(size), "channels": chans,
            "otsu_channels": otsu, "modules": mods,
            "params": {k: v for k, v in _merged_params(params).items() if k in mods},
            "intensity_scale": {c: s for c, s in zip(chans, scales)}, "edge": edge, **summary,
            "seconds": round(time.perf_counter() - t0, 3), "seconds_measure": round(t_measure, 3),
            "distributed": {**run.summary(), "tile_size": int(tile_size),
                            "out_dir": "" if temporary else str(out)},
        }
        result = pd.DataFrame(df.to_numpy(dtype=np.float32), index=df.index, columns=list(df.columns))
        result.attrs["info"] = info
        if src.sample is not None:
            src.sample.adata.obsm[key] = result.to_numpy()
            src.sample.adata.uns[f"{key}_features"] = list(result.columns)
            src.sample.adata.uns[key] = info
        return result
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
