"""MUSE (Bao et al. 2022, Nat Biotech) in PyTorch: network (``_module``), training (``_train``), model (``_model``)."""

from ._model import MUSE, get_schedule, initial_labels, joint_initial_labels, muse_fit_predict
from ._module import (
    MuseModule,
    batch_hard_triplet_loss,
    batch_hard_triplet_losses,
    dense_reconstruction,
    pairwise_distances,
    zero_inflated_reconstruction,
)
from ._train import (
    PRESETS,
    MuseSchedule,
    encode_all,
    estimate_margin,
    muse_loss,
    partition_silhouette,
    silhouette_weights,
    train_muse,
)

__all__ = [
    "MUSE",
    "MuseModule",
    "MuseSchedule",
    "PRESETS",
    "get_schedule",
    "initial_labels",
    "joint_initial_labels",
    "muse_fit_predict",
    "muse_loss",
    "train_muse",
    "encode_all",
    "estimate_margin",
    "partition_silhouette",
    "silhouette_weights",
    "batch_hard_triplet_loss",
    "batch_hard_triplet_losses",
    "pairwise_distances",
    "zero_inflated_reconstruction",
    "dense_reconstruction",
]
