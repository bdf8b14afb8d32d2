"""Test helper: exact comparison of two samples (used by the round-trip tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..sample import SpatialSample

__all__ = ["assert_samples_equal"]


def _dense(x: object) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)  # type: ignore[union-attr]


def assert_samples_equal(a: SpatialSample, b: SpatialSample, *, provenance: bool = True) -> None:
    """Raise ``AssertionError`` unless ``a`` and ``b`` hold the same counts, obs, obsm, molecules and images.

    Parameters
    ----------
    a, b
        The samples.
    provenance
        Also compare ``name``, ``pixel_size`` and ``provenance``.

    Examples
    --------
    >>> assert_samples_equal(sample, SpatialSample.read(sample.write("s.stmorph")))  # doctest: +SKIP
    """
    assert list(a.adata.obs_names) == list(b.adata.obs_names), "cell ids differ"
    assert list(a.adata.var_names) == list(b.adata.var_names), "genes differ"
    np.testing.assert_array_equal(_dense(a.adata.X), _dense(b.adata.X))
    assert sp.issparse(a.adata.X) == sp.issparse(b.adata.X), "sparse vs dense counts"
    pd.testing.assert_frame_equal(a.adata.obs, b.adata.obs)
    assert sorted(a.adata.obsm) == sorted(b.adata.obsm), f"obsm keys {sorted(a.adata.obsm)} vs {sorted(b.adata.obsm)}"
    for k in a.adata.obsm:
        np.testing.assert_array_equal(np.asarray(a.adata.obsm[k]), np.asarray(b.adata.obsm[k]))
    if a.molecules is None or b.molecules is None:
        assert a.molecules is None and b.molecules is None, "one sample has molecules, the other not"
    else:
        pd.testing.assert_frame_equal(a.molecules.reset_index(drop=True), b.molecules.reset_index(drop=True))
    assert list(a.images) == list(b.images), "image channels differ"
    for k in a.images:
        np.testing.assert_array_equal(a.images[k].read(), b.images[k].read())
    if provenance:
        assert a.name == b.name and a.pixel_size == b.pixel_size
        assert a.provenance == b.provenance
