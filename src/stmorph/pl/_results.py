"""The evaluation's numbers as the figures need them: read back from disk by known names, per-label recall, chance
level, and the comparison with counts that the report's first sentence states.

Everything here reads the schema written by :func:`stmorph.eval.write_results` (``summary.json`` and
``tables/<name>.csv``); the names used are listed in :data:`SUMMARY_KEYS` and :func:`pairwise_table_names`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ._style import natural_sorted

__all__ = [
    "read_results",
    "read_tables",
    "summary_of",
    "per_label_recall",
    "per_label_recall_sd",
    "balanced_accuracies",
    "chance_level",
    "n_labels",
    "reference_space",
    "compare_with_reference",
    "headline",
    "margin_note",
    "pairwise_table_names",
    "SUMMARY_KEYS",
]

SUMMARY_KEYS = {
    "spaces": "feature_spaces",
    "classification": "classification",
    "balanced_accuracy": "balanced_accuracy",
    "per_label": "per_label",
    "per_label_sd": "per_label_sd",
    "fold_balanced_accuracy": "fold_balanced_accuracy",
    "clustering": "clustering",
    "jaccard": "jaccard",
    "multiplex": "multiplex",
    "ridge": "ridge",
    "config": "config",
}
"""Keys of ``summary.json`` read by :mod:`stmorph.pl`: ``feature_spaces[space].classification`` holds
``balanced_accuracy`` and ``per_label`` (recall of each label, mean over the CV folds) and, when the evaluation
wrote them, ``per_label_sd`` (SD of each label's recall over the folds) and ``fold_balanced_accuracy``."""

# tables written by stmorph.eval.write_results without their row index (every other table keeps it)
_NO_INDEX_PREFIXES = ("permanova_", "permdisp_", "leiden_grid_", "multiplex_grid_")
_COUNTS_NAMES = ("tc", "counts", "transcripts", "transcript_counts", "expression", "rna")


def read_results(path: str | PathLike) -> Any:
    """Read an evaluation folder written by :func:`stmorph.eval.write_results` back into an ``EvalResults``.

    Parameters
    ----------
    path
        The folder holding ``summary.json`` and ``tables/`` (``stmorph evaluate --out``, or
        ``<study>/evaluation``).

    Returns
    -------
    :class:`stmorph.eval.EvalResults` with ``summary`` and every table by its name (``permanova_<space>``,
    ``permdisp_<test>_<space>``, ``classification_<space>``, ``ridge_<space>``, ...). ``timings`` stays empty
    (the timings are in ``summary["timings_s"]``).

    Examples
    --------
    >>> res = read_results("eval_out")  # doctest: +SKIP
    >>> per_label_recall(res)  # doctest: +SKIP
    """
    from ..eval import EvalResults

    d = Path(path)
    f = d / "summary.json"
    if not f.is_file():
        raise StmorphInputError("no summary.json in the evaluation folder", file=d,
                                expected="a folder written by stmorph evaluate / stmorph.eval.write_results")
    return EvalResults(summary=json.loads(f.read_text()), tables=read_tables(d))


def read_tables(path: str | PathLike) -> dict[str, pd.DataFrame]:
    """The tables of an evaluation folder (``tables/<name>.csv``) by name, each read with the row index
    :func:`stmorph.eval.write_results` wrote (none for pairwise tests and Leiden grids, the first column else)."""
    tables: dict[str, pd.DataFrame] = {}
    for t in sorted((Path(path) / "tables").glob("*.csv")):
        if t.stem.startswith(_NO_INDEX_PREFIXES):
            tables[t.stem] = pd.read_csv(t)
        else:
            tables[t.stem] = pd.read_csv(t, index_col=0)
    return tables


def summary_of(results: Any) -> dict:
    """The summary dictionary of an ``EvalResults`` (or the dictionary itself)."""
    if isinstance(results, Mapping):
        return dict(results)
    s = getattr(results, "summary", None)
    if not isinstance(s, Mapping):
        raise StmorphInputError(f"not an evaluation result: {type(results).__name__}",
                                expected="stmorph.eval.EvalResults or its summary dictionary")
    return dict(s)


def _spaces(results: Any) -> dict[str, dict]:
    return dict(summary_of(results).get(SUMMARY_KEYS["spaces"]) or {})


def _classification(entry: Mapping) -> dict:
    return dict(entry.get(SUMMARY_KEYS["classification"]) or {})


def per_label_recall(results: Any) -> pd.DataFrame:
    """Recall of each label (mean over the CV folds) per feature space: what the study calls "per-label balanced
    accuracy".

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.

    Returns
    -------
    DataFrame labels (natural order) x feature spaces; empty without classification.

    Examples
    --------
    >>> s = {"feature_spaces": {"TC": {"classification": {"balanced_accuracy": 0.7,
    ...      "per_label": {"a": 0.9, "b": 0.5}}}}}
    >>> per_label_recall(s)["TC"].tolist()
    [0.9, 0.5]
    """
    cols = {n: _classification(e).get(SUMMARY_KEYS["per_label"]) for n, e in _spaces(results).items()}
    cols = {n: v for n, v in cols.items() if v}
    if not cols:
        return pd.DataFrame()
    df = pd.DataFrame(cols).astype(float)
    df = df.loc[natural_sorted(df.index)]
    df.index.name, df.columns.name = "label", "feature space"
    return df


def per_label_recall_sd(results: Any) -> pd.DataFrame | None:
    """SD over the CV folds of each label's recall per space, or ``None`` when the summary does not hold it."""
    cols = {n: _classification(e).get(SUMMARY_KEYS["per_label_sd"]) for n, e in _spaces(results).items()}
    cols = {n: v for n, v in cols.items() if v}
    if not cols:
        return None
    df = pd.DataFrame(cols).astype(float)
    return df.loc[natural_sorted(df.index)]


def balanced_accuracies(results: Any) -> pd.DataFrame:
    """Balanced accuracy per feature space, with its SD over folds where the summary has the folds' values.

    Returns
    -------
    DataFrame indexed by space with ``balanced_accuracy`` and ``sd`` (NaN when unknown).
    """
    rows = {}
    for n, e in _spaces(results).items():
        c = _classification(e)
        if c.get(SUMMARY_KEYS["balanced_accuracy"]) is None:
            continue
        folds = c.get(SUMMARY_KEYS["fold_balanced_accuracy"])
        sd = float(np.std(folds, ddof=1)) if folds is not None and len(folds) > 1 else np.nan
        rows[n] = {"balanced_accuracy": float(c[SUMMARY_KEYS["balanced_accuracy"]]), "sd": sd}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["balanced_accuracy", "sd"])


