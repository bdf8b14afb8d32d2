"""The MUSE network (Bao et al. 2022) and its loss terms, in PyTorch.

Architecture (as in the reference implementation):

* per modality ``m``: encoder ``Dense(p_m -> 128, ELU) -> Dense(128 -> 128, tanh) = h_m``;
* joint latent ``z = Linear(concat(h_1..h_M) -> latent_dim)``;
* per modality decoder: ``z @ W_m`` (a ``latent x latent`` "selection" matrix, penalised by its Frobenius norm)
  ``-> Dense(128, ELU) -> Dense(128, tanh) -> Linear(p_m)``.

Initialisation follows the reference: truncated normal dense weights with variance ``1 / fan_in``
(``tf.keras.initializers.VarianceScaling()``'s defaults: scale 1, fan-in, truncated normal), zero biases, standard
normal selection matrices. (stmorph <= 0.3 used scale 2, He's; on the development seeds the reference's scale
gave mean ARI 0.918 / 0.990 with two / three modalities against 0.911 / 0.988.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "MuseModule",
    "zero_inflated_reconstruction",
    "dense_reconstruction",
    "pairwise_distances",
    "batch_hard_triplet_loss",
    "batch_hard_triplet_losses",
]


def _he_truncated_(linear: nn.Linear, scale: float = 1.0) -> None:
    """Keras ``VarianceScaling(scale, "fan_in", "truncated_normal")``: variance ``scale / fan_in`` after truncation."""
    fan_in = linear.weight.shape[1]
    # the normal is truncated at 2 standard deviations, which shrinks its standard deviation by 0.8796...
    std = math.sqrt(scale / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(linear.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
    nn.init.zeros_(linear.bias)


def _mlp(n_in: int, n_hidden: int, n_out: int | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, n_hidden), nn.ELU(), nn.Linear(n_hidden, n_hidden), nn.Tanh()]
    if n_out is not None:
        layers.append(nn.Linear(n_hidden, n_out))
    seq = nn.Sequential(*layers)
    for mod in seq:
        if isinstance(mod, nn.Linear):
            _he_truncated_(mod)
    return seq


class MuseModule(nn.Module):
    """MUSE encoder/decoder for any number (>= 2) of modalities.

    Parameters
    ----------
    n_features
        Number of input features of each modality.
    latent_dim
        Dimension of the joint latent representation ``z``.
    n_hidden
        Width of the hidden layers (128 in the paper).

    Examples
    --------
    >>> net = MuseModule([20, 30], latent_dim=8)
    >>> z, hs, recons = net([torch.zeros(4, 20), torch.zeros(4, 30)])
    >>> z.shape, hs[1].shape, recons[0].shape
    (torch.Size([4, 8]), torch.Size([4, 128]), torch.Size([4, 20]))
    """

    def __init__(self, n_features: list[int], latent_dim: int = 100, n_hidden: int = 128) -> None:
        super().__init__()
        if len(n_features) < 2:
            raise ValueError(f"MUSE needs at least 2 modalities, got {len(n_features)}")
        self.n_features = [int(p) for p in n_features]
        self.latent_dim = int(latent_dim)
        self.n_hidden = int(n_hidden)
        self.encoders = nn.ModuleList([_mlp(p, n_hidden, None) for p in self.n_features])
        self.joint = nn.Linear(n_hidden * len(self.n_features), latent_dim)
        _he_truncated_(self.joint)
        self.selection = nn.ParameterList(
            [nn.Parameter(torch.randn(latent_dim, latent_dim)) for _ in self.n_features]
        )
        self.decoders = nn.ModuleList([_mlp(latent_dim, n_hidden, p) for p in self.n_features])

    @property
    def n_modalities(self) -> int:
        """Number of modalities."""
        return len(self.n_features)

    def encode(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the joint latent ``z`` and the per-modality hidden representations ``h_m``."""
        hs = [enc(x) for enc, x in zip(self.encoders, xs)]
        return self.joint(torch.cat(hs, dim=1)), hs

    def decode(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Reconstruct every modality from ``z``."""
        return [dec(z @ w) for dec, w in zip(self.decoders, self.selection)]

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        z, hs = self.encode(xs)
        return z, hs, self.decode(z)

    def selection_penalty(self, squared: bool = False) -> torch.Tensor:
        """Sum over modalities of the Frobenius norm (``squared``: its square) of the selection matrices."""
        sq = [(w * w).sum() for w in self.selection]
        return sum(sq) if squared else sum(torch.sqrt(v) for v in sq)


def zero_inflated_reconstruction(
    x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None, n_obs: torch.Tensor | None = None
) -> torch.Tensor:
    """Reconstruction error on the non-zero entries of ``x`` only (MUSE's transcript loss).

    ``|| 1[x > 0] * (x_hat - x) ||_F / #{x > 0}``: the Frobenius norm (the square root of the sum of
    squared errors, **not** the sum of squares) of the error restricted to the observed (non-zero)
    entries, divided by their number.

    Deviation from the issue text, on purpose: the issue describes "the sum over non-zero entries of
    ``(x - x_hat)^2`` normalised by the number of non-zero entries" (a squared norm). The reference code
    (``tf.norm`` of the masked error divided by the count of non-zero entries) takes the plain norm, and
    this port follows the code: the default weights of the selection penalty (``lambda_regul=5``) and of
    the triplet loss (``lambda_super=5``) come from that code and are balanced against the plain norm; a
    squared loss with the same weights would change the balance of the terms. The squared version is
    ``zero_inflated_reconstruction(x, x_hat) ** 2 * #{x > 0}``.

    Parameters
    ----------
    x
        ``(batch, p)`` non-negative input.
    x_hat
        ``(batch, p)`` reconstruction.
    mask, n_obs
        Optional precomputed ``(x > 0)`` as a float tensor and its sum (the training loop computes them once
        per epoch: a fresh boolean ``x > 0`` + ``where`` on a 64 x 500 batch cost ~0.2-0.3 ms per step, a
        float multiply ~0.01 ms).

    Returns
    -------
    Scalar tensor.

    Examples
    --------
    >>> zero_inflated_reconstruction(torch.tensor([[1.0, 0.0]]), torch.tensor([[4.0, 7.0]]))
    tensor(3.)
    """
    if mask is None:
        mask = (x > 0).to(x_hat.dtype)
    if n_obs is None:
        n_obs = mask.sum()
    return torch.linalg.vector_norm((x_hat - x) * mask) / n_obs.clamp_min(1)


def dense_reconstruction(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of the reconstruction error (MUSE's loss for non-transcript modalities).

    As in the reference code this is the norm ``||x_hat - x||_F``, not the squared error named in the issue
    text (see :func:`zero_inflated_reconstruction` for why the code's version is kept).

    Parameters
    ----------
    x, x_hat
        ``(batch, p)`` input and reconstruction.

    Returns
    -------
    Scalar tensor ``||x_hat - x||_F``.

    Examples
    --------
    >>> dense_reconstruction(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]))
    tensor(5.)
    """
    return torch.linalg.vector_norm(x_hat - x)


def pairwise_distances(z: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix of the rows of ``z`` with a finite gradient at zero distance.

    Parameters
    ----------
    z
        ``(n, d)`` embeddings.

    Returns
    -------
    ``(n, n)`` distances.

    Examples
    --------
    >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]])).round(decimals=6)
    tensor([[0., 5.],
            [5., 0.]])
    """
    sq = (z * z).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    # sqrt has an infinite derivative at 0: clamping at 1e-16 gives distance 1e-8 there (not 0) and a zero
    # gradient; one op instead of two ``where`` (measured ~0.1 ms less per step than masking the zeros)
    return torch.sqrt(d2.clamp_min(1e-16))


def batch_hard_triplet_loss(labels: torch.Tensor, z: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) as used by MUSE.

    For each anchor: hardest positive = the farthest sample with the same label (anchor excluded),
    hardest negative = the closest sample with another label; loss = mean of
    ``max(d_pos - d_neg + margin, 0)``. Anchors without a negative in the batch use the largest distance of
    their row plus itself (the reference behaviour), anchors without a positive use 0.

    Parameters
    ----------
    labels
        ``(n,)`` integer labels.
    z
        ``(n, d)`` embeddings.
    margin
        Triplet margin.

    Returns
    -------
    Scalar tensor.

    Examples
    --------
    >>> z = torch.tensor([[0.0], [1.0], [3.0]])
    >>> batch_hard_triplet_loss(torch.tensor([0, 0, 1]), z, 1.0)  # (max(1-3+1,0) + max(1-2+1,0) + 0) / 3
    tensor(0.)
    """
    return batch_hard_triplet_losses(labels[None, :], z, margin)[0]


