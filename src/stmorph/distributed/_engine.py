"""One engine for per-cell work: per-tile tasks on a dask.distributed cluster, a manifest, resume and retries.

:func:`run_tiles` submits one task per tile of a plan (:func:`~stmorph.distributed.plan_tiles`) to a
``dask.distributed`` client - the one given, the one at a scheduler address, the active one, or a
:class:`~distributed.LocalCluster` of worker processes with one thread each - and collects the results with
:func:`distributed.as_completed` as they finish. Each task writes its tile's output file atomically (a temporary
name, then a rename) into ``<out_dir>/tiles/``; as each result comes back the driver appends a line to
``<out_dir>/done.jsonl``. A run started again on the same folder with the same parameters skips the tiles listed
there, so a killed run resumes from its finished tiles; tasks are submitted with ``retries=``, and tasks on a
worker that dies are rescheduled by dask, so neither a failing attempt nor a lost worker loses anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from .._utils import jsonable
from ..errors import StmorphInputError

__all__ = [
    "TileTask", "TileRun", "TileTaskError", "engine_client", "run_tiles", "read_manifest", "worker_memory",
    "MANIFEST", "DONE_FILE", "TILES_DIR", "DELAY_ENV",
]

log = logging.getLogger("stmorph.distributed")

MANIFEST = "manifest.json"
DONE_FILE = "done.jsonl"
TILES_DIR = "tiles"
#: Test hook: seconds each task sleeps after writing its tile (lets a test kill a run mid-way). Not for users.
DELAY_ENV = "STMORPH_TILE_DELAY"
_FORMAT = "stmorph.distributed.run"


class TileTaskError(RuntimeError):
    """A tile's task failed on every attempt; the finished tiles stay recorded and a new run resumes from them."""


@dataclass
class TileTask:
    """What one task receives: its tile, the window it reads, the rows of the cells it owns and per-cell data.

    Attributes
    ----------
    tile
        Tile id (:func:`~stmorph.distributed.plan_tiles`).
    window
        ``(wr0, wr1, c0, c1)``: rows and columns of the slide the task reads (clipped to the image).
    rows
        ``(n,)`` rows of ``adata`` of the owned cells, ascending.
    data
        Per-cell arrays for the owned cells (centroids, crop boxes, label ids, ...) and small per-tile values.
    tmp_dir
        A fresh folder on the output's file system for files the task writes itself (set on the worker).
    """

    tile: int
    window: tuple[int, int, int, int]
    rows: np.ndarray
    data: dict[str, Any] = field(default_factory=dict)
    tmp_dir: str | None = None


def crop_task_factory(
    per_cell: dict[str, np.ndarray | None], polygons: Any = None
) -> Any:
    """``make_task(plan_row) -> TileTask`` for crop-based work: each array of ``per_cell`` (``None`` skipped) is
    cut to the tile's owned rows; ``polygons(tile)`` (optional) names the tile's polygon file.

    Examples
    --------
    >>> import pandas as pd
    >>> row = next(pd.DataFrame({"tile": [0], "wr0": [0], "wr1": [8], "wc0": [0], "wc1": [8],
    ...                          "cells": [[1]]}).itertuples())
    >>> crop_task_factory({"boxes": np.array([[0, 0], [2, 2]]), "ids": None})(row).data["boxes"].tolist()
    [[2, 2]]
    """

    def make_task(row: Any) -> TileTask:
        rows = np.asarray(row.cells, dtype=np.int64)
        data: dict[str, Any] = {k: v[rows] for k, v in per_cell.items() if v is not None}
        if polygons is not None:
            data["polygons"] = str(polygons(row.tile))
        return TileTask(int(row.tile), (int(row.wr0), int(row.wr1), int(row.wc0), int(row.wc1)), rows, data)

    return make_task


