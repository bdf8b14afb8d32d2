"""Fused CPU kernels (numba) of the background part of the sparse Dice + Focal loss.

The spot decoder's logits are a (B, genes, S, S) tensor of ~16 M floats per batch. Torch evaluates the
background terms of :class:`~stmorph.models.vae._losses._DiceFocalSparse` as a dozen element-wise passes, each
allocating a tensor of that size; here the reductions of the forward pass and the whole gradient of the backward
pass are one pass each over the ``sigmoid`` and ``softplus`` tensors that torch computes (vectorised) anyway.
Measured on ls1_cpu's loss (16 x 241 x 64 x 64, one thread): forward + backward 0.32 s -> 0.14 s CPU time
(``benchmarks/RESULTS.md``, VAE section 2).

Two memory layouts are supported, as the 3-D view ``(outer, genes, inner)`` of the contiguous tensor:
``(B, G, H*W)`` for NCHW and ``(B*H*W, G, 1)`` for channels-last, where the gene of an element is its middle index.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["background_sums", "background_grad"]


@njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _sums_nchw(p, sp, gamma):  # pragma: no cover - compiled
    outer, g_n, inner = p.shape
    psum = np.zeros(g_n, np.float64)
    focal = 0.0
    for a in range(outer):
        for g in range(g_n):
            s = np.float32(0.0)
            f = np.float32(0.0)
            for i in range(inner):
                v = p[a, g, i]
                s += v
                f += (v * v if gamma == 2.0 else v ** gamma) * sp[a, g, i]
            psum[g] += s
            focal += f
    return focal, psum


@njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _sums_rows(p, sp, gamma):  # pragma: no cover - compiled
    rows, g_n = p.shape
    psum = np.zeros(g_n, np.float64)
    acc = np.zeros(g_n, np.float32)
    fac = np.zeros(g_n, np.float32)
    focal = 0.0
    for r in range(rows):
        for g in range(g_n):
            v = p[r, g]
            acc[g] += v
            fac[g] += (v * v if gamma == 2.0 else v ** gamma) * sp[r, g]
        if (r & 255) == 255:  # flush the float32 partial sums into float64 every 256 rows
            for g in range(g_n):
                psum[g] += acc[g]
                focal += fac[g]
                acc[g] = 0.0
                fac[g] = 0.0
    for g in range(g_n):
        psum[g] += acc[g]
        focal += fac[g]
    return focal, psum


@njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _grad_nchw(p, sp, cf, cd, gamma, out):  # pragma: no cover - compiled
    outer, g_n, inner = p.shape
    for a in range(outer):
        for g in range(g_n):
            cdg = cd[g]
            for i in range(inner):
                v = p[a, g, i]
                u = np.float32(1.0) - v
                pg = v * v if gamma == 2.0 else v ** gamma
                out[a, g, i] = pg * (gamma * u * sp[a, g, i] + v) * cf + u * v * cdg


@njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _grad_rows(p, sp, cf, cd, gamma, out):  # pragma: no cover - compiled
    rows, g_n = p.shape
    for r in range(rows):
        for g in range(g_n):
            v = p[r, g]
            u = np.float32(1.0) - v
            pg = v * v if gamma == 2.0 else v ** gamma
            out[r, g] = pg * (gamma * u * sp[r, g] + v) * cf + u * v * cd[g]


def background_sums(p: np.ndarray, sp: np.ndarray, gamma: float) -> tuple[float, np.ndarray]:
    """``sum p^gamma * softplus(x)`` over all elements and ``sum p`` per gene.

    Parameters
    ----------
    p, sp
        ``sigmoid(x)`` and ``softplus(x)`` as float32 arrays of shape ``(outer, genes, inner)`` (``inner == 1``:
        channels-last).
    gamma
        Focal exponent.

    Returns
    -------
    tuple
        The focal background sum (float) and the (genes,) float64 per-gene sums of ``p``.

    Examples
    --------
    >>> p = np.full((1, 2, 3), 0.5, np.float32); sp = np.full_like(p, np.log(2.0))
    >>> f, s = background_sums(p, sp, 2.0)
    >>> round(f, 4), s.tolist()
    (1.0397, [1.5, 1.5])
    """
    g = np.float32(gamma)
    if p.shape[2] == 1:
        return _sums_rows(p[:, :, 0], sp[:, :, 0], g)
    return _sums_nchw(p, sp, g)


def background_grad(p: np.ndarray, sp: np.ndarray, cf: float, cd: np.ndarray, gamma: float, out: np.ndarray) -> None:
    """Gradient of ``cf * sum p^g softplus(x) + sum_g cd_g * sum p`` with respect to the logits, into ``out``.

    ``d/dx [p^g softplus(x)] = p^g (g (1 - p) softplus(x) + p)`` and ``d/dx p = p (1 - p)``.

    Parameters
    ----------
    p, sp
        As in :func:`background_sums`.
    cf
        Weight of the focal background sum.
    cd
        (genes,) weights of the per-gene sums of ``p``.
    gamma
        Focal exponent.
    out
        Output array shaped like ``p``.

    Examples
    --------
    >>> p = np.full((1, 1, 1), 0.5, np.float32); sp = np.full_like(p, np.log(2.0)); out = np.empty_like(p)
    >>> background_grad(p, sp, 1.0, np.zeros(1, np.float32), 2.0, out)
    >>> round(float(out[0, 0, 0]), 4)  # 0.25 * (2 * 0.5 * log 2 + 0.5)
    0.2983
    """
    g = np.float32(gamma)
    cd = np.ascontiguousarray(cd, dtype=np.float32)
    if p.shape[2] == 1:
        _grad_rows(p[:, :, 0], sp[:, :, 0], np.float32(cf), cd, g, out[:, :, 0])
    else:
        _grad_nchw(p, sp, np.float32(cf), cd, g, out)
