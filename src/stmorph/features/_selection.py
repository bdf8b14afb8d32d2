"""Feature selection for morphology profiles, the pycytominer way, with a report of every dropped feature.

Operations, in order (pycytominer ``feature_select`` defaults):

1. ``blocklist`` - names matching any blocklist pattern (positional features by default);
2. ``drop_na_columns`` - features with a NaN/inf fraction above ``na_cutoff`` (0.05);
3. ``variance_threshold`` - constant features, then pycytominer's frequency rule: the count of the second most
   common value over the count of the most common one below ``freq_cut`` (0.05), or the number of unique values
   over the number of cells below ``unique_cut`` (0.01); optionally an absolute ``min_variance``;
4. ``correlation_threshold`` - of every pair with ``|pearson r| > corr_threshold`` (0.9) drop the feature with the
   larger mean absolute correlation to all others (caret ``findCorrelation``, which cytominer wraps).

pycytominer is not a dependency; this is the small tested equivalent (``tests/test_features_selection.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import StmorphInputError

__all__ = ["DEFAULT_BLOCKLIST", "select_features"]

#: Regular expressions of features that describe where the object is in the crop, not what it looks like.
DEFAULT_BLOCKLIST: tuple[str, ...] = (
    r"(^|_)Location_",
    r"(^|_)Center_[XYZ]",
    r"BoundingBoxMinimum_",
    r"BoundingBoxMaximum_",
)


def _frequency_flags(col: np.ndarray, freq_cut: float, unique_cut: float) -> str | None:
    x = col[np.isfinite(col)]
    if x.size == 0:
        return None
    vals, counts = np.unique(x, return_counts=True)
    if vals.size / x.size < unique_cut:
        return f"unique ratio {vals.size}/{x.size} < {unique_cut}"
    if vals.size >= 2:
        top = np.sort(counts)[::-1]
        if top[1] / top[0] < freq_cut:
            return f"2nd/1st most common value count {top[1]}/{top[0]} < {freq_cut}"
    return None


_BLOCK_ROWS = 65_536  # rows per block of the correlation pass (block x features float64 at a time)
_COL_CHUNK = 64  # columns per chunk of the column-wise passes


def _median_filled_corr(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns ``cols`` of ``x`` with each column's NaNs filled by its median.

    Equal to ``np.corrcoef`` of the filled matrix, but accumulated over row blocks, so that no filled, centred
    copy of the whole table exists: two passes (column means and norms, then ``Z^T Z`` block by block). Peak
    extra memory is one block (:data:`_BLOCK_ROWS` rows) instead of two or three full copies.
    """
    n = x.shape[0]
    med = np.array([np.nanmedian(x[:, j]) if np.isnan(x[:, j]).any() else 0.0 for j in cols])
    blocks = [slice(k, min(k + _BLOCK_ROWS, n)) for k in range(0, n, _BLOCK_ROWS)]

    def filled(b: slice) -> np.ndarray:
        z = x[b][:, cols]
        bad = np.isnan(z)
        if bad.any():
            z[bad] = np.broadcast_to(med, z.shape)[bad]
        return z

    mean = sum(filled(b).sum(axis=0) for b in blocks) / n
    sq = sum(((filled(b) - mean) ** 2).sum(axis=0) for b in blocks)
    norm = np.sqrt(sq)
    gram = np.zeros((cols.size, cols.size))
    for b in blocks:
        z = filled(b) - mean
        gram += z.T @ z
    with np.errstate(invalid="ignore", divide="ignore"):
        return gram / np.outer(norm, norm)


