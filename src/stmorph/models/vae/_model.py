"""The user-facing cell-crop VAE: data registration, training, latent spaces, saving and loading."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..._utils import resolve_device
from ...errors import StmorphInputError
from .._base import BaseModel, check_names
from ._config import VAEConfig, get_preset

if TYPE_CHECKING:
    import torch

    from ...sample import SpatialSample
    from ._module import CropVAEModule

__all__ = ["CropVAE"]

log = logging.getLogger(__name__)

_MODEL_FILE = "model.pt"
#: With ``sparse_first_layer="auto"`` the sparse first convolution is used on CPU from this many gene planes.
SPARSE_MIN_GENES = 100
_META_FILE = "vae.json"




class CropVAE(BaseModel):
    """A convolutional VAE on per-cell crops (spot planes and/or stains), the study's LS1-LS5.

    The first call of :meth:`train` registers the data (gene planes, stain channels, crop parameters); latent
    spaces of other samples (:meth:`get_latent`) are computed with the same registration, and :meth:`save` /
    :meth:`load` keep it with the weights (:class:`~stmorph.models._base.BaseModel`: ``vae.json`` + ``model.pt``).

    Parameters
    ----------
    config
        A preset name (``"vae1"``-``"vae5"``, ``"ls1_cpu"``-``"ls5_cpu"``) or a :class:`VAEConfig`.
    **overrides
        Fields of the configuration to change (``None`` ignored).

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue  # doctest: +SKIP
    >>> sample = synthetic_tissue(n_cells=200, random_state=0)  # doctest: +SKIP
    >>> vae = CropVAE("ls2_cpu", epochs=3).train(sample)  # doctest: +SKIP
    >>> z = vae.get_latent(sample)  # doctest: +SKIP
    >>> vae.save("ls2_model")  # doctest: +SKIP
    """

    _FORMAT = "stmorph.CropVAE"
    _FORMAT_VERSION = 1
    _META_FILE = "vae.json"
    _WEIGHTS_FILE = "model.pt"
    _WHAT = "VAE"

    def __init__(self, config: str | VAEConfig = "ls1_cpu", **overrides: Any):
        self.config = get_preset(config, **overrides)
        self.module: CropVAEModule | None = None
        self.registry: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.device = "cpu"

    # -- data ----------------------------------------------------------------------------------------------
    def dataset(self, sample: SpatialSample, *, cells: Any = None, train: bool = False) -> Any:
        """A :class:`~stmorph.crops.CellCropDataset` for this model (registered genes/channels once trained).

        Parameters
        ----------
        sample
            The sample.
        cells
            Cells to use (ids, mask or positions); default all (less those under ``min_cell_transcripts``).
        train
            Training dataset (rotation augmentation when ``config.rotate``); otherwise no augmentation.

        Returns
        -------
        CellCropDataset
            The dataset.

        Examples
        --------
        >>> ds = CropVAE("ls1_cpu").dataset(sample)  # doctest: +SKIP
        """
        from ...crops import CellCropDataset
        from ...sample import SpatialSample

        if not isinstance(sample, SpatialSample):
            raise StmorphInputError(f"expected a SpatialSample, got {type(sample).__name__}",
                                    expected="stmorph.SpatialSample (crops need images and molecules)")
        c = self.config
        if c.spots and sample.molecules is None:
            raise StmorphInputError(f"the '{c.name}' model needs transcript spot planes but the sample has no "
                                    "molecule table", expected="sample.molecules")
        reg = self.registry
        if reg is not None:
            genes: Any = reg["genes"] if c.spots else None
            min_gene_counts = 0
        else:
            genes = (c.genes if isinstance(c.genes, str) else list(c.genes)) if c.spots else None
            min_gene_counts = c.min_gene_counts
        return CellCropDataset(
            sample, cells=cells, crop_size=c.crop_size, channels=list(c.channels), genes=genes,
            min_gene_counts=min_gene_counts, min_cell_transcripts=c.min_cell_transcripts,
            spot_padding=c.spot_padding, spot_origin=c.spot_origin, stain_edge=c.stain_edge,
            normalize=c.normalize, rotate=bool(train and c.rotate), seed=c.seed, mask_stains=c.mask_stains,
        )

    def _register(self, ds: Any) -> None:
        c = self.config
        genes = list(ds.gene_names) if c.spots else []
        if c.spots and not genes:
            raise StmorphInputError(f"no gene passes min_gene_counts={c.min_gene_counts}",
                                    expected="a lower min_gene_counts")
        self.registry = {
            "genes": genes,
            "channels": list(ds.channel_names),
            "crop_size": c.crop_size,
            "spot_padding": c.spot_padding,
            "spot_origin": c.spot_origin,
            "stain_edge": c.stain_edge,
            "normalize": c.normalize,
            "mask_stains": bool(c.mask_stains),
        }

    def _build(self, device: torch.device) -> None:
        import torch

        from ._module import CropVAEModule

        assert self.registry is not None
        sparse = self.config.sparse_first_layer
        n_genes = len(self.registry["genes"])
        # "auto": the sparse first layer pays off on CPU with many gene planes (benchmarks/results/vae.md);
        # cuDNN's dense convolution is fast enough on GPUs.
        use_sparse = (device.type == "cpu" and n_genes >= SPARSE_MIN_GENES) if sparse == "auto" else bool(sparse)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.module = CropVAEModule(self.config, len(self.registry["genes"]), len(self.registry["channels"]),
                                        sparse=use_sparse)

    def _fingerprint(self) -> str:
        d = self.config.to_dict()
        for k in ("epochs", "select_best", "extra", "sparse_first_layer", "mixed_precision", "sparse_loss"):
            d.pop(k, None)
        if not d.get("count_weight"):
            d.pop("count_weight", None)  # fingerprints of runs from before the field existed stay valid
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()

    # -- training ------------------------------------------------------------------------------------------
    def train(
        self,
        sample: SpatialSample,
        *,
        cells: Any = None,
        max_epochs: int | None = None,
        device: str | Any = "auto",
        checkpoint_dir: str | PathLike | None = None,
        resume: bool = True,
        callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
        show_progress: bool | None = None,
        crops: Any = None,
    ) -> CropVAE:
        """Train on a sample (continuing from ``checkpoint_dir`` when it holds a checkpoint of this run).

        Parameters
        ----------
        sample
            The training sample.
        cells
            Cells to train on (default all).
        max_epochs
            Total epochs (default ``config.epochs``).
        device
            ``"auto"`` (CUDA when present, with mixed precision), ``"cpu"``, ``"cuda"``.
        checkpoint_dir
            Folder for a checkpoint after every epoch (``last.pt``, ``best.pt``); training resumes from it.
        resume
            Resume from ``checkpoint_dir/last.pt`` when present (else start afresh and overwrite it).
        callbacks
            ``cb(epoch, record)`` after each epoch (raising stops training; the checkpoint is already written).

        Launched by ``torchrun --nproc-per-node N`` the N processes train one model data-parallel
        (DistributedDataParallel; gloo on CPU, NCCL on GPUs): each takes its share of every global batch of
        ``config.batch_size`` cells and the result equals one process's training up to float rounding
        (:mod:`stmorph.models.vae._distributed`). Checkpoints are written by the first process.
        show_progress
            Progress bar with the running loss (``None``: unless ``STMORPH_PROGRESS=0``).
        crops
            A crop store (:func:`stmorph.distributed.write_crops`, or its folder) to stream the training crops from
            instead of rendering them every epoch; it must hold the model's channels, genes and cells with the
            same crop parameters (checked).

        Returns
        -------
        CropVAE
            ``self``, trained.

        Examples
        --------
        >>> vae = CropVAE("ls1_cpu").train(sample, max_epochs=2, checkpoint_dir="ckpt")  # doctest: +SKIP
        """
        from ._distributed import init_from_env
        from ._train import fit

        dev = init_from_env(resolve_device(device))  # joins torchrun's process group when launched by it
        train_ds = self.dataset(sample, cells=cells, train=True)
        if len(train_ds) < 2:
            raise StmorphInputError(f"only {len(train_ds)} cell(s) left to train on",
                                    expected="at least 2 cells (check cells= and min_cell_transcripts)")
        if self.registry is None:
            self._register(train_ds)
        if self.module is None:
            self._build(dev)
        eval_ds = self.dataset(sample, cells=cells, train=False) if self.config.val_fraction > 0 else train_ds
        if crops is not None:
            from ...distributed._crops import StoreCropDataset

            store_train = StoreCropDataset(crops, train_ds)
            eval_ds = StoreCropDataset(store_train.store, eval_ds) if eval_ds is not train_ds else store_train
            train_ds = store_train
        assert self.module is not None
        meta = {"config": self.config.to_dict(), "config_fingerprint": self._fingerprint(),
                "registry": self.registry}
        self.history = fit(
            self.module, self.config, train_ds, eval_ds, epochs=int(max_epochs or self.config.epochs), device=dev,
            checkpoint_dir=checkpoint_dir, resume=resume, meta=meta, callbacks=callbacks,
            show_progress=show_progress,
        )
        self.device = str(dev)
        return self

    # -- inference -----------------------------------------------------------------------------------------
    def get_latent(
        self,
        data: SpatialSample | Any,
        *,
        cells: Any = None,
        latent: Literal["mean", "sample"] = "mean",
        batch_size: int | None = None,
        device: str | Any = "auto",
        random_state: int = 0,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Latent representation of every cell of a sample (or dataset), without augmentation.

        Parameters
        ----------
        data
            A :class:`~stmorph.SpatialSample` (crops built with the registered genes and channels) or a dataset
            from :meth:`dataset`.
        cells
            Cells of the sample to embed (default all).
        latent
            ``"mean"``: the posterior mean; ``"sample"``: one draw per cell (what the study exported), seeded.
        batch_size
            Cells per forward pass (default 4 x the training batch size).
        device
            Torch device (``"auto"``).
        random_state
            Seed of the draws for ``latent="sample"``.
        show_progress
            Progress bar.

        Returns
        -------
        numpy.ndarray
            ``(n_cells_of_dataset, latent_dim)`` float32, in the dataset's cell order (``dataset.cell_ids``).

        Examples
        --------
        >>> z = vae.get_latent(sample, latent="sample", random_state=1)  # doctest: +SKIP
        """
        import torch

        from ..._utils import progress
        from ._train import _get_batch, _to_device, _wants_positions

        if self.module is None or self.registry is None:
            raise RuntimeError("the model is not trained yet: call train() or load() first")
        if latent not in ("mean", "sample"):
            raise StmorphInputError(f"latent={latent!r}", expected="'mean' or 'sample'")
        ds = self.dataset(data, cells=cells, train=False) if not hasattr(data, "get_batch") else data
        self._check_dataset(ds)
        dev = resolve_device(device)
        module = self.module.to(dev)
        was = module.training
        module.eval()
        bs = int(batch_size or 4 * self.config.batch_size)
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(random_state))
        out = np.empty((len(ds), self.config.latent_dim), dtype=np.float32)
        starts = range(0, len(ds), bs)
        positions = _wants_positions(module, self.config, loss=False)
        try:
            with torch.no_grad():
                for s in progress(starts, desc=f"latent {self.config.name}", total=len(starts),
                                  disable=None if show_progress is None else not show_progress):
                    idx = np.arange(s, min(s + bs, len(ds)))
                    batch = _to_device(_get_batch(ds, idx, spot_index=positions), dev, positions=positions)
                    mu, logvar = module.encode(batch.get("spots"), batch.get("stains"), batch.get("spot_index"))
                    if latent == "sample":
                        eps = torch.randn(mu.shape, generator=gen, device=dev, dtype=mu.dtype)
                        mu = mu + eps * torch.exp(0.5 * logvar)
                    out[idx] = mu.float().cpu().numpy()
        finally:
            module.train(was)
        return out

    def _check_dataset(self, ds: Any) -> None:
        reg = self.registry
        assert reg is not None
        if self.config.spots:
            check_names(reg["genes"], list(ds.gene_names), reorder=False,
                        what="the dataset's spot planes (genes)")
        if list(ds.channel_names) != reg["channels"]:
            raise StmorphInputError(f"the dataset's stain channels {list(ds.channel_names)} differ from the "
                                    "model's", expected=f"channels {reg['channels']}")
        if int(ds.crop_size) != reg["crop_size"]:
            raise StmorphInputError(f"crop size {ds.crop_size}", expected=f"crop_size={reg['crop_size']}")
        if getattr(ds, "rotate", False):
            log.warning("the dataset rotates crops; latents should be computed without augmentation")

    # -- persistence (BaseModel) ---------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def _extra_meta(self) -> dict[str, Any]:
        return {"history": self.history}

    def _check_savable(self) -> None:
        if self.module is None or self.registry is None:
            raise RuntimeError("nothing to save: the model is not trained yet")

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], **kwargs: Any) -> CropVAE:
        import torch

        obj = cls(VAEConfig.from_dict(meta["config"]))
        obj.registry = meta["registry"]
        obj.history = list(meta.get("history", []))
        obj._build(torch.device("cpu"))
        return obj

    def save(self, path: str | PathLike, *, overwrite: bool = True) -> Path:
        """Write ``vae.json`` (configuration, data registration, history) and ``model.pt`` (weights) to a folder.

        Parameters
        ----------
        path
            Folder (created).
        overwrite
            Replace existing files.

        Returns
        -------
        pathlib.Path
            The folder.

        Examples
        --------
        >>> vae.save("models/ls1")  # doctest: +SKIP
        """
        return super().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | PathLike) -> CropVAE:  # type: ignore[override]
        """Load a model written by :meth:`save` (or the ``best.pt``/``last.pt`` folder of a training run).

        Parameters
        ----------
        path
            The folder.

        Returns
        -------
        CropVAE
            The model, on CPU.

        Examples
        --------
        >>> vae = CropVAE.load("models/ls1")  # doctest: +SKIP
        """
        from ._train import BEST_NAME, CHECKPOINT_NAME, load_checkpoint

        path = Path(path)
        if cls.read_meta(path) is not None:
            return super().load(path)
        for name in (BEST_NAME, CHECKPOINT_NAME):
            if (path / name).exists():
                meta = load_checkpoint(path / name)
                return cls._restore(meta, meta["module"])
        raise StmorphInputError("no saved VAE here", file=path, expected=f"{_META_FILE} + {_MODEL_FILE} or "
                                f"{CHECKPOINT_NAME}")

    def __repr__(self) -> str:
        c = self.config
        state = "untrained" if self.module is None else f"trained {len(self.history)} epochs"
        n_g = len(self.registry["genes"]) if self.registry else "?"
        return (f"CropVAE('{c.name}': spots={c.spots} ({n_g} genes), channels={list(c.channels)}, "
                f"crop {c.crop_size}px, latent {c.latent_dim}, {state})")
