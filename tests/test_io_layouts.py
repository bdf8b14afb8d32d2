"""Readers on tiny hand-made folders (Baysor, MERFISH tables, Xenium, MERSCOPE-like, CosMx-like) + bad input."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import stmorph.io as sio
from stmorph import SpatialSample, StmorphInputError
from stmorph.io._testing import assert_samples_equal


# ---------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------
def _stack(nz: int, base: int, shape=(64, 64)) -> np.ndarray:
    return np.stack([np.full(shape, base + 10 * i, dtype=np.uint16) for i in range(nz)])


def make_baysor(d: Path, *, counts: bool = True, labels: bool = True, images: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    seg = pd.DataFrame(
        {
            "x": [10.0, 12.0, 30.0, 31.0, 50.0, 5.0, 52.0],
            "y": [10.0, 11.0, 20.0, 21.0, 40.0, 5.0, 41.0],
            "z": [0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 1.0],
            "gene": ["g1", "g2", "g2", "g2", "g1", "g1", "g3"],
            "cell": [1, 1, 2, 2, 3, 0, 3],
            "is_noise": ["false", "false", "false", "false", "true", "false", "false"],
        }
    )
    seg.to_csv(d / "segmentation.csv", index=False)
    stats = pd.DataFrame(
        {
            "cell": [1, 2, 3, 4],
            "x": [11.0, 30.5, 52.0, 60.0],
            "y": [10.5, 20.5, 41.0, 60.0],
            "n_transcripts": [2, 2, 1, 0],
            "area": [30.0, 25.0, np.nan, 10.0],
        }
    )
    stats.to_csv(d / "segmentation_cell_stats.csv", index=False)
    if counts:
        ct = pd.DataFrame({"gene": ["g1", "g2", "g3"], "1": [1, 1, 0], "2": [0, 2, 0], "3": [0, 0, 1], "4": [0, 0, 0]})
        ct.to_csv(d / "segmentation_counts.tsv", sep="\t", index=False)
    if labels:
        pd.DataFrame({"cell": [1, 2, 3, 4], "leiden_final": ["A", "B", "Removed", "A"]}).to_csv(
            d / "cell_assignment.csv", index=False
        )
    if images:
        tifffile.imwrite(d / "dapi_stack.tif", _stack(3, 100))
        tifffile.imwrite(d / "membrane_stack.tif", _stack(3, 500))
    return d


def make_merfish_tables(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"cell_index": [1, 2, 3, 4, 5], "G1": [1, 0, 3, 2, 0], "G2": [0, 5, 1, 1, 7]}).to_csv(
        d / "gene_counts.csv", index=False
    )
    pd.DataFrame(
        {
            "cell_index": [1, 2, 3, 4, 5],
            "x": [10.0, 20.0, np.nan, 40.0, 50.0],
            "y": [1.0, 2.0, 3.0, 4.0, 5.0],
            "area": [100.0, np.nan, 80.0, 90.0, 70.0],
        }
    ).to_csv(d / "cell_meta_data.csv", index=False)
    pd.DataFrame({"cell": [1, 2, 3, 4, 5], "leiden_final": ["T", "B", "T", "Removed", "B"]}).to_csv(
        d / "cell_assignment.csv", index=False
    )
    emb = pd.DataFrame({"cell_index": [1, 2, 3, 4, 5], "0": [0.5, 1.5, 2.5, 3.5, 4.5], "1": [-1.0, -2.0, -3.0, -4.0, -5.0]})
    emb.to_csv(d / "stain_vae_embedding.csv", index=False)
    return d


XEN_PS, XEN_ORIGIN = 0.5, (100.0, 200.0)


def _xenium_transcripts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transcript_id": np.arange(8),
            "cell_id": [7, 7, 9, 9, -1, 7, 9, 9],
            "overlaps_nucleus": [1, 0, 1, 1, 0, 0, 0, 1],
            "feature_name": ["EPCAM", "CD3E", "EPCAM", "EPCAM", "CD3E", "NegControlProbe_00042", "BLANK_0001", "CD3E"],
            "x_location": [105.0, 106.0, 120.0, 121.0, 110.0, 105.5, 120.5, 122.0],
            "y_location": [205.0, 206.0, 210.0, 211.0, 215.0, 205.5, 210.5, 212.0],
            "z_location": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "qv": [40.0, 10.0, 40.0, 40.0, 40.0, 40.0, 40.0, 30.0],
        }
    )


def make_xenium(d: Path, *, cells: bool = True, parquet: bool = False, experiment: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tx = _xenium_transcripts()
    if parquet:
        tx = tx.assign(
            feature_name=[s.encode() for s in tx["feature_name"]],
            cell_id=[("UNASSIGNED" if c == -1 else f"cell-{c}") for c in tx["cell_id"]],
        )
        tx.to_parquet(d / "transcripts.parquet", index=False)
    else:
        with gzip.open(d / "transcripts.csv.gz", "wt") as fh:
            tx.to_csv(fh)  # with the unnamed index column, as the real files have
    if cells:
        ids = ["cell-7", "cell-9", "cell-11"] if parquet else [7, 9, 11]
        c = pd.DataFrame(
            {"cell_id": ids, "x_centroid": [105.5, 121.0, 130.0], "y_centroid": [205.5, 211.0, 220.0], "cell_area": [10.0, 12.0, 8.0]}
        )
        if parquet:
            c.to_parquet(d / "cells.parquet", index=False)
        else:
            c.to_csv(d / "cells.csv.gz", index=False, compression="gzip")
    if experiment:
        (d / "experiment.xenium").write_text(json.dumps({"pixel_size": XEN_PS, "run_name": "tiny"}))
    img = (np.arange(60 * 80, dtype=np.uint16).reshape(60, 80))
    tifffile.imwrite(d / "morphology_mip.tif", img)
    return d


def make_merscope(d: Path) -> Path:
    (d / "images").mkdir(parents=True, exist_ok=True)
    big = 1_234_567_890_123
    tx = pd.DataFrame(
        {
            "barcode_id": [0, 1, 2, 3, 4],
            "global_x": [10.0, 11.0, 20.0, 21.0, 15.0],
            "global_y": [5.0, 6.0, 8.0, 9.0, 7.0],
            "global_z": [3.0, 3.0, 2.0, 2.0, 1.0],
            "gene": ["Vim", "Blank-7", "Cd4", "Vim", "Cd4"],
            "fov": [0, 0, 0, 0, 0],
            "cell_id": [big, big, big + 1, big + 1, -1],
        }
    )
    tx.to_csv(d / "detected_transcripts.csv")
    np.savetxt(d / "images" / "micron_to_mosaic_pixel_transform.csv", np.array([[2.0, 0, 4.0], [0, 2.0, 1.0], [0, 0, 1]]))
    cm = pd.DataFrame({"fov": [0, 0], "volume": [50.0, 60.0], "center_x": [10.5, 20.5], "center_y": [5.5, 8.5]}, index=[big, big + 1])
    cm.to_csv(d / "cell_metadata.csv")
    tifffile.imwrite(d / "images" / "mosaic_DAPI_z3.tif", np.full((30, 60), 7, dtype=np.uint16))
    return d


def make_cosmx(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tx = pd.DataFrame(
        {
            "fov": [1, 1, 2, 2, 2, 1],
            "cell_ID": [1, 1, 1, 1, 0, 1],
            "x_global_px": [1010.0, 1012.0, 1040.0, 1042.0, 1050.0, 1011.0],
            "y_global_px": [2005.0, 2007.0, 2020.0, 2022.0, 2030.0, 2006.0],
            "z": [0, 1, 0, 1, 2, 0],
            "target": ["KRT19", "CD74", "CD74", "CD74", "KRT19", "NegPrb3"],
        }
    )
    tx.to_csv(d / "Lung5_Rep1_tx_file.csv", index=False)
    meta = pd.DataFrame(
        {"fov": [1, 2], "cell_ID": [1, 1], "CenterX_global_px": [1011.0, 1041.0], "CenterY_global_px": [2006.0, 2021.0], "Area": [300, 400]}
    )
    meta.to_csv(d / "Lung5_Rep1_metadata_file.csv", index=False)
    return d


def _roundtrip(s: SpatialSample, tmp_path: Path) -> None:
    out = sio.write(s, tmp_path / "rt.stmorph")
    r = sio.read(out)  # auto-detected as "stmorph"
    assert sio.detect_format(out) == "stmorph"
    assert_samples_equal(s, r)


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------
def test_registry_lists_and_detects(tmp_path):
    fm = sio.available_formats()
    for f in ("stmorph", "xenium", "baysor", "merfish_tables", "merscope", "cosmx", "generic", "spatialdata"):
        assert f in fm
    assert sio.detect_format(make_baysor(tmp_path / "b")) == "baysor"
    assert sio.detect_format(make_xenium(tmp_path / "x")) == "xenium"
    assert sio.detect_format(make_merfish_tables(tmp_path / "m")) == "merfish_tables"
    assert sio.detect_format(make_merscope(tmp_path / "v")) == "merscope"
    assert sio.detect_format(make_cosmx(tmp_path / "c")) == "cosmx"
    (tmp_path / "empty").mkdir()
    with pytest.raises(StmorphInputError, match="cannot tell the format"):
        sio.read(tmp_path / "empty")
    with pytest.raises(StmorphInputError, match="unknown format"):
        sio.read(tmp_path / "b", format="nope")


def test_register_custom_reader(tmp_path):
    base = sio.read_baysor(make_baysor(tmp_path / "b"))
    seen = []

    def my_reader(path, **kw):
        seen.append((Path(path), kw))
        return base

    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "mylab.json").write_text("{}")
    sio.register_reader("mylab_test", detect=lambda p: (p / "mylab.json").exists(), read=my_reader, overwrite=True)
    try:
        assert sio.read(tmp_path / "lab", flag=1) is base
        assert seen[0][1] == {"flag": 1}
        with pytest.raises(ValueError, match="already registered"):
            sio.register_reader("mylab_test", detect=None, read=my_reader)
    finally:
        sio._registry._READERS.pop("mylab_test", None)


# ---------------------------------------------------------------------------------------------------------
# Baysor
# ---------------------------------------------------------------------------------------------------------
def test_baysor_exact(tmp_path, caplog):
    d = make_baysor(tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="stmorph.io"):
        s = sio.read(d)
    assert s.provenance["reader"] == "baysor"
    assert list(s.cell_ids) == ["1", "2", "4"]  # cell 3 "Removed"
    assert s.gene_names == ["g1", "g2", "g3"]
    np.testing.assert_array_equal(s.adata.X, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_array_equal(s.centroids, [[11.0, 10.5], [30.5, 20.5], [60.0, 60.0]])
    assert s.adata.obs["cell_type"].tolist() == ["A", "B", "A"]
    assert s.adata.obs["area"].tolist() == [30.0, 25.0, 10.0]
    # noise molecule dropped, 6 kept; cell 3's molecule is unassigned after its cell was dropped
    assert len(s.molecules) == 6
    assert s.molecules["cell_id"].isna().sum() == 2
    np.testing.assert_array_equal(s.molecules["z"].to_numpy(), [0, 1, 0, 0, 0, 1])
    # middle plane of a 3-plane stack
    assert s.images["DAPI"].read()[0, 0] == 110 and s.images["membrane"].read()[0, 0] == 510
    assert s.provenance["z"] == {"DAPI": 1, "membrane": 1}
    rep = s.provenance["report"]
    assert rep["cells_excluded_label"]["count"] == 1
    assert rep["cells_without_molecules"]["count"] == 1  # cell 4
    assert rep["molecules_noise_dropped"] == 1
    assert "labelled ['Removed']" in caplog.text
    _roundtrip(s, tmp_path)


def test_baysor_counts_from_molecules_and_z(tmp_path):
    d = make_baysor(tmp_path / "b", counts=False, labels=False)
    s = sio.read_baysor(d, z=2, pixel_size=0.108)
    assert list(s.cell_ids) == ["1", "2", "3", "4"]
    np.testing.assert_array_equal(s.adata.X, [[1, 1, 0], [0, 2, 0], [0, 0, 1], [0, 0, 0]])
    assert s.images["DAPI"].read()[5, 5] == 120 and s.pixel_size == 0.108
    assert "cell_type" not in s.adata.obs
    with pytest.raises(StmorphInputError, match="out of range"):
        sio.read_baysor(d, z=3)


def test_baysor_string_ids_and_stats_only_cells(tmp_path):
    d = make_baysor(tmp_path / "b", counts=False, labels=False, images=False)
    seg = pd.read_csv(d / "segmentation.csv")
    seg["cell"] = seg["cell"].map(lambda c: "" if c == 0 else f"CR{c}-a").astype(object)
    seg.loc[seg["cell"] == "", "cell"] = np.nan
    seg.to_csv(d / "segmentation.csv", index=False)
    st = pd.read_csv(d / "segmentation_cell_stats.csv")
    st["cell"] = [f"CR{c}-a" for c in st["cell"]]
    st.to_csv(d / "segmentation_cell_stats.csv", index=False)
    s = sio.read_baysor(d)
    assert list(s.cell_ids) == ["CR1-a", "CR2-a", "CR3-a", "CR4-a"]
    assert s.molecule_index().counts_per_cell().tolist() == [2, 2, 1, 0]


def test_baysor_missing_file_and_column(tmp_path):
    d = make_baysor(tmp_path / "b")
    seg = pd.read_csv(d / "segmentation.csv").drop(columns="gene")
    seg.to_csv(d / "segmentation.csv", index=False)
    with pytest.raises(StmorphInputError, match=r"segmentation.csv.*column 'gene'"):
        sio.read_baysor(d)
    (d / "segmentation.csv").unlink()
    with pytest.raises(StmorphInputError, match="segmentation.csv"):
        sio.read_baysor(d)
    with pytest.raises(StmorphInputError, match="not found"):
        sio.read_baysor(tmp_path / "nowhere")


def test_baysor_tables_disagree(tmp_path, caplog):
    d = make_baysor(tmp_path / "b", labels=False, images=False)
    ct = pd.read_csv(d / "segmentation_counts.tsv", sep="\t").drop(columns="4")
    ct.to_csv(d / "segmentation_counts.tsv", sep="\t", index=False)
    with caplog.at_level(logging.WARNING, logger="stmorph.io"):
        s = sio.read_baysor(d)
    assert list(s.cell_ids) == ["1", "2", "3"]
    assert s.provenance["report"]["cells_only_in_stats"]["count"] == 1
    ct.columns = ["gene", "91", "92", "93"]
    ct.to_csv(d / "segmentation_counts.tsv", sep="\t", index=False)
    with pytest.raises(StmorphInputError, match="do not overlap"):
        sio.read_baysor(d)


def test_baysor_labels_partial_and_disjoint(tmp_path):
    d = make_baysor(tmp_path / "b", images=False)
    pd.DataFrame({"cell": [1, 2, 99], "leiden_final": ["A", "B", "C"]}).to_csv(d / "cell_assignment.csv", index=False)
    s = sio.read_baysor(d)
    assert list(s.cell_ids) == ["1", "2"]
    rep = s.provenance["report"]
    assert rep["cells_without_label"]["count"] == 2 and rep["labels_without_cell"]["count"] == 1
    pd.DataFrame({"cell": [98, 99], "leiden_final": ["A", "C"]}).to_csv(d / "cell_assignment.csv", index=False)
    with pytest.raises(StmorphInputError, match="cell_assignment.csv.*no cell id"):
        sio.read_baysor(d)
    pd.DataFrame({"cell": [1, 2], "type": ["A", "C"]}).to_csv(d / "cell_assignment.csv", index=False)
    with pytest.raises(StmorphInputError, match="column 'leiden_final'"):
        sio.read_baysor(d)


def test_baysor_nan_coordinates_and_centroids(tmp_path):
    d = make_baysor(tmp_path / "b", labels=False)
    seg = pd.read_csv(d / "segmentation.csv")
    seg.loc[0, "x"] = np.nan
    seg.to_csv(d / "segmentation.csv", index=False)
    st = pd.read_csv(d / "segmentation_cell_stats.csv")
    st.loc[1, "y"] = np.nan
    st.to_csv(d / "segmentation_cell_stats.csv", index=False)
    s = sio.read_baysor(d)
    rep = s.provenance["report"]
    assert rep["molecules_nan_coordinates"]["count"] == 1
    assert rep["cells_nan_centroid"]["count"] == 1
    assert list(s.cell_ids) == ["1", "3", "4"]
    assert len(s.molecules) == 5


def test_baysor_molecules_outside_image(tmp_path):
    d = make_baysor(tmp_path / "b", labels=False)
    seg = pd.read_csv(d / "segmentation.csv")
    seg.loc[0, "x"] = 500.0
    seg.to_csv(d / "segmentation.csv", index=False)
    s = sio.read_baysor(d)
    assert s.provenance["report"]["molecules_outside_image"]["count"] == 1
    seg["x"] = seg["x"] + 1000
    seg.to_csv(d / "segmentation.csv", index=False)
    with pytest.raises(StmorphInputError, match="outside the 64 x 64 image"):
        sio.read_baysor(d)


def test_baysor_unreadable_tiff(tmp_path):
    d = make_baysor(tmp_path / "b")
    (d / "dapi_stack.tif").write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(StmorphInputError, match=r"dapi_stack.tif.*cannot read the stain image"):
        sio.read_baysor(d)


def test_requested_genes_absent(tmp_path):
    d = make_baysor(tmp_path / "b", images=False)
    s = sio.read_baysor(d, genes=["g3", "g1"])
    assert s.gene_names == ["g3", "g1"]
    with pytest.raises(StmorphInputError, match=r"column 'gene'.*absent.*Gapdh"):
        sio.read_baysor(d, genes=["g1", "Gapdh"])


# ---------------------------------------------------------------------------------------------------------
# MERFISH tables
# ---------------------------------------------------------------------------------------------------------
def test_merfish_tables_exact(tmp_path, caplog):
    d = make_merfish_tables(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="stmorph.io"):
        s = sio.read(d)
    # cell 3: NaN centroid; cell 4: Removed
    assert list(s.cell_ids) == ["1", "2", "5"]
    np.testing.assert_array_equal(s.adata.X, [[1, 0], [0, 5], [0, 7]])
    np.testing.assert_array_equal(s.centroids, [[10, 1], [20, 2], [50, 5]])
    assert s.adata.obs["cell_type"].tolist() == ["T", "B", "B"]
    assert np.isnan(s.adata.obs["area"].iloc[1])
    np.testing.assert_array_equal(s.adata.obsm["X_stain_vae"], np.array([[0.5, -1], [1.5, -2], [4.5, -5]], dtype=np.float32))
    rep = s.provenance["report"]
    assert rep["cells_nan_centroid"]["count"] == 1 and rep["cells_excluded_label"]["count"] == 1
    assert "NaN centroid" in caplog.text
    assert s.molecules is None and s.images == {}
    _roundtrip(s, tmp_path)


def test_merfish_tables_bad_input(tmp_path):
    d = make_merfish_tables(tmp_path / "m")
    # embedding lacks a cell -> intersection with a report
    emb = pd.read_csv(d / "stain_vae_embedding.csv").iloc[1:]
    emb.to_csv(d / "stain_vae_embedding.csv", index=False)
    s = sio.read_merfish_tables(d)
    assert list(s.cell_ids) == ["2", "5"] and s.provenance["report"]["cells_missing_in_stain_vae"]["count"] == 1
    # explicit, disjoint embedding -> error naming the file
    pd.DataFrame({"id": [70, 71], "a": [1.0, 2.0]}).to_csv(d / "other.csv", index=False)
    with pytest.raises(StmorphInputError, match="other.csv"):
        sio.read_merfish_tables(d, embeddings={"other": "other.csv"})
    with pytest.raises(StmorphInputError, match="embedding table 'x' not found"):
        sio.read_merfish_tables(d, embeddings={"x": "nope.csv"})
    s = sio.read_merfish_tables(d, embeddings={}, labels=None)
    assert list(s.adata.obsm) == ["spatial"] and list(s.cell_ids) == ["1", "2", "4", "5"]
    # meta disjoint from counts
    m = pd.read_csv(d / "cell_meta_data.csv")
    m["cell_index"] += 100
    m.to_csv(d / "cell_meta_data.csv", index=False)
    with pytest.raises(StmorphInputError, match=r"cell_meta_data.csv.*column 'cell_index'.*no cell id is shared"):
        sio.read_merfish_tables(d)
    m.drop(columns="x").to_csv(d / "cell_meta_data.csv", index=False)
    with pytest.raises(StmorphInputError, match="column 'x'"):
        sio.read_merfish_tables(d)
    (d / "gene_counts.csv").unlink()
    with pytest.raises(StmorphInputError, match="gene_counts.csv"):
        sio.read_merfish_tables(d)


def test_merfish_tables_no_genes(tmp_path):
    d = make_merfish_tables(tmp_path / "m")
    pd.DataFrame({"cell_index": [1, 2]}).to_csv(d / "gene_counts.csv", index=False)
    with pytest.raises(StmorphInputError, match="no gene columns"):
        sio.read_merfish_tables(d)


# ---------------------------------------------------------------------------------------------------------
# Xenium
# ---------------------------------------------------------------------------------------------------------
def test_xenium_exact(tmp_path):
    d = make_xenium(tmp_path / "x")
    s = sio.read(d, origin=XEN_ORIGIN)
    assert s.pixel_size == XEN_PS and s.provenance["pixel_size_source"] == "experiment.xenium"
    assert list(s.cell_ids) == ["7", "9", "11"]
    assert s.gene_names == ["CD3E", "EPCAM"]  # controls excluded
    np.testing.assert_array_equal(s.adata.X, [[1, 1], [1, 2], [0, 0]])
    np.testing.assert_allclose(s.centroids, [[11.0, 11.0], [42.0, 22.0], [60.0, 40.0]])
    assert s.adata.obs["cell_area"].tolist() == [10.0, 12.0, 8.0]
    m = s.molecules
    assert len(m) == 6 and set(m["gene"]) == {"CD3E", "EPCAM"}
    np.testing.assert_allclose(m["x"].to_numpy(), [10, 12, 40, 42, 20, 44])
    np.testing.assert_allclose(m["y"].to_numpy(), [10, 12, 20, 22, 30, 24])
    assert m["overlaps_nucleus"].tolist() == [True, False, True, True, False, True]
    assert m["cell_id"].isna().sum() == 1
    rep = s.provenance["report"]
    assert rep["control_molecules_excluded"] == {"NegControlProbe": 1, "BLANK": 1}
    assert rep["cells_without_molecules"]["count"] == 1  # cell 11
    assert s.images["DAPI"].shape == (60, 80)
    _roundtrip(s, tmp_path)


def test_xenium_parquet_bytes_no_cells_qv(tmp_path, caplog):
    d = make_xenium(tmp_path / "x", cells=False, parquet=True, experiment=False)
    with caplog.at_level(logging.WARNING, logger="stmorph.io"):
        s = sio.read_xenium(d, origin=XEN_ORIGIN, pixel_size=None, min_qv=20)
    assert "assuming 0.2125" in caplog.text and s.pixel_size == 0.2125
    assert list(s.cell_ids) == ["cell-7", "cell-9"]
    # centroid from all assigned transcripts (controls included) in pixels
    xs7 = (np.array([105.0, 106.0, 105.5]) - 100) / 0.2125
    np.testing.assert_allclose(s.centroids[0, 0], xs7.mean(), rtol=1e-6)
    # qv 10 (cell-7 CD3E) dropped
    np.testing.assert_array_equal(s.adata.X, [[0, 1], [1, 2]])
    assert s.provenance["report"]["molecules_low_qv_dropped"] == 1
    s2 = sio.read_xenium(d, exclude_controls=False, image=None, pixel_size=0.5, origin=XEN_ORIGIN)
    assert "NegControlProbe_00042" in s2.gene_names and s2.images == {}


def test_xenium_bad_input(tmp_path):
    d = make_xenium(tmp_path / "x")
    tx = _xenium_transcripts()
    tx["feature_name"] = ["BLANK_0001"] * 4 + ["NegControlCodeword_0500"] * 4
    tx.to_csv(d / "transcripts.csv.gz", index=False, compression="gzip")
    with pytest.raises(StmorphInputError, match=r"transcripts.csv.gz.*column 'feature_name'.*no transcript is left"):
        sio.read_xenium(d)
    tx = _xenium_transcripts().drop(columns="x_location")
    tx.to_csv(d / "transcripts.csv.gz", index=False, compression="gzip")
    with pytest.raises(StmorphInputError, match="column 'x_location'"):
        sio.read_xenium(d)
    tx = _xenium_transcripts()
    tx.loc[2, "y_location"] = np.nan
    tx.to_csv(d / "transcripts.csv.gz", index=False, compression="gzip")
    s = sio.read_xenium(d, origin=XEN_ORIGIN)
    assert s.provenance["report"]["molecules_nan_coordinates"]["count"] == 1
    # without the origin, every transcript lies outside the 60 x 80 image
    with pytest.raises(StmorphInputError, match="outside"):
        sio.read_xenium(d)
    # cell table with other ids
    pd.DataFrame({"cell_id": [1, 2], "x_centroid": [1.0, 2.0], "y_centroid": [1.0, 2.0]}).to_csv(
        d / "cells.csv.gz", index=False, compression="gzip"
    )
    with pytest.raises(StmorphInputError, match=r"cells.csv.gz.*no transcript cell id"):
        sio.read_xenium(d, origin=XEN_ORIGIN)
    for f in ("transcripts.csv.gz",):
        (d / f).unlink()
    with pytest.raises(StmorphInputError, match="Xenium transcripts not found"):
        sio.read_xenium(d)


def test_xenium_morphology_focus_folder(tmp_path):
    d = make_xenium(tmp_path / "x")
    (d / "morphology_mip.tif").unlink()
    (d / "morphology_focus").mkdir()
    tifffile.imwrite(d / "morphology_focus" / "morphology_focus_0000.ome.tif", np.full((60, 80), 3, dtype=np.uint16))
    tifffile.imwrite(d / "morphology_focus" / "morphology_focus_0001.ome.tif", np.full((60, 80), 4, dtype=np.uint16))
    s = sio.read_xenium(d, origin=XEN_ORIGIN)
    assert s.images["DAPI"].read()[0, 0] == 3


# ---------------------------------------------------------------------------------------------------------
# MERSCOPE-like and CosMx-like through read_generic
# ---------------------------------------------------------------------------------------------------------
def test_merscope_preset(tmp_path):
    d = make_merscope(tmp_path / "v")
    s = sio.read(d)  # the native MERSCOPE reader finds images/mosaic_DAPI_z3.tif itself
    big = 1_234_567_890_123
    assert list(s.cell_ids) == [str(big), str(big + 1)]
    assert s.gene_names == ["Cd4", "Vim"]  # Blank-7 excluded
    np.testing.assert_array_equal(s.adata.X, [[0, 1], [1, 1]])
    # transform: px = 2 * um + (4, 1)
    np.testing.assert_allclose(s.centroids, [[25.0, 12.0], [45.0, 18.0]])
    np.testing.assert_allclose(s.molecules["x"].to_numpy(), [24, 44, 46, 34])
    assert s.pixel_size == pytest.approx(0.5)
    assert s.adata.obs["volume"].tolist() == [50.0, 60.0]
    assert s.images["DAPI"].read()[0, 0] == 7
    assert s.provenance["reader"] == "merscope"
    _roundtrip(s, tmp_path)


def test_cosmx_preset_and_explicit_mapping(tmp_path):
    d = make_cosmx(tmp_path / "c")
    s = sio.read_generic(d, preset="cosmx", origin=(1000.0, 2000.0))  # table-only: the native reader needs FOV positions
    assert list(s.cell_ids) == ["1_1", "2_1"]  # the same cell_ID in two FOVs = two cells
    assert s.gene_names == ["CD74", "KRT19"]
    np.testing.assert_array_equal(s.adata.X, [[1, 1], [2, 0]])
    np.testing.assert_allclose(s.centroids, [[11.0, 6.0], [41.0, 21.0]])
    assert s.pixel_size == 0.12028 and s.adata.obs["Area"].tolist() == [300, 400]
    assert s.molecules["cell_id"].isna().sum() == 1
    # the same table through an explicit mapping (no cell table: centroids = molecule means)
    g = sio.read_generic(
        d / "Lung5_Rep1_tx_file.csv",
        columns={"x": "x_global_px", "y": "y_global_px", "gene": "target", "cell_id": "cell_ID", "fov": "fov"},
        unassigned_values=("0",),
        units="um",
        pixel_size=2.0,
        origin=(1000.0, 2000.0),
    )
    np.testing.assert_allclose(g.centroids, [[(10 + 12 + 11) / 3 / 2, (5 + 7 + 6) / 3 / 2], [20.5, 10.5]])
    _roundtrip(s, tmp_path)


def test_generic_bad_input(tmp_path):
    d = make_cosmx(tmp_path / "c")
    f = d / "Lung5_Rep1_tx_file.csv"
    with pytest.raises(StmorphInputError, match="lacks"):
        sio.read_generic(f, columns={"x": "x_global_px"})
    with pytest.raises(StmorphInputError, match=r"tx_file.csv.*column 'gx'"):
        sio.read_generic(f, columns={"x": "gx", "y": "y_global_px", "gene": "target", "cell_id": "cell_ID"})
    with pytest.raises(StmorphInputError, match="needs pixel_size"):
        sio.read_generic(f, columns={"x": "x_global_px", "y": "y_global_px", "gene": "target", "cell_id": "cell_ID"}, units="um")
    with pytest.raises(StmorphInputError, match="unknown preset"):
        sio.read_generic(f, preset="visium")  # type: ignore[arg-type]
    with pytest.raises(StmorphInputError, match="image 'DAPI' not found"):
        sio.read_generic(f, preset="cosmx", images={"DAPI": tmp_path / "none.tif"})
