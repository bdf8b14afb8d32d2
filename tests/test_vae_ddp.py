"""Data-parallel VAE training: 2 CPU processes (gloo, launched by torchrun) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

TRAIN = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from stmorph.datasets import synthetic_tissue
    from stmorph.models.vae import CropVAE
    from stmorph.models.vae._distributed import is_main_process
    s = synthetic_tissue(n_cells=40, n_types=3, n_genes=24, random_state=0)
    vae = CropVAE("ls3_cpu", epochs=2, batch_size=8, val_fraction=0.0, channels=("DAPI",))
    vae.train(s, device="cpu", show_progress=False, checkpoint_dir=sys.argv[2])
    if is_main_process():
        z = vae.get_latent(s, device="cpu")
        torch.save({"state": vae.module.state_dict(), "history": vae.history, "z": z}, sys.argv[1])
    """
)


def _run(args: list[str], env: dict) -> None:
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def test_two_gloo_processes_train_the_model_of_one_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    env = {**os.environ, "STMORPH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    _run([sys.executable, str(script), str(tmp_path / "one.pt"), str(tmp_path / "ck1")], env)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
          str(tmp_path / "two.pt"), str(tmp_path / "ck2")], env)
    one = torch.load(tmp_path / "one.pt", weights_only=False)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    # the same loss curve: every term is the global batch's (rounding of float32 sums in another order only)
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        for k in ("loss", "dice", "focal", "stains", "kl"):
            assert h2[k] == pytest.approx(h1[k], rel=1e-4, abs=1e-6), k
    # the same model: the same embedding of every cell
    z1, z2 = one["z"], two["z"]
    assert np.abs(z1 - z2).max() < 1e-3 * z1.std()
    # and the same weights up to a fraction of one Adam step (lr 1e-3): Adam divides each gradient coordinate by
    # its own running scale, so where the true gradient is ~0 rounding differences become step differences.
    # Convolution biases in front of BatchNorm have a zero true gradient (BatchNorm removes them) and so walk
    # by up to lr per step in either run; they, and the running means that track them, are left out.
    assert one["state"].keys() == two["state"].keys()
    pre_bn = {"encoder.first.conv.bias", "encoder.first_post.0.running_mean"}
    pre_bn |= {k for k in one["state"] if k.endswith(".0.bias") and k.replace(".0.bias", ".1.weight") in one["state"]}
    pre_bn |= {k.replace(".0.bias", ".1.running_mean") for k in pre_bn}
    worst = max(float((one["state"][k].float() - two["state"][k].float()).abs().max())
                for k in one["state"] if k not in pre_bn)
    assert worst < 1e-3
    # training moved the weights (the comparison is of trained models) and the first process checkpointed
    assert one["history"][1]["loss"] < one["history"][0]["loss"]
    assert (tmp_path / "ck2" / "last.pt").exists()
