"""One-call evaluation of feature spaces against labels: the study's analyses, written as JSON, CSV and figures."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StmorphInputError

__all__ = ["EvalConfig", "EvalResults", "evaluate_spaces", "read_feature_table", "align_inputs", "write_results"]


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate_spaces` (defaults: the study's).

    Attributes
    ----------
    permutations
        Permutations per pairwise PERMANOVA/PERMDISP test (999).
    alpha
        Significance level for BH-adjusted p-values.
    permdisp_tests
        PERMDISP centres to run (``"median"`` and/or ``"centroid"``); the first one goes into the summary.
    standardize
        Z-score features (PERMANOVA, PERMDISP, clustering and silhouettes).
    n_trees, n_splits, rf_n_jobs
        Random forest: trees (1,000), stratified folds (5), parallel jobs.
    rf_max_samples
        Bootstrap size per tree as a fraction of the training fold (``None``: full size, the study's setting).
        0.1 cuts the forest's CPU time 4-5x but is *not* equivalent on the ileum (measured, 1,000 trees x 5 folds:
        stain balanced accuracy 0.267 vs 0.238 with full bootstrap, TC Stromal recall 0.67 vs 0.82), so it is
        off by default.
    rf_backend
        ``"stmorph"`` (default; the numba forest, same algorithm as sklearn's; ~5x less CPU on dense
        features, no gain on sparse counts) or ``"sklearn"``.
    k_grid, resolutions, min_clusters
        Leiden grid and the lower bound on clusters (>= 5).
    leiden_backend
        ``"leidenalg"`` (default: the multiplex optimiser, so inherited resolutions mean the same) or ``"igraph"``
        (~15x faster tuning; only for runs without multiplex, refused otherwise).
    leiden_n_jobs
        Worker processes for the Leiden runs of the tuning grid and the multiplex weights (-1: all cores);
        results do not depend on it. Their CPU time is not in the ``cpu`` timings (those count this process).
    multiplex_weights
        Weights of the first space tried in multiplex Leiden.
    ridge_alpha, ridge_test_size
        Ridge penalty (1) and held-out fraction (0.2).
    random_state
        Seed for everything.
    run_permanova, run_permdisp, run_classification, run_clustering
        Switch analyses off (e.g. for quick looks).
    """

    permutations: int = 999
    alpha: float = 0.05
    permdisp_tests: tuple[str, ...] = ("median", "centroid")
    standardize: bool = True
    n_trees: int = 1000
    n_splits: int = 5
    rf_n_jobs: int = -1
    rf_max_samples: float | None = None
    rf_backend: str = "stmorph"
    k_grid: tuple[int, ...] = (10, 20, 30)
    resolutions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
    min_clusters: int = 5
    leiden_backend: str = "leidenalg"
    leiden_n_jobs: int = -1
    multiplex_weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ridge_alpha: float = 1.0
    ridge_test_size: float = 0.2
    random_state: int = 0
    run_permanova: bool = True
    run_permdisp: bool = True
    run_classification: bool = True
    run_clustering: bool = True


