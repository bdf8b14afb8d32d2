"""Benchmarks of the cell-crop VAEs (LS1-LS5).

Sections (``--only`` picks some; default all):

* ``layer``   - first convolution on binary spot planes (16 cells x 241 genes x 100 px): dense ``nn.Conv2d`` vs
  stmorph's exact sparse path, forward + weight gradient, at several densities (MERFISH ileum: ~0.3 % ones
  with padding 3); checks equality.
* ``loss``    - the spot loss (Dice + Focal) dense vs with the positive pixels handled sparsely, forward +
  backward, and whole training steps with either (checks equality).
* ``presets`` - cells/s of one training step (forward + backward + Adam) for every preset at its true size on
  CPU, dense vs sparse first layer (random spot planes at 0.3 % density, random stains).
* ``bars``    - synthetic tissue (default signals, several seeds): random-forest balanced accuracy (5-fold CV) on
  the morphology-only and the expression-only type pairs of counts, the spot planes' per-gene sums (what LS1
  can see at most), LS2, LS1 with the study's loss alone and LS1 as preset (count reconstruction).
* ``xenium``  - the real Xenium breast crop (DAPI + transcripts): ls1_cpu, ls2_cpu (DAPI only), ls3_cpu end to end.
* ``train``   - whole training epochs (``CropVAE.train``, one thread) of ls1_cpu ... ls5_cpu on a synthetic tissue
  with the ileum panel's 241 genes, and one training step of vae1 ... vae5 at the study's sizes, each in a fresh
  process against a baseline source tree (``--baseline REV``, extracted with ``git archive``) in the same run:
  cells/s per core from CPU time and the largest relative difference of the per-epoch losses.

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


def bench_loss(reps: int = 3) -> None:
    """Spot loss (Dice + Focal) forward + backward and a whole training step: dense vs sparse-positive loss."""
    from stmorph.models.vae import CropVAEModule, compute_loss, get_preset, spot_loss

    print("\n### Spot loss, dense vs sparse positives (density 0.3 %), forward + backward, CPU time per call\n")
    print("| genes x crop x batch | dense loss s | sparse loss s | speed-up | max rel diff value | max abs diff grad |")
    print("|---|---|---|---|---|---|")
    for G, S, B in ((30, 64, 16), (241, 64, 16), (241, 100, 8)):
        g = torch.Generator().manual_seed(0)
        y = (torch.rand(B, G, S, S, generator=g) < 0.003).float()
        c = y.sum((2, 3))
        x = (torch.randn(B, G, S, S, generator=g) - 4).requires_grad_()
        res = {}

        def run(sp, x=x, y=y, c=c, res=res):
            x.grad = None
            out = spot_loss(x, y, c, sparse=sp)["spots"]
            out.backward()
            res[sp] = (out.detach(), x.grad.clone())

        td = _cpu_timeit(lambda: run(False), reps)
        ts = _cpu_timeit(lambda: run(True), reps)
        dv = ((res[False][0] - res[True][0]).abs() / res[False][0].abs()).item()
        dg = (res[False][1] - res[True][1]).abs().max().item()
        print(f"| {G} x {S} x {B} | {td:.3f} | {ts:.3f} | {td / ts:.2f}x | {dv:.1e} | {dg:.1e} |", flush=True)

    print("\n### One training step (forward + backward + Adam), cells/s from CPU time, 1 thread\n")
    print("| preset | genes | crop | batch | dense loss cells/s | sparse loss cells/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, G, B in (("ls1_cpu", 30, 16), ("ls1_cpu", 241, 16), ("ls3_cpu", 241, 16), ("vae1", 241, 8)):
        rates = {}
        for sp in (False, True):
            cfg = get_preset(name, sparse_loss=sp)
            S, C = cfg.crop_size, len(cfg.channels)
            g = torch.Generator().manual_seed(0)
            batch = {"spots": (torch.rand(B, G, S, S, generator=g) < 0.003).float()}
            batch["counts"] = batch["spots"].sum((2, 3))
            if C:
                batch["stains"] = torch.rand(B, C, S, S, generator=g)
            torch.manual_seed(0)
            m = CropVAEModule(cfg, G, C, sparse=G >= 100)
            opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)

            def step(m=m, opt=opt, batch=batch, cfg=cfg):
                out = m(batch["spots"], batch.get("stains"))
                loss = compute_loss(out, batch, cfg)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()

            rates[sp] = B / _cpu_timeit(step, 2 if S < 100 else 1)
        print(f"| {name} | {G} | {get_preset(name).crop_size} | {B} | {rates[False]:.1f} | {rates[True]:.1f} | "
              f"{rates[True] / rates[False]:.2f}x |", flush=True)


_TRAIN_WORKER = r"""
import json, sys, time, warnings
import numpy as np, torch
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from stmorph.datasets import synthetic_tissue
from stmorph.models.vae import PRESETS, CropVAE, CropVAEModule, compute_loss
mode, name, n_cells, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "train":
    s = synthetic_tissue(n_cells=n_cells, n_types=4, n_genes=241, random_state=0)
    vae = CropVAE(name, epochs=epochs, val_fraction=0.0)
    marks = []  # CPU time at the end of every epoch: the first epoch (imports, JIT caches) is not timed
    vae.train(s, device="cpu", show_progress=False, callbacks=[lambda e, r: marks.append(time.process_time())])
    print(json.dumps({"cpu": marks[-1] - marks[0], "cells": n_cells * (epochs - 1),
                      "loss": [h["loss"] for h in vae.history]}))
