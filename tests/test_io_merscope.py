"""The native Vizgen MERSCOPE reader on region folders written by ``write_merscope_layout``."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import stmorph
import stmorph.io as sio
from stmorph import StmorphInputError
from stmorph._image import PolygonSegmentation, labels_at
from stmorph.datasets import synthetic_tissue
from stmorph.io._merscope import read_merscope, write_merscope_layout
from stmorph.io._testing import assert_samples_equal

ORIGIN = (-1583.25, 2406.5)


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tissue():
    return synthetic_tissue(n_cells=60, n_types=3, n_genes=12, random_state=0)


@pytest.fixture(scope="module")
def region(tissue, tmp_path_factory) -> Path:
    return write_merscope_layout(tissue, tmp_path_factory.mktemp("ms") / "region_0", write_hdf5=True)


@pytest.fixture
def region_copy(region, tmp_path) -> Path:
    return Path(shutil.copytree(region, tmp_path / "region_0"))


def _source_ids(folder: Path, sample) -> list[str]:
    truth = pd.read_csv(folder / "cell_types.csv", dtype={"EntityID": str})
    m = dict(zip(truth["EntityID"], truth["source_cell_id"]))
    return [m[c] for c in sample.cell_ids]


def _inside_fraction(sample) -> float:
    mol = sample.molecules
    a = mol["cell_id"].notna().to_numpy()
    got = labels_at(sample.segmentation, mol["x"].to_numpy()[a], mol["y"].to_numpy()[a])
    lid = dict(zip(sample.cell_ids, sample.adata.obs["label_id"].to_numpy()))
    want = np.array([lid[c] for c in mol["cell_id"][a]])
    return float((got == want).mean())


def _mean_iou(sample, truth) -> float:
    """Mean IoU of each cell's rasterised polygon with its original mask (cells in the same order)."""
    seg = sample.segmentation.read()
    orig = truth.segmentation.read()
    ious = []
    for lid_new, lid_old in zip(sample.adata.obs["label_id"].to_numpy(), truth.adata.obs["label_id"].to_numpy()):
        a, b = orig == lid_old, seg == lid_new
        ious.append((a & b).sum() / max((a | b).sum(), 1))
    return float(np.mean(ious))


# ---------------------------------------------------------------------------------------------------------------
# the layout and the reader
# ---------------------------------------------------------------------------------------------------------------
def test_layout_files(region):
    names = {p.name for p in region.iterdir()}
    assert {"detected_transcripts.csv", "cell_by_gene.csv", "cell_metadata.csv", "cell_boundaries.parquet",
            "cell_boundaries", "images"} <= names
    imgs = {p.name for p in (region / "images").iterdir()}
    assert {f"mosaic_{s}_z{k}.tif" for s in ("DAPI", "Cellbound1") for k in range(7)} <= imgs
    A = np.loadtxt(region / "images" / "micron_to_mosaic_pixel_transform.csv")
    assert A.shape == (3, 3) and A[0, 2] != 0 and A[1, 2] != 0  # a real offset
    tx = pd.read_csv(region / "detected_transcripts.csv", nrows=5)
    assert list(tx.columns) == ["Unnamed: 0", "barcode_id", "global_x", "global_y", "global_z", "x", "y", "fov",
                                "gene", "transcript_id", "cell_id"]
    b = pq.read_table(region / "cell_boundaries.parquet")
    assert {"ID", "EntityID", "ZIndex", "Geometry", "Type", "ZLevel", "ParentID"} <= set(b.schema.names)
    assert b.schema.metadata[b"geo"]  # GeoParquet metadata, as geopandas writes
    assert len(list((region / "cell_boundaries").glob("feature_data_*.hdf5"))) >= 2


def test_read_cells_genes_counts(region, tissue):
    s = read_merscope(region)
    assert s.provenance["reader"] == "merscope"
    assert _source_ids(region, s) == list(tissue.cell_ids)
    assert s.gene_names == tissue.gene_names  # Blank-* barcodes excluded
    np.testing.assert_array_equal(s.adata.X, tissue.adata.X)
    assert s.pixel_size == pytest.approx(tissue.pixel_size)
    assert s.adata.obs["EntityID"].astype(str).tolist() == list(s.cell_ids)
    assert s.adata.obs["label_id"].tolist() == list(range(1, s.n_cells + 1))
    assert s.adata.obs["label_id"].dtype == np.int64
    assert {"fov", "volume", "center_x", "center_y"} <= set(s.adata.obs.columns)
    # centroids: polygon centroids of the traced masks, within a pixel of the mask centroids
    np.testing.assert_allclose(s.centroids, tissue.centroids, atol=0.6)
    rep = s.provenance["report"]
    assert rep["z"]["z"] == 3 and rep["z"]["planes"] == list(range(7))
    assert rep["control_molecules_excluded"] > 0
    assert rep["cells_counts_differ_from_transcripts"] == 0


