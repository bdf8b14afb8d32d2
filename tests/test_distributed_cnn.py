"""stmorph.distributed.cnn_features: CNN features tile by tile on a dask cluster, equal to the serial function bit
for bit (raw features and PCA), every cell once, resumed from finished tiles, and the same table from the CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import stmorph.distributed as sd
from stmorph.datasets import synthetic_tissue
from stmorph.errors import StmorphInputError
from stmorph.features import SmallResNet, cnn_features
from stmorph.sample import SpatialSample

torch = pytest.importorskip("torch")
distributed = pytest.importorskip("distributed")

# Tiny network, crops and input so the file runs in seconds. Batches of 7 over 120 cells: the serial run ends with a
# batch of one cell, which PyTorch runs through another convolution kernel (last-bit float32 differences), and the
# tiles hold 2-14 cells; tiles that ran their own cells in batches of 7 would differ from the serial features in
# 2 rows (measured, up to 1.2e-7), so equality here checks that the tasks reproduce the serial batch sizes.
KW = dict(size=24, input_size=32, batch_size=7, masks=True)
TILE = 96
N_PCA = 8


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
    return synthetic_tissue(n_cells=120, random_state=0).write(tmp_path_factory.mktemp("cnn") / "tissue.stmorph")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SmallResNet(widths=(8, 16))  # 2 channels x 16 features


def _serial(sample_dir: Path, model, **kw) -> tuple[np.ndarray, dict]:
    s = SpatialSample.read(sample_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the crop is smaller than a cell: fine for a test
        cnn_features(s, model, device="cpu", **{**KW, **kw})
    return s.adata.obsm["X_cnn"], s.adata.uns["X_cnn"]


@pytest.fixture(scope="module")
def serial(sample_dir, net) -> dict[str, tuple[np.ndarray, dict]]:
    return {"raw": _serial(sample_dir, net, n_components=None), "pca": _serial(sample_dir, net, n_components=N_PCA)}


def _dist(sample_dir, net, client, **kw) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.cnn_features(sample_dir, net, client=client, show_progress=False, **{"tile_size": TILE, **KW, **kw})


def test_distributed_equals_serial_every_cell_once_and_resumes(sample_dir, net, serial, client, tmp_path):
    out = tmp_path / "cnn"
    raw, raw_info = serial["raw"]
    df = _dist(sample_dir, net, client, n_components=None, out_dir=out)
    assert raw.shape == (120, 32) and sd._cnn.serial_batch_sizes(120, 7)[-1] == 1
    assert np.array_equal(df.to_numpy(), raw)  # bit for bit
    assert list(df.index) == list(SpatialSample.read(sample_dir).cell_ids) and df.index.name == "cell_id"
    assert list(df.columns) == [f"cnn_{i}" for i in range(32)]
    info = df.attrs["info"]
    assert {k: info[k] for k in raw_info if k != "seconds"} == {k: v for k, v in raw_info.items() if k != "seconds"}
    d = info["distributed"]
    assert d["n_tiles"] > 4 and d["n_computed"] == d["n_tiles"] and d["n_cells"] == 120
    # every cell in exactly one tile's file
    manifest, done = sd.read_manifest(out)
    assert manifest["kind"] == "cnn" and len(done) == d["n_tiles"]
    rows = np.concatenate([np.load(out / f)["rows"] for f in done["file"]])
    assert rows.size == 120 and np.array_equal(np.sort(rows), np.arange(120))
    stamps = {f: (out / f).stat().st_mtime_ns for f in done["file"]}

    # a second call finds every tile finished, and gives the same table
    again = _dist(sample_dir, net, client, n_components=None, out_dir=out)
    assert again.attrs["info"]["distributed"]["n_computed"] == 0
    assert again.attrs["info"]["distributed"]["n_skipped"] == d["n_tiles"]
    assert np.array_equal(again.to_numpy(), raw)
    # the tiles hold raw features: the PCA of the same run reuses them, and equals the serial PCA
    red, red_info = serial["pca"]
    pca = _dist(sample_dir, net, client, n_components=N_PCA, out_dir=out)
    assert pca.attrs["info"]["distributed"]["n_computed"] == 0
    assert red.shape == (120, N_PCA) and np.array_equal(pca.to_numpy(), red)  # bit for bit
    assert pca.attrs["info"]["explained_variance_ratio"] == red_info["explained_variance_ratio"]
    assert {f: (out / f).stat().st_mtime_ns for f in done["file"]} == stamps  # no tile recomputed

    # another crop size or another network in the same folder is refused (not resumed into stale tiles)
    with pytest.raises(StmorphInputError, match="other parameters"):
        _dist(sample_dir, net, client, n_components=None, out_dir=out, size=26)
    torch.manual_seed(1)
    with pytest.raises(StmorphInputError, match="other parameters"):
        _dist(sample_dir, SmallResNet(widths=(8, 16)), client, n_components=None, out_dir=out)


def test_in_memory_sample_model_by_name_image_scaling_pad_edge(client):
    """A random initialisation by name (rebuilt by the driver with the seed, shipped to the workers), 'image'
    intensity ranges reduced on the cluster, 'pad' boxes, no masks; writes obsm and uns like the serial call."""
    s = synthetic_tissue(n_cells=40, n_types=2, n_genes=8, random_state=3)
    ref = s.copy()
    kw = dict(size=20, input_size=32, batch_size=3, n_components=5, crop_normalize="image", edge="pad",
              random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cnn_features(ref, "small_resnet", device="cpu", **kw)
        df = sd.cnn_features(s, "small_resnet", tile_size=64, client=client, show_progress=False, **kw)
    assert df.attrs["info"]["distributed"]["n_tiles"] > 4
    assert np.array_equal(df.to_numpy(), ref.adata.obsm["X_cnn"])
    assert np.array_equal(s.adata.obsm["X_cnn"], ref.adata.obsm["X_cnn"])
    assert s.adata.uns["X_cnn"]["n_raw_features"] == 512 and s.adata.uns["X_cnn"]["model"] == "small_resnet"


def test_bad_input_is_a_clear_error(sample_dir, net, client, tmp_path):
    for kw, match in [({"crop_normalize": "sample"}, "crop_normalize"), ({"edge": "wrap"}, "edge"),
                      ({"n_components": 0}, "n_components"), ({"batch_size": 0}, "batch_size"),
                      ({"channels": ["GFP"]}, "GFP"), ({"tile_size": 0}, "tile_size")]:
        with pytest.raises(StmorphInputError, match=match):
            _dist(sample_dir, net, client, out_dir=tmp_path / "bad", **kw)
    with pytest.raises(StmorphInputError, match="absent.pt"):
        sd.cnn_features(sample_dir, "small_resnet", tmp_path / "absent.pt", client=client)
    with pytest.raises(StmorphInputError, match="sample.json"):
        sd.cnn_features(tmp_path / "nowhere", net, client=client)


def test_cli_workers_gives_the_serial_table(sample_dir, client, tmp_path):
    from stmorph.cli._features import register

    app = typer.Typer()
    register(app)
    weights = tmp_path / "w.pt"
    torch.manual_seed(2)
    torch.save(SmallResNet().state_dict(), weights)
    base = ["features", "cnn", str(sample_dir), "--weights", str(weights), "--size", "24", "--input-size", "32",
            "--batch-size", "7", "--n-components", "6", "--device", "cpu", "--masks", "sample",
            "--tile-size", str(TILE)]
    outs = {}
    for name, extra in [("serial", []), ("workers", ["--workers", "2"])]:
        outs[name] = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(app, base + extra + ["-o", str(outs[name])])
        assert res.exit_code == 0, res.output
    assert outs["workers"].read_text() == outs["serial"].read_text()
    assert (tmp_path / "workers.csv.tiles" / "manifest.json").exists()
    table = pd.read_csv(outs["serial"], index_col=0)
    assert table.shape == (120, 6) and table.index.name == "cell_id"


def test_study_config_compute_section_routes_cnn_to_the_cluster(sample_dir, client, tmp_path):
    """`[compute] scheduler = ...` builds a cnn space tile by tile, equal to the same space built serially (CPU)."""
    from stmorph.pipeline._config import config_from_dict
    from stmorph.pipeline._spaces import SpaceContext, build_space

    space = {"kind": "cnn", "model": "small_resnet", "size": 24, "input_size": 32, "n_components": 5,
             "batch_size": 7}
    base = {"sample": {"reader": "stmorph", "path": str(sample_dir)}, "spaces": {"CNN": space}}
    frames = {}
    for name, compute in (("serial", {}), ("cluster", {"scheduler": client.scheduler.address, "tile_size": TILE})):
        cfg = config_from_dict({**base, "compute": compute}, base_dir=tmp_path)
        ctx = SpaceContext(sample=SpatialSample.read(sample_dir), workdir=tmp_path / name, compute=cfg.compute,
                           device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames[name] = build_space("CNN", dict(cfg.spaces["CNN"]), ctx)
    assert frames["serial"].shape == (120, 5)
    pd.testing.assert_frame_equal(frames["cluster"], frames["serial"])
    assert (tmp_path / "cluster" / "tiles").is_dir() and not (tmp_path / "serial" / "tiles").exists()
