"""``stmorph muse``: train MUSE on a multi-modal .h5mu file (or per-modality tables) and write the joint latent
and clusters."""

from __future__ import annotations

from pathlib import Path

import typer


def mudata_from_tables(paths: dict[str, str], *, id_column: str | None = None, min_overlap: float = 0.5):
    """One MuData from per-modality feature/counts files, on the cells all of them share.

    Parameters
    ----------
    paths
        ``{modality: path}``; each path as :func:`stmorph.eval.read_feature_table` reads it (CSV/TSV, parquet,
        ``.h5ad``/``.loom``, ``file.h5ad:KEY``).
    id_column
        Cell-id column of the tables (default: detected).
    min_overlap
        Refuse a modality with fewer than this fraction of its cell ids shared by all (a wrong id column).

    Returns
    -------
    MuData with one AnnData (float32) per modality, cells in the first modality's order.
    """
    import anndata as ad
    import mudata as md
    import numpy as np
    import pandas as pd

    from ..errors import StmorphInputError
    from ..eval import read_feature_table
    from ..eval._evaluate import _shared_ids

    if len(paths) < 2:
        raise StmorphInputError(f"{len(paths)} modality given", expected="--modality NAME=PATH at least twice")
    tables = {name: read_feature_table(p, id_column=id_column) for name, p in paths.items()}
    shared, _ = _shared_ids({k: v.index for k, v in tables.items()}, min_overlap)
    md.set_options(pull_on_update=False)
    seen = pd.Series([str(c) for df in tables.values() for c in df.columns]).value_counts()
    mods = {}
    for name, df in tables.items():
        sub = df.loc[shared]
        # feature names shared by two modalities (e.g. 0, 1, ... of unnamed columns) get the modality as prefix,
        # so MuData's global var names stay unique
        var = [f"{name}:{c}" if seen[str(c)] > 1 else str(c) for c in sub.columns]
        mods[name] = ad.AnnData(sub.to_numpy(np.float32), obs=pd.DataFrame(index=shared), var=pd.DataFrame(index=var))
    return md.MuData(mods)


def register(app: typer.Typer) -> None:
    @app.command("muse")
    def muse_cmd(
        h5mu: Path | None = typer.Argument(
            None, help="Input MuData file (.h5mu) with >= 2 modalities over the same cells (or use --modality)."
        ),
        modality: list[str] = typer.Option(
            [], "--modality", help="Instead of an .h5mu: one modality as NAME=PATH, cells x features (counts or "
            "features): CSV/TSV or parquet with cell ids, .h5ad/.loom (file.h5ad:KEY for an obsm key, :X for X); "
            "repeatable, >= 2. The cells shared by all are used. Needs --out."
        ),
        id_column: str | None = typer.Option(None, "--id-column", help="Cell-id column of --modality tables "
                                             "(default: cell_id, cell, barcode, index, id, ... or the first column)."),
        out: Path = typer.Option(
            None, "--out", "-o", help="Output .h5mu (default: <input>_muse.h5mu beside the input .h5mu)."
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
        resolution: float = typer.Option(1.0, "--resolution", help="Leiden resolution of the final clusters."),
        label_resolution: float | None = typer.Option(
            None, "--label-resolution",
            help="Leiden resolution of the pseudo-labels (default: the preset's, 1.0).",
        ),
        label_max_cells: int = typer.Option(
            20_000, "--label-max-cells",
            help="Cluster at most this many cells for the pseudo-labels (the rest take the nearest centroid's label; "
            "0: all cells). The final clusters always use every cell.",
        ),
        label_weighting: str = typer.Option(
            "gate", "--label-weighting",
            help="Pseudo-labels per modality: gate (default: a modality whose initial pseudo-labels have "
            "silhouette <= 0 trains on the labels of all modalities clustered together; a no-op otherwise), "
            "none (the reference) or silhouette.",
        ),
        label_agreement: bool = typer.Option(
            True, "--label-agreement/--no-label-agreement",
            help="Triplet positives need the same pseudo-label in at least two modalities (default; keeps apart "
            "cell types that one modality merges); --no-label-agreement: MUSE's own positives.",
        ),
        random_state: int = typer.Option(
            0, "--random-state", help="Random seed (weights, batches, PCA, clustering)."
        ),
        seed: int | None = typer.Option(None, "--seed", hidden=True, help="Deprecated alias of --random-state."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
        threads: int | None = typer.Option(
            None, "--threads", "--n-jobs",
            help="CPU threads for training (n_jobs; default: stmorph's setting; 1 is best on busy machines).",
        ),
        key_added: str = typer.Option("X_muse", "--key-added", help="obsm key of the joint latent."),
        cluster_key: str = typer.Option("muse_clusters", "--cluster-key", help="obs key of the clusters."),
        model_out: Path | None = typer.Option(
            None, "--model-out", help="Also save the trained model to this folder (weights, configuration and the "
            "modalities' feature names)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    ) -> None:
        """Integrate modalities with MUSE (an .h5mu file, or counts/feature tables given with --modality); writes
        obsm[X_muse], obs[muse_clusters], uns[X_muse]."""
        import warnings

        import mudata as md

        from ..errors import StmorphInputError
        from ..tl import muse
        from ._output import random_state_option

        random_state = random_state_option(random_state, seed)
        if (h5mu is None) == (not modality):
            raise StmorphInputError("give either an .h5mu file or --modality NAME=PATH (at least twice), not both",
                                    expected="stmorph muse data.h5mu, or stmorph muse --modality rna=counts.csv "
                                             "--modality morph=features.parquet -o out.h5mu")
        if h5mu is not None and not h5mu.exists():
            raise StmorphInputError("input file not found", file=h5mu, expected="an existing .h5mu file")
        if h5mu is None and out is None:
            raise StmorphInputError("--modality needs --out", expected="--out joint.h5mu")
        out_path = out if out is not None else h5mu.with_name(h5mu.stem + "_muse.h5mu")
        if out_path.exists() and not overwrite:
            raise StmorphInputError("the output exists; pass --overwrite", file=out_path, expected="a new path")
        if h5mu is None:
            from ._evaluate import _parse_named

            mdata = mudata_from_tables(_parse_named(modality, "--modality"), id_column=id_column)
        else:
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
            label_resolution=label_resolution,
            label_max_cells=label_max_cells or None,
            label_weighting=label_weighting,
            label_agreement=label_agreement,
            random_state=random_state,
            device=device,
            n_jobs=threads,
            key_added=key_added,
            cluster_key=cluster_key,
            save_model=None if model_out is None else str(model_out),
        )
        from .._utils import atomic_path

        with atomic_path(out_path, suffix=".h5mu") as tmp:
            mdata.write_h5mu(tmp)
        t = mdata.uns[key_added]["timings_s"]
        typer.echo(
            f"MUSE: {mdata.n_obs} cells, {mdata.obs[cluster_key].nunique()} clusters, "
            f"{sum(t.values()):.1f} s -> {out_path}"
        )
