"""Run a whole study: sample -> feature spaces -> evaluation -> report, cached and resumable."""

from __future__ import annotations

import json
import logging
import shutil
import time
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd

from .._versions import versions
from ..errors import StmorphInputError
from ..sample import SpatialSample
from ._cache import StageCache, file_fingerprint, stage_key
from ._config import StudyConfig, load_config
from ._spaces import SpaceContext, build_space, space_inputs
from .report import write_report

__all__ = ["run_study", "StudyResult", "load_sample_from_config"]

log = logging.getLogger("stmorph.pipeline")


class StudyResult(dict):
    """Paths and timings of a finished study (a dict: ``report``, ``summary``, ``stages``, ``out``)."""


def load_sample_from_config(section: dict[str, Any], seed: int = 0) -> SpatialSample:
    """Load the sample described by a ``[sample]`` section (``reader``, ``path``, ``options``)."""
    sample = _read_sample(section, seed)
    ann = section.get("annotate")
    if ann:
        from ..pp import annotate_by_reference

        ann = dict(ann)
        if "reference" not in ann:
            raise StmorphInputError("[sample.annotate] needs `reference` (a CSV of reference profiles)", column="sample.annotate.reference")
        annotate_by_reference(sample.adata, ann.pop("reference"), **ann)
    return sample


def _read_sample(section: dict[str, Any], seed: int) -> SpatialSample:
    reader = str(section["reader"])
    options = dict(section.get("options") or {})
    path = section.get("path")
    if reader == "synthetic":
        from ..datasets import synthetic_tissue

        options.setdefault("random_state", seed)
        return synthetic_tissue(**options)
    if path is None:
        raise StmorphInputError(f"reader '{reader}' needs a `path`", column="sample.path")
    if reader == "stmorph":
        return SpatialSample.read(path)
    from .. import io

    return io.read(path, format=None if reader == "auto" else reader, **options)


