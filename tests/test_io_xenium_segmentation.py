"""Xenium layouts with segmentation (cells.zarr.zip masks, boundary polygons) and morphology_focus stains.

The layouts are written by :func:`stmorph.io.write_xenium_layout` from a small synthetic tissue whose masks are
known exactly, then read back with :func:`stmorph.io.read_xenium`.
"""

from __future__ import annotations

import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import stmorph.io as sio
from stmorph import LabelImage, PolygonSegmentation, StainImage
from stmorph._image import labels_at
from stmorph.datasets import synthetic_tissue, write_xenium_layout
from stmorph.errors import StmorphInputError
from stmorph.io._testing import assert_samples_equal
from stmorph.io._xenium import _write_ome_pyramid, xenium_cell_id_ints, xenium_cell_id_strings

ORIGIN = (100.0, 50.0)


@pytest.fixture(scope="module")
def tissue():
    sample, cells, nuclei = synthetic_tissue(n_cells=60, n_types=3, n_genes=12, random_state=0, return_masks="both")
    return sample, cells, nuclei


@pytest.fixture(scope="module")
def layout(tissue, tmp_path_factory):
    sample, _, nuclei = tissue
    return write_xenium_layout(sample, tmp_path_factory.mktemp("xen") / "out", origin_um=ORIGIN,
                                   nucleus_labels=nuclei)


def _copy(layout: Path, tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(layout, d)
    return d


def _own_fraction(s) -> float:
    """Fraction of the assigned molecules whose label in the segmentation is their own cell's label."""
    m = s.molecules
    a = m["cell_id"].notna().to_numpy()
    got = labels_at(s.segmentation, m["x"].to_numpy()[a], m["y"].to_numpy()[a])
    want = s.adata.obs["label_id"].reindex(m["cell_id"][a].astype(object)).to_numpy()
    return float(np.mean(got == want))


def _to_original(s, raster: np.ndarray) -> np.ndarray:
    """A raster of ``s``'s labels re-expressed as the synthetic tissue's labels (cell row + 1)."""
    own = s.adata.obs["label_id"].to_numpy()
    rows = np.array([int(c.split("_")[1]) for c in s.cell_ids])  # "cell_7" -> label 7 in the tissue's mask
    lut = np.zeros(max(int(raster.max()), int(own.max())) + 1, dtype=np.int64)
    lut[own[own > 0]] = rows[own > 0]
    return lut[raster]


# ---------------------------------------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------------------------------------
def test_writer_files_and_reexport(layout, tissue):
    from stmorph.datasets._tissue import write_xenium_layout as w1
    from stmorph.io._xenium import write_xenium_layout as w2

    assert w1 is w2 is write_xenium_layout
    names = {p.name for p in layout.iterdir()}
    assert {"cells.zarr.zip", "cell_boundaries.parquet", "nucleus_boundaries.parquet", "cells.parquet",
            "cells.csv.gz", "morphology_mip.tif", "morphology_focus", "transcripts.csv.gz"} <= names
    # the zip is a zarr v2 store in the XOA 2.x layout
    members = set(zipfile.ZipFile(layout / "cells.zarr.zip").namelist())
    assert {"masks/0/.zarray", "masks/1/.zarray", "cell_id/.zarray", "polygon_sets/1/cell_index/.zarray",
            "cell_summary/.zattrs"} <= members
    b = pd.read_parquet(layout / "cell_boundaries.parquet")
    assert list(b.columns) == ["cell_id", "vertex_x", "vertex_y", "label_id"]
    first = b.groupby("label_id").head(1).set_index("label_id")
    last = b.groupby("label_id").tail(1).set_index("label_id")
    assert ((first[["vertex_x", "vertex_y"]] == last[["vertex_x", "vertex_y"]]).all(axis=1)).mean() > 0.95  # closed
    # pyramidal OME-TIFFs with the channel name in the OME-XML
    for f, nm in (("morphology_focus_0000.ome.tif", "DAPI"), ("morphology_focus_0001.ome.tif", "ATP1A1/CD45/E-Cadherin")):
        with tifffile.TiffFile(layout / "morphology_focus" / f) as tf:
            assert tf.is_ome and len(tf.series[0].levels) >= 2
            assert f'Name="{nm}"' in tf.ome_metadata


# ---------------------------------------------------------------------------------------------------------
# stains
# ---------------------------------------------------------------------------------------------------------
def test_stains_from_morphology_focus(layout, tissue):
    sample = tissue[0]
    s = sio.read_xenium(layout, origin=ORIGIN)
    assert list(s.images) == ["DAPI", "ATP1A1_CD45_E-Cadherin"]
    assert s.images["DAPI"].path.parent.name == "morphology_focus"
    np.testing.assert_array_equal(s.images["DAPI"].read(), sample.images["DAPI"].read())
    np.testing.assert_array_equal(s.images["ATP1A1_CD45_E-Cadherin"].read(), sample.images["membrane"].read())
    assert s.provenance["files"]["images"]["ATP1A1_CD45_E-Cadherin"]["name_in_file"] == "ATP1A1/CD45/E-Cadherin"
    # without morphology_focus/: the mip as before
    s2 = sio.read_xenium(layout, origin=ORIGIN, image="morphology_mip.tif", segmentation=None)
    assert list(s2.images) == ["DAPI"] and s2.images["DAPI"].path.name == "morphology_mip.tif"
    assert s2.segmentation is None and "label_id" not in s2.adata.obs


def _multifile(folder: Path, names: list[str] | None) -> None:
    """Rewrite the OME-XML of folder's morphology_focus_000N files as one multi-file image (XOA 2.x style)."""
    files = sorted(p.name for p in folder.iterdir())
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in files]
    h, w = tifffile.TiffFile(folder / files[0]).pages[0].shape
    channels = "".join(f'<Channel ID="Channel:0:{i}" SamplesPerPixel="1"' + (f' Name="{names[i]}"' if names else "")
                       + "/>" for i in range(len(files)))
    tiffdata = "".join(f'<TiffData FirstC="{i}" FirstT="0" FirstZ="0" IFD="0" PlaneCount="1"><UUID FileName="{f}">'
                       f"{uuids[i]}</UUID></TiffData>" for i, f in enumerate(files))
    for i, f in enumerate(files):
        xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
               f'UUID="{uuids[i]}"><Image ID="Image:0" Name="morphology"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
               f'Type="uint16" SizeX="{w}" SizeY="{h}" SizeC="{len(files)}" SizeZ="1" SizeT="1">{channels}{tiffdata}'
               "</Pixels></Image></OME>")
        tifffile.tiffcomment(folder / f, xml.encode())