def _find_correlated(corr: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """caret ``findCorrelation`` (exact=False) on a correlation matrix: returns (dropped, partner, r) indices."""
    corr = np.atleast_2d(np.nan_to_num(np.abs(corr), nan=0.0))
    np.fill_diagonal(corr, 0.0)
    mean_abs = corr.mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    c = corr[np.ix_(order, order)]
    m = mean_abs[order]
    drop = np.zeros(len(order), dtype=bool)
    out = []
    for i in range(len(order) - 1):
        if drop[i]:
            continue
        for j in range(i + 1, len(order)):
            if drop[i] or drop[j]:
                continue
            if c[i, j] > threshold:
                # keep the column with the smaller mean absolute correlation (ties: drop the first)
                if m[i] >= m[j]:
                    drop[i] = True
                    out.append((int(order[i]), int(order[j]), float(c[i, j])))
                else:
                    drop[j] = True
                    out.append((int(order[j]), int(order[i]), float(c[i, j])))
    return out


def select_features(
    df: pd.DataFrame,
    *,
    operations: Sequence[str] = ("blocklist", "drop_na_columns", "variance_threshold", "correlation_threshold"),
    na_cutoff: float = 0.05,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float | None = None,
    corr_threshold: float = 0.9,
    blocklist: Sequence[str] | None = DEFAULT_BLOCKLIST,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop uninformative and redundant features; say which and why.

    Parameters
    ----------
    df
        Cells x features (numeric). ``inf`` counts as missing.
    operations
        Which of ``"blocklist"``, ``"drop_na_columns"``, ``"variance_threshold"``, ``"correlation_threshold"``
        to run (always in that order).
    na_cutoff
        Drop features with a missing fraction above this (pycytominer default 0.05), computed over the cells that
        have at least one value (an all-NaN row, e.g. a cell outside its mask, is the caller's to report).
        All-NaN features always go.
    freq_cut, unique_cut
        pycytominer's frequency rule (see the module docstring).
    min_variance
        Optional absolute variance floor (pycytominer's ``min_variance``; only meaningful on standardised data).
        Constant features are dropped regardless.
    corr_threshold
        Absolute Pearson correlation above which one of a pair is dropped. Exact duplicates (r = 1) always are.
    blocklist
        Regular expressions matched against feature names (:data:`DEFAULT_BLOCKLIST`).

    Returns
    -------
    selected : pandas.DataFrame
        The kept columns (NaN left as is; ``inf`` turned into NaN).
    report : pandas.DataFrame
        One row per dropped feature: ``feature``, ``reason`` (``blocklist``, ``all_nan``, ``na_fraction``,
        ``constant``, ``low_variance``, ``low_frequency``, ``correlation``), ``detail``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=50)
    >>> df = pd.DataFrame({"a": a, "a2": 2 * a, "c": 1.0, "n": np.nan, "b": rng.normal(size=50)})
    >>> kept, report = select_features(df)
    >>> sorted(kept.columns), sorted(report["reason"])
    (['a2', 'b'], ['all_nan', 'constant', 'correlation'])
    """
    known = {"blocklist", "drop_na_columns", "variance_threshold", "correlation_threshold"}
    bad = [o for o in operations if o not in known]
    if bad:
        raise StmorphInputError(f"unknown feature-selection operations {bad}", expected=f"some of {sorted(known)}")
    if not isinstance(df, pd.DataFrame):
        raise StmorphInputError(f"select_features needs a DataFrame, got {type(df).__name__}", expected="pandas.DataFrame")
    non_num = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_num:
        raise StmorphInputError("non-numeric feature columns", column=str(non_num[0]), expected="numeric features only")
    # one float64 copy, column-major (every rule below reads columns); inf -> NaN in place, chunk by chunk
    x = np.asfortranarray(df.to_numpy(dtype=np.float64, copy=True))
    col_of = {c: j for j, c in enumerate(df.columns)}
    chunks = [slice(k, min(k + _COL_CHUNK, x.shape[1])) for k in range(0, x.shape[1], _COL_CHUNK)]
    all_nan_row = np.ones(x.shape[0], dtype=bool)
    for ch in chunks:
        part = x[:, ch]
        part[np.isinf(part)] = np.nan
        all_nan_row &= np.isnan(part).all(axis=1)
    rows: list[tuple[str, str, str]] = []
    keep = list(df.columns)

    def _drop(drop: list, reason: str, details: dict) -> None:
        for nm in drop:
            rows.append((str(nm), reason, details.get(nm, "")))
        dropped = set(drop)
        keep[:] = [c for c in keep if c not in dropped]

    def _cols(cols: list) -> np.ndarray:
        return np.array([col_of[c] for c in cols], dtype=np.intp)

    if "blocklist" in operations and blocklist:
        pats = [re.compile(p) for p in blocklist]
        hits = {c: next(p.pattern for p in pats if p.search(str(c))) for c in keep if any(p.search(str(c)) for p in pats)}
        _drop(list(hits), "blocklist", {c: f"matches {p!r}" for c, p in hits.items()})
    # cells with no value at all (e.g. an empty mask) are reported by the caller; they do not count here
    if x.shape[0] == 0:  # no cell: no rule can be measured (as before: every feature kept)
        selected = pd.DataFrame(x[:, _cols(keep)], index=df.index, columns=pd.Index(keep, name=df.columns.name))
        return selected, pd.DataFrame(rows, columns=["feature", "reason", "detail"])
    measured = ~all_nan_row
    rows_used = measured if measured.any() else np.ones_like(measured)
    na_frac = {c: float(np.isnan(x[rows_used, col_of[c]]).mean()) for c in keep}
    all_nan = [c for c in keep if na_frac[c] == 1.0]
    _drop(all_nan, "all_nan", {c: "every value is NaN/inf" for c in all_nan})
    if "drop_na_columns" in operations:
        many = [c for c in keep if na_frac[c] > na_cutoff]
        _drop(many, "na_fraction", {c: f"{na_frac[c]:.3f} missing > {na_cutoff}" for c in many})
    # constant (also catches all-equal-but-one-NaN columns); always dropped, as pycytominer's variance rule would
    lo = {c: float(np.nanmin(x[:, col_of[c]])) for c in keep}
    hi = {c: float(np.nanmax(x[:, col_of[c]])) for c in keep}
    const = [c for c in keep if not (hi[c] - lo[c]) > 1e-12 * max(1.0, abs(lo[c]), abs(hi[c]))]
    _drop(const, "constant", {c: "a single value" for c in const})
    if "variance_threshold" in operations:
        if min_variance is not None:
            var = {c: float(np.nanvar(x[:, col_of[c]])) for c in keep}
            low = [c for c in keep if var[c] < min_variance]
            _drop(low, "low_variance", {c: f"variance {var[c]:.3g} < {min_variance}" for c in low})
        flags = {c: _frequency_flags(x[:, col_of[c]], freq_cut, unique_cut) for c in keep}
        freq = [c for c, f in flags.items() if f is not None]
        _drop(freq, "low_frequency", {c: flags[c] for c in freq})  # type: ignore[misc]
    if "correlation_threshold" in operations and len(keep) > 1:
        # pairwise-complete correlation would be costly; NaN cells are median-filled for this decision only
        pairs = _find_correlated(_median_filled_corr(x, _cols(keep)), corr_threshold)
        kept_now = list(keep)
        _drop(
            [kept_now[d] for d, _, _ in pairs],
            "correlation",
            {kept_now[d]: f"|r| = {r:.3f} with {kept_now[p]}" for d, p, r in pairs},
        )
    idx = _cols(keep)
    x = x[:, idx] if idx.size != x.shape[1] or np.any(idx != np.arange(x.shape[1])) else x
    selected = pd.DataFrame(x, index=df.index, columns=pd.Index(keep, name=df.columns.name))
    report = pd.DataFrame(rows, columns=["feature", "reason", "detail"])
    return selected, report
