"""The ``stmorph read`` command."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

import stmorph.io as sio
from stmorph import StmorphInputError
from stmorph.cli import app
from test_io_layouts import XEN_ORIGIN, make_baysor, make_xenium


def test_cli_read_auto_baysor(tmp_path):
    d = make_baysor(tmp_path / "b")
    out = tmp_path / "out.stmorph"
    res = CliRunner().invoke(app, ["read", "auto", str(d), "--out", str(out), "--z", "2", "--pixel-size", "0.1"])
    assert res.exit_code == 0, res.output
    assert "3 cells x 3 genes" in res.output and "labelled ['Removed']" in res.output
    s = sio.read(out)
    assert s.pixel_size == 0.1 and s.images["DAPI"].read()[0, 0] == 120
    np.testing.assert_array_equal(s.adata.X, sio.read_baysor(d, z=2).adata.X)
    # refuses to overwrite; options that do not apply are refused before anything is written
    res = CliRunner().invoke(app, ["read", "baysor", str(d), "--out", str(out)])
    assert res.exit_code != 0 and "--overwrite" in str(res.exception)
    res = CliRunner().invoke(app, ["read", "baysor", str(d), "--out", str(tmp_path / "o2"), "--min-qv", "20"])
    assert res.exit_code != 0 and "do not apply" in str(res.exception)
    assert not (tmp_path / "o2").exists()


def test_cli_read_xenium_and_bad_input_leaves_nothing(tmp_path):
    d = make_xenium(tmp_path / "x")
    out = tmp_path / "x.stmorph"
    args = ["read", "xenium", str(d), "--out", str(out), "--origin", str(XEN_ORIGIN[0]), str(XEN_ORIGIN[1])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sio.read(out).n_cells == 3
    (d / "transcripts.csv.gz").unlink()
    res = CliRunner().invoke(app, ["read", "xenium", str(d), "--out", str(tmp_path / "bad.stmorph")])
    assert isinstance(res.exception, StmorphInputError)
    assert "transcripts" in str(res.exception)
    assert not any(p.name.startswith(("bad.stmorph", ".bad.stmorph")) for p in tmp_path.iterdir())
