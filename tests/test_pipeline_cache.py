"""Tests of the study pipeline's cache and configuration (no models involved)."""

from __future__ import annotations

import pytest

from stmorph import StmorphInputError
from stmorph.pipeline import StageCache, config_from_dict, load_config, stage_key
from stmorph.pipeline._run import _topological


def test_stage_key_is_order_independent_and_sensitive():
    a = stage_key({"x": 1, "y": {"b": 2, "a": [1, 2]}}, "up1")
    assert a == stage_key({"y": {"a": [1, 2], "b": 2}, "x": 1}, "up1")
    assert a != stage_key({"x": 2, "y": {"b": 2, "a": [1, 2]}}, "up1")
    assert a != stage_key({"x": 1, "y": {"b": 2, "a": [1, 2]}}, "up2")
    import stmorph

    old, stmorph.__version__ = stmorph.__version__, "0.0.0-other"
    try:  # a cache written by another version is not reused
        assert a != stage_key({"x": 1, "y": {"b": 2, "a": [1, 2]}}, "up1")
    finally:
        stmorph.__version__ = old


def test_stage_cache_reuses_and_is_atomic(tmp_path):
    lines: list[str] = []
    cache = StageCache(tmp_path, log=lines.append)
    calls = []

    def work(d):
        calls.append(1)
        (d / "out.txt").write_text("hello")
        return {"n": 3}

    r1 = cache.run("s", "k1", work)
    r2 = cache.run("s", "k1", work)
    assert len(calls) == 1 and not r1.cached and r2.cached
    assert (r2.path / "out.txt").read_text() == "hello" and r2.meta["n"] == 3

    def killed(d):
        (d / "half.txt").write_text("half")
        raise KeyboardInterrupt  # the process is stopped mid-stage

    with pytest.raises(KeyboardInterrupt):
        cache.run("t", "k2", killed)
    assert not cache.is_done("t", "k2")
    assert not any(p.name.startswith("t-") or p.name.startswith(".t-") for p in tmp_path.iterdir())
    # prune keeps only what is asked
    assert cache.prune({"s-k1"}) == []
    assert cache.prune(set()) == ["s-k1"]


def test_config_validation_names_the_problem(tmp_path):
    with pytest.raises(StmorphInputError, match="reader"):
        config_from_dict({"sample": {}, "spaces": {"TC": {"kind": "counts"}}})
    with pytest.raises(StmorphInputError, match="no feature spaces"):
        config_from_dict({"sample": {"reader": "synthetic"}})
    with pytest.raises(StmorphInputError, match="kind"):
        config_from_dict({"sample": {"reader": "synthetic"}, "spaces": {"TC": {}}})
    with pytest.raises(StmorphInputError, match="unknown top-level"):
        config_from_dict({"sample": {"reader": "synthetic"}, "spaces": {"TC": {"kind": "counts"}}, "oops": 1})
    f = tmp_path / "bad.toml"
    f.write_text("[sample\nreader=1")
    with pytest.raises(StmorphInputError, match="bad.toml"):
        load_config(f)
    with pytest.raises(StmorphInputError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_config_paths_relative_to_file(tmp_path):
    f = tmp_path / "study.toml"
    f.write_text('[sample]\nreader = "xenium"\npath = "data/xen"\n[spaces.TC]\nkind = "counts"\n[spaces.E]\nkind = "table"\npath = "e.csv"\n')
    cfg = load_config(f)
    assert cfg.sample["path"] == str((tmp_path / "data/xen").resolve())
    assert cfg.spaces["E"]["path"] == str((tmp_path / "e.csv").resolve())
    assert cfg.out == tmp_path / "study_out"


def test_topological_order_and_cycles():
    spaces = {"M": {"kind": "muse", "inputs": ["A", "B"]}, "A": {"kind": "counts"}, "B": {"kind": "obsm"}}
    order = _topological(spaces)
    assert order.index("A") < order.index("M") and order.index("B") < order.index("M")
    with pytest.raises(StmorphInputError, match="cycle"):
        _topological({"A": {"kind": "muse", "inputs": ["B", "A"]}, "B": {"kind": "counts"}})
    with pytest.raises(StmorphInputError, match="not defined"):
        _topological({"A": {"kind": "muse", "inputs": ["Z", "B"]}, "B": {"kind": "counts"}})


def test_example_configs_are_valid():
    from pathlib import Path

    from stmorph.pipeline import SPACE_KINDS

    examples = sorted((Path(__file__).resolve().parents[1] / "docs" / "examples").glob("*.toml"))
    assert len(examples) >= 3
    for f in examples:
        cfg = load_config(f)
        assert all(spec["kind"] in SPACE_KINDS for spec in cfg.spaces.values()), f
        assert _topological(cfg.spaces)
