"""``stmorph features``: CellProfiler (cp-measure) and pretrained-CNN features of a sample's stain crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ._output import write_obsm

features_app = typer.Typer(
    help="Morphology feature spaces from stain crops: CellProfiler measurements or pretrained-CNN features.",
    no_args_is_help=True,
)


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _tile_size_option() -> Any:
    """``--tile-size``, shared by the commands that run tile by tile."""
    return typer.Option(
        2048, "--tile-size", help="Tile side in pixels with --workers/--scheduler (each task reads its tile plus half "
        "a crop on every side).",
    )


def _check_workers(workers: int | None) -> None:
    from ..errors import StmorphInputError

    if workers is not None and workers < 1:
        raise StmorphInputError(f"--workers {workers}", expected="a positive number of worker processes")


def _cellprofiler_distributed(
    sample_dir: Path, out: Path, key: str, h5ad: Path | None, workers: int | None, scheduler: str | None, **kwargs
) -> None:
    """``stmorph features cellprofiler --workers N / --scheduler ADDRESS``: :mod:`stmorph.distributed`."""

    from ..distributed import cellprofiler_features as distributed_cellprofiler

    _check_workers(workers)
    if kwargs.get("intensity_scale") not in ("image", "dtype"):
        try:
            kwargs["intensity_scale"] = float(kwargs["intensity_scale"])
        except (TypeError, ValueError):
            pass
    tiles = out.with_name(out.name + ".tiles")
    df = distributed_cellprofiler(sample_dir, out_dir=tiles, key_added=key, n_workers=workers, scheduler=scheduler,
                                  overwrite="changed", **kwargs)
    info = df.attrs["info"]
    _write_tiled(df, sample_dir, key, out, h5ad, tiles, f"measured {info['n_features_measured']} features, kept "
                 f"{info['n_features_kept']}", feature_names=True)


def _cnn_distributed(
    sample_dir: Path, out: Path, key: str, h5ad: Path | None, workers: int | None, scheduler: str | None, **kwargs
) -> None:
    """``stmorph features cnn --workers N / --scheduler ADDRESS``: :func:`stmorph.distributed.cnn_features`, the
    same table (and ``--h5ad`` AnnData) as the serial command."""

    from ..distributed import cnn_features as distributed_cnn

    _check_workers(workers)
    tiles = out.with_name(out.name + ".tiles")
    df = distributed_cnn(sample_dir, out_dir=tiles, key_added=key, n_workers=workers, scheduler=scheduler,
                         overwrite="changed", **kwargs)
    info = df.attrs["info"]
    _write_tiled(df, sample_dir, key, out, h5ad, tiles,
                 f"{info['n_raw_features']} CNN features, {info['n_components']} kept")


def _write_tiled(df, sample_dir: Path, key: str, out: Path, h5ad: Path | None, tiles: Path, what: str,
                 feature_names: bool = False) -> None:
    """Write a tile-by-tile table as the serial commands do (``out`` and, with ``--h5ad``, AnnData) and report."""
    import anndata as ad
    import pandas as pd

    info = df.attrs["info"]
    adata = ad.read_h5ad(sample_dir / "cells.h5ad") if h5ad is not None else ad.AnnData(
        obs=pd.DataFrame(index=pd.Index(df.index.astype(str))))
    adata.obsm[key] = df.to_numpy()
    if feature_names:
        adata.uns[f"{key}_features"] = list(df.columns)
    adata.uns[key] = info
    d = info["distributed"]
    typer.echo(f"{what} in {info['seconds']:.1f} s ({d['n_computed']} of {d['n_tiles']} tiles computed, "
               f"{d['n_skipped']} resumed; tiles in {tiles})")
    write_obsm(adata, key, out, h5ad=h5ad)


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")

    @features_app.command("cellprofiler")
    def cellprofiler(
        sample_dir: Path = typer.Argument(..., help="A sample folder written by stmorph (SpatialSample.write)."),
        out: Path = typer.Option(..., "--out", "-o", help="Feature table to write (.parquet or .csv), cells x features."),
        size: int = typer.Option(100, help="Crop side in pixels (the study: 100 small, 300 large)."),
        channels: str = typer.Option(None, help="Comma-separated channels to measure (default: all images)."),
        otsu: str = typer.Option("DAPI", help="Comma-separated channels to add an Otsu-thresholded copy of ('' = none)."),
        modules: str = typer.Option(
            "quality,intensity,radial_distribution,texture,granularity",
            help="Comma-separated modules: quality, intensity, radial_distribution, texture, granularity, sizeshape, "
            "correlation.",
        ),
        masks: str = typer.Option(
            None, "--masks", help="Measure each cell on its own mask: '--masks' alone = the sample's segmentation; "
            "'--masks labels.tif' = a label image on the stains' grid. Default: the whole crop is the object.",
        ),
        mask_ids: str = typer.Option(None, help="obs column with each cell's label in --masks (default: obs "
                                     "'label_id' when present, else 1..n in row order)."),
        crop_um: float = typer.Option(None, "--crop-um", help="Crop side in micrometres (instead of --size pixels)."),
        intensity_scale: str = typer.Option("image", help="Scale channels to [0, 1] by the 'image' maximum or the 'dtype' maximum."),
        select: bool = typer.Option(True, help="pycytominer-style feature selection (variance, NA, correlation 0.9, blocklist)."),
        fill_nan: bool = typer.Option(True, help="Replace NaN left after selection by the feature median (counted in uns)."),
        n_jobs: int = typer.Option(
            1, help="Parallel worker processes (-1 = stmorph's worker setting: the CPUs this process may use)."
        ),
        key: str = typer.Option(None, help="obsm key (default X_cp_<size>)."),
        h5ad: Path = typer.Option(None, help="Also write the cells AnnData with the features in obsm to this .h5ad file."),
        workers: int = typer.Option(
            None, "--workers", help="Run tile by tile on a local dask cluster of this many worker processes (one "
            "thread each; the same table as the serial run). Tiles go to <out>.tiles/; a killed run resumes there.",
        ),
        scheduler: str = typer.Option(
            None, "--scheduler", help="Run tile by tile on the dask scheduler at this address (e.g. tcp://host:8786 of "
            "a SLURM cluster started with dask-jobqueue); workers need the sample on a shared file system.",
        ),
        tile_size: int = _tile_size_option(),
    ) -> None:
        """CellProfiler features (cp-measure) of square crops around every cell."""
        from ..features import cellprofiler_features
        from ..sample import SpatialSample

        k = key or (f"X_cp_{size}" if crop_um is None else f"X_cp_{crop_um:g}um")
        if (workers is not None and workers > 1) or scheduler:
            _cellprofiler_distributed(
                sample_dir, out, k, h5ad, workers, scheduler, size=size, crop_um=crop_um, channels=_split(channels),
                otsu_channels=tuple(_split(otsu) or ()), modules=_split(modules) or (), masks=masks,
                mask_ids=mask_ids, intensity_scale=intensity_scale, select=select,
                fill_nan="median" if fill_nan else None, tile_size=tile_size,
            )
            return
        _check_workers(workers)  # --workers 0 or below is an error here too, as in `features cnn`
        sample = SpatialSample.read(sample_dir)
        cellprofiler_features(
            sample,
            size=size,
            crop_um=crop_um,
            channels=_split(channels),
            otsu_channels=tuple(_split(otsu) or ()),  # ("DAPI",) = skip silently when there is no DAPI
            modules=_split(modules) or (),
            masks=masks,
            mask_ids=mask_ids,
            intensity_scale=intensity_scale,
            select=select,
            fill_nan="median" if fill_nan else None,
            key_added=k,
            n_jobs=n_jobs,
        )
        info = sample.adata.uns[k]
        typer.echo(
            f"measured {info['n_features_measured']} features, kept {info['n_features_kept']} "
            f"in {info['seconds']:.1f} s"
        )
        write_obsm(sample.adata, k, out, h5ad=h5ad)

    @features_app.command("cnn")
    def cnn(
        sample_dir: Path = typer.Argument(..., help="A sample folder written by stmorph (SpatialSample.write)."),
        out: Path = typer.Option(..., "--out", "-o", help="Feature table to write (.parquet or .csv), cells x components."),
        model: str = typer.Option(
            "small_resnet",
            help="'small_resnet' (built in), 'timm:<architecture>' (needs timm) or a TorchScript file path.",
        ),
        weights: Path = typer.Option(None, help="Local state_dict file for --model; never downloaded."),
        size: int = typer.Option(100, help="Crop side in pixels."),
        crop_um: float = typer.Option(None, "--crop-um", help="Crop side in micrometres (instead of --size pixels)."),
        masks: str = typer.Option(
            None, "--masks", help="Zero pixels outside each cell's mask: '--masks' alone = the sample's segmentation; "
            "'--masks labels.tif' = a label image.",
        ),
        channels: str = typer.Option(None, help="Comma-separated channels (default: all images)."),
        n_components: int = typer.Option(500, help="PCA components (MUSE: 500); 0 keeps the raw features."),
        input_size: int = typer.Option(299, help="Side the crops are resized to (299: Inception-v3)."),
        batch_size: int = typer.Option(32, help="Crops per forward pass."),
        device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda'."),
        key: str = typer.Option("X_cnn", help="obsm key."),
        random_state: int = typer.Option(0, "--random-state", help="Random seed (PCA solver, random initialisation)."),
        seed: int = typer.Option(None, "--seed", hidden=True, help="Deprecated alias of --random-state."),
        h5ad: Path = typer.Option(None, help="Also write the cells AnnData with the features in obsm to this .h5ad file."),
        workers: int = typer.Option(
            None, "--workers", help="Run the network tile by tile on a local dask cluster of this many worker processes "
            "(one thread each; the same table as the serial run, PCA once at the end). Tiles go to <out>.tiles/; a "
            "killed run resumes there.",
        ),
        scheduler: str = typer.Option(
            None, "--scheduler", help="Run tile by tile on the dask scheduler at this address (e.g. tcp://host:8786 of "
            "a SLURM cluster started with dask-jobqueue); workers need the sample on a shared file system.",
        ),
        tile_size: int = _tile_size_option(),
    ) -> None:
        """Pretrained-CNN features of every channel's crop, concatenated and PCA-reduced (MUSE)."""
        from ..features import cnn_features
        from ..sample import SpatialSample
        from ._output import random_state_option

        random_state = random_state_option(random_state, seed)
        if weights is None and not model.endswith((".pt", ".pth", ".ts", ".jit")):
            typer.secho("warning: no --weights: the network is randomly initialised", fg=typer.colors.YELLOW, err=True)
        if (workers is not None and workers > 1) or scheduler:
            _cnn_distributed(
                sample_dir, out, key, h5ad, workers, scheduler, model=model, weights=weights, size=size,
                crop_um=crop_um, masks=masks, channels=_split(channels), n_components=n_components or None,
                input_size=input_size, batch_size=batch_size, device=device, random_state=random_state,
                tile_size=tile_size,
            )
            return
        _check_workers(workers)
        sample = SpatialSample.read(sample_dir)
        cnn_features(
            sample,
            model,
            weights,
            size=size,
            crop_um=crop_um,
            masks=masks,
            channels=_split(channels),
            n_components=n_components or None,
            input_size=input_size,
            batch_size=batch_size,
            device=device,
            key_added=key,
            random_state=random_state,
        )
        write_obsm(sample.adata, key, out, h5ad=h5ad)
