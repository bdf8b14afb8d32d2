"""``stmorph.tl.vae``: train a cell-crop VAE preset on a sample and write its latent space to AnnData."""

from __future__ import annotations

import logging
import time
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import StmorphInputError

if TYPE_CHECKING:
    from ..models.vae import CropVAE, VAEConfig
    from ..sample import SpatialSample

__all__ = ["vae", "train_vae"]

log = logging.getLogger("stmorph.tl")


def vae(
    sample: SpatialSample,
    preset: str | VAEConfig = "ls1_cpu",
    *,
    key_added: str | None = None,
    latent: Literal["mean", "sample"] = "mean",
    channels: tuple[str, ...] | list[str] | None = None,
    cells: Any = None,
    device: str = "auto",
    random_state: int = 0,
    checkpoint_dir: str | PathLike | None = None,
    resume: bool = True,
    max_epochs: int | None = None,
    model_dir: str | PathLike | None = None,
    crop_um: float | None = None,
    masks: bool = False,
    n_jobs: int | None = None,
    copy: bool = False,
    return_model: bool = False,
    embed: bool = True,
    **config_overrides: Any,
) -> SpatialSample | CropVAE | tuple[SpatialSample, CropVAE] | None:
    """Train a cell-crop VAE (the study's LS1-LS5) and write one latent vector per cell to ``obsm``.

    Parameters
    ----------
    sample
        The :class:`~stmorph.SpatialSample` (molecules for spot planes, stain images for stain models).
    preset
        ``"vae1"``-``"vae5"`` (the study's Table 1; ``"ls1"``-``"ls5"`` are aliases), ``"ls1_cpu"``-``"ls5_cpu"``
        (64-pixel crops, minutes on a laptop) or a :class:`~stmorph.models.vae.VAEConfig`. The CPU spot presets
        also reconstruct each crop's per-gene transcript totals (``count_weight=1``), without which the spot
        latent misses gene composition; pass ``count_weight=0`` for the study's loss alone.
    key_added
        The ``obsm`` key of the latent (default ``"X_<preset>"``); the parameters go to ``uns[key_added]`` (and,
        as before, to ``uns`` under the name without its ``X_`` prefix: the same dict, deprecated).
    latent
        ``"mean"`` (posterior mean) or ``"sample"`` (one seeded draw per cell, what the study exported).
    channels
        Override the preset's stain channels, e.g. ``("DAPI",)`` for a DAPI-only Xenium sample. By default the
        preset's roles ("DAPI", "membrane") are filled by the sample's own stains (MERSCOPE ``Cellbound1``, Xenium
        ``ATP1A1/CD45/E-Cadherin``, CosMx ``Membrane``; :func:`stmorph.sample.resolve_channels`), with a log line.
    cells
        Cells to train on and embed (default all); others (and cells under ``min_cell_transcripts``) get NaN.
    device
        ``"auto"`` (CUDA with mixed precision when present), ``"cpu"``, ``"cuda"``.
    random_state
        Seed of initialisation, shuffling, rotations, noise and latent draws.
    checkpoint_dir
        Checkpoint every epoch there; a killed run resumes from it (``resume=True``).
    resume
        Continue from ``checkpoint_dir`` when it holds a checkpoint.
    max_epochs
        Total epochs (default the preset's).
    model_dir
        Also save the trained model there (:meth:`CropVAE.save`).
    crop_um
        Crop side in micrometres (through the sample's pixel size) instead of the preset's ``crop_size`` pixels.
        Either way a crop smaller than the median cell diameter is warned about.
    masks
        Zero stain pixels outside each cell's own mask in the sample's segmentation (``mask_stains=True``).
    n_jobs
        Torch threads on CPU (default: one for the small CPU presets, which measured fastest quiet and under load,
        else :meth:`stmorph.settings.workers`; see :func:`stmorph._threads.model_threads`).
    copy
        Return a modified copy of the sample (:meth:`stmorph.SpatialSample.copy`: a new ``adata``, the same
        images and molecules) instead of writing in place.
    return_model
        Also return the trained :class:`~stmorph.models.vae.CropVAE`.
    embed
        Compute the latent space and write it to ``obsm`` (default). ``False`` trains (and saves) the model only,
        e.g. to encode the cells tile by tile on a cluster with :func:`stmorph.distributed.vae_latents`; ``uns``
        is written with ``n_cells_embedded = 0``.
    **config_overrides
        Any other :class:`~stmorph.models.vae.VAEConfig` field (``epochs``, ``crop_size``, ``widths``, ``lr``...).

    Returns
    -------
    SpatialSample, CropVAE, a tuple of both, or None
        ``None`` in place (default); the copied sample when ``copy=True``; with ``return_model`` the model is
        returned too (alone in place, as ``(sample, model)`` with ``copy``).

    Examples
    --------
    >>> import stmorph as st  # doctest: +SKIP
    >>> sample = st.datasets.synthetic_tissue(n_cells=300, random_state=0)  # doctest: +SKIP
    >>> st.tl.vae(sample, "ls2_cpu", epochs=5)  # doctest: +SKIP
    >>> sample.adata.obsm["X_ls2_cpu"].shape  # doctest: +SKIP
    (300, 50)
    """
    from ..models.vae import CropVAE, get_preset
    from ..sample import SpatialSample

    if not isinstance(sample, SpatialSample):
        raise StmorphInputError(f"tl.vae needs a SpatialSample, got {type(sample).__name__}",
                                expected="stmorph.SpatialSample (with molecules and/or stain images)")
    if latent not in ("mean", "sample"):
        raise StmorphInputError(f"latent={latent!r}", expected="'mean' or 'sample'")
    from ..crops import crop_size_px

    if crop_um is not None:
        if config_overrides.get("crop_size") is not None:
            raise StmorphInputError("give crop_size (pixels) or crop_um (micrometres), not both",
                                    expected="one crop size")
        px = crop_size_px(sample, crop_um=crop_um, what="VAE crop")
        from ..models.vae import min_crop_size

        if px < min_crop_size():
            raise StmorphInputError(
                f"crop_um={crop_um:g} is {px} px at {sample.pixel_size:g} um/px, below the VAE's minimum of "
                f"{min_crop_size()} px", column="crop_um",
                expected=f"crop_um >= {min_crop_size() * sample.pixel_size:.1f}",
            )
        config_overrides["crop_size"] = px
    if masks:
        config_overrides["mask_stains"] = True
    if channels is None:  # the preset's roles (DAPI, membrane) filled by the sample's own stain names
        from ..sample import resolve_channels

        roles = get_preset(preset).channels if isinstance(preset, str) else preset.channels
        if roles and not set(roles) <= set(sample.channel_names):
            mapping = resolve_channels(sample.channel_names, list(roles))
            channels = [mapping[r] for r in roles]
            log.warning("stain channels for %s: %s", preset if isinstance(preset, str) else preset.name,
                        ", ".join(f"{r} -> {c}" for r, c in mapping.items()))
    cfg = get_preset(preset, channels=None if channels is None else tuple(channels), seed=int(random_state),
                     **config_overrides)
    if crop_um is None:
        crop_size_px(sample, cfg.crop_size, what="VAE crop")  # warns when the crop is smaller than the cells
    obsm_key = key_added or f"X_{cfg.name}"
    key = obsm_key[2:] if obsm_key.startswith("X_") else obsm_key
    t0 = time.perf_counter()
    from .._threads import model_threads, thread_limits

    model = CropVAE(cfg)
    small = cfg.crop_size <= 64 and max(cfg.widths) <= 128  # the CPU presets
    with thread_limits(model_threads(n_jobs, small=small)):
        model.train(sample, cells=cells, max_epochs=max_epochs, device=device, checkpoint_dir=checkpoint_dir,
                    resume=resume)
        t_train = time.perf_counter() - t0
        if embed:
            ds = model.dataset(sample, cells=cells, train=False)
            z = model.get_latent(ds, latent=latent, device=device, random_state=random_state)
    from ..models.vae._distributed import is_main_process

    if model_dir is not None and is_main_process():  # under torchrun the first process writes
        model.save(model_dir)

    target = sample.copy() if copy else sample
    adata = target.adata
    if embed:
        full = np.full((adata.n_obs, cfg.latent_dim), np.nan, dtype=np.float32)
        full[np.asarray(ds.cell_positions)] = z
        adata.obsm[obsm_key] = full
    info = {
        "method": "cell-crop VAE (Moser, Hamid, Cimini 2025)",
        "preset": cfg.name,
        "latent": latent,
        "random_state": int(random_state),
        "config": {k: ("None" if v is None else v) for k, v in cfg.to_dict().items() if k != "extra"},
        "genes": list(model.registry["genes"]) if model.registry else [],
        "channels": list(cfg.channels),
        "n_cells_embedded": int(len(ds)) if embed else 0,
        "epochs_trained": len(model.history),
        "loss_history": np.array([h["loss"] for h in model.history], dtype=np.float64),
        "device": model.device,
        "train_seconds": float(t_train),
        "model_dir": "" if model_dir is None else str(model_dir),
    }
    adata.uns[obsm_key] = info
    if key != obsm_key:
        adata.uns[key] = info  # the former key without "X_" (deprecated), the same dict
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None


#: The former name of :func:`vae` (before the tools were named by method, as scanpy's ``tl`` functions are).
train_vae = vae
