"""stmorph.distributed: tile plan, the dask engine (retries, SIGKILL + resume) and the per-cell kinds, which must
equal their serial counterparts (CellProfiler features and crops exactly, VAE latents to float32 rounding)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import stmorph.distributed as sd
from stmorph.crops import CellCropDataset, crop_boxes
from stmorph.datasets import synthetic_tissue
from stmorph.errors import StmorphInputError
from stmorph.features import cellprofiler_features
from stmorph.sample import SpatialSample

distributed = pytest.importorskip("distributed")

SIZE = 32
TILE = 96


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    s = synthetic_tissue(n_cells=120, random_state=0)
    return s.write(tmp_path_factory.mktemp("dist") / "tissue.stmorph")


@pytest.fixture(scope="module")
def serial_cp(sample_dir) -> tuple[np.ndarray, list[str]]:
    s = SpatialSample.read(sample_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cellprofiler_features(s, size=SIZE, masks=True)
    return s.adata.obsm[f"X_cp_{SIZE}"], list(s.adata.uns[f"X_cp_{SIZE}_features"])


# ---------------------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile_size", [40, TILE, 5000])
@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_plan_owns_every_cell_exactly_once(sample_dir, tile_size, edge):
    s = SpatialSample.read(sample_dir)
    plan = sd.plan_tiles(sample_dir, tile_size, crop_size=[SIZE, 50], edge=edge)
    rows = np.concatenate(list(plan["cells"]))
    assert np.array_equal(np.sort(rows), np.arange(s.n_cells))  # every cell once
    assert plan["n_cells"].sum() == s.n_cells and plan["tile"].is_unique
    h, w = s.images["DAPI"].shape
    row = np.floor(s.centroids[:, 1] + 0.5).astype(int)
    col = np.floor(s.centroids[:, 0] + 0.5).astype(int)
    for size in (SIZE, 50):
        boxes = crop_boxes(s.centroids, size, (h, w), edge=edge)
        for t in plan.itertuples():
            c = t.cells
            assert ((row[c] >= t.r0) & (row[c] < t.r1) & (col[c] >= t.c0) & (col[c] < t.c1)).all()
            # every owned crop, clipped to the image, lies in the window
            assert (np.maximum(boxes[c, 0], 0) >= t.wr0).all() and (np.minimum(boxes[c, 0] + size, h) <= t.wr1).all()
            assert (np.maximum(boxes[c, 1], 0) >= t.wc0).all() and (np.minimum(boxes[c, 1] + size, w) <= t.wc1).all()
            assert t.wr0 <= max(t.r0 - 25, 0) and t.wc0 <= max(t.c0 - 25, 0)  # half the largest crop
            assert min(t.r1 + 25, h) <= t.wr1 <= h and min(t.c1 + 25, w) <= t.wc1 <= w


def test_plan_errors():
    with pytest.raises(StmorphInputError, match="outside"):
        sd.plan_tiles(np.array([[5.0, 5.0], [120.0, 3.0]]), 64, image_shape=(100, 100))
    with pytest.raises(StmorphInputError, match="image_shape"):
        sd.plan_tiles(np.array([[5.0, 5.0]]), 64)
    with pytest.raises(StmorphInputError, match="tile_size"):
        sd.plan_tiles(np.array([[5.0, 5.0]]), 0, image_shape=(10, 10))


# ---------------------------------------------------------------------------------------------------------------
# CellProfiler features
# ---------------------------------------------------------------------------------------------------------------
def test_cellprofiler_distributed_equals_serial_with_masks_and_resumes(sample_dir, serial_cp, client, tmp_path):
    ser, names = serial_cp
    out = tmp_path / "cp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = sd.cellprofiler_features(sample_dir, size=SIZE, masks=True, tile_size=TILE, out_dir=out, client=client)
    assert list(df.columns) == names
    assert np.array_equal(df.to_numpy(), ser)  # exactly
    assert list(df.index) == list(SpatialSample.read(sample_dir).cell_ids)
    info = df.attrs["info"]["distributed"]
    assert info["n_tiles"] > 4 and info["n_computed"] == info["n_tiles"] and info["n_cells"] == 120
    manifest, done = sd.read_manifest(out)
    assert manifest["kind"] == "cellprofiler" and len(done) == info["n_tiles"]
    # a second call finds every tile finished
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = sd.cellprofiler_features(sample_dir, size=SIZE, masks=True, tile_size=TILE, out_dir=out,
                                         client=client)
    assert again.attrs["info"]["distributed"]["n_computed"] == 0
    assert np.array_equal(again.to_numpy(), ser)
    # another crop size in the same folder is refused unless asked to start afresh
    with pytest.raises(StmorphInputError, match="other parameters"):
        sd.cellprofiler_features(sample_dir, size=SIZE + 2, masks=True, tile_size=TILE, out_dir=out, client=client)


def test_cellprofiler_in_memory_sample_grid_object_pad_edge(client, tmp_path):
    """An in-memory sample (images written for the workers), whole-crop objects, 'pad' boxes; writes obsm."""
    s = synthetic_tissue(n_cells=40, n_types=2, n_genes=8, random_state=3)
    ref = s.copy()
    kw = dict(size=SIZE, modules=["intensity", "texture"], edge="pad", intensity_scale="dtype")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cellprofiler_features(ref, **kw)
        df = sd.cellprofiler_features(s, tile_size=64, client=client, **kw)
    assert np.array_equal(df.to_numpy(), ref.adata.obsm["X_cp_32"])
    assert np.array_equal(s.adata.obsm["X_cp_32"], ref.adata.obsm["X_cp_32"])
    assert s.adata.uns["X_cp_32_features"] == ref.adata.uns["X_cp_32_features"]


# ---------------------------------------------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------------------------------------------
def test_crop_store_equals_dataset(sample_dir, client, tmp_path):
    s = SpatialSample.read(sample_dir)
    store = sd.write_crops(sample_dir, tmp_path / "crops", size=40, genes="all", normalize="image", mask_stains=True,
                           tile_size=TILE, chunk_cells=16, client=client)
    ds = CellCropDataset(s, crop_size=40, channels=["DAPI", "membrane"], genes="all", normalize="image",
                         mask_stains=True)
    ref = ds.get_batch(np.arange(s.n_cells))
    got = store.read_rows(np.arange(s.n_cells))
    assert np.array_equal(got["stains"], ref["stains"].numpy())
    assert np.array_equal(got["spots"].astype(np.float32), ref["spots"].numpy())
    assert got["spots"].sum() > 0 and np.sort(store.rows).tolist() == list(range(s.n_cells))
    # streaming views agree with random access
    assert store.to_dask("stains").shape == (s.n_cells, 2, 40, 40)
    rows, arrays = next(store.iter_tiles())
    assert np.array_equal(arrays["stains"], store.read_rows(rows)["stains"])
    reopened = sd.open_crops(tmp_path / "crops")
    assert len(reopened) == s.n_cells and reopened.genes == s.gene_names


def test_training_streams_from_the_crop_store(sample_dir, client, tmp_path):
    """Crops written once to the store give the rendered batches (rotations included) and the very same training."""
    import torch

    from stmorph.distributed import StoreCropDataset
    from stmorph.models.vae import CropVAE

    s = SpatialSample.read(sample_dir)
    store = sd.write_crops(sample_dir, tmp_path / "crops", size=64, genes="all", tile_size=TILE, chunk_cells=16,
                           client=client)
    ds = CellCropDataset(s, crop_size=64, channels=["DAPI"], genes=list(reversed(s.gene_names))[:20], rotate=True,
                         seed=3)
    streamed = StoreCropDataset(store, ds)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        streamed.set_epoch(epoch)
        idx = np.arange(5, 37)
        ref, got = ds.get_batch(idx, spot_index=True), streamed.get_batch(idx, spot_index=True)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), (epoch, k)
    assert ds.rotations(np.arange(len(ds))).any()  # the batches above were rotated
    kw = {"epochs": 2, "batch_size": 16, "val_fraction": 0.0, "crop_size": 64, "channels": ("DAPI",)}
    a = CropVAE("ls3_cpu", **kw).train(s, cells=np.arange(64), device="cpu", show_progress=False)
    b = CropVAE("ls3_cpu", **kw).train(s, cells=np.arange(64), device="cpu", show_progress=False, crops=store)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    with pytest.raises(StmorphInputError, match="crop_size"):
        StoreCropDataset(store, CellCropDataset(s, crop_size=72, channels=["DAPI"]))
    other = synthetic_tissue(n_cells=s.n_cells, random_state=5)  # same size, other cells: refused, not misread
    other.adata.obs_names = [f"x{i}" for i in range(other.n_cells)]
    with pytest.raises(StmorphInputError, match="another sample"):
        StoreCropDataset(store, CellCropDataset(other, crop_size=64, channels=["DAPI"]))


# ---------------------------------------------------------------------------------------------------------------
# VAE latents
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["ls2_cpu", "ls1_cpu"])  # stains only; spot planes only
def test_vae_latents_match_get_latent(sample_dir, client, tmp_path, preset):
    import torch

    from stmorph.models.vae import CropVAE

    s = SpatialSample.read(sample_dir)
    torch.manual_seed(0)
    vae = CropVAE(preset, epochs=1, batch_size=32).train(s, cells=np.arange(48), device="cpu", show_progress=False)
    ref = vae.get_latent(s, device="cpu", show_progress=False)
    vae.save(tmp_path / "model")
    z = sd.vae_latents(sample_dir, tmp_path / "model", tile_size=TILE, client=client, out_dir=tmp_path / "z")
    assert z.shape == ref.shape and np.isfinite(z).all()
    np.testing.assert_allclose(z, ref, rtol=0, atol=1e-4)  # float32 rounding of other batch sizes (~1e-7 seen)


# ---------------------------------------------------------------------------------------------------------------
# the engine: retries and a run killed with SIGKILL
# ---------------------------------------------------------------------------------------------------------------
def flaky_rows(task: sd.TileTask, *, marks: str) -> dict[str, np.ndarray]:
    """Fails on the first attempt of every tile (tracked through a file), then returns its rows."""
    mark = Path(marks) / f"tile{task.tile}"
    with open(mark, "a") as f:
        f.write("x")
    if mark.stat().st_size == 1:
        raise RuntimeError(f"flaky first attempt of tile {task.tile}")
    return {"rows": task.rows, "x": task.rows * 2}


def test_failing_task_is_retried_and_nothing_is_lost(sample_dir, client, tmp_path):
    plan = sd.plan_tiles(sample_dir, 64, crop_size=SIZE)
    marks0, marks = tmp_path / "marks0", tmp_path / "marks"
    marks0.mkdir()
    marks.mkdir()
    with pytest.raises(sd.TileTaskError, match="flaky first attempt"):  # no retry: the run stops, and says so
        sd.run_tiles(flaky_rows, plan, tmp_path / "r0", common={"marks": str(marks0)}, client=client, retries=0,
                     show_progress=False)
    run = sd.run_tiles(flaky_rows, plan, tmp_path / "r1", common={"marks": str(marks)}, client=client, retries=1,
                       show_progress=False)
    assert run.n_computed == len(plan) and run.n_skipped == 0
    assert sorted(p.stat().st_size for p in marks.iterdir()) == [2] * len(plan)  # one failure, one success each
    rows = np.concatenate([np.load(f)["rows"] for f in run.files().values()])
    assert np.array_equal(np.sort(rows), np.arange(120))


KILL_SCRIPT = textwrap.dedent('''
    import sys, warnings
    warnings.simplefilter("ignore")
    if __name__ == "__main__":
        import stmorph.distributed as sd
        folder, out, scheduler = sys.argv[1:4]
        sd.cellprofiler_features(folder, size=32, masks=True, modules=["intensity", "texture"], tile_size=64,
                                 out_dir=out, scheduler=scheduler, show_progress=False)
        print("finished", flush=True)
''')


def test_run_killed_with_sigkill_resumes_to_identical_output(sample_dir, client, tmp_path):
    """The driver of a run (its own process, on the cluster's scheduler) is SIGKILLed after some tiles; a new run
    on the same folder computes only the rest, and the table equals an uninterrupted run's."""
    out, script = tmp_path / "killed", tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "STMORPH_PROGRESS": "0"}
    client.run(os.environ.__setitem__, sd._engine.DELAY_ENV, "0.3")  # the test hook: slow tiles
    proc = subprocess.Popen([sys.executable, str(script), str(sample_dir), str(out), client.scheduler.address],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.json").exists() and len(sd.read_manifest(out)[1]) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        client.run(os.environ.pop, sd._engine.DELAY_ENV, None)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    manifest, done = sd.read_manifest(out)
    n_tiles = manifest["n_tiles"]
    assert 3 <= len(done) < n_tiles  # killed mid-run
    stamps = {int(t): (out / f).stat().st_mtime_ns for t, f in zip(done["tile"], done["file"])}
    kw = dict(size=32, masks=True, modules=["intensity", "texture"], tile_size=64, client=client,
              show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = sd.cellprofiler_features(sample_dir, out_dir=out, **kw)
        fresh = sd.cellprofiler_features(sample_dir, out_dir=tmp_path / "fresh", **kw)
    info = resumed.attrs["info"]["distributed"]
    assert info["n_skipped"] == len(done) and info["n_computed"] == n_tiles - len(done)
    after = sd.read_manifest(out)[1]
    assert {int(t): (out / f).stat().st_mtime_ns for t, f in zip(after["tile"], after["file"])
            if int(t) in stamps} == stamps  # finished tiles were not recomputed
    assert np.array_equal(resumed.to_numpy(), fresh.to_numpy()) and list(resumed.columns) == list(fresh.columns)


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------
def test_cli_workers_gives_the_serial_table(sample_dir, client, tmp_path):
    from stmorph.cli._features import register

    app = typer.Typer()
    register(app)
    base = ["features", "cellprofiler", str(sample_dir), "--size", str(SIZE), "--masks", "sample",
            "--modules", "intensity,texture,granularity"]
    outs = {}
    for name, extra in [("serial", ["--workers", "1"]), ("workers", ["--workers", "2"]),
                        ("scheduler", ["--scheduler", client.scheduler.address])]:
        outs[name] = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(app, base + extra + ["-o", str(outs[name])])
        assert res.exit_code == 0, res.output
    ser = outs["serial"].read_text()
    assert outs["workers"].read_text() == ser and outs["scheduler"].read_text() == ser
    assert (tmp_path / "workers.csv.tiles" / "manifest.json").exists()
    assert pd.read_csv(outs["serial"], index_col=0).shape[0] == 120


def test_cli_vae_scheduler_encodes_like_serial(sample_dir, client, tmp_path):
    from stmorph.cli._vae import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer then expects the command name
    base = ["vae", str(sample_dir), "--preset", "ls2_cpu", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]
    tables = {}
    for name, extra in [("serial", []), ("scheduler", ["--scheduler", client.scheduler.address])]:
        out = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(app, base + extra + ["-o", str(out)])
        assert res.exit_code == 0, res.output
        tables[name] = pd.read_csv(out, index_col=0)
    assert list(tables["scheduler"].index) == list(tables["serial"].index)
    np.testing.assert_allclose(tables["scheduler"].to_numpy(), tables["serial"].to_numpy(), rtol=0, atol=1e-4)


def dies_once(task: sd.TileTask, *, marks: str, victim: int) -> dict[str, np.ndarray]:
    """Kills its worker process (no exception: the process exits) on the first attempt of tile ``victim``."""
    mark = Path(marks) / "died"
    if task.tile == victim and not mark.exists():
        mark.touch()
        os._exit(1)
    return {"rows": task.rows}


def test_lost_worker_loses_nothing(sample_dir, client, tmp_path):
    """A worker process that dies mid-task: dask reschedules its task (no retries needed); every cell arrives.
    Last in the file: the nanny restarts the worker, which then starts cold."""
    plan = sd.plan_tiles(sample_dir, TILE, crop_size=SIZE)
    marks = tmp_path / "marks"
    marks.mkdir()
    victim = int(plan["tile"].iloc[len(plan) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = sd.run_tiles(dies_once, plan, tmp_path / "r", common={"marks": str(marks), "victim": victim},
                           client=client, retries=0, show_progress=False)
    assert (marks / "died").exists() and run.n_computed == len(plan)
    rows = np.concatenate([np.load(f)["rows"] for f in run.files().values()])
    assert np.array_equal(np.sort(rows), np.arange(120))


def test_study_config_compute_section_routes_cellprofiler_to_the_cluster(sample_dir, serial_cp, client, tmp_path):
    """`[compute] scheduler = ...` builds a cellprofiler space tile by tile, equal to the serial table."""
    from stmorph.pipeline._config import config_from_dict
    from stmorph.pipeline._spaces import SpaceContext, build_space

    cfg = config_from_dict({
        "sample": {"reader": "stmorph", "path": str(sample_dir)},
        "spaces": {"CP": {"kind": "cellprofiler", "size": SIZE, "masks": True}},
        "compute": {"scheduler": client.scheduler.address, "tile_size": TILE},
    }, base_dir=tmp_path)
    ctx = SpaceContext(sample=SpatialSample.read(sample_dir), workdir=tmp_path / "CP", compute=cfg.compute)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = build_space("CP", dict(cfg.spaces["CP"]), ctx)
    want, names = serial_cp
    assert list(df.columns) == names
    np.testing.assert_array_equal(df.to_numpy(np.float32), want)
    assert (tmp_path / "CP" / "tiles").is_dir()