@dataclass
class TileRun:
    """The outcome of :func:`run_tiles`.

    Attributes
    ----------
    out_dir
        The output folder.
    records
        One row per finished tile (tile, file, n_cells, seconds, cpu_seconds (of the worker process during the
        task), pid, worker, rss, peak_rss, anon_rss - bytes,
        see :func:`_memory` - and what the task reported), in tile order.
    n_computed, n_skipped
        Tiles computed by this call and tiles found finished by an earlier one.
    seconds
        Wall time of the call.
    """

    out_dir: Path
    records: pd.DataFrame
    n_computed: int
    n_skipped: int
    seconds: float

    def files(self) -> dict[int, Path]:
        """Tile id -> its output file."""
        return {int(t): self.out_dir / f for t, f in zip(self.records["tile"], self.records["file"])}

    def summary(self) -> dict[str, Any]:
        """Cells, tiles, wall time and per-worker throughput and memory of this run (JSON-able)."""
        r = self.records
        out: dict[str, Any] = {"n_tiles": int(len(r)), "n_computed": self.n_computed, "n_skipped": self.n_skipped,
                               "n_cells": int(r["n_cells"].sum()) if len(r) else 0, "seconds": round(self.seconds, 3)}
        if len(r) and "pid" in r:
            out["workers"] = {
                str(pid): {"tiles": int(len(d)), "cells": int(d["n_cells"].sum()),
                           "task_seconds": round(float(d["seconds"].sum()), 3),
                           "cells_per_s": round(float(d["n_cells"].sum() / max(d["seconds"].sum(), 1e-9)), 2),
                           "cells_per_cpu_s": round(float(d["n_cells"].sum() / max(d["cpu_seconds"].sum(), 1e-9)), 2)
                           if "cpu_seconds" in d else None,
                           "peak_rss_mb": round(float(d["peak_rss"].max()) / 2**20, 1),
                           "max_anon_rss_mb": round(float(d["anon_rss"].max()) / 2**20, 1)
                           if "anon_rss" in d else None}
                for pid, d in r.groupby("pid")
            }
        return out


# ---------------------------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def engine_client(
    client: Any = None, n_workers: int | None = None, scheduler: str | None = None, **cluster_kwargs: Any
) -> Iterator[Any]:
    """The dask.distributed client that per-cell work runs on, for the duration of a block.

    In this order: ``client`` when given; a client of the scheduler at ``scheduler`` (``"tcp://host:8786"``, e.g.
    a dask-jobqueue ``SLURMCluster``); the active client (:func:`distributed.get_client`); else a new
    :class:`~distributed.LocalCluster` of ``n_workers`` processes with one thread each (default
    :meth:`stmorph.settings.workers() <stmorph._threads.Settings.workers>`), closed when the block ends.

    Parameters
    ----------
    client
        A :class:`distributed.Client`.
    n_workers
        Worker processes of a new local cluster.
    scheduler
        Address of a running scheduler.
    **cluster_kwargs
        Passed to :class:`~distributed.LocalCluster` (e.g. ``memory_limit="4GiB"``).

    Yields
    ------
    distributed.Client

    Examples
    --------
    >>> with engine_client(n_workers=2) as c:  # doctest: +SKIP
    ...     c.submit(sum, [1, 2]).result()
    3
    """
    from distributed import Client

    if client is not None:
        yield client
        return
    if scheduler:
        try:
            c = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise StmorphInputError(f"cannot reach the dask scheduler at {scheduler} ({exc})", column="--scheduler",
                                    expected="the address of a running scheduler, e.g. tcp://host:8786") from exc
        try:
            yield c
        finally:
            c.close()
        return
    from distributed import get_client

    try:
        active = get_client()
    except ValueError:
        active = None
    if active is not None and active.status == "running":
        if n_workers is not None:
            log.info("using the active dask client %s; n_workers=%s is ignored", active, n_workers)
        yield active
        return
    from distributed import LocalCluster

    from .._threads import settings

    n = int(n_workers) if n_workers is not None else settings.workers()
    if n < 1:
        raise StmorphInputError(f"n_workers={n_workers}", expected="a positive number of worker processes")
    kw = {"threads_per_worker": 1, "processes": True, "dashboard_address": None, "silence_logs": logging.ERROR}
    kw.update(cluster_kwargs)
    cluster = LocalCluster(n_workers=n, **kw)
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def worker_memory(client: Any) -> dict[str, dict[str, float]]:
    """Resident and peak resident memory (MiB) of every worker process of a client.

    Examples
    --------
    >>> worker_memory(client)  # doctest: +SKIP
    {'tcp://127.0.0.1:40001': {'rss_mb': 310.2, 'peak_rss_mb': 402.7, 'pid': 1234}}
    """
    return client.run(_process_memory)


