"""The evaluation stage of the study pipeline: align the feature spaces and run :mod:`stmorph.eval`."""

from __future__ import annotations

import dataclasses
import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ..sample import SpatialSample

__all__ = ["evaluate_study"]

log = logging.getLogger("stmorph.pipeline")


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def evaluate_study(
    sample: SpatialSample,
    frames: dict[str, pd.DataFrame],
    *,
    out: str | PathLike,
    label_key: str = "cell_type",
    random_state: int = 0,
    multiplex: list[list[str]] | None = None,
    ridge: list[str] | None = None,
    exclude_labels: list[str] | None = None,
    min_label_size: int | None = None,
    figures: bool = True,
    colocalization: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate every feature space on the cells they share and write ``summary.json``, tables and figures.

    Parameters
    ----------
    sample
        The study's sample; labels come from ``sample.adata.obs[label_key]`` and ridge targets from its counts.
    frames
        Feature spaces by name (cells x features, indexed by cell id).
    out
        Output folder.
    label_key
        The label column.
    random_state
        Seed of every analysis.
    multiplex
        Pairs of space names for multiplex Leiden, e.g. ``[["TC", "LS2"]]``.
    ridge
        Space names from which every gene is predicted by ridge regression.
    exclude_labels
        Labels whose cells are left out.
    min_label_size
        Labels with fewer cells are left out (default: the number of CV folds, which stratified CV needs).
    figures
        Also draw the evaluation's figures.
    colocalization
        Also score every cluster of each tuned clustering (spaces and multiplex pairs) with MUSE's spatial
        co-localization score (:func:`stmorph.eval.colocalization_score`, 1,000 permutations) at the cells'
        centroids (``obsm["spatial"]``): ``summary["colocalization"][clustering]`` and
        ``tables/colocalization_<clustering>.csv``. Off by default (about 2 minutes per clustering of 5,000 cells
        on 2 cores).
    **options
        Fields of :class:`stmorph.eval.EvalConfig` (``permutations``, ``n_trees``, ``k_grid``, ``protocol``, ...).
        Spaces built as a DE gene panel (``kind = "gene_subset"``, ``method = "de"``) are classified with the
        panel re-chosen inside each training fold; the summary also gives the leaky number and the difference.

    Returns
    -------
    The summary dictionary (also written to ``out/summary.json``).
    """
    from ..eval import EvalConfig, align_inputs, evaluate_spaces, write_results

    labels = sample.labels(label_key)
    if labels is None:
        raise StmorphInputError(f"the sample has no label column '{label_key}'; evaluation needs labels",
                                column=label_key, expected=f"one of {list(sample.adata.obs.columns)}")
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = set(options) - fields
    if unknown:
        raise StmorphInputError(f"unknown evaluation options {sorted(unknown)}", column="evaluate",
                                expected=f"fields of stmorph.eval.EvalConfig: {sorted(fields)}")
    for k in ("k_grid", "resolutions", "multiplex_weights", "permdisp_tests"):
        if k in options:
            options[k] = tuple(options[k])
    cfg = EvalConfig(random_state=random_state, **options)

    min_size = int(min_label_size if min_label_size is not None else cfg.n_splits)
    # the same input path as `stmorph evaluate`; the spaces come from one sample, so no overlap is demanded
    spaces, labels, report = align_inputs(frames, labels, exclude_labels=[str(x) for x in (exclude_labels or [])],
                                          min_overlap=0.0, min_label_size=min_size)
    n_missing, small = report["missing_labels"], report["small_labels_left_out"]
    if n_missing:
        log.warning("%d cells without a label left out of the evaluation", n_missing)
    if small:
        log.warning("labels with fewer than %d cells left out of the evaluation: %s", min_size, small)
    common = labels.index
    dropped = {name: int(report["dropped"][name]) for name in frames}
    if any(dropped.values()):
        log.warning("evaluation uses the %d cells shared by all spaces; cells dropped per space: %s", len(common), dropped)
    if len(common) < 10:
        raise StmorphInputError(f"only {len(common)} cells are shared by all feature spaces and labelled", expected=">= 10 cells")
    pairs = [tuple(map(str, p)) for p in (multiplex or [])]
    for p in pairs:
        if len(p) != 2 or any(s not in spaces for s in p):
            raise StmorphInputError(f"multiplex pair {list(p)} must name two feature spaces", column="evaluate.multiplex",
                                    expected=f"names among {list(spaces)}")
    ridge_inputs = {}
    if ridge:
        a = sample.adata[common]
        X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
        counts = pd.DataFrame(X, index=common, columns=a.var_names)
        for name in ridge:
            if name not in spaces:
                raise StmorphInputError(f"ridge space '{name}' is not a feature space", column="evaluate.ridge",
                                        expected=f"names among {list(spaces)}")
            ridge_inputs[name] = counts
    fold_panels = {}
    de_spaces = [name for name, df in frames.items() if (df.attrs.get("stmorph_panel") or {}).get("method") == "de"]
    if de_spaces:
        from ..pp import de_gene_columns, normalize_counts

        a = sample.adata[common]
        Xc = normalize_counts(a.X.toarray() if hasattr(a.X, "toarray") else a.X)
        # the DE panel was chosen with all cells' labels: classify with a panel chosen inside each training fold
        fold_panels = {name: (Xc, de_gene_columns) for name in de_spaces}
    res = evaluate_spaces(spaces, labels, config=cfg, multiplex=pairs, ridge=ridge_inputs,
                          fold_panels=fold_panels)
    if colocalization and cfg.run_clustering and "spatial" in sample.adata.obsm:
        from ..eval import colocalization_score

        xy = pd.DataFrame(np.asarray(sample.adata.obsm["spatial"])[:, :2], index=sample.cell_ids).loc[common].to_numpy()
        res.summary["colocalization"] = {}
        for name in [c for c in res.tables["clusters"].columns if c != "label"]:
            df = colocalization_score(xy, res.tables["clusters"][name].to_numpy(), random_state=cfg.random_state)
            res.tables[f"colocalization_{name}"] = df.set_index("cluster")
            res.summary["colocalization"][name] = {
                str(r.cluster): {"n_cells": int(r.n_cells), "scs": _finite(r.scs), "p_value": _finite(r.p_value)}
                for r in df.itertuples()}
    write_results(res, Path(out), extra={"cells": {"n_used": int(len(common)), "dropped_per_space": dropped,
                                                   "small_labels_left_out": small, "missing_labels": n_missing}})
    if figures:
        from ..pl import write_eval_figures

        write_eval_figures(res, Path(out) / "figures")
    return res.summary
