"""Reference-based cell-type labels: correlate each cell with per-type mean reference profiles."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import StmorphInputError

__all__ = ["reference_profiles", "annotate_by_reference"]

log = logging.getLogger("stmorph.pp")


def reference_profiles(reference: pd.DataFrame | str | PathLike, *, label_column: str = "cell_type") -> pd.DataFrame:
    """Mean expression per cell type of a reference table (rows = cells or profiles, columns = genes).

    Parameters
    ----------
    reference
        A DataFrame or a CSV path; one row per reference cell/profile, one numeric column per gene, and a
        ``label_column``.
    label_column
        The column with the cell-type name.

    Returns
    -------
    Types x genes mean profiles.

    Examples
    --------
    >>> ref = pd.DataFrame({"cell_type": ["a", "a", "b"], "g1": [1.0, 3.0, 0.0], "g2": [0.0, 0.0, 5.0]})
    >>> reference_profiles(ref).loc["a", "g1"]
    2.0
    """
    where = None
    if not isinstance(reference, pd.DataFrame):
        where = Path(reference)
        if not where.is_file():
            raise StmorphInputError("reference table not found", file=where, expected="a CSV with a cell-type column and one column per gene")
        reference = pd.read_csv(where)
    if label_column not in reference.columns:
        raise StmorphInputError("label column missing from the reference", file=where, column=label_column,
                                expected=f"one of {list(reference.columns[:8])}...")
    genes = reference.drop(columns=[label_column]).select_dtypes("number")
    if genes.shape[1] == 0:
        raise StmorphInputError("the reference has no numeric gene columns", file=where, expected="one column per gene")
    return genes.groupby(reference[label_column].astype(str)).mean()


def annotate_by_reference(
    adata: ad.AnnData,
    reference: pd.DataFrame | str | PathLike,
    *,
    label_column: str = "cell_type",
    key_added: str = "cell_type",
    min_genes: int = 20,
    min_score: float | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Label each cell with the reference type whose mean profile correlates best with it.

    Cells and reference profiles are both normalised to their total over the shared genes and log1p-transformed;
    each cell gets the type of highest Pearson correlation across the shared genes. The score is written to
    ``obs[f"{key_added}_score"]``; cells below ``min_score`` (or with no shared transcript) get NaN labels.

    Parameters
    ----------
    adata
        Cells x genes counts.
    reference
        Reference table (see :func:`reference_profiles`).
    label_column
        Type column of the reference.
    key_added
        ``obs`` column for the labels (categorical).
    min_genes
        Minimum number of genes shared between the sample and the reference.
    min_score
        Optional minimum correlation to assign a label.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    The annotated copy when ``copy=True``, else ``None``.

    Examples
    --------
    >>> annotate_by_reference(sample.adata, "sc_reference_breast.csv")  # doctest: +SKIP
    >>> sample.adata.obs["cell_type"].value_counts()  # doctest: +SKIP
    """
    a = adata.copy() if copy else adata
    prof = reference_profiles(reference, label_column=label_column)
    shared = [g for g in a.var_names if g in prof.columns]
    if len(shared) < min_genes:
        raise StmorphInputError(f"only {len(shared)} genes are shared between the sample and the reference",
                                column="genes", expected=f">= {min_genes} shared gene names")
    X = a[:, shared].X
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    R = prof[shared].to_numpy(np.float64)

    def _norm(M: np.ndarray) -> np.ndarray:
        tot = M.sum(1, keepdims=True)
        M = np.log1p(np.divide(M, tot, out=np.zeros_like(M), where=tot > 0) * 1e4)
        M = M - M.mean(1, keepdims=True)
        nrm = np.linalg.norm(M, axis=1, keepdims=True)
        return np.divide(M, nrm, out=np.zeros_like(M), where=nrm > 0)

    C = _norm(X) @ _norm(R).T  # Pearson correlation of every cell with every type
    best = C.argmax(1)
    score = C[np.arange(len(C)), best]
    labels = pd.Series(np.asarray(prof.index)[best], index=a.obs_names, dtype=object)
    empty = X.sum(1) == 0
    bad = empty | (score < min_score if min_score is not None else np.zeros(len(score), bool))
    labels[bad] = np.nan
    a.obs[key_added] = pd.Categorical(labels)
    a.obs[f"{key_added}_score"] = score
    a.uns[f"{key_added}_reference"] = {"n_shared_genes": len(shared), "types": list(map(str, prof.index)),
                                       "min_score": min_score, "n_unlabelled": int(bad.sum())}
    if bad.any():
        log.warning("%d cells left unlabelled (no shared transcript or score below min_score)", int(bad.sum()))
    return a if copy else None