def test_molecules_in_pixels(region, tissue):
    s = read_merscope(region)
    m = s.molecules
    assert len(m) == len(tissue.molecules)  # controls dropped, background kept (unassigned)
    np.testing.assert_allclose(np.sort(m["x"].to_numpy()), np.sort(tissue.molecules["x"].to_numpy()), atol=1e-3)
    np.testing.assert_allclose(np.sort(m["y"].to_numpy()), np.sort(tissue.molecules["y"].to_numpy()), atol=1e-3)
    assert int(m["cell_id"].isna().sum()) == int(tissue.molecules["cell_id"].isna().sum())
    assert set(np.unique(m["z"])) <= set(range(7))
    assert s.provenance["z_units"].startswith("z-plane index")


def test_stains(region, tissue):
    s = read_merscope(region)
    assert list(s.images) == ["DAPI", "Cellbound1"]
    # the middle plane (z=3) is the sample's own image, the others defocused
    np.testing.assert_array_equal(s.images["DAPI"].read(), tissue.images["DAPI"].read())
    np.testing.assert_array_equal(s.images["Cellbound1"].read(), tissue.images["membrane"].read())
    s1 = read_merscope(region, z=1, stains=["DAPI"])
    assert list(s1.images) == ["DAPI"]
    assert s1.images["DAPI"].path.name == "mosaic_DAPI_z1.tif"
    assert s1.provenance["report"]["z"] == {"z": 1, "planes": list(range(7)), "chosen": "argument"}
    assert read_merscope(region, stains=[]).images == {}


def test_segmentation_from_parquet(region, tissue):
    s = read_merscope(region)
    assert isinstance(s.segmentation, PolygonSegmentation)
    assert s.segmentation.shape == tissue.images["DAPI"].shape
    assert s.provenance["segmentation"]["source"] == "parquet"
    assert _inside_fraction(s) >= 0.95
    assert _mean_iou(s, tissue) > 0.9


def test_segmentation_from_hdf5(region, tissue):
    s = read_merscope(region, boundaries="hdf5")
    assert s.provenance["segmentation"]["source"] == "hdf5"
    assert _inside_fraction(s) >= 0.95
    assert _mean_iou(s, tissue) > 0.9
    np.testing.assert_array_equal(s.segmentation.read(), read_merscope(region).segmentation.read())


def test_hdf5_when_no_parquet_and_nearest_plane(region_copy, tissue):
    (region_copy / "cell_boundaries.parquet").unlink()
    files = sorted((region_copy / "cell_boundaries").glob("feature_data_*.hdf5"))
    with h5py.File(files[0], "a") as h:
        key = next(iter(h["featuredata"].keys()))
        for p in list(h["featuredata"][key]["zIndex_3"].keys()):
            del h["featuredata"][key]["zIndex_3"][p]
    s = read_merscope(region_copy)  # auto: the older HDF5 boundaries
    assert s.provenance["segmentation"]["source"] == "hdf5"
    assert s.provenance["report"]["cells_polygon_from_other_plane"] == 1
    assert (s.adata.obs["label_id"] > 0).all()
    assert _mean_iou(s, tissue) > 0.9


def test_nearest_plane_and_multipolygons_parquet(region_copy, tissue):
    import shapely

    f = region_copy / "cell_boundaries.parquet"
    t = pq.read_table(f)
    df = t.to_pandas()
    first = sorted(df["EntityID"].unique())[:5]
    drop = df["EntityID"].isin(first) & (df["ZIndex"] == 3)
    df = df[~drop]
    # a cell whose polygon at z=3 is empty keeps its polygon from z=2 or z=4
    e6 = sorted(df["EntityID"].unique())[5]
    df.loc[(df["EntityID"] == e6) & (df["ZIndex"] == 3), "Geometry"] = shapely.to_wkb(shapely.MultiPolygon())
    # a cell whose polygon at z=3 is corrupt WKB: reported, the nearest plane used instead
    e8 = sorted(df["EntityID"].unique())[7]
    df.loc[(df["EntityID"] == e8) & (df["ZIndex"] == 3), "Geometry"] = b"\x01\x06\x00"
    # a cell with two parts: its polygon plus a small square far away
    e7 = sorted(df["EntityID"].unique())[6]
    sel = (df["EntityID"] == e7) & (df["ZIndex"] == 3)
    g = shapely.from_wkb(df.loc[sel, "Geometry"].iloc[0])
    sq = shapely.box(ORIGIN[0] + 2 * 0.5, ORIGIN[1] + 2 * 0.5, ORIGIN[0] + 6 * 0.5, ORIGIN[1] + 6 * 0.5)
    df.loc[sel, "Geometry"] = shapely.to_wkb(shapely.MultiPolygon([*g.geoms, sq]))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), f)
    s = read_merscope(region_copy)
    assert s.provenance["report"]["cells_polygon_from_other_plane"] == 7
    assert s.provenance["report"]["boundaries_invalid_geometry"]["count"] == 1
    assert _mean_iou(s, tissue) > 0.9
    assert (s.adata.obs["label_id"] > 0).all()
    lid7 = int(s.adata.obs["label_id"].iloc[6])
    assert sorted(s.segmentation.vertices.query("label_id == @lid7")["part"].unique()) == [0, 1]
    win = s.segmentation.window(0, 10, 0, 10)
    assert (win[3:6, 3:6] == lid7).all()


