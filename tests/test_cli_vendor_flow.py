"""From a vendor export to a report with the command line alone: simulate -> read -> info -> CellProfiler on the
sample's own masks -> VAE latent table -> evaluate (+ HTML report), for CosMx, MERSCOPE and Xenium layouts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stmorph.cli import main

pytestmark = pytest.mark.slow


def _run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        main(args)
    assert ex.value.code == 0, f"stmorph {' '.join(args)} exited with {ex.value.code}"


@pytest.mark.parametrize("vendor", ["cosmx", "merscope", "xenium"])
def test_export_to_report_from_the_cli(vendor, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STMORPH_PROGRESS", "0")
    raw, s = tmp_path / "export", tmp_path / "S"
    _run(["simulate", str(raw), "--as", vendor, "--n-cells", "90", "--n-types", "4", "--n-genes", "16", "--seed", "3"])
    _run(["read", vendor, str(raw), "--out", str(s)])
    capsys.readouterr()
    _run(["info", str(s), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["n_cells"] == 90 and info["n_genes"] == 16 and info["has_segmentation"] is True
    assert "DAPI" in info["channels"] and info["pixel_size"] > 0

    t = tmp_path / "T.csv"
    _run(["features", "cellprofiler", str(s), "--masks", "--no-select", "--modules", "intensity", "-o", str(t)])
    cp = pd.read_csv(t)
    assert cp.columns[0] == "cell_id" and len(cp) == 90
    assert "Intensity_MeanIntensity_DAPI" in cp.columns
    assert np.isfinite(cp["Intensity_MeanIntensity_DAPI"]).all()

    lat = tmp_path / "L.csv"
    crop_um = 72 * info["pixel_size"]  # >= the VAE's 63-pixel minimum whatever the layout's pixel size
    _run(["vae", str(s), "--preset", "ls2_cpu", "--crop-um", f"{crop_um:g}", "--epochs", "1", "-o", str(lat)])
    z = pd.read_csv(lat)
    assert z.columns[0] == "cell_id" and z.shape == (90, 51)

    labels = next(p for p in raw.iterdir() if p.name == "cell_types.csv")
    out = tmp_path / "eval"
    _run(["evaluate", "--features", f"CP={t}", "--features", f"LS2={lat}", "--labels", str(labels),
          "--label-column", "cell_type", "--permutations", "19", "--n-trees", "30", "--sample", str(s),
          "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"]["n_cells"] == 90
    assert set(summary["feature_spaces"]) == {"CP", "LS2"}
    page = (out / "report" / "report.html").read_text()
    assert "Random-forest balanced accuracy" in page and "Sample" in page
