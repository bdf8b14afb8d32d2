"""PyTorch modules of the cell-crop VAEs: encoder (with an exact sparse first convolution), decoders, the VAE.

The encoder is five blocks of ``Conv2d(kernel 3, stride 2, no padding) -> BatchNorm -> LeakyReLU(0.1)`` followed
by linear heads for the posterior mean and log-variance. Each decoder mirrors it with transposed convolutions
(the output padding of every block is chosen so the sizes retrace the encoder's exactly, so the final trim is a
no-op safeguard), then a 3x3 convolution to the output channels; ``sigmoid`` of its logits is the reconstruction.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._config import N_BLOCKS, VAEConfig, encoder_sizes

__all__ = ["sparse_conv3x3s2", "FirstConv", "ConvEncoder", "ConvDecoder", "CropVAEModule"]


# Polyphase view of a kernel-3 stride-2 convolution: input pixel (r, c) = (2 rh + p, 2 ch + q) only meets kernel
# rows kr = p (mod 2) and then lands on output row i = rh - kr // 2 (same for columns). So each of the nine taps
# is a sparse (output pixels x channels) matrix built from the non-zero list, and the layer is the sum of the
# nine sparse-dense products; the weight gradient of a tap is its transposed product with the output gradient.
_PHASES: dict[tuple[int, int], list[tuple[int, int]]] = {
    (p, q): [(kr, kc) for kr in ((0, 2) if p == 0 else (1,)) for kc in ((0, 2) if q == 0 else (1,))]
    for p in (0, 1)
    for q in (0, 1)
}


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    order = torch.argsort(rows, stable=True)
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse invariant checks are implicitly disabled"
        return torch.sparse_csr_tensor(crow, cols[order], vals[order], shape)


def _tap_matrices(x: torch.Tensor, flat: torch.Tensor, ho: int, wo: int) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """For each kernel tap: a CSR (output pixels x channels) of the input pixels it meets, and its transpose."""
    b_sz, c_sz, h, w = x.shape
    vals = x.reshape(-1)[flat]
    col = flat % w
    t = flat // w
    row = t % h
    t = t // h
    ch = t % c_sz
    b = t // c_sz
    par = (row & 1) * 2 + (col & 1)
    n_out = b_sz * ho * wo
    mats = []
    for (p, q), taps in _PHASES.items():
        m = par == p * 2 + q
        bp, rh, chh, cp, vp = b[m], row[m] >> 1, col[m] >> 1, ch[m], vals[m]
        for kr, kc in taps:
            i, j = rh - kr // 2, chh - kc // 2
            ok = (i >= 0) & (i < ho) & (j >= 0) & (j < wo)
            out_idx = (bp[ok] * ho + i[ok]) * wo + j[ok]
            cc, vv = cp[ok], vp[ok]
            mats.append((kr, kc, _csr(out_idx, cc, vv, (n_out, c_sz)), _csr(cc, out_idx, vv, (c_sz, n_out))))
    return mats


class _SparseConv(torch.autograd.Function):
    """Kernel-3 stride-2 convolution of a sparse input; gradient for the weight only."""

    @staticmethod
    def forward(ctx, weight, mats, shape):  # type: ignore[override]
        b_sz, ho, wo = shape
        out = weight.new_zeros(b_sz * ho * wo, weight.shape[0])
        for kr, kc, s, _ in mats:
            out.addmm_(s, weight[:, :, kr, kc].t())
        ctx.mats = mats
        ctx.wshape = weight.shape
        return out.view(b_sz, ho, wo, -1).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        g2 = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
        gw = grad.new_zeros(ctx.wshape)
        for kr, kc, _, st in ctx.mats:
            gw[:, :, kr, kc] = (st @ g2).t()
        return gw, None, None


def sparse_conv3x3s2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     max_density: float | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``conv2d(x, weight, bias, stride=2, padding=0)`` for a kernel-3 weight, computed from non-zero pixels.

    Input pixel ``(r, c) = (2 rh + p, 2 ch + q)`` only meets the kernel taps ``kr = p (mod 2)``, ``kc = q (mod 2)``
    and lands on output ``(rh - kr // 2, ch - kc // 2)``. So for each of the four parity phases the layer is a
    sparse (phase pixels x channels) matrix - built from ``torch.nonzero`` in one pass - times the stacked tap
    weights, plus shifted adds on the small output grid. The weight gradient is the transposed sparse product.
    Cost scales with the number of non-zeros, not with ``H * W * C``. Pure torch (CPU and CUDA); ``x`` gets no
    gradient (it is data); any values work, binary spot planes are the intended case.

    Parameters
    ----------
    x
        (B, C, H, W) input, typically binary spot planes with well under 1 % of ones.
    weight
        (O, C, 3, 3) convolution weight.
    bias
        Optional (O,) bias.
    max_density
        When the fraction of non-zeros exceeds this, compute the dense convolution instead (the sparse path is
        slower above about 1.5 % on CPU, see ``benchmarks/results/vae.md``). ``None``: always sparse.
    index
        The flat (row-major) indices of the non-zeros of ``x`` when the caller has them already (the training
        loop computes them once per batch for this layer and the sparse loss); ``None``: computed here.

    Returns
    -------
    torch.Tensor
        (B, O, (H - 3) // 2 + 1, (W - 3) // 2 + 1), equal to the dense convolution up to float rounding.

    Examples
    --------
    >>> x = (torch.rand(2, 5, 15, 15) < 0.05).float()
    >>> w = torch.randn(4, 5, 3, 3)
    >>> torch.allclose(sparse_conv3x3s2(x, w), F.conv2d(x, w, stride=2), atol=1e-5)
    True
    """
    b_sz, c_sz, h, w = x.shape
    if weight.shape[1:] != (c_sz, 3, 3):
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit input channels {c_sz} (kernel 3)")
    ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    with torch.autocast(device_type=x.device.type, enabled=False):
        wt = weight.float()
        xd = x.detach().to(wt.dtype)
        flat = torch.nonzero(xd.reshape(-1)).squeeze(1) if index is None else index.to(xd.device)
        if max_density is not None and flat.numel() > max_density * xd.numel():
            return F.conv2d(x, weight, bias, stride=2)
        mats = _tap_matrices(xd, flat, ho, wo)
        out = _SparseConv.apply(wt, mats, (b_sz, ho, wo))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.contiguous()


