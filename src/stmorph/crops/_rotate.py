"""90-degree rotations of crops, one ``k`` per cell, identical for all channels of a cell."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from ..errors import StmorphInputError

__all__ = ["rotate_crops", "rotation_ks"]

A = TypeVar("A")


def rotation_ks(seed: int, epoch: int, n: int) -> np.ndarray:
    """Rotation counts ``k`` in ``{0, 1, 2, 3}``, a pure function of ``(seed, epoch)`` for ``n`` items.

    Item ``i`` always gets the same ``k`` for the same ``(seed, epoch)`` whatever the batch it is drawn in.

    Parameters
    ----------
    seed
        Random seed.
    epoch
        Training epoch.
    n
        Number of items (e.g. cells of the sample: index by the cell's row to stay independent of filters).

    Returns
    -------
    ``(n,)`` int64.

    Examples
    --------
    >>> k = rotation_ks(0, 3, 5)
    >>> bool((k == rotation_ks(0, 3, 5)).all()) and set(k.tolist()) <= {0, 1, 2, 3}
    True
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x5EED]))
    return rng.integers(0, 4, size=int(n), dtype=np.int64)


def rotate_crops(arr: A, k: np.ndarray | int) -> A:
    """Rotate crops by ``k`` quarter turns counter-clockwise (``np.rot90`` / ``torch.rot90`` on the last two axes).

    Parameters
    ----------
    arr
        ``(n, C, S, S)`` (or any ``(n, ..., S, S)``) numpy array or torch tensor. With an integer ``k`` any array
        with at least two axes is accepted.
    k
        One integer for all cells, or ``(n,)`` integers, one per cell; the rotation of cell ``i`` applies to all
        its channels (stains and spot planes alike). Taken modulo 4.

    Returns
    -------
    A new array/tensor of the same type, dtype and shape.

    Examples
    --------
    >>> a = np.arange(8).reshape(2, 1, 2, 2)
    >>> rotate_crops(a, np.array([0, 1]))[:, 0].tolist()
    [[[0, 1], [2, 3]], [[5, 7], [4, 6]]]
    """
    is_torch = type(arr).__module__.startswith("torch")
    if is_torch:
        import torch
    ndim = arr.ndim  # type: ignore[attr-defined]
    if np.ndim(k) == 0:
        kk = int(k) % 4
        if is_torch:
            return torch.rot90(arr, kk, dims=(-2, -1)).contiguous()  # type: ignore[return-value]
        return np.ascontiguousarray(np.rot90(arr, kk, axes=(-2, -1)))  # type: ignore[return-value]
    ks = np.asarray(k).astype(np.int64).reshape(-1) % 4
    shape = tuple(arr.shape)  # type: ignore[attr-defined]
    if ndim < 3 or ks.size != shape[0]:
        raise StmorphInputError(
            f"{ks.size} rotations for an array of shape {shape}", expected="one k per item along the first axis"
        )
    if shape[-1] != shape[-2] and np.any(ks % 2 == 1):
        raise StmorphInputError(f"odd rotations of non-square crops {shape[-2:]}", expected="square crops")
    if is_torch:
        out = torch.empty_like(arr)  # type: ignore[arg-type]
        for q in range(4):
            sel = np.flatnonzero(ks == q)
            if sel.size:
                t = torch.from_numpy(sel)
                out[t] = torch.rot90(arr[t], q, dims=(-2, -1))  # type: ignore[index]
        return out  # type: ignore[return-value]
    out_np = np.empty_like(arr)
    for q in range(4):
        sel = np.flatnonzero(ks == q)
        if sel.size:
            out_np[sel] = np.rot90(arr[sel], q, axes=(-2, -1))  # type: ignore[index]
    return out_np  # type: ignore[return-value]
