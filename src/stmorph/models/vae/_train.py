"""Training loop of the cell-crop VAEs: seeded, resumable (checkpoint every epoch), NaN-guarded, AMP on CUDA.

Every random choice of epoch ``e`` (the shuffling, the dataset's rotations and the reparameterisation noise) is
a pure function of ``(seed, e)``, so a run resumed from the checkpoint of epoch ``e`` continues exactly as the
uninterrupted run would (bit-identical on CPU); the checkpoint stores weights, optimiser, gradient scaler,
history and the best epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._utils import atomic_path, progress
from ...errors import StmorphInputError
from ._config import VAEConfig
from ._losses import count_loss, kl_divergence, spot_loss, spot_positions, stain_loss

if TYPE_CHECKING:
    from ._module import CropVAEModule

__all__ = ["VAETrainingError", "compute_loss", "fit", "evaluate_loss", "load_checkpoint", "split_indices",
           "CHECKPOINT_NAME", "BEST_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
_CKPT_FORMAT = "stmorph.CropVAE.checkpoint"


class VAETrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the model holds the last good weights."""


def compute_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], config: VAEConfig, *,
                 reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Total loss and its terms for one batch (float32 whatever the autocast precision).

    Parameters
    ----------
    out
        Output of :class:`CropVAEModule` (``mu``, ``logvar``, ``spot_logits`` and/or ``stain_logits``).
    batch
        The batch on the model's device (``spots``, ``stains``, ``counts``).
    config
        Loss weights.
    reduce
        Differentiable sum over processes (data-parallel training, :func:`._distributed.all_sum`): every term is
        then the loss of the global batch. ``None``: this batch alone.

    Returns
    -------
    dict
        ``{"loss", "spots", "dice", "focal", "stains", "kl"}`` (terms of absent modalities omitted).

    Examples
    --------
    >>> from stmorph.models.vae import CropVAEModule, VAEConfig
    >>> cfg = VAEConfig(crop_size=64, widths=(4, 4, 4, 4, 4), latent_dim=3)
    >>> m = CropVAEModule(cfg, n_genes=2, n_channels=0)
    >>> b = {"spots": torch.zeros(2, 2, 64, 64), "counts": torch.ones(2, 2)}
    >>> sorted(compute_loss(m(b["spots"], None), b, cfg))
    ['dice', 'focal', 'kl', 'loss', 'spots']
    """
    c = config
    terms: dict[str, torch.Tensor] = {}
    total = out["mu"].new_zeros((), dtype=torch.float32)
    if "spot_logits" in out:
        s = spot_loss(out["spot_logits"], batch["spots"], batch.get("counts"), dice_weight=c.dice_weight,
                      focal_weight=c.focal_weight, gamma=c.focal_gamma, alpha=c.focal_alpha,
                      gene_weighting=c.gene_weighting, sparse=c.sparse_loss, pos=batch.get("spot_pos"),
                      reduce=reduce)
        terms.update(s)
        total = total + c.spot_weight * s["spots"]
    if "count_pred" in out:
        terms["counts"] = count_loss(out["count_pred"], batch["counts"], reduce)
        total = total + c.count_weight * terms["counts"]
    if "stain_logits" in out:
        terms["stains"] = stain_loss(out["stain_logits"], batch["stains"], reduce)
        total = total + c.stain_weight * terms["stains"]
    terms["kl"] = kl_divergence(out["mu"].float(), out["logvar"].float(), reduce)
    if c.beta:
        total = total + c.beta * terms["kl"]
    terms["loss"] = total
    return terms


def _get_batch(ds: Any, idx: np.ndarray, *, spot_index: bool = False) -> dict[str, Any]:
    """``ds.get_batch(idx)`` into the dataset's reused buffer when it has one (each batch is consumed at once),
    asking for its list of non-zero spot pixels when it can give one and ``spot_index`` is wanted."""
    import inspect

    params = inspect.signature(ds.get_batch).parameters
    kw = {k: True for k, want in (("reuse_buffer", True), ("spot_index", spot_index)) if want and k in params}
    return ds.get_batch(idx, **kw)


def _wants_positions(module: Any, config: VAEConfig, *, loss: bool = True) -> bool:
    """Whether the non-zero spot pixels serve anything: the sparse first layer, or (``loss``) the sparse loss."""
    return bool(getattr(module, "n_genes", 0)) and (bool(module.sparse) or (loss and config.sparse_loss))


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, *, positions: bool = False) -> dict[str, torch.Tensor]:
    """The batch on ``device``; with ``positions``, also ``spot_index`` / ``spot_pos`` (the non-zero and the
    > 0.5 spot pixels: the dataset's list when it gave one, else one ``nonzero`` pass, shared by the sparse first
    layer and the sparse loss)."""
    nb = device.type == "cuda"
    out = {k: v.to(device, non_blocking=nb) for k, v in batch.items()}
    spots = out.get("spots")
    if positions and spots is not None:
        if "spot_index" in out:  # the dataset's renderer listed its non-zeros
            nz = out["spot_index"]
            out["spot_pos"] = nz[spots.reshape(-1)[nz] > 0.5]
        else:
            out["spot_index"], out["spot_pos"] = spot_positions(spots)
    return out


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0])


def _batches(idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    out = [idx[k : k + batch_size] for k in range(0, idx.size, batch_size)]
    if len(out) > 1 and out[-1].size == 1:  # BatchNorm cannot train on a batch of one cell
        out = out[:-1]
    return out


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into training and validation indices (validation empty for fraction 0).

    Parameters
    ----------
    n
        Number of cells.
    val_fraction
        Fraction held out.
    seed
        Seed of the split.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted training and validation indices.

    Examples
    --------
    >>> tr, va = split_indices(10, 0.2, 0)
    >>> len(tr), len(va)
    (8, 2)
    """
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and (n_val < 2 or n - n_val < 2):
        raise StmorphInputError(f"val_fraction={val_fraction} leaves too few cells of {n}",
                                expected="at least 2 training and 2 validation cells")
    perm = np.random.default_rng([int(seed), 7919]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _checkpoint(module: CropVAEModule, opt: torch.optim.Optimizer, scaler: Any, epoch: int, history: list,
                best: dict | None, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": _CKPT_FORMAT,
        "epoch": epoch,
        "module": copy.deepcopy(module.state_dict()),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "scaler": None if scaler is None else scaler.state_dict(),
        "history": list(history),
        "best": best,
        # shuffling, rotations and noise of epoch e are seeded from (seed, e): no generator state to restore
        "rng": {"scheme": "SeedSequence([seed, epoch, stream])", "next_epoch": epoch},
        **meta,
    }


def _save(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`fit`.

    Parameters
    ----------
    path
        ``last.pt`` or ``best.pt`` of a checkpoint folder.

    Returns
    -------
    dict
        ``epoch``, ``module`` (state dict), ``optimizer``, ``history``, ``best``, ``config``, ``registry``...

    Examples
    --------
    >>> load_checkpoint("ckpt/last.pt")["epoch"]  # doctest: +SKIP
    3
    """
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise StmorphInputError(f"cannot read the checkpoint ({type(exc).__name__}: {exc})", file=path,
                                expected="a checkpoint written by stmorph") from exc
    if not isinstance(ck, dict) or ck.get("format") != _CKPT_FORMAT:
        raise StmorphInputError("not a stmorph VAE checkpoint", file=path, expected=_CKPT_FORMAT)
    return ck


def fit(
    module: CropVAEModule,
    config: VAEConfig,
    train_ds: Any,
    eval_ds: Any,
    *,
    epochs: int,
    device: torch.device,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    meta: dict[str, Any] | None = None,
    callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
    show_progress: bool | None = None,
) -> list[dict[str, float]]:
    """Train ``module`` in place for ``epochs`` epochs (counting epochs already in a resumed checkpoint).

    Parameters
    ----------
    module
        The VAE (moved to ``device`` here).
    config
        Loss, optimiser, seed and best-epoch options.
    train_ds
        Dataset with ``get_batch(idx, reuse_buffer=...)`` and ``set_epoch(e)`` (rotations on when configured).
    eval_ds
        The same cells without augmentation (validation loss).
    epochs
        Total number of epochs.
    device
        Torch device; mixed precision on CUDA when ``config.mixed_precision`` is ``"auto"`` or True.
    checkpoint_dir
        Folder for ``last.pt`` (every epoch) and ``best.pt``; ``None``: no checkpoints.
    resume
        Continue from ``checkpoint_dir/last.pt`` when it exists.
    meta
        Extra entries stored in every checkpoint (configuration, data registration); on resume ``meta["config"]``
        and ``meta["registry"]`` must match the checkpoint's.
    callbacks
        Called as ``cb(epoch, record)`` after each epoch's checkpoint is written.
    show_progress
        Progress bar (``None``: unless ``STMORPH_PROGRESS=0``).

    Returns
    -------
    list of dict
        Per-epoch records: ``epoch``, ``loss`` and its terms, ``val_loss`` (when held out), ``seconds``.

    Examples
    --------
    >>> history = fit(module, cfg, ds, ds_eval, epochs=2, device=torch.device("cpu"))  # doctest: +SKIP
    """
    # Measured here (ls1_cpu step, 16 cells x 60 genes x 64 px, 1 thread): 1.79 s -> 1.32 s with denormals flushed;
    # sigmoid/focal terms of near-empty spot planes produce many denormals early in training.
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _fit(module, config, train_ds, eval_ds, epochs=epochs, device=device, checkpoint_dir=checkpoint_dir,
                    resume=resume, meta=meta, callbacks=callbacks, show_progress=show_progress)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _fit(
    module: CropVAEModule,
    config: VAEConfig,
    train_ds: Any,
    eval_ds: Any,
    *,
    epochs: int,
    device: torch.device,
    checkpoint_dir: str | Path | None,
    resume: bool,
    meta: dict[str, Any] | None,
    callbacks: Sequence[Callable[[int, dict[str, float]], None]],
    show_progress: bool | None,
) -> list[dict[str, float]]:
    from ._distributed import all_sum, convert_batchnorm, shard, world

    c = config
    meta = dict(meta or {})
    module.to(device)
    rank, n_proc = world()
    net: torch.nn.Module = module
    reduce = None
    if n_proc > 1:  # data parallel: global-batch BatchNorm and losses, DDP's gradient averaging
        from torch.nn.parallel import DistributedDataParallel

        convert_batchnorm(module)
        net = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        reduce = all_sum
    amp = device.type == "cuda" and c.mixed_precision in ("auto", True)
    positions = _wants_positions(module, c)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    opt = torch.optim.Adam(module.parameters(), lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay)
    train_idx, val_idx = split_indices(len(train_ds), c.val_fraction, c.seed)
    if train_idx.size < 2:
        raise StmorphInputError(f"only {train_idx.size} cell(s) to train on", expected="at least 2 cells")

    history: list[dict[str, float]] = []
    best: dict[str, Any] | None = None
    start = 0
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        last = ckdir / CHECKPOINT_NAME
        if n_proc > 1:
            torch.distributed.barrier()  # every process sees the same checkpoint (or none)
        if resume and last.exists():
            ck = load_checkpoint(last)
            for key in ("registry", "config_fingerprint"):
                if key in meta and ck.get(key) != meta[key]:
                    raise StmorphInputError(
                        f"the checkpoint was trained with a different {key.replace('_', ' ')}; use another "
                        "checkpoint_dir or resume=False", file=last, expected=f"the same {key} as this run")
            module.load_state_dict(ck["module"])
            opt.load_state_dict(ck["optimizer"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            history = list(ck["history"])
            best = ck.get("best")
            start = int(ck["epoch"])
            log.info("resuming from %s after epoch %d", last, start)
    good_state = copy.deepcopy(module.state_dict())

    quiet = None if show_progress is None else not show_progress
    bar = progress(range(start, epochs), desc=f"train {c.name}", total=max(0, epochs - start),
                   disable=True if rank else quiet)  # one bar, the first process's, under torchrun
    for epoch in bar:
        t0 = time.perf_counter()
        module.train()
        if getattr(train_ds, "rotate", False):
            train_ds.set_epoch(epoch)
        order = np.random.default_rng(_epoch_seed(c.seed, epoch, 0)).permutation(train_idx)
        gen = torch.Generator(device=device)
        gen.manual_seed(_epoch_seed(c.seed, epoch, 1))
        sums: dict[str, float] = {}
        n_seen = 0
        for bi, idx in enumerate(_batches(order, c.batch_size)):
            local = idx
            noise = None
            if n_proc > 1:
                if idx.size < n_proc:  # (the same on every process) a batch too small to share
                    continue
                # the global batch's noise on every process; each keeps its rows (same draws as one process)
                noise = torch.randn((idx.size, c.latent_dim), generator=gen, device=device)
                local = shard(idx, rank, n_proc)
                rows = shard(np.arange(idx.size), rank, n_proc)
                noise = noise[rows[0] : rows[-1] + 1]
            batch = _to_device(_get_batch(train_ds, local, spot_index=positions), device, positions=positions)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                out = net(batch.get("spots"), batch.get("stains"), sample=True, generator=gen,
                          spot_index=batch.get("spot_index"), noise=noise)
            terms = compute_loss(out, batch, c, reduce=reduce)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                module.load_state_dict(good_state)
                where = f"{ckdir / CHECKPOINT_NAME}" if ckdir is not None and epoch > 0 else "(no checkpoint)"
                raise VAETrainingError(
                    f"non-finite training loss ({float(loss.detach())}) at epoch {epoch + 1}, batch {bi + 1}; training "
                    f"stopped and the model holds the weights after epoch {epoch} {where}. Lower lr "
                    f"(now {c.lr}) or check the input crops for NaN/inf."
                )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            nb = idx.size
            n_seen += nb
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * nb
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{sums['loss'] / n_seen:.4f}", refresh=False)
        if not all(math.isfinite(float(p.detach().float().abs().sum())) for p in module.parameters()):
            module.load_state_dict(good_state)
            raise VAETrainingError(f"non-finite weights after epoch {epoch + 1}; the model holds the last good "
                                   f"weights (epoch {epoch}). Lower lr (now {c.lr}).")
        record = {"epoch": epoch + 1, **{k: v / max(n_seen, 1) for k, v in sums.items()}}
        if val_idx.size:
            record["val_loss"] = evaluate_loss(module, c, eval_ds, val_idx, device, amp)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        score = record.get("val_loss", record["loss"])
        good_state = copy.deepcopy(module.state_dict())
        if c.select_best and (best is None or score < best["score"]):
            best = {"epoch": epoch + 1, "score": score, "state": copy.deepcopy(good_state)}
            if ckdir is not None and rank == 0:
                _save({"format": _CKPT_FORMAT, "epoch": epoch + 1, "module": best["state"], **meta},
                      ckdir / BEST_NAME)
        if ckdir is not None and rank == 0:  # checkpoints from the first process only
            _save(_checkpoint(module, opt, scaler, epoch + 1, history, best, meta), ckdir / CHECKPOINT_NAME)
        if n_proc > 1:
            torch.distributed.barrier()
        for cb in callbacks:
            cb(epoch + 1, record)
    if c.select_best and best is not None:
        module.load_state_dict(best["state"])
        log.info("restored the best epoch %d (loss %.5f)", best["epoch"], best["score"])
    return history


@torch.no_grad()
def evaluate_loss(module: CropVAEModule, config: VAEConfig, ds: Any, idx: np.ndarray, device: torch.device,
                  amp: bool = False) -> float:
    """Mean loss of cells ``idx`` with the posterior mean (no noise, no augmentation, BatchNorm in eval mode).

    Parameters
    ----------
    module, config
        The model and its configuration.
    ds
        Dataset without augmentation.
    idx
        Dataset indices.
    device
        Torch device.
    amp
        Autocast to float16 (CUDA).

    Returns
    -------
    float
        The mean total loss.

    Examples
    --------
    >>> evaluate_loss(module, cfg, ds, np.arange(len(ds)), torch.device("cpu"))  # doctest: +SKIP
    """
    was = module.training
    module.eval()
    tot, n = 0.0, 0
    positions = _wants_positions(module, config)
    for chunk in [idx[k : k + config.batch_size] for k in range(0, idx.size, config.batch_size)]:
        batch = _to_device(_get_batch(ds, chunk, spot_index=positions), device, positions=positions)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            out = module(batch.get("spots"), batch.get("stains"), sample=False, spot_index=batch.get("spot_index"))
        tot += float(compute_loss(out, batch, config)["loss"]) * chunk.size
        n += chunk.size
    module.train(was)
    return tot / max(n, 1)