@pytest.mark.filterwarnings("ignore:.*closed file")
@pytest.mark.parametrize("named", [True, False])
def test_multifile_focus_xoa2(layout, tissue, tmp_path, named):
    sample = tissue[0]
    d = _copy(layout, tmp_path)
    rng = np.random.default_rng(1)
    extra = {k: rng.integers(0, 4000, sample.images["DAPI"].shape).astype(np.uint16) for k in ("18S", "AlphaSMA/Vimentin")}
    for k, (nm, arr) in enumerate(extra.items(), start=2):
        _write_ome_pyramid(d / "morphology_focus" / f"morphology_focus_{k:04d}.ome.tif", arr, nm, 0.5)
    names = ["DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin"]
    _multifile(d / "morphology_focus", names if named else None)
    s = sio.read_xenium(d, origin=ORIGIN)
    assert list(s.images) == ["DAPI", "ATP1A1_CD45_E-Cadherin", "18S", "AlphaSMA_Vimentin"]
    np.testing.assert_array_equal(s.images["DAPI"].read(), sample.images["DAPI"].read())
    np.testing.assert_array_equal(s.images["ATP1A1_CD45_E-Cadherin"].read(), sample.images["membrane"].read())
    np.testing.assert_array_equal(s.images["AlphaSMA_Vimentin"].read(), extra["AlphaSMA/Vimentin"])


def test_missing_codec_is_reported(layout, tmp_path):
    d = _copy(layout, tmp_path)
    f = d / "morphology_focus" / "morphology_focus_0001.ome.tif"
    with tifffile.TiffFile(f, mode="r+") as tf:  # pretend the tiles are JPEG 2000 (XOA >= 2.0)
        tf.pages[0].tags["Compression"].overwrite(34712)
    s = sio.read_xenium(d, origin=ORIGIN)
    note = s.provenance["report"].get("morphology_focus_0001.ome.tif_codec_missing")
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        assert "imagecodecs" in note["message"]
    else:  # pragma: no cover - imagecodecs decodes JPEG 2000
        assert note is None


# ---------------------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,kind", [("auto", LabelImage), ("cells", LabelImage), ("boundaries", PolygonSegmentation)])
def test_cell_segmentation_sources(layout, tissue, mode, kind):
    sample, cells_mask, _ = tissue
    s = sio.read_xenium(layout, origin=ORIGIN, segmentation=mode)
    assert isinstance(s.segmentation, kind) and s.segmentation.shape == cells_mask.shape
    lid = s.adata.obs["label_id"]
    assert lid.dtype == np.int64 and (lid > 0).all() and lid.is_unique
    # the molecules line up with their own cell's mask: um -> (um - origin) / pixel_size
    assert _own_fraction(s) >= 0.95
    assert s.provenance["report"]["segmentation_check"]["inside_own_cell"] >= 0.95
    # the segmentation is the tissue's mask (traced polygons rasterise back to it)
    np.testing.assert_array_equal(_to_original(s, np.asarray(s.segmentation.read())), cells_mask)
    if kind is PolygonSegmentation:
        np.testing.assert_array_equal(lid.to_numpy(), np.arange(1, s.n_cells + 1))  # running 1..n


