"""Benchmarks of the cell-crop VAEs (LS1-LS5).

Sections (``--only`` picks some; default all):

* ``layer``   - first convolution on binary spot planes (16 cells x 241 genes x 100 px): dense ``nn.Conv2d`` vs
  stmorph's exact sparse path, forward + weight gradient, at several densities (MERFISH ileum: ~0.3 % ones
  with padding 3); checks equality.
* ``presets`` - cells/s of one training step (forward + backward + Adam) for every preset at its true size on
  CPU, dense vs sparse first layer (random spot planes at 0.3 % density, random stains).
* ``bars``    - synthetic tissue: random-forest balanced accuracy (5-fold CV) of LS2-style (stain) and LS1-style
  (spot) latent spaces on the morphology-only and the expression-only type pairs.
* ``xenium``  - the real Xenium breast crop (DAPI + transcripts): ls1_cpu, ls2_cpu (DAPI only), ls3_cpu end to end.

Run ``python benchmarks/bench_vae.py [--only layer,presets] [--threads 2]``; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("STMORPH_PROGRESS", "0")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STMORPH_SHARED_DATA", REPO.parent / "shared" / "data"))


def _timeit(fn, reps: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_layer() -> None:
    from stmorph.models.vae import sparse_conv3x3s2

    print("\n### First convolution, 16 cells x 241 genes x 100 px, 32 filters: forward + weight gradient\n")
    print("| density | dense s | sparse s | speed-up | max abs diff out | max abs diff grad |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for dens in (0.001, 0.003, 0.01, 0.02, 0.03):
        x = (torch.rand(16, 241, 100, 100, generator=g) < dens).float()
        w = torch.randn(32, 241, 3, 3, generator=g).requires_grad_()
        gout = torch.randn(16, 32, 49, 49, generator=g)
        res = {}

        def run(f, name, x=x, w=w, gout=gout, res=res):
            w.grad = None
            y = f(x, w)
            y.backward(gout)
            res[name] = (y.detach(), w.grad.clone())

        td = _timeit(lambda: run(lambda a, b: F.conv2d(a, b, stride=2), "d"))
        ts = _timeit(lambda: run(sparse_conv3x3s2, "s"))
        dy = (res["d"][0] - res["s"][0]).abs().max().item()
        dg = (res["d"][1] - res["s"][1]).abs().max().item()
        print(f"| {dens:.1%} | {td:.3f} | {ts:.3f} | {td / ts:.2f}x | {dy:.1e} | {dg:.1e} |")


def bench_presets(reps: int = 2) -> None:
    from stmorph.models.vae import PRESETS, CropVAEModule, compute_loss

    print("\n### One training step per preset at its true size (CPU), random inputs, spot density 0.3 %\n")
    print("| preset | input | crop | genes | batch (timed) | dense cells/s | sparse cells/s | speed-up | est. min/epoch "
          "(5,192 cells, best) |")
    print("|---|---|---|---|---|---|---|---|---|")
    n_genes = {"vae1": 241, "vae3": 183, "vae4": 183, "vae5": 183, "ls1_cpu": 241, "ls3_cpu": 241,
               "ls4_cpu": 241, "ls5_cpu": 241}
    for name in ("vae1", "vae2", "vae3", "vae4", "vae5", "ls1_cpu", "ls2_cpu", "ls3_cpu", "ls5_cpu"):
        cfg = PRESETS[name]
        G = n_genes.get(name, 0) if cfg.spots else 0
        C = len(cfg.channels)
        # batches are capped at 8 cells to bound memory (cells/s barely depends on the batch size on CPU)
        S, B = cfg.crop_size, min(cfg.batch_size, 8)
        reps_here = 1 if S >= 150 else reps
        g = torch.Generator().manual_seed(0)
        batch = {"counts": torch.rand(B, max(G, 1), generator=g) * 5}
        if G:
            batch["spots"] = (torch.rand(B, G, S, S, generator=g) < 0.003).float()
        if C:
            batch["stains"] = torch.rand(B, C, S, S, generator=g)
        rates = {}
        for sparse in ((False, True) if G else (False,)):
            torch.manual_seed(0)
            m = CropVAEModule(cfg, G, C, sparse=sparse)
            m.encoder.first.max_density = None
            opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)

            def step(m=m, opt=opt, batch=batch, cfg=cfg):
                out = m(batch.get("spots"), batch.get("stains"))
                loss = compute_loss(out, batch, cfg)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()

            rates[sparse] = B / _timeit(step, reps_here)
        inp = ("spots" if G else "") + (" + " if G and C else "") + " + ".join(cfg.channels)
        sp = f"{rates[True]:.1f}" if True in rates else "-"
        su = f"{rates[True] / rates[False]:.2f}x" if True in rates else "-"
        best = max(rates.values())
        print(f"| {name} | {inp} | {S} | {G or '-'} | {B} | {rates[False]:.1f} | {sp} | {su} | "
              f"{5192 / best / 60:.1f} |", flush=True)


def _rf_bacc(z: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rf = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    pred = cross_val_predict(rf, z, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    return float(balanced_accuracy_score(y, pred))


def bench_bars(n_cells: int = 400, epochs: int = 10) -> dict[str, float]:
    from stmorph.datasets import synthetic_tissue
    from stmorph.tl import train_vae

    s = synthetic_tissue(n_cells=n_cells, n_types=4, n_genes=30, random_state=0)
    info = s.adata.uns["synthetic_tissue"]
    morph_pair = list(info["morphology_only_groups"][0])
    expr_pair = list(info["expression_only_groups"][0])
    y = s.adata.obs["cell_type"].astype(str).to_numpy()
    out = {}
    print(f"\n### Synthetic tissue ({n_cells} cells, 4 types, 30 genes): RF balanced accuracy, 5-fold CV\n")
    print("| latent space | epochs | train s | morphology-only pair | expression-only pair | all 4 types |")
    print("|---|---|---|---|---|---|")
    for preset in ("ls2_cpu", "ls1_cpu"):
        t = time.perf_counter()
        train_vae(s, preset, epochs=epochs, random_state=0)
        dt = time.perf_counter() - t
        z = s.adata.obsm[f"X_{preset}"]
        row = []
        for pair in (morph_pair, expr_pair):
            m = np.isin(y, pair)
            row.append(_rf_bacc(z[m], y[m]))
        row.append(_rf_bacc(z, y))
        out[preset] = row
        print(f"| {preset} | {epochs} | {dt:.0f} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} |", flush=True)
    print("\nChance: 0.5 for a pair, 0.25 for the 4 types.")
    return out


def bench_xenium(epochs: int = 3) -> None:
    from stmorph import io as sio
    from stmorph.tl import train_vae

    d = SHARED / "xenium_breast_crop"
    if not d.is_dir():
        print(f"\n(xenium section skipped: {d} not found)")
        return
    t = time.perf_counter()
    s = sio.read_xenium(d, origin=(1062.0, 212.0))
    print(f"\n### Real Xenium breast crop ({s.n_cells} cells, {s.adata.n_vars} genes, DAPI): read in "
          f"{time.perf_counter() - t:.1f} s\n")
    print("| preset | input | epochs | train + embed s | latent finite | first -> last loss |")
    print("|---|---|---|---|---|---|")
    for preset, ch in (("ls1_cpu", None), ("ls2_cpu", ("DAPI",)), ("ls3_cpu", ("DAPI",))):
        t = time.perf_counter()
        train_vae(s, preset, channels=ch, epochs=epochs, random_state=0)
        dt = time.perf_counter() - t
        u = s.adata.uns[preset]
        z = s.adata.obsm[f"X_{preset}"]
        inp = ("spots" if preset != "ls2_cpu" else "") + (" + " if preset == "ls3_cpu" else "") + (
            "DAPI" if ch else "")
        lh = u["loss_history"]
        print(f"| {preset} | {inp} | {epochs} | {dt:.0f} | {np.isfinite(z).all()} | {lh[0]:.4f} -> {lh[-1]:.4f} |",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="layer,presets,bars,xenium", help="comma-separated sections")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the synthetic bars")
    ap.add_argument("--xenium-epochs", type=int, default=3, help="epochs of the Xenium runs")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start; "
          f"CUDA available: {torch.cuda.is_available()}")
    only = set(a.only.split(","))
    if "layer" in only:
        bench_layer()
    if "presets" in only:
        bench_presets()
    if "bars" in only:
        bench_bars(epochs=a.epochs)
    if "xenium" in only:
        bench_xenium(a.xenium_epochs)
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