else:  # one step at the study's size, batch capped at 8
    cfg = PRESETS[name]
    G = 241 if name == "vae1" else (183 if cfg.spots else 0)
    C, S, B = len(cfg.channels), cfg.crop_size, min(cfg.batch_size, 8)
    g = torch.Generator().manual_seed(0)
    batch = {"counts": torch.rand(B, max(G, 1), generator=g) * 5}
    if G:
        batch["spots"] = (torch.rand(B, G, S, S, generator=g) < 0.003).float()
        batch["counts"] = batch["spots"].sum((2, 3))
    if C:
        batch["stains"] = torch.rand(B, C, S, S, generator=g)
    torch.manual_seed(0)
    m = CropVAEModule(cfg, G, C, sparse=G >= 100)
    opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)
    try:
        from stmorph.models.vae._train import _to_device
        try:
            batch = _to_device(batch, torch.device("cpu"), positions=True)
        except TypeError:  # trees before the positions flag computed them always
            batch = _to_device(batch, torch.device("cpu"))
    except ImportError:
        pass
    def step():
        kw = {"spot_index": batch["spot_index"]} if "spot_index" in batch else {}
        out = m(batch.get("spots"), batch.get("stains"), **kw)
        loss = compute_loss(out, batch, cfg)["loss"]
        opt.zero_grad(); loss.backward(); opt.step()
        return float(loss)
    torch.set_flush_denormal(True)
    losses = [step()]
    t = time.process_time()
    for _ in range(epochs):
        losses.append(step())
    print(json.dumps({"cpu": time.process_time() - t, "cells": B * epochs, "loss": losses}))