def test_older_export(region_copy, tissue):
    """Older exports: no cell_id in the transcripts, unnamed id column of cell_metadata, HDF5 boundaries."""
    f = region_copy / "detected_transcripts.csv"
    pd.read_csv(f, index_col=0).drop(columns=["cell_id"]).to_csv(f)
    meta = region_copy / "cell_metadata.csv"
    m = pd.read_csv(meta, index_col=0)
    m.index.name = None
    m.to_csv(meta)
    (region_copy / "cell_boundaries.parquet").unlink()
    s = read_merscope(region_copy)
    assert _source_ids(region_copy, s) == list(tissue.cell_ids)
    np.testing.assert_array_equal(s.adata.X, tissue.adata.X)
    assert s.molecules["cell_id"].isna().all()
    assert s.provenance["report"]["molecules_unassigned_no_cell_id"]["count"] == len(s.molecules)
    assert s.provenance["segmentation"]["source"] == "hdf5"
    assert _mean_iou(s, tissue) > 0.9


def test_counts_from_transcripts_without_cell_tables(region_copy, tissue):
    (region_copy / "cell_by_gene.csv").unlink()
    (region_copy / "cell_metadata.csv").unlink()
    s = read_merscope(region_copy)
    assert s.provenance["counts_source"].startswith("detected_transcripts.csv")
    assert s.provenance["centroid_source"].startswith("polygon centroids")
    ids = _source_ids(region_copy, s)
    assert ids == [c for c in tissue.cell_ids if c in set(ids)]  # EntityID (numeric) order = the sample's order
    ref = tissue.adata[ids]
    assert s.gene_names == sorted(tissue.gene_names)
    np.testing.assert_array_equal(s.adata.X, ref[:, s.gene_names].X)
    np.testing.assert_allclose(s.centroids, ref.obsm["spatial"], atol=0.6)
    assert _inside_fraction(s) >= 0.95


def test_controls_labels_and_genes(region, tissue):
    s = read_merscope(region, exclude_controls=False)
    blanks = [g for g in s.gene_names if g.startswith("Blank-")]
    assert len(blanks) == 5 and s.adata[:, blanks].X.sum() > 0
    assert s.molecules["gene"].astype(str).str.startswith("Blank-").any()
    lab = read_merscope(region, labels="cell_types.csv")
    np.testing.assert_array_equal(lab.adata.obs["cell_type"].astype(str), tissue.adata.obs["cell_type"].astype(str))
    g = read_merscope(region, genes=["gene_003", "gene_001"])
    assert g.gene_names == ["gene_003", "gene_001"]
    with pytest.raises(StmorphInputError, match="absent"):
        read_merscope(region, genes=["nope"])


def test_roundtrip_with_segmentation(region, tmp_path):
    s = read_merscope(region)
    out = s.write(tmp_path / "s.stmorph")
    r = stmorph.read_sample(out)
    assert_samples_equal(s, r)
    assert isinstance(r.segmentation, PolygonSegmentation)
    assert r.segmentation.shape == s.segmentation.shape
    pd.testing.assert_frame_equal(r.segmentation.vertices, s.segmentation.vertices)
    np.testing.assert_array_equal(r.segmentation.read(), s.segmentation.read())


def test_autodetect(region):
    assert sio.detect_format(region) == "merscope"
    assert sio.detect_format(region / "detected_transcripts.csv") == "merscope"
    s = sio.read(region, z=2)
    assert s.provenance["reader"] == "merscope" and s.provenance["z"] == 2
    assert s.n_cells == 60
    assert sio.read(region / "detected_transcripts.csv").n_cells == 60