def n_labels(results: Any) -> int:
    """Number of labels the classification was scored on (0 without classification)."""
    return int(len(per_label_recall(results)))


def chance_level(results: Any | int) -> float:
    """Chance balanced accuracy, ``1 / number of labels`` (a constant or random guess recalls each label with
    that probability on average). ``NaN`` without labels.

    Examples
    --------
    >>> round(chance_level(19), 4)
    0.0526
    """
    n = int(results) if isinstance(results, int | np.integer) else n_labels(results)
    return 1.0 / n if n > 0 else float("nan")


def reference_space(results: Any, reference: str | None = None) -> str | None:
    """The counts space the others are compared with: ``reference`` if given, else the space named ``TC``, else
    the first space whose name says counts (``counts``, ``transcripts``, ``expression``, ``rna``, or starting
    with ``TC``), else ``None``."""
    names = list(_spaces(results))
    if reference is not None:
        if reference not in names:
            raise StmorphInputError(f"reference space {reference!r} is not among the feature spaces",
                                    expected=f"one of {names}")
        return reference
    if "TC" in names:
        return "TC"
    for n in names:
        low = n.lower()
        if low in _COUNTS_NAMES or low.startswith(("tc_", "tc-", "counts")):
            return n
    return None


def compare_with_reference(results: Any, reference: str | None = None, *, margin: float = 0.05) -> pd.DataFrame:
    """Per-label recall of every space against the counts space.

    A space *beats* counts on a label when its recall exceeds counts' recall by more than the margin: the larger
    of the two spaces' fold SDs of that label's recall when the summary holds them (``per_label_sd``), else
    ``margin``.

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.
    reference
        The counts space (default: :func:`reference_space`).
    margin
        Fixed margin used when the summary has no fold SDs.

    Returns
    -------
    Long DataFrame: ``space, label, recall, reference_recall, difference, margin, beats, loses`` (one row per
    space other than the reference and label), with ``attrs["reference"]`` and ``attrs["margin_kind"]``
    (``"fold_sd"`` or ``"fixed"``).

    Examples
    --------
    >>> s = {"feature_spaces": {
    ...     "TC": {"classification": {"balanced_accuracy": 0.5, "per_label": {"a": 0.5, "b": 0.5}}},
    ...     "LS2": {"classification": {"balanced_accuracy": 0.6, "per_label": {"a": 0.8, "b": 0.5}}}}}
    >>> compare_with_reference(s).query("beats")["label"].tolist()
    ['a']
    """
    rec = per_label_recall(results)
    ref = reference_space(results, reference)
    cols = ["space", "label", "recall", "reference_recall", "difference", "margin", "beats", "loses"]
    if rec.empty or ref is None or ref not in rec.columns:
        out = pd.DataFrame(columns=cols)
        out.attrs.update(reference=ref, margin_kind="fixed")
        return out
    sd = per_label_recall_sd(results)
    use_sd = sd is not None and ref in sd.columns
    rows = []
    for space in rec.columns:
        if space == ref:
            continue
        for lab in rec.index:
            r, r0 = rec.at[lab, space], rec.at[lab, ref]
            m = float(margin)
            if use_sd and space in sd.columns and lab in sd.index:
                both = np.array([sd.at[lab, space], sd.at[lab, ref]], dtype=float)
                if np.isfinite(both).any():
                    m = float(np.nanmax(both))
            d = r - r0
            rows.append((space, lab, r, r0, d, m, bool(d > m), bool(-d > m)))
    out = pd.DataFrame(rows, columns=cols)
    out.attrs.update(reference=ref, margin_kind="fold_sd" if use_sd else "fixed", margin=float(margin))
    return out