def batch_hard_triplet_losses(
    labels: torch.Tensor, z: torch.Tensor, margin: float | torch.Tensor, min_agree: int | None = None
) -> torch.Tensor:
    """Batch-hard triplet losses of one embedding for several label vectors at once (one distance matrix).

    Parameters
    ----------
    labels
        ``(M, n)`` integer labels, one row per modality; a pair with different labels in row ``m`` is a
        negative of row ``m``'s loss.
    z
        ``(n, d)`` embeddings.
    margin
        Triplet margin.
    min_agree
        A pair with the same label in row ``m`` is a positive of row ``m``'s loss only when at least this many
        rows (``m`` included) give it the same label; None or 1: every same-label pair (MUSE). With ``M``,
        cells that one modality merges and another separates are no longer pulled together by the merging
        modality's hardest positive (``label_agreement`` of :class:`stmorph.models.muse.MUSE`).

    Returns
    -------
    ``(M,)`` tensor: the loss of :func:`batch_hard_triplet_loss` for each row of ``labels``.

    Examples
    --------
    >>> z = torch.tensor([[0.0], [1.0], [3.0]])
    >>> batch_hard_triplet_losses(torch.tensor([[0, 0, 1], [0, 1, 1]]), z, 2.0)
    tensor([0.3333, 1.6667])
    >>> batch_hard_triplet_losses(torch.tensor([[0, 0, 1], [0, 1, 1]]), z, 2.0, min_agree=2)
    tensor([0.0000, 0.6667])
    """
    d = pairwise_distances(z)
    same = labels[:, :, None] == labels[:, None, :]  # (M, n, n)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = same & ~eye
    if min_agree is not None and min_agree > 1:
        pos = pos & (same.sum(dim=0) >= min_agree)
    hardest_pos = torch.where(pos, d, 0.0).amax(dim=2)
    row_max = d.amax(dim=1, keepdim=True)
    hardest_neg = torch.where(same, d + row_max, d).amin(dim=2)
    return torch.relu(hardest_pos - hardest_neg + margin).mean(dim=1)
