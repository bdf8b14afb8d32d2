"""Losses of the cell-crop VAEs: Dice + Focal for spot planes with dynamic gene weights, L2 for stains, KL."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["gene_weights", "dice_loss", "focal_loss", "dice_focal_sparse", "kl_divergence", "spot_loss",
           "spot_positions", "stain_loss", "count_loss"]

_EPS = 1e-7


def gene_weights(counts: torch.Tensor, reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
    """Dynamic per-gene weights of a batch so that rare genes are not ignored.

    For each cell, a gene's weight is the inverse of its expression rescaled to the cell's total
    (``total / count``, i.e. the inverse of the gene's fraction of the cell's transcripts; 0 for genes the cell
    lacks); weights are averaged over the batch and normalised to sum to 1. A batch without any transcript gets
    uniform weights.

    Parameters
    ----------
    counts
        (B, G) transcript counts per cell and gene (or spot-pixel counts).
    reduce
        Sum over processes (data-parallel training: weights of the global batch); ``None``: this batch.

    Returns
    -------
    torch.Tensor
        (G,) non-negative weights summing to 1.

    Examples
    --------
    >>> gene_weights(torch.tensor([[3.0, 1.0, 0.0]]))
    tensor([0.2500, 0.7500, 0.0000])
    """
    counts = counts.float()
    total = counts.sum(1, keepdim=True)
    w = torch.where(counts > 0, total / counts.clamp_min(_EPS), torch.zeros_like(counts))
    if reduce is None:
        w = w.mean(0)
    else:  # the whole global batch (a sum: the mean's 1 / B cancels in the normalisation)
        (w,) = reduce(w.sum(0).detach())
    s = w.sum()
    if s <= 0:
        return torch.full_like(w, 1.0 / w.numel())
    return w / s


def dice_loss(probs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, *,
              smooth: float = 0.0) -> torch.Tensor:
    """Soft multi-class Dice loss ``1 - 2|X n Y| / (|X| + |Y|)`` per class (channel), summed over batch and pixels.

    Parameters
    ----------
    probs
        (B, G, H, W) predicted probabilities.
    target
        (B, G, H, W) binary targets.
    weights
        (G,) class weights (normalised here to sum 1). ``None``: equal weights over the classes that occur in
        ``target`` (absent classes are left out, as their Dice is undefined).
    smooth
        Added to numerator and denominator.

    Returns
    -------
    torch.Tensor
        Scalar ``sum_g w_g (1 - dice_g)``.

    Examples
    --------
    >>> p = torch.tensor([[[[1.0, 0.0]]]]); y = torch.tensor([[[[1.0, 1.0]]]])
    >>> round(float(dice_loss(p, y)), 4)  # 1 - 2*1/(1+2)
    0.3333
    """
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    card = probs.sum(dims) + target.sum(dims)
    per_class = 1.0 - (2.0 * inter + smooth) / (card + smooth).clamp_min(_EPS)
    if weights is None:
        weights = (target.sum(dims) > 0).to(per_class.dtype)
    weights = weights.to(per_class)
    s = weights.sum()
    if s <= 0:
        return per_class.new_zeros(())
    return (per_class * weights).sum() / s


class _FocalWithLogits(torch.autograd.Function):
    """Sum of ``-(1 - p_t)^gamma log p_t`` over binary targets, from logits, with a hand-written gradient.

    With ``z = x`` for ones and ``-x`` for zeros, ``p_t = sigmoid(z)`` and
    ``d/dz = gamma (1 - p_t)^gamma p_t log p_t - (1 - p_t)^(gamma + 1)``. The intermediates are recomputed in the
    backward pass instead of stored, which on CPU takes about half the time of the autograd graph of the same
    expression and far less memory on (B, genes, S, S) planes (``benchmarks/results/vae.md``).
    """

    @staticmethod
    def forward(ctx, x, target, gamma, alpha):  # type: ignore[override]
        z = torch.where(target > 0.5, x, -x)
        log_pt = F.logsigmoid(z)
        q = -torch.expm1(log_pt)  # 1 - p_t, exact for p_t near 1
        el = q.pow(gamma).mul_(log_pt)
        if alpha is not None:
            el.mul_(torch.where(target > 0.5, alpha, 1.0 - alpha))
        ctx.save_for_backward(x, target)
        ctx.gamma, ctx.alpha = gamma, alpha
        return -el.sum()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, target = ctx.saved_tensors
        pos = target > 0.5
        z = torch.where(pos, x, -x)
        log_pt = F.logsigmoid(z)
        pt = log_pt.exp()
        q = 1.0 - pt
        qg = q.pow(ctx.gamma)
        dz = qg.mul_(pt.mul_(log_pt).mul_(ctx.gamma).sub_(q))  # gamma q^g p log p - q^(g+1)
        if ctx.alpha is not None:
            dz.mul_(torch.where(pos, ctx.alpha, 1.0 - ctx.alpha))
        dz = torch.where(pos, dz, -dz)  # dz/dx = +-1
        return dz.mul_(grad), None, None, None


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``x`` (B, G, H, W) as a contiguous tensor and the ``(outer, genes, inner)`` view of its memory.

    NCHW gives ``(B, G, H*W)``; channels-last (what the spot decoder emits, see :class:`ConvDecoder`) gives
    ``(B*H*W, G, 1)``, so neither layout is copied.
    """
    B, G, H, W = x.shape
    if x.is_contiguous():
        return x, (B, G, H * W)
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, (B * H * W, G, 1)
    return x.contiguous(), (B, G, H * W)