def test_without_images_or_boundaries(region_copy):
    for f in (region_copy / "images").glob("mosaic_*.tif"):
        f.unlink()
    s = read_merscope(region_copy)
    assert s.images == {} and s.segmentation is not None
    assert s.provenance["report"]["z"]["chosen"] == "middle plane of the cell boundaries"
    assert _inside_fraction(s) >= 0.95
    n = read_merscope(region_copy, boundaries=None)
    assert n.segmentation is None and n.provenance["report"]["no_boundaries"]["count"] == 1


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_missing_transform(region_copy, tissue):
    (region_copy / "images" / "micron_to_mosaic_pixel_transform.csv").unlink()
    with pytest.raises(StmorphInputError, match="micron_to_mosaic_pixel_transform") as e:
        read_merscope(region_copy)
    assert "pixel_size" in e.value.expected
    # without the transform's offset, micrometre 0 is pixel 0: the transcripts miss the mosaics entirely
    with pytest.raises(StmorphInputError, match="all .* molecules lie outside the"):
        read_merscope(region_copy, pixel_size=0.5)
    s = read_merscope(region_copy, pixel_size=0.5, stains=[])
    assert s.pixel_size == 0.5 and s.provenance["report"]["no_transform"]["count"] == 1
    np.testing.assert_allclose(s.centroids - np.array(ORIGIN) / 0.5, tissue.centroids, atol=0.6)


def test_bad_transform(region_copy):
    (region_copy / "images" / "micron_to_mosaic_pixel_transform.csv").write_text("2 0 1\n0 2 1\n")
    with pytest.raises(StmorphInputError, match=r"micron_to_mosaic_pixel_transform.*shape \(2, 3\)"):
        read_merscope(region_copy)


def test_bad_transcript_columns(region_copy):
    f = region_copy / "detected_transcripts.csv"
    tx = pd.read_csv(f, index_col=0)
    tx.rename(columns={"global_x": "gx"}).to_csv(f)
    with pytest.raises(StmorphInputError, match=r"detected_transcripts.csv.*column 'global_x'") as e:
        read_merscope(region_copy)
    assert e.value.column == "global_x" and e.value.file.endswith("detected_transcripts.csv")


def test_bad_cell_tables(region_copy):
    meta = region_copy / "cell_metadata.csv"
    m = pd.read_csv(meta)
    m.drop(columns=["center_x"]).to_csv(meta, index=False)
    with pytest.raises(StmorphInputError, match=r"cell_metadata.csv.*column 'center_x'"):
        read_merscope(region_copy)
    m.to_csv(meta, index=False)
    cbg = region_copy / "cell_by_gene.csv"
    c = pd.read_csv(cbg)
    c["gene_002"] = "x"
    c.to_csv(cbg, index=False)
    with pytest.raises(StmorphInputError, match=r"cell_by_gene.csv.*column 'gene_002'.*non-numeric"):
        read_merscope(region_copy)


def test_bad_boundaries(region_copy):
    f = region_copy / "cell_boundaries.parquet"
    t = pq.read_table(f)
    pq.write_table(t.drop(["Geometry"]), f)
    with pytest.raises(StmorphInputError, match=r"cell_boundaries.parquet.*column 'Geometry'"):
        read_merscope(region_copy)
    with pytest.raises(StmorphInputError, match="cell boundary file not found"):
        read_merscope(region_copy, boundaries="nowhere.parquet")
    shutil.rmtree(region_copy / "cell_boundaries")
    with pytest.raises(StmorphInputError, match="boundaries='hdf5' but the file is missing"):
        read_merscope(region_copy, boundaries="hdf5")


def test_bad_z_and_stain(region):
    with pytest.raises(StmorphInputError, match=r"no mosaic image at z-plane 9.*\[0, 1, 2, 3, 4, 5, 6\]"):
        read_merscope(region, z=9)
    with pytest.raises(StmorphInputError, match=r"stain\(s\) \['PolyT'\].*present at z=3: \['Cellbound1', 'DAPI'\]"):
        read_merscope(region, stains=["PolyT"])


def test_not_a_region(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StmorphInputError, match="neither detected_transcripts.csv nor cell_by_gene.csv"):
        read_merscope(tmp_path / "empty", pixel_size=0.1)
    with pytest.raises(StmorphInputError, match="folder not found"):
        read_merscope(tmp_path / "nope")


def test_writer_is_atomic_and_checks(tissue, tmp_path):
    out = write_merscope_layout(tissue, tmp_path / "r")
    with pytest.raises(FileExistsError):
        write_merscope_layout(tissue, out)
    no_seg = tissue.copy()
    no_seg.segmentation = None
    with pytest.raises(StmorphInputError, match="no segmentation"):
        write_merscope_layout(no_seg, tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
