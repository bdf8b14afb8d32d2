"""Benchmark of the crop engine: spot-plane rendering and stain cropping throughput.

Run: ``python benchmarks/bench_crops.py [--cells 2000] [--batch 32] [--quick]``

Spot planes (100 x 100 pixels, padding 3, i.e. 5 x 5 squares) are rendered for

* ``synthetic``: 241 genes, ~150 molecules per cell (Poisson), molecules within ~25 px of the centroid;
* ``xenium``: the real molecules of ../shared/data/xenium_breast_crop (all assigned cells, real density,
  all 312 features of the assigned transcripts: the crop holds no control probes), when that folder exists.

Methods compared in the same run: the naive reference (per cell a fresh dense array, a Python loop over
molecules setting each square by slicing), :func:`render_spot_planes` allocating a fresh output, the same
into a reused ``out`` buffer (zeroed by memset each batch), :class:`SpotRenderer` (reused buffer cleared
sparsely), :func:`spot_pixels` (sparse coordinates only), an optional numba kernel (only to justify the pure
numpy choice), and ``CellCropDataset.get_batch`` (float32 tensors, what a training loop sees).

Stain crops: 2 channels from a memory-mapped TIFF at 100 and 300 px, slice loop (``crop_stains``) vs one
fancy-indexed gather and vs in-memory arrays.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stmorph.crops import SpotRenderer, crop_boxes, crop_stains, render_spot_planes, spot_pixels  # noqa: E402
from stmorph.crops._spots import square_extent  # noqa: E402
from stmorph.sample import MoleculeIndex  # noqa: E402

SHARED = Path(os.environ.get("STMORPH_SHARED_DATA", ROOT.parent / "shared" / "data"))
XENIUM = SHARED / "xenium_breast_crop"


# ---------------------------------------------------------------------------------------------------------
# data


def synthetic_index(n_cells: int, n_genes: int = 241, mean_mol: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean_mol, n_cells)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    centers = rng.uniform(200, 5000, (n_cells, 2))
    m = int(indptr[-1])
    owner = np.repeat(np.arange(n_cells), counts)
    xy = centers[owner] + rng.normal(0, 12, (m, 2))
    idx = MoleculeIndex(
        x=xy[:, 0].astype(np.float32),
        y=xy[:, 1].astype(np.float32),
        gene=rng.integers(0, n_genes, m).astype(np.int32),
        indptr=indptr,
        gene_names=tuple(f"g{i}" for i in range(n_genes)),
    )
    return idx, centers


def sample_from_index(index: MoleculeIndex, centers: np.ndarray):
    """A SpatialSample holding the molecules of ``index`` (for the dataset benchmark)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from stmorph import SpatialSample

    n = index.n_cells
    ids = np.array([f"c{i}" for i in range(n)])
    owner = np.repeat(np.arange(n), np.diff(index.indptr))
    G = len(index.gene_names)
    X = sp.csr_matrix((np.ones(owner.size, np.float32), (owner, index.gene)), shape=(n, G))
    a = ad.AnnData(X=X, obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=list(index.gene_names)))
    a.obsm["spatial"] = centers
    mol = pd.DataFrame(
        {
            "x": index.x,
            "y": index.y,
            "gene": pd.Categorical.from_codes(index.gene, categories=list(index.gene_names)),
            "cell_id": pd.array(ids[owner], dtype="string"),
        }
    )
    return SpatialSample(a, mol)


def xenium_index():
    import pandas as pd

    tx = pd.read_csv(XENIUM / "transcripts.csv.gz", usecols=["cell_id", "feature_name", "x_location", "y_location"])
    tx = tx[tx["cell_id"].astype(str) != "-1"]
    tx = tx[~tx["feature_name"].str.contains("Control|BLANK|Unassigned", regex=True)]
    x = ((tx["x_location"] - 1062.0) / 0.2125).to_numpy(np.float32)
    y = ((tx["y_location"] - 212.0) / 0.2125).to_numpy(np.float32)
    cell = pd.Categorical(tx["cell_id"].astype(str))
    gene = pd.Categorical(tx["feature_name"])
    order = np.argsort(cell.codes, kind="stable")
    counts = np.bincount(cell.codes, minlength=len(cell.categories))
    idx = MoleculeIndex(
        x=x[order],
        y=y[order],
        gene=gene.codes[order].astype(np.int32),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        gene_names=tuple(gene.categories),
    )
    cx = np.bincount(cell.codes, weights=x, minlength=len(counts)) / np.maximum(counts, 1)
    cy = np.bincount(cell.codes, weights=y, minlength=len(counts)) / np.maximum(counts, 1)
    return idx, np.stack([cx, cy], 1)


# ---------------------------------------------------------------------------------------------------------
# reference and alternative kernels


