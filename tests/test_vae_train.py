"""Training-level tests of the cell-crop VAEs: resume after a kill, NaN guard, latents, save/load, tl, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmorph import StmorphInputError
from stmorph.models.vae import CropVAE, VAETrainingError, fit, get_preset, load_checkpoint

TINY = (4, 8, 8, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tissue():
    from stmorph.datasets import synthetic_tissue

    return synthetic_tissue(n_cells=36, n_types=2, n_genes=8, random_state=3)


def _cfg(name="ls5_cpu", **kw):
    base = {"widths": TINY, "latent_dim": 4, "batch_size": 8, "epochs": 2, "sparse_first_layer": True}
    return get_preset(name, **{**base, **kw})


class _Kill(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(tissue, tmp_path):
    cfg = _cfg()
    assert cfg.rotate  # rotations, shuffling and noise must all be resumed exactly
    full = CropVAE(cfg).train(tissue, device="cpu", checkpoint_dir=tmp_path / "a")

    def kill(epoch, record):
        if epoch == 1:
            raise _Kill

    with pytest.raises(_Kill):
        CropVAE(cfg).train(tissue, device="cpu", checkpoint_dir=tmp_path / "b", callbacks=[kill])
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = CropVAE(cfg).train(tissue, device="cpu", checkpoint_dir=tmp_path / "b")
    sa, sb = full.module.state_dict(), resumed.module.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    # a finished run resumes to a no-op; a different configuration is refused
    again = CropVAE(cfg).train(tissue, device="cpu", checkpoint_dir=tmp_path / "b")
    assert torch.equal(again.module.encoder.fc_mu.weight, resumed.module.encoder.fc_mu.weight)
    with pytest.raises(StmorphInputError, match="different config"):
        CropVAE(cfg.replace(lr=1e-2)).train(tissue, device="cpu", checkpoint_dir=tmp_path / "b")


class _PoisonAfter:
    """Wraps a dataset; returns NaN stains from a given epoch on."""

    def __init__(self, ds, epoch):
        self.ds, self.bad_epoch, self.epoch = ds, epoch, 0
        self.rotate = True

    def __len__(self):
        return len(self.ds)

    def set_epoch(self, e):
        self.epoch = e
        self.ds.set_epoch(e)

    def get_batch(self, idx, **kw):
        b = self.ds.get_batch(idx, **kw)
        if self.epoch >= self.bad_epoch:
            b["stains"] = torch.full_like(b["stains"], float("nan"))
        return b


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tissue, tmp_path):
    cfg = _cfg("ls2_cpu", epochs=3)
    vae = CropVAE(cfg)
    ds = vae.dataset(tissue, train=True)
    vae._register(ds)
    vae._build(torch.device("cpu"))
    with pytest.raises(VAETrainingError, match="non-finite training loss.*epoch 2, batch 1"):
        fit(vae.module, cfg, _PoisonAfter(ds, 1), ds, epochs=3, device=torch.device("cpu"),
            checkpoint_dir=tmp_path)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["epoch"] == 1
    for k, v in vae.module.state_dict().items():
        assert torch.equal(v, ck["module"][k]), k
        assert torch.isfinite(v.float()).all()


def test_latents_save_load_and_registration(tissue, tmp_path):
    cfg = _cfg("ls3_cpu", epochs=1)
    vae = CropVAE(cfg).train(tissue, device="cpu")
    assert vae.dataset(tissue, train=True).rotate and not vae.dataset(tissue).rotate
    z = vae.get_latent(tissue)
    assert z.shape == (tissue.n_cells, 4) and np.isfinite(z).all()
    assert np.array_equal(z, vae.get_latent(tissue))  # posterior mean: deterministic
    s1 = vae.get_latent(tissue, latent="sample", random_state=1)
    assert np.array_equal(s1, vae.get_latent(tissue, latent="sample", random_state=1))
    assert not np.allclose(s1, z) and not np.array_equal(s1, vae.get_latent(tissue, latent="sample", random_state=2))
    vae.save(tmp_path / "m")
    back = CropVAE.load(tmp_path / "m")
    assert back.registry == vae.registry and back.config == vae.config
    np.testing.assert_allclose(back.get_latent(tissue), z, atol=1e-6)
    # a sample lacking a registered gene is refused with a clear message
    sub = tissue.adata[:, tissue.gene_names[1:]].copy()
    from stmorph import SpatialSample

    other = SpatialSample(sub, tissue.molecules, dict(tissue.images))
    with pytest.raises(StmorphInputError, match="not in the sample"):
        back.get_latent(other)
    with pytest.raises(RuntimeError, match="not trained"):
        CropVAE(cfg).get_latent(tissue)


def test_select_best_with_validation(tissue, tmp_path):
    cfg = _cfg("ls2_cpu", epochs=3, val_fraction=0.25, select_best=True, lr=5e-3)
    vae = CropVAE(cfg).train(tissue, device="cpu", checkpoint_dir=tmp_path)
    vals = [h["val_loss"] for h in vae.history]
    best = int(np.argmin(vals)) + 1
    ck = load_checkpoint(tmp_path / "best.pt")
    assert ck["epoch"] == best
    for k, v in vae.module.state_dict().items():
        assert torch.equal(v, ck["module"][k]), k


def test_train_vae_writes_obsm_and_uns(tissue):
    from stmorph.tl import train_vae

    cells = tissue.cell_ids[:30]
    out = train_vae(tissue, _cfg("ls1_cpu", epochs=1), cells=cells, key_added="X_ls1", latent="sample",
                    device="cpu", copy=True)
    adata = out.adata  # copy=True returns the type passed in: a SpatialSample
    assert "X_ls1" not in tissue.adata.obsm
    z = adata.obsm["X_ls1"]
    assert z.shape == (tissue.n_cells, 4)
    assert np.isfinite(z[:30]).all() and np.isnan(z[30:]).all()
    u = adata.uns["ls1"]
    assert u["latent"] == "sample" and u["n_cells_embedded"] == 30 and u["epochs_trained"] == 1
    assert u["genes"] == tissue.gene_names and len(u["loss_history"]) == 1
    assert train_vae(tissue, _cfg("ls2_cpu", epochs=1), channels=["DAPI"], device="cpu") is None
    assert tissue.adata.obsm["X_ls2_cpu"].shape == (tissue.n_cells, 4)
    assert tissue.adata.uns["ls2_cpu"]["channels"] == ["DAPI"]
    with pytest.raises(StmorphInputError, match="not in the sample"):
        train_vae(tissue, "ls4_cpu", channels=["nope"], epochs=1)
    with pytest.raises(StmorphInputError, match="SpatialSample"):
        train_vae(tissue.adata, "ls1_cpu")


def test_cli_vae(tissue, tmp_path):
    import anndata as ad
    from typer.testing import CliRunner

    from stmorph.cli import app

    tissue.write(tmp_path / "s")
    out = tmp_path / "cells.h5ad"
    r = CliRunner().invoke(app, ["vae", str(tmp_path / "s"), "-o", str(out), "--preset", "ls2_cpu", "--channels",
                                 "DAPI", "--epochs", "1", "--batch-size", "12", "--device", "cpu",
                                 "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    assert "obsm['X_ls2_cpu']" in r.output
    a = ad.read_h5ad(out)
    assert a.obsm["X_ls2_cpu"].shape == (tissue.n_cells, 50)
    assert (tmp_path / "ck" / "last.pt").exists()


def test_training_killed_with_sigkill_resumes_bit_identically(tmp_path):
    """A training process SIGKILLed right after its epoch-2 checkpoint (no exception, no cleanup) resumes from
    that checkpoint to the very weights and latents of an uninterrupted run (CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from stmorph.datasets import synthetic_tissue

    ck = tmp_path / "ck"
    threads = torch.get_num_threads()  # the same in both processes (reductions may depend on it)
    child = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads({threads})
        from stmorph.datasets import synthetic_tissue
        from stmorph.models.vae import CropVAE
        s = synthetic_tissue(n_cells=40, n_types=3, n_genes=16, random_state=0)
        def die(epoch, record):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        CropVAE("ls1_cpu", epochs=4, val_fraction=0.0).train(s, device="cpu", checkpoint_dir={str(ck)!r},
                                                             callbacks=[die], show_progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STMORPH_PROGRESS": "0"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (ck / "last.pt").exists() and not list(ck.glob("*.tmp*"))
    s = synthetic_tissue(n_cells=40, n_types=3, n_genes=16, random_state=0)
    resumed = CropVAE("ls1_cpu", epochs=4, val_fraction=0.0).train(s, device="cpu", checkpoint_dir=ck,
                                                                   show_progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    full = CropVAE("ls1_cpu", epochs=4, val_fraction=0.0).train(s, device="cpu", show_progress=False)
    for k, v in full.module.state_dict().items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k
    assert np.array_equal(full.get_latent(s, device="cpu"), resumed.get_latent(s, device="cpu"))
