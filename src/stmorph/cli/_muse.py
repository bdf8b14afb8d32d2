"""``stmorph muse``: train MUSE on a multi-modal .h5mu file and write the joint latent and clusters."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("muse")
    def muse_cmd(
        h5mu: Path = typer.Argument(..., help="Input MuData file (.h5mu) with >= 2 modalities over the same cells."),
        out: Path = typer.Option(
            None, "--out", "-o", help="Output .h5mu (default: <input>_muse.h5mu beside the input)."
        ),
        modalities: str | None = typer.Option(
            None, "--modalities", "-m", help="Comma-separated modalities to integrate (default: all, file order)."
        ),
        zero_inflated: str | None = typer.Option(
            None,
            "--zero-inflated",
            help="Comma-separated transcript modalities (non-zero-entry loss, non-negative data); default: the first.",
        ),
        latent_dim: int = typer.Option(100, "--latent-dim", help="Dimension of the joint latent."),
        preset: str = typer.Option("fast", "--preset", help="'fast' (default) or 'reference' (paper's 900 epochs)."),
        epochs: int | None = typer.Option(None, "--epochs", help="Main training epochs (overrides the preset)."),
        warmup_epochs: int | None = typer.Option(None, "--warmup-epochs", help="Autoencoder warm-up epochs."),
        triplet_init_epochs: int | None = typer.Option(
            None, "--triplet-init-epochs", help="Triplet epochs with the initial labels."
        ),
        k: int = typer.Option(30, "--k", help="Neighbours of the PhenoGraph-style clustering."),
        resolution: float = typer.Option(1.0, "--resolution", help="Leiden resolution."),
        label_max_cells: int = typer.Option(
            20_000, "--label-max-cells",
            help="Cluster at most this many cells for the pseudo-labels (the rest take the nearest centroid's label; "
            "0: all cells). The final clusters always use every cell.",
        ),
        label_weighting: str = typer.Option(
            "none", "--label-weighting",
            help="Triplet-loss weight per modality: none (the reference), gate (drop a modality whose initial "
            "pseudo-labels have silhouette <= 0; helps when one modality is mostly dropout) or silhouette.",
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed (weights, batches, PCA, clustering)."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for training (1 is best on busy machines)."),
        key_added: str = typer.Option("X_muse", "--key-added", help="obsm key of the joint latent."),
        cluster_key: str = typer.Option("muse_clusters", "--cluster-key", help="obs key of the clusters."),
        model_out: Path | None = typer.Option(None, "--model-out", help="Also save the trained model (torch file)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    ) -> None:
        """Integrate the modalities of an .h5mu file with MUSE; writes obsm[X_muse], obs[muse_clusters], uns[muse]."""
        import warnings

        import mudata as md

        from ..errors import StmorphInputError
        from ..tl import muse

        if not h5mu.exists():
            raise StmorphInputError("input file not found", file=h5mu, expected="an existing .h5mu file")
        out_path = out if out is not None else h5mu.with_name(h5mu.stem + "_muse.h5mu")
        if out_path.exists() and not overwrite:
            raise StmorphInputError("the output exists; pass --overwrite", file=out_path, expected="a new path")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                mdata = md.read_h5mu(h5mu)
            except Exception as exc:  # noqa: BLE001 - report unreadable input clearly
                raise StmorphInputError(f"cannot read MuData: {exc}", file=h5mu, expected="an .h5mu file") from exc
        mods = None if modalities is None else [m.strip() for m in modalities.split(",") if m.strip()]
        zi = None if zero_inflated is None else [m.strip() for m in zero_inflated.split(",") if m.strip()]
        muse(
            mdata,
            mods,
            latent_dim=latent_dim,
            zero_inflated=zi,
            preset=preset,
            n_epochs=epochs,
            n_epochs_warmup=warmup_epochs,
            n_epochs_triplet_init=triplet_init_epochs,
            k=k,
            resolution=resolution,
            label_max_cells=label_max_cells or None,
            label_weighting=label_weighting,
            random_state=seed,
            device=device,
            n_threads=threads,
            key_added=key_added,
            cluster_key=cluster_key,
            save_model=None if model_out is None else str(model_out),
        )
        from .._utils import atomic_path

        with atomic_path(out_path, suffix=".h5mu") as tmp:
            mdata.write_h5mu(tmp)
        t = mdata.uns["muse"]["timings_s"]
        typer.echo(
            f"MUSE: {mdata.n_obs} cells, {mdata.obs[cluster_key].nunique()} clusters, "
            f"{sum(t.values()):.1f} s -> {out_path}"
        )