def naive_render(index, cells, origins, size, padding, n_planes):
    """Per cell a fresh dense array; a Python loop over molecules sets each clipped square by slicing."""
    lo, hi = square_extent(padding)
    out = []
    for b, c in enumerate(cells):
        planes = np.zeros((n_planes, size, size), dtype=np.uint8)
        for j in range(index.indptr[c], index.indptr[c + 1]):
            r = int(np.floor(index.y[j])) - origins[b, 0]
            cc = int(np.floor(index.x[j])) - origins[b, 1]
            r0, r1 = max(r - lo, 0), min(r + hi + 1, size)
            c0, c1 = max(cc - lo, 0), min(cc + hi + 1, size)
            if r0 < r1 and c0 < c1:
                planes[index.gene[j], r0:r1, c0:c1] = 1
        out.append(planes)
    return np.stack(out)


def make_numba_kernel():
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=False, nogil=True)
    def _kernel(x, y, gene, indptr, cells, origins, size, lo, hi, out):
        for b in range(cells.size):
            c = cells[b]
            for j in range(indptr[c], indptr[c + 1]):
                r = int(np.floor(y[j])) - origins[b, 0]
                cc = int(np.floor(x[j])) - origins[b, 1]
                for rr in range(max(r - lo, 0), min(r + hi + 1, size)):
                    for c2 in range(max(cc - lo, 0), min(cc + hi + 1, size)):
                        out[b, gene[j], rr, c2] = 1

    def render(index, cells, origins, size, padding, out):
        lo, hi = square_extent(padding)
        v = out[: cells.size]
        v.fill(0)
        _kernel(index.x, index.y, index.gene, index.indptr, cells, origins, size, lo, hi, v)
        return v

    return render


