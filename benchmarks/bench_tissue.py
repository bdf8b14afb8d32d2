"""Benchmark the synthetic tissue simulator.

Run: ``python benchmarks/bench_tissue.py [--quick]``

Prints three tables:

1. end-to-end generation time of :func:`stmorph.datasets.synthetic_tissue` (targets: 600 cells < 5 s,
   2,000 cells < 20 s on one core) and of the two writers;
2. cell placement: stmorph's dart throwing (per-cell radii) against the reference Poisson-disc sampler
   :class:`scipy.stats.qmc.PoissonDisk` (one radius only) for the same number of equal discs: time and the
   smallest centre distance;
3. mask rendering: stmorph's bounding-box rendering against a naive full-image evaluation per cell (the
   approach the bounding boxes replace), on the same cells, checking the label images agree.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from stmorph.datasets import synthetic_tissue, write_baysor_layout, write_xenium_layout  # noqa: E402
from stmorph.datasets._layouts import place_cells  # noqa: E402
from stmorph.datasets._tissue import _render_masks  # noqa: E402


def _time(f, repeat: int = 1):
    best = np.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_generation(sizes: list[int]) -> None:
    print("\n## synthetic_tissue end to end (best of 2)")
    print(f"{'n_cells':>8} {'image':>11} {'molecules':>10} {'generate s':>11} {'baysor s':>9} {'xenium s':>9}")
    for n in sizes:
        t, s = _time(lambda n=n: synthetic_tissue(n, random_state=0), repeat=2)
        with tempfile.TemporaryDirectory() as d:
            tb, _ = _time(lambda s=s, d=d: write_baysor_layout(s, f"{d}/b", overwrite=True))
            tx, _ = _time(lambda s=s, d=d: write_xenium_layout(s, f"{d}/x", overwrite=True))
        h, w = s.images["DAPI"].shape
        print(f"{n:>8} {f'{h}x{w}':>11} {len(s.molecules):>10} {t:>11.2f} {tb:>9.2f} {tx:>9.2f}")


def bench_placement(n: int, radius: float) -> None:
    from scipy.stats import qmc

    print(f"\n## placement of {n} equal discs (radius {radius} px, min distance {2 * radius * 0.9:.1f} px)")
    side = float(np.ceil(np.sqrt(n * np.pi * radius**2 / 0.42)))
    min_d = 2 * radius * 0.9

    def ours():
        return place_cells(n, int(side), int(side), lambda xy, g: (np.zeros(len(xy), int), np.full(len(xy), radius)),
                           np.random.default_rng(0), min_dist_factor=0.9, margin_factor=0.0)[0]

    def scipy_ref():
        eng = qmc.PoissonDisk(d=2, radius=min_d / side, seed=0)
        return eng.random(n) * side

    print(f"{'method':>22} {'time s':>8} {'placed':>7} {'min dist':>9}")
    for name, f in (("stmorph place_cells", ours), ("scipy qmc.PoissonDisk", scipy_ref)):
        t, xy = _time(f, repeat=3)
        d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        print(f"{name:>22} {t:>8.3f} {len(xy):>7} {d.min():>9.2f}")


def _naive_masks(xy, axes, angle, shape):
    H, W = shape
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    best = np.full(shape, np.inf, dtype=np.float32)
    label = np.zeros(shape, dtype=np.int32)
    for i in range(len(xy)):
        dx, dy = cols - xy[i, 0], rows - xy[i, 1]
        u = dx * np.cos(angle[i]) + dy * np.sin(angle[i])
        v = dy * np.cos(angle[i]) - dx * np.sin(angle[i])
        rho = (u / axes[i, 0]) ** 2 + (v / axes[i, 1]) ** 2
        upd = (rho <= 1) & (rho < best)
        best[upd] = rho[upd]
        label[upd] = i + 1
    return label


def bench_rendering(n: int) -> None:
    s, label = synthetic_tissue(n, random_state=0, return_masks=True)
    obs = s.adata.obs
    r = obs["true_cell_radius"].to_numpy()
    sq = np.sqrt(obs["true_cell_aspect"].to_numpy())
    axes = 1.4 * r[:, None] * np.column_stack([sq, 1 / sq])
    rng = np.random.default_rng(0)
    xy = s.centroids
    angle = rng.uniform(0, np.pi, n)
    shape = label.shape
    print(f"\n## mask rendering of {n} cells on {shape[0]}x{shape[1]} px")
    t_ours, (lab_ours, _, _) = _time(lambda: _render_masks(xy, axes, angle, xy, axes * 0.4, angle, shape))
    t_naive, lab_naive = _time(lambda: _naive_masks(xy, axes, angle, shape))
    # the naive version has no fragment clean-up; compare pixels outside removed fragments
    agree = np.mean((lab_ours == lab_naive) | (lab_ours == 0))
    print(f"{'method':>26} {'time s':>8}")
    print(f"{'stmorph bounding boxes':>26} {t_ours:>8.3f}")
    print(f"{'naive full image per cell':>26} {t_naive:>8.3f}")
    print(f"speed-up {t_naive / t_ours:.1f}x; label images agree on {100 * agree:.3f} % of pixels")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    a = p.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    bench_generation([600] if a.quick else [600, 2000, 5000])
    bench_placement(600 if a.quick else 2000, 12.0)
    bench_rendering(300 if a.quick else 600)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
