"""Convolutional VAEs on per-cell crops (the study's LS1-LS5), split like scvi-tools.

* :mod:`._config` - :class:`VAEConfig` and the preset registry :data:`PRESETS` (Table 1 plus CPU sizes)
* :mod:`._module` - the PyTorch modules (encoder with an exact sparse first convolution, decoders)
* :mod:`._losses` - Dice + Focal with dynamic gene weights, L2, KL
* :mod:`._train` - the resumable, seeded training loop
* :mod:`._model` - :class:`CropVAE`: registration, training, latent spaces, save/load
"""

from ._config import PRESETS, VAEConfig, encoder_sizes, get_preset, min_crop_size
from ._losses import (
    count_loss,
    dice_focal_sparse,
    dice_loss,
    focal_loss,
    gene_weights,
    kl_divergence,
    spot_loss,
    stain_loss,
)
from ._model import CropVAE
from ._module import ConvDecoder, ConvEncoder, CropVAEModule, FirstConv, sparse_conv3x3s2
from ._train import VAETrainingError, compute_loss, fit, load_checkpoint

__all__ = [
    "PRESETS",
    "VAEConfig",
    "encoder_sizes",
    "get_preset",
    "min_crop_size",
    "count_loss",
    "dice_focal_sparse",
    "dice_loss",
    "focal_loss",
    "gene_weights",
    "kl_divergence",
    "spot_loss",
    "stain_loss",
    "CropVAE",
    "ConvDecoder",
    "ConvEncoder",
    "CropVAEModule",
    "FirstConv",
    "sparse_conv3x3s2",
    "VAETrainingError",
    "compute_loss",
    "fit",
    "load_checkpoint",
]
