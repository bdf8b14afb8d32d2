"""CellProfiler features (cp-measure) on hand-made crops: values checked against hand computation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stmorph.errors import StmorphInputError
from stmorph.features import (
    cellprofiler_features,
    crop_label_image,
    image_quality,
    measure_crop,
    measure_crops,
    otsu_binary,
    rasterize_polygons,
    select_features,
)
from stmorph.sample import SpatialSample, StainImage

pytest.importorskip("cp_measure")


def _disc(size: int, radius: float, center: float | None = None) -> np.ndarray:
    c = (size - 1) / 2 if center is None else center
    yy, xx = np.mgrid[:size, :size]
    return ((yy - c) ** 2 + (xx - c) ** 2) <= radius**2


# -- hand-computed values on a disc of known intensity ---------------------------------------------------------
def test_disc_intensity_and_radial_distribution_with_mask():
    disc = _disc(41, 15)
    crop = (disc * 0.6).astype(np.float32)[None]
    r = measure_crop(crop, ["D"], mask=disc, modules=["intensity", "radial_distribution"])
    area = int(disc.sum())
    assert r["Intensity_MeanIntensity_D"] == pytest.approx(0.6, abs=1e-6)
    assert r["Intensity_IntegratedIntensity_D"] == pytest.approx(0.6 * area, rel=1e-5)
    assert r["Intensity_StdIntensity_D"] == pytest.approx(0.0, abs=1e-6)
    assert r["Intensity_MinIntensity_D"] == pytest.approx(0.6, abs=1e-6)
    # uniform object: every ring holds its share of the area -> MeanFrac 1, no angular variation
    frac = np.array([r[f"RadialDistribution_FracAtD_{k}of8_D"] for k in range(1, 9)])
    mean_frac = np.array([r[f"RadialDistribution_MeanFrac_{k}of8_D"] for k in range(1, 9)])
    cv = np.array([r[f"RadialDistribution_RadialCV_{k}of8_D"] for k in range(1, 9)])
    assert frac.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(mean_frac, 1.0, atol=1e-4)
    np.testing.assert_allclose(cv, 0.0, atol=1e-5)
    # ring k of a disc covers ((k/8)^2 - ((k-1)/8)^2) = (2k - 1) / 64 of its area (pixel discretisation: 0.03)
    expected = (2 * np.arange(1, 9) - 1) / 64
    np.testing.assert_allclose(frac, expected, atol=0.03)


def test_disc_grid_object_intensity_and_quality():
    disc = _disc(40, 12)
    crop = (disc * 0.6).astype(np.float32)[None]
    r = measure_crop(crop, ["D"], modules=["intensity", "quality"])
    p = disc.mean()
    # the whole crop is the object: mean = 0.6 * disc fraction
    assert r["Intensity_MeanIntensity_D"] == pytest.approx(0.6 * p, rel=1e-5)
    assert r["Intensity_MaxIntensity_D"] == pytest.approx(0.6, rel=1e-6)
    assert r["Intensity_MinIntensity_D"] == pytest.approx(0.0, abs=1e-7)
    # focus score = var / mean of a two-level image = 0.36 p (1 - p) / (0.6 p) = 0.6 (1 - p)
    assert r["ImageQuality_FocusScore_D"] == pytest.approx(0.6 * (1 - p), rel=1e-5)
    assert r["ImageQuality_PercentMaximal_D"] == pytest.approx(100 * p)
    assert r["ImageQuality_PercentMinimal_D"] == pytest.approx(100 * (1 - p))
    assert 0.0 <= r["ImageQuality_ThresholdOtsu_D"] < 0.6
    np.testing.assert_array_equal(otsu_binary(crop[0]), disc.astype(np.float32))


def test_image_quality_local_focus_and_constant_image():
    img = np.zeros((40, 40))
    img[:, 20:] = 1.0  # 2 x 2 tiles of 20 px: two all-zero tiles (skipped), two constant tiles (focus 0)
    q = image_quality(img, local_scale=20)
    assert q["ImageQuality_LocalFocusScore"] == 0.0
    assert q["ImageQuality_FocusScore"] == pytest.approx(0.25 / 0.5)
    flat = image_quality(np.full((32, 32), 0.3))
    assert np.isnan(flat["ImageQuality_ThresholdOtsu"]) and flat["ImageQuality_FocusScore"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(StmorphInputError):
        image_quality(np.zeros((2, 3, 4)))


def test_power_spectrum_slope_orders_smooth_and_noisy_images():
    rng = np.random.default_rng(0)
    noise = rng.random((64, 64))
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(noise, 3)
    s_noise = image_quality(noise)["ImageQuality_PowerLogLogSlope"]
    s_smooth = image_quality(smooth)["ImageQuality_PowerLogLogSlope"]
    assert abs(s_noise) < 1.0  # white noise: flat spectrum
    assert s_smooth < s_noise - 1.0  # blur removes high frequencies: steeper slope


def test_uniform_texture_and_granularity():
    disc = _disc(40, 14)
    crop = (disc * 0.5).astype(np.float32)[None]
    r = measure_crop(crop, ["D"], mask=disc, modules=["texture", "granularity"], params=None)
    for d in range(4):
        assert r[f"Texture_Contrast_3_0{d}_256_D"] == pytest.approx(0.0, abs=1e-9)
        assert r[f"Texture_AngularSecondMoment_3_0{d}_256_D"] == pytest.approx(1.0)
    gran = [k for k in r if k.startswith("Granularity_")]
    assert len(gran) == 16 and all(np.isfinite(r[k]) for k in gran)


# -- the batch function ------------------------------------------------------------------------------------------
def test_measure_crops_shapes_names_nan_and_parallel_agree():
    rng = np.random.default_rng(1)
    crops = rng.random((5, 2, 32, 32)).astype(np.float32) * 0.9
    masks = np.stack([_disc(32, 10)] * 5)
    masks[3] = False  # the cell is not in its crop: all-NaN row, not zeros
    mods = ["intensity", "radial_distribution", "sizeshape", "correlation"]
    df = measure_crops(crops, ["DAPI", "membrane"], masks, modules=mods, otsu_channels=["DAPI"], accelerator=None)
    assert df.shape[0] == 5 and list(df.index) == ["0", "1", "2", "3", "4"]
    assert "Intensity_MeanIntensity_DAPI_otsu" in df and "RadialDistribution_FracAtD_8of8_membrane" in df
    assert "AreaShape_Area" in df and "Correlation_Pearson_DAPI_membrane" in df
    assert df.iloc[3].isna().all() and not df.drop(index="3").isna().all(axis=1).any()
    assert df.loc["0", "AreaShape_Area"] == _disc(32, 10).sum()
    # Pearson r inside the mask, against numpy
    m = masks[0]
    r = np.corrcoef(crops[0, 0][m], crops[0, 1][m])[0, 1]
    assert df.loc["0", "Correlation_Pearson_DAPI_membrane"] == pytest.approx(r, abs=1e-5)
    par = measure_crops(
        crops, ["DAPI", "membrane"], masks, modules=mods, otsu_channels=["DAPI"], accelerator=None,
        n_jobs=2, backend="threading", chunk_size=2,
    )
    pd.testing.assert_frame_equal(df, par)


def test_measure_crops_rejects_bad_input():
    crops = np.zeros((2, 1, 16, 16), np.float32)
    with pytest.raises(StmorphInputError, match=r"\[0, 1\]"):
        measure_crops(crops + 5.0, ["D"])
    with pytest.raises(StmorphInputError, match="channel names"):
        measure_crops(crops, ["D", "M"])
    with pytest.raises(StmorphInputError, match="otsu_channels"):
        measure_crops(crops, ["D"], otsu_channels=["membrane"])
    with pytest.raises(StmorphInputError, match="modules"):
        measure_crops(crops, ["D"], modules=["nope"])
    with pytest.raises(StmorphInputError, match="masks"):
        measure_crops(crops, ["D"], np.ones((2, 8, 8)))


# -- morphology-defined types are separable ------------------------------------------------------------------
def _morph_crops(n_per_type: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three types that only morphology separates: small bright round, large dim round, elongated speckled."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    crops, labels = [], []
    for t in range(3):
        for _ in range(n_per_type):
            if t == 0:
                a, b, inten = rng.uniform(4, 6), None, rng.uniform(0.7, 0.9)
            elif t == 1:
                a, b, inten = rng.uniform(8, 10), None, rng.uniform(0.3, 0.45)
            else:
                a, b, inten = rng.uniform(9, 11), rng.uniform(4, 5), rng.uniform(0.5, 0.7)
            b = a if b is None else b
            th = rng.uniform(0, np.pi)
            u = xx * np.cos(th) + yy * np.sin(th)
            v = -xx * np.sin(th) + yy * np.cos(th)
            nuc = (u / a) ** 2 + (v / b) ** 2 <= 1
            dapi = nuc * inten
            if t == 2:
                dapi = dapi * rng.uniform(0.3, 1.0, dapi.shape)
            r = np.hypot(xx, yy)
            mem = np.exp(-((r - a - 4) ** 2) / 4.0) * 0.6
            img = np.stack([dapi, mem]) + rng.normal(0, 0.02, (2, size, size))
            crops.append(np.clip(img, 0, 1))
            labels.append(t)
    return np.asarray(crops, np.float32), np.asarray(labels)


def test_cellprofiler_features_separate_morphology_types():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import cross_val_predict

    rng = np.random.default_rng(0)
    crops, y = _morph_crops(10, 32, rng)
    df = measure_crops(
        crops, ["DAPI", "membrane"], modules=["quality", "intensity", "radial_distribution"],
        otsu_channels=["DAPI"], accelerator=None,
    )
    sel, report = select_features(df)
    x = sel.to_numpy()
    # after selection: no constant, duplicate or all-NaN columns
    assert not np.isnan(x).all(axis=0).any()
    assert (np.nanstd(x, axis=0) > 0).all()
    assert sel.T.duplicated().sum() == 0
    c = np.corrcoef(np.nan_to_num(x), rowvar=False)
    np.fill_diagonal(c, 0)
    assert np.nanmax(np.abs(c)) <= 0.9 + 1e-9
    assert set(report["reason"]) >= {"blocklist", "correlation"}
    x = np.nan_to_num(x - np.nanmedian(x, axis=0))
    pred = cross_val_predict(RandomForestClassifier(100, random_state=0), x, y, cv=4)
    bal = balanced_accuracy_score(y, pred)
    assert bal > 0.8, bal  # chance = 1/3


# -- masks ---------------------------------------------------------------------------------------------------------
def test_crop_label_image_and_rasterize_polygons():
    lab = np.zeros((20, 20), np.int32)
    lab[0:4, 0:4] = 3
    lab[10:15, 10:15] = 5
    m = crop_label_image(lab, np.array([[-2, -2], [9, 9]]), 8, np.array([3, 5]))
    assert m[0].sum() == 16 and m[0][2:6, 2:6].all() and m[1].sum() == 25
    tri = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    out = rasterize_polygons([tri, tri + 10], (20, 20))
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 1).sum() == (out == 2).sum() and 45 <= (out == 1).sum() <= 55  # area of the triangle 40.5 + edges
    with pytest.raises(StmorphInputError):
        rasterize_polygons([np.zeros((2, 2))], (5, 5))


# -- the SpatialSample wrapper ----------------------------------------------------------------------------------
def _disc_sample(n_side: int = 3, spacing: int = 40) -> tuple[SpatialSample, np.ndarray]:
    rng = np.random.default_rng(3)
    h = w = n_side * spacing
    dapi = np.zeros((h, w), np.uint16)
    mem = np.zeros((h, w), np.uint16)
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    cents = []
    for i in range(n_side):
        for j in range(n_side):
            cx, cy = j * spacing + spacing / 2, i * spacing + spacing / 2
            r = rng.uniform(5, 12)
            d = (yy - cy) ** 2 + (xx - cx) ** 2
            cell = d <= r**2
            dapi[cell] = int(rng.uniform(1000, 4000))
            mem[(d <= (r + 3) ** 2) & ~cell] = 2000
            lab[d <= (r + 3) ** 2] = len(cents) + 1
            cents.append([cx, cy])
    n = len(cents)
    adata = ad.AnnData(np.ones((n, 2), np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    adata.obsm["spatial"] = np.asarray(cents)
    s = SpatialSample(adata, images={"DAPI": StainImage(dapi), "membrane": StainImage(mem)})
    return s, lab


def test_cellprofiler_features_on_sample_grid_and_mask(tmp_path):
    s, lab = _disc_sample()
    mods = ["intensity", "radial_distribution", "sizeshape"]
    out = cellprofiler_features(s, size=32, modules=mods, copy=True, accelerator=None)
    assert "X_cp_32" not in s.adata.obsm  # copy=True left the input alone
    a = out.adata
    x, names = a.obsm["X_cp_32"], a.uns["X_cp_32_features"]
    assert x.shape == (9, len(names)) and np.isfinite(x).all()
    info = a.uns["X_cp_32"]
    assert info["object"] == "grid" and info["n_features_measured"] > info["n_features_kept"]
    assert "AreaShape_Area" in info["dropped"]["feature"]  # the grid object has a constant area
    a.write_h5ad(tmp_path / "cp.h5ad")  # parameters, names and the selection report are h5ad-writable
    back = ad.read_h5ad(tmp_path / "cp.h5ad")
    assert list(back.uns["X_cp_32_features"]) == names
    assert info["intensity_scale"]["DAPI"] == float(s.images["DAPI"].read().max())
    # the mean DAPI intensity of the grid object, by hand: disc sum / crop area / image max
    if "Intensity_MeanIntensity_DAPI" in names:
        dapi = s.images["DAPI"].read().astype(float)
        col = names.index("Intensity_MeanIntensity_DAPI")
        block = dapi[4:36, 4:36] / dapi.max()
        assert x[0, col] == pytest.approx(block.mean(), rel=1e-4)
    # real masks: AreaShape_Area = the cell's label area
    assert cellprofiler_features(s, size=32, modules=mods, masks=lab, select=False, key_added="X_cp_mask",
                                 accelerator=None) is None
    m = s.adata.obsm["X_cp_mask"]
    names = s.adata.uns["X_cp_mask_features"]
    np.testing.assert_array_equal(m[:, names.index("AreaShape_Area")], np.bincount(lab.ravel())[1:])
    assert s.adata.uns["X_cp_mask"]["object"] == "mask"
    # a cell without its label in the image: an all-NaN row, filled by the median with a warning and a count
    lab2 = np.where(lab == 5, 0, lab)
    with pytest.warns(RuntimeWarning, match="median"):
        cellprofiler_features(s, size=32, modules=mods, masks=lab2, key_added="X_cp_gap", accelerator=None)
    info = s.adata.uns["X_cp_gap"]
    assert info["cells_with_empty_mask"] == 1 and info["n_features_kept"] > 0
    assert set(info["nan_filled"].values()) == {1} and np.isfinite(s.adata.obsm["X_cp_gap"]).all()


def test_cellprofiler_features_errors():
    s, lab = _disc_sample(2)
    with pytest.raises(StmorphInputError, match="channels"):
        cellprofiler_features(s, channels=["GFP"])
    with pytest.raises(StmorphInputError, match="label image"):
        cellprofiler_features(s, size=16, masks=lab[:10])
    with pytest.raises(StmorphInputError, match="mask ids"):
        cellprofiler_features(s, size=16, masks=lab, mask_ids=[1, 2])


def test_synthetic_tissue_types_separable_by_cellprofiler_features():
    """The bar: on the simulated tissue, CP features find the morphology-defined types above chance."""
    datasets = pytest.importorskip("stmorph.datasets")
    if not hasattr(datasets, "synthetic_tissue"):
        pytest.skip("stmorph.datasets.synthetic_tissue not available")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import cross_val_predict

    s = datasets.synthetic_tissue(n_cells=90, n_types=3, random_state=0)
    cellprofiler_features(s, size=40, modules=["quality", "intensity", "radial_distribution"], accelerator=None)
    x = s.adata.obsm["X_cp_40"]
    names = s.adata.uns["X_cp_40_features"]
    # the selected table: finite, no constant, duplicate or all-NaN columns, names kept
    assert x.shape == (90, len(names)) and np.isfinite(x).all()
    assert (x.std(axis=0) > 0).all()
    assert pd.DataFrame(x).T.duplicated().sum() == 0
    y = s.adata.obs["cell_type"].astype(str).to_numpy()
    pred = cross_val_predict(RandomForestClassifier(100, random_state=0), x, y, cv=3)
    assert balanced_accuracy_score(y, pred) > 0.6  # chance 1/3
    # the pair of types that share their expression program and differ only in morphology
    pair = s.adata.uns["synthetic_tissue"]["morphology_only_groups"][0]
    sel = np.isin(y, pair)
    pred2 = cross_val_predict(RandomForestClassifier(100, random_state=0), x[sel], y[sel], cv=3)
    assert balanced_accuracy_score(y[sel], pred2) > 0.7  # chance 1/2
