"""Benchmark stmorph.features: CellProfiler (cp-measure) and CNN feature throughput.

Sections (``--only`` picks some; default all that apply):

* ``modules``  - cells/s of each CellProfiler module at 100 and 300 px, numba accelerator on/off for texture;
* ``reference`` - stmorph's per-crop measurement against cp-measure's own batch ``featurize`` on the same crops:
  agreement of every shared feature and time;
* ``parallel`` - serial vs joblib processes (loky) vs threads, 2 workers;
* ``cnn``      - CNN features (built-in SmallResNet, 299 px input) cells/s on the CPU;
* ``real``     - all cells of the real Xenium crop (../shared/data/xenium_breast_crop) at 100 and 300 px crops,
  the study's modules on DAPI + Otsu-thresholded DAPI, selection; time recorded.

Run: ``python benchmarks/bench_features.py [--only modules,parallel] [--n-jobs 2] [--max-cells N]``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("STMORPH_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STMORPH_SHARED_DATA", REPO.parent / "shared" / "data"))


def _crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Nucleus-like crops: a textured blob on a dim background, 2 channels (DAPI-like, membrane-like)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.empty((n, 2, size, size), np.float32)
    for i in range(n):
        r = size * rng.uniform(0.12, 0.25)
        blob = (np.hypot(yy, xx) <= r) * rng.uniform(0.3, 0.8)
        tex = gaussian_filter(rng.random((size, size)), 1.5)
        out[i, 0] = np.clip(blob * (0.6 + 0.8 * tex) + 0.03 * rng.random((size, size)), 0, 1)
        ring = np.exp(-((np.hypot(yy, xx) - 1.8 * r) ** 2) / 8.0) * 0.5
        out[i, 1] = np.clip(ring + 0.03 * rng.random((size, size)), 0, 1)
    return out


def bench_modules(n: int) -> None:
    from stmorph.features._cellprofiler import _accelerator, measure_crop

    print("\n## CellProfiler modules: cells/s for one channel (single process)")
    print("| module | crop | accelerator | cells/s | ms/cell |\n|---|---|---|---|---|")
    for size in (100, 300):
        crops = _crops(n, size)
        for mod, acc in [("quality", None), ("intensity", None), ("radial_distribution", None),
                         ("texture", None), ("texture", "numba"), ("granularity", None)]:
            with _accelerator(acc):
                measure_crop(crops[0, :1], ["D"], modules=[mod])  # warm-up (numba cache load)
                t = time.perf_counter()
                for i in range(n):
                    measure_crop(crops[i, :1], ["D"], modules=[mod])
                dt = (time.perf_counter() - t) / n
            print(f"| {mod} | {size} | {acc or 'none'} | {1 / dt:.1f} | {1000 * dt:.1f} |")


def bench_reference(n: int) -> None:
    from cp_measure.featurizer import featurize, make_featurizer_config

    from stmorph.features import measure_crops

    print("\n## Agreement with cp-measure's own batch featurizer (same crops, grid object)")
    crops = _crops(n, 100, seed=1)
    cfg = make_featurizer_config(
        ["DAPI", "membrane"], intensity=True, texture=True, granularity=True, radial_distribution=True,
        radial_distribution_params={"bin_count": 8}, radial_zernikes=False, sizeshape=False, zernike=False,
        feret=False, correlation_pearson=False, correlation_costes=False, correlation_manders_fold=False,
        correlation_rwc=False,
    )
    masks = np.ones((n, 1, 100, 100), np.int32)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, cols, _ = featurize(crops, masks, cfg)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    ours = measure_crops(crops, ["DAPI", "membrane"], modules=["intensity", "texture", "granularity",
                                                               "radial_distribution"], accelerator=None)
    t_ours = time.perf_counter() - t
    # cp-measure names "<feature>__<channel>"; stmorph "<feature>_<channel>" (texture prefixed "Texture_")
    worst, matched = 0.0, 0
    for j, rc in enumerate(cols):
        feat, ch = rc.rsplit("__", 1)
        oc = next((c for c in (f"{feat}_{ch}", f"Texture_{feat}_{ch}") if c in ours.columns), None)
        if oc is None:
            continue
        a, v = ours[oc].to_numpy(), data[:, j]
        ok = np.isfinite(a) & np.isfinite(v)
        if not np.array_equal(np.isfinite(a), np.isfinite(v)):
            worst = np.inf
        if ok.any():
            worst = max(worst, float(np.max(np.abs(a[ok] - v[ok]) / (np.abs(v[ok]) + 1e-6))))
        matched += 1
    print("| implementation | crops | s | features | matched | max rel. diff |\n|---|---|---|---|---|---|")
    print(f"| cp_measure.featurizer.featurize | {n} | {t_ref:.2f} | {len(cols)} | - | - |")
    print(f"| stmorph measure_crops (numpy) | {n} | {t_ours:.2f} | {ours.shape[1]} | {matched} | {worst:.2e} |")
    t = time.perf_counter()
    fast = measure_crops(crops, ["DAPI", "membrane"], modules=["intensity", "texture", "granularity",
                                                               "radial_distribution"], accelerator="numba")
    t_fast = time.perf_counter() - t
    rel = float(((fast - ours).abs() / (ours.abs() + 1e-6)).max().max())
    print(f"| stmorph measure_crops (numba) | {n} | {t_fast:.2f} | {fast.shape[1]} | all vs numpy | {rel:.2e} |")


def bench_parallel(n: int, n_jobs: int) -> None:
    from stmorph.features import measure_crops

    print(f"\n## Parallel measurement: {n} crops of 100 px, 2 channels + Otsu DAPI, study modules, numba")
    crops = _crops(n, 100, seed=2)
    measure_crops(crops[:2], ["DAPI", "membrane"], otsu_channels=["DAPI"])  # warm numba cache
    print("| mode | workers | s | cells/s |\n|---|---|---|---|")
    # serial first and last: the spread between the two shows the noise of a shared machine
    for mode, jobs in [("serial", 1), ("threading", n_jobs), ("loky", n_jobs), ("serial", 1)]:
        t = time.perf_counter()
        measure_crops(crops, ["DAPI", "membrane"], otsu_channels=["DAPI"], n_jobs=jobs,
                      backend="loky" if mode == "serial" else mode, chunk_size=8)
        dt = time.perf_counter() - t
        print(f"| {mode} | {jobs} | {dt:.2f} | {n / dt:.2f} |")


def bench_cnn(n: int) -> None:
    import torch

    from stmorph.features import SmallResNet, extract_cnn_features, load_cnn

    print(f"\n## CNN features (CPU, {torch.get_num_threads()} torch threads), 2 channels, 299 px input")
    crops = _crops(n, 100, seed=3)
    print("| model | params | cells/s |\n|---|---|---|")
    for name, net in [("SmallResNet(32-256)", SmallResNet()), ("SmallResNet(8,16)", SmallResNet(widths=(8, 16)))]:
        net = load_cnn(net)
        extract_cnn_features(crops[:2], net, device="cpu")
        t = time.perf_counter()
        extract_cnn_features(crops, net, device="cpu", batch_size=16)
        dt = time.perf_counter() - t
        n_par = sum(p.numel() for p in net.parameters())
        print(f"| {name} | {n_par / 1e6:.2f} M | {n / dt:.1f} |")


def bench_real(n_jobs: int, max_cells: int | None, sizes: list[int]) -> None:
    from sklearn.decomposition import PCA

    from stmorph.features import cellprofiler_features
    from stmorph.io import read_xenium

    d = SHARED / "xenium_breast_crop"
    if not d.is_dir():
        print(f"\n(real data not found at {d}: skipped)")
        return
    s = read_xenium(d, origin=(1062.0, 212.0), pixel_size=0.2125)
    if max_cells:
        s = s.subset(s.cell_ids[:max_cells])
    print(f"\n## Real Xenium crop: {s.n_cells} cells, DAPI + Otsu DAPI, study modules, n_jobs={n_jobs}")
    print("| crop | cells | measured | kept | NaN filled | s | cells/s |\n|---|---|---|---|---|---|---|")
    for size in sizes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cellprofiler_features(s, size=size, n_jobs=n_jobs)
        info = s.adata.uns[f"X_cp_{size}"]
        x = s.adata.obsm[f"X_cp_{size}"]
        assert np.isfinite(x).all()
        print(f"| {size} | {s.n_cells} | {info['n_features_measured']} | {info['n_features_kept']} | "
              f"{sum(info['nan_filled'].values())} | {info['seconds']:.1f} | {s.n_cells / info['seconds']:.2f} |",
              flush=True)
        reasons: dict[str, int] = {}
        for r in info.get("dropped", {}).get("reason", []):
            reasons[r] = reasons.get(r, 0) + 1
        z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
        evr = PCA(10).fit(z).explained_variance_ratio_
        print(f"  dropped by reason: {reasons}; PCA(10) of the standardised table explains {evr.sum():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="modules,reference,parallel,cnn,real")
    ap.add_argument("--n", type=int, default=20, help="crops per synthetic measurement")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--max-cells", type=int, default=None, help="real data: first N cells only")
    ap.add_argument("--sizes", default="100,300", help="real data: crop sizes")
    a = ap.parse_args()
    only = set(a.only.split(","))
    print(f"# bench_features  (cores visible: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()})")
    if "modules" in only:
        bench_modules(a.n)
    if "reference" in only:
        bench_reference(a.n)
    if "parallel" in only:
        bench_parallel(2 * a.n, a.n_jobs)
    if "cnn" in only:
        bench_cnn(a.n)
    if "real" in only:
        bench_real(a.n_jobs, a.max_cells, [int(v) for v in a.sizes.split(",")])
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