class FirstConv(nn.Module):
    """The first encoder convolution over ``[spot planes, stain channels]``, sparse for spots and dense for stains.

    One :class:`torch.nn.Conv2d` holds the weight, so a checkpoint is the same whichever path computes it; a
    convolution is linear in its input channels, so the output is the sparse part plus the dense part.

    Parameters
    ----------
    n_spot
        Number of spot-plane channels (first in the input).
    n_stain
        Number of stain channels.
    out_channels
        Output width.
    sparse
        Compute the spot part from non-zero pixels (:func:`sparse_conv3x3s2`).
    max_density
        Above this fraction of non-zero spot pixels in a batch the dense convolution is used.

    Examples
    --------
    >>> conv = FirstConv(4, 1, 8, sparse=True)
    >>> conv(torch.zeros(2, 4, 63, 63), torch.zeros(2, 1, 63, 63)).shape
    torch.Size([2, 8, 31, 31])
    """

    def __init__(self, n_spot: int, n_stain: int, out_channels: int, *, sparse: bool = False,
                 max_density: float | None = 0.015):
        super().__init__()
        self.max_density = max_density
        self.n_spot, self.n_stain = int(n_spot), int(n_stain)
        self.conv = nn.Conv2d(self.n_spot + self.n_stain, out_channels, kernel_size=3, stride=2, padding=0)
        self.sparse = bool(sparse)

    def forward(self, spots: torch.Tensor | None, stains: torch.Tensor | None,
                spot_index: torch.Tensor | None = None) -> torch.Tensor:
        if not self.sparse or spots is None:
            parts = [t for t in (spots, stains) if t is not None]
            return self.conv(parts[0] if len(parts) == 1 else torch.cat(parts, 1))
        w = self.conv.weight
        out = sparse_conv3x3s2(spots, w[:, : self.n_spot], self.conv.bias, max_density=self.max_density,
                               index=spot_index)
        if stains is not None:
            out = out + F.conv2d(stains, w[:, self.n_spot :], None, stride=2)
        return out


def _block(conv: nn.Module, width: int, slope: float) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(width), nn.LeakyReLU(slope))


