"""read_generic with stains and a segmentation (label image or polygon table), and ``stmorph read generic``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.measure import find_contours
from typer.testing import CliRunner

import stmorph.io as sio
from stmorph import StmorphInputError, read_sample
from stmorph._image import LabelImage, PolygonSegmentation, labels_at, open_channels
from stmorph.cli import app
from stmorph.cli._read import parse_image, parse_mapping
from stmorph.datasets import synthetic_tissue

PS = 0.5  # micrometres per pixel of the tables in um
ORIGIN = (100.0, 50.0)  # um of pixel (0, 0)


# ---------------------------------------------------------------------------------------------------------------
# a synthetic tissue on disk
# ---------------------------------------------------------------------------------------------------------------
class Tissue:
    """Files of one synthetic tissue: molecules in um (no cell ids), stains, label image, polygon tables."""

    def __init__(self, d: Path):
        self.dir = d
        self.sample = s = synthetic_tissue(n_cells=60, n_types=3, n_genes=12, random_state=0)
        self.raster = s.segmentation.read().astype(np.int32)
        self.shape = self.raster.shape
        m = s.molecules
        self.truth_cell = m["cell_id"].astype("string").reset_index(drop=True)  # cell_<i> or <NA> (background)
        self.label_of_cell = s.adata.obs["label_id"].astype(np.int64)
        lab = self.label_of_cell.reindex(self.truth_cell.fillna("none").to_numpy()).to_numpy()
        self.truth_label = np.where(self.truth_cell.notna().to_numpy(), lab, 0).astype(np.int64)
        self.table = pd.DataFrame({
            "x_um": m["x"].to_numpy(np.float64) * PS + ORIGIN[0],
            "y_um": m["y"].to_numpy(np.float64) * PS + ORIGIN[1],
            "target": m["gene"].astype(str).to_numpy(),
        })
        self.table.to_csv(d / "tx.csv", index=False)
        self.dapi, self.membrane = s.images["DAPI"].read(), s.images["membrane"].read()
        tifffile.imwrite(d / "dapi.tif", self.dapi)
        tifffile.imwrite(d / "membrane.tif", self.membrane)
        tifffile.imwrite(d / "stains.ome.tif", np.stack([self.dapi, self.membrane]),
                         metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "membrane"]}})
        tifffile.imwrite(d / "labels.tif", self.raster)
        # polygons of the masks: contours at 0.5 pass between inside and outside pixel centres, so the polygons
        # rasterise back to the label image exactly
        rings = []
        for lab in np.unique(self.raster[self.raster > 0]):
            for k, c in enumerate(find_contours(np.pad(self.raster == lab, 1).astype(float), 0.5)):
                rings.append(pd.DataFrame({
                    "cell": f"c{lab}", "label": int(lab), "ring": k,
                    "vx": (c[:, 1] - 1) * PS + ORIGIN[0], "vy": (c[:, 0] - 1) * PS + ORIGIN[1],
                }))
        self.vertices = pd.concat(rings, ignore_index=True)
        self.vertices.to_csv(d / "polygons.csv", index=False)

    def columns(self, **extra: str | None) -> dict[str, str | None]:
        return {"x": "x_um", "y": "y_um", "gene": "target", **extra}


@pytest.fixture(scope="module")
def tissue(tmp_path_factory) -> Tissue:
    return Tissue(tmp_path_factory.mktemp("tissue"))


def _read(t: Tissue, **kwargs):
    kw = {"columns": t.columns(), "units": "um", "pixel_size": PS, "origin": ORIGIN} | kwargs
    return sio.read_generic(t.dir / "tx.csv", **kw)


def _check_assigned_from_masks(t: Tissue, s, id_of_label, label_of=lambda lab: lab) -> None:
    """Every molecule simulated in a cell is assigned to that cell; the others to the mask under them (or none).

    ``id_of_label`` / ``label_of``: the cell id and the segmentation label of the tissue's mask ``lab``.
    """
    got = s.molecules["cell_id"].reset_index(drop=True)
    inside = t.truth_label > 0
    want = np.array([id_of_label(v) for v in t.truth_label[inside]], dtype=object)
    np.testing.assert_array_equal(got[inside].to_numpy(dtype=object), want)
    # background molecules: the label under them (most lie outside every mask)
    m = t.sample.molecules
    under = labels_at(LabelImage(t.raster), m["x"].to_numpy(), m["y"].to_numpy())[~inside]
    bg = got[~inside].to_numpy(dtype=object, na_value=None)
    assert [None if v == 0 else id_of_label(v) for v in under] == list(bg)
    assert (under == 0).sum() > 0
    # counts: the simulated counts plus the background molecules falling in each mask
    truth = t.sample.adata
    for cid, lab in t.label_of_cell.items():
        row = s.adata[id_of_label(lab)]
        extra = int((under == lab).sum())
        assert row.X.sum() == truth[cid].X.sum() + extra
        assert int(row.obs["label_id"].iloc[0]) == label_of(lab)


# ---------------------------------------------------------------------------------------------------------------
# molecules assigned from the segmentation
# ---------------------------------------------------------------------------------------------------------------
def test_label_tiff_assigns_molecules(tissue):
    t = tissue
    s = _read(t, segmentation="labels.tif", images={"DAPI": "dapi.tif", "membrane": "membrane.tif"})
    assert isinstance(s.segmentation, LabelImage) and s.segmentation.shape == t.shape
    assert s.n_cells == len(t.label_of_cell)
    assert list(s.cell_ids) == [str(v) for v in sorted(t.label_of_cell)]  # ids: the labels, in label order
    np.testing.assert_array_equal(s.adata.obs["label_id"].to_numpy(), s.cell_ids.astype(int))
    assert s.adata.obs["label_id"].dtype == np.int64
    _check_assigned_from_masks(t, s, str)
    np.testing.assert_array_equal(s.images["DAPI"].read(), t.dapi)
    np.testing.assert_array_equal(s.images["membrane"].read(), t.membrane)
    assert s.pixel_size == PS
    seg = s.provenance["segmentation"]
    assert seg["kind"] == "raster" and seg["label_id_from"].startswith("segmentation")
    assert s.provenance["report"]["molecules_outside_masks"]["count"] > 0
    # molecules in pixels: the simulated positions
    np.testing.assert_allclose(s.molecules["x"].to_numpy(), t.sample.molecules["x"].to_numpy(), atol=1e-3)


def test_polygon_table_assigns_molecules(tissue):
    t = tissue
    cols = {"cell_id": "cell", "x": "vx", "y": "vy", "part": "ring"}
    s = _read(t, segmentation="polygons.csv", segmentation_columns=cols, images={"DAPI": "dapi.tif"})
    assert isinstance(s.segmentation, PolygonSegmentation) and s.segmentation.shape == t.shape
    # string ids get labels 1, 2, ... in table order: here c1, c2, ... -> 1, 2, ...
    np.testing.assert_array_equal(s.segmentation.read(), t.raster)
    _check_assigned_from_masks(t, s, lambda lab: f"c{lab}")
    assert s.provenance["segmentation"]["kind"] == "polygons"
    # without images, the grid spans the polygons and the molecules
    s2 = _read(t, segmentation="polygons.csv", segmentation_columns=cols)
    assert s2.segmentation.shape[0] <= t.shape[0] + 1 and s2.segmentation.shape[1] <= t.shape[1] + 1
    np.testing.assert_array_equal(s2.molecules["cell_id"].to_numpy(dtype=object, na_value=None),
                                  s.molecules["cell_id"].to_numpy(dtype=object, na_value=None))


def test_wkb_polygons_with_z_planes(tissue, tmp_path):
    shapely = pytest.importorskip("shapely")
    t = tissue
    rows = []
    for (lab,), g in t.vertices.groupby(["label"]):
        rings = [shapely.Polygon(r[["vx", "vy"]].to_numpy()) for _, r in g.groupby("ring")]
        geom = rings[0] if len(rings) == 1 else shapely.MultiPolygon(rings)
        for zi in (0, 1, 2):  # MERSCOPE repeats each cell per z-plane; plane 1 is kept (the middle one)
            moved = geom if zi == 1 else shapely.affinity.translate(geom, 40.0, 0.0)
            rows.append({"EntityID": 10_000_000_000 + int(lab), "ZIndex": zi, "Geometry": shapely.to_wkb(moved)})
    pd.DataFrame(rows).to_parquet(tmp_path / "cell_boundaries.parquet")
    s = _read(t, segmentation=tmp_path / "cell_boundaries.parquet", images={"DAPI": "dapi.tif"})
    assert isinstance(s.segmentation, PolygonSegmentation)
    np.testing.assert_array_equal(s.segmentation.read() - np.where(t.raster > 0, 10_000_000_000, 0), t.raster)
    _check_assigned_from_masks(t, s, lambda lab: str(10_000_000_000 + lab), lambda lab: 10_000_000_000 + lab)
    assert s.provenance["report"]["segmentation_z"]["z"] == 1
    # another plane by (path, z)
    s0 = _read(t, segmentation=(tmp_path / "cell_boundaries.parquet", 0), images={"DAPI": "dapi.tif"})
    assert s0.provenance["report"]["segmentation_z"] == {"z": 0, "n_planes": 3, "chosen": "argument"}
    with pytest.raises(StmorphInputError, match="no z-plane 7"):
        _read(t, segmentation=(tmp_path / "cell_boundaries.parquet", 7))


# ---------------------------------------------------------------------------------------------------------------
# cell ids given: obs["label_id"]
# ---------------------------------------------------------------------------------------------------------------
def test_cell_ids_and_a_label_image(tissue, tmp_path):
    t = tissue
    tab = t.table.assign(cell=t.truth_cell.to_numpy(dtype=object, na_value=""))
    tab.to_csv(tmp_path / "tx_ids.csv", index=False)
    # string ids: the label under most of the cell's molecules
    s = sio.read_generic(tmp_path / "tx_ids.csv", columns=t.columns(cell_id="cell"), units="um", pixel_size=PS,
                         origin=ORIGIN, segmentation=t.dir / "labels.tif")
    np.testing.assert_array_equal(s.adata.obs["label_id"].to_numpy(), t.label_of_cell.reindex(s.cell_ids).to_numpy())
    assert s.provenance["segmentation"]["label_id_from"] == "label under most of the cell's molecules"
    assert s.provenance["report"]["molecules_in_own_mask"] == 1.0
    assert s.molecules["cell_id"].isna().sum() == (t.truth_label == 0).sum()  # the table's assignment is kept
    # integer ids: the id itself
    lab_ids = np.where(t.truth_label > 0, t.truth_label.astype(str), "")
    t.table.assign(cell=lab_ids).to_csv(tmp_path / "tx_int.csv", index=False)
    s = sio.read_generic(tmp_path / "tx_int.csv", columns=t.columns(cell_id="cell"), units="um", pixel_size=PS,
                         origin=ORIGIN, segmentation=t.dir / "labels.tif")
    np.testing.assert_array_equal(s.adata.obs["label_id"].to_numpy(), s.cell_ids.astype(int))
    assert s.provenance["segmentation"]["label_id_from"] == "cell ids (integers)"
    # integer ids that are not the labels: read as told, with a warning in the report
    shifted = np.where(t.truth_label > 0, (t.truth_label + 1000).astype(str), "")
    t.table.assign(cell=shifted).to_csv(tmp_path / "tx_bad.csv", index=False)
    s = sio.read_generic(tmp_path / "tx_bad.csv", columns=t.columns(cell_id="cell"), units="um", pixel_size=PS,
                         origin=ORIGIN, segmentation=t.dir / "labels.tif")
    assert "molecules_outside_own_mask" in s.provenance["report"]
    # a cell table column names the labels
    ct = pd.DataFrame({"cell": t.label_of_cell.index, "cx": 0.0, "cy": 0.0, "mask": t.label_of_cell.to_numpy() * 1})
    ct["cx"] = t.sample.centroids[:, 0] * PS + ORIGIN[0]
    ct["cy"] = t.sample.centroids[:, 1] * PS + ORIGIN[1]
    ct.loc[0, "mask"] = np.nan  # a cell without a mask
    ct.to_csv(tmp_path / "cells.csv", index=False)
    s = sio.read_generic(tmp_path / "tx_ids.csv", columns=t.columns(cell_id="cell"), units="um", pixel_size=PS,
                         origin=ORIGIN, segmentation=t.dir / "labels.tif", cells=tmp_path / "cells.csv",
                         cell_columns={"cell_id": "cell", "x": "cx", "y": "cy", "label_id": "mask"})
    want = t.label_of_cell.reindex(s.cell_ids).to_numpy().copy()
    want[list(s.cell_ids).index(ct.loc[0, "cell"])] = 0
    np.testing.assert_array_equal(s.adata.obs["label_id"].to_numpy(), want)
    np.testing.assert_allclose(s.centroids, t.sample.centroids[[list(t.sample.cell_ids).index(c) for c in s.cell_ids]])
    assert s.provenance["segmentation"]["label_id_from"] == "cell table column"
    assert s.provenance["report"]["cells_without_mask"]["count"] == 1


def test_cell_ids_and_polygons_with_string_ids(tissue, tmp_path):
    t = tissue
    tab = t.table.assign(cell=np.where(t.truth_label > 0, np.char.add("c", t.truth_label.astype(str)), ""))
    tab.to_csv(tmp_path / "tx_c.csv", index=False)
    s = sio.read_generic(tmp_path / "tx_c.csv", columns=t.columns(cell_id="cell"), units="um", pixel_size=PS,
                         origin=ORIGIN, segmentation=t.dir / "polygons.csv",
                         segmentation_columns={"cell_id": "cell", "x": "vx", "y": "vy", "part": "ring"})
    assert s.provenance["segmentation"]["label_id_from"] == "polygon table cell ids"
    np.testing.assert_array_equal(s.adata.obs["label_id"].to_numpy(), [int(c[1:]) for c in s.cell_ids])


# ---------------------------------------------------------------------------------------------------------------
# images: multi-channel files, selections
# ---------------------------------------------------------------------------------------------------------------
def test_multichannel_images(tissue, tmp_path):
    t = tissue
    s = _read(t, segmentation="labels.tif", images={"IF": "stains.ome.tif"})
    assert sorted(s.images) == ["IF_DAPI", "IF_membrane"]
    np.testing.assert_array_equal(s.images["IF_membrane"].read(), t.membrane)
    s = _read(t, segmentation="labels.tif", images={**open_channels(t.dir / "stains.ome.tif"),
                                                     "mem2": ("stains.ome.tif", None, "membrane"),
                                                     "dapi2": {"path": "stains.ome.tif", "channel": 0}})
    assert sorted(s.images) == ["DAPI", "dapi2", "mem2", "membrane"]
    np.testing.assert_array_equal(s.images["mem2"].read(), t.membrane)
    np.testing.assert_array_equal(s.images["dapi2"].read(), t.dapi)
    # a z-stack: the middle plane, or the plane asked for
    tifffile.imwrite(tmp_path / "dapi_stack.tif", np.stack([t.dapi * 0, t.dapi, t.dapi * 0 + 1, t.dapi * 0 + 2, t.dapi]))
    s = _read(t, segmentation="labels.tif", images={"DAPI": tmp_path / "dapi_stack.tif",
                                                     "z3": (tmp_path / "dapi_stack.tif", 3)})
    assert (s.images["DAPI"].read() == 1).all() and (s.images["z3"].read() == 2).all()
    assert s.provenance["report"]["DAPI_z"] == {"z": 2, "n_planes": 5, "chosen": "middle plane"}
    with pytest.raises(StmorphInputError, match="no channel named 'CD3'"):
        _read(t, segmentation="labels.tif", images={"x": ("stains.ome.tif", None, "CD3")})
    with pytest.raises(StmorphInputError, match="out of range"):
        _read(t, segmentation="labels.tif", images={"x": (tmp_path / "dapi_stack.tif", 5)})
    with pytest.raises(StmorphInputError, match="no z axis"):
        _read(t, segmentation="labels.tif", images={"x": ("dapi.tif", 2)})


def test_bad_input(tissue, tmp_path):
    t = tissue
    with pytest.raises(StmorphInputError, match="no cell_id"):
        _read(t)
    with pytest.raises(StmorphInputError, match="no cell_id"):
        _read(t, columns=t.columns(cell_id=None))
    with pytest.raises(StmorphInputError, match="segmentation not found"):
        _read(t, segmentation="none.tif")
    tifffile.imwrite(tmp_path / "small.tif", t.raster[:100, :100])
    with pytest.raises(StmorphInputError, match="images are"):
        _read(t, segmentation=tmp_path / "small.tif", images={"DAPI": "dapi.tif"})
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([t.raster] * 5))
    with pytest.raises(StmorphInputError, match="z="):
        _read(t, segmentation=tmp_path / "stack.tif")
    s = _read(t, segmentation=(tmp_path / "stack.tif", 4))
    assert s.n_cells == len(t.label_of_cell)
    (tmp_path / "seg.xyz").write_text("?")
    with pytest.raises(StmorphInputError, match="label image or a polygon table"):
        _read(t, segmentation=tmp_path / "seg.xyz")
    t.vertices[["vx", "vy"]].to_csv(tmp_path / "no_ids.csv", index=False)
    with pytest.raises(StmorphInputError, match="no cell id column"):
        _read(t, segmentation=tmp_path / "no_ids.csv", segmentation_columns={"x": "vx", "y": "vy"})
    with pytest.raises(StmorphInputError, match="no vertex x/y"):
        _read(t, segmentation="polygons.csv", segmentation_columns={"cell_id": "cell"})
    with pytest.raises(StmorphInputError, match="one pixel grid"):
        _read(t, segmentation="labels.tif", images={"DAPI": "dapi.tif", "small": tmp_path / "small.tif"})
    with pytest.raises(StmorphInputError, match="no cell table"):
        _read(t, columns=t.columns(cell_id="target"), segmentation="labels.tif", cell_columns={"label_id": "m"})


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------
def test_parse_image_and_mapping():
    assert parse_image("DAPI=img/dapi.tif") == ("DAPI", "img/dapi.tif", None, None)
    assert parse_image("DAPI=img/stack.tif:3") == ("DAPI", "img/stack.tif", 3, None)
    assert parse_image("DAPI=stains.ome.tif:z=2,channel=DAPI") == ("DAPI", "stains.ome.tif", 2, "DAPI")
    assert parse_image("m=stains.ome.tif:c=1") == ("m", "stains.ome.tif", None, 1)
    assert parse_image("stains.ome.tif") == (None, "stains.ome.tif", None, None)
    assert parse_image("dir/stains.ome.tif:z=1") == (None, "dir/stains.ome.tif", 1, None)
    assert parse_mapping("x=gx, y=gy,gene=g,cell_id=", option="--columns") == {
        "x": "gx", "y": "gy", "gene": "g", "cell_id": None}
    with pytest.raises(StmorphInputError, match="KEY=COLUMN"):
        parse_mapping("x", option="--columns")


def test_cli_read_generic_end_to_end(tissue, tmp_path, monkeypatch):
    t = tissue
    monkeypatch.chdir(t.dir)
    out = tmp_path / "s.stmorph"
    args = ["read", "generic", str(t.dir / "tx.csv"), "--out", str(out), "--columns", "x=x_um,y=y_um,gene=target",
            "--units", "um", "--pixel-size", str(PS), "--origin", str(ORIGIN[0]), str(ORIGIN[1]),
            "--image", "DAPI=dapi.tif", "--image", "membrane=stains.ome.tif:channel=membrane",
            "--segmentation", "labels.tif"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert f"{len(t.label_of_cell)} cells x 12 genes" in res.output
    assert f"segmentation: raster {t.shape[0]} x {t.shape[1]} from " in res.output
    assert f"{len(t.label_of_cell)} of {len(t.label_of_cell)} cells have a mask" in res.output
    s = read_sample(out)
    assert isinstance(s.segmentation, LabelImage)
    np.testing.assert_array_equal(s.segmentation.read(), t.raster)
    assert sorted(s.images) == ["DAPI", "membrane"]
    np.testing.assert_array_equal(s.images["DAPI"].read(), t.dapi)
    np.testing.assert_array_equal(s.images["membrane"].read(), t.membrane)
    np.testing.assert_array_equal(s.label_ids(), s.cell_ids.astype(int))
    assert s.pixel_size == PS
    _check_assigned_from_masks(t, s, str)

    # polygons, a multi-channel file under its own channel names, a copy of the images
    out2 = tmp_path / "p.stmorph"
    args = ["read", "generic", str(t.dir / "tx.csv"), "--out", str(out2), "--columns", "x=x_um,y=y_um,gene=target",
            "--units", "um", "--pixel-size", str(PS), "--origin", str(ORIGIN[0]), str(ORIGIN[1]),
            "--image", "stains.ome.tif", "--segmentation", "polygons.csv",
            "--segmentation-columns", "cell_id=cell,x=vx,y=vy,part=ring", "--copy-images"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "segmentation: polygons" in res.output
    s = read_sample(out2)
    assert isinstance(s.segmentation, PolygonSegmentation)
    np.testing.assert_array_equal(s.segmentation.read(), t.raster)
    assert sorted(s.images) == ["DAPI", "membrane"]
    np.testing.assert_array_equal(s.images["membrane"].read(), t.membrane)
    assert str(out2) in str(s.images["DAPI"].path)  # copied into the sample folder
    _check_assigned_from_masks(t, s, lambda lab: f"c{lab}")


def test_cli_read_refuses_and_reports(tissue, tmp_path):
    t = tissue
    # generic without cell ids nor segmentation: a clear error, nothing written
    out = tmp_path / "bad.stmorph"
    res = CliRunner().invoke(app, ["read", "generic", str(t.dir / "tx.csv"), "--out", str(out),
                                   "--columns", "x=x_um,y=y_um,gene=target", "--units", "um", "--pixel-size", "0.5"])
    assert isinstance(res.exception, StmorphInputError) and "no cell_id" in str(res.exception)
    assert not out.exists()
    # options of the generic reader do not apply to a Baysor folder
    from test_io_layouts import make_baysor

    d = make_baysor(tmp_path / "b")
    for opt in (["--columns", "x=a,y=b,gene=c"], ["--units", "um"], ["--segmentation-columns", "cell_id=c"]):
        res = CliRunner().invoke(app, ["read", "baysor", str(d), "--out", str(tmp_path / "o"), *opt])
        assert res.exit_code != 0 and "do not apply" in str(res.exception), opt
    assert not (tmp_path / "o").exists()
    # generic with cell ids and no segmentation: the summary says so
    t.table.assign(cell=t.truth_cell.to_numpy(dtype=object, na_value="")).to_csv(tmp_path / "ids.csv", index=False)
    res = CliRunner().invoke(app, ["read", "generic", str(tmp_path / "ids.csv"), "--out", str(tmp_path / "i.stmorph"),
                                   "--columns", "x=x_um,y=y_um,gene=target,cell_id=cell", "--units", "um",
                                   "--pixel-size", "0.5", "--origin", str(ORIGIN[0]), str(ORIGIN[1])])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "segmentation: none" in res.output
    assert read_sample(tmp_path / "i.stmorph").segmentation is None


def test_cli_image_goes_to_any_reader_that_takes_images(tissue, tmp_path):
    t = tissue
    seen: dict = {}

    def read_fake(path, *, images=None, segmentation=None):
        seen.update(images=images, segmentation=segmentation)
        return sio.read_generic(t.dir / "tx.csv", columns=t.columns(), units="um", pixel_size=PS, origin=ORIGIN,
                                images=images, segmentation=segmentation)

    sio.register_reader("fake_vendor_for_test", detect=None, read=read_fake)
    try:
        res = CliRunner().invoke(app, [
            "read", "fake_vendor_for_test", str(t.dir), "--out", str(tmp_path / "f.stmorph"),
            "--image", f"DAPI={t.dir / 'dapi.tif'}", "--image", f"m={t.dir / 'stains.ome.tif'}:c=membrane",
            "--segmentation", f"{t.dir / 'labels.tif'}",
        ])
        assert res.exit_code == 0, (res.output, res.exception)
        assert seen["images"]["DAPI"] == str(t.dir / "dapi.tif")  # a plain path as given
        assert seen["images"]["m"].channel == 1  # a channel selection: a ready StainImage
        assert seen["segmentation"] == str(t.dir / "labels.tif")
        s = read_sample(tmp_path / "f.stmorph")
        np.testing.assert_array_equal(s.images["m"].read(), t.membrane)
        # --columns does not apply to it
        res = CliRunner().invoke(app, ["read", "fake_vendor_for_test", str(t.dir), "--out", str(tmp_path / "g"),
                                       "--columns", "x=a,y=b,gene=c"])
        assert "do not apply" in str(res.exception) and "--columns" in str(res.exception)
    finally:
        sio._registry._READERS.pop("fake_vendor_for_test", None)
    # a reader without images= refuses --image before opening anything
    from test_io_layouts import make_baysor

    d = make_baysor(tmp_path / "b")
    res = CliRunner().invoke(app, ["read", "baysor", str(d), "--out", str(tmp_path / "o"), "--image", "X=none.tif"])
    assert "do not apply" in str(res.exception) and "--image" in str(res.exception)
