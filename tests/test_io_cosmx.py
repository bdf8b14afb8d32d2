"""The native CosMx flat-file reader on exports written by write_cosmx_layout (stitching, labels, counts, errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import stmorph
import stmorph.io as sio
from stmorph._image import labels_at
from stmorph.datasets import synthetic_tissue
from stmorph.errors import StmorphInputError
from stmorph.io._cosmx import COSMX_PIXEL_SIZE, read_cosmx, write_cosmx_layout

RUN = "Run1000_S1"


@pytest.fixture(scope="module")
def tissue():
    return synthetic_tissue(n_cells=60, n_types=3, n_genes=12, random_state=0)


@pytest.fixture(scope="module")
def atomx_dir(tissue, tmp_path_factory):
    return write_cosmx_layout(tissue, tmp_path_factory.mktemp("cx") / "atomx", fov_grid=(2, 2))


@pytest.fixture(scope="module")
def atomx(atomx_dir):
    return read_cosmx(atomx_dir)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truth(folder: Path) -> pd.Series:
    """Read cell id -> the synthetic sample's cell id."""
    t = pd.read_csv(folder / "cell_types.csv")
    return pd.Series(t["source_cell_id"].to_numpy(), index=t["cell_id"].astype(str).to_numpy())


def _cut_cells(tissue, fov_shape: tuple[int, int]) -> set[str]:
    """Cells of the synthetic sample whose mask spans more than one FOV."""
    seg = tissue.segmentation.read()
    fh, fw = fov_shape
    rows, cols = np.nonzero(seg)
    fov = (rows // fh) * 10_000 + cols // fw
    n_fov = pd.Series(fov).groupby(seg[rows, cols]).nunique()
    lab = tissue.label_ids()
    return set(np.asarray(tissue.cell_ids)[np.isin(lab, n_fov[n_fov > 1].index.to_numpy())])


def _dense(X) -> np.ndarray:
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def _check_geometry(tissue, s, folder: Path) -> None:
    """Molecules, stains and masks of the read sample sit where they were in the synthetic sample."""
    # the stitched grid is the synthetic grid (the writer puts FOV 1 at the sample's top-left corner)
    np.testing.assert_allclose(np.sort(s.molecules["x"].to_numpy()), np.sort(tissue.molecules["x"].to_numpy()), atol=1e-3)
    np.testing.assert_allclose(np.sort(s.molecules["y"].to_numpy()), np.sort(tissue.molecules["y"].to_numpy()), atol=1e-3)
    src = _truth(folder).reindex(s.cell_ids)
    pos = pd.Index(tissue.cell_ids).get_indexer(src)
    np.testing.assert_allclose(s.centroids, tissue.centroids[pos], atol=1e-3)
    # molecules fall on their own cell's label in the stitched segmentation
    m = s.molecules
    assigned = m["cell_id"].notna().to_numpy()
    lid = s.adata.obs["label_id"].reindex(m["cell_id"][assigned].astype(str)).to_numpy()
    got = labels_at(s.segmentation, m["x"].to_numpy()[assigned], m["y"].to_numpy()[assigned])
    assert assigned.sum() > 0.8 * len(m)  # molecules of a cut cell outside its FOV are unassigned
    assert np.mean(got == lid) >= 0.95
    # a cell's mask in the stitched image covers the same pixels of the same stains as in the original
    seg = s.segmentation.read()
    orig_seg = tissue.segmentation.read()
    h, w = orig_seg.shape
    for name_read, name_orig in (("DAPI", "DAPI"), ("Membrane", "membrane")):
        img = s.images[name_read].read()
        orig = tissue.images[name_orig].read()
        for i in range(0, s.n_cells, 7):
            mask = seg == s.adata.obs["label_id"].iloc[i]
            assert mask.any()
            assert not mask[h:, :].any() and not mask[:, w:].any()
            inside = mask[:h, :w]
            assert img[mask].mean() == pytest.approx(orig[inside].mean())
            # the stitched mask is the part of the original mask in the cell's own FOV
            orig_mask = orig_seg == tissue.label_ids()[pos[i]]
            assert not (inside & ~orig_mask).any()


# ---------------------------------------------------------------------------------------------------------
# reading what the writer wrote
# ---------------------------------------------------------------------------------------------------------
def test_layout_files(atomx_dir):
    names = {p.name for p in atomx_dir.iterdir()}
    for suffix in ("tx_file", "fov_positions_file", "metadata_file", "exprMat_file"):
        assert f"{RUN}_{suffix}.csv.gz" in names
    assert sorted(p.name for p in (atomx_dir / "CellLabels").iterdir()) == [f"CellLabels_F00{i}.tif" for i in range(1, 5)]
    assert (atomx_dir / "CellComposite" / "CellComposite_F001.jpg").is_file()
    assert tifffile.imread(atomx_dir / "Morphology2D" / f"{RUN}_F001.TIF").shape == (5, 128, 128)
    tx = pd.read_csv(atomx_dir / f"{RUN}_tx_file.csv.gz")
    assert list(tx.columns) == ["fov", "cell_ID", "cell", "x_local_px", "y_local_px", "x_global_px", "y_global_px",
                                "z", "target", "CellComp"]
    assert tx["target"].str.startswith("Negative").any() and (tx["cell_ID"] == 0).any()
    # AtoMx convention: local y runs down the FOV image, global y up the slide; x the same way in both
    f1 = tx[tx["fov"] == 1]
    np.testing.assert_allclose(f1["y_local_px"] + f1["y_global_px"], 50000.0, atol=1e-3)
    np.testing.assert_allclose(f1["x_global_px"] - f1["x_local_px"], 10000.0, atol=1e-3)
    pos = pd.read_csv(atomx_dir / f"{RUN}_fov_positions_file.csv.gz")
    assert list(pos.columns) == ["FOV", "x_global_px", "y_global_px", "x_global_mm", "y_global_mm"]


def test_cells_genes_counts(tissue, atomx, atomx_dir):
    s = atomx
    assert s.n_cells == tissue.n_cells
    assert s.gene_names == sorted(tissue.gene_names)
    assert not any(g.startswith(("Negative", "SystemControl", "NegPrb")) for g in s.gene_names)
    assert s.pixel_size == COSMX_PIXEL_SIZE and s.provenance["counts_from"] == "exprMat_file"
    assert {"fov", "cell_ID", "label_id", "Area"} <= set(s.adata.obs.columns)
    assert all(cid == f"{f}_{c}" for cid, f, c in zip(s.cell_ids, s.adata.obs["fov"], s.adata.obs["cell_ID"]))
    src = _truth(atomx_dir).reindex(s.cell_ids)
    orig = tissue.adata[src.to_numpy()][:, s.gene_names]
    got, want = _dense(s.adata.X), _dense(orig.X)
    cut = np.isin(src.to_numpy(), list(_cut_cells(tissue, (128, 128))))
    assert (~cut).sum() >= 30
    np.testing.assert_array_equal(got[~cut], want[~cut])
    assert (got[cut] <= want[cut]).all()  # a cut cell keeps the molecules inside its own FOV
    # counts from the molecules (no exprMat) agree with the expression matrix
    d2 = _copy(atomx_dir, atomx_dir.parent / "no_expr")
    (d2 / f"{RUN}_exprMat_file.csv.gz").unlink()
    s2 = read_cosmx(d2, images=())
    assert s2.provenance["counts_from"] == "molecules"
    np.testing.assert_array_equal(_dense(s2.adata[s.cell_ids][:, s.gene_names].X), got)
    with_ctrl = read_cosmx(atomx_dir, exclude_controls=False, images=())
    assert any(g.startswith("Negative") for g in with_ctrl.gene_names)


def test_stains_segmentation_and_flip(tissue, atomx, atomx_dir):
    s = atomx
    assert list(s.images) == ["composite_R", "composite_G", "composite_B", "Membrane", "PanCK", "CD45", "CD3", "DAPI"]
    assert s.provenance["report"]["morphology_channels"]["source"] == "tiff description"
    assert s.segmentation is not None and s.segmentation.shape == (256, 256)
    lid = s.adata.obs["label_id"].to_numpy()
    assert lid.dtype == np.int64 and (lid > 0).all() and len(np.unique(lid)) == len(lid)
    offsets = s.provenance["label_offsets"]
    assert all(lid[i] == s.adata.obs["cell_ID"].iloc[i] + offsets[str(s.adata.obs["fov"].iloc[i])] for i in range(len(lid)))
    _check_geometry(tissue, s, atomx_dir)
    rep = s.provenance["report"]["fov_positions_vs_transcripts"]
    assert rep["positions_y_is_fov_edge"] == "top" and rep["max_deviation_px"] == 0


def test_legacy_convention_and_padded_fovs(tissue, tmp_path):
    d = write_cosmx_layout(tissue, tmp_path / "legacy", fov_grid=(3, 2), version="legacy")
    pos = pd.read_csv(d / f"{RUN}_fov_positions_file.csv.gz")
    assert list(pos.columns) == ["fov", "x_global_px", "y_global_px"] and len(pos) == 6
    tx = pd.read_csv(d / f"{RUN}_tx_file.csv.gz")
    assert tx["target"].str.startswith("NegPrb").any()
    s = sio.read(d)
    assert s.provenance["reader"] == "cosmx"
    assert s.segmentation.shape == (3 * 86, 256)  # three FOVs of ceil(256 / 3) rows
    assert s.provenance["report"]["fov_positions_vs_transcripts"]["positions_y_is_fov_edge"] == "bottom"
    _check_geometry(tissue, s, d)


@pytest.mark.parametrize("version", ["atomx", "legacy"])
def test_placement_from_positions_only(tissue, tmp_path, version):
    """Without local coordinates the FOVs are placed from the positions file (also its millimetre variant)."""
    d = write_cosmx_layout(tissue, tmp_path / version, version=version)
    tx_f, meta_f = d / f"{RUN}_tx_file.csv.gz", d / f"{RUN}_metadata_file.csv.gz"
    pd.read_csv(tx_f).drop(columns=["x_local_px", "y_local_px"]).to_csv(tx_f, index=False)
    pd.read_csv(meta_f).drop(columns=["CenterX_local_px", "CenterY_local_px"]).to_csv(meta_f, index=False)
    s = read_cosmx(d, images=("morphology",))
    assert s.provenance["report"]["fovs_placed_from_positions"] == [1, 2, 3, 4]
    _check_geometry(tissue, s, d)
    if version == "atomx":  # the older AtoMx variant: FOV, X_mm, Y_mm (millimetres of the top-left corner)
        pos_f = d / f"{RUN}_fov_positions_file.csv.gz"
        pos = pd.read_csv(pos_f)
        pos[["FOV", "x_global_mm", "y_global_mm"]].rename(columns={"x_global_mm": "X_mm", "y_global_mm": "Y_mm"}).to_csv(
            pos_f, index=False)
        s2 = read_cosmx(d, images=("morphology",))
        np.testing.assert_array_equal(s2.segmentation.read(), s.segmentation.read())
        np.testing.assert_allclose(s2.molecules["x"], s.molecules["x"], atol=1e-3)


def test_channel_names_from_metadata_when_tiff_has_none(tissue, atomx_dir, tmp_path):
    d = _copy(atomx_dir, tmp_path / "nodesc")
    for f in (d / "Morphology2D").iterdir():
        tifffile.imwrite(f, tifffile.imread(f), photometric="minisblack")
    s = read_cosmx(d, images=("morphology",))
    assert list(s.images) == ["B", "G", "Y", "R", "DAPI"]  # AtoMx writes Mean.<channel> in channel order
    assert s.provenance["report"]["morphology_channels"]["source"] == "metadata Mean.* columns"
    np.testing.assert_array_equal(s.images["DAPI"].read(), tissue.images["DAPI"].read())


def test_fov_subset_labels_and_roundtrip(tissue, atomx_dir, tmp_path):
    s = read_cosmx(atomx_dir, fovs=[1, 2], labels="cell_types.csv")
    assert set(s.adata.obs["fov"]) == {1, 2}
    assert s.segmentation.shape == (128, 256) and s.images["DAPI"].shape == (128, 256)
    assert s.provenance["fovs"] == [1, 2]
    truth = pd.read_csv(atomx_dir / "cell_types.csv").set_index("cell_id")
    assert (s.adata.obs["cell_type"].astype(str).to_numpy() == truth.loc[s.cell_ids, "cell_type"].to_numpy()).all()
    assert set(s.molecules["fov"].unique()) == {1, 2}
    out = s.write(tmp_path / "rt.stmorph")
    r = stmorph.read_sample(out)
    assert r.segmentation is not None
    np.testing.assert_array_equal(r.segmentation.read(), s.segmentation.read())
    np.testing.assert_array_equal(r.label_ids(), s.label_ids())
    np.testing.assert_array_equal(r.images["DAPI"].read(), s.images["DAPI"].read())
    assert r.provenance["reader"] == "cosmx" and r.n_cells == s.n_cells
    with pytest.raises(StmorphInputError, match="requested FOVs"):
        read_cosmx(atomx_dir, fovs=[99])


def test_stitched_files_on_disk_are_reused(atomx, atomx_dir, tmp_path):
    sdir = tmp_path / "stitched"
    s = read_cosmx(atomx_dir, in_memory=False, stitch_dir=sdir)
    assert s.segmentation.path is not None and s.segmentation.path.parent == sdir
    assert all(img.path is not None for img in s.images.values())
    np.testing.assert_array_equal(s.segmentation.read(), atomx.segmentation.read())
    np.testing.assert_array_equal(s.images["Membrane"].read(), atomx.images["Membrane"].read())
    again = read_cosmx(atomx_dir, in_memory=False, stitch_dir=sdir)
    assert "stitched_images_reused" in again.provenance["report"]
    np.testing.assert_array_equal(again.label_ids(), s.label_ids())
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(StmorphInputError, match="not written by stmorph"):
        read_cosmx(atomx_dir, in_memory=False, stitch_dir=other)


def test_read_only_export_stitches_into_the_user_cache(atomx, atomx_dir, tmp_path, monkeypatch):
    import os

    export = _copy(atomx_dir, tmp_path / "export")
    real_access = os.access  # root may write anywhere: pretend the export is read-only
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == export and mode == os.W_OK
                        else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = read_cosmx(export, in_memory=False)
    assert not (export / "stmorph_stitched").exists()
    assert s.segmentation.path is not None and (tmp_path / "cache") in s.segmentation.path.parents
    assert "read-only" in str(s.provenance["report"]["stitch_dir"])
    np.testing.assert_array_equal(s.segmentation.read(), atomx.segmentation.read())


def test_autodetect(atomx_dir):
    assert sio.detect_format(atomx_dir) == "cosmx"
    assert sio.detect_format(atomx_dir / f"{RUN}_tx_file.csv.gz") == "cosmx"
    s = sio.read(atomx_dir, images=())
    assert s.provenance["reader"] == "cosmx" and s.segmentation is not None and not s.images


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_missing_fov_positions(atomx_dir, tmp_path):
    d = _copy(atomx_dir, tmp_path / "nopos")
    (d / f"{RUN}_fov_positions_file.csv.gz").unlink()
    with pytest.raises(StmorphInputError, match=r"fov positions file is missing.*fov_positions_file") as e:
        read_cosmx(d)
    assert e.value.file == str(d)


def test_wrong_tx_columns(atomx_dir, tmp_path):
    d = _copy(atomx_dir, tmp_path / "badtx")
    f = d / f"{RUN}_tx_file.csv.gz"
    pd.read_csv(f).rename(columns={"x_global_px": "xg"}).to_csv(f, index=False)
    with pytest.raises(StmorphInputError, match=r"tx_file.*column 'x_global_px'") as e:
        read_cosmx(d)
    assert e.value.column == "x_global_px" and e.value.file == str(f)


def test_mismatched_fovs_and_other_errors(atomx_dir, tmp_path):
    d = _copy(atomx_dir, tmp_path / "mismatch")
    pos_f = d / f"{RUN}_fov_positions_file.csv.gz"
    pos = pd.read_csv(pos_f)
    pos.assign(FOV=pos["FOV"] + 100).to_csv(pos_f, index=False)
    with pytest.raises(StmorphInputError, match="no FOV of the transcript table is in the FOV positions"):
        read_cosmx(d)
    pos.rename(columns={"x_global_px": "px", "x_global_mm": "mm"}).drop(columns=["y_global_px", "y_global_mm"]).to_csv(
        pos_f, index=False)
    with pytest.raises(StmorphInputError, match="unknown FOV positions columns"):
        read_cosmx(d)
    pos.to_csv(pos_f, index=False)
    shutil.copy(d / f"{RUN}_tx_file.csv.gz", d / "Other_tx_file.csv.gz")
    with pytest.raises(StmorphInputError, match="several CosMx runs"):
        read_cosmx(d)
    assert read_cosmx(d, dataset_id=RUN, images=()).n_cells == 60
    with pytest.raises(StmorphInputError, match="unknown image kinds"):
        read_cosmx(atomx_dir, images=("dapi",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StmorphInputError, match="no CosMx transcript table"):
        read_cosmx(tmp_path / "empty")
