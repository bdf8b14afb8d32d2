"""Acceptance bars of the cell-crop VAEs: morphology-only types from stain latents, expression types from spot
latents (synthetic tissue), and end-to-end CPU runs on the real Xenium crop."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rf_bacc(z, y):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    pred = cross_val_predict(rf, z, y, cv=StratifiedKFold(4, shuffle=True, random_state=0))
    return balanced_accuracy_score(y, pred)


@pytest.mark.slow
def test_stain_latent_separates_morphology_only_types_and_spot_latent_expression_types():
    from stmorph.datasets import synthetic_tissue
    from stmorph.tl import train_vae

    # expression_signal 2: marker fold changes strong enough that counts separate the expression-only pair
    # perfectly (the default signal is guarded by test_ls1_recovers_expression_only_pair_at_default_signal)
    s = synthetic_tissue(n_cells=240, n_types=4, n_genes=30, expression_signal=2.0, mean_counts=120.0,
                         random_state=0)
    info = s.adata.uns["synthetic_tissue"]
    y = s.adata.obs["cell_type"].astype(str).to_numpy()
    morph = np.isin(y, list(info["morphology_only_groups"][0]))
    expr = np.isin(y, list(info["expression_only_groups"][0]))
    small = {"widths": (8, 16, 32, 64, 64), "device": "cpu", "random_state": 0, "epochs": 6}
    # each model is trained on the cells of its pair only (keeps the test short)
    train_vae(s, "ls2_cpu", cells=s.cell_ids[morph], **small)
    bacc_morph = _rf_bacc(s.adata.obsm["X_ls2_cpu"][morph], y[morph])
    assert bacc_morph > 0.75, bacc_morph  # measured 0.82; chance 0.5; the two types share one expression program
    train_vae(s, "ls1_cpu", cells=s.cell_ids[expr], **small)
    bacc_expr = _rf_bacc(s.adata.obsm["X_ls1_cpu"][expr], y[expr])
    assert bacc_expr > 0.8, bacc_expr  # measured 1.0; chance 0.5; the two types share one morphology
    # double dissociation: each latent sees its own kind of difference better than the other one does
    # (measured: LS1 on the morphology pair 0.63, LS2 on the expression pair 0.43)
    train_vae(s, "ls1_cpu", cells=s.cell_ids[morph], key_added="X_ls1_morph", **small)
    assert _rf_bacc(s.adata.obsm["X_ls1_morph"][morph], y[morph]) < bacc_morph
    train_vae(s, "ls2_cpu", cells=s.cell_ids[expr], key_added="X_ls2_expr", **small)
    assert _rf_bacc(s.adata.obsm["X_ls2_expr"][expr], y[expr]) < bacc_expr



def test_ls1_recovers_expression_only_pair_at_default_signal():
    """Issue #4 bar at the simulator's default expression signal, guarded cheaply (small tissue, 4 epochs)."""
    from stmorph.datasets import synthetic_tissue
    from stmorph.tl import train_vae

    s = synthetic_tissue(n_cells=200, n_types=4, n_genes=30, random_state=0)
    info = s.adata.uns["synthetic_tissue"]
    assert info["params"]["expression_signal"] == 1.0  # the simulator's default
    y = s.adata.obs["cell_type"].astype(str).to_numpy()
    expr = np.isin(y, list(info["expression_only_groups"][0]))
    small = {"widths": (8, 16, 32, 64, 64), "device": "cpu", "random_state": 0, "epochs": 4,
             "cells": s.cell_ids[expr]}
    train_vae(s, "ls1_cpu", **small)
    bacc = _rf_bacc(s.adata.obsm["X_ls1_cpu"][expr], y[expr])
    # measured 0.91 (log counts: 0.98; chance 0.5; 9 s CPU); the same run with the study's loss alone
    # (count_weight=0) gives 0.60 (benchmarks/results/vae.md, session 2)
    assert bacc > 0.8, bacc


@pytest.mark.slow
@pytest.mark.realdata
def test_xenium_crop_ls1_ls2_ls3_end_to_end(xenium_crop_dir, tmp_path):
    from stmorph import io as sio
    from stmorph.tl import train_vae

    s = sio.read_xenium(xenium_crop_dir, origin=(1062.0, 212.0))
    cells = s.cell_ids[:40]
    tiny = {"widths": (8, 8, 16, 16, 32), "epochs": 1, "device": "cpu", "cells": cells, "batch_size": 20}
    for preset, ch in (("ls1_cpu", None), ("ls2_cpu", ["DAPI"]), ("ls3_cpu", ["DAPI"])):
        t = time.perf_counter()
        train_vae(s, preset, channels=ch, checkpoint_dir=tmp_path / preset, **tiny)
        z = s.adata.obsm[f"X_{preset}"]
        assert z.shape == (s.n_cells, 50)
        assert np.isfinite(z[:40]).all() and np.isnan(z[40:]).all()
        assert s.adata.uns[preset]["train_seconds"] <= time.perf_counter() - t
        if preset != "ls2_cpu":
            assert len(s.adata.uns[preset]["genes"]) == s.adata.n_vars
        assert (tmp_path / preset / "last.pt").exists()
