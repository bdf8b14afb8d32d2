"""Cell masks in crops (the sample's own segmentation), crop sizes in micrometres, and the CLI surface of both."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from stmorph.cli import expand_optional_values, main
from stmorph.crops import crop_masks, crop_size_px, median_cell_diameter_px
from stmorph.datasets import synthetic_tissue
from stmorph.errors import StmorphInputError
from stmorph.features import cellprofiler_features


@pytest.fixture(scope="module")
def tissue():
    return synthetic_tissue(n_cells=40, n_types=3, n_genes=12, random_state=0)


def test_mean_intensity_on_own_mask_equals_pixels_under_the_mask(tissue):
    s = tissue.copy()
    cellprofiler_features(s, size=48, channels=["DAPI"], otsu_channels=(), modules=["intensity"], masks=True,
                          select=False, fill_nan=None, key_added="X_cp")
    names = s.adata.uns["X_cp_features"]
    col = names.index("Intensity_MeanIntensity_DAPI")
    got = s.adata.obsm["X_cp"][:, col]
    img = s.images["DAPI"].read().astype(np.float64)
    lab = s.segmentation.read()
    from stmorph.crops import crop_boxes

    boxes = crop_boxes(s.centroids, 48, img.shape)
    scale = img.max()
    for i in range(s.n_cells):
        r0, c0 = boxes[i]
        win_lab = lab[r0 : r0 + 48, c0 : c0 + 48]
        win_img = img[r0 : r0 + 48, c0 : c0 + 48]
        own = win_lab == i + 1
        assert own.any()
        np.testing.assert_allclose(got[i], win_img[own].mean() / scale, rtol=1e-5)
    assert s.adata.uns["X_cp"]["object"] == "mask"


def test_label_image_with_other_ids_is_an_error_not_an_empty_table(tissue, tmp_path):
    lab = tissue.segmentation.read().astype(np.int32)
    other = np.where(lab > 0, lab + 1000, 0)  # ids that obs['label_id'] does not hold
    f = tmp_path / "labels.tif"
    tifffile.imwrite(f, other)
    s = tissue.copy()
    with pytest.raises(StmorphInputError, match="label"):
        cellprofiler_features(s, size=48, channels=["DAPI"], otsu_channels=(), modules=["intensity"], masks=str(f),
                              select=False)
    assert "X_cp_48" not in s.adata.obsm
    # the right ids make the same file usable
    cellprofiler_features(s, size=48, channels=["DAPI"], otsu_channels=(), modules=["intensity"], masks=str(f),
                          mask_ids=s.adata.obs["label_id"].to_numpy() + 1000, select=False)
    assert np.isfinite(s.adata.obsm["X_cp_48"]).all()


def test_crop_masks_polygons_equal_raster():
    from stmorph import LabelImage, PolygonSegmentation

    v = pd.DataFrame({"label_id": [5] * 4 + [9] * 3, "x": [2.0, 12, 12, 2, 20, 28, 20], "y": [2.0, 2, 10, 10, 3, 3, 15]})
    poly = PolygonSegmentation(v, (32, 32))
    boxes = np.array([[-4, -4], [0, 14], [20, 20]])
    ids = np.array([5, 9, 9])
    a = crop_masks(poly, boxes, 16, ids)
    b = crop_masks(LabelImage(poly.read()), boxes, 16, ids)
    np.testing.assert_array_equal(a, b)
    # pixel centres inside the rectangle, edges included: rows 2..10, columns 2..11 (the box ends at column 11)
    assert a[0].sum() == (10 - 2 + 1) * (11 - 2 + 1)
    assert not a[2].any()


def test_crop_size_in_micrometres_and_small_crop_warning(tissue):
    assert crop_size_px(tissue, crop_um=20) == round(20 / tissue.pixel_size)
    d = median_cell_diameter_px(tissue)
    areas = np.bincount(tissue.segmentation.read().ravel())[1:]
    assert d == pytest.approx(2 * np.sqrt(np.median(areas[areas > 0]) / np.pi))
    with pytest.warns(UserWarning, match="median cell diameter"):
        crop_size_px(tissue, size=int(d) - 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crop_size_px(tissue, size=int(d) + 10)
    with pytest.raises(StmorphInputError, match="not both"):
        crop_size_px(tissue, size=10, crop_um=5)


def test_cli_features_masks_info_json_and_vae_table(tissue, tmp_path, capsys):
    sdir = tmp_path / "S.stmorph"
    tissue.write(sdir)
    assert expand_optional_values(["--masks"]) == ["--masks", "sample"]
    with pytest.raises(SystemExit) as ex:
        main(["info", str(sdir), "--json"])
    assert ex.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_cells"] == 40 and info["n_genes"] == 12 and info["has_segmentation"] is True
    assert info["channels"] == ["DAPI", "membrane"] and info["pixel_size"] == tissue.pixel_size

    t = tmp_path / "T.csv"
    with pytest.raises(SystemExit) as ex:
        main(["features", "cellprofiler", str(sdir), "--masks", "--no-select", "--modules", "intensity",
              "--otsu", "", "-o", str(t)])
    assert ex.value.code == 0
    df = pd.read_csv(t)
    assert df.columns[0] == "cell_id" and list(df["cell_id"]) == list(tissue.cell_ids)
    assert "Intensity_MeanIntensity_DAPI" in df.columns and "Intensity_MeanIntensity_membrane" in df.columns

    lat = tmp_path / "L.csv"
    with pytest.raises(SystemExit) as ex:
        main(["vae", str(sdir), "--preset", "ls2_cpu", "--crop-um", "36", "--epochs", "1", "-o", str(lat)])
    assert ex.value.code == 0
    z = pd.read_csv(lat)
    assert z.columns[0] == "cell_id" and z.shape == (40, 51)
    assert np.isfinite(z.iloc[:, 1:].to_numpy()).all()


def test_study_config_masks_true_and_file(tmp_path):
    """`masks = true` (the sample's own segmentation) and a label file relative to the config both pass the
    config's validation, reach CellProfiler and measure the same per-cell intensities."""
    from stmorph.pipeline._config import config_from_dict
    from stmorph.pipeline._spaces import SpaceContext, build_space

    s = synthetic_tissue(n_cells=60, n_types=4, n_genes=12, random_state=0)
    tifffile.imwrite(tmp_path / "lab.tif", s.segmentation.read())
    cp = {"kind": "cellprofiler", "size": 40, "modules": ["intensity"], "channels": ["DAPI"], "otsu_channels": [],
          "select": False}
    cfg = config_from_dict({
        "sample": {"reader": "synthetic"},
        "spaces": {"own": {**cp, "masks": True}, "file": {**cp, "masks": "lab.tif"}},
    }, base_dir=tmp_path)
    assert cfg.spaces["file"]["masks"] == str((tmp_path / "lab.tif").resolve())
    frames = {}
    for name, spec in cfg.spaces.items():
        ctx = SpaceContext(sample=s.copy(), workdir=tmp_path / name, seed=0, device="cpu", label_key="cell_type",
                           upstream={})
        frames[name] = build_space(name, dict(spec), ctx)
    np.testing.assert_allclose(frames["own"].to_numpy(), frames["file"].to_numpy())
    assert "Intensity_MeanIntensity_DAPI" in frames["own"].columns
