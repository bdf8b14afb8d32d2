"""``stmorph features cellprofiler|cnn`` on a tiny sample folder."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from stmorph.cli._features import register
from stmorph.features import SmallResNet
from stmorph.sample import SpatialSample, StainImage

# the command module on its own app: independent of the other command modules being importable
app = typer.Typer()
register(app)


@pytest.fixture()
def sample_dir(tmp_path):
    rng = np.random.default_rng(0)
    n = 6
    img = (rng.random((60, 60)) * 3000).astype(np.uint16)
    adata = ad.AnnData(np.ones((n, 1), np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    adata.obsm["spatial"] = rng.uniform(10, 50, (n, 2))
    s = SpatialSample(adata, images={"DAPI": StainImage(img), "membrane": StainImage(img.T.copy())})
    return s.write(tmp_path / "s.stmorph")


def test_cli_cellprofiler(sample_dir, tmp_path):
    out = tmp_path / "cp.csv"
    res = CliRunner().invoke(
        app,
        ["features", "cellprofiler", str(sample_dir), "-o", str(out), "--size", "16", "--modules", "intensity",
         "--no-select", "--h5ad", str(tmp_path / "cells.h5ad")],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out, index_col=0)
    assert df.shape[0] == 6 and "Intensity_MeanIntensity_DAPI_otsu" in df.columns
    a = ad.read_h5ad(tmp_path / "cells.h5ad")
    np.testing.assert_allclose(a.obsm["X_cp_16"], df.to_numpy(), rtol=1e-6)
    # --workers 0 is refused (as by `features cnn`), not silently run serially, and nothing is written
    bad = tmp_path / "bad.csv"
    res = CliRunner().invoke(app, ["features", "cellprofiler", str(sample_dir), "-o", str(bad), "--workers", "0"])
    assert res.exit_code != 0 and "positive number of worker processes" in str(res.exception or res.output)
    assert not bad.exists()


def test_cli_cnn_with_weights_and_missing_weights(sample_dir, tmp_path):
    w = tmp_path / "w.pt"
    torch.save(SmallResNet().state_dict(), w)
    out = tmp_path / "cnn.parquet"
    args = ["features", "cnn", str(sample_dir), "-o", str(out), "--size", "16", "--n-components", "3",
            "--input-size", "32"]
    res = CliRunner().invoke(app, args + ["--weights", str(w)])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(out).shape == (6, 3)
    res = CliRunner().invoke(app, args + ["--weights", str(tmp_path / "absent.pt")])
    assert res.exit_code != 0 and "absent.pt" in str(res.exception)
