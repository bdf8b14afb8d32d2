"""StainImage, LabelImage, PolygonSegmentation, labels_at, open_channels and image_channel_names on image files of
every supported kind, written in the tests: plain and stacked TIFF, OME-TIFF (named channels, pyramidal, z + c),
compressed tiled TIFF, PNG/JPEG composites, zarr arrays and OME-Zarr groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from matplotlib.path import Path as MplPath
from PIL import Image

from stmorph import StmorphInputError
from stmorph._image import (
    LabelImage,
    PolygonSegmentation,
    StainImage,
    image_axes,
    image_channel_names,
    labels_at,
    open_channels,
)

RNG_SEED = 0
NAMES = ["DAPI", "CD45", "PanCK"]


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _cyx() -> np.ndarray:
    return _rng().integers(0, 60000, (3, 30, 40), dtype=np.uint16)


# ---------------------------------------------------------------------------------------------------------------
# TIFF
# ---------------------------------------------------------------------------------------------------------------
def test_plain_tiff_is_memory_mapped(tmp_path):
    a = _rng().integers(0, 60000, (30, 40), dtype=np.uint16)
    f = tmp_path / "plain.tif"
    tifffile.imwrite(f, a)
    assert image_axes(f) == ("YX", (30, 40))
    assert image_channel_names(f) is None
    img = StainImage(f)
    assert img.shape == (30, 40)  # from the metadata, before any read
    out = img.read()
    assert isinstance(out, np.memmap)
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(img.window(5, 10, 35, 45, fill=7)[:, :5], a[5:10, 35:40])
    assert (img.window(5, 10, 35, 45, fill=7)[:, 5:] == 7).all()
    chans = open_channels(f)
    assert list(chans) == ["plain"]
    # a label image of the same file: integer dtype accepted
    np.testing.assert_array_equal(LabelImage(f).read(), a)


def test_zyx_stack_needs_z(tmp_path):
    st = _rng().integers(0, 60000, (5, 30, 40), dtype=np.uint16)
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, st)
    axes, shape = image_axes(f)
    assert shape == (5, 30, 40) and axes.endswith("YX")
    for z in (0, 2, 4):
        np.testing.assert_array_equal(StainImage(f, z=z).read(), st[z])
    with pytest.raises(StmorphInputError, match="choose one with z="):
        StainImage(f).read()
    with pytest.raises(StmorphInputError, match="out of range"):
        StainImage(f, z=5).read()
    with pytest.raises(StmorphInputError, match="out of range"):
        StainImage(f, z=-1).read()
    # tifffile stores a 3-plane stack as one planar page (axes SYX): z= still picks the plane
    f3 = tmp_path / "stack3.tif"
    tifffile.imwrite(f3, st[:3])
    for z in range(3):
        np.testing.assert_array_equal(StainImage(f3, z=z).read(), st[z])


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(StmorphInputError, match="image not found"):
        StainImage(tmp_path / "none.tif")
    with pytest.raises(StmorphInputError, match="image not found"):
        image_axes(tmp_path / "none.tif")
    with pytest.raises(StmorphInputError, match="image not found"):
        open_channels(tmp_path / "none.ome.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(StmorphInputError, match="cannot read the image"):
        StainImage(bad).read()
    f = tmp_path / "float.tif"
    tifffile.imwrite(f, np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(StmorphInputError, match="integer labels"):
        LabelImage(f).read()


def test_ome_tiff_channel_names_round_trip(tmp_path):
    c3 = _cyx()
    f = tmp_path / "stains.ome.tif"
    tifffile.imwrite(f, c3, metadata={"axes": "CYX", "Channel": {"Name": NAMES}})
    assert image_axes(f) == ("CYX", (3, 30, 40))
    assert image_channel_names(f) == NAMES
    chans = open_channels(f)
    assert list(chans) == NAMES
    for i, name in enumerate(NAMES):
        np.testing.assert_array_equal(chans[name].read(), c3[i])
        assert chans[name].channel == i
    # names given by the caller win; a wrong count is an error
    assert list(open_channels(f, ["a", "b", "c"])) == ["a", "b", "c"]
    with pytest.raises(StmorphInputError, match="2 channel names"):
        open_channels(f, ["a", "b"])
    with pytest.raises(StmorphInputError, match="3 planes along its C axis"):
        StainImage(f).read()
    with pytest.raises(StmorphInputError, match="out of range"):
        StainImage(f, channel=3).read()


def test_pyramidal_ome_tiff_reads_level_0(tmp_path):
    c3 = _cyx()
    f = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(f) as tw:
        tw.write(c3, subifds=2, tile=(16, 16), compression="zlib",
                 metadata={"axes": "CYX", "Channel": {"Name": NAMES}})
        tw.write(c3[:, ::2, ::2], subfiletype=1, tile=(16, 16), compression="zlib")
        tw.write(c3[:, ::4, ::4], subfiletype=1, tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(f) as tf:
        assert len(tf.series[0].levels) == 3  # really a pyramid
    assert image_axes(f) == ("CYX", (3, 30, 40))
    assert image_channel_names(f) == NAMES
    chans = open_channels(f)
    assert list(chans) == NAMES
    for i, name in enumerate(NAMES):
        assert chans[name].shape == (30, 40)
        np.testing.assert_array_equal(chans[name].read(), c3[i])


def test_ome_tiff_z_and_channels(tmp_path):
    zc = _rng().integers(0, 60000, (3, 2, 32, 48), dtype=np.uint16)
    f = tmp_path / "zc.ome.tif"
    tifffile.imwrite(f, zc, metadata={"axes": "ZCYX", "Channel": {"Name": ["a", "b"]}})
    assert image_axes(f) == ("ZCYX", (3, 2, 32, 48))
    assert image_channel_names(f) == ["a", "b"]
    chans = open_channels(f)  # the middle z-plane by default
    assert [c.z for c in chans.values()] == [1, 1]
    np.testing.assert_array_equal(chans["b"].read(), zc[1, 1])
    chans = open_channels(f, z=2)
    np.testing.assert_array_equal(chans["a"].read(), zc[2, 0])
    with pytest.raises(StmorphInputError, match="z="):
        StainImage(f, channel=0).read()
    with pytest.raises(StmorphInputError, match="out of range"):
        StainImage(f, z=3, channel=0).read()


def test_compressed_tiled_tiff_reads_one_page(tmp_path, monkeypatch):
    # 5 planes: one page each (tifffile writes 3 or 4 planes as the samples of a single planar page)
    st = _rng().integers(0, 60000, (5, 40, 48), dtype=np.uint16)
    f = tmp_path / "tiled.tif"
    tifffile.imwrite(f, st, tile=(16, 16), compression="zlib")
    with pytest.raises(ValueError):
        tifffile.memmap(f, mode="r")  # not memory-mappable: the page path
    # reading one plane must not read the whole stack
    def no_level_read(*args, **kwargs):
        raise AssertionError("the whole stack was read")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_level_read)
    for z in range(5):
        out = StainImage(f, z=z).read()
        assert not isinstance(out, np.memmap)
        np.testing.assert_array_equal(out, st[z])
    monkeypatch.undo()
    g = tmp_path / "tiled2d.tif"
    tifffile.imwrite(g, st[0], tile=(16, 16), compression="zlib")
    np.testing.assert_array_equal(StainImage(g).read(), st[0])


# ---------------------------------------------------------------------------------------------------------------
# PNG / JPEG composites
# ---------------------------------------------------------------------------------------------------------------
def test_rgb_png_split_into_channels(tmp_path):
    rgb = _rng().integers(0, 255, (30, 40, 3), dtype=np.uint8)
    rgb[7, 11] = (200, 100, 50)
    f = tmp_path / "composite.png"
    Image.fromarray(rgb).save(f)
    assert image_axes(f) == ("YXS", (30, 40, 3))
    assert image_channel_names(f) == ["R", "G", "B"]
    chans = open_channels(f)
    assert list(chans) == ["R", "G", "B"]
    with Image.open(f) as im:
        pil = np.asarray(im)
    for i, c in enumerate("RGB"):
        out = chans[c].read()
        assert out.shape == (30, 40)
        np.testing.assert_array_equal(out, pil[..., i])  # sanity: PIL's own reading
        np.testing.assert_array_equal(out, rgb[..., i])  # PNG is lossless: what was written
    assert [int(chans[c].read()[7, 11]) for c in "RGB"] == [200, 100, 50]
    with pytest.raises(StmorphInputError, match="channel"):
        StainImage(f).read()
    # 16-bit greyscale PNG: one plane
    g16 = _rng().integers(0, 60000, (30, 40), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(StainImage(tmp_path / "grey.png").read(), g16)


def test_rgb_jpeg_split_into_channels(tmp_path):
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[:, :, 0] = 200  # flat colours survive JPEG within a few grey levels
    rgb[:, :, 1] = 100
    rgb[:, :, 2] = 30
    f = tmp_path / "CellComposite_F001.jpg"
    Image.fromarray(rgb).save(f, quality=95)
    chans = open_channels(f)
    assert list(chans) == ["R", "G", "B"]
    with Image.open(f) as im:
        pil = np.asarray(im)
    for i, c in enumerate("RGB"):
        out = chans[c].read()
        np.testing.assert_array_equal(out, pil[..., i])
        assert abs(float(out.mean()) - rgb[0, 0, i]) < 3


# ---------------------------------------------------------------------------------------------------------------
# zarr
# ---------------------------------------------------------------------------------------------------------------
def _zarr_array(group, name: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    if hasattr(group, "create_array"):  # zarr 3
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
        arr[:] = data
    else:  # pragma: no cover - zarr 2
        group.create_dataset(name, data=data, chunks=chunks)


def test_zarr_array(tmp_path):
    import zarr

    c3 = _cyx()
    f = tmp_path / "stack.zarr"
    arr = zarr.open(str(f), mode="w", shape=c3.shape, dtype=c3.dtype, chunks=(1, 16, 16))
    arr[:] = c3
    axes, shape = image_axes(f)
    assert shape == (3, 30, 40) and axes.endswith("YX")
    assert image_channel_names(f) is None
    np.testing.assert_array_equal(StainImage(f, z=1).read(), c3[1])
    np.testing.assert_array_equal(StainImage(f, channel=2).read(), c3[2])
    chans = open_channels(f, prefix="ch")
    assert list(chans) == ["ch0", "ch1", "ch2"]
    np.testing.assert_array_equal(chans["ch0"].read(), c3[0])
    plane = tmp_path / "plane.zarr"
    a2 = zarr.open(str(plane), mode="w", shape=(30, 40), dtype=np.int32)
    a2[:] = c3[0].astype(np.int32)
    assert image_axes(plane) == ("YX", (30, 40))
    np.testing.assert_array_equal(LabelImage(plane).read(), c3[0])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_group(tmp_path, zarr_format):
    import zarr

    c3 = _cyx()
    f = tmp_path / "image.ome.zarr"
    kwargs = {"zarr_format": zarr_format} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    if zarr_format == 3 and not kwargs:  # pragma: no cover - zarr 2
        pytest.skip("zarr 2 writes no v3 stores")
    g = zarr.open_group(str(f), mode="w", **kwargs)
    _zarr_array(g, "0", c3, (1, 16, 16))
    _zarr_array(g, "1", np.ascontiguousarray(c3[:, ::2, ::2]), (1, 16, 16))
    multiscales = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0"}, {"path": "1"}],
    }]
    omero = {"channels": [{"label": n} for n in NAMES]}
    if zarr_format == 2:
        g.attrs["multiscales"] = multiscales
        g.attrs["omero"] = omero
    else:  # OME-Zarr 0.5 keeps its metadata under "ome"
        g.attrs["ome"] = {"version": "0.5", "multiscales": multiscales, "omero": omero}
    assert image_axes(f) == ("CYX", (3, 30, 40))  # level 0, not level 1
    assert image_channel_names(f) == NAMES
    chans = open_channels(f)
    assert list(chans) == NAMES
    for i, name in enumerate(NAMES):
        assert chans[name].shape == (30, 40)
        np.testing.assert_array_equal(chans[name].read(), c3[i])


# ---------------------------------------------------------------------------------------------------------------
# segmentations and labels_at
# ---------------------------------------------------------------------------------------------------------------
def _random_polygons(h: int, w: int, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    rows, polys = [], {}
    for lab in range(1, n + 1):
        cx, cy = rng.uniform(4, w - 4), rng.uniform(4, h - 4)
        k = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(3, 12, k)
        xy = np.column_stack([cx + r * np.cos(ang), cy + r * np.sin(ang)])
        polys[lab * 3] = xy  # labels need not be consecutive
        rows.append(pd.DataFrame({"label_id": lab * 3, "x": xy[:, 0], "y": xy[:, 1]}))
    return pd.concat(rows, ignore_index=True), polys


def _expected_raster(polys: dict[int, np.ndarray], h: int, w: int) -> np.ndarray:
    """Label of each pixel centre by a direct point-in-polygon test (overlaps: the larger label)."""
    rr, cc = np.mgrid[0:h, 0:w]
    centres = np.column_stack([cc.ravel(), rr.ravel()]).astype(np.float64)
    out = np.zeros(h * w, dtype=np.int64)
    for lab in sorted(polys):
        out[MplPath(polys[lab]).contains_points(centres)] = lab
    return out.reshape(h, w)


def _expected_at(raster: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = raster.shape
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(finite, x, -10.0), np.where(finite, y, -10.0)
    col, row = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & finite
    out = np.zeros(len(x), dtype=np.int64)
    out[inside] = raster[row[inside], col[inside]]
    return out


def test_labels_at_polygons_match_point_in_polygon():
    rng = np.random.default_rng(1)
    h, w = 60, 80
    verts, polys = _random_polygons(h, w, 10, rng)
    seg = PolygonSegmentation(verts, (h, w))
    expected = _expected_raster(polys, h, w)
    np.testing.assert_array_equal(seg.read(), expected)
    x, y = rng.uniform(-3, w + 3, 4000), rng.uniform(-3, h + 3, 4000)
    want = _expected_at(expected, x, y)
    assert (want > 0).sum() > 300  # many points do hit cells
    np.testing.assert_array_equal(labels_at(seg, x, y), want)
    np.testing.assert_array_equal(labels_at(seg, x, y, tile=16), want)  # tile by tile
    # windows equal the same window of the whole raster, also across the edges
    full = seg.read()
    np.testing.assert_array_equal(seg.window(10, 40, 20, 70), full[10:40, 20:70])
    edge = seg.window(-5, 12, 70, 90, fill=0)
    assert edge.shape == (17, 20)
    np.testing.assert_array_equal(edge[5:, :10], full[:12, 70:80])
    assert (edge[:5] == 0).all() and (edge[:, 10:] == 0).all()
    assert set(seg.label_ids.tolist()) == set(polys)


def test_labels_at_label_image_in_memory_and_from_file(tmp_path):
    rng = np.random.default_rng(2)
    h, w = 60, 80
    _, polys = _random_polygons(h, w, 10, rng)
    raster = _expected_raster(polys, h, w).astype(np.int32)
    x, y = rng.uniform(-3, w + 3, 4000), rng.uniform(-3, h + 3, 4000)
    x[:4], y[:4] = [np.nan, np.inf, -0.6, w - 0.5], [1.0, 1.0, 1.0, 1.0]  # NaN/inf and just outside: 0
    want = _expected_at(raster, x, y)
    assert (want[:3] == 0).all()
    np.testing.assert_array_equal(labels_at(LabelImage(raster), x, y), want)
    f = tmp_path / "labels.tif"
    tifffile.imwrite(f, raster)
    np.testing.assert_array_equal(labels_at(LabelImage(f), x, y), want)
    np.testing.assert_array_equal(labels_at(LabelImage(f), x, y, tile=16), want)  # file-backed: tiled path
    # a label stack needs its z-plane
    stack = np.stack([raster, raster[::-1].copy()])
    fs = tmp_path / "label_stack.tif"
    tifffile.imwrite(fs, stack)
    np.testing.assert_array_equal(labels_at(LabelImage(fs, z=1), x, y), _expected_at(stack[1], x, y))
    with pytest.raises(StmorphInputError, match="z="):
        labels_at(LabelImage(fs), x, y)


def test_window_reads_only_the_window_of_compressed_and_zarr_images(tmp_path, monkeypatch):
    """A crop of a whole-slide image must not load the plane: compressed tiled TIFFs and zarr stores are sliced
    through a lazy view (StainImage.read is made to fail to prove it)."""
    import zarr

    from stmorph import LabelImage, StainImage

    a = (np.arange(300 * 400, dtype=np.uint32).reshape(300, 400) % 977).astype(np.uint16)
    f = tmp_path / "c.tif"
    tifffile.imwrite(f, np.stack([a, a + 1]), tile=(64, 64), compression="zlib", metadata={"axes": "CYX"})
    z = tmp_path / "lab.zarr"
    za = zarr.open_array(str(z), mode="w", shape=a.shape, chunks=(64, 64), dtype=np.int32)
    za[:] = a.astype(np.int32)

    def no_read(self):
        raise AssertionError("the whole plane was read")

    monkeypatch.setattr(StainImage, "_load", no_read)
    img = StainImage(f, channel=1)
    np.testing.assert_array_equal(img.window(10, 50, 300, 420), np.pad(a[10:50, 300:400] + 1, ((0, 0), (0, 20))))
    lab = LabelImage(z)
    np.testing.assert_array_equal(lab.window(-5, 20, 0, 30), np.pad(a[0:20, 0:30].astype(np.int32), ((5, 0), (0, 0))))