def test_mean_dapi_under_own_mask(layout, tissue):
    sample, cells_mask, _ = tissue
    dapi0 = sample.images["DAPI"].read().astype(np.float64)
    want = np.array([dapi0[cells_mask == i + 1].mean() for i in range(sample.n_cells)])
    for mode in ("cells", "boundaries"):
        s = sio.read_xenium(layout, origin=ORIGIN, segmentation=mode)
        dapi, seg = s.images["DAPI"].read().astype(np.float64), np.asarray(s.segmentation.read())
        got = np.array([dapi[seg == k].mean() for k in s.adata.obs["label_id"]])
        rows = [int(c.split("_")[1]) - 1 for c in s.cell_ids]
        np.testing.assert_array_equal(got, want[rows])  # exact for the raster; the polygons trace it exactly


def test_nucleus_segmentation(layout, tissue, tmp_path):
    sample, _, nuclei = tissue
    s = sio.read_xenium(layout, origin=ORIGIN, segmentation="nucleus")
    assert isinstance(s.segmentation, LabelImage) and s.segmentation.component == "masks/0"
    np.testing.assert_array_equal(_to_original(s, np.asarray(s.segmentation.read())), nuclei)
    assert s.provenance["report"]["segmentation_check"]["inside_own_cell"] >= 0.95  # overlaps_nucleus molecules
    # no masks and no cell boundaries: auto falls back to the nucleus boundaries, with a note
    d = _copy(layout, tmp_path)
    (d / "cells.zarr.zip").unlink()
    (d / "cell_boundaries.parquet").unlink()
    s2 = sio.read_xenium(d, origin=ORIGIN)
    assert isinstance(s2.segmentation, PolygonSegmentation)
    assert "segmentation_nucleus_only" in s2.provenance["report"]
    np.testing.assert_array_equal(_to_original(s2, np.asarray(s2.segmentation.read())), nuclei)


def test_wrong_origin_is_reported(layout):
    # the masks lie on the stains' grid: transcripts read with a wrong origin miss them (polygons move with them)
    s = sio.read_xenium(layout, origin=(ORIGIN[0] + 8.0, ORIGIN[1] - 6.0), segmentation="cells")
    rep = s.provenance["report"]
    assert rep["segmentation_check"]["inside_own_cell"] < 0.5 and "segmentation_misaligned" in rep


def test_segmentation_roundtrip(layout, tmp_path):
    for mode in ("cells", "boundaries"):
        s = sio.read_xenium(layout, origin=ORIGIN, segmentation=mode)
        back = sio.read(sio.write(s, tmp_path / f"{mode}.stmorph"))
        assert_samples_equal(s, back)
        assert type(back.segmentation) is type(s.segmentation)
        np.testing.assert_array_equal(np.asarray(back.segmentation.read()), np.asarray(s.segmentation.read()))
        np.testing.assert_array_equal(back.label_ids(), s.label_ids())


def test_segmentation_arguments(layout, tmp_path):
    with pytest.raises(StmorphInputError, match="segmentation="):
        sio.read_xenium(layout, origin=ORIGIN, segmentation="masks")
    d = _copy(layout, tmp_path)
    (d / "cells.zarr.zip").unlink()
    with pytest.raises(StmorphInputError, match="segmentation='cells'"):
        sio.read_xenium(d, origin=ORIGIN, segmentation="cells")
    s = sio.read_xenium(d, origin=ORIGIN)  # auto: the cell boundaries
    assert isinstance(s.segmentation, PolygonSegmentation)
    for f in ("cell_boundaries.parquet", "nucleus_boundaries.parquet"):
        (d / f).unlink()
    s = sio.read_xenium(d, origin=ORIGIN)
    assert s.segmentation is None and "no_segmentation" in s.provenance["report"]
    with pytest.raises(StmorphInputError, match="segmentation='boundaries'"):
        sio.read_xenium(d, origin=ORIGIN, segmentation="boundaries")