def _memory_index(pos: torch.Tensor, shape: tuple[int, int, int, int], view: tuple[int, int, int]) -> torch.Tensor:
    """NCHW flat indices ``pos`` as offsets into the memory of a tensor laid out as ``view``."""
    if view[2] != 1:
        return pos
    _, G, H, W = shape
    hw = H * W
    b, c, r = pos // (G * hw), (pos // hw) % G, pos % hw
    return (b * hw + r) * G + c


class _SpotSums(torch.autograd.Function):
    """Sufficient statistics of Dice + Focal for binary targets given as the flat indices of their ones.

    Returns ``(focal_sum, psum, inter)``: the focal loss summed over every pixel, and per gene the sum of
    ``p = sigmoid(x)`` over all pixels (the Dice denominator without the ones) and over the ones (the Dice
    intersection). Every pixel is first treated as background (focal ``p^g softplus(x)``); the few positives then
    get their corrections (focal ``(1-p)^g softplus(-x)`` instead). The gradient is likewise one dense expression
    plus a scatter at the positives; no dense target tensor is read. On CPU the background reductions and the
    dense gradient are one fused pass each (:mod:`._loss_kernels`); elsewhere they are torch expressions. NCHW and
    channels-last logits are both read in place. Dice and the mean focal loss are then small functions of these
    sums (:func:`dice_focal_sparse`), which is what lets data-parallel training add the sums of all processes.
    """

    @staticmethod
    def forward(ctx, x, pos, cls, gamma, alpha):  # type: ignore[override]
        # x: (B, G, H, W) logits; pos: NCHW flat indices of ones; cls: their gene
        x, view = _layout(x)
        G = x.shape[1]
        mem = _memory_index(pos, tuple(x.shape), view)
        xm = x.view(-1) if view[2] != 1 else x.permute(0, 2, 3, 1).reshape(-1)  # memory order, no copy
        p = torch.sigmoid(xm)
        sp = F.softplus(xm)  # -log(1 - p)
        a0 = 1.0 if alpha is None else 1.0 - alpha
        a1 = 1.0 if alpha is None else alpha
        fused = x.device.type == "cpu" and x.dtype == torch.float32
        if fused:
            from ._loss_kernels import background_sums

            f_bg, ps = background_sums(p.view(view).numpy(), sp.view(view).numpy(), gamma)
            focal_sum = x.new_tensor(f_bg * a0)
            psum = torch.from_numpy(ps).to(x.dtype)
        else:
            pg = p * p if gamma == 2.0 else p.pow(gamma)
            focal_sum = torch.dot(pg, sp) * a0  # one fused pass instead of mul + sum
            del pg
            psum = p.view(view).sum((0, 2))
        xp = xm[mem]
        pp = torch.sigmoid(xp)
        f0p = pp.pow(gamma) * F.softplus(xp)
        f1p = (1.0 - pp).pow(gamma) * F.softplus(-xp)
        focal_sum = focal_sum + (a1 * f1p - a0 * f0p).sum()
        inter = torch.zeros(G, dtype=x.dtype, device=x.device).index_add_(0, cls, pp)
        ctx.save_for_backward(p, sp, mem, cls, pp, xp)
        ctx.gamma, ctx.a0, ctx.a1, ctx.view, ctx.fused, ctx.full_shape = gamma, a0, a1, view, fused, tuple(x.shape)
        ctx.consumed = False
        return focal_sum, psum, inter

    @staticmethod
    def backward(ctx, g_focal, g_psum, g_inter):  # type: ignore[override]
        p, sp, mem, cls, pp, xp = ctx.saved_tensors
        g, view = ctx.gamma, ctx.view
        cf = g_focal * ctx.a0
        # background: focal derivative p^g (g (1 - p) softplus(x) + p), psum derivative p (1 - p)
        if ctx.fused:
            from ._loss_kernels import background_grad

            if ctx.consumed:
                raise RuntimeError("the sparse spot loss frees its buffers in backward: retain_graph is not supported")
            ctx.consumed = True
            out = sp  # written in place: each element of softplus(x) is read once, just before its gradient
            background_grad(p.view(view).numpy(), sp.view(view).numpy(), float(cf), g_psum.detach().numpy(), g,
                            out.view(view).numpy())
        else:
            u = 1.0 - p
            out = torch.addcmul(p, u, sp, value=g)
            out.mul_(p * p if g == 2.0 else p.pow(g)).mul_(cf)
            out.view(view).addcmul_(u.mul_(p).view(view), g_psum.view(1, -1, 1))
        # corrections at the positives: focal f1 - f0 and the intersection term p (1 - p)
        up = 1.0 - pp
        d0 = pp.pow(g) * (g * up * F.softplus(xp) + pp)
        d1 = -(up.pow(g)) * (g * pp * F.softplus(-xp) + up)
        corr = g_focal * (ctx.a1 * d1 - ctx.a0 * d0) + g_inter[cls] * pp * up
        out.index_add_(0, mem, corr)
        B, G, H, W = ctx.full_shape
        gx = out.view(B, G, H, W) if view[2] != 1 else out.view(B, H, W, G).permute(0, 3, 1, 2)
        return gx, None, None, None, None


