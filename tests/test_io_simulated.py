"""Write a synthetic tissue in the Baysor and Xenium layouts, read it back, compare with the in-memory sample."""

from __future__ import annotations

import numpy as np
import pytest

import stmorph.io as sio
from stmorph.io._testing import assert_samples_equal

datasets = pytest.importorskip("stmorph.datasets")


@pytest.fixture(scope="module")
def tissue():
    return datasets.synthetic_tissue(n_cells=60, n_types=4, n_genes=20, random_state=0)


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def test_baysor_layout_roundtrip(tissue, tmp_path):
    d = datasets.write_baysor_layout(tissue, tmp_path / "baysor", random_state=1)
    s = sio.read(d)
    assert s.provenance["reader"] == "baysor"
    rows = s.cell_ids.astype(int).to_numpy() - 1  # Baysor cell k = row k-1 of the sample
    n_removed = tissue.n_cells - s.n_cells
    assert n_removed == s.provenance["report"]["cells_excluded_label"]["count"] == round(0.03 * tissue.n_cells)
    assert s.gene_names == tissue.gene_names
    np.testing.assert_array_equal(_dense(s.adata.X), _dense(tissue.adata.X)[rows])
    np.testing.assert_allclose(s.centroids, tissue.centroids[rows], rtol=0, atol=1e-9)
    assert s.adata.obs["cell_type"].astype(str).tolist() == tissue.adata.obs["cell_type"].astype(str).iloc[rows].tolist()
    # the middle plane of the written stacks is the sample's image
    for ch in ("DAPI", "membrane"):
        np.testing.assert_array_equal(s.images[ch].read(), tissue.images[ch].read())
    # molecules of kept cells: same per-cell counts as the sample's molecule index
    np.testing.assert_array_equal(s.molecule_index().counts_per_cell(), tissue.molecule_index().counts_per_cell()[rows])
    assert_samples_equal(s, sio.read(sio.write(s, tmp_path / "b.stmorph")))
    # every reader closes its provenance the same way (io._common.finish_sample)
    assert list(s.provenance)[-4:] == ["n_cells", "n_genes", "n_molecules", "report"]
    assert (s.provenance["n_cells"], s.provenance["n_molecules"]) == (s.n_cells, len(s.molecules))
    # molecules of the cells dropped with their label are unassigned
    assert set(s.molecules["cell_id"].dropna()) <= set(s.cell_ids)


def test_writers_live_next_to_their_readers():
    from stmorph.io._baysor import write_baysor_layout
    from stmorph.io._writers_common import defocus_stack
    from stmorph.io._xenium import write_xenium_layout

    assert datasets.write_baysor_layout is write_baysor_layout and datasets.write_xenium_layout is write_xenium_layout
    from stmorph.datasets._tissue import defocus_stack as d2

    assert d2 is defocus_stack


def test_xenium_layout_roundtrip(tissue, tmp_path):
    origin = (1000.0, 250.0)
    d = datasets.write_xenium_layout(tissue, tmp_path / "xenium", origin_um=origin)
    s = sio.read(d, origin=origin, labels="cell_types.csv")
    assert s.provenance["reader"] == "xenium" and s.pixel_size == tissue.pixel_size
    assert list(s.cell_ids) == list(tissue.cell_ids)
    # controls excluded: genes and counts are exactly the sample's
    assert s.gene_names == sorted(tissue.gene_names)
    np.testing.assert_array_equal(_dense(s.adata[:, tissue.gene_names].X), _dense(tissue.adata.X))
    ctrl = s.provenance["report"]["control_molecules_excluded"]
    assert ctrl["NegControlProbe"] >= 2 and ctrl["BLANK"] >= 2
    np.testing.assert_allclose(s.centroids, tissue.centroids, atol=1e-6)
    assert s.adata.obs["cell_type"].astype(str).tolist() == tissue.adata.obs["cell_type"].astype(str).tolist()
    np.testing.assert_array_equal(s.images["DAPI"].read(), tissue.images["DAPI"].read())
    # molecules back in pixels (um written with 4 decimals)
    assert len(s.molecules) == len(tissue.molecules)
    np.testing.assert_allclose(s.molecules["x"].to_numpy(), tissue.molecules["x"].to_numpy(), atol=1e-3)
    np.testing.assert_allclose(s.molecules["y"].to_numpy(), tissue.molecules["y"].to_numpy(), atol=1e-3)
    np.testing.assert_array_equal(s.molecules["overlaps_nucleus"].to_numpy(), tissue.molecules["in_nucleus"].to_numpy())
    assert_samples_equal(s, sio.read(sio.write(s, tmp_path / "x.stmorph")))