# ---------------------------------------------------------------------------------------------------------
# cells.zarr.zip of the other XOA versions: cell ids, seg_mask_value
# ---------------------------------------------------------------------------------------------------------
def test_xenium_cell_ids():
    ids = xenium_cell_id_strings(np.array([0, 1, 0x1234ABCD]), np.array([1, 1, 2]))
    assert ids.tolist() == ["aaaaaaaa-1", "aaaaaaab-1", "bcdeklmn-2"]
    pre, suf = xenium_cell_id_ints(ids)
    assert pre.tolist() == [0, 1, 0x1234ABCD] and suf.tolist() == [1, 1, 2]
    with pytest.raises(StmorphInputError):
        xenium_cell_id_ints(["cell_1"])


def test_xenium_ids_matched_by_id(tissue, tmp_path):
    """Xenium-style ids in every file, Xenium's pixel size: cells matched by the store's ids, still aligned."""
    sample, cells_mask, nuclei = tissue
    d = write_xenium_layout(sample, tmp_path / "x", origin_um=ORIGIN, nucleus_labels=nuclei, xenium_cell_ids=True,
                            pixel_size=0.2125)
    s = sio.read_xenium(d, origin=ORIGIN)
    assert s.cell_ids[0] == "aaaaaaab-1" and s.pixel_size == 0.2125
    np.testing.assert_allclose(s.molecules["x"].to_numpy(), sample.molecules["x"].to_numpy(), atol=1e-3)
    assert s.provenance["files"]["segmentation"]["cells_matched_by"] == "cell_id array of the store"
    assert _own_fraction(s) >= 0.95


def _rewrite_store(src: Path, dst: Path, edit) -> None:
    """Copy a cells.zarr.zip, changing it with ``edit(root)`` (a zarr group of an unzipped copy)."""
    import zarr

    tmp = dst.with_suffix(".dir")
    with zipfile.ZipFile(src) as zf:
        zf.extractall(tmp)
    edit(zarr.open_group(str(tmp), mode="r+"))
    dst.unlink()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(tmp).as_posix())
    shutil.rmtree(tmp)


def test_xoa1_seg_mask_value(layout, tissue, tmp_path):
    """XOA 1.3 - 1.x: no polygon_sets; seg_mask_value gives each cell row's label (here not row + 1)."""
    _, cells_mask, _ = tissue
    d = _copy(layout, tmp_path)
    zfile = d / "cells.zarr.zip"

    def edit(root):
        n = root["cell_id"].shape[0]
        new_label = 1000 + 7 * np.arange(n)[::-1]  # row i -> label 1000 + 7 (n - 1 - i)
        lut = np.concatenate([[0], new_label]).astype(np.uint32)
        root["masks/1"][...] = lut[root["masks/1"][...]]
        del root["polygon_sets"]
        root.create_array("seg_mask_value", data=new_label.astype(np.uint32))

    _rewrite_store(zfile, zfile, edit)
    s = sio.read_xenium(d, origin=ORIGIN, segmentation="cells")
    assert "seg_mask_value" in s.provenance["files"]["segmentation"]["label_rule"]
    assert (s.adata.obs["label_id"] >= 1000).all()
    assert _own_fraction(s) >= 0.95
    np.testing.assert_array_equal(_to_original(s, np.asarray(s.segmentation.read())), cells_mask)


def test_xoa1_0_plain_store(layout, tissue, tmp_path):
    """XOA < 1.3: integer cell ids, no label table: label i + 1 is cell row i."""
    _, cells_mask, _ = tissue
    d = _copy(layout, tmp_path)
    zfile = d / "cells.zarr.zip"

    def edit(root):
        n = root["cell_id"].shape[0]
        del root["polygon_sets"]
        del root["cell_id"]
        root.create_array("cell_id", data=np.arange(1, n + 1, dtype=np.uint32))

    _rewrite_store(zfile, zfile, edit)
    s = sio.read_xenium(d, origin=ORIGIN)
    info = s.provenance["files"]["segmentation"]
    assert "XOA < 1.3" in info["label_rule"] and info["cells_matched_by"] == "row order of the cells table"
    assert _own_fraction(s) >= 0.95
    np.testing.assert_array_equal(_to_original(s, np.asarray(s.segmentation.read())), cells_mask)


# ---------------------------------------------------------------------------------------------------------
# the real crop (no boundaries)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_crop_without_segmentation(xenium_crop_dir):
    s = sio.read_xenium(xenium_crop_dir, origin=(1062.0, 212.0))
    assert s.segmentation is None and "label_id" not in s.adata.obs
    assert "no_segmentation" in s.provenance["report"]
    assert list(s.images) == ["DAPI"] and s.images["DAPI"].shape == (1800, 2400)
    assert isinstance(s.images["DAPI"], StainImage)
    assert "molecules_outside_image" not in s.provenance["report"]
