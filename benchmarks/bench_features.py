"""Benchmark stmorph.features: CellProfiler (cp-measure) and CNN feature throughput.

Sections (``--only`` picks some; default all that apply):

* ``throughput`` - the headline table: cells/s per core (cells / CPU seconds of this process, one thread) of
  cp-measure's own per-crop featurizer (``cp_measure.featurizer.featurize``, numpy and numba accelerators),
  stmorph's ``engine="cp_measure"`` (the path before the fast engine) and ``engine="fast"``, on the same crops:
  100 and 300 px, DAPI alone and DAPI + Otsu-DAPI; real Xenium DAPI crops when
  ../shared/data/xenium_breast_crop exists (synthetic nucleus-like crops otherwise). Also checks, in the same
  run, that the fast engine's values equal cp-measure's featurizer (numpy) feature by feature;
* ``modules``  - per-module ms/crop (one channel) of both engines at 100 and 300 px;
* ``parallel`` - serial vs joblib processes (loky) vs threads, 2 workers;
* ``cnn``      - CNN features (built-in SmallResNet, 299 px input) cells/s on the CPU;
* ``real``     - all cells of the real Xenium crop at 100 and 300 px crops through ``cellprofiler_features``, the
  study's modules on DAPI + Otsu-thresholded DAPI, selection; wall and CPU time recorded.

Run: ``python benchmarks/bench_features.py [--only throughput,modules] [--n 40] [--n-jobs 2] [--max-cells N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
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


#: cp-measure's modules of the study (cp-measure has no image-quality module): intensity, radial distribution in
#: 8 bins, Haralick texture at scale 3 with 256 grey levels, granularity 10/16.
CP_MODULES = ["intensity", "radial_distribution", "texture", "granularity"]
STUDY_MODULES = ["quality"] + CP_MODULES


def _real_dapi_crops(n: int, size: int) -> np.ndarray | None:
    """First ``n`` cells of the real Xenium crop: ``(n, 1, size, size)`` DAPI scaled by the image maximum."""
    d = SHARED / "xenium_breast_crop"
    if not d.is_dir():
        return None
    from stmorph.crops import crop_boxes, crop_stains
    from stmorph.io import read_xenium

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = read_xenium(d, origin=(1062.0, 212.0), pixel_size=0.2125)
    img = s.images["DAPI"].read()
    boxes = crop_boxes(s.centroids[:n], size, img.shape, edge="shift")
    return crop_stains([img], None, size, boxes=boxes, normalize="image", image_range=[(0.0, float(img.max()))])


def _cpu_rate(fn: Callable[[], object], n: int, reps: int = 1) -> tuple[float, float, object]:
    """(cells per CPU second, cells per wall second) of the best of ``reps`` runs, and the last result."""
    best_cpu, best_wall, out = np.inf, np.inf, None
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return n / best_cpu, n / best_wall, out


def _featurize(crops: np.ndarray, names: list[str], accelerator: str | None):
    from cp_measure.featurizer import featurize, make_featurizer_config

    from stmorph.features._cellprofiler import _accelerator

    cfg = make_featurizer_config(
        names, intensity=True, texture=True, granularity=True, radial_distribution=True,
        radial_distribution_params={"bin_count": 8}, radial_zernikes=False, sizeshape=False, zernike=False,
        feret=False, correlation_pearson=False, correlation_costes=False, correlation_manders_fold=False,
        correlation_rwc=False,
    )
    masks = np.ones((crops.shape[0], 1) + crops.shape[2:], np.int32)
    with warnings.catch_warnings(), _accelerator(accelerator):
        warnings.simplefilter("ignore")
        return featurize(crops, masks, cfg)


def _featurize_otsu(crops: np.ndarray, names: list[str], otsu: bool, accelerator: str | None):
    """``featurize`` of DAPI crops, with the Otsu-thresholded copy made inside the timed call when asked."""
    from stmorph.features import otsu_binary

    if otsu:
        crops = np.concatenate([crops, np.stack([otsu_binary(c[0]) for c in crops])[:, None]], axis=1)
    return _featurize(crops, names, accelerator)


def _agreement(ref: tuple, fast) -> str:
    """Fast-engine table against featurize output: matched features, bit-identical ones, worst relative diff."""
    data, cols, _ = ref
    matched = identical = 0
    worst, worst_name = 0.0, ""
    for j, rc in enumerate(cols):
        feat, ch = rc.rsplit("__", 1)
        oc = next((c for c in (f"{feat}_{ch}", f"Texture_{feat}_{ch}") if c in fast.columns), None)
        if oc is None:
            continue
        a, v = fast[oc].to_numpy(), data[:, j]
        matched += 1
        if not np.array_equal(np.isnan(a), np.isnan(v)):
            return f"{oc}: NaN pattern differs"
        ok = np.isfinite(v)
        identical += bool(np.array_equal(a[ok], v[ok]))
        if "InfoMeas2" in oc:  # documented: absolute 1e-7 (rounding noise amplified by a square root near 0)
            err = float(np.max(np.abs(a[ok] - v[ok]), initial=0.0)) / 1e-7 * 1e-9
        else:
            err = float(np.max(np.abs(a[ok] - v[ok]) / np.maximum(np.abs(v[ok]), 1e-12), initial=0.0))
        if err > worst:
            worst, worst_name = err, oc
    return f"{matched}/{len(cols)} matched, {identical} bit-identical, worst rel. diff {worst:.1e} ({worst_name})"


def bench_throughput(n100: int, n300: int, reps: int) -> None:
    from stmorph._threads import thread_limits
    from stmorph.features import measure_crops

    print("\n## Throughput: cells/s per core (one thread; cells / CPU s of this process), same crops for all")
    print("cp-measure modules (intensity, radial 8 bins, texture 3/256, granularity 10/16), grid object.\n")
    hdr = ("| crop | channels | cells | featurize numpy | featurize numba | stmorph cp_measure (before) | stmorph fast "
           "| fast / featurize numba | fast / before |")
    rows, study, checks = [], [], []
    source = "synthetic"
    with thread_limits(1):
        for size, n in ((100, n100), (300, n300)):
            crops = _real_dapi_crops(n, size)
            if crops is None:
                crops = _crops(n, size)[:, :1]
            else:
                source = "real Xenium DAPI"
            measure_crops(crops[:2], ["DAPI"], otsu_channels=["DAPI"])  # warm numba caches
            _featurize(crops[:1], ["DAPI"], "numba")
            for otsu in (False, True):
                names = ["DAPI", "DAPI_otsu"] if otsu else ["DAPI"]
                och = ["DAPI"] if otsu else []
                label = "DAPI + Otsu-DAPI" if otsu else "DAPI"
                fz = partial(_featurize_otsu, crops, names, otsu)
                mc = partial(measure_crops, crops, ["DAPI"], otsu_channels=och)
                fz_np = _cpu_rate(partial(fz, None), n)
                fz_nb = _cpu_rate(partial(fz, "numba"), n)
                before = _cpu_rate(partial(mc, modules=CP_MODULES, engine="cp_measure"), n)
                fast = _cpu_rate(partial(mc, modules=CP_MODULES), n, reps)
                rows.append(f"| {size} | {label} | {n} | {fz_np[0]:.1f} | {fz_nb[0]:.1f} | {before[0]:.1f} | "
                            f"{fast[0]:.1f} | {fast[0] / fz_nb[0]:.1f}x | {fast[0] / before[0]:.1f}x |")
                checks.append(f"{size} px, {label}: fast vs featurize numpy: {_agreement(fz_np[2], fast[2])}")
                if otsu:  # the study's modules (with image quality, written in stmorph): both engines
                    b = _cpu_rate(partial(mc, engine="cp_measure"), n)
                    f = _cpu_rate(mc, n, reps)
                    study.append(f"| {size} | {label} | {n} | {b[0]:.1f} | {f[0]:.1f} | {f[1]:.1f} | "
                                 f"{f[0] / b[0]:.1f}x |")
                print(f"  (measured {size} px, {label})", file=sys.stderr, flush=True)
    print(f"crops: {source}; featurize gets the Otsu channel precomputed inside the timed call.\n")
    print(hdr)
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nStudy modules (+ image quality), DAPI + Otsu-DAPI:\n")
    print("| crop | channels | cells | before: cp_measure engine, cells/s per core | fast, cells/s per core "
          "| fast, cells/s wall | ratio |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(study))
    print("\nEquality in this run:")
    for c in checks:
        print(f"- {c}")


def bench_modules(n: int) -> None:
    from stmorph.features import measure_crops

    print("\n## Per-module ms per crop, one channel (synthetic nucleus-like crops; CPU time, one process)")
    print("| module | crop | cp_measure engine (numba accel.) | fast engine | ratio |\n|---|---|---|---|---|")
    for size in (100, 300):
        crops = _crops(n, size)[:, :1]
        measure_crops(crops[:2], ["D"])
        for mod in STUDY_MODULES:
            r = [_cpu_rate(partial(measure_crops, crops, ["D"], modules=[mod], engine=e), n)[0]
                 for e in ("cp_measure", "fast")]
            print(f"| {mod} | {size} | {1000 / r[0]:.2f} | {1000 / r[1]:.3f} | {r[1] / r[0]:.0f}x |", flush=True)


def bench_parallel(n: int, n_jobs: int) -> None:
    from stmorph.features import measure_crops

    print(f"\n## Parallel measurement: {n} crops of 100 px, 2 channels + Otsu DAPI, study modules, fast engine")
    crops = _crops(n, 100, seed=2)
    measure_crops(crops[:2], ["DAPI", "membrane"], otsu_channels=["DAPI"])  # warm numba cache
    print("| mode | workers | s | cells/s |\n|---|---|---|---|")
    # serial first and last: the spread between the two shows the noise of a shared machine
    for mode, jobs in [("serial", 1), ("threading", n_jobs), ("loky", n_jobs), ("serial", 1)]:
        t = time.perf_counter()
        measure_crops(crops, ["DAPI", "membrane"], otsu_channels=["DAPI"], n_jobs=jobs,
                      backend="loky" if mode == "serial" else mode)
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


def bench_real(n_jobs: int, max_cells: int | None, sizes: list[int], engine: str = "fast") -> None:
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
    print(f"\n## Real Xenium crop: {s.n_cells} cells, DAPI + Otsu DAPI, study modules, n_jobs={n_jobs}, "
          f"engine={engine}")
    print("| crop | cells | measured | kept | NaN filled | wall s | cells/s wall | CPU s (this process) |\n"
          "|---|---|---|---|---|---|---|---|")
    for size in sizes:
        c0 = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cellprofiler_features(s, size=size, n_jobs=n_jobs, engine=engine)
        cpu = time.process_time() - c0
        info = s.adata.uns[f"X_cp_{size}"]
        x = s.adata.obsm[f"X_cp_{size}"]
        assert np.isfinite(x).all()
        print(f"| {size} | {s.n_cells} | {info['n_features_measured']} | {info['n_features_kept']} | "
              f"{sum(info['nan_filled'].values())} | {info['seconds']:.1f} | {s.n_cells / info['seconds']:.2f} | "
              f"{cpu:.1f} |", flush=True)
        reasons: dict[str, int] = {}
        for r in info.get("dropped", {}).get("reason", []):
            reasons[r] = reasons.get(r, 0) + 1
        z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
        evr = PCA(10).fit(z).explained_variance_ratio_
        print(f"  dropped by reason: {reasons}; PCA(10) of the standardised table explains {evr.sum():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="throughput,modules,parallel,cnn,real")
    ap.add_argument("--n", type=int, default=20, help="crops per synthetic measurement")
    ap.add_argument("--n100", type=int, default=120, help="throughput: crops at 100 px")
    ap.add_argument("--n300", type=int, default=30, help="throughput: crops at 300 px")
    ap.add_argument("--reps", type=int, default=3, help="throughput: best of this many runs of the fast engine")
    ap.add_argument("--engine", default="fast", help="real: fast or cp_measure")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--max-cells", type=int, default=None, help="real data: first N cells only")
    ap.add_argument("--sizes", default="100,300", help="real data: crop sizes")
    a = ap.parse_args()
    only = set(a.only.split(","))
    print(f"# bench_features  (cores visible: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()})")
    if "throughput" in only:
        bench_throughput(a.n100, a.n300, a.reps)
    if "modules" in only:
        bench_modules(a.n)
    if "parallel" in only:
        bench_parallel(20 * a.n, a.n_jobs)
    if "cnn" in only:
        bench_cnn(a.n)
    if "real" in only:
        bench_real(a.n_jobs, a.max_cells, [int(v) for v in a.sizes.split(",")], a.engine)
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