def dice_focal_sparse(logits: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor | None = None, *,
                      gamma: float = 2.0, alpha: float | None = None,
                      reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dice_loss` of ``sigmoid(logits)`` and :func:`focal_loss` (from logits) for binary targets given sparsely.

    Spot planes are about 0.3 % ones, so the targets are passed as the flat indices of their ones; the result
    (values and gradient) equals ``dice_loss(sigmoid(logits), target, weights)`` and
    ``focal_loss(logits, target, from_logits=True)`` up to float rounding (tested), in fewer passes over the
    (B, genes, S, S) tensor.

    Parameters
    ----------
    logits
        (B, G, H, W) decoder logits.
    pos
        Flat (row-major) indices into ``logits`` of the pixels whose target is 1, each at most once.
    weights
        (G,) Dice class weights (normalised here); ``None``: equal weights over the genes with ones.
    gamma, alpha
        Focal parameters.
    reduce
        Applied to ``(focal_sum, psum, inter, n_pos, n)`` before Dice and the mean are formed; data-parallel
        training passes a differentiable sum over processes, so that each process's loss is the loss of the whole
        global batch. ``None``: this batch alone.

    Returns
    -------
    tuple of torch.Tensor
        Scalar Dice loss and scalar mean focal loss.

    Examples
    --------
    >>> y = (torch.rand(2, 3, 8, 8) < 0.2).float(); x = torch.randn(2, 3, 8, 8)
    >>> d, f = dice_focal_sparse(x, torch.nonzero(y.reshape(-1)).squeeze(1))
    >>> bool(torch.isclose(d, dice_loss(torch.sigmoid(x), y))), bool(torch.isclose(f, focal_loss(x, y, from_logits=True)))
    (True, True)
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    B, G, H, W = x.shape
    pos = pos.to(device=x.device, dtype=torch.int64).reshape(-1)
    cls = torch.div(pos, H * W, rounding_mode="floor") % G
    n_pos = torch.bincount(cls, minlength=G).to(x.dtype)
    focal_sum, psum, inter = _SpotSums.apply(x, pos, cls, float(gamma), alpha)
    n = torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device)
    if reduce is not None:  # data-parallel training: the sums of every process's part of the batch
        focal_sum, psum, inter, n_pos, n = reduce(focal_sum, psum, inter, n_pos, n)
    if weights is None:
        weights = (n_pos > 0).to(x.dtype)
    w = weights.detach().to(x.dtype)
    wsum = w.sum()
    wn = w / wsum if wsum > 0 else torch.zeros_like(w)
    card = (psum + n_pos).clamp_min(_EPS)
    dice = ((1.0 - 2.0 * inter / card) * wn).sum()
    return dice, focal_sum / n


def focal_loss(pred: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, alpha: float | None = None,
               from_logits: bool = False) -> torch.Tensor:
    """Binary focal loss ``-(1 - p_t)^gamma log(p_t)`` averaged over all elements.

    The sigmoid is applied exactly once: pass probabilities (``from_logits=False``) or logits
    (``from_logits=True``, numerically stabler, same value).

    Parameters
    ----------
    pred
        Probabilities or logits, any shape.
    target
        Binary targets of the same shape.
    gamma
        Focusing exponent (2 in the study).
    alpha
        Optional weight of the positive class (``alpha`` for ones, ``1 - alpha`` for zeros).
    from_logits
        Whether ``pred`` holds logits.

    Returns
    -------
    torch.Tensor
        Scalar mean focal loss.

    Examples
    --------
    >>> p = torch.tensor([0.9, 0.2]); y = torch.tensor([1.0, 0.0])
    >>> round(float(focal_loss(p, y)), 5)  # mean(0.1**2 * -log 0.9, 0.2**2 * -log 0.8)
    0.00499
    """
    target = target.to(pred.dtype)
    if from_logits:
        return _FocalWithLogits.apply(pred, target, float(gamma), alpha) / pred.numel()
    else:
        p = pred.clamp(_EPS, 1.0 - _EPS)
        log_pt = torch.where(target > 0.5, torch.log(p), torch.log1p(-p))
    pt = log_pt.exp()
    loss = -((1.0 - pt) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return loss.mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor,
                  reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
    """KL divergence of ``N(mu, exp(logvar))`` from ``N(0, I)``, summed over latent dimensions, batch mean.

    Parameters
    ----------
    mu, logvar
        (B, D) posterior parameters.
    reduce
        Sum over processes (the mean over the global batch); ``None``: this batch.

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> float(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)))
    0.0
    """
    from ._distributed import mean_of

    return mean_of(-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(1), reduce)


def spot_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor | None = None, *,
              dice_weight: float = 0.8, focal_weight: float = 0.4, gamma: float = 2.0,
              alpha: float | None = None, gene_weighting: bool = True, sparse: bool = False,
              pos: torch.Tensor | None = None,
              reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Spot-plane reconstruction loss: ``dice_weight * Dice + focal_weight * Focal`` (the study: 0.8 and 0.4).

    The Dice term uses the dynamic :func:`gene_weights` of the batch (from ``counts``, or the spot-pixel counts
    of ``target`` when ``counts`` is None); the Focal term is the unweighted mean over every pixel of every gene,
    so false positives in genes a cell lacks are penalised too.

    Parameters
    ----------
    logits
        (B, G, H, W) decoder logits.
    target
        (B, G, H, W) binary spot planes.
    counts
        (B, G) transcripts per cell and gene.
    dice_weight, focal_weight, gamma, alpha
        Term weights and focal parameters.
    gene_weighting
        Use dynamic gene weights (else equal weights over the genes present in the batch).
    sparse
        Compute both terms with :func:`dice_focal_sparse` from the ones of ``target`` (same values and
        gradient, faster on sparse planes).
    pos
        With ``sparse``: the flat (row-major) indices of ``target > 0.5`` when the caller has them (see
        :func:`spot_positions`); ``None``: found here.
    reduce
        Sum over processes: the loss of the global batch of data-parallel training (needs ``sparse``).

    Returns
    -------
    dict
        ``{"dice", "focal", "spots"}`` scalars.

    Examples
    --------
    >>> y = (torch.rand(2, 3, 8, 8) < 0.2).float()
    >>> out = spot_loss(torch.zeros(2, 3, 8, 8), y)
    >>> sorted(out)
    ['dice', 'focal', 'spots']
    """
    logits = logits.float()
    target = target.float()
    w = None
    if gene_weighting:
        c = counts if counts is not None else target.sum((2, 3))
        w = gene_weights(c, reduce)
    if sparse:
        if pos is None:
            pos = spot_positions(target)[1]
        dice, focal = dice_focal_sparse(logits, pos, w, gamma=gamma, alpha=alpha, reduce=reduce)
    elif reduce is not None:
        raise ValueError("data-parallel training needs the sparse spot loss (sparse_loss=True)")
    else:
        dice = dice_loss(torch.sigmoid(logits), target, w)
        focal = focal_loss(logits, target, gamma=gamma, alpha=alpha, from_logits=True)
    return {"dice": dice, "focal": focal, "spots": dice_weight * dice + focal_weight * focal}


def spot_positions(spots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row-major) indices of the non-zero pixels of spot planes, and of those above 0.5 (the loss targets).

    One ``nonzero`` pass over the (B, genes, S, S) batch serves both the sparse first convolution and the sparse
    loss (two passes cost ~9 % of an ls1_cpu training step).

    Parameters
    ----------
    spots
        (B, G, H, W) spot planes (binary in practice).

    Returns
    -------
    tuple of torch.Tensor
        Indices of the non-zeros and the subset of them whose value exceeds 0.5.

    Examples
    --------
    >>> nz, pos = spot_positions(torch.tensor([[[[0.0, 1.0, 0.3]]]]))
    >>> nz.tolist(), pos.tolist()
    ([1, 2], [1])
    """
    flat = spots.reshape(-1)
    nz = torch.nonzero(flat).squeeze(1)
    return nz, nz[flat[nz] > 0.5]


def stain_loss(logits: torch.Tensor, target: torch.Tensor,
               reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
    """L2 (mean squared error) between ``sigmoid(logits)`` and stain crops in [0, 1].

    Parameters
    ----------
    logits
        (B, C, H, W) decoder logits.
    target
        (B, C, H, W) stain crops.
    reduce
        Sum over processes (the mean over the global batch); ``None``: this batch.

    Returns
    -------
    torch.Tensor
        Scalar mean squared error.

    Examples
    --------
    >>> float(stain_loss(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)))
    0.0
    """
    if reduce is None:
        return F.mse_loss(torch.sigmoid(logits.float()), target.float())
    from ._distributed import mean_of

    return mean_of((torch.sigmoid(logits.float()) - target.float()).pow(2), reduce)


def count_loss(pred: torch.Tensor, counts: torch.Tensor,
               reduce: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
    """Mean squared error between predicted and observed ``log1p`` per-gene transcript totals of each crop.

    Parameters
    ----------
    pred
        (B, G) predictions of ``log1p(counts)``.
    counts
        (B, G) transcripts per cell and gene.
    reduce
        Sum over processes (the mean over the global batch); ``None``: this batch.

    Returns
    -------
    torch.Tensor
        Scalar mean squared error.

    Examples
    --------
    >>> round(float(count_loss(torch.zeros(1, 2), torch.tensor([[0.0, 1.718281828]]))), 4)  # (0 + 1) / 2
    0.5
    """
    if reduce is None:
        return F.mse_loss(pred.float(), torch.log1p(counts.float()))
    from ._distributed import mean_of

    return mean_of((pred.float() - torch.log1p(counts.float())).pow(2), reduce)
