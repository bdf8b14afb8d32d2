"""``stmorph vae``: train a cell-crop VAE preset (LS1-LS5) on a sample and write its latent space."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("vae")
    def vae_cmd(
        sample_path: Path = typer.Argument(..., help="Sample folder (stmorph, or any format stmorph.io.read detects)."),
        out: Path = typer.Option(
            ..., "--out", "-o",
            help="Where to write: a table (.csv/.tsv/.parquet: cell_id, then one column per latent dimension), a .h5ad "
            "file (cells with the latent in obsm) or a sample folder (anything else).",
        ),
        preset: str = typer.Option(
            "ls1_cpu", "--preset", "-p",
            help="vae1..vae5 (the study's Table 1; ls1..ls5 are aliases) or ls1_cpu..ls5_cpu (small, CPU).",
        ),
        channels: str | None = typer.Option(
            None, "--channels", help="Comma-separated stain channels overriding the preset's, e.g. 'DAPI'."
        ),
        epochs: int | None = typer.Option(None, "--epochs", help="Total training epochs (default: the preset's)."),
        crop_size: int | None = typer.Option(None, "--crop-size", help="Crop side in pixels (>= 63)."),
        crop_um: float | None = typer.Option(
            None, "--crop-um", help="Crop side in micrometres (through the sample's pixel size); exclusive with "
            "--crop-size. A crop smaller than the median cell diameter is warned about."
        ),
        masks: str | None = typer.Option(
            None, "--masks", help="'--masks' alone: zero stain pixels outside each cell's own mask in the sample's "
            "segmentation."
        ),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Cells per batch (default: the preset's)."),
        latent: str = typer.Option(
            "mean", "--latent", help="'mean' (posterior mean) or 'sample' (one draw per cell, as the study)."
        ),
        key_added: str | None = typer.Option(None, "--key-added", help="obsm key of the latent (default: X_<preset>)."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
        random_state: int = typer.Option(
            0, "--random-state", help="Random seed (weights, shuffling, rotations, noise)."
        ),
        seed: int | None = typer.Option(None, "--seed", hidden=True, help="Deprecated alias of --random-state."),
        checkpoint_dir: Path | None = typer.Option(
            None, "--checkpoint-dir", help="Checkpoint every epoch here; a killed run resumes from it."
        ),
        no_resume: bool = typer.Option(False, "--no-resume", help="Start afresh even if a checkpoint exists."),
        model_dir: Path | None = typer.Option(None, "--model-dir", help="Also save the trained model here."),
        pixel_size: float | None = typer.Option(None, "--pixel-size", help="Micrometres per pixel for the reader."),
        origin: tuple[float, float] | None = typer.Option(
            None, "--origin", help="x y micrometres of pixel (0, 0), for the reader (Xenium crops)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        workers: int | None = typer.Option(
            None, "--workers", help="Encode the cells tile by tile on a local dask cluster of this many worker "
            "processes after training (training itself runs here). Tiles go to <out>.tiles/.",
        ),
        scheduler: str | None = typer.Option(
            None, "--scheduler", help="Encode on the dask scheduler at this address (e.g. tcp://host:8786 of a SLURM "
            "cluster started with dask-jobqueue); workers need the sample on a shared file system.",
        ),
    ) -> None:
        """Train a VAE on per-cell crops (spot planes and/or stains) and write one latent vector per cell.

        Data-parallel training on several processes: ``torchrun --nproc-per-node N -m stmorph vae ...``
        (gloo on CPU, NCCL with one GPU per process); the first process writes the outputs.
        """
        import time

        from .. import io as sio
        from ..errors import StmorphInputError
        from ..models.vae import get_preset
        from ..tl import vae as tl_vae
        from ._output import random_state_option

        random_state = random_state_option(random_state, seed)
        if out.exists() and not overwrite:
            raise StmorphInputError("the output exists; pass --overwrite", file=out, expected="a new path")
        kwargs = {k: v for k, v in (("pixel_size", pixel_size), ("origin", origin)) if v is not None}
        sample = sio.read(sample_path, **kwargs)
        ch = None if channels is None else tuple(c.strip() for c in channels.split(",") if c.strip())
        if masks not in (None, "sample"):
            raise StmorphInputError(
                f"--masks {masks}: VAE crops are masked with the sample's own segmentation", column="--masks",
                expected="'--masks' without a value (read the sample with its segmentation)",
            )
        if workers is not None and workers < 1:
            raise StmorphInputError(f"--workers {workers}", expected="a positive number of worker processes")
        distributed = (workers is not None and workers > 1) or bool(scheduler)
        from ..models.vae._distributed import is_main_process

        t0 = time.perf_counter()
        model = tl_vae(
            sample, preset, key_added=key_added, latent=latent, channels=ch, device=device, random_state=random_state,
            checkpoint_dir=checkpoint_dir, resume=not no_resume, max_epochs=epochs, model_dir=model_dir,
            crop_size=crop_size, batch_size=batch_size, crop_um=crop_um, masks=masks is not None,
            embed=not distributed and is_main_process(), return_model=distributed,
        )
        if not is_main_process():  # under torchrun: the first process writes the outputs
            return
        obsm_key = key_added or f"X_{get_preset(preset).name}"
        if distributed:
            import numpy as np

            from ..distributed import vae_latents

            z = vae_latents(sample, model, out_dir=out.with_name(out.name + ".tiles"), latent=latent,  # type: ignore[arg-type]
                            device=device, random_state=random_state, n_workers=workers, scheduler=scheduler,
                            overwrite=True)
            sample.adata.obsm[obsm_key] = z
            info = sample.adata.uns[obsm_key]  # the same dict as the deprecated uns key without "X_"
            info["n_cells_embedded"] = int(np.isfinite(z).all(axis=1).sum())
            info["distributed"] = True
        from ._output import is_table, write_obsm

        if is_table(out):
            write_obsm(sample.adata, obsm_key, out)
        elif out.suffix == ".h5ad":
            from .._utils import atomic_path

            with atomic_path(out, suffix=".h5ad") as tmp:
                sample.adata.write_h5ad(tmp)
        else:
            sample.write(out, overwrite=overwrite)
        info = sample.adata.uns[obsm_key]
        typer.echo(
            f"{info['preset']}: {info['n_cells_embedded']} cells embedded in obsm['{obsm_key}'] "
            f"({info['epochs_trained']} epochs, final loss {info['loss_history'][-1]:.4f}, "
            f"{time.perf_counter() - t0:.1f} s on {info['device']}) -> {out}"
        )