class ConvEncoder(nn.Module):
    """Five ``Conv(k3, s2, p0) -> BN -> LeakyReLU`` blocks and linear heads for mean and log-variance.

    Parameters
    ----------
    n_spot, n_stain
        Input channels (spot planes first, then stains).
    crop_size
        Input size (>= 63).
    widths
        Five channel widths.
    latent_dim
        Latent size.
    negative_slope
        LeakyReLU slope.
    sparse
        Sparse first convolution for the spot planes.

    Examples
    --------
    >>> enc = ConvEncoder(3, 0, 64, (4, 4, 8, 8, 8), 5)
    >>> mu, logvar = enc(torch.zeros(2, 3, 64, 64), None)
    >>> mu.shape
    torch.Size([2, 5])
    """

    def __init__(self, n_spot: int, n_stain: int, crop_size: int, widths: tuple[int, ...], latent_dim: int,
                 negative_slope: float = 0.1, *, sparse: bool = False):
        super().__init__()
        self.sizes = encoder_sizes(crop_size)
        self.first = FirstConv(n_spot, n_stain, widths[0], sparse=sparse)
        self.first_post = nn.Sequential(nn.BatchNorm2d(widths[0]), nn.LeakyReLU(negative_slope))
        self.blocks = nn.Sequential(
            *[
                _block(nn.Conv2d(widths[k - 1], widths[k], 3, stride=2, padding=0), widths[k], negative_slope)
                for k in range(1, N_BLOCKS)
            ]
        )
        n_flat = widths[-1] * self.sizes[-1] ** 2
        self.fc_mu = nn.Linear(n_flat, latent_dim)
        self.fc_logvar = nn.Linear(n_flat, latent_dim)

    def forward(self, spots: torch.Tensor | None, stains: torch.Tensor | None,
                spot_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.blocks(self.first_post(self.first(spots, stains, spot_index))).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder` with transposed convolutions; returns logits of the reconstruction.

    A linear layer maps the latent to the encoder's last feature map; four ``ConvTranspose2d(k3, s2) -> BN ->
    LeakyReLU`` blocks retrace the encoder's sizes (each block's output padding, 0 or 1, is chosen for that) and
    a fifth transposed convolution maps to ``out_channels`` at the input size; the output is trimmed to the crop
    size (a safeguard) and ``sigmoid`` of these logits is the reconstruction.

    Parameters
    ----------
    out_channels
        Reconstructed channels.
    crop_size
        Output size.
    widths
        The encoder's five widths (used in reverse).
    latent_dim
        Latent size.
    negative_slope
        LeakyReLU slope.
    channels_last
        Run the last transposed convolution in channels-last memory (its weight is stored so), which returns
        channels-last logits. For the many-plane spot decoder this layer dominates a CPU training step and runs
        2.5x faster so (ls1_cpu, 16 x 16 -> 241 planes, 31 -> 64 px, forward + backward, one thread: 0.36 s ->
        0.14 s); the spot loss reads either layout in place.

    Examples
    --------
    >>> dec = ConvDecoder(3, 64, (4, 4, 8, 8, 8), 5)
    >>> dec(torch.zeros(2, 5)).shape
    torch.Size([2, 3, 64, 64])
    """

    def __init__(self, out_channels: int, crop_size: int, widths: tuple[int, ...], latent_dim: int,
                 negative_slope: float = 0.1, *, channels_last: bool = False):
        super().__init__()
        self.sizes = encoder_sizes(crop_size)
        self.channels_last = bool(channels_last)
        self.widths = tuple(widths)
        self.fc = nn.Linear(latent_dim, widths[-1] * self.sizes[-1] ** 2)
        rev = list(reversed(widths)) + [out_channels]
        layers: list[nn.Module] = []
        for k in range(N_BLOCKS):
            s_in, s_out = self.sizes[N_BLOCKS - k], self.sizes[N_BLOCKS - k - 1]
            pad = s_out - (2 * s_in + 1)  # 0 or 1: retrace the encoder's sizes exactly
            conv = nn.ConvTranspose2d(rev[k], rev[k + 1], 3, stride=2, padding=0, output_padding=pad)
            layers.append(_block(conv, rev[k + 1], negative_slope) if k < N_BLOCKS - 1 else conv)
        self.blocks = nn.Sequential(*layers)
        if self.channels_last:
            last = self.blocks[-1]
            last.weight.data = last.weight.data.contiguous(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.sizes[-1]
        h = self.blocks[:-1](self.fc(z).view(z.shape[0], self.widths[-1], s, s))
        last = self.blocks[-1]
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
            # bias added in place after the convolution: the bias gradient is then a plain sum, where inside
            # the convolution's backward it costs more than the input and weight gradients together (ls1_cpu
            # spot decoder, 16 cells, one thread: backward 91 ms -> 41 ms + a 10 ms sum)
            out = F.conv_transpose2d(h, last.weight, None, stride=last.stride, padding=last.padding,
                                     output_padding=last.output_padding)
            out = out.add_(last.bias.view(1, -1, 1, 1))
        else:
            out = last(h)
        n = self.sizes[0]
        return out if out.shape[-1] == n and out.shape[-2] == n else out[..., :n, :n]


class CropVAEModule(nn.Module):
    """One encoder over the concatenated input and one decoder per modality (spots and/or stains).

    LS1 (spots) and LS2 (stains) have one decoder; LS3-LS5 have two (spot planes and stains).

    Parameters
    ----------
    config
        The :class:`VAEConfig` (architecture fields).
    n_genes
        Number of spot planes (0 when ``config.spots`` is False).
    n_channels
        Number of stain channels.
    sparse
        Sparse first convolution for the spot planes.

    Examples
    --------
    >>> cfg = VAEConfig(spots=True, channels=("DAPI",), crop_size=64, widths=(4, 4, 8, 8, 8), latent_dim=5)
    >>> m = CropVAEModule(cfg, n_genes=3, n_channels=1)
    >>> out = m(torch.zeros(2, 3, 64, 64), torch.zeros(2, 1, 64, 64))
    >>> out["spot_logits"].shape, out["stain_logits"].shape
    (torch.Size([2, 3, 64, 64]), torch.Size([2, 1, 64, 64]))
    """

    LOGVAR_RANGE = (-30.0, 20.0)

    def __init__(self, config: VAEConfig, n_genes: int, n_channels: int, *, sparse: bool = False):
        super().__init__()
        self.n_genes = int(n_genes) if config.spots else 0
        self.n_channels = int(n_channels)
        if config.spots and self.n_genes < 1:
            raise ValueError("a spot model needs at least one gene plane")
        c = config
        self.encoder = ConvEncoder(self.n_genes, self.n_channels, c.crop_size, c.widths, c.latent_dim,
                                   c.negative_slope, sparse=sparse)
        self.spot_decoder = (
            ConvDecoder(self.n_genes, c.crop_size, c.widths, c.latent_dim, c.negative_slope, channels_last=True)
            if self.n_genes
            else None
        )
        self.stain_decoder = (
            ConvDecoder(self.n_channels, c.crop_size, c.widths, c.latent_dim, c.negative_slope)
            if self.n_channels
            else None
        )
        # auxiliary head: log1p of the crop's per-gene transcript totals from the latent (config.count_weight)
        self.count_head = nn.Linear(c.latent_dim, self.n_genes) if (self.n_genes and c.count_weight > 0) else None

        with torch.no_grad():
            if c.logvar_init is not None:
                self.encoder.fc_logvar.bias.fill_(float(c.logvar_init))
            if c.spot_prior is not None and self.spot_decoder is not None:
                p = float(c.spot_prior)
                self.spot_decoder.blocks[-1].bias.fill_(math.log(p / (1.0 - p)))

    @property
    def sparse(self) -> bool:
        return self.encoder.first.sparse

    @sparse.setter
    def sparse(self, value: bool) -> None:
        self.encoder.first.sparse = bool(value)

    def encode(self, spots: torch.Tensor | None, stains: torch.Tensor | None,
               spot_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and (clamped) log-variance (``spot_index``: flat non-zero indices of ``spots``)."""
        mu, logvar = self.encoder(spots if self.n_genes else None, stains if self.n_channels else None,
                                  spot_index if self.n_genes else None)
        return mu, logvar.clamp(*self.LOGVAR_RANGE)

    def forward(self, spots: torch.Tensor | None, stains: torch.Tensor | None, *, sample: bool = True,
                generator: torch.Generator | None = None,
                spot_index: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(spots, stains, spot_index)
        if sample:
            eps = noise if noise is not None else torch.randn(mu.shape, generator=generator, device=mu.device,
                                                              dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        out = {"mu": mu, "logvar": logvar, "z": z}
        if self.spot_decoder is not None:
            out["spot_logits"] = self.spot_decoder(z)
        if self.stain_decoder is not None:
            out["stain_logits"] = self.stain_decoder(z)
        if self.count_head is not None:
            out["count_pred"] = self.count_head(z)
        return out