"""


def _baseline_tree(rev: str) -> Path:
    """``src/`` of ``rev`` extracted into a temporary folder (``git archive``; the checkout is not touched)."""
    import subprocess
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="stmorph-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def _run_worker(src: Path, *args: object) -> dict:
    import json
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(src), "STMORPH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _TRAIN_WORKER, *map(str, args)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_train(baseline: str = "HEAD", n_cells: int = 96, epochs: int = 3, presets: str | None = None) -> None:
    """Training speed of this tree against ``baseline``, each preset alternately in fresh processes."""
    base = _baseline_tree(baseline)
    new = REPO / "src"
    print(f"\n### Training on CPU, one thread: this tree vs `{baseline}` (cells/s per core from CPU time)\n")
    print("| preset | what is timed | baseline cells/s | this tree cells/s | speed-up | max rel. diff of losses |")
    print("|---|---|---|---|---|---|")
    jobs = [("train", f"ls{k}_cpu", n_cells, epochs) for k in range(1, 6)]
    jobs += [("step", f"vae{k}", 0, 2) for k in range(1, 6)]
    if presets:
        jobs = [j for j in jobs if j[1] in presets.split(",")]
    for mode, name, n, ep in jobs:
        r_old = _run_worker(base, mode, name, n, ep)
        r_new = _run_worker(new, mode, name, n, ep)
        lo, ln = np.asarray(r_old["loss"]), np.asarray(r_new["loss"])
        diff = float(np.max(np.abs(lo - ln) / np.maximum(np.abs(lo), 1e-12)))
        what = f"epochs 2-{ep} x {n} cells" if mode == "train" else f"{ep} steps, batch <= 8"
        ro, rn = r_old["cells"] / r_old["cpu"], r_new["cells"] / r_new["cpu"]
        print(f"| {name} | {what} | {ro:.1f} | {rn:.1f} | {rn / ro:.2f}x | {diff:.1e} |", flush=True)


def _cpu_timeit(fn, reps: int = 3) -> float:
    """CPU time of this process per call (less sensitive to other processes than wall time)."""
    fn()
    t = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t) / reps


def _rf_bacc(z: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rf = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    pred = cross_val_predict(rf, z, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    return float(balanced_accuracy_score(y, pred))


def _lognorm(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    tot = X.sum(1, keepdims=True)
    return np.log1p(X / np.where(tot > 0, tot, 1) * np.median(tot))


def bench_bars(n_cells: int = 400, epochs: int = 6, seeds: tuple[int, ...] = (0, 1, 2),
               tissue: str = "bench") -> dict[str, list[float]]:
    """RF balanced accuracy of counts, the spot planes' per-gene sums (the ceiling of what LS1 sees), LS2, LS1
    with the study's loss alone (``count_weight=0``) and LS1 as preset (count reconstruction), over seeds."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    from stmorph.crops import CellCropDataset
    from stmorph.datasets import synthetic_tissue
    from stmorph.tl import train_vae

    tk = {"n_types": 4, "n_genes": 30} if tissue == "bench" else {"n_types": 6, "n_genes": 60}
    print(f"\n### Synthetic tissue ({n_cells} cells, {tk['n_types']} types, {tk['n_genes']} genes, default signals): "
          f"RF balanced accuracy, 5-fold CV, {epochs} epochs\n")
    print("| seed | space | train s | morphology-only pair | expression-only pair | all types | R^2 log counts |")
    print("|---|---|---|---|---|---|---|")
    out: dict[str, list[float]] = {}
    for seed in seeds:
        s = synthetic_tissue(n_cells=n_cells, **tk, random_state=seed)
        info = s.adata.uns["synthetic_tissue"]
        y = s.adata.obs["cell_type"].astype(str).to_numpy()
        pairs = [np.isin(y, list(info["morphology_only_groups"][0])), np.isin(y, list(info["expression_only_groups"][0]))]
        L = _lognorm(s.adata.X.toarray() if hasattr(s.adata.X, "toarray") else s.adata.X)
        ds = CellCropDataset(s, crop_size=64, genes="all", spot_padding=3)
        sums = np.concatenate([ds.get_batch(np.arange(k, min(k + 64, len(ds))))["spots"].sum((2, 3)).numpy()
                               for k in range(0, len(ds), 64)])
        spaces = [("counts (log-normalised)", L, 0.0), ("spot-plane sums (log1p)", np.log1p(sums), 0.0)]
        for label, preset, extra in (("LS2 ls2_cpu", "ls2_cpu", {}),
                                     ("LS1 study loss (count_weight=0)", "ls1_cpu", {"count_weight": 0.0}),
                                     ("LS1 ls1_cpu (count_weight=1)", "ls1_cpu", {})):
            t = time.perf_counter()
            train_vae(s, preset, epochs=epochs, random_state=0, device="cpu", key_added="X_bench", **extra)
            spaces.append((label, s.adata.obsm["X_bench"], time.perf_counter() - t))
        for label, z, dt in spaces:
            row = [_rf_bacc(z[m], y[m]) for m in pairs] + [_rf_bacc(z, y)]
            r2 = np.mean([RidgeCV(alphas=np.logspace(-2, 3, 6)).fit(z[a], L[a]).score(z[b], L[b])
                          for a, b in KFold(5, shuffle=True, random_state=0).split(z)])
            out.setdefault(label, []).append(row[1])
            print(f"| {seed} | {label} | {dt:.0f} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} | {r2:.2f} |", flush=True)
    print("\nChance: 0.5 for a pair, 1 / n_types for all types. R^2: ridge from the space to log-normalised counts "
          "(5-fold CV).")
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
    ap.add_argument("--only", default="layer,loss,presets,bars,xenium", help="comma-separated sections")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the synthetic bars (the demo's LS1: 6)")
    ap.add_argument("--seeds", default="0,1,2", help="tissue seeds of the synthetic bars")
    ap.add_argument("--tissue", default="bench", choices=["bench", "demo"],
                    help="bars tissue: 4 types x 30 genes (bench) or the demo's 6 types x 60 genes")
    ap.add_argument("--baseline", default="HEAD", help="git revision the `train` section compares against")
    ap.add_argument("--presets", default=None, help="comma-separated presets of the `train` section (default all)")
    ap.add_argument("--xenium-epochs", type=int, default=3, help="epochs of the Xenium runs")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as fit() does on CPU
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start; "
          f"CUDA available: {torch.cuda.is_available()}")
    only = set(a.only.split(","))
    if "layer" in only:
        bench_layer()
    if "loss" in only:
        bench_loss()
    if "presets" in only:
        bench_presets()
    if "bars" in only:
        bench_bars(epochs=a.epochs, seeds=tuple(int(v) for v in a.seeds.split(",")), tissue=a.tissue)
    if "xenium" in only:
        bench_xenium(a.xenium_epochs)
    if "train" in only:
        bench_train(a.baseline, presets=a.presets)
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