def _signed(v: float) -> str:
    return f"{v:+.2f}"


def _label_list(labels: list[str], most: int = 4) -> str:
    if len(labels) <= most:
        return ", ".join(labels)
    return ", ".join(labels[:most]) + f" and {len(labels) - most} more"


def headline(results: Any, reference: str | None = None, *, margin: float = 0.05) -> str:
    """One sentence that answers "what does morphology add to the counts?" with the evaluation's numbers.

    It names, for every feature space, the labels it finds better than counts (recall higher by more than the
    margin of :func:`compare_with_reference`), the range of those recall gains, and every space's balanced
    accuracy against chance (``1 / number of labels``). Spaces are listed by the number of labels they win.

    Parameters
    ----------
    results
        ``EvalResults`` or its summary.
    reference
        The counts space (default: :func:`reference_space`).
    margin
        Fixed margin when the summary has no fold SDs (see :func:`margin_note`).

    Returns
    -------
    The sentence (``""`` without classification results).

    Examples
    --------
    >>> s = {"feature_spaces": {
    ...     "TC": {"classification": {"balanced_accuracy": 0.5, "per_label": {"a": 0.5, "b": 0.5}}},
    ...     "LS2": {"classification": {"balanced_accuracy": 0.6, "per_label": {"a": 0.8, "b": 0.5}}}}}
    >>> headline(s)
    'LS2 beats counts (TC) on 1 of 2 labels (a; recall +0.30); balanced accuracy TC 0.50, LS2 0.60 (chance 0.50).'
    """
    rec = per_label_recall(results)
    if rec.empty:
        return ""
    L = len(rec)
    ba = balanced_accuracies(results)["balanced_accuracy"]
    chance = f"(chance {chance_level(L):.2f})"
    ref = reference_space(results, reference)
    if ref is None or ref not in rec.columns:
        accs = ", ".join(f"{n} {v:.2f}" for n, v in ba.items())
        return (f"No counts space to compare with (name one TC); balanced accuracy {accs} {chance}, "
                f"{L} labels.")
    others = [s for s in rec.columns if s != ref]
    accs = ", ".join(f"{n} {ba[n]:.2f}" for n in [ref, *others] if n in ba.index)
    if not others:
        return f"Only counts ({ref}) were evaluated: balanced accuracy {ba[ref]:.2f} {chance}, {L} labels."
    cmp = compare_with_reference(results, ref, margin=margin)
    wins = {s: cmp[(cmp["space"] == s) & cmp["beats"]] for s in others}
    order = sorted(others, key=lambda s: (-len(wins[s]), others.index(s)))
    if not any(len(w) for w in wins.values()):
        return f"No feature space beats counts ({ref}) on any of {L} labels; balanced accuracy {accs} {chance}."
    parts = []
    for i, s in enumerate(order):
        w = wins[s].sort_values("difference", ascending=False)
        k = len(w)
        if k == 0:
            parts.append(f"{s} on none")
            continue
        labs = _label_list(natural_sorted(w["label"]) if k <= 4 else list(w["label"]))
        lo, hi = w["difference"].min(), w["difference"].max()
        gain = f"recall {_signed(lo)}" if k == 1 or np.isclose(lo, hi) else f"recall {_signed(lo)} to {_signed(hi)}"
        if i == 0:
            parts.append(f"{s} beats counts ({ref}) on {k} of {L} labels ({labs}; {gain})")
        else:
            parts.append(f"{s} on {k} ({labs}; {gain})")
    return ", ".join(parts) + f"; balanced accuracy {accs} {chance}."


