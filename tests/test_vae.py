"""Unit tests of the cell-crop VAE building blocks: losses, gene weights, sparse first layer, shapes, configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stmorph import StmorphInputError
from stmorph.models.vae import (
    PRESETS,
    ConvDecoder,
    CropVAEModule,
    FirstConv,
    VAEConfig,
    compute_loss,
    dice_loss,
    encoder_sizes,
    focal_loss,
    gene_weights,
    get_preset,
    kl_divergence,
    min_crop_size,
    sparse_conv3x3s2,
    spot_loss,
    stain_loss,
)

TINY = (4, 4, 8, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a shared, loaded 2-core machine spin-wait badly
    yield
    torch.set_num_threads(n)


# -- losses -------------------------------------------------------------------------------------------------
def test_dice_hand_computed():
    # gene 0: p = [1, .5, 0, 0], y = [1, 1, 0, 1] -> inter 1.5, |p| 1.5, |y| 3 -> dice 3/4.5
    # gene 1: p = [.2, 0, 0, 0], y = [1, 0, 0, 0] -> inter .2, |p| .2, |y| 1 -> dice .4/1.2
    p = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]], [[0.2, 0.0], [0.0, 0.0]]]])
    y = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]])
    l0, l1 = 1 - 3 / 4.5, 1 - 0.4 / 1.2
    assert dice_loss(p, y).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    w = torch.tensor([3.0, 1.0])
    assert dice_loss(p, y, w).item() == pytest.approx((3 * l0 + l1) / 4, abs=1e-6)
    # a class absent from the target is left out of the unweighted mean
    y2 = y.clone()
    y2[:, 1] = 0
    assert dice_loss(p, y2).item() == pytest.approx(l0, abs=1e-6)
    # perfect prediction -> 0; disjoint -> 1
    assert dice_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(1 - y, y).item() == pytest.approx(1.0, abs=1e-6)


def test_focal_hand_computed_and_logits_agree():
    p = torch.tensor([0.9, 0.2, 0.6, 0.05])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    pt = np.array([0.9, 0.8, 0.4, 0.05])
    expected = np.mean(-((1 - pt) ** 2) * np.log(pt))
    assert focal_loss(p, y).item() == pytest.approx(expected, rel=1e-5)
    logits = torch.log(p / (1 - p))
    assert focal_loss(logits, y, from_logits=True).item() == pytest.approx(expected, rel=1e-5)
    # gamma 0 is binary cross-entropy; the sigmoid is applied once (not twice as in the reference)
    assert focal_loss(p, y, gamma=0.0).item() == pytest.approx(F.binary_cross_entropy(p, y).item(), rel=1e-5)
    twice = focal_loss(torch.sigmoid(p), y).item()
    assert abs(twice - expected) > 0.05
    # alpha weights positives by alpha and negatives by 1 - alpha
    at = np.array([0.25, 0.75, 0.75, 0.25])
    assert focal_loss(p, y, alpha=0.25).item() == pytest.approx(np.mean(at * -((1 - pt) ** 2) * np.log(pt)), rel=1e-5)


def test_gene_weights_hand_computed():
    counts = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    # cell 0: total 4 -> [4/3, 4, 0]; cell 1: total 4 -> [0, 2, 2]; batch mean [2/3, 3, 1]; sum 14/3
    w = gene_weights(counts)
    assert torch.allclose(w, torch.tensor([2 / 14, 9 / 14, 3 / 14]), atol=1e-6)
    assert w.sum().item() == pytest.approx(1.0)
    # rare gene (1 of 100 transcripts) outweighs a common one
    w2 = gene_weights(torch.tensor([[99.0, 1.0]]))
    assert w2[1] > 0.98
    # no transcripts at all: uniform
    assert torch.allclose(gene_weights(torch.zeros(2, 4)), torch.full((4,), 0.25))


def test_spot_loss_combines_terms_and_weights_rare_genes():
    torch.manual_seed(0)
    y = torch.zeros(2, 2, 8, 8)
    y[:, 0, :4] = 1  # common gene
    y[:, 1, 0, 0] = 1  # rare gene
    logits = torch.randn(2, 2, 8, 8)
    out = spot_loss(logits, y, torch.tensor([[32.0, 1.0], [32.0, 1.0]]))
    p = torch.sigmoid(logits)
    w = gene_weights(torch.tensor([[32.0, 1.0], [32.0, 1.0]]))
    assert out["dice"].item() == pytest.approx(dice_loss(p, y, w).item(), rel=1e-5)
    assert out["focal"].item() == pytest.approx(focal_loss(p, y).item(), rel=1e-4)
    assert out["spots"].item() == pytest.approx(0.8 * out["dice"].item() + 0.4 * out["focal"].item(), rel=1e-6)
    # predicting the rare gene right matters much more with gene weighting than without
    good_rare = logits.clone()
    good_rare[:, 1] = torch.where(y[:, 1] > 0, 10.0, -10.0)
    gain_w = out["dice"] - spot_loss(good_rare, y, torch.tensor([[32.0, 1.0], [32.0, 1.0]]))["dice"]
    gain_u = spot_loss(logits, y, gene_weighting=False)["dice"] - spot_loss(good_rare, y, gene_weighting=False)["dice"]
    assert gain_w > 1.5 * gain_u


def test_stain_and_kl():
    t = torch.rand(2, 1, 4, 4)
    logits = torch.randn(2, 1, 4, 4)
    assert stain_loss(logits, t).item() == pytest.approx(((torch.sigmoid(logits) - t) ** 2).mean().item(), rel=1e-6)
    mu, lv = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    # 0.5 * (mu^2 + var - 1 - log var) summed: 0.5*(1) + 0.5*(4 - 1 - log 4)
    assert kl_divergence(mu, lv).item() == pytest.approx(0.5 + 0.5 * (3 - math.log(4)), rel=1e-6)


# -- sparse first layer -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,density", [(63, 0.02), (64, 0.005), (100, 0.01), (17, 0.3)])
def test_sparse_conv_equals_dense_forward_and_weight_grad(size, density):
    g = torch.Generator().manual_seed(size)
    x = (torch.rand(3, 7, size, size, generator=g) < density).float()
    w = torch.randn(5, 7, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    gout = torch.randn(3, 5, (size - 3) // 2 + 1, (size - 3) // 2 + 1, generator=g)
    yd = F.conv2d(x, w, b, stride=2)
    yd.backward(gout)
    gw_d, gb_d = w.grad.clone(), b.grad.clone()
    w.grad = b.grad = None
    ys = sparse_conv3x3s2(x, w, b)
    ys.backward(gout)
    assert ys.shape == yd.shape
    assert torch.allclose(ys, yd, atol=1e-5)
    assert torch.allclose(w.grad, gw_d, atol=1e-4)
    assert torch.allclose(b.grad, gb_d, atol=1e-5)


def test_sparse_conv_non_binary_and_empty():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 21, 21, generator=g) * (torch.rand(2, 3, 21, 21, generator=g) < 0.1)
    w = torch.randn(4, 3, 3, 3, generator=g)
    assert torch.allclose(sparse_conv3x3s2(x, w), F.conv2d(x, w, stride=2), atol=1e-5)
    z = torch.zeros(2, 3, 21, 21)
    assert torch.equal(sparse_conv3x3s2(z, w), torch.zeros(2, 4, 10, 10))
    with pytest.raises(ValueError, match="does not fit"):
        sparse_conv3x3s2(x, torch.randn(4, 2, 3, 3))


def test_first_conv_sparse_spots_plus_dense_stains_equals_dense():
    g = torch.Generator().manual_seed(2)
    spots = (torch.rand(2, 6, 64, 64, generator=g) < 0.01).float()
    stains = torch.rand(2, 2, 64, 64, generator=g)
    conv = FirstConv(6, 2, 8, sparse=False)
    yd = conv(spots, stains)
    yd.sum().backward()
    gd = conv.conv.weight.grad.clone()
    conv.conv.weight.grad = None
    conv.sparse = True
    ys = conv(spots, stains)
    ys.sum().backward()
    assert torch.allclose(ys, yd, atol=1e-5)
    assert torch.allclose(conv.conv.weight.grad, gd, atol=1e-4)
    # above max_density the dense path is taken (same numbers)
    conv.max_density = 1e-4
    assert torch.allclose(conv(spots, stains), yd, atol=1e-5)


def test_whole_model_sparse_equals_dense():
    cfg = VAEConfig(spots=True, channels=("DAPI",), crop_size=64, widths=TINY, latent_dim=6)
    torch.manual_seed(0)
    m = CropVAEModule(cfg, n_genes=5, n_channels=1, sparse=False).eval()
    spots = (torch.rand(3, 5, 64, 64) < 0.01).float()
    stains = torch.rand(3, 1, 64, 64)
    a = m(spots, stains, sample=False)
    m.sparse = True
    b = m(spots, stains, sample=False)
    for k in ("mu", "spot_logits", "stain_logits"):
        assert torch.allclose(a[k], b[k], atol=1e-4)


# -- architecture and presets -------------------------------------------------------------------------------
def test_sizes_and_minimum_crop():
    assert encoder_sizes(63) == [63, 31, 15, 7, 3, 1]
    assert encoder_sizes(100) == [100, 49, 24, 11, 5, 2]
    assert min_crop_size() == 63
    with pytest.raises(StmorphInputError, match="crop_size >= 63"):
        VAEConfig(crop_size=62)
    with pytest.raises(StmorphInputError, match="neither spots nor stain"):
        VAEConfig(spots=False)
    with pytest.raises(StmorphInputError, match="unknown VAE preset"):
        get_preset("vae9")
    with pytest.raises(StmorphInputError, match="unknown VAE config"):
        get_preset("vae1", colour="red")


@pytest.mark.parametrize("size", [63, 64, 100, 101, 150])
def test_decoder_retraces_encoder_sizes(size):
    dec = ConvDecoder(2, size, TINY, 3)
    assert dec(torch.zeros(1, 3)).shape == (1, 2, size, size)


def test_presets_match_table_1():
    t = {  # preset: (channels, crop, min gene counts, padding, lr, batch, epochs, eps, wd)
        "vae1": ((), 100, 0, 3, 5e-4, 8, 15, 1e-8, 0),
        "vae2": (("DAPI", "membrane"), 300, 0, None, 5e-5, 16, 500, 1e-8, 0),
        "vae3": (("DAPI",), 150, 100, 4, 5e-4, 16, 20, 1e-6, 0),
        "vae4": (("membrane",), 200, 100, 4, 5e-4, 16, 30, 1e-6, 0),
        "vae5": (("DAPI", "membrane"), 200, 100, 4, 5e-4, 20, 30, 1e-6, 1e-5),
    }
    for name, (ch, crop, mgc, pad, lr, bs, ep, eps, wd) in t.items():
        c = PRESETS[name]
        assert (c.channels, c.crop_size, c.min_gene_counts, c.lr, c.batch_size, c.epochs, c.adam_eps,
                c.weight_decay) == (ch, crop, mgc, lr, bs, ep, eps, wd)
        assert c.spots == (name != "vae2")
        if pad is not None:
            assert c.spot_padding == pad
        assert (c.latent_dim, c.dice_weight, c.focal_weight, c.focal_gamma, c.beta) == (50, 0.8, 0.4, 2.0, 0.0)
        assert c.count_weight == 0.0  # the study's loss, no count head
        assert get_preset(name.replace("vae", "ls")) == c
    # the CPU spot presets reconstruct per-gene counts too (session 2: LS1 must see gene composition)
    assert [PRESETS[f"ls{k}_cpu"].count_weight for k in range(1, 6)] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert get_preset("vae1", epochs=3).epochs == 3 and PRESETS["vae1"].epochs == 15


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs_at_tiny_size(name):
    cfg = get_preset(name, crop_size=64, widths=TINY, latent_dim=4)
    G = 3 if cfg.spots else 0
    C = len(cfg.channels)
    m = CropVAEModule(cfg, G, C)
    batch = {"counts": torch.ones(2, max(G, 1))}
    if G:
        batch["spots"] = (torch.rand(2, G, 64, 64) < 0.05).float()
    if C:
        batch["stains"] = torch.rand(2, C, 64, 64)
    out = m(batch.get("spots"), batch.get("stains"))
    assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (2, 4)
    assert ("spot_logits" in out) == bool(G) and ("stain_logits" in out) == bool(C)
    if G:
        assert out["spot_logits"].shape == (2, G, 64, 64)
    if C:
        assert out["stain_logits"].shape == (2, C, 64, 64)
    loss = compute_loss(out, batch, cfg)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in m.parameters())


def test_one_channel_stain_model():
    cfg = get_preset("ls2_cpu", channels=("DAPI",), widths=TINY)
    m = CropVAEModule(cfg, 0, 1)
    assert m(None, torch.rand(2, 1, 64, 64))["stain_logits"].shape == (2, 1, 64, 64)


def test_config_roundtrip():
    c = get_preset("ls5_cpu", genes=("a", "b"))
    assert VAEConfig.from_dict(c.to_dict()) == c
    assert c.decoders == ("spots", "stains")


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.0, None), (1.5, 0.25)])
def test_focal_hand_written_gradient(gamma, alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 3, 4, 4, generator=g) < 0.3).double()
    assert torch.autograd.gradcheck(lambda v: focal_loss(v, y, gamma=gamma, alpha=alpha, from_logits=True), (x,))
    # same value and gradient as the plain autograd expression on probabilities
    p = torch.sigmoid(x.detach()).requires_grad_()
    ref = focal_loss(p, y, gamma=gamma, alpha=alpha)
    ref.backward()
    out = focal_loss(x, y, gamma=gamma, alpha=alpha, from_logits=True)
    out.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(x.grad, p.grad * p * (1 - p), atol=1e-10)


# -- sparse Dice + Focal and the count head (session 2) -----------------------------------------------------
@pytest.mark.parametrize("gamma,alpha,weighted", [(2.0, None, True), (1.5, 0.25, False), (0.0, None, True)])
def test_dice_focal_sparse_equals_dense_value_and_gradient(gamma, alpha, weighted):
    from stmorph.models.vae import dice_focal_sparse

    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(3, 5, 9, 9, generator=g, dtype=torch.float64)).requires_grad_()
    y = (torch.rand(3, 5, 9, 9, generator=g) < 0.05).double()
    y[:, 4] = 0  # a gene without ones
    w = gene_weights(y.sum((2, 3))) if weighted else None
    pos = torch.nonzero(y.reshape(-1)).squeeze(1)
    ref_d = dice_loss(torch.sigmoid(x), y, w)
    ref_f = focal_loss(x, y, gamma=gamma, alpha=alpha, from_logits=True)
    (g_ref,) = torch.autograd.grad(0.8 * ref_d + 0.4 * ref_f, x)
    d, f = dice_focal_sparse(x, pos, w, gamma=gamma, alpha=alpha)
    (g_sp,) = torch.autograd.grad(0.8 * d + 0.4 * f, x)
    assert d.item() == pytest.approx(ref_d.item(), rel=1e-10)
    assert f.item() == pytest.approx(ref_f.item(), rel=1e-10)
    assert torch.allclose(g_sp, g_ref, rtol=1e-8, atol=1e-14)
    # each output on its own (the backward splits the incoming gradient between Dice and Focal)
    d, f = dice_focal_sparse(x, pos, w, gamma=gamma, alpha=alpha)
    ref_f = focal_loss(x, y, gamma=gamma, alpha=alpha, from_logits=True)
    assert torch.allclose(torch.autograd.grad(f, x)[0], torch.autograd.grad(ref_f, x)[0], rtol=1e-8, atol=1e-14)


def test_dice_focal_sparse_gradcheck_and_no_positives():
    from stmorph.models.vae import dice_focal_sparse

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 3, 5, 5, generator=g) < 0.2).double()
    pos = torch.nonzero(y.reshape(-1)).squeeze(1)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: torch.stack(dice_focal_sparse(v, pos, w)), (x,))
    # no positive anywhere: Dice is 0 (no class defined), focal is the background term only
    d, f = dice_focal_sparse(x, pos[:0])
    assert d.item() == 0.0
    assert f.item() == pytest.approx(focal_loss(x, torch.zeros_like(x), from_logits=True).item(), rel=1e-10)


def test_spot_loss_sparse_equals_dense_float32():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 16, 16, generator=g) - 3).requires_grad_()
    y = (torch.rand(4, 6, 16, 16, generator=g) < 0.01).float()
    c = y.sum((2, 3))
    dense = spot_loss(x, y, c, sparse=False)
    (gd,) = torch.autograd.grad(dense["spots"], x)
    sparse = spot_loss(x, y, c, sparse=True)
    (gs,) = torch.autograd.grad(sparse["spots"], x)
    for k in ("dice", "focal", "spots"):
        assert sparse[k].item() == pytest.approx(dense[k].item(), rel=1e-5)
    assert torch.allclose(gs, gd, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (1.5, 0.25)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cpu_loss_equals_float64_autograd_in_both_layouts(gamma, alpha, channels_last, dtype):
    """The float32 CPU path (numba background kernels) and the torch path (float64 here; CUDA's), with NCHW or
    channels-last logits, against the plain float64 autograd expression of Dice and Focal on dense targets."""
    from stmorph.models.vae import dice_focal_sparse

    g = torch.Generator().manual_seed(4)
    x64 = 2 * torch.randn(3, 7, 12, 12, generator=g, dtype=torch.float64) - 3
    y = (torch.rand(3, 7, 12, 12, generator=g) < 0.03).double()
    w = gene_weights(y.sum((2, 3)))
    ref_x = x64.clone().requires_grad_()
    ref = 0.8 * dice_loss(torch.sigmoid(ref_x), y, w) + 0.4 * focal_loss(ref_x, y, gamma=gamma, alpha=alpha,
                                                                         from_logits=True)
    ref.backward()
    x = x64.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    d, f = dice_focal_sparse(x, torch.nonzero(y.reshape(-1)).squeeze(1), w.to(dtype), gamma=gamma, alpha=alpha)
    (0.8 * d + 0.4 * f).backward()
    assert (0.8 * d + 0.4 * f).item() == pytest.approx(ref.item(), rel=1e-5)
    assert x.grad.shape == x.shape
    assert torch.allclose(x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-9)


def test_dice_focal_sparse_reduce_over_parts_equals_whole_batch():
    """With ``reduce`` summing the statistics of two halves of a batch, each half's loss is the whole batch's
    loss and the two halves' gradients together are the whole batch's gradient (what data-parallel training
    relies on)."""
    from stmorph.models.vae import dice_focal_sparse

    g = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(4, 5, 10, 10, generator=g, dtype=torch.float64) - 3
    y = (torch.rand(4, 5, 10, 10, generator=g) < 0.05).double()
    w = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    whole = x.clone().requires_grad_()
    d, f = dice_focal_sparse(whole, torch.nonzero(y.reshape(-1)).squeeze(1), w)
    (d + f).backward()
    halves = [x[:2].clone().requires_grad_(), x[2:].clone().requires_grad_()]
    stats = []
    for h, t in zip(halves, (y[:2], y[2:]), strict=True):
        captured = {}

        def grab(*parts, captured=captured):
            captured["parts"] = parts
            return parts

        dice_focal_sparse(h, torch.nonzero(t.reshape(-1)).squeeze(1), w, reduce=grab)
        stats.append([p.detach() for p in captured["parts"]])
    total = [a + b for a, b in zip(*stats, strict=True)]
    for k, (h, t) in enumerate(zip(halves, (y[:2], y[2:]), strict=True)):
        other = stats[1 - k]

        def add_other(*parts, other=other):
            return tuple(p + o for p, o in zip(parts, other, strict=True))

        dk, fk = dice_focal_sparse(h, torch.nonzero(t.reshape(-1)).squeeze(1), w, reduce=add_other)
        assert dk.item() == pytest.approx(d.item(), rel=1e-12) and fk.item() == pytest.approx(f.item(), rel=1e-12)
        (dk + fk).backward()
    assert len(total) == 5
    assert torch.allclose(torch.cat([h.grad for h in halves]), whole.grad, rtol=1e-10, atol=1e-15)


def test_dataset_lists_the_nonzeros_of_its_spot_planes(tmp_path):
    """``get_batch`` hands the renderer's own list of drawn pixels: it must be exactly the planes' non-zeros."""
    from stmorph.crops import CellCropDataset
    from stmorph.datasets import synthetic_tissue

    s = synthetic_tissue(n_cells=30, n_types=3, n_genes=12, random_state=0)
    ds = CellCropDataset(s, crop_size=64, genes="all", rotate=True)
    for reuse in (True, False, True):
        b = ds.get_batch(np.arange(3, 11), reuse_buffer=reuse, spot_index=True)
        expected = torch.nonzero(b["spots"].reshape(-1)).squeeze(1)
        assert torch.equal(b["spot_index"], expected)
    assert "spot_index" not in ds.get_batch(np.arange(3, 11))  # only on request: a sort of the drawn pixels


def test_count_head_and_loss():
    from stmorph.models.vae import count_loss

    assert count_loss(torch.zeros(1, 2), torch.tensor([[0.0, math.e - 1]])).item() == pytest.approx(0.5)
    cfg = VAEConfig(crop_size=64, widths=TINY, latent_dim=5, count_weight=2.0)
    m = CropVAEModule(cfg, n_genes=3, n_channels=0)
    b = {"spots": (torch.rand(2, 3, 64, 64) < 0.01).float(), "counts": torch.tensor([[1.0, 0.0, 4.0], [2.0, 2.0, 0.0]])}
    out = m(b["spots"], None, sample=False)
    assert out["count_pred"].shape == (2, 3)
    terms = compute_loss(out, b, cfg)
    assert terms["counts"].item() == pytest.approx(count_loss(out["count_pred"], b["counts"]).item())
    assert terms["loss"].item() == pytest.approx(terms["spots"].item() + 2.0 * terms["counts"].item(), rel=1e-6)
    # off by default: the study's presets have no count head
    assert CropVAEModule(VAEConfig(crop_size=64, widths=TINY, latent_dim=5), 3, 0).count_head is None
    with pytest.raises(StmorphInputError):
        VAEConfig(count_weight=-1.0)