def _topological(spaces: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, chain: tuple[str, ...]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise StmorphInputError(f"feature spaces depend on each other in a cycle: {' -> '.join((*chain, n))}", column=f"spaces.{n}.inputs")
        if n not in spaces:
            raise StmorphInputError(f"input space '{n}' is not defined", column=f"spaces.{chain[-1]}.inputs" if chain else None)
        state[n] = 1
        for m in space_inputs(spaces[n]):
            visit(m, (*chain, n))
        state[n] = 2
        order.append(n)

    for n in spaces:
        visit(n, ())
    return order


def run_study(config: StudyConfig | str | PathLike, *, out: str | PathLike | None = None, quiet: bool = False) -> StudyResult:
    """Run the study described by ``config``; finished stages are reused, a killed run resumes.

    Parameters
    ----------
    config
        A :class:`StudyConfig` or the path of a TOML file.
    out
        Override of the output folder.
    quiet
        Do not echo stage lines to the terminal (they still go to ``<out>/run.log``).

    Returns
    -------
    A :class:`StudyResult` with the paths of ``report.html`` and ``summary.json`` and per-stage timings.

    Examples
    --------
    >>> res = run_study("docs/examples/xenium_study.toml")  # doctest: +SKIP
    >>> res["report"]  # doctest: +SKIP
    """
    cfg = config if isinstance(config, StudyConfig) else load_config(config, out=out)
    if out is not None:
        cfg.out = Path(out)
    outdir = Path(cfg.out)
    outdir.mkdir(parents=True, exist_ok=True)
    logfile = outdir / "run.log"
    t_start = time.perf_counter()

    def emit(line: str) -> None:
        stamp = f"{time.perf_counter() - t_start:7.1f}s"
        with logfile.open("a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {stamp} {line}\n")
        if not quiet:
            print(f"[{stamp}] {line}", flush=True)

    emit(f"stmorph run: {cfg.source or 'config'} -> {outdir}")
    cache = StageCache(outdir / "stages", log=emit)
    order = _topological(cfg.spaces)
    timings: dict[str, dict[str, Any]] = {}

    # 1. sample
    sample_section = dict(cfg.sample)
    fp = file_fingerprint(sample_section["path"]) if sample_section.get("path") else None
    if (sample_section.get("annotate") or {}).get("reference"):
        fp = {"data": fp, "reference": file_fingerprint(sample_section["annotate"]["reference"])}
    k_sample = stage_key({"sample": sample_section, "fingerprint": fp, "seed": cfg.seed})

    def _do_sample(tmp: Path) -> dict[str, Any]:
        s = load_sample_from_config(sample_section, seed=cfg.seed)
        s.write(tmp / "sample.stmorph", copy_images=False)
        return {"n_cells": s.n_cells, "n_genes": s.adata.n_vars, "images": s.channel_names, "summary": repr(s)}

    st = cache.run("sample", k_sample, _do_sample)
    timings["sample"] = {"seconds": st.meta.get("seconds"), "cached": st.cached}
    sample = SpatialSample.read(st.path / "sample.stmorph")
    emit(f"sample: {sample!r}")

    # 2. feature spaces
    keys: dict[str, str] = {}
    frames: dict[str, pd.DataFrame] = {}
    for name in order:
        spec = cfg.spaces[name]
        ups = space_inputs(spec)
        keys[name] = stage_key({"space": spec, "seed": cfg.seed, "label_key": cfg.label_key}, k_sample, *[keys[u] for u in ups])

        def _do_space(tmp: Path, name: str = name, spec: dict[str, Any] = spec, ups: list[str] = ups) -> dict[str, Any]:
            ctx = SpaceContext(sample=SpatialSample.read(st.path / "sample.stmorph"), workdir=outdir / "work" / name,
                               seed=cfg.seed, device=cfg.device, label_key=cfg.label_key,
                               upstream={u: frames[u] for u in ups}, compute=cfg.compute)
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            df = build_space(name, dict(spec), ctx)
            df.to_parquet(tmp / "features.parquet")
            return {"kind": spec["kind"], "n_cells": int(df.shape[0]), "n_features": int(df.shape[1])}

        res = cache.run(f"space_{name}", keys[name], _do_space)
        frames[name] = pd.read_parquet(res.path / "features.parquet")
        timings[f"space:{name}"] = {"seconds": res.meta.get("seconds"), "cached": res.cached}

    # 3. evaluation
    k_eval = stage_key({"evaluate": cfg.evaluate, "label_key": cfg.label_key, "seed": cfg.seed}, k_sample, *[keys[n] for n in order])

    def _do_eval(tmp: Path) -> dict[str, Any]:
        from ._evaluate import evaluate_study

        evaluate_study(sample, frames, out=tmp, label_key=cfg.label_key, random_state=cfg.seed, **cfg.evaluate)
        return {}

    ev = cache.run("evaluate", k_eval, _do_eval)
    timings["evaluate"] = {"seconds": ev.meta.get("seconds"), "cached": ev.cached}

    # 4. report
    k_report = stage_key({"report": cfg.report, "version": versions()["stmorph"]}, k_eval)

    def _do_report(tmp: Path) -> dict[str, Any]:
        write_report(sample, frames, ev.path, tmp, config=cfg, timings=timings, title=cfg.report.get("title"))
        return {}

    rep = cache.run("report", k_report, _do_report)
    timings["report"] = {"seconds": rep.meta.get("seconds"), "cached": rep.cached}

    # 5. publish: the report at the top of the output folder, the evaluation's files under evaluation/
    final: dict[str, Any] = {}
    _publish(rep.path, outdir)
    _publish(ev.path, outdir / "evaluation")
    final["report"] = str(outdir / "report.html")
    final["summary"] = str(outdir / "evaluation" / "summary.json")
    kept = {f"sample-{k_sample}", f"evaluate-{k_eval}", f"report-{k_report}", *[f"space_{n}-{keys[n]}" for n in order]}
    stale = cache.prune(kept) if cfg.report.get("prune_stale", True) else []
    if stale:
        emit(f"removed {len(stale)} stale stage folder(s)")
    total = time.perf_counter() - t_start
    (outdir / "timings.json").write_text(json.dumps({"total_seconds": round(total, 2), "stages": timings}, indent=2))
    emit(f"finished in {total:.1f} s; report: {final['report']}")
    return StudyResult(out=str(outdir), stages=timings, total_seconds=total, **final)


def _publish(src_dir: Path, dest_dir: Path) -> None:
    """Copy a finished stage's files into ``dest_dir``, each file or folder replaced in one step."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_dir.iterdir()):
        if f.name.startswith("_stage"):
            continue
        dest = dest_dir / f.name
        tmp = dest_dir / f".{f.name}.partial"
        if f.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(f, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        else:
            shutil.copy2(f, tmp)
            tmp.replace(dest)