def margin_note(results: Any, reference: str | None = None, *, margin: float = 0.05) -> str:
    """The rule behind :func:`headline`, in words (which margin, which recall)."""
    cmp = compare_with_reference(results, reference, margin=margin)
    ref = cmp.attrs.get("reference")
    if ref is None:
        return ""
    rule = ("by more than the larger of the two spaces' SDs of that label's recall over the CV folds"
            if cmp.attrs.get("margin_kind") == "fold_sd"
            else f"by more than {margin:.2f} (a fixed margin: the evaluation summary holds no per-fold recalls)")
    return (f"A space beats counts ({ref}) on a label when its recall of that label (the fraction of the label's "
            f"cells the random forest assigns to it, mean over the CV folds) is higher than counts' {rule}. "
            f"Chance balanced accuracy is 1 / number of labels.")


def pairwise_table_names(results: Any) -> dict[str, dict[str, str]]:
    """Names of the pairwise test tables, by test then space: ``permanova_<space>`` and
    ``permdisp_<test>_<space>`` for each PERMDISP centre of ``summary["config"]["permdisp_tests"]``.

    Examples
    --------
    >>> pairwise_table_names({"feature_spaces": {"A": {}}, "config": {"permdisp_tests": ["median"]}})
    {'permanova': {'A': 'permanova_A'}, 'permdisp_median': {'A': 'permdisp_median_A'}}
    """
    s = summary_of(results)
    spaces = list(s.get(SUMMARY_KEYS["spaces"]) or {})
    tests = list((s.get(SUMMARY_KEYS["config"]) or {}).get("permdisp_tests") or ("median", "centroid"))
    out = {"permanova": {n: f"permanova_{n}" for n in spaces}}
    for t in tests:
        out[f"permdisp_{t}"] = {n: f"permdisp_{t}_{n}" for n in spaces}
    return out
