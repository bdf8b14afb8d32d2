"""Reader of the native 10x Xenium output layout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ..sample import SpatialSample, StainImage
from ._common import (
    CONTROL_PREFIXES,
    Report,
    apply_labels,
    as_dir,
    build_adata,
    centroids_from_molecules,
    check_inside_image,
    counts_from_molecules,
    decode_strings,
    drop_nan_centroids,
    find_file,
    image_shape,
    is_control,
    make_molecules,
    normalize_ids,
    read_table,
    require_columns,
    restrict_genes,
    to_bool,
    unassign_unknown_cells,
)

__all__ = ["read_xenium", "detect_xenium", "XENIUM_DEFAULT_PIXEL_SIZE"]

#: Xenium morphology image pixel size (um) used when neither the argument nor experiment.xenium gives one.
XENIUM_DEFAULT_PIXEL_SIZE = 0.2125
_TRANSCRIPTS = ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv")
_CELLS = ("cells.parquet", "cells.csv.gz", "cells.csv")
_UNASSIGNED = ("-1", "UNASSIGNED")


def detect_xenium(path: Path) -> bool:
    """A folder with ``transcripts.parquet``/``transcripts.csv.gz`` (or ``experiment.xenium``)."""
    return path.is_dir() and (any((path / t).exists() for t in _TRANSCRIPTS) or (path / "experiment.xenium").exists())


def read_xenium(
    path: str | PathLike,
    *,
    image: str | None = "morphology_mip.tif",
    pixel_size: float | None = None,
    origin: tuple[float, float] | None = None,
    exclude_controls: bool = True,
    min_qv: float | None = None,
    labels: str | PathLike | None = None,
    label_column: str = "cell_type",
    exclude_labels: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    name: str | None = None,
) -> SpatialSample:
    """Read a native 10x Xenium output folder into a :class:`~stmorph.SpatialSample`.

    Transcripts (``transcripts.parquet`` or ``transcripts.csv.gz``; micrometres) become molecules in pixels:
    ``pixel = (um - origin) / pixel_size``. ``cell_id`` -1 / ``UNASSIGNED`` / empty is unassigned. Cells and
    their centroids come from ``cells.parquet``/``cells.csv.gz`` (other columns into ``obs``) or, when absent,
    from the assigned transcripts (centroid = mean position). Counts always derive from the kept transcripts.
    The morphology image (``image``, else ``morphology_mip.tif``, ``morphology_focus.ome.tif`` or the first file
    of ``morphology_focus/``) becomes image ``"DAPI"``.

    Parameters
    ----------
    path
        The Xenium output folder.
    image
        File name of the DAPI image in ``path``; falls back to the other morphology files; ``None``: no image.
    pixel_size
        Micrometres per pixel; default ``pixel_size`` of ``experiment.xenium``, else 0.2125 (with a warning).
    origin
        ``(x, y)`` micrometres of pixel (0, 0); default ``(0, 0)``. For a crop, the crop's corner
        (``(1062.0, 212.0)`` for the shared breast crop).
    exclude_controls
        Drop control probes/codewords (``NegControlProbe_*``, ``BLANK_*``, ...) from genes and molecules.
    min_qv
        Drop transcripts with ``qv`` below this (Xenium's usual threshold is 20).
    labels
        Optional label table (first column cell id, ``label_column``), file name in ``path`` or a path.
    label_column, exclude_labels
        Label column (-> ``obs["cell_type"]``) and labels whose cells are dropped.
    genes
        Keep only these genes (error naming any that are absent).
    name
        Sample name (default: the folder name).

    Returns
    -------
    SpatialSample
        Counts, molecules (pixels; ``overlaps_nucleus``/``qv`` kept when present; ``z`` in um), image, provenance.

    Examples
    --------
    >>> from stmorph.io import read_xenium
    >>> s = read_xenium("/work/shared/data/xenium_breast_crop", origin=(1062.0, 212.0))  # doctest: +SKIP
    >>> s.images["DAPI"].shape  # doctest: +SKIP
    (1800, 2400)
    """
    folder = as_dir(path, what="Xenium")
    report = Report("read_xenium")
    tx_file = find_file(folder, _TRANSCRIPTS, required=True, what="Xenium transcripts")
    assert tx_file is not None
    need = ["cell_id", "feature_name", "x_location", "y_location"]
    tx = read_table(tx_file, columns=need, dtype={"cell_id": "string", "feature_name": "string"})

    # -- pixel size and origin ---------------------------------------------------------------------------
    exp_file = folder / "experiment.xenium"
    ps_source = "argument"
    if pixel_size is None and exp_file.exists():
        try:
            exp = json.loads(exp_file.read_text())
        except (OSError, ValueError) as exc:
            raise StmorphInputError(f"cannot parse JSON ({exc})", file=exp_file, expected="Xenium experiment JSON") from exc
        if exp.get("pixel_size") is not None:
            pixel_size, ps_source = float(exp["pixel_size"]), "experiment.xenium"
    if pixel_size is None:
        pixel_size, ps_source = XENIUM_DEFAULT_PIXEL_SIZE, "default"
        report.warn("pixel_size_default", 1, f"pixel size unknown (no experiment.xenium): assuming {XENIUM_DEFAULT_PIXEL_SIZE} um/px")
    if not pixel_size > 0:
        raise StmorphInputError(f"pixel_size={pixel_size}", expected="a positive pixel size in um")
    ox, oy = (0.0, 0.0) if origin is None else (float(origin[0]), float(origin[1]))

    # -- transcripts -------------------------------------------------------------------------------------
    feature = decode_strings(tx["feature_name"]).astype("string")
    cell_of = normalize_ids(decode_strings(tx["cell_id"]), _UNASSIGNED)
    x_um = pd.to_numeric(tx["x_location"], errors="coerce").to_numpy(np.float64)
    y_um = pd.to_numeric(tx["y_location"], errors="coerce").to_numpy(np.float64)
    keep = np.isfinite(x_um) & np.isfinite(y_um)
    n_nan = int((~keep).sum())
    if n_nan == len(tx):
        raise StmorphInputError("every transcript has a NaN coordinate", file=tx_file, column="x_location")
    report.warn("molecules_nan_coordinates", n_nan, f"dropped {n_nan} transcripts with NaN coordinates")
    x_px, y_px = (x_um - ox) / pixel_size, (y_um - oy) / pixel_size

    # cells derive from *all* assigned transcripts with coordinates (segmentation, not gene filtering)
    all_mol = pd.DataFrame({"x": x_px[keep], "y": y_px[keep], "cell_id": cell_of[keep].to_numpy()})

    if min_qv is not None:
        if "qv" not in tx.columns:
            raise StmorphInputError("min_qv was given but the table has no qv column", file=tx_file, column="qv")
        low = tx["qv"].to_numpy(np.float64) < float(min_qv)
        report.info("molecules_low_qv_dropped", int((low & keep).sum()))
        keep &= ~low
    ctrl = is_control(feature) if exclude_controls else np.zeros(len(tx), dtype=bool)
    if exclude_controls:
        per = feature[ctrl & keep].str.extract(r"^([A-Za-z]+)", expand=False).value_counts()
        report.info("control_molecules_excluded", {str(k): int(v) for k, v in per.items()})
        report.info("control_features_excluded", int(feature[ctrl].nunique()))
    keep &= ~ctrl
    if not keep.any():
        raise StmorphInputError(
            "no transcript is left after excluding control probes / low qv", file=tx_file, column="feature_name",
            expected="gene transcripts besides control probes",
        )
    extra = {}
    if "overlaps_nucleus" in tx.columns:
        extra["overlaps_nucleus"] = to_bool(tx["overlaps_nucleus"], file=tx_file, column="overlaps_nucleus")[keep]
    if "qv" in tx.columns:
        extra["qv"] = tx["qv"].to_numpy(np.float32)[keep]
    z = tx["z_location"].to_numpy(np.float64)[keep] if "z_location" in tx.columns else None
    mol = make_molecules(x_px[keep], y_px[keep], feature[keep].to_numpy(), cell_of[keep], z, **extra)
    gene_names = pd.Index(sorted(mol["gene"].cat.categories.astype(str)))
    if len(gene_names) == 0:
        raise StmorphInputError("empty gene set", file=tx_file, column="feature_name", expected="at least one gene")

    # -- cells -------------------------------------------------------------------------------------------
    cells_file = find_file(folder, _CELLS, required=False, what="Xenium cells")
    assigned = pd.Index(all_mol["cell_id"].dropna().unique())
    files = {"transcripts": str(tx_file)}
    if cells_file is not None:
        ctab = read_table(cells_file, columns=["cell_id", "x_centroid", "y_centroid"], dtype={"cell_id": "string"})
        ctab.index = pd.Index(normalize_ids(decode_strings(ctab.pop("cell_id"))).astype(object))
        ctab = ctab[ctab.index.notna() & ~ctab.index.duplicated(keep="first")]
        cells = pd.Index(ctab.index)
        centroids = np.column_stack(
            [(ctab["x_centroid"].to_numpy(np.float64) - ox) / pixel_size, (ctab["y_centroid"].to_numpy(np.float64) - oy) / pixel_size]
        )
        obs = ctab
        unassign_unknown_cells(mol, assigned, cells, report=report, file=cells_file, column="cell_id", what="transcript")
        files["cells"] = str(cells_file)
    else:
        cells = assigned
        if len(cells) == 0:
            raise StmorphInputError("no transcript is assigned to a cell", file=tx_file, column="cell_id", expected="cell ids")
        centroids = centroids_from_molecules(all_mol, cells)
        obs = None
        report.info("cells_from", "assigned transcripts (no cells table): centroid = mean transcript position")

    X = counts_from_molecules(mol["cell_id"], mol["gene"], cells, gene_names)
    adata = build_adata(X, cells, gene_names, centroids, obs)
    n_empty = int((np.asarray(X.sum(axis=1)).ravel() == 0).sum())
    report.warn("cells_without_molecules", n_empty, f"{n_empty} cells have no kept transcript (kept with zero counts)")
    adata = drop_nan_centroids(adata, report, file=cells_file or tx_file)

    if labels is not None:
        lab_file = find_file(folder, [str(labels)], required=True, what="labels")
        assert lab_file is not None
        lt = read_table(lab_file)
        require_columns(lt, [label_column], file=lab_file)
        id_col = str(lt.columns[0]) if lt.columns[0] != label_column else "cell_id"
        require_columns(lt, [id_col], file=lab_file)
        lab = pd.Series(lt[label_column].to_numpy(), index=pd.Index(normalize_ids(lt[id_col]).astype(object)))
        adata = apply_labels(adata, lab[lab.index.notna()], report, file=lab_file, exclude_labels=exclude_labels)
        mol.loc[~mol["cell_id"].isin(adata.obs_names).fillna(False).to_numpy(bool), "cell_id"] = pd.NA
        files["labels"] = str(lab_file)
    adata = restrict_genes(adata, genes, file=tx_file)

    # -- image -------------------------------------------------------------------------------------------
    images = {}
    if image is not None:
        img_file = _find_image(folder, image)
        if img_file is None:
            report.warn("no_image", 1, f"no morphology image found in {folder} (looked for {image}, morphology_focus)")
        else:
            shape = image_shape(img_file)
            if len(shape) == 2:
                images["DAPI"] = StainImage(img_file)
            elif len(shape) == 3:
                images["DAPI"] = StainImage(img_file, channel=0)  # multi-channel focus image: DAPI is channel 0
                report.info("DAPI_channel", {"channel": 0, "shape": list(shape)})
            else:
                raise StmorphInputError(f"unsupported image shape {shape}", file=img_file, expected="a 2-D image")
            files["DAPI"] = str(img_file)
            check_inside_image(
                mol["x"].to_numpy(), mol["y"].to_numpy(), (shape[-2], shape[-1]), report, what="molecules", file=tx_file
            )

    prov = {
        "reader": "xenium",
        "path": str(folder.resolve()),
        "files": files,
        "pixel_size_source": ps_source,
        "origin_um": [ox, oy],
        "exclude_controls": bool(exclude_controls),
        "control_prefixes": list(CONTROL_PREFIXES) if exclude_controls else [],
        "min_qv": min_qv,
        "z_units": "um",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_molecules": int(len(mol)),
        "report": report.as_dict(),
    }
    return SpatialSample(adata, mol, images, float(pixel_size), name or folder.name, prov)


def _find_image(folder: Path, image: str) -> Path | None:
    for cand in (image, "morphology_mip.tif", "morphology_focus.ome.tif"):
        p = Path(cand) if Path(cand).is_absolute() else folder / cand
        if p.is_file():
            return p
    d = folder / "morphology_focus"
    if d.is_dir():
        tifs = sorted(p for p in d.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        if tifs:
            return tifs[0]
    return None
