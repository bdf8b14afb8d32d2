"""Losses of the cell-crop VAEs: Dice + Focal for spot planes with dynamic gene weights, L2 for stains, KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gene_weights", "dice_loss", "focal_loss", "dice_focal_sparse", "kl_divergence", "spot_loss",
           "stain_loss", "count_loss"]

_EPS = 1e-7


def gene_weights(counts: torch.Tensor) -> torch.Tensor:
    """Dynamic per-gene weights of a batch so that rare genes are not ignored.

    For each cell, a gene's weight is the inverse of its expression rescaled to the cell's total
    (``total / count``, i.e. the inverse of the gene's fraction of the cell's transcripts; 0 for genes the cell
    lacks); weights are averaged over the batch and normalised to sum to 1. A batch without any transcript gets
    uniform weights.

    Parameters
    ----------
    counts
        (B, G) transcript counts per cell and gene (or spot-pixel counts).

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
    w = torch.where(counts > 0, total / counts.clamp_min(_EPS), torch.zeros_like(counts)).mean(0)
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


class _DiceFocalSparse(torch.autograd.Function):
    """``[Dice, Focal]`` of logits against binary targets given only as the flat indices of their ones.

    With ``p = sigmoid(x)``, every pixel is first treated as background (focal ``p^g softplus(x)``, Dice
    denominator ``sum p``); the few positives then get their corrections (focal ``(1-p)^g softplus(-x)`` instead,
    Dice intersection ``sum p`` over them). The gradient is likewise one dense expression plus a scatter at the
    positives. No dense target tensor is read or compared, and there are about half the element-wise passes of
    the dense autograd formulation.
    """

    @staticmethod
    def forward(ctx, x, pos, cls, n_pos, weights, gamma, alpha):  # type: ignore[override]
        # x: (B, G, H, W) logits; pos: flat indices of ones; cls: their gene; n_pos: (G,) ones per gene
        B, G = x.shape[0], x.shape[1]
        xf = x.reshape(-1)
        p = torch.sigmoid(x)
        sp = F.softplus(x)  # -log(1 - p)
        a0 = 1.0 if alpha is None else 1.0 - alpha
        a1 = 1.0 if alpha is None else alpha
        pg = p * p if gamma == 2.0 else p.pow(gamma)
        focal_sum = torch.dot(pg.view(-1), sp.view(-1)) * a0  # one fused pass instead of mul + sum
        del pg
        xp = xf[pos]
        pp = torch.sigmoid(xp)
        f0p = pp.pow(gamma) * F.softplus(xp)
        f1p = (1.0 - pp).pow(gamma) * F.softplus(-xp)
        focal_sum = focal_sum + (a1 * f1p - a0 * f0p).sum()
        n = x.numel()
        psum = p.sum((0, 2, 3))
        inter = torch.zeros(G, dtype=x.dtype, device=x.device).index_add_(0, cls, pp)
        card = (psum + n_pos).clamp_min(_EPS)
        per_class = 1.0 - 2.0 * inter / card
        w = weights.to(x.dtype)
        wsum = w.sum()
        wn = w / wsum if wsum > 0 else torch.zeros_like(w)
        dice = (per_class * wn).sum()
        ctx.save_for_backward(p, sp, pos, cls, pp, xp, inter, card, wn)
        ctx.gamma, ctx.a0, ctx.a1, ctx.n, ctx.shape = gamma, a0, a1, n, (B, G)
        return torch.stack([dice, focal_sum / n])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        p, sp, pos, cls, pp, xp, inter, card, wn = ctx.saved_tensors
        gd, gf = grad[0], grad[1]
        g, n = ctx.gamma, ctx.n
        cf = gf * ctx.a0 / n
        # background focal derivative p^g (g (1 - p) softplus(x) + p), Dice derivative 2 inter/card^2 p (1 - p)
        u = 1.0 - p
        out = torch.addcmul(p, u, sp, value=g)
        out.mul_(p * p if g == 2.0 else p.pow(g)).mul_(cf)
        cd = (gd * wn * 2.0 * inter / card.pow(2)).view(1, -1, 1, 1)
        out.addcmul_(u.mul_(p), cd)
        # corrections at the positives: focal f1 - f0 and the Dice intersection term -2/card p (1 - p)
        up = 1.0 - pp
        d0 = pp.pow(g) * (g * up * F.softplus(xp) + pp)
        d1 = -(up.pow(g)) * (g * pp * F.softplus(-xp) + up)
        corr = (gf / n) * (ctx.a1 * d1 - ctx.a0 * d0) - (gd * wn[cls] * 2.0 / card[cls]) * pp * up
        out.view(-1).index_add_(0, pos, corr)
        return out, None, None, None, None, None, None


def dice_focal_sparse(logits: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor | None = None, *,
                      gamma: float = 2.0, alpha: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
    x = (logits if logits.dtype == torch.float64 else logits.float()).contiguous()
    B, G, H, W = x.shape
    pos = pos.to(device=x.device, dtype=torch.int64).reshape(-1)
    cls = torch.div(pos, H * W, rounding_mode="floor") % G
    n_pos = torch.bincount(cls, minlength=G).to(x.dtype)
    if weights is None:
        weights = (n_pos > 0).to(x.dtype)
    out = _DiceFocalSparse.apply(x, pos, cls, n_pos, weights.detach(), float(gamma), alpha)
    return out[0], out[1]


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


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, exp(logvar))`` from ``N(0, I)``, summed over latent dimensions, batch mean.

    Parameters
    ----------
    mu, logvar
        (B, D) posterior parameters.

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> float(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)))
    0.0
    """
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def spot_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor | None = None, *,
              dice_weight: float = 0.8, focal_weight: float = 0.4, gamma: float = 2.0,
              alpha: float | None = None, gene_weighting: bool = True, sparse: bool = False) -> dict[str, torch.Tensor]:
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
        w = gene_weights(c)
    if sparse:
        pos = torch.nonzero(target.reshape(-1) > 0.5).squeeze(1)
        dice, focal = dice_focal_sparse(logits, pos, w, gamma=gamma, alpha=alpha)
    else:
        dice = dice_loss(torch.sigmoid(logits), target, w)
        focal = focal_loss(logits, target, gamma=gamma, alpha=alpha, from_logits=True)
    return {"dice": dice, "focal": focal, "spots": dice_weight * dice + focal_weight * focal}


def stain_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L2 (mean squared error) between ``sigmoid(logits)`` and stain crops in [0, 1].

    Parameters
    ----------
    logits
        (B, C, H, W) decoder logits.
    target
        (B, C, H, W) stain crops.

    Returns
    -------
    torch.Tensor
        Scalar mean squared error.

    Examples
    --------
    >>> float(stain_loss(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)))
    0.0
    """
    return F.mse_loss(torch.sigmoid(logits.float()), target.float())


def count_loss(pred: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and observed ``log1p`` per-gene transcript totals of each crop.

    Parameters
    ----------
    pred
        (B, G) predictions of ``log1p(counts)``.
    counts
        (B, G) transcripts per cell and gene.

    Returns
    -------
    torch.Tensor
        Scalar mean squared error.

    Examples
    --------
    >>> round(float(count_loss(torch.zeros(1, 2), torch.tensor([[0.0, 1.718281828]]))), 4)  # (0 + 1) / 2
    0.5
    """
    return F.mse_loss(pred.float(), torch.log1p(counts.float()))
