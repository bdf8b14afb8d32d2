"""One-call evaluation of feature spaces against labels: the study's analyses, written as JSON, CSV and figures."""

from __future__ import annotations

import contextlib
import json
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import StmorphInputError

__all__ = [
    "EvalConfig",
    "EvalResults",
    "evaluate_spaces",
    "read_feature_table",
    "read_label_table",
    "split_table_key",
    "drop_small_labels",
    "align_inputs",
    "write_results",
]

if TYPE_CHECKING:
    from anndata import AnnData


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
        Leiden grid and the bound on clusters: clusterings with ``<= min_clusters`` (5) clusters are never chosen
        (single space and multiplex); when none of the grid meets it, the summary says ``"bound_met": false``.
        With ``protocol="study"``, grids left at these defaults become the study's (k 10..50 step 5, resolutions
        0.1..1.0 step 0.1 then 1.2..2.0 step 0.2, weights 0.05..0.95).
    protocol
        Leiden tuning protocol: ``"fast"`` (default; stmorph's graphs and optimiser, 21-point grid, parallel) or
        ``"study"`` (the study's code: ``scanpy.pp.neighbors(n_pcs=0)`` + ``scanpy.tl.leiden``, multiplex through
        ``muon.tl.leiden``; 135 + 19 runs, 5-20 minutes per space on 5,000 cells and 2 cores). Both cluster the
        same features (z-scored with ``standardize``): the study's public code clusters ``adata.X`` without saying
        how TC was scaled; on the ileum z-scored TC gives 18 clusters (the study reports 16), unscaled normalised
        TC 7 (``benchmarks/RESULTS.md``). See :mod:`stmorph.eval._cluster`.
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
    protocol: str = "fast"
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

    def __post_init__(self) -> None:
        from ._cluster import PROTOCOLS

        if self.protocol not in PROTOCOLS:
            raise StmorphInputError(f"protocol {self.protocol!r}", column="protocol", expected=f"one of {list(PROTOCOLS)}")


@dataclass
class EvalResults:
    """Everything :func:`evaluate_spaces` computed.

    Attributes
    ----------
    summary
        The JSON-ready summary (schema of ``summary.json``), including ``scaling``: what was subsampled or
        approximated at this number of cells (:func:`evaluate_spaces`).
    tables
        Named DataFrames (pairwise tests, per-label accuracy, grids, ridge results, clusters).
    timings
        Wall seconds per analysis (``"space/analysis"``) and process CPU seconds (``"space/analysis cpu"``).
    """

    summary: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


_ID_NAMES = ("cell_id", "cell", "cell_ID", "CellID", "cell_index", "barcode", "obs_names", "index", "id")
_ANNDATA_SUFFIXES = (".h5ad", ".loom")
_TABLE_HINT = "a CSV/TSV, parquet, .h5ad or .loom file"


def _suffix(path: Path) -> str:
    """Lower-case suffix without a trailing ``.gz``/``.bz2``/``.zip``/``.xz`` (``a.csv.gz`` -> ``.csv``)."""
    sfx = [s.lower() for s in path.suffixes]
    while sfx and sfx[-1] in (".gz", ".bz2", ".zip", ".xz"):
        sfx.pop()
    return sfx[-1] if sfx else ""


def split_table_key(spec: str | PathLike) -> tuple[Path, str | None]:
    """Split ``"file.h5ad:KEY"`` into the file and the key (``None`` without one).

    The key is the part after the last ``:`` when the part before it ends in ``.h5ad`` or ``.loom``; any other
    path is returned whole.

    Parameters
    ----------
    spec
        A path, optionally followed by ``:KEY`` (an ``obsm`` key, a layer, or ``X``).

    Returns
    -------
    ``(path, key)``.

    Examples
    --------
    >>> split_table_key("out/sample_ls2.h5ad:X_ls2_cpu")
    (PosixPath('out/sample_ls2.h5ad'), 'X_ls2_cpu')
    >>> split_table_key("features.csv")
    (PosixPath('features.csv'), None)
    """
    s = str(spec)
    if ":" in s:
        head, key = s.rsplit(":", 1)
        if key and head.lower().endswith(_ANNDATA_SUFFIXES) and not any(c in key for c in "/\\"):
            return Path(head), key
    return Path(s), None


def _is_unnamed(col: object) -> bool:
    """A column pandas made up for a header without a name (``Unnamed: 0``) or an empty name."""
    s = str(col).strip()
    return s == "" or re.fullmatch(r"Unnamed: \d+(_level_\d+)?", s) is not None


def _numeric_looking(values: pd.Series) -> bool:
    """All non-missing values parse as numbers (row numbers, not cell ids)."""
    v = values.dropna()
    return len(v) > 0 and bool(pd.to_numeric(v.astype(str), errors="coerce").notna().all())


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV/TSV/parquet table with the cell ids in a column (a parquet index is turned into a column)."""
    sfx = _suffix(path)
    try:
        if sfx in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            if not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index()
        elif sfx in (".tsv", ".tab", ".txt"):
            df = pd.read_csv(path, sep="\t")
        else:
            df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - report unreadable input clearly
        raise StmorphInputError(f"cannot read the table: {exc}", file=path, expected=_TABLE_HINT) from exc
    return df


def _id_column(df: pd.DataFrame, path: Path, id_column: str | None) -> str:
    """The cell-id column: ``id_column``, else a column with a usual id name, else the first column if usable."""
    cols = list(df.columns)
    if id_column is not None:
        if id_column not in cols:
            raise StmorphInputError("id column not found", file=path, column=id_column,
                                    expected=f"one of {[str(c) for c in cols[:10]]}")
        return id_column
    names = {n.lower() for n in _ID_NAMES}
    for c in cols:
        if str(c).strip().lower() in names:
            return c
    if not cols:
        raise StmorphInputError("the table has no columns", file=path, expected="a cell-id column and features")
    first = cols[0]
    if _is_unnamed(first) and _numeric_looking(df[first]):
        raise StmorphInputError(
            f"the first column {str(first)!r} has no name and holds row numbers (a pandas row index written "
            "with the table), not cell ids; joining on it would pair unrelated cells", file=path,
            expected="--id-column NAME (id_column = ... in a study config) naming the cell-id column, or a table "
                     f"whose id column is named one of {list(_ID_NAMES)}")
    return first


def _raise_duplicates(ids: pd.Index, path: str | PathLike, what: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        raise StmorphInputError(f"{len(dup)} duplicated cell ids in the {what}, e.g. {list(dict.fromkeys(dup))[:5]}",
                                file=path, expected="one row per cell id")


def _read_loom(path: Path) -> AnnData:
    """A ``.loom`` file as AnnData (cells x genes), read with h5py so loompy is not needed."""
    import anndata as ad
    import h5py

    def _strings(a) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(a)]

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise StmorphInputError("no /matrix in the loom file", file=path, expected="a loom file (genes x cells)")
        X = np.asarray(f["matrix"]).T
        n, g = X.shape
        ca = f.get("col_attrs", {})
        ra = f.get("row_attrs", {})
        cid = next((k for k in ("CellID", "obs_names", "cell_id", "cell") if k in ca), None)
        gid = next((k for k in ("Gene", "var_names", "gene") if k in ra), None)
        obs_names = _strings(ca[cid]) if cid else [str(i) for i in range(n)]
        var_names = _strings(ra[gid]) if gid else [f"g{i}" for i in range(g)]
        obsm = {k: np.asarray(ca[k]) for k in ca if np.asarray(ca[k]).ndim == 2 and np.asarray(ca[k]).shape[0] == n}
        layers = {k: np.asarray(f["layers"][k]).T for k in f.get("layers", {})}
    a = ad.AnnData(X, obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=var_names), layers=layers or None)
    for k, v in obsm.items():
        a.obsm[k] = v
    return a


def _read_anndata(path: Path, *, backed: bool = False):
    import anndata as ad

    try:
        if _suffix(path) == ".loom":
            return _read_loom(path)
        return ad.read_h5ad(path, backed="r" if backed else None)
    except StmorphInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - report unreadable input clearly
        raise StmorphInputError(f"cannot read the file: {exc}", file=path, expected=_TABLE_HINT) from exc


def _anndata_features(path: Path, key: str | None) -> pd.DataFrame:
    """Features of an ``.h5ad``/``.loom``: ``obsm[key]``, ``layers[key]`` or (``key`` = ``"X"``) ``X``."""
    backed = _suffix(path) == ".h5ad"  # look at obsm before loading X, which may be large
    a = _read_anndata(path, backed=backed)
    try:
        embeddings = [str(k) for k in a.obsm if k != "spatial"]
        if key is None:
            if embeddings:
                raise StmorphInputError(
                    f"the file holds embeddings in obsm {embeddings}; which one is the feature space? Reading X (the "
                    "counts) would score the counts under this space's name", file=path,
                    expected=f"{path}:KEY with KEY one of {embeddings} (key = ... in a study config), or {path}:X for X")
            key = "X"
        if key == "X" or (key in a.layers and key not in a.obsm):
            if backed:
                a = a.to_memory()
            M, cols = (a.X if key == "X" else a.layers[key]), [str(v) for v in a.var_names]
        elif key in a.obsm:
            M = a.obsm[key]
            if isinstance(M, pd.DataFrame):
                cols, M = [str(c) for c in M.columns], M.to_numpy()
            else:
                cols = [f"{key}_{i}" for i in range(np.shape(M)[1])]
        else:
            raise StmorphInputError(f"key {key!r} is neither X, an obsm key nor a layer", file=path,
                                    expected=f"X, one of obsm {list(map(str, a.obsm))} or layers {list(map(str, a.layers))}")
        M = M.toarray() if hasattr(M, "toarray") else np.asarray(M)
        ids = pd.Index(a.obs_names.astype(str), name="cell")
    finally:
        if getattr(a, "isbacked", False):
            a.file.close()
    _raise_duplicates(ids, path, "obs names")
    return pd.DataFrame(M, index=ids, columns=cols)


def read_feature_table(
    path: str | PathLike,
    *,
    id_column: str | None = None,
    obsm_key: str | None = None,
    numeric_only: bool = False,
) -> pd.DataFrame:
    """Read a per-cell feature or counts table: CSV/TSV, parquet, ``.h5ad`` or ``.loom``.

    Tables: the cell ids are the column ``id_column``, else the first column named one of ``cell_id``, ``cell``,
    ``cell_ID``, ``CellID``, ``cell_index``, ``barcode``, ``obs_names``, ``index``, ``id`` (any case), else the
    first column unless it is an unnamed pandas row index holding row numbers (refused: joining on row numbers
    pairs unrelated cells). Other unnamed columns (``Unnamed: 3``, empty headers) are never used as features.
    A parquet file's index is used like a column.

    AnnData files: ``obsm[key]`` (or ``layers[key]``; ``X`` for ``X``), with the key given as ``obsm_key`` or
    after the path, ``"file.h5ad:X_ls2_cpu"``. Without a key, ``X`` is read only when ``obsm`` holds nothing
    besides ``spatial``; otherwise the file is refused with the keys it holds, so an embedding is never
    replaced by the counts unnoticed.

    Parameters
    ----------
    path
        The file, optionally followed by ``:KEY`` for ``.h5ad``/``.loom``.
    id_column
        Column holding cell ids in a table (default: detected as above).
    obsm_key
        For ``.h5ad``/``.loom``: ``obsm`` key, layer, or ``"X"``.
    numeric_only
        Leave out non-numeric feature columns (with a warning) instead of refusing the table.

    Returns
    -------
    DataFrame indexed by cell id (strings, unique), numeric columns.

    Examples
    --------
    >>> read_feature_table("features.csv")  # doctest: +SKIP
    >>> read_feature_table("sample_ls2.h5ad:X_ls2_cpu")  # doctest: +SKIP
    """
    path, key = split_table_key(path)
    if obsm_key is not None and key is not None and obsm_key != key:
        raise StmorphInputError(f"two keys given: {key!r} in the path and obsm_key={obsm_key!r}", file=path,
                                expected="one key")
    key = obsm_key if obsm_key is not None else key
    if not path.exists():
        raise StmorphInputError("file not found", file=path, expected=f"an existing file: {_TABLE_HINT}")
    if _suffix(path) in _ANNDATA_SUFFIXES:
        df = _anndata_features(path, key)
    else:
        if key is not None:
            raise StmorphInputError(f"a key ({key!r}) only applies to .h5ad/.loom files", file=path)
        df = _read_table(path)
        col = _id_column(df, path, id_column)
        unnamed = [c for c in df.columns if c != col and _is_unnamed(c)]
        if unnamed:
            warnings.warn(f"{path}: unnamed column(s) {[str(c) for c in unnamed]} (a written row index?) are not "
                          "used as features", UserWarning, stacklevel=2)
        ids = pd.Index(df[col].astype(str), name="cell")
        df = df.drop(columns=[col, *unnamed])
        df.index = ids
        bad = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        if bad and numeric_only:
            warnings.warn(f"{path}: non-numeric columns {bad[:5]} are not used as features", UserWarning, stacklevel=2)
            df = df.drop(columns=bad)
        elif bad:
            raise StmorphInputError(f"non-numeric feature columns {bad[:5]}", file=path,
                                    expected=f"numeric features (cell ids in column {str(col)!r})")
        _raise_duplicates(df.index, path, f"id column {str(col)!r}")
    if df.shape[1] == 0:
        raise StmorphInputError("no feature columns", file=path, expected="at least one numeric feature column")
    return df


def _as_labels(values: pd.Series) -> pd.Series:
    """Labels as strings with missing ones (NaN, None, empty or blank strings) kept as NaN."""
    v = pd.Series(values.to_numpy(dtype=object), index=values.index)
    missing = v.isna() | v.map(lambda x: isinstance(x, str) and not x.strip())
    num = pd.to_numeric(v[~missing], errors="coerce")
    if len(num) and num.notna().all() and np.all(np.mod(num.to_numpy(float), 1) == 0):
        out = num.astype(np.int64).astype(str)  # 1.0 (an int column with gaps read as float) -> "1"
    else:
        out = v[~missing].astype(str)
    return out.reindex(v.index).astype(object)


def read_label_table(path: str | PathLike, label_column: str | None = None, id_column: str | None = None) -> pd.Series:
    """Read cell labels: CSV/TSV, parquet, ``.h5ad``/``.loom`` (``obs``).

    Parameters
    ----------
    path
        The file.
    label_column
        Column with the labels (default: the last column; in ``obs`` the last ``obs`` column).
    id_column
        Cell-id column of a table (default: detected as in :func:`read_feature_table`; ``obs_names`` for AnnData).

    Returns
    -------
    Series of labels (strings) indexed by cell id (strings). Missing labels (NaN, empty) stay NaN;
    :func:`align_inputs` drops and counts them. Duplicated cell ids are refused.

    Examples
    --------
    >>> read_label_table("labels.csv", label_column="cell_type")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise StmorphInputError("file not found", file=path, expected="a table of cell ids and labels, or .h5ad")
    if _suffix(path) in _ANNDATA_SUFFIXES:
        a = _read_anndata(path, backed=_suffix(path) == ".h5ad")
        obs = a.obs.copy()
        if getattr(a, "isbacked", False):
            a.file.close()
        if obs.shape[1] == 0:
            raise StmorphInputError("obs has no columns", file=path, expected="a label column in obs")
        col = label_column or obs.columns[-1]
        if col not in obs.columns:
            raise StmorphInputError("label column not found", file=path, column=col, expected=f"one of {list(obs.columns)}")
        ids, values, idc = obs.index.astype(str), obs[col], "obs_names"
    else:
        df = _read_table(path)
        idc = _id_column(df, path, id_column)
        rest = [c for c in df.columns if c != idc and not _is_unnamed(c)]
        col = label_column or (rest[-1] if rest else None)
        if col is None or col not in df.columns or col == idc:
            raise StmorphInputError("label column not found", file=path, column=col,
                                    expected=f"a label column among {[str(c) for c in rest]} (cell ids: {str(idc)!r})")
        ids, values = df[idc].astype(str), df[col]
    ids = pd.Index(ids, name="cell")
    _raise_duplicates(ids, path, f"labels (id column {str(idc)!r})")
    lab = _as_labels(pd.Series(np.asarray(values, dtype=object), index=ids))
    lab.name = str(col)
    return lab


def drop_small_labels(labels: pd.Series, min_size: int) -> tuple[pd.Series, dict[str, int]]:
    """Leave out labels with fewer than ``min_size`` cells (stratified cross-validation needs one per fold).

    Parameters
    ----------
    labels
        Labels indexed by cell id.
    min_size
        Fewest cells a label must have (e.g. ``EvalConfig.n_splits``).

    Returns
    -------
    ``(labels, left_out)`` with ``left_out`` = ``{label: number of cells}`` of the labels removed.

    Examples
    --------
    >>> lab, out = drop_small_labels(pd.Series(["a"] * 5 + ["b"] * 2), 5)
    >>> len(lab), out
    (5, {'b': 2})
    """
    sizes = labels.value_counts()
    small = sizes[sizes < int(min_size)]
    left_out = {str(k): int(v) for k, v in small.items()}
    if left_out:
        labels = labels[~labels.isin(small.index)]
    return labels, left_out


def _shared_ids(ids: Mapping[str, pd.Index], min_overlap: float) -> tuple[pd.Index, dict[str, float]]:
    """Cell ids shared by all inputs (in the first input's order) and each input's shared fraction.

    Refuses (:class:`StmorphInputError` naming the input, the fraction and example ids on both sides) when an
    input has fewer than ``min_overlap`` of its ids shared: mostly unmatched ids mean a wrong id column.
    """
    names = list(ids)
    shared = ids[names[0]]
    for name in names[1:]:
        shared = shared.intersection(ids[name], sort=False)
    overlap = {name: (len(idx.intersection(shared)) / len(idx) if len(idx) else 0.0) for name, idx in ids.items()}
    for name, frac in overlap.items():
        if frac < min_overlap or len(shared) == 0:
            idx = ids[name]
            mine = list(idx.difference(shared, sort=False)[:3]) if len(idx) else []
            others = {k: list(v[:3]) for k, v in ids.items() if k != name}
            raise StmorphInputError(
                f"only {frac:.0%} of the cell ids of input {name!r} ({len(idx.intersection(shared))} of {len(idx)}) "
                f"are shared by all inputs; unmatched ids here: {mine}; ids elsewhere: {others}", file=name,
                expected="the same cell ids in every input (check the id columns, --id-column); lower min_overlap "
                         "(--min-overlap) only if the inputs really cover different cells")
    return shared, overlap


def align_inputs(
    tables: Mapping[str, pd.DataFrame],
    labels: pd.Series,
    *,
    exclude_labels: Sequence[str] = (),
    min_overlap: float = 0.5,
    min_label_size: int = 0,
) -> tuple[dict[str, pd.DataFrame], pd.Series, dict]:
    """Restrict all tables and the labels to the cells they share (minus excluded labels), in one order.

    The one input path of an evaluation: ``stmorph evaluate`` (tables from files) and ``stmorph run`` (spaces of
    one sample) both call it, so labels are handled alike (missing dropped and counted, excluded, too-small left
    out among the shared cells).

    Parameters
    ----------
    tables
        Named DataFrames indexed by cell id.
    labels
        Labels indexed by cell id; missing ones (NaN, empty) are dropped and counted.
    exclude_labels
        Labels to drop (e.g. ``"Removed"``).
    min_overlap
        Refuse the join when an input (a table or the labels) has fewer than this fraction of its cell ids
        shared by all inputs: ids that mostly do not match mean the wrong id column, not a subset.
    min_label_size
        Leave out labels with fewer shared cells than this (stratified cross-validation needs one per fold:
        ``EvalConfig.n_splits``); ``0``: keep all.

    Returns
    -------
    ``(tables, labels, report)`` with ``report`` = cells per input, cells kept and dropped per input, the number
    of missing labels dropped, the labels left out as too small and the fraction of each input's ids shared.

    Examples
    --------
    >>> t = {"A": pd.DataFrame({"f": [1.0, 2.0, 3.0]}, index=["a", "b", "c"])}
    >>> _, lab, rep = align_inputs(t, pd.Series(["x", "y", None], index=["a", "b", "c"]))
    >>> rep["n_cells"], rep["dropped"]["A"], rep["missing_labels"]
    (2, 1, 1)
    """
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    _raise_duplicates(labels.index, "labels", "labels")
    ids = {name: pd.Index(t.index.astype(str)) for name, t in tables.items()}
    for name, idx in ids.items():
        _raise_duplicates(idx, name, "feature table")
    ids["labels"] = labels.index
    shared, overlap = _shared_ids(ids, min_overlap)
    missing = labels.isna() | labels.map(lambda x: isinstance(x, str) and not x.strip())
    n_missing = int(missing.sum())
    labels = labels[~missing].astype(str)
    excl = set(map(str, exclude_labels))
    labels = labels[~labels.isin(excl)]
    order = labels.index[labels.index.isin(shared)]
    small: dict[str, int] = {}
    if min_label_size > 1 and len(order):
        kept, small = drop_small_labels(labels.loc[order], int(min_label_size))
        order = kept.index
    if len(order) == 0 and small:
        raise StmorphInputError(f"every label has fewer than {min_label_size} shared cells: {small}",
                                expected=f"labels with at least {min_label_size} cells (min_label_size)")
    if len(order) == 0:
        raise StmorphInputError("no labelled cell ids are shared by all inputs", expected="overlapping cell ids")
    out = {k: v.set_axis(ids[k]).loc[order] for k, v in tables.items()}
    report = {
        "n_cells": int(len(order)),
        "inputs": {k: int(len(v)) for k, v in tables.items()} | {"labels": int(len(labels))},
        "dropped": {k: int(len(v) - len(order)) for k, v in tables.items()} | {"labels": int(len(labels) - len(order))},
        "excluded_labels": sorted(excl),
        "missing_labels": n_missing,
        "small_labels_left_out": small,
        "shared_fraction": {k: round(float(v), 4) for k, v in overlap.items()},
    }
    return out, labels.loc[order], report


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Time the block: wall seconds under ``key``, process CPU seconds (all threads) under ``key + " cpu"``.

    Nothing is recorded when the block raises.
    """
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    yield
    timings[key] = time.perf_counter() - t_wall
    timings[f"{key} cpu"] = time.process_time() - t_cpu


def _note_subsample(scaling: dict, test: str, df: pd.DataFrame) -> None:
    """Record in ``scaling["subsampled"][test]`` the stratified subsample a pairwise test ran on (if any)."""
    sub = df.attrs.get("subsample")
    if sub is not None:
        scaling["subsampled"][test] = {"stratified_by": "label", **sub}


def _note_clustering(scaling: dict, silhouette_cells: np.ndarray | None, approximate_knn: bool) -> None:
    """Record the silhouettes' sample (if any) and whether a tuning used approximate neighbours."""
    if silhouette_cells is not None:
        scaling["subsampled"]["silhouette"] = {"stratified_by": "label (proportional)",
                                               "n_cells": int(len(silhouette_cells))}
    scaling["approximate_knn"] = bool(scaling["approximate_knn"] or approximate_knn)


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy values -> python (:func:`stmorph._utils.jsonable`)."""
    from .._utils import jsonable

    return jsonable(x, finite=True, default=lambda v: v)


def evaluate_spaces(
    spaces: Mapping[str, pd.DataFrame | np.ndarray],
    labels: pd.Series | np.ndarray,
    *,
    config: EvalConfig | None = None,
    multiplex: Sequence[tuple[str, str]] = (),
    ridge: Mapping[str, pd.DataFrame] | None = None,
    show_progress: bool | None = None,
    protocol: str | None = None,
    fold_panels: Mapping[str, tuple[np.ndarray, Callable]] | None = None,
) -> EvalResults:
    """Run the study's analyses on each feature space (rows = the same cells, in the same order as ``labels``).

    Per space: pairwise PERMANOVA and PERMDISP (BH), random-forest classification, silhouette-tuned Leiden and
    its agreement with the labels. Per pair in ``multiplex``: multiplex Leiden with each space's tuned k and
    resolution. Per ``ridge`` entry ``{space: counts}``: gene prediction from that space (R^2, F-test padj).
    Every clustering entry of the summary carries ``bound_met`` (more than ``min_clusters`` clusters) and the
    ``protocol`` that tuned it.

    Up to :data:`~stmorph.eval.EXACT_MAX_CELLS` cells every analysis uses every cell. Above it nothing of size
    ``n x n`` is built: the pairwise tests run on one seeded subsample with at most
    :data:`~stmorph.eval.MAX_CELLS_PER_LABEL` cells per label, the silhouettes (tuning grid, multiplex weights and
    the summary) on one seeded sample of :data:`~stmorph.eval.SILHOUETTE_SAMPLE` cells stratified by label, and
    above :data:`~stmorph.eval.APPROX_KNN_MIN_CELLS` cells the ``"fast"`` graphs use approximate neighbours.
    ``summary["scaling"]`` says what was done: ``{"n_cells", "exact_max_cells", "approx_knn_min_cells",
    "subsampled": {analysis: {"n_cells", ...}}, "approximate_knn"}`` (``subsampled`` is empty below the
    threshold). See ``docs/distributed.md``, "Evaluation at scale".

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
    protocol
        Overrides ``config.protocol`` (``"fast"`` or ``"study"``).
    fold_panels
        ``{space name: (X_full, select)}`` for spaces that are a panel chosen with the labels (e.g. the DE gene
        panel of :func:`stmorph.pp.de_gene_subset`): the classification then fits ``select(X_train, y_train)`` (e.g.
        :func:`stmorph.pp.de_gene_columns`) on ``X_full`` inside each training fold, and the summary reports that
        ``balanced_accuracy`` next to ``balanced_accuracy_leaky`` (the space as given, panel chosen on all cells)
        and their difference ``leakage``. The other analyses use the space as given.

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

    from .._cluster import _graphs
    from ..pp import normalize_counts
    from . import _scale
    from ._classify import rf_classification
    from ._cluster import (
        DEFAULT_K_GRID,
        DEFAULT_RESOLUTIONS,
        DEFAULT_WEIGHTS,
        PROTOCOLS,
        STUDY_K_GRID,
        STUDY_RESOLUTIONS,
        STUDY_WEIGHTS,
        cluster_metrics,
        leiden_tune,
        multiplex_leiden,
    )
    from ._genes import latent_f_tests, ridge_gene_prediction
    from ._pairwise import pairwise_permanova, pairwise_permdisp
    from ._permutation import zscore

    cfg = config or EvalConfig()
    if protocol is not None:
        cfg = replace(cfg, protocol=protocol)
    if cfg.protocol not in PROTOCOLS:
        raise StmorphInputError(f"protocol {cfg.protocol!r}", expected=f"one of {list(PROTOCOLS)}")
    if cfg.protocol == "study":
        if cfg.leiden_backend != "leidenalg":
            raise StmorphInputError(f"leiden_backend={cfg.leiden_backend!r} with protocol='study'",
                                    expected="the study's scanpy leidenalg (leave leiden_backend at 'leidenalg')")
        study_grid = {"k_grid": (DEFAULT_K_GRID, STUDY_K_GRID), "resolutions": (DEFAULT_RESOLUTIONS, STUDY_RESOLUTIONS),
                      "multiplex_weights": (DEFAULT_WEIGHTS, STUDY_WEIGHTS)}
        cfg = replace(cfg, **{k: study for k, (fast, study) in study_grid.items()
                              if tuple(getattr(cfg, k)) == tuple(fast)})
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
    fold_panels = dict(fold_panels or {})
    for name in fold_panels:
        if name not in mats:
            raise StmorphInputError(f"fold panel {name!r} is not a feature space", expected=f"one of {list(mats)}")
    exact = n <= _scale.EXACT_MAX_CELLS  # above: subsampled tests and silhouettes, never an n x n object
    scaling: dict = {"n_cells": int(n), "exact_max_cells": _scale.EXACT_MAX_CELLS,
                     "approx_knn_min_cells": _graphs.APPROX_KNN_MIN_CELLS, "subsampled": {}, "approximate_knn": False}
    for name, M in mats.items():
        entry: dict = {"n_cells": int(n), "n_features": int(M.shape[1])}
        Z = zscore(M) if cfg.standardize else M
        if cfg.run_classification:
            with _timed(timings, f"{name}/classification"):
                rf_kw = dict(n_trees=cfg.n_trees, n_splits=cfg.n_splits, random_state=cfg.random_state,
                             n_jobs=cfg.rf_n_jobs, max_samples=cfg.rf_max_samples, show_progress=show_progress,
                             backend=cfg.rf_backend)
                cr = rf_classification(M, y, **rf_kw)
                entry["classification"] = {"balanced_accuracy": cr.balanced_accuracy,
                                           "per_label": cr.per_label.to_dict()}
                if name in fold_panels:
                    X_full, select = fold_panels[name]
                    X_full = np.asarray(X_full, dtype=np.float64)
                    if X_full.ndim != 2 or X_full.shape[0] != n:
                        raise StmorphInputError(f"fold panel {name!r}: features of shape {X_full.shape}",
                                                expected=f"({n}, n_features): one row per labelled cell")
                    leaky = cr
                    cr = rf_classification(X_full, y, select=select, **rf_kw)
                    entry["classification"] = {
                        "balanced_accuracy": cr.balanced_accuracy, "per_label": cr.per_label.to_dict(),
                        "panel_selection": "inside each training fold",
                        "balanced_accuracy_leaky": leaky.balanced_accuracy,
                        "per_label_leaky": leaky.per_label.to_dict(),
                        "leakage": leaky.balanced_accuracy - cr.balanced_accuracy}
                    tables[f"classification_leaky_{name}"] = leaky.per_label.rename("balanced_accuracy").to_frame()
            tables[f"classification_{name}"] = cr.per_label.rename("balanced_accuracy").to_frame()
            tables[f"confusion_{name}"] = cr.confusion
        if cfg.run_permanova:
            with _timed(timings, f"{name}/permanova"):
                df = pairwise_permanova(Z, y, permutations=cfg.permutations, random_state=cfg.random_state,
                                        standardize=False, alpha=cfg.alpha, show_progress=show_progress)
            tables[f"permanova_{name}"] = df
            entry["permanova"] = {"n_pairs": int(len(df)), "n_significant": int(df["significant"].sum())}
            _note_subsample(scaling, "permanova", df)
        if cfg.run_permdisp:
            for i, test in enumerate(cfg.permdisp_tests):
                with _timed(timings, f"{name}/permdisp_{test}"):
                    df = pairwise_permdisp(Z, y, test=test, permutations=cfg.permutations,
                                           random_state=cfg.random_state, standardize=False, alpha=cfg.alpha,
                                           show_progress=show_progress)
                tables[f"permdisp_{test}_{name}"] = df
                res = {"n_pairs": int(len(df)), "n_significant": int(df["significant"].sum()), "test": test}
                if i == 0:
                    entry["permdisp"] = res
                else:
                    entry[f"permdisp_{test}"] = res
                _note_subsample(scaling, f"permdisp_{test}", df)
        if cfg.run_clustering:
            with _timed(timings, f"{name}/clustering"):
                C = Z  # both protocols cluster the same (z-scored) features: they differ only in the clustering
                # up to EXACT_MAX_CELLS: one n x n distance matrix for all silhouettes; above: silhouettes on a
                # sample of the cells stratified by label (the same sample for every grid point and space)
                D = pairwise_distances(C) if exact else None
                lr = leiden_tune(C, k_grid=cfg.k_grid, resolutions=cfg.resolutions, min_clusters=cfg.min_clusters,
                                 backend=cfg.leiden_backend, n_jobs=cfg.leiden_n_jobs, protocol=cfg.protocol,
                                 random_state=cfg.random_state, D=D, show_progress=show_progress,
                                 strata=None if exact else y)
                if exact:
                    met = cluster_metrics(y, lr.clusters, D=D)
                else:
                    met = cluster_metrics(y, lr.clusters) | {"silhouette": lr.silhouette}
            entry["clustering"] = {"k": lr.k, "resolution": lr.resolution, "protocol": lr.protocol,
                                   "bound_met": lr.bound_met, "min_clusters": lr.min_clusters} | met
            tables[f"leiden_grid_{name}"] = lr.grid
            clusters_df[name] = lr.clusters
            tuned[name] = (C, lr, D)
            _note_clustering(scaling, lr.silhouette_cells, lr.approximate_knn)
        summary["feature_spaces"][name] = entry
    for a, b in multiplex:
        if a not in mats or b not in mats:
            raise StmorphInputError(f"multiplex pair {a}+{b} names an unknown space", expected=f"names in {list(mats)}")
        if not cfg.run_clustering:
            break
        with _timed(timings, f"{a}+{b}/multiplex"):
            (Za, la, Da), (Zb, lb, Db) = tuned[a], tuned[b]
            mr = multiplex_leiden(Za, Zb, k=(la.k, lb.k), resolution=(la.resolution, lb.resolution),
                                  weights=cfg.multiplex_weights, min_clusters=cfg.min_clusters,
                                  random_state=cfg.random_state, graphs=(la.graphs[la.k], lb.graphs[lb.k]),
                                  D=(Da, Db) if exact else None, show_progress=show_progress, n_jobs=cfg.leiden_n_jobs,
                                  protocol=cfg.protocol, strata=None if exact else y)
            met = cluster_metrics(y, mr.clusters)
            met["silhouette"] = mr.silhouette
        summary["multiplex"][f"{a}+{b}"] = {"weight": mr.weight, "protocol": mr.protocol, "bound_met": mr.bound_met,
                                            "min_clusters": mr.min_clusters} | met
        tables[f"multiplex_grid_{a}+{b}"] = mr.grid
        clusters_df[f"{a}+{b}"] = mr.clusters
        _note_clustering(scaling, mr.silhouette_cells, False)
    for name, counts in (ridge or {}).items():
        if name not in mats:
            raise StmorphInputError(f"ridge space {name!r} is not a feature space", expected=f"one of {list(mats)}")
        with _timed(timings, f"{name}/ridge"):
            C = np.asarray(counts, dtype=np.float64)
            if C.shape[0] != n:
                raise StmorphInputError(f"counts have {C.shape[0]} rows, labels {n}", expected="the same cells")
            genes = ([str(g) for g in counts.columns] if isinstance(counts, pd.DataFrame)
                     else [f"g{i}" for i in range(C.shape[1])])
            Y = normalize_counts(C)
            r2 = ridge_gene_prediction(mats[name], Y, genes, alpha=cfg.ridge_alpha, test_size=cfg.ridge_test_size,
                                       random_state=cfg.random_state)
            ft = latent_f_tests(mats[name], Y, genes)
        tab = r2.join(ft)
        tables[f"ridge_{name}"] = tab
        summary["ridge"][name] = {"r2": tab["r2"].to_dict(), "padj": tab["padj"].to_dict()}
    tables["clusters"] = clusters_df
    summary["config"] = asdict(cfg)
    summary["scaling"] = scaling
    return EvalResults(summary=_clean(summary), tables=tables, timings=timings)


def write_results(results: EvalResults, out_dir: str | PathLike, *, extra: dict | None = None) -> Path:
    """Write ``summary.json`` and one CSV per table into ``out_dir`` (figures: :func:`stmorph.pl.write_eval_figures`).

    Parameters
    ----------
    results
        Output of :func:`evaluate_spaces`.
    out_dir
        Folder (created).
    extra
        Extra keys merged into ``summary.json`` (e.g. the cell-alignment report).

    Returns
    -------
    The output folder.

    Examples
    --------
    >>> write_results(res, "eval_out")  # doctest: +SKIP
    >>> stmorph.pl.write_eval_figures(res, "eval_out/figures")  # doctest: +SKIP
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
    return out
