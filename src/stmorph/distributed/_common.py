"""Pieces shared by the distributed kinds of per-cell work: image ranges, crop sizes, per-tile inputs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from .._utils import jsonable
from ..errors import StmorphInputError
from ._engine import TileTask
from ._plan import tile_windows
from ._source import SampleSource, file_stamp, open_image, read_window

__all__ = ["channel_ranges", "crop_px", "array_hash", "write_polygon_inputs", "tile_masks", "out_folder"]


def array_hash(*arrays: Any) -> str:
    """SHA-1 of arrays' bytes (shapes and dtypes included)."""
    h = hashlib.sha1()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def _block_range(spec: dict[str, Any], r0: int, r1: int, c0: int, c1: int) -> tuple[float, float]:
    win = read_window(spec, r0, r1, c0, c1)
    return float(np.min(win)), float(np.max(win))


def _image_dtype(spec: dict[str, Any]) -> np.dtype:
    return open_image(spec).window(0, 1, 0, 1).dtype


def channel_ranges(
    specs: Sequence[dict[str, Any]], client: Any, *, cache_dir: Path | None = None, block: int = 4096
) -> list[tuple[float, float]]:
    """Each channel's ``(min, max)`` over the whole image, reduced block by block on the cluster.

    Blocks of ``block`` pixels are read with :meth:`~stmorph.StainImage.window` (only that block), so no process
    ever holds a whole slide. Results are cached in ``cache_dir/ranges.json`` by file path, size and time.

    Parameters
    ----------
    specs
        Image specs (:func:`~stmorph.distributed._source.image_spec`).
    client
        A :class:`distributed.Client`.
    cache_dir
        Folder of the cache file (``None``: no cache).
    block
        Block side in pixels.

    Returns
    -------
    list of ``(min, max)`` floats, equal to ``(np.min(image), np.max(image))``.

    Examples
    --------
    >>> channel_ranges([spec], client)  # doctest: +SKIP
    [(0.0, 4095.0)]
    """
    cache_file = None if cache_dir is None else Path(cache_dir) / "ranges.json"
    cache: dict[str, list[float]] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except json.JSONDecodeError:
            cache = {}
    keys = [json.dumps({"spec": spec, "stamp": file_stamp(spec)}, sort_keys=True) for spec in specs]
    out: list[tuple[float, float] | None] = [tuple(cache[k]) if k in cache else None for k in keys]  # type: ignore[misc]
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        futs = {}
        for i in todo:
            shape = open_image(specs[i]).shape
            futs[i] = [client.submit(_block_range, specs[i], *w, pure=False, retries=2)
                       for w in tile_windows(shape, block)]
        for i, fl in futs.items():
            vals = client.gather(fl)
            out[i] = (min(v[0] for v in vals), max(v[1] for v in vals))
            cache[keys[i]] = list(out[i])  # type: ignore[arg-type]
        if cache_file is not None:
            with atomic_path(cache_file) as tmp:
                tmp.write_text(json.dumps(cache, indent=1))
    return [tuple(v) for v in out]  # type: ignore[misc]


def channel_scales(
    specs: Sequence[dict[str, Any]], intensity_scale: str | float, client: Any, cache_dir: Path | None
) -> list[float]:
    """The divisor of each channel, as :func:`stmorph.features.cellprofiler_features` computes it."""
    if isinstance(intensity_scale, int | float) and not isinstance(intensity_scale, bool):
        return [float(intensity_scale)] * len(specs)
    if intensity_scale == "image":
        return [hi for _, hi in channel_ranges(specs, client, cache_dir=cache_dir)]
    if intensity_scale == "dtype":
        out = []
        for spec in specs:
            dt = _image_dtype(spec)
            out.append(float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0)
        return out
    raise StmorphInputError(f"intensity_scale={intensity_scale!r}", expected="'image', 'dtype' or a number")


def crop_px(source: SampleSource, size: int | None, crop_um: float | None, *, default: int, what: str) -> int:
    """The crop side in pixels, as :func:`stmorph.crops.crop_size_px` (whose small-crop warning needs the whole
    segmentation, so it is given only for an in-memory sample)."""
    from ..crops import crop_size_px

    if source.sample is not None:
        return crop_size_px(source.sample, size, crop_um, default=default, what=what)

    class _Shim:  # pixel size only: no segmentation read for the warning
        pixel_size = source.pixel_size
        segmentation = None

    return crop_size_px(_Shim(), size, crop_um, default=default, what=what)


def out_folder(out_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """The output folder and whether it is a temporary one (removed by the caller at the end)."""
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="stmorph-tiles-")), True
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p, False


def polygon_file(inputs_dir: Path, tile: int) -> Path:
    return inputs_dir / "polygons" / f"tile_{int(tile):06d}.parquet"


def write_polygon_inputs(source: SampleSource, pending: pd.DataFrame, inputs_dir: Path) -> None:
    """Write, for each pending tile, the vertices of the polygons that touch its window (only those are drawn)."""
    import shapely

    seg = source.polygons()
    tree = seg._index()
    labels = seg._bounds.index.get_level_values(0).to_numpy()
    v = seg.vertices
    (inputs_dir / "polygons").mkdir(parents=True, exist_ok=True)
    for row in pending.itertuples(index=False):
        f = polygon_file(inputs_dir, row.tile)
        if f.exists():
            continue
        hit = tree.query(shapely.box(row.wc0 - 0.5, row.wr0 - 0.5, row.wc1 - 0.5, row.wr1 - 0.5))
        sub = v[v["label_id"].isin(np.unique(labels[hit]))]
        with atomic_path(f, suffix=".parquet") as tmp:
            sub.to_parquet(tmp, index=False)


def tile_masks(task: TileTask, seg_spec: dict[str, Any] | None) -> Any:
    """The mask source of a task and the boxes to cut from it: ``(source, boxes)`` or ``None``.

    A raster segmentation is read once for the window (boxes in window coordinates); a polygon segmentation is
    rebuilt from the tile's polygons and drawn crop by crop with the slide's boxes, exactly as the serial code.
    """
    if seg_spec is None:
        return None
    boxes = task.data["boxes"]
    if seg_spec["kind"] == "polygons":
        from .._image import PolygonSegmentation

        verts = pd.read_parquet(task.data["polygons"])
        return PolygonSegmentation(verts, tuple(seg_spec["shape"])), boxes
    wr0, wr1, wc0, wc1 = task.window
    win = read_window(seg_spec, wr0, wr1, wc0, wc1)
    return win, boxes - np.array([wr0, wc0], dtype=np.int64)


def window_stains(task: TileTask, specs: Sequence[dict[str, Any]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each channel's window of a task and the boxes in window coordinates."""
    wr0, wr1, wc0, wc1 = task.window
    wins = [read_window(s, wr0, wr1, wc0, wc1) for s in specs]
    return wins, task.data["boxes"] - np.array([wr0, wc0], dtype=np.int64)


def params_json(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a run's parameters, as its fingerprint sees them."""
    return jsonable(params, default=repr)