def _memory() -> dict[str, int]:
    """This process's resident memory in bytes: ``rss`` now, ``peak_rss`` (the high-water mark, ``VmHWM``) and
    ``anon_rss`` (anonymous pages: heap, arrays - not file pages of memory maps, which the kernel can drop).

    ``VmHWM`` is read from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a spawned
    worker would report its parent's peak.
    """
    import psutil

    rss = int(psutil.Process().memory_info().rss)
    out = {"rss": rss, "peak_rss": rss, "anon_rss": rss}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmHWM", "RssAnon"):
                    out["peak_rss" if key == "VmHWM" else "anon_rss"] = int(val.split()[0]) * 1024
    except OSError:  # not Linux
        pass
    return out


def _process_memory() -> dict[str, float]:
    m = _memory()
    return {"rss_mb": m["rss"] / 2**20, "peak_rss_mb": m["peak_rss"] / 2**20, "anon_rss_mb": m["anon_rss"] / 2**20,
            "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------------------------
def fingerprint(params: Mapping[str, Any]) -> str:
    """SHA-1 of the JSON form of a run's parameters."""
    return hashlib.sha1(json.dumps(jsonable(params, default=repr), sort_keys=True).encode()).hexdigest()


def read_manifest(out_dir: str | PathLike) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """The manifest of an output folder and its finished tiles (whose files exist).

    A line cut short by a killed run is ignored.

    Returns
    -------
    ``(manifest or None, records)``

    Examples
    --------
    >>> manifest, done = read_manifest("cp_tiles")  # doctest: +SKIP
    >>> done["n_cells"].sum()  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    mf = out_dir / MANIFEST
    manifest = json.loads(mf.read_text()) if mf.exists() else None
    rows = []
    done = out_dir / DONE_FILE
    if done.exists():
        for line in done.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "tile" in rec and (out_dir / rec.get("file", "")).exists():
                rows.append(rec)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.drop_duplicates("tile", keep="last").sort_values("tile").reset_index(drop=True)
    return manifest, df


def _append_done(out_dir: Path, rec: dict[str, Any]) -> None:
    with open(out_dir / DONE_FILE, "a") as f:
        f.write(json.dumps(jsonable(rec, default=repr)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj, default=repr), indent=2))


def _prepare_out_dir(
    out_dir: Path, kind: str, params: dict[str, Any], plan: pd.DataFrame, overwrite: bool | str
) -> str:
    if overwrite not in (True, False, "changed"):
        raise StmorphInputError(f"overwrite={overwrite!r}", expected="True, False or 'changed'")
    fp = fingerprint({"kind": kind, "params": params, "plan": plan.attrs})
    mf = out_dir / MANIFEST
    if mf.exists():
        old = json.loads(mf.read_text())
        changed = old.get("fingerprint") != fp
        if overwrite is False and changed:
            raise StmorphInputError(
                f"the output folder holds a {old.get('kind')} run with other parameters (or inputs)", file=out_dir,
                expected="the same parameters to resume, a new folder, or overwrite=True to start afresh",
            )
        if overwrite is True or changed:
            log.info("%s: starting afresh in %s", kind, out_dir)
            for p in (out_dir / TILES_DIR, out_dir / DONE_FILE, mf, out_dir / "plan.parquet"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    (out_dir / TILES_DIR).mkdir(parents=True, exist_ok=True)
    if not mf.exists():
        plan_out = plan.copy()
        plan_out["cells"] = [np.asarray(c, dtype=np.int64) for c in plan["cells"]]
        plan_out.attrs = {}
        plan_out.to_parquet(out_dir / "plan.parquet", index=False)
        _write_json_atomic(mf, {
            "format": _FORMAT, "version": 1, "kind": kind, "fingerprint": fp, "params": params,
            "plan": plan.attrs, "n_tiles": int(len(plan)), "n_cells": int(plan["n_cells"].sum()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    return fp


# ---------------------------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------------------------
def tile_file(tile: int, suffix: str) -> str:
    """Relative path of a tile's output file: ``tiles/tile_000012<suffix>``."""
    return f"{TILES_DIR}/tile_{int(tile):06d}{suffix}"


def _write_result(result: Any, out_dir: Path, task: TileTask) -> str:
    """Move a task's result into place atomically; returns the relative file name."""
    if isinstance(result, pd.DataFrame):
        rel = tile_file(task.tile, ".parquet")
        with atomic_path(out_dir / rel, suffix=".parquet") as tmp:
            result.to_parquet(tmp)
        return rel
    if isinstance(result, Mapping):
        rel = tile_file(task.tile, ".npz")
        with atomic_path(out_dir / rel, suffix=".npz") as tmp:
            np.savez(tmp, **{k: np.asarray(v) for k, v in result.items()})
        return rel
    if isinstance(result, str | PathLike):
        src = Path(result)
        suffix = "".join(src.suffixes) or ""
        rel = tile_file(task.tile, suffix)
        dst = out_dir / rel
        if src.is_dir():
            if dst.exists():  # an earlier attempt finished it (outputs are deterministic): keep that one
                shutil.rmtree(src, ignore_errors=True)
            else:
                os.replace(src, dst)
        else:
            os.replace(src, dst)
        return rel
    raise TypeError(f"a tile task returned {type(result).__name__}: expected a DataFrame, a dict of arrays or the "
                    "path of a file it wrote into task.tmp_dir")


def _execute(func: Callable[..., Any], task: TileTask, common: dict[str, Any], out_dir: str, threads: int) -> dict:
    """Run one tile's task on a worker and write its result; returns the tile's record."""
    from .._threads import thread_limits

    out = Path(out_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    tmp = out / TILES_DIR / f".tmp-{task.tile:06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    task.tmp_dir = str(tmp)
    quiet = os.environ.get("STMORPH_PROGRESS")
    os.environ["STMORPH_PROGRESS"] = "0"  # no progress bars from inside tasks (the driver shows one)
    try:
        with thread_limits(threads):
            result = func(task, **common)
        meta: dict[str, Any] = {}
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
            result, meta = result[0], dict(result[1])
        rel = _write_result(result, out, task)
    finally:
        if quiet is None:
            os.environ.pop("STMORPH_PROGRESS", None)
        else:
            os.environ["STMORPH_PROGRESS"] = quiet
        shutil.rmtree(tmp, ignore_errors=True)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    return {"tile": int(task.tile), "file": rel, "n_cells": int(len(task.rows)),
            "seconds": round(time.perf_counter() - t0, 4), "cpu_seconds": round(time.process_time() - c0, 4),
            "pid": os.getpid(), "worker": worker, **_memory(), **meta}


def run_tiles(
    func: Callable[..., Any],
    plan: pd.DataFrame,
    out_dir: str | PathLike,
    *,
    make_task: Callable[[Any], TileTask] | None = None,
    common: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    kind: str = "tiles",
    client: Any = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    overwrite: bool | str = False,
    task_threads: int = 1,
    before_submit: Callable[[pd.DataFrame], None] | None = None,
    show_progress: bool | None = None,
) -> TileRun:
    """Run ``func`` once per tile of ``plan`` on a dask.distributed cluster; resumable, retried, streamed.

    Parameters
    ----------
    func
        ``func(task: TileTask, **common)`` run on a worker. It returns a :class:`pandas.DataFrame` (written as
        parquet), a dict of arrays (``.npz``) or the path of a file or folder it wrote into ``task.tmp_dir``
        (e.g. a zarr store); optionally as ``(result, meta)`` with a dict of small values kept in the record.
        Must be importable by the workers (a module-level function).
    plan
        Tiles from :func:`~stmorph.distributed.plan_tiles`.
    out_dir
        Output folder: ``manifest.json``, ``plan.parquet``, ``done.jsonl``, ``tiles/``.
    make_task
        Builds a tile's :class:`TileTask` from its plan row (default: window and rows only).
    common
        Keyword arguments for every task (small: specs, parameters).
    params
        What defines the run's result (with ``kind`` and the plan they make its fingerprint). A folder holding a
        run with another fingerprint is refused unless ``overwrite``.
    kind
        Name of the kind of work (``"cellprofiler"``, ``"crops"``, ``"vae"``).
    client, n_workers, scheduler
        Where to run, see :func:`engine_client`.
    retries
        Extra attempts of a failing task (``Client.submit(retries=)``).
    overwrite
        ``True``: discard an earlier run in ``out_dir`` and start afresh; ``"changed"``: only when its parameters
        differ (else resume); ``False``: resume, and refuse a folder holding a run with other parameters.
    task_threads
        Threads of torch, numba and BLAS inside each task (:func:`stmorph.thread_limits`).
    before_submit
        Called on the driver with the pending tiles before they are submitted (e.g. to write per-tile inputs).
    show_progress
        Progress bar (``None``: unless ``STMORPH_PROGRESS=0``).

    Returns
    -------
    TileRun

    Raises
    ------
    TileTaskError
        When a tile fails on every attempt (``StmorphInputError`` is raised as such); finished tiles stay
        recorded and a new call resumes.

    Examples
    --------
    >>> def count(task):  # doctest: +SKIP
    ...     return {"rows": task.rows}
    >>> run = run_tiles(count, plan_tiles(sample, 512, crop_size=64), "out", n_workers=2)  # doctest: +SKIP
    >>> run.summary()["n_cells"] == sample.n_cells  # doctest: +SKIP
    True
    """
    from .._utils import progress

    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params or {})
    _prepare_out_dir(out, kind, params, plan, overwrite)
    _, done = read_manifest(out)
    done_tiles = set(done["tile"].astype(int)) if len(done) else set()
    pending = plan[~plan["tile"].isin(done_tiles)]
    n_skipped = int(len(plan) - len(pending))
    if n_skipped:
        log.info("%s: %d of %d tiles already finished in %s", kind, n_skipped, len(plan), out)
    if len(pending):
        if before_submit is not None:
            before_submit(pending)
        build = make_task or _default_task
        tasks = [build(row) for row in pending.itertuples(index=False)]
        bar = progress(range(int(pending["n_cells"].sum())), desc=f"{kind} ({len(tasks)} tiles)",
                       total=int(pending["n_cells"].sum()), unit="cell", disable=None if show_progress is None else not show_progress)
        with engine_client(client, n_workers, scheduler) as cl:
            from distributed import as_completed

            nonce = uuid.uuid4().hex[:8]
            futures = [
                cl.submit(_execute, func, task, dict(common or {}), str(out), int(task_threads),
                          key=f"stmorph-{kind}-{nonce}-tile{task.tile}", retries=int(retries), pure=False)
                for task in tasks
            ]
            try:
                for fut in as_completed(futures):
                    try:
                        rec = fut.result()
                    except StmorphInputError:
                        raise
                    except Exception as exc:
                        tile = str(fut.key).rsplit("tile", 1)[-1]
                        raise TileTaskError(
                            f"{kind}: tile {tile} failed on {int(retries) + 1} attempt(s): {type(exc).__name__}: "
                            f"{exc}. Finished tiles are recorded in {out / DONE_FILE}; run again to resume."
                        ) from exc
                    _append_done(out, rec)
                    bar.update(rec["n_cells"])  # type: ignore[attr-defined]
            finally:
                cl.cancel([f for f in futures if not f.done()])
                bar.close()  # type: ignore[attr-defined]
    _, done = read_manifest(out)
    missing = set(plan["tile"].astype(int)) - set(done["tile"].astype(int) if len(done) else [])
    if missing:
        raise TileTaskError(f"{kind}: tiles {sorted(missing)[:10]} have no output in {out}")
    done = done[done["tile"].isin(plan["tile"])].reset_index(drop=True)
    return TileRun(out, done, int(len(plan) - n_skipped), n_skipped, time.perf_counter() - t0)


def _default_task(row: Any) -> TileTask:
    return TileTask(int(row.tile), (int(row.wr0), int(row.wr1), int(row.wc0), int(row.wc1)),
                    np.asarray(row.cells, dtype=np.int64))
