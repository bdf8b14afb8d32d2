"""Data-parallel VAE training on several processes: PyTorch ``DistributedDataParallel``, launched by ``torchrun``.

Why plain ``torch.distributed`` rather than Lightning Fabric: the training loop is ours already (seeded per epoch,
resumable, NaN-guarded), so DDP needs only a process group, a gradient all-reduce and a few sums; a second
framework would add a dependency without removing code.

What makes ``W`` processes train the *same* model as one process with the same global batch and seed:

* every process walks the same seeded order of global batches and takes its contiguous share of each batch
  (the dataset's rotations depend only on seed, epoch and cell);
* the reparameterisation noise is drawn for the whole global batch on every process, each keeps its rows;
* the losses are functions of batch-wide sums (Dice of per-gene sums, means of squared errors, the batch mean
  of the KL), so each process forms them from the sums of all processes (:func:`all_sum`, differentiable: its
  backward sums the gradients of the ``W`` identical losses, and DDP's averaging divides by ``W`` again);
* BatchNorm normalises with the statistics of the global batch (:class:`GlobalBatchNorm2d`; torch's
  ``SyncBatchNorm`` runs on GPUs only, this one on gloo too).

What differs is the order of float32 additions, so the models agree to rounding (``tests/test_vae_ddp.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["world", "init_from_env", "all_sum", "GlobalBatchNorm2d", "convert_batchnorm", "is_main_process",
           "mean_of", "shard"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one.

    Examples
    --------
    >>> world()
    (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process writes outputs: rank 0 of the process group, or (before the group is joined) of the
    ``torchrun`` environment (``RANK``); a plain run is the main process.

    Examples
    --------
    >>> is_main_process()
    True
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment, and pick this process's device.

    Without ``WORLD_SIZE > 1`` in the environment (a plain run) nothing happens. Under ``torchrun`` the backend
    is NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU.

    Parameters
    ----------
    device
        The device asked for (``cpu`` or ``cuda``).

    Returns
    -------
    torch.device
        This process's device.

    Examples
    --------
    >>> init_from_env(torch.device("cpu"))
    device(type='cpu')
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


class _AllSum(torch.autograd.Function):
    """Sum over processes; the backward sums the incoming gradients over processes too (the adjoint of a sum
    that every process computes). torch's ``torch.distributed.nn.functional.all_reduce`` does the same but is
    deprecated."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        import torch.distributed as dist

        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


def all_sum(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sum each tensor over all processes (one all-reduce); differentiable. Without a process group: unchanged.

    Parameters
    ----------
    *tensors
        Tensors of one dtype and device (any shapes).

    Returns
    -------
    tuple of torch.Tensor
        The sums, shaped like the inputs.

    Examples
    --------
    >>> all_sum(torch.ones(2), torch.tensor(3.0))
    (tensor([1., 1.]), tensor(3.))
    """
    if world()[1] == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    total = _AllSum.apply(flat)
    out, k = [], 0
    for t in tensors:
        out.append(total[k : k + t.numel()].view(t.shape))
        k += t.numel()
    return tuple(out)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch of all processes (gloo or NCCL).

    The same parameters and buffers as :class:`torch.nn.BatchNorm2d` (checkpoints are interchangeable); without a
    process group, or in evaluation mode, it is exactly that module.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training or world()[1] == 1:
            return super().forward(x)
        n_local = x.new_tensor(float(x.numel() // x.shape[1]))
        s, n = all_sum(x.sum((0, 2, 3)), n_local)
        mean = s / n
        centred = x - mean.view(1, -1, 1, 1)
        (ss,) = all_sum(centred.pow(2).sum((0, 2, 3)))
        var = ss / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
                self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every :class:`torch.nn.BatchNorm2d` of ``module`` for :class:`GlobalBatchNorm2d` (in place).

    Parameters
    ----------
    module
        A module tree.

    Returns
    -------
    torch.nn.Module
        ``module``.

    Examples
    --------
    >>> m = convert_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    >>> type(m[0]).__name__
    'GlobalBatchNorm2d'
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.to(next(iter(child.state_dict().values())).device)
            setattr(module, name, bn)
        else:
            convert_batchnorm(child)
    return module


def mean_of(values: torch.Tensor, reduce: Callable[..., tuple[torch.Tensor, ...]] | None) -> torch.Tensor:
    """``values.sum() / values.numel()`` over the global batch when ``reduce`` sums over processes.

    Examples
    --------
    >>> mean_of(torch.tensor([1.0, 3.0]), None)
    tensor(2.)
    """
    if reduce is None:
        return values.mean()
    total, n = reduce(values.sum(), values.new_tensor(float(values.numel())))
    return total / n


def shard(idx: Any, rank: int, world_size: int) -> Any:
    """This process's contiguous share of a global batch of indices (``numpy.array_split`` order).

    Examples
    --------
    >>> import numpy as np
    >>> shard(np.arange(5), 1, 2)
    array([3, 4])
    """
    import numpy as np

    return np.array_split(idx, world_size)[rank]