def timeit(fn, batches, repeat=1):
    """Best-of-``repeat`` seconds for running ``fn`` over all batches."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------------------------------------------------


def bench_spots(name, index, centers, n_cells, batch, size, padding, quick, rows, sample=None):
    rng = np.random.default_rng(1)
    cand = np.flatnonzero(np.diff(index.indptr) > 0)
    cells_all = rng.choice(cand, size=min(n_cells, cand.size), replace=cand.size < n_cells)
    origins_all = np.stack(
        [np.floor(centers[cells_all, 1] + 0.5) - size // 2, np.floor(centers[cells_all, 0] + 0.5) - size // 2], 1
    ).astype(np.int64)
    G = len(index.gene_names)
    batches = [(cells_all[i : i + batch], origins_all[i : i + batch]) for i in range(0, cells_all.size, batch)]
    mols = np.diff(index.indptr)[cells_all]
    print(f"\n[{name}] {cells_all.size} cells, {G} genes, {size}x{size}, padding {padding}, batch {batch}; "
          f"molecules/cell median {np.median(mols):.0f}, mean {mols.mean():.0f}, max {mols.max()}")

    # correctness of all methods against the naive reference on the first batch
    c0, o0 = batches[0]
    ref = naive_render(index, c0, o0, size, padding, G)
    assert np.array_equal(render_spot_planes(index, c0, o0, size, padding=padding), ref)
    nb = make_numba_kernel()
    if nb is not None:
        buf_nb = np.zeros((batch, G, size, size), np.uint8)
        assert np.array_equal(nb(index, c0, o0, size, padding, buf_nb), ref)

    n = cells_all.size
    results = {}
    naive_batches = batches[: max(1, 64 // batch)] if not quick else batches[:1]
    n_naive = sum(b[0].size for b in naive_batches)
    results["naive loop (reference)"] = n_naive / timeit(lambda b: naive_render(index, b[0], b[1], size, padding, G), naive_batches)

    results["render_spot_planes (fresh np.zeros)"] = n / timeit(
        lambda b: render_spot_planes(index, b[0], b[1], size, padding=padding), batches, 2)
    buf = np.zeros((batch, G, size, size), np.uint8)
    results["render_spot_planes (out=, memset)"] = n / timeit(
        lambda b: render_spot_planes(index, b[0], b[1], size, padding=padding, out=buf), batches, 2)
    ren = SpotRenderer(index, size, batch, padding=padding)
    results["SpotRenderer (reused buffer, sparse clear)"] = n / timeit(lambda b: ren.render(b[0], b[1]), batches, 2)
    ren32 = SpotRenderer(index, size, batch, padding=padding, dtype=np.float32)
    results["SpotRenderer float32 (network-ready)"] = n / timeit(lambda b: ren32.render(b[0], b[1]), batches, 2)
    results["spot_pixels (sparse coords, unique)"] = n / timeit(
        lambda b: spot_pixels(index, b[0], b[1], size, padding=padding), batches, 2)
    if nb is not None:
        results["numba loop kernel (out=, memset)"] = n / timeit(lambda b: nb(index, b[0], b[1], size, padding, buf_nb), batches, 2)

    if sample is not None:
        from stmorph.crops import CellCropDataset

        ds = CellCropDataset(sample, cells=cells_all, crop_size=size, genes="all", spot_padding=padding)
        pos = np.arange(len(ds))
        ds_batches = [pos[i : i + batch] for i in range(0, pos.size, batch)]
        assert np.array_equal(ds.get_batch(ds_batches[0])["spots"].numpy(), ref.astype(np.float32))
        results["CellCropDataset.get_batch, batches dropped (pooled)"] = n / timeit(ds.get_batch, ds_batches, 2)
        from stmorph.crops import SpotBufferPool

        fresh_ds = CellCropDataset(sample, cells=cells_all, crop_size=size, genes="all", spot_padding=padding)
        fresh_ds._pool = SpotBufferPool(fresh_ds._index, size, padding=padding, genes=fresh_ds._codes, max_buffers=0)
        results["CellCropDataset.get_batch, no pool (fresh np.zeros)"] = n / timeit(fresh_ds.get_batch, ds_batches, 2)

        def epoch(_b, dl=ds.loader(batch, shuffle=True)):
            for _batch in dl:
                pass

        results["CellCropDataset.loader epoch (shuffled, pooled)"] = n / timeit(epoch, [None], 2)
        results["CellCropDataset.get_batch(reuse_buffer=True)"] = n / timeit(
            lambda b: ds.get_batch(b, reuse_buffer=True), ds_batches, 2)
        rot = CellCropDataset(sample, cells=cells_all, crop_size=size, genes="all", spot_padding=padding, rotate=True)
        results["CellCropDataset.get_batch, rotate=True"] = n / timeit(rot.get_batch, ds_batches, 2)

    # what a consumer pays: fresh array + one full read (sum) of it
    results["fresh render + full read (consumer)"] = n / timeit(
        lambda b: render_spot_planes(index, b[0], b[1], size, padding=padding).sum(dtype=np.int64), batches, 1)
    for k, v in results.items():
        rows.append((name, k, v))
        print(f"  {k:<45s} {v:>10.0f} cells/s   ({v * G * size * size / 1e9:6.2f} GB/s dense output)")


def bench_stains(n_cells, quick, rows):
    import tifffile

    if (XENIUM / "morphology_mip.tif").exists():
        src = tifffile.imread(XENIUM / "morphology_mip.tif")
        label = "xenium DAPI MIP 1800x2400"
    else:
        src = np.random.default_rng(0).integers(0, 4000, (1800, 2400), dtype=np.uint16)
        label = "synthetic 1800x2400"
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "two_channels.tif"
        tifffile.imwrite(f, np.stack([src, src[::-1].copy()]))
        mm = tifffile.memmap(f, mode="r")
        chans_mm = [mm[0], mm[1]]
        chans_mem = [np.array(mm[0]), np.array(mm[1])]
        rng = np.random.default_rng(2)
        centers = np.stack([rng.uniform(0, 2399, n_cells), rng.uniform(0, 1799, n_cells)], 1)
        print(f"\n[stains] 2 channels from a memory-mapped TIFF ({label}), {n_cells} cells")
        for size in (100, 300):
            nn = n_cells if size == 100 else n_cells // 4
            boxes = crop_boxes(centers[:nn], size, src.shape)

            def fancy(chans, boxes=boxes, size=size):
                ar = np.arange(size)
                rr = (boxes[:, 0, None] + ar)[:, :, None]
                cc = (boxes[:, 1, None] + ar)[:, None, :]
                return np.stack([np.asarray(c)[rr, cc] for c in chans], 1).astype(np.float32)

            def loop(chans, boxes=boxes, size=size, norm=None):
                return crop_stains(chans, None, size, boxes=boxes, normalize=norm)

            assert np.array_equal(loop(chans_mm), fancy(chans_mem))
            rep = 1 if quick else 2
            for meth, fn in [
                ("crop_stains memmap (slice loop)", lambda: loop(chans_mm)),
                ("crop_stains memmap + crop normalisation", lambda: loop(chans_mm, norm="crop")),
                ("crop_stains in-memory (slice loop)", lambda: loop(chans_mem)),
                ("fancy-index gather memmap (alternative)", lambda: fancy(chans_mm)),
            ]:
                t = timeit(lambda _b, fn=fn: fn(), [None], rep)
                rows.append((f"stains {size}px", meth, nn / t))
                print(f"  {size}px {meth:<42s} {nn / t:>10.0f} cells/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2000, help="cells per measurement")
    ap.add_argument("--batch", type=int, default=32, help="cells per batch")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    args = ap.parse_args()
    print("load:", os.popen("uptime").read().strip(), "| cores:", os.cpu_count())
    rows: list[tuple[str, str, float]] = []
    idx, centers = synthetic_index(args.cells)
    bench_spots("synthetic", idx, centers, args.cells, args.batch, 100, 3, args.quick, rows, sample_from_index(idx, centers))
    if XENIUM.is_dir():
        xidx, xcent = xenium_index()
        bench_spots("xenium", xidx, xcent, args.cells, args.batch, 100, 3, args.quick, rows, sample_from_index(xidx, xcent))
    else:
        print(f"\n(xenium crop not found at {XENIUM}; skipped)")
    bench_stains(args.cells, args.quick, rows)
    print("\n| case | method | cells/s |\n|---|---|---:|")
    for case, meth, v in rows:
        print(f"| {case} | {meth} | {v:,.0f} |")
    print("load after:", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