@dataclass
class EvalResults:
    """Everything :func:`evaluate_spaces` computed.

    Attributes
    ----------
    summary
        The JSON-ready summary (schema of ``summary.json``).
    tables
        Named DataFrames (pairwise tests, per-label accuracy, grids, ridge results, clusters).
    timings
        Wall seconds per analysis (``"space/analysis"``) and process CPU seconds (``"space/analysis cpu"``).
    """

    summary: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def read_feature_table(path: str | PathLike, *, id_column: str | None = None, obsm_key: str | None = None) -> pd.DataFrame:
    """Read a feature table: CSV (first column or ``id_column`` = cell id) or ``.h5ad`` (``X`` or ``obsm[key]``).

    Parameters
    ----------
    path
        The file.
    id_column
        Column holding cell ids in a CSV (default: the first column).
    obsm_key
        For ``.h5ad``: take ``obsm[obsm_key]`` instead of ``X``.

    Returns
    -------
    DataFrame indexed by cell id (strings), numeric columns.

    Examples
    --------
    >>> read_feature_table("features.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise StmorphInputError("file not found", file=path, expected="an existing CSV or .h5ad file")
    if path.suffix == ".h5ad":
        import anndata as ad

        a = ad.read_h5ad(path)
        if obsm_key is not None:
            if obsm_key not in a.obsm:
                raise StmorphInputError(f"obsm key {obsm_key!r} not found", file=path, expected=f"one of {list(a.obsm)}")
            M = np.asarray(a.obsm[obsm_key])
            cols = [f"{obsm_key}_{i}" for i in range(M.shape[1])]
        else:
            M = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
            cols = list(map(str, a.var_names))
        return pd.DataFrame(M, index=a.obs_names.astype(str), columns=cols)
    df = pd.read_csv(path)
    col = id_column or df.columns[0]
    if col not in df.columns:
        raise StmorphInputError("id column not found", file=path, column=col, expected=f"one of {list(df.columns)[:10]}")
    df = df.set_index(col)
    df.index = df.index.astype(str)
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise StmorphInputError(f"non-numeric feature columns {bad[:5]}", file=path, expected="numeric features")
    if df.index.duplicated().any():
        raise StmorphInputError("duplicated cell ids", file=path, column=str(col), expected="unique cell ids")
    return df


def align_inputs(
    tables: Mapping[str, pd.DataFrame], labels: pd.Series, *, exclude_labels: Sequence[str] = ()
) -> tuple[dict[str, pd.DataFrame], pd.Series, dict]:
    """Restrict all tables and the labels to the cells they share (minus excluded labels), in one order.

    Parameters
    ----------
    tables
        Named DataFrames indexed by cell id.
    labels
        Labels indexed by cell id.
    exclude_labels
        Labels to drop (e.g. ``"Removed"``).

    Returns
    -------
    ``(tables, labels, report)`` with ``report`` = cells per input, cells kept and dropped per input.

    Examples
    --------
    >>> t = {"A": pd.DataFrame({"f": [1.0, 2.0, 3.0]}, index=["a", "b", "c"])}
    >>> _, lab, rep = align_inputs(t, pd.Series(["x", "y"], index=["a", "b"]))
    >>> rep["n_cells"], rep["dropped"]["A"]
    (2, 1)
    """
    labels = labels.dropna()
    labels.index = labels.index.astype(str)
    excl = set(map(str, exclude_labels))
    labels = labels[~labels.astype(str).isin(excl)]
    common = labels.index
    for t in tables.values():
        common = common.intersection(t.index.astype(str))
    if len(common) == 0:
        raise StmorphInputError("no cell ids are shared by all inputs", expected="overlapping cell ids")
    order = labels.index[labels.index.isin(common)]
    out = {k: v.loc[order] for k, v in tables.items()}
    report = {
        "n_cells": int(len(order)),
        "inputs": {k: int(len(v)) for k, v in tables.items()} | {"labels": int(len(labels))},
        "dropped": {k: int(len(v) - len(order)) for k, v in tables.items()} | {"labels": int(len(labels) - len(order))},
        "excluded_labels": sorted(excl),
    }
    return out, labels.loc[order].astype(str), report


def _record(timings: dict, key: str, t_wall: float, t_cpu: float) -> None:
    """Store wall seconds under ``key`` and process CPU seconds (all threads) under ``key + " cpu"``."""
    timings[key] = time.perf_counter() - t_wall
    timings[f"{key} cpu"] = time.process_time() - t_cpu


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def evaluate_spaces(
    spaces: Mapping[str, pd.DataFrame | np.ndarray],
    labels: pd.Series | np.ndarray,
    *,
    config: EvalConfig | None = None,
    multiplex: Sequence[tuple[str, str]] = (),
    ridge: Mapping[str, pd.DataFrame] | None = None,
    show_progress: bool | None = None,
) -> EvalResults:
    """Run the study's analyses on each feature space (rows = the same cells, in the same order as ``labels``).

    Per space: pairwise PERMANOVA and PERMDISP (BH), random-forest classification, silhouette-tuned Leiden and
    its agreement with the labels. Per pair in ``multiplex``: multiplex Leiden with each space's tuned k and
    resolution. Per ``ridge`` entry ``{space: counts}``: gene prediction from that space (R^2, F-test padj).

    Parameters
    ----------
    spaces
        ``{name: (n, d) features}``; DataFrames are used by position (align them first, :func:`align_inputs`).
    labels
        ``(n,)`` labels.
    config
        :class:`EvalConfig` (defaults: the study's settings).
    multiplex
        Pairs of space names to cluster jointly.
    ridge
        ``{space name: (n, G) counts DataFrame}`` (normalised to median total + log1p before fitting).
    show_progress
        Progress bars (``None``: follow ``STMORPH_PROGRESS``).

    Returns
    -------
    :class:`EvalResults` whose ``summary`` follows the ``summary.json`` schema.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(200, centers=5, random_state=0)
    >>> cfg = EvalConfig(permutations=99, n_trees=20, k_grid=(15,), resolutions=(0.5, 1.0))
    >>> res = evaluate_spaces({"A": X}, y.astype(str), config=cfg)
    >>> res.summary["feature_spaces"]["A"]["classification"]["balanced_accuracy"] > 0.9
    True
    """
    from sklearn.metrics import pairwise_distances

    from ._classify import rf_classification
    from ._cluster import cluster_metrics, leiden_tune, multiplex_leiden
    from ._genes import latent_f_tests, normalize_counts, ridge_gene_prediction
    from ._stats import pairwise_permanova, pairwise_permdisp, zscore

    cfg = config or EvalConfig()
    y = np.asarray(labels).astype(str)
    n = y.size
    mats: dict[str, np.ndarray] = {}
    for name, X in spaces.items():
        M = np.asarray(X, dtype=np.float64)
        if M.ndim != 2 or M.shape[0] != n:
            raise StmorphInputError(f"feature space {name!r} has shape {M.shape}, labels have {n} cells",
                                    expected="one row per labelled cell")
        if not np.isfinite(M).all():
            raise StmorphInputError(f"feature space {name!r} contains NaN or infinite values", expected="finite features")
        mats[name] = M
    if multiplex and cfg.run_clustering and cfg.leiden_backend != "leidenalg":
        raise StmorphInputError(f"leiden_backend={cfg.leiden_backend!r} with multiplex",
                                expected="leiden_backend='leidenalg' (its resolutions are the multiplex optimiser's)")
    summary: dict = {"feature_spaces": {}, "multiplex": {}, "ridge": {}}
    tables: dict[str, pd.DataFrame] = {}
    timings: dict[str, float] = {}
    tuned: dict[str, tuple] = {}
    clusters_df = pd.DataFrame(index=pd.Index(labels.index if isinstance(labels, pd.Series) else np.arange(n), name="cell"))
    clusters_df["label"] = y
    for name, M in mats.items():
        entry: dict = {"n_cells": int(n), "n_features": int(M.shape[1])}
        Z = zscore(M) if cfg.standardize else M
        if cfg.run_classification:
            t, tc = time.perf_counter(), time.process_time()
            cr = rf_classification(M, y, n_trees=cfg.n_trees, n_splits=cfg.n_splits, random_state=cfg.random_state,
                                   n_jobs=cfg.rf_n_jobs, max_samples=cfg.rf_max_samples, show_progress=show_progress,
                                   backend=cfg.rf_backend)
            _record(timings, f"{name}/classification", t, tc)
            entry["classification"] = {"balanced_accuracy": cr.balanced_accuracy, "per_label": cr.per_label.to_dict()}
            tables[f"classification_{name}"] = cr.per_label.rename("balanced_accuracy").to_frame()
            tables[f"confusion_{name}"] = cr.confusion
        if cfg.run_permanova:
            t, tc = time.perf_counter(), time.process_time()
            df = pairwise_permanova(Z, y, permutations=cfg.permutations, random_state=cfg.random_state,
                                    standardize=False, alpha=cfg.alpha, show_progress=show_progress)
            _record(timings, f"{name}/permanova", t, tc)
            tables[f"permanova_{name}"] = df
            entry["permanova"] = {"n_pairs": int(len(df)), "n_significant": int(df["significant"].sum())}
        if cfg.run_permdisp:
            for i, test in enumerate(cfg.permdisp_tests):
                t, tc = time.perf_counter(), time.process_time()
                df = pairwise_permdisp(Z, y, test=test, permutations=cfg.permutations, random_state=cfg.random_state,
                                       standardize=False, alpha=cfg.alpha, show_progress=show_progress)
                _record(timings, f"{name}/permdisp_{test}", t, tc)
                tables[f"permdisp_{test}_{name}"] = df
                res = {"n_pairs": int(len(df)), "n_significant": int(df["significant"].sum()), "test": test}
                if i == 0:
                    entry["permdisp"] = res
                else:
                    entry[f"permdisp_{test}"] = res
        if cfg.run_clustering:
            t, tc = time.perf_counter(), time.process_time()
            D = pairwise_distances(Z)
            lr = leiden_tune(Z, k_grid=cfg.k_grid, resolutions=cfg.resolutions, min_clusters=cfg.min_clusters,
                             backend=cfg.leiden_backend, n_jobs=cfg.leiden_n_jobs,
                             random_state=cfg.random_state, D=D, show_progress=show_progress)
            met = cluster_metrics(y, lr.clusters, D=D)
            _record(timings, f"{name}/clustering", t, tc)
            entry["clustering"] = {"k": lr.k, "resolution": lr.resolution} | met
            tables[f"leiden_grid_{name}"] = lr.grid
            clusters_df[name] = lr.clusters
            tuned[name] = (Z, lr, D)
        summary["feature_spaces"][name] = entry
    for a, b in multiplex:
        if a not in mats or b not in mats:
            raise StmorphInputError(f"multiplex pair {a}+{b} names an unknown space", expected=f"names in {list(mats)}")
        if not cfg.run_clustering:
            break
        t, tc = time.perf_counter(), time.process_time()
        (Za, la, Da), (Zb, lb, Db) = tuned[a], tuned[b]
        mr = multiplex_leiden(Za, Zb, k=(la.k, lb.k), resolution=(la.resolution, lb.resolution),
                              weights=cfg.multiplex_weights, min_clusters=cfg.min_clusters,
                              random_state=cfg.random_state, graphs=(la.graphs[la.k], lb.graphs[lb.k]), D=(Da, Db),
                              show_progress=show_progress, n_jobs=cfg.leiden_n_jobs)
        met = cluster_metrics(y, mr.clusters)
        met["silhouette"] = mr.silhouette
        _record(timings, f"{a}+{b}/multiplex", t, tc)
        summary["multiplex"][f"{a}+{b}"] = {"weight": mr.weight} | met
        tables[f"multiplex_grid_{a}+{b}"] = mr.grid
        clusters_df[f"{a}+{b}"] = mr.clusters
    for name, counts in (ridge or {}).items():
        if name not in mats:
            raise StmorphInputError(f"ridge space {name!r} is not a feature space", expected=f"one of {list(mats)}")
        t, tc = time.perf_counter(), time.process_time()
        C = np.asarray(counts, dtype=np.float64)
        if C.shape[0] != n:
            raise StmorphInputError(f"counts have {C.shape[0]} rows, labels {n}", expected="the same cells")
        genes = [str(g) for g in counts.columns] if isinstance(counts, pd.DataFrame) else [f"g{i}" for i in range(C.shape[1])]
        Y = normalize_counts(C)
        r2 = ridge_gene_prediction(mats[name], Y, genes, alpha=cfg.ridge_alpha, test_size=cfg.ridge_test_size,
                                   random_state=cfg.random_state)
        ft = latent_f_tests(mats[name], Y, genes)
        _record(timings, f"{name}/ridge", t, tc)
        tab = r2.join(ft)
        tables[f"ridge_{name}"] = tab
        summary["ridge"][name] = {"r2": tab["r2"].to_dict(), "padj": tab["padj"].to_dict()}
    tables["clusters"] = clusters_df
    summary["config"] = asdict(cfg)
    return EvalResults(summary=_clean(summary), tables=tables, timings=timings)


def write_results(results: EvalResults, out_dir: str | PathLike, *, figures: bool = True, extra: dict | None = None) -> Path:
    """Write ``summary.json``, one CSV per table and (optionally) figures into ``out_dir``.

    Parameters
    ----------
    results
        Output of :func:`evaluate_spaces`.
    out_dir
        Folder (created).
    figures
        Also write PNG figures (pairwise p-value heatmaps, per-label balanced accuracy, Jaccard).
    extra
        Extra keys merged into ``summary.json`` (e.g. the cell-alignment report).

    Returns
    -------
    The output folder.

    Examples
    --------
    >>> write_results(res, "eval_out")  # doctest: +SKIP
    """
    from .._utils import atomic_path

    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    summary = dict(results.summary) | _clean(extra or {}) | {"timings_s": _clean(results.timings)}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=False))
    for name, df in results.tables.items():
        with atomic_path(out / "tables" / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=not name.startswith(("permanova_", "permdisp_", "leiden_grid_", "multiplex_grid_")))
    if figures:
        from ..pl._eval import write_eval_figures

        write_eval_figures(results, out / "figures")
    return out
