"""Configuration of the cell-crop VAEs (LS1-LS5) and the preset registry (the study's Table 1 plus CPU sizes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import StmorphInputError

__all__ = ["VAEConfig", "PRESETS", "get_preset", "min_crop_size", "encoder_sizes"]

#: Number of stride-2 convolution blocks of the encoder (fixed by the study's architecture).
N_BLOCKS = 5


def encoder_sizes(size: int, n_blocks: int = N_BLOCKS) -> list[int]:
    """Spatial sizes through ``n_blocks`` convolutions (kernel 3, stride 2, no padding), input first.

    Parameters
    ----------
    size
        Input crop size in pixels.
    n_blocks
        Number of convolutions.

    Returns
    -------
    list of int
        ``[size, s1, ..., s_n]`` with ``s_{k+1} = (s_k - 3) // 2 + 1``.

    Examples
    --------
    >>> encoder_sizes(100)
    [100, 49, 24, 11, 5, 2]
    """
    out = [int(size)]
    for _ in range(n_blocks):
        out.append((out[-1] - 3) // 2 + 1)
    return out


def min_crop_size(n_blocks: int = N_BLOCKS) -> int:
    """Smallest crop that survives ``n_blocks`` valid stride-2 kernel-3 convolutions (63 for 5 blocks).

    Parameters
    ----------
    n_blocks
        Number of convolutions.

    Returns
    -------
    int
        The minimum input size (``2 ** (n + 1) - 1``).

    Examples
    --------
    >>> min_crop_size()
    63
    """
    return 2 ** (n_blocks + 1) - 1


@dataclass
class VAEConfig:
    """Every knob of a cell-crop VAE: inputs, crops, architecture, loss and optimisation.

    Parameters
    ----------
    name
        Name of the configuration (the default ``key_added`` is ``X_<name>``).
    spots
        Use transcript-spot planes (one binary plane per gene) as input and reconstruct them.
    channels
        Stain channels used as input and reconstructed (e.g. ``("DAPI", "membrane")``); empty for spots only.
    crop_size
        Crop side length in pixels (at least 63 for the five stride-2 blocks).
    genes
        ``"all"`` or an explicit gene list for the spot planes.
    min_gene_counts
        Keep only genes with at least this many transcripts in the sample (the study: 100 for LS3-LS5).
    min_cell_transcripts
        Skip cells with fewer transcripts (they get NaN latents).
    spot_padding
        Half-width of the square drawn around each transcript in its gene plane.
    spot_origin, stain_edge, normalize
        Passed to :class:`stmorph.crops.CellCropDataset`.
    mask_stains
        Zero every stain pixel outside the cell's own segmentation mask (needs a sample with a segmentation and
        ``obs["label_id"]``); off by default, as in the study.
    rotate
        Random 90-degree rotation augmentation during training (never at inference).
    widths
        Channel widths of the five encoder blocks (the decoder mirrors them).
    latent_dim
        Latent size (50 in the study).
    negative_slope
        LeakyReLU slope.
    logvar_init
        Initial bias of the log-variance head (``None``: PyTorch's default). With ``beta = 0`` nothing pulls the
        variance towards 1, and starting at ``exp(-6 / 2) = 0.05`` keeps the sampled noise from drowning the
        latent early on: on the synthetic tissue this raised LS1's expression-pair accuracy from 0.59 to 0.71
        after 6 epochs (``benchmarks/results/vae.md``).
    spot_prior
        Initial spot probability of the spot decoder (its last bias is set to ``logit(spot_prior)``, the focal
        loss "prior" initialisation; ``None``: PyTorch's default, i.e. 0.5 everywhere at the start).
    dice_weight, focal_weight
        Weights of the Dice and Focal terms of the spot loss (0.8 : 0.4 in the study).
    focal_gamma
        Focal exponent.
    focal_alpha
        Optional class balance of the focal term (``None``: unweighted, as the study).
    gene_weighting
        Dynamic per-gene weights of the Dice term (inverse expression, see :func:`gene_weights`).
    spot_weight, stain_weight
        Weights of the spot and stain reconstruction terms in the total loss.
    count_weight
        Weight of an auxiliary reconstruction of the cell's per-gene transcript counts (``log1p``, mean squared
        error) by a linear head on the latent. These are the transcripts drawn into the cell's spot planes (less
        any a crop smaller than the cell cuts off), i.e. the planes' coarsest scale; no labels are used.
        0 (the study's loss): off; the CPU spot presets use 1. See ``benchmarks/results/vae.md`` (session 2)
        for why LS1 needs it.
    sparse_loss
        Compute Dice + Focal with the positive pixels handled sparsely (:func:`dice_focal_sparse`; equal to the
        dense loss up to float rounding, faster). ``False``: the dense reference formulation.
    beta
        KL weight (0 in the study: an autoencoder with a stochastic bottleneck).
    lr, batch_size, epochs, adam_eps, weight_decay
        Optimisation (Adam).
    sparse_first_layer
        ``"auto"`` (sparse on CPU, dense cuDNN on CUDA), ``True`` or ``False``: compute the first convolution of the
        spot planes from their non-zero pixels.
    mixed_precision
        ``"auto"`` (on CUDA only), ``True`` or ``False``.
    val_fraction
        Fraction of cells held out to pick the best epoch (0: no hold-out).
    select_best
        Restore the epoch with the lowest validation loss (training loss when ``val_fraction`` is 0) at the end.
    seed
        Seed of initialisation, shuffling, rotations and reparameterisation noise.

    Examples
    --------
    >>> cfg = VAEConfig(name="mine", spots=True, crop_size=64, epochs=2)
    >>> cfg.decoders
    ('spots',)
    """

    name: str = "vae"
    spots: bool = True
    channels: tuple[str, ...] = ()
    crop_size: int = 100
    genes: str | tuple[str, ...] = "all"
    min_gene_counts: int = 0
    min_cell_transcripts: int = 0
    spot_padding: int = 3
    spot_origin: Literal["centroid", "corner"] = "centroid"
    stain_edge: Literal["shift", "pad"] = "shift"
    normalize: Literal["crop", "image"] | None = "crop"
    mask_stains: bool = False
    rotate: bool = True
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    latent_dim: int = 50
    negative_slope: float = 0.1
    logvar_init: float | None = -6.0
    spot_prior: float | None = 0.01
    dice_weight: float = 0.8
    focal_weight: float = 0.4
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    gene_weighting: bool = True
    spot_weight: float = 1.0
    stain_weight: float = 1.0
    count_weight: float = 0.0
    sparse_loss: bool = True
    beta: float = 0.0
    lr: float = 5e-4
    batch_size: int = 16
    epochs: int = 20
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    sparse_first_layer: bool | Literal["auto"] = "auto"
    mixed_precision: bool | Literal["auto"] = "auto"
    val_fraction: float = 0.0
    select_best: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.widths = tuple(int(w) for w in self.widths)
        if not isinstance(self.genes, str):
            self.genes = tuple(self.genes)
        self.validate()

    # ------------------------------------------------------------------------------------------------------
    @property
    def decoders(self) -> tuple[str, ...]:
        """The reconstruction heads: ``("spots",)``, ``("stains",)`` or ``("spots", "stains")``."""
        out = []
        if self.spots:
            out.append("spots")
        if self.channels:
            out.append("stains")
        return tuple(out)

    def validate(self) -> None:
        """Raise :class:`~stmorph.StmorphInputError` on an inconsistent configuration."""
        if not self.spots and not self.channels:
            raise StmorphInputError(
                f"VAE config '{self.name}' has neither spots nor stain channels", expected="spots=True or channels=(...)"
            )
        if self.crop_size < min_crop_size():
            raise StmorphInputError(
                f"crop_size={self.crop_size} is too small for {N_BLOCKS} stride-2 convolutions without padding",
                expected=f"crop_size >= {min_crop_size()} ({' -> '.join(map(str, encoder_sizes(min_crop_size())))})",
            )
        if len(self.widths) != N_BLOCKS or min(self.widths) < 1:
            raise StmorphInputError(f"widths={self.widths}", expected=f"{N_BLOCKS} positive channel widths")
        for k in ("latent_dim", "batch_size", "epochs"):
            if int(getattr(self, k)) < 1:
                raise StmorphInputError(f"{k}={getattr(self, k)}", expected=f"{k} >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise StmorphInputError(f"val_fraction={self.val_fraction}", expected="0 <= val_fraction < 1")
        if self.count_weight < 0:
            raise StmorphInputError(f"count_weight={self.count_weight}", expected="count_weight >= 0")
        if self.lr <= 0 or self.beta < 0:
            raise StmorphInputError(f"lr={self.lr}, beta={self.beta}", expected="lr > 0 and beta >= 0")

    def replace(self, **changes: Any) -> VAEConfig:
        """A copy with ``changes`` applied (validated).

        Parameters
        ----------
        **changes
            Fields to change.

        Returns
        -------
        VAEConfig
            The new configuration.

        Examples
        --------
        >>> get_preset("ls1_cpu").replace(epochs=1).epochs
        1
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise StmorphInputError(f"unknown VAE config fields {sorted(unknown)}", expected="fields of VAEConfig")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field.

        Returns
        -------
        dict
            Field name to value (tuples become lists).

        Examples
        --------
        >>> VAEConfig().to_dict()["latent_dim"]
        50
        """
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        """Rebuild a configuration written by :meth:`to_dict` (unknown keys are an error).

        Parameters
        ----------
        d
            The dict.

        Returns
        -------
        VAEConfig
            The configuration.

        Examples
        --------
        >>> cfg = VAEConfig(name="x", crop_size=64)
        >>> VAEConfig.from_dict(cfg.to_dict()) == cfg
        True
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise StmorphInputError(f"unknown VAE config fields {sorted(unknown)}", expected="fields of VAEConfig")
        d = dict(d)
        for k in ("channels", "widths"):
            if k in d:
                d[k] = tuple(d[k])
        if "genes" in d and not isinstance(d["genes"], str):
            d["genes"] = tuple(d["genes"])
        return cls(**d)


_CPU = {"crop_size": 64, "widths": (16, 32, 64, 128, 128), "epochs": 8, "lr": 1e-3, "batch_size": 16}

#: The study's Table 1 (``vae1`` ... ``vae5``) plus CPU-sized variants (``ls1_cpu`` ... ``ls5_cpu``: 64-pixel crops,
#: narrower blocks and a few epochs; minutes on a 2-core laptop for a few hundred cells).
PRESETS: dict[str, VAEConfig] = {
    "vae1": VAEConfig(name="vae1", spots=True, crop_size=100, spot_padding=3, lr=5e-4, batch_size=8, epochs=15),
    "vae2": VAEConfig(name="vae2", spots=False, channels=("DAPI", "membrane"), crop_size=300, lr=5e-5, batch_size=16,
                      epochs=500),
    "vae3": VAEConfig(name="vae3", spots=True, channels=("DAPI",), crop_size=150, min_gene_counts=100, spot_padding=4,
                      lr=5e-4, batch_size=16, epochs=20, adam_eps=1e-6),
    "vae4": VAEConfig(name="vae4", spots=True, channels=("membrane",), crop_size=200, min_gene_counts=100,
                      spot_padding=4, lr=5e-4, batch_size=16, epochs=30, adam_eps=1e-6),
    "vae5": VAEConfig(name="vae5", spots=True, channels=("DAPI", "membrane"), crop_size=200, min_gene_counts=100,
                      spot_padding=4, lr=5e-4, batch_size=20, epochs=30, adam_eps=1e-6, weight_decay=1e-5),
}
# The CPU spot presets add the per-gene count reconstruction (``count_weight=1``): with the study's Dice + Focal
# alone the spot latent encodes cell shape but not gene composition (ridge R^2 of log-normalised counts from the
# latent ~0.00 after 20 epochs under every loss knob tried; expression-only pair 0.52-0.65 = chance), with it the
# pair reaches the counts' own accuracy (0.98; benchmarks/results/vae.md, session 2). The study presets keep
# the study's loss.
_CPU_SPOTS = {**_CPU, "spot_padding": 3, "count_weight": 1.0}
PRESETS.update(
    {
        "ls1_cpu": PRESETS["vae1"].replace(name="ls1_cpu", **_CPU_SPOTS),
        "ls2_cpu": PRESETS["vae2"].replace(name="ls2_cpu", **{**_CPU, "epochs": 15}),
        "ls3_cpu": PRESETS["vae3"].replace(name="ls3_cpu", min_gene_counts=0, **_CPU_SPOTS),
        "ls4_cpu": PRESETS["vae4"].replace(name="ls4_cpu", min_gene_counts=0, **_CPU_SPOTS),
        "ls5_cpu": PRESETS["vae5"].replace(name="ls5_cpu", min_gene_counts=0, **_CPU_SPOTS),
    }
)
# the study's latent-space names are aliases of its VAE presets
_ALIASES = {"ls1": "vae1", "ls2": "vae2", "ls3": "vae3", "ls4": "vae4", "ls5": "vae5"}


def get_preset(preset: str | VAEConfig, **changes: Any) -> VAEConfig:
    """Look up a preset by name (``vae1``-``vae5``, ``ls1``-``ls5``, ``ls1_cpu``-``ls5_cpu``) or pass a config through.

    Parameters
    ----------
    preset
        Preset name or a :class:`VAEConfig`.
    **changes
        Fields to override (``None`` values are ignored).

    Returns
    -------
    VAEConfig
        A fresh copy (presets themselves are never modified).

    Examples
    --------
    >>> get_preset("vae5").batch_size
    20
    >>> get_preset("ls2_cpu", channels=("DAPI",)).channels
    ('DAPI',)
    """
    if isinstance(preset, VAEConfig):
        cfg = preset
    else:
        key = _ALIASES.get(str(preset).lower(), str(preset).lower())
        if key not in PRESETS:
            raise StmorphInputError(
                f"unknown VAE preset '{preset}'", expected=f"one of {sorted(PRESETS) + sorted(_ALIASES)} or a VAEConfig"
            )
        cfg = PRESETS[key]
    changes = {k: v for k, v in changes.items() if v is not None}
    return cfg.replace(**changes)
