"""Reader of a Baysor segmentation folder (the seed study's MERFISH ileum layout), and its writer.

:func:`write_baysor_layout` writes a sample (the synthetic tissue) in the layout :func:`read_baysor` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from .._atomic import atomic_dir
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
    finish_sample,
    label_series,
    make_molecules,
    normalize_ids,
    open_stack,
    plane_shape,
    read_table,
    require_columns,
    restrict_genes,
    to_bool,
)
from ._writers_common import cell_positions, defocus_stack, int_counts, z_planes_of

__all__ = ["read_baysor", "detect_baysor", "write_baysor_layout"]

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
        adata = apply_labels(adata, label_series(lt[label_column], lt[id_col]), report, file=lab_file,
                             exclude_labels=exclude_labels, molecules=mol)
        files["labels"] = str(lab_file)
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
    }
    return finish_sample(adata, mol.reset_index(drop=True), images, pixel_size, name or folder.name, prov, report)


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


# ---------------------------------------------------------------------------------------------------------
# writer (the layout above, from a sample: the synthetic tissue as a Baysor folder)
# ---------------------------------------------------------------------------------------------------------
def _elongation(x: np.ndarray, y: np.ndarray, cell: np.ndarray, n: int) -> np.ndarray:
    """Ratio of the principal axes' variances of each cell's molecule cloud."""
    cnt = np.bincount(cell, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.bincount(cell, x, n) / cnt
        my = np.bincount(cell, y, n) / cnt
        dx, dy = x - mx[cell], y - my[cell]
        sxx = np.bincount(cell, dx * dx, n) / cnt
        syy = np.bincount(cell, dy * dy, n) / cnt
        sxy = np.bincount(cell, dx * dy, n) / cnt
        tr, det = sxx + syy, sxx * syy - sxy**2
        disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
        l1, l2 = tr / 2 + disc, tr / 2 - disc
        el = l1 / l2
    el[(cnt < 3) | ~np.isfinite(el)] = np.nan
    return el


def write_baysor_layout(
    sample: SpatialSample,
    out_dir: str | PathLike,
    *,
    z_planes: int | None = None,
    label_key: str = "cell_type",
    removed_fraction: float = 0.03,
    noise_fraction: float = 0.01,
    overwrite: bool = False,
    random_state: int = 0,
) -> Path:
    """Write a sample as a Baysor/MERFISH segmentation folder, the layout of the seed study.

    Files: ``segmentation.csv`` (``x, y, z, gene, cell, is_noise``; ``cell`` is the 1-based row of the cell
    in ``adata``, 0 = unassigned; extra noise rows have ``is_noise`` true and cell 0),
    ``segmentation_cell_stats.csv`` (``cell, x, y, n_transcripts, density, elongation, area,
    avg_confidence``), ``segmentation_counts.tsv`` (genes x cells, first column ``gene``),
    ``cell_assignment.csv`` (``cell, leiden_final``, with ~3 % ``"Removed"``), ``dapi_stack.tif`` and
    ``membrane_stack.tif`` ((Z, H, W) uint16; the middle plane ``Z // 2`` is the sample's image, the others
    defocused, see :func:`~stmorph.io._writers_common.defocus_stack`). Coordinates are pixels, ``z`` micrometres.

    Parameters
    ----------
    sample
        The sample (a :func:`~stmorph.datasets.synthetic_tissue` or any sample with molecules and DAPI/membrane
        images).
    out_dir
        Folder to create.
    z_planes
        Planes of the stacks; default the sample's ``uns["synthetic_tissue"]["params"]["z_planes"]`` or 3.
    label_key
        ``obs`` column written as ``leiden_final``.
    removed_fraction
        Fraction of cells labelled ``"Removed"`` (as the study excluded cells).
    noise_fraction
        Extra noise rows (``is_noise`` true), as a fraction of the molecules.
    overwrite
        Replace an existing folder.
    random_state
        Seed for the removed cells, noise rows and confidences.

    Returns
    -------
    pathlib.Path
        The folder written.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue, write_baysor_layout
    >>> write_baysor_layout(synthetic_tissue(n_cells=50, n_types=4), "baysor_dir")  # doctest: +SKIP
    """
    import tifffile

    mol = sample.require("molecules")
    rng = np.random.default_rng(random_state)
    n = sample.n_cells
    zp = z_planes_of(sample, z_planes)
    pos = cell_positions(sample, mol)
    x = mol["x"].to_numpy(np.float64)
    y = mol["y"].to_numpy(np.float64)
    z = mol["z"].to_numpy(np.float64) if "z" in mol else np.zeros(len(mol))
    seg = pd.DataFrame({"x": x, "y": y, "z": z, "gene": mol["gene"].astype(str).to_numpy(),
                        "cell": pos + 1, "is_noise": np.zeros(len(mol), dtype=bool)})
    n_noise = int(round(noise_fraction * len(mol)))
    if n_noise:
        H, W = sample.images["DAPI"].shape if "DAPI" in sample.images else (y.max() + 1, x.max() + 1)
        genes = np.asarray(sample.gene_names)
        noise = pd.DataFrame({
            "x": rng.uniform(-0.5, W - 0.5, n_noise), "y": rng.uniform(-0.5, H - 0.5, n_noise),
            "z": rng.uniform(z.min(), z.max() + 1e-9, n_noise) if len(z) else np.zeros(n_noise),
            "gene": genes[rng.integers(0, len(genes), n_noise)], "cell": 0,
            "is_noise": np.ones(n_noise, dtype=bool),
        })
        seg = pd.concat([seg, noise], ignore_index=True)
    assigned = pos >= 0
    counts = int_counts(sample)
    area = (sample.adata.obs["cell_area"].to_numpy(np.float64) if "cell_area" in sample.adata.obs
            else np.full(n, np.nan))
    n_tx = counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        density = n_tx / area
    stats = pd.DataFrame({
        "cell": np.arange(1, n + 1),
        "x": sample.centroids[:, 0],
        "y": sample.centroids[:, 1],
        "n_transcripts": n_tx,
        "density": density,
        "elongation": _elongation(x[assigned], y[assigned], pos[assigned], n),
        "area": area,
        "avg_confidence": np.round(rng.uniform(0.8, 1.0, n), 4),
    })
    counts_df = pd.DataFrame(counts.T, columns=[str(i) for i in range(1, n + 1)])
    counts_df.insert(0, "gene", sample.gene_names)
    labels = (sample.adata.obs[label_key].astype(str).to_numpy(object) if label_key in sample.adata.obs
              else np.full(n, "unknown", dtype=object))
    labels = labels.copy()
    n_removed = int(round(removed_fraction * n))
    if n_removed:
        labels[rng.choice(n, n_removed, replace=False)] = "Removed"
    assign = pd.DataFrame({"cell": np.arange(1, n + 1), "leiden_final": labels})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        seg["is_noise"] = np.where(seg["is_noise"].to_numpy(), "true", "false")
        seg.to_csv(tmp / "segmentation.csv", index=False)
        stats.to_csv(tmp / "segmentation_cell_stats.csv", index=False)
        counts_df.to_csv(tmp / "segmentation_counts.tsv", sep="\t", index=False)
        assign.to_csv(tmp / "cell_assignment.csv", index=False)
        for ch, fname in (("DAPI", "dapi_stack.tif"), ("membrane", "membrane_stack.tif")):
            if ch in sample.images:
                tifffile.imwrite(tmp / fname, defocus_stack(sample.images[ch].read(), zp))
    return Path(out_dir)
