"""The shared atomic writers (stmorph._atomic) and the JSON helper (stmorph._utils.jsonable)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stmorph._atomic import atomic_dir, atomic_path
from stmorph._utils import atomic_path as atomic_path_reexported
from stmorph._utils import jsonable


def test_atomic_dir_moves_into_place_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "sub" / "out"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.partial-")
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_dir(target):
        pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_atomic_dir_failure_keeps_the_old_folder_and_leaves_no_partial(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "old.txt").read_text() == "old"


def test_atomic_dir_replaces_a_file_and_clears_a_fixed_leftover(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    leftover = tmp_path / ".out.partial"
    leftover.mkdir()
    (leftover / "stale").write_text("x")
    with atomic_dir(target, overwrite=True, unique=False) as tmp:
        assert tmp == leftover and not any(tmp.iterdir())
        (tmp / "c.txt").write_text("3")
    assert target.is_dir() and (target / "c.txt").exists() and not leftover.exists()


def test_atomic_path_writes_replaces_and_cleans_up(tmp_path):
    assert atomic_path_reexported is atomic_path
    f = tmp_path / "d" / "table.csv"
    with atomic_path(f, suffix=".csv") as tmp:
        assert tmp.parent == f.parent and tmp.suffix == ".csv" and not tmp.exists()
        tmp.write_text("x")
    assert f.read_text() == "x"
    with pytest.raises(ValueError), atomic_path(f) as tmp:
        tmp.write_text("y")
        raise ValueError
    assert f.read_text() == "x"
    assert sorted(p.name for p in f.parent.iterdir()) == ["table.csv"]


def test_jsonable_types_and_options():
    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

        def __str__(self) -> str:
            return "a thing"

    obj = {1: (np.int64(2), np.float32(0.5), np.bool_(True)), "a": np.arange(3).reshape(1, 3),
           "p": Path("x/y"), "n": None, "t": Thing(), "nan": float("nan")}
    out = jsonable(obj)
    assert out["1"] == [2, 0.5, True] and type(out["1"][0]) is int and type(out["1"][2]) is bool
    assert out["a"] == [[0, 1, 2]] and out["p"] == "x/y" and out["n"] is None and out["t"] == "a thing"
    assert math.isnan(out["nan"])
    assert jsonable(obj, default=repr)["t"] == "Thing()"
    assert jsonable(obj, finite=True)["nan"] is None
    assert jsonable([np.float64(np.inf)], finite=True) == [None]
    json.dumps(jsonable(obj, finite=True), allow_nan=False)
