"""Readers on the real data in ../shared/data (skipped where absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stmorph.io as sio
from stmorph.io._testing import assert_samples_equal

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def ileum(ileum_dir):
    return sio.read(ileum_dir)


@pytest.fixture(scope="module")
def xenium(xenium_crop_dir):
    return sio.read(xenium_crop_dir, origin=(1062.0, 212.0), pixel_size=0.2125)


def test_ileum_tables(ileum, ileum_dir):
    s = ileum
    assert s.provenance["reader"] == "merfish_tables"
    assert s.n_cells == 5194 and s.adata.n_vars == 241
    assert s.adata.obs["cell_type"].nunique() == 19 and "Removed" not in set(s.adata.obs["cell_type"])
    assert s.provenance["report"]["cells_excluded_label"]["count"] == 606
    assert s.adata.obsm["X_stain_vae"].shape == (5194, 50)
    emb = pd.read_csv(ileum_dir / "stain_vae_embedding.csv", index_col=0)
    emb.index = emb.index.astype(str)
    for cid in ("1", "2", s.cell_ids[-1]):
        i = s.cell_ids.get_loc(cid)
        np.testing.assert_allclose(s.adata.obsm["X_stain_vae"][i], emb.loc[cid].to_numpy(np.float32), rtol=1e-6)
    counts = pd.read_csv(ileum_dir / "gene_counts.csv", index_col=0)
    counts.index = counts.index.astype(str)
    assert s.adata.X[s.cell_ids.get_loc("2"), s.gene_names.index("Acta2")] == counts.loc["2", "Acta2"] == 129
    np.testing.assert_array_equal(np.asarray(s.adata.X).sum(1), counts.loc[s.cell_ids].to_numpy().sum(1))
    np.testing.assert_allclose(s.centroids[0], [2072.20512820513, 16.1282051282051])
    # NaN in metadata is kept: as many NaN areas as the meta table has among the kept cells
    meta = pd.read_csv(ileum_dir / "cell_meta_data.csv", index_col=0)
    meta.index = meta.index.astype(str)
    assert meta["area"].isna().sum() == 51
    assert s.adata.obs["area"].isna().sum() == meta.loc[s.cell_ids, "area"].isna().sum()
    assert s.adata.obs.index.name is None


def test_ileum_roundtrip(ileum, tmp_path):
    assert_samples_equal(ileum, sio.read(sio.write(ileum, tmp_path / "ileum.stmorph")))


def test_xenium_crop(xenium):
    s = xenium
    assert s.provenance["reader"] == "xenium"
    assert s.n_cells == 1135
    assert not any(g.startswith(("NegControl", "BLANK", "Unassigned", "Deprecated", "Intergenic")) for g in s.gene_names)
    assert s.images["DAPI"].shape == (1800, 2400)
    m = s.molecules
    assert len(m) == 186_146
    assert m["x"].min() >= 0 and m["x"].max() < 2400 and m["y"].min() >= 0 and m["y"].max() < 1800
    assert "molecules_outside_image" not in s.provenance["report"]
    # 1.5 % unassigned
    assert 0.01 < m["cell_id"].isna().mean() < 0.02
    # counts == assigned molecules per cell
    assert np.asarray(s.adata.X).sum() == m["cell_id"].notna().sum()
    # alignment sanity check: nuclear transcripts sit on brighter DAPI
    img = s.images["DAPI"].read()
    r = np.clip(np.rint(m["y"].to_numpy()).astype(int), 0, 1799)
    c = np.clip(np.rint(m["x"].to_numpy()).astype(int), 0, 2399)
    val = img[r, c].astype(float)
    nuc = m["overlaps_nucleus"].to_numpy(bool)
    assert val[nuc].mean() > 1.8 * val[~nuc].mean()
    # centroids inside the image
    assert (s.centroids >= 0).all() and (s.centroids[:, 0] < 2400).all() and (s.centroids[:, 1] < 1800).all()


def test_xenium_roundtrip(xenium, tmp_path):
    assert_samples_equal(xenium, sio.read(sio.write(xenium, tmp_path / "x.stmorph")))
