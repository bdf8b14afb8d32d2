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
