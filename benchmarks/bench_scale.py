"""Benchmark stmorph.distributed at slide scale: read -> crops -> CellProfiler -> evaluation on dask workers.

A synthetic slide of N cells is written out of core as a grid of distinct 2,000-cell tissues of one shared cell-type
design (``synthetic_tissue(design_random_state=...)``: no cell is a copy of another): the stain and label images
are uncompressed TIFFs filled block by block through ``tifffile.memmap`` (memory stays flat at any N), the cell
table gets each tissue's cells (ids ``<tissue>_<cell>``, centroids and label ids offset), and the sample folder
references the images by path (``--layout sample``, the default).

With ``--layout xenium`` the same slide (the same :class:`stmorph.datasets._slides.TissueGrid`: the same tissues,
pixels and masks) is written in the native 10x Xenium layout by :func:`stmorph.datasets.write_xenium_slide`
(``xenium_N/``: transcripts, cells and boundaries in parquet, ``cells.zarr.zip`` masks, tiled zlib OME-TIFF
pyramids, ``cell_types.csv``), then read by :func:`stmorph.io.convert_xenium` (transcripts streamed in record
batches; ``labels="cell_types.csv"``, the slide's ground truth, becomes ``obs["cell_type"]``) into a sample folder
(``slide_N_xenium/sample.stmorph``) that references the OME-TIFFs and the ``masks/1`` array of ``cells.zarr.zip``.
The steps below then run unchanged on that folder: every window a task reads decompresses zlib tiles of the
stains and lz4-blosc chunks of the masks instead of slicing uncompressed memory maps (``tile_reads`` measures that
cost alone). Outputs of this layout are named ``*_N_xenium``.

Before the pipeline, each in its own process (so that its peak RSS is its own):

* ``generate`` - the slide writer (``make_slide`` or ``write_xenium_slide``): wall and CPU seconds, peak RSS, size on
  disk of what it wrote; skipped (``slide_reused``) when the sample folder exists from an earlier run in ``--dir``;
* ``read`` - ``--layout xenium`` only: ``convert_xenium`` of that slide: the same figures (disk: the sample folder;
  the stains and masks stay where they are, referenced).

``--io-only`` stops there (e.g. the writer and reader at 1,000,000 cells). Then, on a
:class:`distributed.LocalCluster` of ``--workers`` processes (one thread each):

* ``read_s`` - the driver reads the cell table and image references (:class:`stmorph.distributed.SampleSource`);
* ``tile_reads`` - the driver reads every tile's window (as the tasks do, :func:`stmorph.distributed._source.read_window`)
  of each stain and of the mask raster once, one thread: seconds and cells per CPU-second of the reads alone (page
  cache warm after writing: decompression, not the disk);
* ``crops`` - :func:`stmorph.distributed.write_crops`: both stains, every cell, to the tiled zarr store;
* ``cp``    - :func:`stmorph.distributed.cellprofiler_features`: intensity + texture (256 grey levels, scale 3;
  ``--modules all``: every module) on each cell's own mask, DAPI + membrane + Otsu-DAPI, selection and NaN filling on the whole table;
* ``vae``   - a stain VAE (``ls2_cpu``) trained for one epoch on 2,000 cells in the driver, then
  :func:`stmorph.distributed.vae_latents`: every cell encoded on the workers (per-worker rates from the tasks'
  records; with ``xenium`` the preset's channels are DAPI and the membrane stain, ``ATP1A1_CD45_E-Cadherin``);
* ``eval``  - :func:`stmorph.eval.evaluate_spaces` on the CP table and the VAE latent (random forest, 5 folds;
  PERMANOVA / PERMDISP, tuned Leiden and the CP + LS2 multiplex unless ``--classification-only``, with the
  large-n paths the summary's ``scaling`` entry names; above 25,000 cells each tree's bootstrap is capped at
  ~20,000 cells, ``rf_max_samples``);
* ``muse``  - with ``--muse`` (or ``--muse-only`` on finished runs): MUSE of the raw CellProfiler table and the
  VAE latent (defaults, both dense) in its own process: time, peak RSS, ARI against the cell types;
* ``cp_serial`` - up to ``--serial-max`` cells, :func:`stmorph.features.cellprofiler_features` in this process,
  one thread, on the same slide: the per-core reference, and whether its table equals the distributed one.

For each step: wall time, cells/s per worker (cells / summed task seconds of that worker, and cells / wall /
workers), cells per CPU second per worker (free of the other jobs on a shared machine) and peak RSS per worker (``ru_maxrss`` of the worker processes, from the tasks and from
``client.run``); the driver's peak RSS too. The workers are started and warmed up (imports, numba kernels) before
the clock starts, as on a long-lived cluster; the start-up is reported apart.

Run: ``python benchmarks/bench_scale.py [--cells 10000,50000] [--layout sample|xenium] [--workers 2] [--size 64]
[--tile-size 2048] [--dir /tmp/stmorph_scale] [--json out.json] [--keep] [--io-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("STMORPH_PROGRESS", "0")


BASE_CELLS = 2000  # cells of the tissue a slide repeats


def make_slide(folder: Path, n_cells: int, *, base_cells: int = BASE_CELLS, seed: int = 0) -> Path:
    """Write a sample of ``n_cells`` cells, a grid of distinct tissues of the same cell types, out of core.

    Every block of the grid is its own ``synthetic_tissue(base_cells)`` (its own cells, positions, stains and
    counts) drawn with one shared ``design_random_state``, so ``type_k`` means the same program everywhere and no
    cell is a copy of another: the evaluation sees a slide of ``n_cells`` different cells. The first tissue fixes
    the block's size; a later tissue that does not fit into it is drawn again with the next seed (counted in the
    sample's metadata). The grid and the tissues' draws are :class:`stmorph.datasets._slides.TissueGrid`, shared with
    :func:`stmorph.datasets.write_xenium_slide` (the same slide in the Xenium layout).

    Parameters
    ----------
    folder
        Where the images and the sample folder (``sample.stmorph``) go.
    n_cells
        Cells of the slide (the last tissue's table is cut short; its masks stay in the image).
    base_cells
        Cells of one tissue.
    seed
        Seed of the cell types' design; tissue ``k`` draws from ``(seed, k)``.

    Returns
    -------
    pathlib.Path
        The sample folder.

    Examples
    --------
    >>> make_slide(Path("/tmp/slide"), 10_000)  # doctest: +SKIP
    PosixPath('/tmp/slide/sample.stmorph')
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import tifffile

    from stmorph import LabelImage, SpatialSample, StainImage
    from stmorph.datasets._slides import TissueGrid

    folder.mkdir(parents=True, exist_ok=True)
    grid = TissueGrid(n_cells, tissue_cells=base_cells, seed=seed)  # draws the first tissue: the block's size
    maps = {name: tifffile.memmap(folder / f"{name}.tif", shape=grid.shape, dtype=dt)
            for name, dt in grid.channels.items()}
    maps["segmentation"] = tifffile.memmap(folder / "segmentation.tif", shape=grid.shape, dtype=np.uint32)
    step = base_cells + 1  # label ids of block k: k * step + 1 ... k * step + base_cells
    parts = []
    t0 = time.perf_counter()
    for t in grid:
        k, tissue, n_k = t.index, t.sample, t.n_cells
        blk = t.block
        for name, img in tissue.images.items():
            maps[name][blk] = img.read()
        seg = np.asarray(tissue.segmentation.read()).astype(np.uint32)
        maps["segmentation"][blk] = np.where(seg > 0, seg + k * step, 0)
        src = tissue.adata
        a = ad.AnnData(sp.csr_matrix(src.X[:n_k]), obs=src.obs.iloc[:n_k].copy(), var=src.var)
        a.obs_names = [f"{k}_{i}" for i in src.obs_names[:n_k]]
        a.obsm["spatial"] = tissue.centroids[:n_k] + np.array([t.origin[1], t.origin[0]], dtype=np.float64)
        a.obs["label_id"] = a.obs["label_id"].to_numpy().astype(np.int64) + k * step
        parts.append(a)
        if k % 50 == 49:
            print(f"  slide: {k + 1}/{grid.n_tissues} tissues, {time.perf_counter() - t0:.0f} s", flush=True)
        del t, tissue
    for m in maps.values():
        m.flush()
    del maps
    adata = ad.concat(parts, merge="same")
    adata.obs["cell_type"] = pd.Categorical(adata.obs["cell_type"].astype(str))
    meta = {"generator": "bench_scale.make_slide", "tissues": grid.n_tissues, "tissue_cells": base_cells,
            "design_random_state": seed, "redrawn": grid.redrawn}
    sample = SpatialSample(adata, None, {n: StainImage(folder / f"{n}.tif") for n in grid.channels},
                           grid.pixel_size, f"scale_{n_cells}", meta, LabelImage(folder / "segmentation.tif"))
    return sample.write(folder / "sample.stmorph", overwrite=True)


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ``ru_maxrss`` would include a spawning parent's peak)."""
    from stmorph.distributed._engine import _memory

    return _memory()["peak_rss"] / 2**20


LAYOUTS = ("sample", "xenium")


def _tag(n_cells: int, layout: str = "sample") -> str:
    """The suffix of a run's folders: ``N`` (sample layout) or ``N_xenium``."""
    return f"{n_cells}" if layout == "sample" else f"{n_cells}_{layout}"


def _slide_paths(root: Path, n_cells: int, layout: str = "sample") -> tuple[Path, Path | None]:
    """The sample folder the pipeline reads and, for ``xenium``, the Xenium folder it is converted from."""
    folder = root / f"slide_{_tag(n_cells, layout)}" / "sample.stmorph"
    return folder, (root / f"xenium_{n_cells}" if layout == "xenium" else None)


def _disk_mb(path: Path) -> float:
    """Bytes of the files under ``path`` (or of the file), MiB."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def _timed(fn: object, *args: object, **kwargs: object) -> dict:
    """Call ``fn``: its wall and CPU seconds and this process's peak RSS afterwards."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)  # type: ignore[operator]
    return {"wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - c, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _step(args: list[str]) -> dict:
    """``bench_scale.py <args>`` in its own process (its output shows as it runs): what :func:`_timed` measured
    there, plus the process's whole time (interpreter and imports included, ``process_s``)."""
    fd, name = tempfile.mkstemp(suffix=".json", prefix="bench_scale_step_")
    os.close(fd)
    out = Path(name)
    t = time.perf_counter()
    try:
        subprocess.run([sys.executable, __file__, *args, "--step-out", str(out)], check=True)
        res = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    res["process_s"] = round(time.perf_counter() - t, 2)
    return res


def write_xenium(folder: Path, n_cells: int, *, base_cells: int = BASE_CELLS, seed: int = 0) -> Path:
    """The slide of :func:`make_slide` in the Xenium layout (:func:`stmorph.datasets.write_xenium_slide`)."""
    from stmorph.datasets import write_xenium_slide

    return write_xenium_slide(folder, n_cells, tissue_cells=base_cells, seed=seed, overwrite=True)


def convert(xenium: Path, folder: Path, n_cells: int) -> Path:
    """The Xenium slide as a sample folder, its ground truth in ``obs["cell_type"]``."""
    from stmorph.io import convert_xenium

    return convert_xenium(xenium, folder, labels="cell_types.csv", name=f"scale_{n_cells}_xenium", overwrite=True)


def prepare_slide(root: Path, n_cells: int, layout: str = "sample") -> dict:
    """Write the slide (and, for ``xenium``, convert it) unless its sample folder exists: ``generate`` / ``read``."""
    folder, xen = _slide_paths(root, n_cells, layout)
    res: dict = {"layout": layout}
    if folder.exists():  # written by an earlier run in this folder (deterministic)
        res.update(generate_s=None, slide_reused=True, generate=None, read=None)
        return res
    if layout == "sample":
        gen = _step(["--generate", str(folder.parent), str(n_cells)])
        gen["disk_mb"] = _disk_mb(folder.parent)
        res.update(generate_s=gen["process_s"], generate=gen, read=None)
        return res
    assert xen is not None
    if (xen / "experiment.xenium").exists():  # a complete slide (written atomically) from an earlier run
        gen = None
    else:
        gen = _step(["--generate", str(xen), str(n_cells), "--layout", layout])
        gen["disk_mb"] = _disk_mb(xen)
    rd = _step(["--convert", str(xen), str(folder), str(n_cells)])
    rd["disk_mb"] = _disk_mb(folder)
    if (folder / "molecules.parquet").exists():
        import pyarrow.parquet as pq

        rd["n_molecules"] = int(pq.ParquetFile(folder / "molecules.parquet").metadata.num_rows)
    res.update(generate_s=None if gen is None else gen["process_s"], generate=gen, read=rd)
    return res


def _tile_reads(src: object, plan: object, n_cells: int) -> dict:
    """Every tile's window of each stain and of the mask raster, read once as the tasks read them, one thread."""
    from stmorph._threads import thread_limits
    from stmorph.distributed._source import read_window

    specs = dict(src.channels)  # type: ignore[attr-defined]
    seg = src.segmentation_spec  # type: ignore[attr-defined]
    if seg is not None and seg.get("kind") != "polygons":
        specs["segmentation"] = seg
    out: dict = {}
    total = 0.0
    with thread_limits(1):
        for name, spec in specs.items():
            t, c = time.perf_counter(), time.process_time()
            px = 0
            for row in plan.itertuples():  # type: ignore[attr-defined]
                px += read_window(spec, int(row.wr0), int(row.wr1), int(row.wc0), int(row.wc1)).size
            cpu = time.process_time() - c
            total += cpu
            out[name] = {"file": Path(spec["path"]).name, "wall_s": round(time.perf_counter() - t, 2),
                         "cpu_s": round(cpu, 2), "mpx_per_cpu_s": round(px / 1e6 / max(cpu, 1e-9), 1)}
    return {"cpu_s": round(total, 2), "cells_per_cpu_s": round(n_cells / max(total, 1e-9), 1), "images": out}


def _warm(size: int) -> int:
    """Import and compile what the tasks use (numba kernels of the fast engine), once per worker."""
    from stmorph.features import measure_crops

    rng = np.random.default_rng(0)
    crops = rng.random((4, 2, size, size)).astype(np.float32)
    masks = np.zeros((4, size, size), bool)
    masks[:, 8:-8, 8:-8] = True
    measure_crops(crops, ["a", "b"], masks, modules=["intensity", "texture"], otsu_channels=["a"])
    return os.getpid()


def _per_worker(run_info: dict) -> dict:
    return {pid: {"cells": v["cells"], "cells_per_s": v["cells_per_s"], "cells_per_cpu_s": v["cells_per_cpu_s"],
                  "peak_rss_mb": v["peak_rss_mb"],
                  "max_anon_rss_mb": v["max_anon_rss_mb"]}
            for pid, v in run_info.get("workers", {}).items()}


def _cp_dir(root: Path, n_cells: int, modules: tuple[str, ...], layout: str = "sample") -> Path:
    """The CellProfiler run folder of one slide and module set (intensity + texture: ``cp_N``; ``cp_N_xenium``)."""
    tag = _tag(n_cells, layout)
    return root / (f"cp_{tag}" if modules == CP_MODULES else f"cp_{tag}_{'-'.join(modules)}")


CP_MODULES = ("intensity", "texture")


def bench(n_cells: int, workers: int, size: int, tile_size: int, root: Path, serial_max: int = 10_000,
          full_eval: bool = True, modules: tuple[str, ...] = CP_MODULES, layout: str = "sample") -> dict:
    from distributed import Client, LocalCluster

    import stmorph.distributed as sd

    res: dict = {"n_cells": n_cells, "workers": workers, "crop_size": size, "tile_size": tile_size,
                 "modules": list(modules)}
    # in their own processes, so that the driver's memory below is the pipeline's alone
    res.update(prepare_slide(root, n_cells, layout))
    folder = _slide_paths(root, n_cells, layout)[0]
    tag = _tag(n_cells, layout)

    t = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    client = Client(cluster)
    client.run(_warm, size)
    res["cluster_start_and_warmup_s"] = round(time.perf_counter() - t, 2)
    try:
        t = time.perf_counter()
        src = sd.SampleSource.from_folder(folder)
        res["read_s"] = round(time.perf_counter() - t, 3)
        res["image_shape"] = list(src.image_shape)
        plan = sd.plan_tiles(src.centroids, tile_size, crop_size=size, image_shape=src.image_shape)
        res["n_tiles"] = int(len(plan))
        res["segmentation"] = (None if src.segmentation_spec is None else
                               {k: src.segmentation_spec.get(k) for k in ("kind", "component")}
                               | {"file": Path(src.segmentation_spec["path"]).name})
        res["tile_reads"] = _tile_reads(src, plan, n_cells)

        t = time.perf_counter()
        store = sd.write_crops(folder, root / f"crops_{tag}", size=size, normalize="crop", tile_size=tile_size,
                               client=client, show_progress=False)
        wall = time.perf_counter() - t
        info = store.meta["summary"]
        res["crops"] = {"wall_s": round(wall, 2), "cells_per_s_per_worker_wall": round(n_cells / wall / workers, 1),
                        "workers": _per_worker(info)}

        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = sd.cellprofiler_features(folder, out_dir=_cp_dir(root, n_cells, modules, layout), size=size, masks=True,
                                          modules=list(modules), tile_size=tile_size, client=client,
                                          show_progress=False)
        wall = time.perf_counter() - t
        d = df.attrs["info"]["distributed"]
        res["cp"] = {"wall_s": round(wall, 2), "cells_per_s_per_worker_wall": round(n_cells / wall / workers, 1),
                     "n_features_measured": df.attrs["info"]["n_features_measured"],
                     "n_features_kept": int(df.shape[1]), "workers": _per_worker(d)}
        from stmorph.distributed._engine import _process_memory

        mem = client.run(_process_memory)
        res["worker_memory_mb"] = {k: {m: round(v[m], 1) for m in ("rss_mb", "peak_rss_mb", "anon_rss_mb")}
                                   for k, v in mem.items()}

        res["driver_peak_rss_before_eval_mb"] = round(_peak_rss_mb(), 1)
        if n_cells <= serial_max:  # the serial function on the same slide, in one process: time and equality
            from stmorph._threads import thread_limits
            from stmorph.features import cellprofiler_features
            from stmorph.sample import SpatialSample

            sample = SpatialSample.read(folder)
            t, c = time.perf_counter(), time.process_time()
            with warnings.catch_warnings(), thread_limits(1):  # one thread: the per-core reference of a worker
                warnings.simplefilter("ignore")
                cellprofiler_features(sample, size=size, masks=True, modules=list(modules))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            key = f"X_cp_{size}"
            res["cp_serial"] = {"threads": 1, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                "cells_per_s": round(n_cells / wall, 1),
                                "equal_to_distributed": bool(np.array_equal(sample.adata.obsm[key], df.to_numpy())
                                                             and sample.adata.uns[f"{key}_features"] == list(df.columns))}
            del sample

        # VAE encoding: a stain VAE (ls2_cpu) trained briefly on a few cells here, every cell encoded on the workers
        t = time.perf_counter()
        from stmorph.models.vae import CropVAE
        from stmorph.sample import SpatialSample

        sample = SpatialSample.read(folder)
        # the Xenium membrane stain is named after its antibodies: the preset's (DAPI, membrane) renamed
        stains = {} if layout == "sample" else {"channels": ("DAPI", *(c for c in src.channels if c != "DAPI"))}
        vae = CropVAE("ls2_cpu", epochs=1, crop_size=size, val_fraction=0.0, **stains)
        vae.train(sample, cells=sample.cell_ids[: min(2000, n_cells)], device="cpu", show_progress=False)
        res["vae_train_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        z = sd.vae_latents(folder, vae, out_dir=root / f"vae_{tag}", tile_size=tile_size, client=client,
                           show_progress=False)
        wall = time.perf_counter() - t
        from stmorph.distributed._engine import TileRun, read_manifest

        _, recs = read_manifest(root / f"vae_{tag}")  # the tasks' records: per-worker rates as for crops and cp
        res["vae"] = {"wall_s": round(wall, 2), "cells_per_s_per_worker_wall": round(n_cells / wall / workers, 1),
                      "n_encoded": int(np.isfinite(z).all(axis=1).sum()),
                      "workers": _per_worker(TileRun(root / f"vae_{tag}", recs, len(recs), 0, wall).summary())}
        del sample, vae

        t = time.perf_counter()
        try:
            from stmorph.eval import EvalConfig, evaluate_spaces

            labels = src.obs["cell_type"].astype(str)
            labels.index = df.index
            full = full_eval
            # the forest's bootstrap capped at ~20,000 cells per tree above that size (a documented knob, not the
            # study's setting): at 1M cells the full bootstrap would take hours on 2 cores
            cfg = EvalConfig(run_permanova=full, run_permdisp=full, run_clustering=full, n_trees=100,
                             rf_n_jobs=workers, permutations=99, k_grid=(15,), resolutions=(0.5, 1.0),
                             multiplex_weights=(0.5,),
                             rf_max_samples=None if n_cells <= 25_000 else 20_000 / (0.8 * n_cells))
            spaces = {"CP": df.to_numpy(), "LS2": z}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ev = evaluate_spaces(spaces, labels.to_numpy(), config=cfg, show_progress=False,
                                     multiplex=[("CP", "LS2")] if full else ())
            fs = ev.summary["feature_spaces"]
            res["eval"] = {"wall_s": round(time.perf_counter() - t, 2), "full": full,
                           "balanced_accuracy": {k: round(float(v["classification"]["balanced_accuracy"]), 3)
                                                 for k, v in fs.items()},
                           "scaling": ev.summary.get("scaling"),
                           "n_clusters": {k: (v.get("clustering") or {}).get("n_clusters") for k, v in fs.items()}}
        except Exception as exc:  # the evaluation API is being reworked elsewhere: report, do not fail the run
            res["eval"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()
        cluster.close()
    res["driver_peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return res


def muse_run(root: Path, n_cells: int, workers: int, modules: tuple[str, ...] = CP_MODULES,
             layout: str = "sample") -> dict:
    """MUSE of the CellProfiler table and the VAE latent of one finished run, in this process.

    Reads the per-tile outputs (``cp_N/tiles/*.parquet``, raw features; ``vae_N/tiles/*.npz``), drops
    constant columns, fills NaN with the column median, and runs :func:`stmorph.models.muse.muse_fit_predict`
    with its defaults (both modalities dense). Returns times, this process's peak RSS and the ARI of MUSE's
    clusters against the slide's cell types.
    """
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from stmorph.models.muse import muse_fit_predict

    t = time.perf_counter()
    # tile by tile into float32, rows in the index's order (a concatenated float64 frame peaked at ~5.6 GB at 1M)
    blocks, index = [], []
    for f in sorted((_cp_dir(root, n_cells, modules, layout) / "tiles").glob("*.parquet")):
        tile = pd.read_parquet(f)
        blocks.append(tile.to_numpy(dtype=np.float32))
        index.append(tile.index.to_numpy())
        del tile
    x0 = np.concatenate(blocks)[np.argsort(np.concatenate(index), kind="stable")]
    del blocks, index
    x0 = x0[:, np.nanstd(x0, axis=0) > 0]
    med = np.nanmedian(x0, axis=0)
    bad = ~np.isfinite(x0)
    x0[bad] = np.take(med, np.nonzero(bad)[1])
    parts = [np.load(f) for f in sorted((root / f"vae_{_tag(n_cells, layout)}" / "tiles").glob("*.npz"))]
    rows = np.concatenate([p["rows"] for p in parts])
    lat = np.concatenate([p["latent"] for p in parts])
    z = np.empty((n_cells, lat.shape[1]), np.float32)
    z[rows] = lat
    del parts, lat
    from stmorph.sample import SpatialSample

    labels = SpatialSample.read(_slide_paths(root, n_cells, layout)[0]).adata.obs["cell_type"].astype(str)
    read_s = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    out = muse_fit_predict([x0, z], zero_inflated=[False, False], random_state=0, n_jobs=workers,
                           device="cpu", show_progress=False)
    info = out["model"].train_info
    return {"n_cells": n_cells, "features": [int(x0.shape[1]), int(z.shape[1])], "read_s": round(read_s, 1),
            "wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1),
            "timings": {k: round(float(v), 1) for k, v in out["timings"].items()},
            "stages": {k: round(float(v), 1) for k, v in info["time_stages_s"].items()},
            "schedule": info["schedule"], "label_max_cells": info["label_max_cells"],
            "gated": info["gated_modalities"], "n_clusters": int(len(np.unique(out["clusters"]))),
            "final_clustering": out["final_clustering"],
            "ari_cell_type": round(float(adjusted_rand_score(labels.to_numpy(), out["clusters"])), 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _io_line(r: dict) -> str:
    """``generate ... s, ... MB peak, ... MB on disk; read ...`` of a result."""
    parts = []
    for key in ("generate", "read"):
        m = r.get(key)
        if m:
            parts.append(f"{key} {m['wall_s']} s ({m['cpu_s']} CPU s), peak RSS {m['peak_rss_mb']:.0f} MB, "
                         f"{m['disk_mb']:.0f} MB on disk")
        elif r.get("slide_reused") or (key == "generate" and r.get("read")):
            parts.append(f"{key} reused")
    return "; ".join(parts) or "no slide step"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="10000,50000", help="comma-separated slide sizes")
    p.add_argument("--layout", choices=LAYOUTS, default="sample",
                   help="the slide as stmorph's sample folder of memory-mapped TIFFs (sample) or in the 10x Xenium "
                        "layout, converted by convert_xenium (xenium)")
    p.add_argument("--io-only", action="store_true",
                   help="only write (and, for xenium, convert) the slides: no cluster, no pipeline")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="crop side in pixels")
    p.add_argument("--tile-size", type=int, default=2048)
    p.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the slides and outputs")
    p.add_argument("--serial-max", type=int, default=10_000,
                   help="also run the serial cellprofiler_features (time, equality) up to this many cells")
    p.add_argument("--classification-only", action="store_true",
                   help="evaluate by classification only (no PERMANOVA/PERMDISP/Leiden)")
    p.add_argument("--modules", default="intensity,texture",
                   help="CellProfiler modules, comma-separated, or 'all' (every module stmorph measures)")
    p.add_argument("--muse", action="store_true",
                   help="also run MUSE of the CellProfiler table and the VAE latent (own process, after the run)")
    p.add_argument("--muse-only", action="store_true",
                   help="only the MUSE step, on the finished runs in --dir")
    p.add_argument("--generate", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    p.add_argument("--convert", nargs=3, metavar=("XENIUM", "FOLDER", "N"), help=argparse.SUPPRESS)
    p.add_argument("--step-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--muse-run", nargs=2, metavar=("ROOT", "N"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.generate or a.convert:  # a step in its own process (nothing else imported: its peak RSS is its own)
        if a.generate:
            fn = make_slide if a.layout == "sample" else write_xenium
            m = _timed(fn, Path(a.generate[0]), int(a.generate[1]))
        else:
            m = _timed(convert, Path(a.convert[0]), Path(a.convert[1]), int(a.convert[2]))
        if a.step_out:
            Path(a.step_out).write_text(json.dumps(m))
        return 0
    from stmorph.features._cellprofiler import ALL_MODULES

    modules = tuple(ALL_MODULES) if a.modules == "all" else tuple(m.strip() for m in a.modules.split(",") if m.strip())
    if a.muse_run:
        print("MUSE " + json.dumps(muse_run(Path(a.muse_run[0]), int(a.muse_run[1]), a.workers, modules, a.layout)),
              flush=True)
        return 0

    def muse_step(n: int) -> dict:
        # its own process: the peak RSS is MUSE's (plus the arrays it reads), not the pipeline's
        p = subprocess.run([sys.executable, __file__, "--muse-run", str(root), str(n), "--workers", str(a.workers),
                            "--modules", ",".join(modules), "--layout", a.layout], check=True, capture_output=True,
                           text=True)
        return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("MUSE "))[5:])

    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="stmorph_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in [int(v) for v in a.cells.split(",") if v.strip()]:
            if a.muse_only:
                r = {"n_cells": n, "layout": a.layout, "muse": muse_step(n)}
                results.append(r)
                print(json.dumps(r, indent=1), flush=True)
                continue
            if a.io_only:
                r = {"n_cells": n, **prepare_slide(root, n, a.layout)}
                results.append(r)
                print(json.dumps(r, indent=1), flush=True)
                print(f"== {n} cells, {a.layout} layout: {_io_line(r)}", flush=True)
                continue
            r = bench(n, a.workers, a.size, a.tile_size, root, a.serial_max, full_eval=not a.classification_only,
                      modules=modules, layout=a.layout)
            if a.muse:
                r["muse"] = muse_step(n)
            results.append(r)
            print(json.dumps(r, indent=1), flush=True)
            print(f"== {n} cells, {a.layout} layout, on {a.workers} workers: {_io_line(r)}; "
                  f"tile reads {r['tile_reads']['cells_per_cpu_s']} cells/CPU-s; crops {r['crops']['wall_s']} s "
                  f"({r['crops']['cells_per_s_per_worker_wall']} cells/s/worker), CellProfiler {r['cp']['wall_s']} s "
                  f"({r['cp']['cells_per_s_per_worker_wall']} cells/s/worker), VAE encoding {r['vae']['wall_s']} s, "
                  f"evaluation {r['eval'].get('wall_s')} s, peak RSS per worker "
                  f"{max(v['peak_rss_mb'] for v in r['worker_memory_mb'].values()):.0f} MB (anonymous now "
                  f"{max(v['anon_rss_mb'] for v in r['worker_memory_mb'].values()):.0f} MB), driver "
                  f"{r['driver_peak_rss_mb']:.0f} MB",
                  flush=True)
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
