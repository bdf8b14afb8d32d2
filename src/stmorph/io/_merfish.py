"""Reader of per-cell MERFISH tables (counts + metadata + labels + embeddings), e.g. the ileum study tables."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ..sample import SpatialSample
from ._common import (
    Report,
    apply_labels,
    as_dir,
    build_adata,
    drop_nan_centroids,
    find_file,
    finish_sample,
    label_series,
    normalize_ids,
    read_table,
    require_columns,
    restrict_genes,
)

__all__ = ["read_merfish_tables", "detect_merfish_tables"]

_EMBED_SUFFIX = "_embedding"


def detect_merfish_tables(path: Path) -> bool:
    """A folder holding ``gene_counts.csv`` and ``cell_meta_data.csv``."""
    return path.is_dir() and (path / "gene_counts.csv").exists() and (path / "cell_meta_data.csv").exists()


def read_merfish_tables(
    path: str | PathLike,
    *,
    counts: str = "gene_counts.csv",
    meta: str = "cell_meta_data.csv",
    labels: str | None = "cell_assignment.csv",
    label_column: str = "leiden_final",
    exclude_labels: Sequence[str] = ("Removed",),
    embeddings: dict[str, str] | None = None,
    id_column: str = "cell_index",
    x_column: str = "x",
    y_column: str = "y",
    pixel_size: float | None = None,
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read per-cell MERFISH tables (no molecules, no images) into a :class:`~stmorph.SpatialSample`.

    The layout of ``/work/shared/data/merfish_ileum``: ``gene_counts.csv`` (``id_column`` + one column per gene),
    ``cell_meta_data.csv`` (``id_column``, ``x``, ``y`` centroids in pixels -> ``obsm["spatial"]``; other columns
    into ``obs``), ``cell_assignment.csv`` (cell id, ``label_column`` -> ``obs["cell_type"]``) and any per-cell
    embedding tables (first column the cell id) -> ``obsm["X_<name>"]``.

    Cells are those of the counts table that are also in the metadata (the core tables; error when they share no
    id), the labels and every embedding; cells with an excluded label or a NaN centroid are dropped. Every drop
    is reported with ``logging.warning`` and counted in ``provenance["report"]``. NaN in other metadata columns
    is kept.

    Parameters
    ----------
    path
        The folder of the tables.
    counts, meta
        File names of the counts and the metadata tables.
    labels
        File name of the label table; ``None`` or an absent file: no labels.
    label_column
        Label column of the label table (its id column is ``cell`` or else its first column).
    exclude_labels
        Labels whose cells are dropped.
    embeddings
        ``{name: file}`` of per-cell embedding tables joined into ``obsm["X_<name>"]``. ``None`` takes every
        ``*_embedding.csv`` in the folder (``stain_vae_embedding.csv`` -> ``X_stain_vae``); ``{}`` takes none.
    id_column
        Cell id column of the counts and metadata tables.
    x_column, y_column
        Centroid columns of the metadata (pixels).
    pixel_size
        Micrometres per pixel, if known.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the folder name).

    Returns
    -------
    SpatialSample
        ``adata`` with counts, ``obs`` metadata and labels, ``obsm["spatial"]`` and embeddings; no molecules.

    Examples
    --------
    >>> from stmorph.io import read_merfish_tables
    >>> s = read_merfish_tables("/work/shared/data/merfish_ileum")  # doctest: +SKIP
    >>> s.adata.obsm["X_stain_vae"].shape  # doctest: +SKIP
    (5194, 50)
    """
    folder = as_dir(path, what="MERFISH tables")
    report = Report("read_merfish_tables")
    counts_file = find_file(folder, [counts], required=True, what="counts table")
    meta_file = find_file(folder, [meta], required=True, what="cell metadata table")
    assert counts_file is not None and meta_file is not None

    ct = read_table(counts_file, columns=[id_column], dtype={id_column: "string"})
    ct.index = pd.Index(normalize_ids(ct.pop(id_column)).astype(object))
    if ct.shape[1] == 0:
        raise StmorphInputError("the counts table has no gene columns", file=counts_file, expected=f"{id_column} + genes")
    nonnum = [c for c in ct.columns if not pd.api.types.is_numeric_dtype(ct[c].dtype)]
    if nonnum:
        raise StmorphInputError(
            f"non-numeric count columns {nonnum[:5]}", file=counts_file, column=str(nonnum[0]), expected="integer counts"
        )
    _check_ids(ct.index, counts_file, id_column)

    mt = read_table(meta_file, columns=[id_column, x_column, y_column], dtype={id_column: "string"})
    mt.index = pd.Index(normalize_ids(mt.pop(id_column)).astype(object))
    _check_ids(mt.index, meta_file, id_column)

    cells = ct.index.intersection(mt.index, sort=False)
    if len(cells) == 0:
        raise StmorphInputError(
            f"no cell id is shared by {counts_file.name} ({ct.index[:3].tolist()}...) and {meta_file.name} "
            f"({mt.index[:3].tolist()}...)",
            file=meta_file,
            column=id_column,
            expected="the same cell ids as the counts table",
        )
    n1, n2 = len(ct) - len(cells), len(mt) - len(cells)
    report.warn("cells_missing_in_meta", n1, f"dropped {n1} cells of {counts_file.name} absent from {meta_file.name}")
    report.warn("cells_missing_in_counts", n2, f"dropped {n2} cells of {meta_file.name} absent from {counts_file.name}")

    X = ct.loc[cells].to_numpy(dtype=np.float32)
    obs = mt.loc[cells].drop(columns=[x_column, y_column])
    centroids = mt.loc[cells, [x_column, y_column]].to_numpy(dtype=np.float64)
    adata = build_adata(X, cells, pd.Index(ct.columns.astype(str)), centroids, obs)
    adata = drop_nan_centroids(adata, report, file=meta_file)
    files = {"counts": str(counts_file), "meta": str(meta_file)}

    lab_file = find_file(folder, [labels], required=False, what="labels") if labels else None
    if lab_file is not None:
        lt = read_table(lab_file)
        id_col = "cell" if "cell" in lt.columns else str(lt.columns[0])
        require_columns(lt, [id_col, label_column], file=lab_file)
        adata = apply_labels(adata, label_series(lt[label_column], lt[id_col]), report, file=lab_file,
                             exclude_labels=exclude_labels)
        files["labels"] = str(lab_file)

    if embeddings is None:
        embeddings = {
            p.name[: -len(_EMBED_SUFFIX + ".csv")]: p.name for p in sorted(folder.glob(f"*{_EMBED_SUFFIX}.csv"))
        }
    emb_files = {}
    for key, fname in embeddings.items():
        f = find_file(folder, [fname], required=True, what=f"embedding table '{key}'")
        assert f is not None
        et = read_table(f)
        if et.shape[1] < 2:
            raise StmorphInputError("an embedding table needs a cell id column and >= 1 dimension", file=f)
        et.index = pd.Index(normalize_ids(et.iloc[:, 0]).astype(object))
        et = et.iloc[:, 1:]
        nonnum = [c for c in et.columns if not pd.api.types.is_numeric_dtype(et[c].dtype)]
        if nonnum:
            raise StmorphInputError(
                f"non-numeric embedding columns {nonnum[:5]}", file=f, column=str(nonnum[0]), expected="numbers"
            )
        et = et[~et.index.duplicated(keep="first")]
        common = adata.obs_names.intersection(et.index, sort=False)
        if len(common) == 0:
            raise StmorphInputError(
                f"no cell id of the embedding matches the cells (e.g. {et.index[:3].tolist()})",
                file=f,
                column=str(et.index.name or "first column"),
                expected="the same cell ids as the counts table",
            )
        n_miss = adata.n_obs - len(common)
        report.warn(f"cells_missing_in_{key}", n_miss, f"dropped {n_miss} cells absent from the embedding table {f.name}")
        if n_miss:
            adata = adata[common].copy()
        adata.obsm[f"X_{key}"] = et.loc[adata.obs_names].to_numpy(dtype=np.float32)
        emb_files[key] = str(f)
    adata = restrict_genes(adata, genes, file=counts_file)
    if emb_files:
        files["embeddings"] = emb_files  # type: ignore[assignment]

    prov = {
        "reader": "merfish_tables",
        "path": str(folder.resolve()),
        "files": files,
        "exclude_labels": list(exclude_labels),
    }
    return finish_sample(adata, None, {}, pixel_size, name or folder.name, prov, report, count_molecules=False)


def _check_ids(idx: pd.Index, file: Path, column: str) -> None:
    if idx.isna().any():
        raise StmorphInputError(f"{int(idx.isna().sum())} rows have no cell id", file=file, column=column, expected="a cell id per row")
    if not idx.is_unique:
        dup = idx[idx.duplicated()][:5].tolist()
        raise StmorphInputError(f"duplicate cell ids {dup}", file=file, column=column, expected="unique cell ids")
