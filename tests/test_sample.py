"""Tests of the core data model (SpatialSample, StainImage)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile

from stmorph import SpatialSample, StainImage, StmorphInputError


def _tiny_sample(tmp_path=None) -> SpatialSample:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": pd.Categorical(["a", "b", "a"])}, index=["c1", "c2", "c3"])
    var = pd.DataFrame(index=["g1", "g2"])
    a = ad.AnnData(X=np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32), obs=obs, var=var)
    a.obsm["spatial"] = np.array([[10.0, 10.0], [30.0, 20.0], [50.0, 40.0]])
    mol = pd.DataFrame(
        {
            "x": [10.0, 31.0, 29.5, 50.0, 51.0, 5.0],
            "y": [11.0, 20.0, 21.0, 40.0, 39.0, 5.0],
            "gene": pd.Categorical(["g1", "g2", "g2", "g1", "g2", "g1"]),
            "cell_id": pd.array(["c1", "c2", "c2", "c3", "c3", None], dtype="string"),
        }
    )
    img = rng.integers(0, 1000, size=(64, 64), dtype=np.uint16)
    return SpatialSample(a, mol, {"DAPI": StainImage(img)}, pixel_size=0.5, name="tiny", provenance={"reader": "test"})


def test_molecule_index_groups_by_cell():
    s = _tiny_sample()
    idx = s.molecule_index()
    assert idx.indptr.tolist() == [0, 1, 3, 5]
    assert idx.counts_per_cell().tolist() == [1, 2, 2]
    # cell c2 owns the two g2 molecules
    assert idx.gene[1:3].tolist() == [1, 1]
    np.testing.assert_allclose(idx.x[1:3], [31.0, 29.5])


def test_write_read_roundtrip(tmp_path):
    s = _tiny_sample()
    out = s.write(tmp_path / "tiny.stmorph")
    r = SpatialSample.read(out)
    assert r.name == "tiny" and r.pixel_size == 0.5
    assert r.provenance == {"reader": "test"}
    assert list(r.cell_ids) == ["c1", "c2", "c3"]
    np.testing.assert_array_equal(r.adata.X, s.adata.X)
    np.testing.assert_array_equal(r.centroids, s.centroids)
    pd.testing.assert_frame_equal(r.molecules.reset_index(drop=True), s.molecules.reset_index(drop=True))
    np.testing.assert_array_equal(r.images["DAPI"].read(), s.images["DAPI"].read())
    assert r.adata.obs["cell_type"].tolist() == ["a", "b", "a"]


def test_write_refuses_overwrite_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    s = _tiny_sample()
    target = tmp_path / "x.stmorph"
    s.write(target)
    with pytest.raises(FileExistsError):
        s.write(target)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(RuntimeError):
        s.write(tmp_path / "y.stmorph")
    assert not (tmp_path / "y.stmorph").exists()
    assert not any(p.name.startswith(".y.stmorph") for p in tmp_path.iterdir())


def test_require_returns_the_modality_or_one_wording_of_its_absence():
    from stmorph.sample import missing_modality

    s = _tiny_sample()
    assert s.require("molecules") is s.molecules
    assert s.require("images") is s.images and s.require("images", "DAPI") is s.images["DAPI"]
    with pytest.raises(StmorphInputError, match="the sample has no segmentation") as e:
        s.require("segmentation")
    assert e.value.expected == "sample.segmentation"
    with pytest.raises(StmorphInputError, match="the sample has no 'membrane' image") as e:
        s.require("images", "membrane")
    assert e.value.expected == "sample.images['membrane']"
    bare = SpatialSample(s.adata)
    with pytest.raises(StmorphInputError, match="^the sample has no molecule table; spot planes need one"):
        bare.molecule_index()
    with pytest.raises(StmorphInputError, match="the sample has no stain images"):
        bare.require("images")
    err = missing_modality("segmentation", prefix="masks were asked for but ", expected="masks")
    assert str(err).startswith("masks were asked for but the sample has no segmentation") and err.expected == "masks"
    with pytest.raises(ValueError):
        s.require("labels")  # type: ignore[arg-type]


def test_stain_image_stack_z_plane(tmp_path):
    stack = np.stack([np.full((8, 8), i, dtype=np.uint16) for i in range(3)])
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, stack)
    assert StainImage(f, z=2).read()[0, 0] == 2
    with pytest.raises(StmorphInputError, match="out of range"):
        StainImage(f, z=3).read()
    with pytest.raises(StmorphInputError, match="choose one with z="):
        StainImage(f).read()


def test_stain_image_unreadable(tmp_path):
    f = tmp_path / "broken.tif"
    f.write_bytes(b"this is not a tiff")
    with pytest.raises(StmorphInputError, match="broken.tif"):
        StainImage(f).read()
    with pytest.raises(StmorphInputError, match="not found"):
        StainImage(tmp_path / "missing.tif")


def test_nan_centroids_rejected():
    s = _tiny_sample()
    a = s.adata.copy()
    a.obsm["spatial"][1, 0] = np.nan
    with pytest.raises(StmorphInputError, match="c2"):
        SpatialSample(a)


def test_subset_unassigns_other_molecules():
    s = _tiny_sample()
    sub = s.subset(["c2"])
    assert sub.n_cells == 1
    assert sub.molecule_index().counts_per_cell().tolist() == [2]
