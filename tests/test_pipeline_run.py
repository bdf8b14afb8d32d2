"""End-to-end tests of the study pipeline on a tiny synthetic tissue: outputs, caching, kill-and-resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from stmorph.pipeline import SPACE_KINDS, config_from_dict, run_study


def _config(out: Path) -> dict:
    return {
        "seed": 3,
        "sample": {"reader": "synthetic", "options": {"n_cells": 120, "n_types": 3, "n_genes": 24,
                                                          "morphology_only_types": 0, "expression_only_types": 0}},
        "spaces": {
            "TC": {"kind": "counts"},
            "panel": {"kind": "gene_subset", "method": "random", "n_genes": 10},
        },
        "evaluate": {"n_trees": 20, "permutations": 49, "k_grid": [10], "resolutions": [0.5, 1.0], "min_clusters": 2,
                     "multiplex": [["TC", "panel"]], "ridge": ["panel"], "multiplex_weights": [0.5]},
        "report": {"title": "test study"},
    }


def _outputs(out: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    summary.pop("timings_s", None)  # wall-clock times differ between runs; every number else must not
    frames = {p.parent.name.split("-")[0]: pd.read_parquet(p) for p in sorted((out / "stages").glob("space_*/features.parquet"))}
    return summary, frames


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "full"
    res = run_study(config_from_dict(_config(out), out=out), quiet=True)
    assert Path(res["report"]).is_file()
    return out


def test_outputs_written(uninterrupted: Path):
    out = uninterrupted
    summary, frames = _outputs(out)
    assert set(summary["feature_spaces"]) == {"TC", "panel"}
    assert summary["feature_spaces"]["TC"]["n_cells"] == 120
    assert frames["space_panel"].shape == (120, 10)
    # expression-defined types: counts classify well above chance (3 types -> 0.33)
    assert summary["feature_spaces"]["TC"]["classification"]["balanced_accuracy"] > 0.6
    assert "TC+panel" in summary["multiplex"]
    html = (out / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    for fig in ("sample_overview", "umaps", "balanced_accuracy", "clustering_metrics", "jaccard"):
        assert (out / "figures" / f"{fig}.png").is_file() and (out / "figures" / f"{fig}.svg").is_file()
    assert (out / "tables" / "recall_per_label.csv").is_file()
    assert (out / "run.log").read_text().count("done in") >= 5
    assert not list(out.rglob("*.partial"))


def test_rerun_is_cached_and_param_change_reruns_only_dependents(uninterrupted: Path, tmp_path: Path):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    res = run_study(config_from_dict(_config(out), out=out), quiet=True)
    assert all(v["cached"] for v in res["stages"].values())
    cfg = _config(out)
    cfg["spaces"]["panel"]["n_genes"] = 12
    res = run_study(config_from_dict(cfg, out=out), quiet=True)
    st = res["stages"]
    assert st["sample"]["cached"] and st["space:TC"]["cached"]
    assert not st["space:panel"]["cached"] and not st["evaluate"]["cached"] and not st["report"]["cached"]


def test_killed_run_resumes_to_identical_outputs(uninterrupted: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "killed"
    original = SPACE_KINDS["gene_subset"]

    def killed(ctx, p):
        raise KeyboardInterrupt("killed mid-way")

    monkeypatch.setitem(SPACE_KINDS, "gene_subset", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(config_from_dict(_config(out), out=out), quiet=True)
    assert not (out / "report.html").exists()
    monkeypatch.setitem(SPACE_KINDS, "gene_subset", original)
    res = run_study(config_from_dict(_config(out), out=out), quiet=True)
    assert res["stages"]["sample"]["cached"] and res["stages"]["space:TC"]["cached"]
    s1, f1 = _outputs(uninterrupted)
    s2, f2 = _outputs(out)
    assert s1 == s2
    for k in f1:
        pd.testing.assert_frame_equal(f1[k], f2[k])


def test_report_renders_in_headless_chromium(uninterrupted: Path, chromium_page_check):
    check = chromium_page_check(uninterrupted / "report.html")
    assert check["images"] >= 5 and check["broken"] == 0, check
    assert check["error"] is None, check["error"][:300]


def test_run_killed_with_sigkill_resumes_to_identical_outputs(uninterrupted: Path, tmp_path: Path):
    """The run's process is SIGKILLed (no exception handler, no cleanup) while it computes a feature space; a new
    run reuses the finished stages and ends with the uninterrupted run's outputs."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "sigkilled"
    child = textwrap.dedent(
        f"""
        import os, pathlib, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_pipeline_run import _config
        from stmorph.pipeline import SPACE_KINDS, config_from_dict, run_study
        SPACE_KINDS["gene_subset"] = lambda ctx, p: os.kill(os.getpid(), signal.SIGKILL)
        out = pathlib.Path({str(out)!r})
        run_study(config_from_dict(_config(out), out=out), quiet=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STMORPH_PROGRESS": "0"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "report.html").exists()
    res = run_study(config_from_dict(_config(out), out=out), quiet=True)
    assert res["stages"]["sample"]["cached"] and res["stages"]["space:TC"]["cached"]
    assert not res["stages"]["space:panel"]["cached"]
    s1, f1 = _outputs(uninterrupted)
    s2, f2 = _outputs(out)
    assert s1 == s2
    for k in f1:
        pd.testing.assert_frame_equal(f1[k], f2[k])
