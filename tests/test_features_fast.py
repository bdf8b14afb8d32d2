"""The ``fast`` CellProfiler engine equals cp-measure's functions, crop by crop and feature by feature.

The reference is ``engine="cp_measure"`` with ``accelerator=None``: cp-measure's numpy/mahotas functions, called
per crop and channel as CellProfiler does. Every feature must have the same name, position and NaN pattern, and a
value within the tolerance of :func:`assert_same_features`:

* rtol 1e-9 (with atol 1e-12) for all features; in practice most are bit-identical (the benchmark counts them);
* ``Location_CenterMassIntensity_*`` and ``Intensity_MassDisplacement``: atol 1e-9 px (float64 sums of
  ``y * I`` in another order; the displacement is a small difference of two such positions);
* ``Texture_InfoMeas2_*``: atol 1e-7. mahotas returns ``sqrt(1 - exp(-2 d))`` with ``d`` a difference of two
  entropies that is ~0 for an (almost) independent co-occurrence matrix, where ``d`` is rounding noise (~1e-15)
  in either implementation and the square root lifts it to ~3e-8.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from stmorph.errors import StmorphInputError
from stmorph.features import _fast as fast
from stmorph.features import cellprofiler_features, measure_crop, measure_crops, otsu_binary

pytest.importorskip("cp_measure")

STUDY = ["quality", "intensity", "radial_distribution", "texture", "granularity"]


def assert_same_features(ref: pd.DataFrame, got: pd.DataFrame) -> None:
    """Same columns in the same order, same NaN pattern, values within the documented tolerances."""
    assert list(got.columns) == list(ref.columns)
    assert list(got.index) == list(ref.index)
    for col in ref.columns:
        a, b = ref[col].to_numpy(np.float64), got[col].to_numpy(np.float64)
        atol = 1e-12
        if col.startswith("Texture_InfoMeas2"):
            atol = 1e-7
        elif col.startswith(("Location_CenterMassIntensity", "Intensity_MassDisplacement")):
            atol = 1e-9
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=atol, equal_nan=True, err_msg=col)


def _reference(crops, names, masks=None, **kw) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return measure_crops(crops, names, masks, engine="cp_measure", accelerator=None, **kw)


@pytest.fixture(scope="module")
def tissue_crops():
    """40 px DAPI + membrane crops of 16 synthetic cells (scaled by the image maximum) and their cell masks."""
    from stmorph.crops import crop_boxes, crop_masks, crop_stains
    from stmorph.datasets import synthetic_tissue

    s = synthetic_tissue(n_cells=16, random_state=0)
    images = [s.images[c].read() for c in ("DAPI", "membrane")]
    boxes = crop_boxes(s.centroids, 40, images[0].shape, edge="shift")
    crops = crop_stains(images, None, 40, boxes=boxes, normalize="image",
                        image_range=[(0.0, float(im.max())) for im in images])
    masks = crop_masks(s.segmentation, boxes, 40, s.adata.obs["label_id"].to_numpy())
    assert masks.any(axis=(1, 2)).all()
    return crops, masks


# -- the whole engine against cp-measure ----------------------------------------------------------------------
def test_grid_object_study_modules_equal_cp_measure(tissue_crops):
    crops = tissue_crops[0][:10]
    kw = {"modules": STUDY, "otsu_channels": ["DAPI"]}
    ref = _reference(crops, ["DAPI", "membrane"], **kw)
    got = measure_crops(crops, ["DAPI", "membrane"], **kw)
    assert got.shape == (10, 3 * 119)
    assert_same_features(ref, got)
    # the Otsu channel is cp-measure's input too: the thresholded copy is bit-identical
    assert (got["Intensity_IntegratedIntensity_DAPI_otsu"] == ref["Intensity_IntegratedIntensity_DAPI_otsu"]).all()


def test_cell_masks_equal_cp_measure_with_shape_and_correlation(tissue_crops):
    crops, masks = tissue_crops[0][:10], tissue_crops[1][:10].copy()
    masks[3] = False  # a cell without its label in the crop: all-NaN row in both engines
    kw = {"modules": STUDY + ["sizeshape", "correlation"], "otsu_channels": ["DAPI"], "index": [f"c{i}" for i in range(10)]}
    ref = _reference(crops, ["DAPI", "membrane"], masks, **kw)
    got = measure_crops(crops, ["DAPI", "membrane"], masks, **kw)
    assert got.loc["c3"].isna().all() and not got.drop(index="c3").isna().all(axis=1).any()
    assert "AreaShape_Area" == got.columns[0] and "Correlation_Pearson_DAPI_membrane" in got.columns
    assert_same_features(ref, got)


@pytest.mark.parametrize(
    "params",
    [
        {"texture": {"scale": 2, "gray_levels": 8}, "radial_distribution": {"bin_count": 4, "scaled": False,
                                                                            "maximum_radius": 12}},
        {"granularity": {"element_size": 3, "granular_spectrum_length": 5, "subsample_size": 0.5,
                         "image_sample_size": 0.5}, "quality": {"local_scale": 8},
         "intensity": {"legacy": True}},
        {"granularity": {"subsample_size": 1.0, "image_sample_size": 1.0, "element_size": 4,
                         "granular_spectrum_length": 3}, "intensity": {"edge_measurements": False}},
    ],
)
def test_module_parameters_equal_cp_measure(tissue_crops, params):
    crops, masks = tissue_crops
    crops, masks = crops[:4], masks[:4]
    for m in (None, masks):
        ref = _reference(crops, ["DAPI", "membrane"], m, modules=STUDY, params=params)
        got = measure_crops(crops, ["DAPI", "membrane"], m, modules=STUDY, params=params)
        assert_same_features(ref, got)


def test_edge_cases_equal_cp_measure():
    """Blank, constant, one-pixel, binary and tiny crops: NaN where cp-measure gives NaN, equal values elsewhere."""
    rng = np.random.default_rng(0)
    s = 40  # (20-35 px: see test_granularity_on_two_pixel_background_is_the_defined_erosion)
    crops = np.zeros((7, 1, s, s), np.float32)
    crops[1] = 0.4  # constant: no Otsu threshold, one grey level
    crops[2, 0, 12, 12] = 1.0  # one bright pixel: no non-zero pair for texture (NaN)
    crops[3, 0, 6:18, 6:18] = 1.0  # binary square
    crops[4] = rng.random((1, s, s)) ** 3
    crops[5, 0, :, :20] = rng.random((s, 20))  # half blank
    crops[6] = 1.0 / 255.5  # quantises to grey level 0 (ignored by texture)
    ref = _reference(crops, ["D"], modules=STUDY, otsu_channels=["D"])
    got = measure_crops(crops, ["D"], modules=STUDY, otsu_channels=["D"])
    assert_same_features(ref, got)
    assert got.loc["2", "Texture_Contrast_3_00_256_D"] != got.loc["2", "Texture_Contrast_3_00_256_D"]  # NaN
    tiny = rng.random((3, 1, 6, 6)).astype(np.float32)  # granularity: 6 * 0.25 < 2 samples -> NaN spectrum
    assert_same_features(_reference(tiny, ["D"], modules=STUDY), measure_crops(tiny, ["D"], modules=STUDY))


def test_measure_crop_and_wrappers_agree(tissue_crops):
    crops, masks = tissue_crops
    one = measure_crop(crops[0], ["DAPI", "membrane"], masks[0], modules=STUDY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from stmorph.features._cellprofiler import _accelerator

        with _accelerator(None):
            ref = measure_crop(crops[0], ["DAPI", "membrane"], masks[0], modules=STUDY, engine="cp_measure")
    assert list(one) == list(ref)
    np.testing.assert_allclose(list(one.values()), list(ref.values()), rtol=1e-9, atol=1e-7)
    assert measure_crop(crops[0], ["DAPI", "membrane"], np.zeros((40, 40), bool)) == {}
    # chunking and threads do not change anything
    a = measure_crops(crops, ["DAPI", "membrane"], modules=STUDY, chunk_size=5)
    b = measure_crops(crops, ["DAPI", "membrane"], modules=STUDY, n_jobs=2, backend="threading", chunk_size=4)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(StmorphInputError, match="engine"):
        measure_crops(crops, ["DAPI", "membrane"], engine="nope")  # type: ignore[arg-type]
    with pytest.raises(StmorphInputError, match="unknown parameters"):
        measure_crops(crops[:2], ["DAPI", "membrane"], modules=["texture"], params={"texture": {"levels": 8}})
    # modules the fast engine leaves to cp-measure, alone
    for mods in (["sizeshape"], ["correlation"]):
        assert_same_features(_reference(crops[:3], ["DAPI", "membrane"], masks[:3], modules=mods),
                             measure_crops(crops[:3], ["DAPI", "membrane"], masks[:3], modules=mods))


def test_cellprofiler_features_engines_agree():
    from stmorph.datasets import synthetic_tissue

    s = synthetic_tissue(n_cells=12, random_state=1)
    out = {}
    for engine in ("fast", "cp_measure"):
        t = cellprofiler_features(s, size=36, select=False, accelerator=None, engine=engine, copy=True)
        assert t.adata.uns["X_cp_36"]["engine"] == engine
        out[engine] = pd.DataFrame(t.adata.obsm["X_cp_36"], columns=t.adata.uns["X_cp_36_features"])
    # obsm is float32: equal to float32 rounding
    assert list(out["fast"].columns) == list(out["cp_measure"].columns)
    np.testing.assert_allclose(out["fast"].to_numpy(), out["cp_measure"].to_numpy(), rtol=1e-6, atol=1e-7)


def test_granularity_on_two_pixel_background_is_the_defined_erosion(monkeypatch):
    """Crops of 20-35 px: scipy's reflect-mode erosion of the 2 x 2 background reads outside the array.

    cp-measure's granularity then depends on neighbouring memory; with skimage's erosion/dilation told to ignore
    out-of-image pixels (the same values for every other size) it is defined, and equals the fast engine.
    """
    import skimage.morphology
    from skimage.morphology import disk

    img = np.full((3, 2, 2), -5.0, np.float32)
    img[1] = [[1.0, 2.0], [3.0, 4.0]]
    assert skimage.morphology.erosion(img[1], footprint=disk(10))[0, 0] == -5.0  # the out-of-bounds read

    rng = np.random.default_rng(5)
    crops = (rng.random((4, 1, 32, 32)) ** 2).astype(np.float32)
    erosion, dilation = skimage.morphology.erosion, skimage.morphology.dilation
    monkeypatch.setattr(skimage.morphology, "erosion", lambda im, footprint: erosion(im, footprint, mode="ignore"))
    monkeypatch.setattr(skimage.morphology, "dilation", lambda im, footprint: dilation(im, footprint, mode="ignore"))
    ref = _reference(crops, ["D"], modules=["granularity"])
    assert_same_features(ref, measure_crops(crops, ["D"], modules=["granularity"]))


# -- the building blocks against the library functions they replace --------------------------------------------
def test_reconstruction_and_erosion_equal_skimage():
    from skimage.morphology import dilation, disk, erosion, reconstruction

    rng = np.random.default_rng(2)
    for s, r in [(3, 10), (7, 10), (19, 10), (12, 3)]:
        x = rng.random((2, s, s)).astype(np.float32)
        dys, dxs = np.nonzero(disk(r))
        dys, dxs = (dys - r).astype(np.int64), (dxs - r).astype(np.int64)
        e, d = np.empty_like(x), np.empty_like(x)
        fast._grey_footprint(x, dys, dxs, True, e)
        fast._grey_footprint(x, dys, dxs, False, d)
        for t in range(2):
            np.testing.assert_array_equal(e[t], erosion(x[t], footprint=disk(r)))
            np.testing.assert_array_equal(d[t], dilation(x[t], footprint=disk(r)))
    for shape in [(25, 25), (7, 31), (1, 9)]:
        img = (rng.random(shape) ** 2).astype(np.float32)
        img[rng.random(shape) < 0.2] = 0.0
        ero = np.empty_like(img)
        fast._erode_cross(img, ero)
        np.testing.assert_array_equal(ero, erosion(img, footprint=disk(1)))
        rec = np.empty_like(img)
        queue, inq = np.empty(img.size, np.int64), np.zeros(img.size, bool)
        fast._reconstruct(ero, img, rec, queue, inq)
        np.testing.assert_array_equal(rec, reconstruction(ero, img, footprint=disk(1)))


def test_otsu_thresholds_equal_skimage():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    imgs = rng.random((6, 20, 20)).astype(np.float32) ** 3
    imgs[1] = 0.25  # constant: NaN here, all-zero binary image
    imgs[2] = (imgs[2] > 0.5).astype(np.float32)  # two values
    imgs[3] = np.round(imgs[3] * 7) / 7  # few levels: values on bin edges
    for x in (imgs, imgs.astype(np.float64)):
        thr = fast.otsu_thresholds(x)
        assert thr.dtype == x.dtype and np.isnan(thr[1])
        for i in (0, 2, 3, 4, 5):
            assert thr[i] == threshold_otsu(x[i])
    np.testing.assert_array_equal(fast.otsu_binary_stack(imgs), np.stack([otsu_binary(im) for im in imgs]))


def test_haralick_equals_mahotas():
    import mahotas.features

    rng = np.random.default_rng(4)
    q = (rng.random((5, 30, 30)) * 40).astype(np.uint8)
    q[1] = 17  # uniform object: zero contrast, ASM 1
    q[2, :, :15] = 0  # half background
    q[3] = np.where(rng.random((30, 30)) < 0.5, 3, 200).astype(np.uint8)  # two levels
    out = np.empty((5, 4, 13))
    fast._haralick_kernel(q, 2, out)
    for i in range(5):
        ref = mahotas.features.haralick(q[i], distance=2, ignore_zeros=True)
        np.testing.assert_allclose(out[i][:, :12], ref[:, :12], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out[i][:, 12], ref[:, 12], atol=1e-7)
    assert out[1, 0, 1] == 0.0 and out[1, 0, 0] == 1.0


def test_radix_select_equals_sort():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 3001)).astype(np.float32)
    x[1] = np.round(x[1])  # many ties
    x[2, :100] = -0.0
    x[3] = 7.0
    ranks = np.array([0, 1, 750, 1500, 1501, 2999, 3000], np.int64)
    out = np.empty((5, ranks.size), np.float32)
    fast._select_ranks(x, ranks, out)
    np.testing.assert_array_equal(out, np.sort(x, axis=1)[:, ranks])
