"""Tests of reference-based annotation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stmorph import StmorphInputError
from stmorph.pp import annotate_by_reference, reference_profiles


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(40)]
    means = rng.gamma(1.0, 2.0, size=(3, 40))
    means[0, :5] += 20
    means[1, 5:10] += 20
    means[2, 10:15] += 20
    truth = rng.integers(0, 3, size=300)
    X = rng.poisson(means[truth])
    a = ad.AnnData(X.astype(np.float32), var=pd.DataFrame(index=genes))
    a.obs_names = [f"c{i}" for i in range(300)]
    ref = pd.DataFrame(np.vstack([rng.poisson(means[t] * 5) for t in [0, 0, 1, 1, 2]]), columns=genes)
    ref.insert(0, "cell_type", ["A", "A", "B", "B", "C"])
    return a, ref, np.array(["A", "B", "C"])[truth]


def test_profiles_are_type_means():
    _, ref, _ = _data()
    prof = reference_profiles(ref)
    assert list(prof.index) == ["A", "B", "C"]
    np.testing.assert_allclose(prof.loc["A", "g0"], ref.loc[:1, "g0"].mean())


def test_recovers_types_and_writes_score():
    a, ref, truth = _data()
    annotate_by_reference(a, ref)
    assert (a.obs["cell_type"].astype(str).to_numpy() == truth).mean() > 0.95
    assert a.obs["cell_type_score"].between(-1, 1).all()
    b = annotate_by_reference(a, ref, key_added="ref", copy=True)
    assert "ref" in b.obs and "ref" not in a.obs


def test_errors(tmp_path):
    a, ref, _ = _data()
    with pytest.raises(StmorphInputError, match="label column"):
        annotate_by_reference(a, ref, label_column="type")
    with pytest.raises(StmorphInputError, match="shared"):
        annotate_by_reference(a[:, :5].copy(), ref)
    with pytest.raises(StmorphInputError, match="not found"):
        annotate_by_reference(a, tmp_path / "missing.csv")


def test_xenium_crop_reference(xenium_crop_dir):
    from stmorph.io import read_xenium

    s = read_xenium(xenium_crop_dir, origin=(1062.0, 212.0))
    annotate_by_reference(s.adata, xenium_crop_dir / "sc_reference_breast.csv")
    vc = s.adata.obs["cell_type"].value_counts()
    # a breast tumour crop: several types found, none swallowing everything
    assert (vc > 0).sum() >= 5 and vc.max() < 0.8 * s.n_cells
