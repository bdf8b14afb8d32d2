"""SpatialData converters (optional extra; skipped without spatialdata)."""

from __future__ import annotations

import numpy as np
import pytest

import stmorph.io as sio
from stmorph import StmorphInputError
from stmorph.io._testing import assert_samples_equal

pytest.importorskip("spatialdata")

# importing spatialdata (dask, xarray, geopandas) alone takes ~10-20 s on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:zarr v3 autosharding:UserWarning")]

from test_io_layouts import make_baysor  # noqa: E402


@pytest.fixture(scope="module")
def baysor_sample(tmp_path_factory):
    return sio.read_baysor(make_baysor(tmp_path_factory.mktemp("sd") / "b"), pixel_size=0.25)


def test_spatialdata_roundtrip_memory_and_zarr(baysor_sample, tmp_path):
    s = baysor_sample
    sdata = sio.to_spatialdata(s)
    assert set(sdata.images) == {"DAPI", "membrane"} and "transcripts" in sdata.points and "cells" in sdata.shapes
    assert sdata.tables["table"].n_obs == s.n_cells
    back = sio.from_spatialdata(sdata)
    assert_samples_equal(s, back)
    store = tmp_path / "s.zarr"
    sdata.write(store)
    assert sio.detect_format(store) == "spatialdata"
    assert_samples_equal(s, sio.read(store, name=s.name))


def test_spatialdata_image_transform_maps_to_pixels(baysor_sample):
    from spatialdata.transformations import Scale, set_transformation

    s = baysor_sample
    sdata = sio.to_spatialdata(s)
    for k in sdata.images:  # image pixels are 2 "global" units wide: global coordinates / 2 = pixels
        set_transformation(sdata.images[k], Scale([2.0, 2.0], axes=("x", "y")), to_coordinate_system="global")
    back = sio.from_spatialdata(sdata)
    np.testing.assert_allclose(back.molecules["x"].to_numpy(), s.molecules["x"].to_numpy() / 2)
    np.testing.assert_allclose(back.centroids, s.centroids / 2)
    with pytest.raises(StmorphInputError, match="no table"):
        sdata2 = sio.to_spatialdata(s)
        del sdata2.tables["table"]
        sio.from_spatialdata(sdata2)


def test_spatialdata_segmentation_roundtrip(tmp_path):
    from stmorph.datasets import synthetic_tissue

    s = synthetic_tissue(n_cells=30, n_types=3, n_genes=8, random_state=1)
    sdata = sio.to_spatialdata(s)
    assert "segmentation" in sdata.labels
    store = tmp_path / "seg.zarr"
    sdata.write(store)
    back = sio.read(store)
    assert back.segmentation is not None
    np.testing.assert_array_equal(back.segmentation.read(), s.segmentation.read())
    np.testing.assert_array_equal(back.label_ids(), s.label_ids())


def test_spatialdata_table_annotating_labels(tmp_path):
    """A table whose instances are the labels of a labels element (spatialdata-io's CosMx/Xenium style)."""
    import anndata as ad
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import Labels2DModel, TableModel

    from stmorph.datasets import synthetic_tissue

    s = synthetic_tissue(n_cells=25, n_types=2, n_genes=6, random_state=2)
    lab = s.segmentation.read()
    labels = Labels2DModel.parse(lab, dims=("y", "x"))
    ids = s.label_ids()
    t = ad.AnnData(X=np.asarray(s.adata.X), obs=pd.DataFrame({"region": pd.Categorical(["cells"] * s.n_cells),
                                                               "instance": ids}, index=s.cell_ids))
    t = TableModel.parse(t, region="cells", region_key="region", instance_key="instance")
    back = sio.from_spatialdata(sd.SpatialData(labels={"cells": labels}, tables={"table": t}))
    np.testing.assert_array_equal(back.label_ids(), ids)
    # centroids from the masks' centres of mass equal the mean pixel position of each label
    rows, cols = np.nonzero(lab)
    vals = lab[rows, cols]
    for i in (0, 7, 24):
        sel = vals == ids[i]
        np.testing.assert_allclose(back.centroids[i], [cols[sel].mean(), rows[sel].mean()], atol=1e-9)
