"""Reader of a Baysor segmentation folder (the seed study's MERFISH ileum layout)."""

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
    centroids_from_molecules,
    check_inside_image,
    counts_from_molecules,
    drop_nan_centroids,
    drop_nan_coordinates,
    find_file,
    make_molecules,
    normalize_ids,
    open_stack,
    plane_shape,
    read_table,
    require_columns,
    restrict_genes,
    to_bool,
)

__all__ = ["read_baysor", "detect_baysor"]

_SEGMENTATION = "segmentation.csv"
_STATS = "segmentation_cell_stats.csv"
_COUNTS = "segmentation_counts.tsv"
_UNASSIGNED = ("0",)


def detect_baysor(path: Path) -> bool:
    """A folder holding Baysor's ``segmentation.csv``."""
    return path.is_dir() and (path / _SEGMENTATION).exists()


def read_baysor(
    path: str | PathLike,
    *,
    z: int | None = None,
    dapi: str | None = "dapi_stack.tif",
    membrane: str | None = "membrane_stack.tif",
    labels: str | None = "cell_assignment.csv",
    label_column: str = "leiden_final",
    exclude_labels: Sequence[str] = ("Removed",),
    pixel_size: float | None = None,
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read a Baysor segmentation folder into a :class:`~stmorph.SpatialSample`.

    Files (all in ``path``): ``segmentation.csv`` (molecules: ``x, y, [z], gene, cell, is_noise``; required),
    ``segmentation_cell_stats.csv`` (``cell, x, y, ...``: centroids and per-cell statistics into ``obs``),
    ``segmentation_counts.tsv`` (genes x cells, first column ``gene``; counts derive from the assigned molecules
    when absent), the optional label table and the optional (Z, H, W) stain stacks. ``x, y`` are image pixels.

    Noise molecules (``is_noise`` true) are dropped; cell ``0`` or an empty cell is "unassigned". Cells missing
    from the label table, cells with an excluded label and cells with a NaN centroid are dropped; each drop is
    logged and counted in ``provenance["report"]``. Cells without molecules are kept (zero counts, reported).

    Parameters
    ----------
    path
        The Baysor output folder.
    z
        The z-plane taken from the stain stacks; ``None`` takes the middle plane (recorded in provenance).
    dapi, membrane
        File names (in ``path``) of the DAPI and membrane stacks, read as images ``"DAPI"`` and ``"membrane"``;
        ``None`` or an absent file skips the channel.
    labels
        File name of the label table (``cell`` + ``label_column``); ``None`` or absent: no labels.
    label_column
        The label column, stored as ``obs["cell_type"]``.
    exclude_labels
        Labels whose cells are dropped (``"Removed"`` in the seed study).
    pixel_size
        Micrometres per pixel, if known.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the folder name).

    Returns
    -------
    SpatialSample
        Counts (``adata``), molecules (pixels), images and provenance.

    Examples
    --------
    >>> from stmorph.io import read_baysor
    >>> sample = read_baysor("baysor_out/", z=3)  # doctest: +SKIP
    >>> sample.adata.obs["cell_type"].value_counts()  # doctest: +SKIP
    """
    folder = as_dir(path, what="Baysor")
    report = Report("read_baysor")
    seg_file = find_file(folder, [_SEGMENTATION], required=True, what="Baysor molecule table")
    assert seg_file is not None
    seg = read_table(seg_file, columns=["x", "y", "gene", "cell"], dtype={"cell": "string", "gene": "string"})

    # -- molecules ---------------------------------------------------------------------------------------
    if "is_noise" in seg.columns:
        noise = to_bool(seg["is_noise"], file=seg_file, column="is_noise")
        report.info("molecules_noise_dropped", int(noise.sum()))
        seg = seg.loc[~noise]
    for c in ("x", "y"):
        if not pd.api.types.is_numeric_dtype(seg[c].dtype):
            raise StmorphInputError("coordinates are not numeric", file=seg_file, column=c, expected="numbers (pixels)")
    seg = drop_nan_coordinates(seg, report, file=seg_file)
    if seg["gene"].isna().any():
        n = int(seg["gene"].isna().sum())
        report.warn("molecules_no_gene", n, f"dropped {n} molecules without a gene name")
        seg = seg.loc[seg["gene"].notna()]
    cell_of = normalize_ids(seg["cell"], _UNASSIGNED)
    zcol = seg["z"].to_numpy() if "z" in seg.columns else None
    mol = make_molecules(seg["x"].to_numpy(), seg["y"].to_numpy(), seg["gene"], cell_of, zcol)
    assigned_ids = pd.Index(cell_of.dropna().unique())

    # -- cells: stats table (centroids) and counts table -------------------------------------------------
    stats_file = find_file(folder, [_STATS], required=False, what="Baysor cell statistics")
    counts_file = find_file(folder, [_COUNTS], required=False, what="Baysor counts")
    stats = None
    if stats_file is not None:
        stats = read_table(stats_file, columns=["cell", "x", "y"], dtype={"cell": "string"})
        stats.index = pd.Index(normalize_ids(stats.pop("cell")).astype(object))
        n_na = int(stats.index.isna().sum())
        stats = stats.loc[stats.index.notna()]
        report.warn("stats_rows_without_id", n_na, f"dropped {n_na} rows of {_STATS} without a cell id")
        stats = stats[~stats.index.duplicated(keep="first")]

    gene_names: pd.Index
    if counts_file is not None:
        ct = read_table(counts_file, columns=["gene"])
        ct = ct.set_index("gene")
        ct.columns = pd.Index(normalize_ids(pd.Series(ct.columns.astype(str))).astype(object))
        if ct.shape[1] == 0:
            raise StmorphInputError("the counts table has no cell columns", file=counts_file, expected="genes x cells")
        gene_names = pd.Index(ct.index.astype(str))
        count_cells = pd.Index(ct.columns)
    else:
        gene_names = pd.Index(sorted(mol["gene"].cat.categories.astype(str)))
        count_cells = None
    if len(gene_names) == 0:
        raise StmorphInputError("no genes found", file=counts_file or seg_file, column="gene", expected="at least one gene")

    # the cells: stats ∩ counts (core tables must agree at least partly); otherwise whatever exists
    if stats is not None and count_cells is not None:
        cells = stats.index.intersection(count_cells, sort=False)
        if len(cells) == 0:
            raise StmorphInputError(
                f"the cell ids of {_STATS} ({stats.index[:3].tolist()}...) and of {_COUNTS} "
                f"({count_cells[:3].tolist()}...) do not overlap",
                file=counts_file,
                expected="the same cell ids in both tables",
            )
        n1, n2 = len(stats) - len(cells), len(count_cells) - len(cells)
        report.warn("cells_only_in_stats", n1, f"dropped {n1} cells of {_STATS} absent from {_COUNTS}")
        report.warn("cells_only_in_counts", n2, f"dropped {n2} cells of {_COUNTS} absent from {_STATS}")
    elif stats is not None:
        cells = pd.Index(stats.index)
    elif count_cells is not None:
        cells = count_cells
    else:
        cells = assigned_ids
        report.info("cells_from", "molecules (no stats/counts tables)")
    if len(cells) == 0:
        raise StmorphInputError("no cells found", file=folder, expected="assigned molecules or a cell table")

    n_unknown = int((~assigned_ids.isin(cells)).sum())
    if n_unknown:
        lost = mol["cell_id"].isin(assigned_ids[~assigned_ids.isin(cells)]).fillna(False).to_numpy(bool)
        report.warn(
            "molecules_of_unknown_cells", int(lost.sum()),
            f"{int(lost.sum())} molecules are assigned to {n_unknown} cells absent from the cell tables; unassigned",
        )
        mol.loc[lost, "cell_id"] = pd.NA

    if counts_file is not None:
        X = ct.loc[:, cells].to_numpy(dtype=np.float32).T
        mol_genes = pd.Index(mol["gene"].cat.categories.astype(str))
        extra = mol_genes.difference(gene_names)
        report.warn("molecule_genes_not_in_counts", len(extra), f"{len(extra)} molecule genes are not in {_COUNTS}, e.g. {list(extra[:3])}")
    else:
        X = counts_from_molecules(mol["cell_id"], mol["gene"], cells, gene_names)

    if stats is not None:
        obs = stats.loc[cells].drop(columns=["x", "y"])
        centroids = stats.loc[cells, ["x", "y"]].to_numpy(dtype=np.float64)
    else:
        obs = None
        centroids = centroids_from_molecules(mol, cells)
    adata = build_adata(X, cells, gene_names, centroids, obs)

    n_mol = np.bincount(
        cells.get_indexer(mol["cell_id"].astype("string").fillna("\x00")).clip(-1) + 1, minlength=len(cells) + 1
    )[1:]
    n_empty = int((n_mol == 0).sum())
    report.warn("cells_without_molecules", n_empty, f"{n_empty} cells have no assigned molecule (kept)")

    adata = drop_nan_centroids(adata, report, file=stats_file or seg_file)

    # -- labels ------------------------------------------------------------------------------------------
    files = {"molecules": str(seg_file), "stats": _s(stats_file), "counts": _s(counts_file)}
    lab_file = find_file(folder, [labels], required=False, what="labels") if labels else None
    if lab_file is not None:
        lt = read_table(lab_file, dtype={"cell": "string"})
        id_col = "cell" if "cell" in lt.columns else lt.columns[0]
        require_columns(lt, [id_col, label_column], file=lab_file)
        lab = pd.Series(lt[label_column].to_numpy(), index=pd.Index(normalize_ids(lt[id_col]).astype(object)))
        lab = lab[lab.index.notna()]
        adata = apply_labels(adata, lab, report, file=lab_file, exclude_labels=exclude_labels)
        files["labels"] = str(lab_file)
        # molecules of dropped cells become unassigned
        mol.loc[~mol["cell_id"].isin(adata.obs_names).fillna(False).to_numpy(bool), "cell_id"] = pd.NA
    adata = restrict_genes(adata, genes, file=counts_file or seg_file)

    # -- images ------------------------------------------------------------------------------------------
    images = {}
    z_used = {}
    for chan, fname in (("DAPI", dapi), ("membrane", membrane)):
        if not fname:
            continue
        f = find_file(folder, [fname], required=False, what=chan)
        if f is None:
            continue
        images[chan], z_used[chan] = open_stack(f, z, report=report, name=chan)
        files[chan] = str(f)
    if images:
        shape = plane_shape(Path(next(iter(images.values())).path))  # type: ignore[arg-type]
        check_inside_image(mol["x"].to_numpy(), mol["y"].to_numpy(), shape, report, what="molecules", file=seg_file)

    prov = {
        "reader": "baysor",
        "path": str(folder.resolve()),
        "files": files,
        "z": z_used,
        "exclude_labels": list(exclude_labels),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_molecules": int(len(mol)),
        "report": report.as_dict(),
    }
    return SpatialSample(adata, mol.reset_index(drop=True), images, pixel_size, name or folder.name, prov)


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)
