"""Tests of stmorph.crops: exact pixel equality with direct loop implementations on small random cases."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from stmorph import SpatialSample, StainImage, StmorphInputError
from stmorph.crops import (
    CellCropDataset,
    SpotBufferPool,
    SpotRenderer,
    crop_boxes,
    crop_stains,
    render_spot_planes,
    rotate_crops,
    rotation_ks,
    spot_origins,
    spot_pixels,
)
from stmorph.sample import MoleculeIndex

# ----------------------------------------------------------------------------------------------------------
# obviously-correct references (plain loops)


def ref_box(x: float, y: float, size: int, h: int, w: int, edge: str) -> tuple[int, int]:
    row, col = math.floor(y + 0.5), math.floor(x + 0.5)
    r0, c0 = row - size // 2, col - size // 2
    if edge == "shift":
        while r0 < 0:
            r0 += 1
        while r0 + size > h:
            r0 -= 1
        while c0 < 0:
            c0 += 1
        while c0 + size > w:
            c0 -= 1
    return r0, c0


def ref_crop(images, x, y, size, edge, pad_value, normalize, ranges=None):
    h, w = images[0].shape
    r0, c0 = ref_box(x, y, size, h, w, edge)
    out = np.zeros((len(images), size, size), dtype=np.float64)
    for ch, im in enumerate(images):
        vals = []
        for i in range(size):
            for j in range(size):
                r, c = r0 + i, c0 + j
                if 0 <= r < h and 0 <= c < w:
                    vals.append(float(im[r, c]))
        if normalize == "crop":
            lo, hi = min(vals), max(vals)
        elif normalize == "image":
            lo, hi = ranges[ch] if ranges is not None else (float(im.min()), float(im.max()))
        for i in range(size):
            for j in range(size):
                r, c = r0 + i, c0 + j
                if 0 <= r < h and 0 <= c < w:
                    v = float(im[r, c])
                    if normalize is not None:
                        v = 0.0 if hi == lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
                    out[ch, i, j] = v
                else:
                    out[ch, i, j] = pad_value
    return out


def ref_spots(xs, ys, genes, origin, size, padding, plane_of):
    """Dense per-molecule loop; plane_of maps gene code -> plane (or None)."""
    side = padding + 2
    lo = (side - 1) // 2  # even sides: the extra pixel goes below/right
    hi = side - 1 - lo
    n_planes = len([v for v in plane_of.values() if v is not None])
    out = np.zeros((n_planes, size, size), dtype=np.uint8)
    for x, y, g in zip(xs, ys, genes):
        p = plane_of.get(int(g))
        if p is None:
            continue
        r = math.floor(y) - origin[0]
        c = math.floor(x) - origin[1]
        for dr in range(-lo, hi + 1):
            for dc in range(-lo, hi + 1):
                if 0 <= r + dr < size and 0 <= c + dc < size:
                    out[p, r + dr, c + dc] = 1
    return out


def random_index(rng, n_cells=6, n_genes=5, extent=40.0, max_mol=30, empty_cell=True):
    counts = rng.integers(0, max_mol, size=n_cells)
    if empty_cell:
        counts[0] = 0
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(indptr[-1])
    return MoleculeIndex(
        x=rng.uniform(0, extent, m).astype(np.float32),
        y=rng.uniform(0, extent, m).astype(np.float32),
        gene=rng.integers(0, n_genes, m).astype(np.int32),
        indptr=indptr,
        gene_names=tuple(f"g{i}" for i in range(n_genes)),
    )


def cell_mols(index, i):
    s = slice(index.indptr[i], index.indptr[i + 1])
    return index.x[s], index.y[s], index.gene[s]


# ----------------------------------------------------------------------------------------------------------
# boxes and stain crops


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_crop_boxes_match_reference_at_all_borders(size, edge):
    h, w = 30, 25
    # centres at each border, corners, the middle, and exact .5 values
    centers = np.array(
        [[0.0, 15.0], [24.4, 15.0], [12.0, 0.2], [12.0, 29.4], [0.0, 0.0], [24.0, 29.0], [12.5, 14.5], [3.5, 2.5]]
    )
    got = crop_boxes(centers, size, (h, w), edge=edge)
    want = np.array([ref_box(x, y, size, h, w, edge) for x, y in centers])
    np.testing.assert_array_equal(got, want)
    if edge == "shift":
        assert (got >= 0).all() and (got[:, 0] + size <= h).all() and (got[:, 1] + size <= w).all()


@pytest.mark.parametrize("size", [5, 6])
@pytest.mark.parametrize("edge", ["shift", "pad"])
@pytest.mark.parametrize("normalize", [None, "crop", "image"])
def test_crop_stains_match_reference(size, edge, normalize):
    rng = np.random.default_rng(1)
    h, w = 20, 17
    imgs = [rng.integers(0, 500, (h, w)).astype(np.uint16), rng.normal(10, 3, (h, w)).astype(np.float32)]
    # a constant patch: crop normalisation must map it to 0
    imgs[0][8:16, 6:14] = 77
    centers = np.array([[0.0, 0.0], [16.0, 19.0], [9.6, 11.4], [0.3, 18.7], [16.4, 2.0], [10.0, 12.0]])
    got = crop_stains(imgs, centers, size, edge=edge, pad_value=-1.0, normalize=normalize)
    assert got.shape == (len(centers), 2, size, size) and got.dtype == np.float32
    for i, (x, y) in enumerate(centers):
        want = ref_crop(imgs, x, y, size, edge, -1.0, normalize)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    if normalize == "crop":
        # the crop around (10, 12) lies inside the constant patch for channel 0
        if size == 5:
            assert np.all(got[5, 0] == 0.0)
        inside = got[got != -1.0]
        assert inside.min() >= 0.0 and inside.max() <= 1.0


def test_crop_stains_image_range_and_array_input():
    rng = np.random.default_rng(2)
    stack = rng.uniform(0, 100, (2, 12, 12))
    centers = np.array([[5.0, 5.0], [1.0, 10.0]])
    ranges = [(10.0, 50.0), (0.0, 200.0)]
    got = crop_stains(stack, centers, 4, normalize="image", image_range=ranges)
    for i, (x, y) in enumerate(centers):
        np.testing.assert_allclose(got[i], ref_crop(list(stack), x, y, 4, "shift", 0.0, "image", ranges), atol=1e-6)
    # clipping to [0, 1] happened for the narrow range of channel 0
    assert got[:, 0].min() == 0.0 and got[:, 0].max() == 1.0
    np.testing.assert_array_equal(crop_stains(list(stack), centers, 4), crop_stains(stack, centers, 4))


def test_crop_stains_from_memmapped_tiff(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 2**16, (64, 48), dtype=np.uint16)
    f = tmp_path / "dapi.tif"
    tifffile.imwrite(f, img)
    mm = StainImage(f).read()
    assert isinstance(mm, np.memmap)
    centers = rng.uniform(0, 47, (10, 2))
    np.testing.assert_array_equal(crop_stains([mm], centers, 9), crop_stains([img], centers, 9))


def test_crop_errors():
    img = np.zeros((10, 10))
    with pytest.raises(StmorphInputError, match=r"rows \[1\]"):
        crop_boxes(np.array([[1.0, 1.0], [10.6, 3.0]]), 4, (10, 10))
    with pytest.raises(StmorphInputError, match="exceeds the image"):
        crop_boxes(np.array([[1.0, 1.0]]), 11, (10, 10))
    assert crop_boxes(np.array([[1.0, 1.0]]), 11, (10, 10), edge="pad").tolist() == [[-4, -4]]
    with pytest.raises(StmorphInputError, match="same shape"):
        crop_stains([img, np.zeros((9, 10))], np.array([[1.0, 1.0]]), 3)
    with pytest.raises(StmorphInputError, match="image_range"):
        crop_stains([img], np.array([[1.0, 1.0]]), 3, normalize="image", image_range=[(0, 1), (0, 1)])


# ----------------------------------------------------------------------------------------------------------
# spot planes


@pytest.mark.parametrize("padding", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("size", [9, 12])
def test_render_spot_planes_match_reference(padding, size):
    rng = np.random.default_rng(10 + padding)
    index = random_index(rng, extent=30.0)
    cells = np.array([3, 0, 5, 1, 3])  # repeated cell and an empty one
    origins = rng.integers(-5, 25, size=(cells.size, 2))
    got = render_spot_planes(index, cells, origins, size, padding=padding)
    assert got.dtype == np.uint8 and got.shape == (cells.size, 5, size, size)
    plane_of = {g: g for g in range(5)}
    for b, cell in enumerate(cells):
        xs, ys, gs = cell_mols(index, cell)
        np.testing.assert_array_equal(got[b], ref_spots(xs, ys, gs, origins[b], size, padding, plane_of))
    assert got[1].sum() == 0


def test_spots_at_crop_borders():
    # molecules exactly at / just outside every border: squares must be clipped, not wrapped or dropped
    size, padding = 6, 3  # 5 x 5 squares (lo = hi = 2)
    pts = [(0.0, 0.0), (5.9, 0.0), (0.0, 5.9), (5.9, 5.9), (-2.0, 3.0), (7.5, 3.0), (3.0, -2.5), (3.0, 8.2), (-3.0, -3.0)]
    x = np.array([p[0] for p in pts], np.float32)
    y = np.array([p[1] for p in pts], np.float32)
    index = MoleculeIndex(x=x, y=y, gene=np.zeros(len(pts), np.int32), indptr=np.array([0, len(pts)]), gene_names=("a",))
    got = render_spot_planes(index, np.array([0]), np.array([[0, 0]]), size, padding=padding)[0]
    want = ref_spots(x, y, np.zeros(len(pts)), (0, 0), size, padding, {0: 0})
    np.testing.assert_array_equal(got, want)
    # (-3, -3) lies outside even with the 2-pixel margin: the corner pixel comes only from (0, 0)
    assert got[0, 0, 0] == 1
    # molecule at x = -2 (column -2) reaches column 0 exactly; at x = 7.5 (column 7) reaches column 5
    assert want[0, 3, 0] == 1 and want[0, 3, 5] == 1


def test_even_square_centring():
    index = MoleculeIndex(
        x=np.array([3.2], np.float32), y=np.array([2.7], np.float32), gene=np.array([0], np.int32),
        indptr=np.array([0, 1]), gene_names=("a",),
    )
    got = render_spot_planes(index, np.array([0]), np.array([[0, 0]]), 8, padding=2)[0, 0]  # side 4
    rows, cols = np.nonzero(got)
    # pixel (2, 3); side 4 covers 1 before and 2 after
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 4, 2, 5)


def test_gene_subset_and_order():
    rng = np.random.default_rng(4)
    index = random_index(rng, n_genes=6, extent=15.0)
    cells, origins = np.array([1, 2, 4]), np.zeros((3, 2), dtype=np.int64)
    genes = np.array([4, 0, 2])
    got = render_spot_planes(index, cells, origins, 15, padding=1, genes=genes)
    full = render_spot_planes(index, cells, origins, 15, padding=1)
    np.testing.assert_array_equal(got, full[:, genes])
    plane_of = {4: 0, 0: 1, 2: 2}
    for b, c in enumerate(cells):
        xs, ys, gs = cell_mols(index, c)
        np.testing.assert_array_equal(got[b], ref_spots(xs, ys, gs, origins[b], 15, 1, plane_of))
    with pytest.raises(StmorphInputError, match="not in the molecule index"):
        render_spot_planes(index, cells, origins, 15, genes=np.array([0, 6]))
    with pytest.raises(StmorphInputError, match="repeated"):
        render_spot_planes(index, cells, origins, 15, genes=np.array([1, 1]))
    with pytest.raises(StmorphInputError, match="integer gene codes"):
        render_spot_planes(index, cells, origins, 15, genes=np.array(["g1"]))
    with pytest.raises(StmorphInputError, match="out of range"):
        render_spot_planes(index, np.array([99]), origins[:1], 15)


def test_out_buffer_and_renderer_and_sparse():
    rng = np.random.default_rng(5)
    index = random_index(rng, n_cells=10, extent=20.0)
    buf = np.full((8, 5, 16, 16), 7, dtype=np.uint8)  # dirty buffer: must be zeroed
    ren = SpotRenderer(index, 16, 8, padding=2)
    for _trial in range(4):
        cells = rng.integers(0, 10, size=int(rng.integers(1, 9)))
        origins = rng.integers(-4, 10, size=(cells.size, 2))
        ks = rng.integers(0, 4, cells.size)
        want = render_spot_planes(index, cells, origins, 16, padding=2)
        got = render_spot_planes(index, cells, origins, 16, padding=2, out=buf)
        assert np.shares_memory(got, buf) and got.shape[0] == cells.size
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(ren.render(cells, origins), want)
        assert int(ren.buffer.sum()) == int(want.sum())  # previous batch fully cleared
        # rotations computed on coordinates == rotating the rendered planes
        rot = render_spot_planes(index, cells, origins, 16, padding=2, rotations=ks)
        np.testing.assert_array_equal(rot, rotate_crops(want, ks))
        # sparse form: exactly the nonzeros
        coords = spot_pixels(index, cells, origins, 16, padding=2, rotations=ks)
        np.testing.assert_array_equal(coords, np.argwhere(rot))
    f32 = np.zeros((3, 5, 16, 16), np.float32)
    np.testing.assert_array_equal(
        render_spot_planes(index, np.arange(3), np.zeros((3, 2), int), 16, out=f32),
        render_spot_planes(index, np.arange(3), np.zeros((3, 2), int), 16).astype(np.float32),
    )
    with pytest.raises(StmorphInputError, match="out has shape"):
        render_spot_planes(index, np.arange(3), np.zeros((3, 2), int), 15, out=f32)


def test_buffer_pool_recycles_only_released_buffers():
    rng = np.random.default_rng(9)
    index = random_index(rng, n_cells=10, extent=12.0, empty_cell=False)
    pool = SpotBufferPool(index, 12, padding=1, max_buffers=2)
    origins = np.zeros((3, 2), dtype=np.int64)

    def want(cells):
        return render_spot_planes(index, cells, origins[: len(cells)], 12, padding=1).astype(np.float32)

    a = torch.from_numpy(pool.render([0, 1, 2], origins))
    view_b = pool.render([3, 4, 5], origins)[1:]  # a view keeps its buffer busy
    c = pool.render([6, 7], origins[:2])  # both buffers busy -> a fresh array
    assert pool.n_fresh == 1 and len(pool._buffers) == 2
    np.testing.assert_array_equal(a.numpy(), want([0, 1, 2]))
    np.testing.assert_array_equal(view_b, want([3, 4, 5])[1:])
    np.testing.assert_array_equal(c, want([6, 7]))
    del a
    d = pool.render([8, 9], origins[:2])  # the released buffer is recycled and sparsely cleared
    assert pool.n_fresh == 1 and np.shares_memory(d, pool._buffers[0])
    np.testing.assert_array_equal(d, want([8, 9]))
    np.testing.assert_array_equal(view_b, want([3, 4, 5])[1:])  # untouched
    del d, view_b
    e = pool.render([1, 2, 3, 4], np.zeros((4, 2), np.int64))  # larger batch: a free buffer grows
    np.testing.assert_array_equal(e, render_spot_planes(index, [1, 2, 3, 4], np.zeros((4, 2), int), 12, padding=1))


@pytest.mark.parametrize("padding", [1, 3])
def test_rotating_planes_equals_rendering_rotated_coordinates(padding):
    """For odd squares, rot90 of the planes == planes of molecules moved to the rotated pixels."""
    rng = np.random.default_rng(6)
    size = 11
    index = random_index(rng, n_cells=4, extent=11.0, empty_cell=False)
    planes = render_spot_planes(index, np.arange(4), np.zeros((4, 2), int), size, padding=padding)
    for k in range(4):
        r = np.floor(index.y).astype(int)
        c = np.floor(index.x).astype(int)
        s1 = size - 1
        nr, nc = {0: (r, c), 1: (s1 - c, r), 2: (s1 - r, s1 - c), 3: (c, s1 - r)}[k]
        moved = MoleculeIndex(
            x=(nc + 0.5).astype(np.float32), y=(nr + 0.5).astype(np.float32), gene=index.gene,
            indptr=index.indptr, gene_names=index.gene_names,
        )
        rendered = render_spot_planes(moved, np.arange(4), np.zeros((4, 2), int), size, padding=padding)
        np.testing.assert_array_equal(rotate_crops(planes, np.full(4, k)), rendered)
        np.testing.assert_array_equal(rotate_crops(planes, k), rendered)


def test_spot_origins_modes():
    rng = np.random.default_rng(7)
    index = random_index(rng, n_cells=5, extent=50.0)
    cells = np.arange(5)
    centers = rng.uniform(0, 50, (5, 2))
    cen = spot_origins(index, cells, centers, 20, mode="centroid")
    want = np.array([[math.floor(y + 0.5) - 10, math.floor(x + 0.5) - 10] for x, y in centers])
    np.testing.assert_array_equal(cen, want)
    cor = spot_origins(index, cells, centers, 20, mode="corner", padding=3)
    np.testing.assert_array_equal(cor[0], cen[0])  # cell 0 has no molecules: centroid fallback
    for i in range(1, 5):
        xs, ys, _ = cell_mols(index, i)
        assert cor[i].tolist() == [int(np.floor(ys).min()) - 2, int(np.floor(xs).min()) - 2]
        # the top-left spots are not clipped: the first rows/cols of the crop are the square margin
        planes = render_spot_planes(index, [i], cor[i : i + 1], 60, padding=3)[0].max(axis=0)
        assert planes[0].any() and planes[:, 0].any()
        full = ref_spots(xs, ys, np.zeros(len(xs)), cor[i], 60, 3, {0: 0})[0]
        np.testing.assert_array_equal(planes, full)


def test_rotate_crops_numpy_and_torch():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(6, 3, 5, 5)).astype(np.float32)
    ks = np.array([0, 1, 2, 3, 5, -1])
    got = rotate_crops(a, ks)
    for i in range(6):
        for ch in range(3):
            np.testing.assert_array_equal(got[i, ch], np.rot90(a[i, ch], ks[i] % 4))
    t = rotate_crops(torch.from_numpy(a), ks)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), got)
    # counter-clockwise convention
    m = np.array([[[[1, 2], [3, 4]]]])
    assert rotate_crops(m, np.array([1]))[0, 0].tolist() == [[2, 4], [1, 3]]
    with pytest.raises(StmorphInputError):
        rotate_crops(a, np.array([1, 2]))


# ----------------------------------------------------------------------------------------------------------
# dataset


def tiny_sample(rng, n_cells=12, h=40, w=48):
    genes = ["ga", "gb", "gc", "gd"]
    cx = rng.uniform(0, w - 1, n_cells)
    cy = rng.uniform(0, h - 1, n_cells)
    cx[:2] = [0.2, w - 1.2]  # border cells
    cy[:2] = [h - 1.1, 0.4]
    rows = []
    for i in range(n_cells):
        n_mol = int(rng.integers(0, 15)) if i != 3 else 1
        for _ in range(n_mol):
            g = genes[int(rng.integers(0, 3))]  # gene "gd" never occurs
            rows.append((cx[i] + rng.normal(0, 3), cy[i] + rng.normal(0, 3), g, f"cell{i}"))
    rows.append((5.0, 5.0, "ga", None))  # unassigned
    mol = pd.DataFrame(rows, columns=["x", "y", "gene", "cell_id"])
    mol["gene"] = pd.Categorical(mol["gene"], categories=genes)
    mol["cell_id"] = mol["cell_id"].astype("string")
    ids = [f"cell{i}" for i in range(n_cells)]
    assigned = mol.dropna(subset=["cell_id"])
    X = pd.crosstab(pd.Categorical(assigned["cell_id"], categories=ids), assigned["gene"], dropna=False)
    X = X.reindex(index=ids, columns=genes, fill_value=0).to_numpy(np.float32)
    a = ad.AnnData(X=X, obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=genes))
    a.obsm["spatial"] = np.stack([cx, cy], axis=1)
    imgs = {
        "DAPI": StainImage(rng.integers(0, 1000, (h, w)).astype(np.uint16)),
        "membrane": StainImage(rng.normal(5, 1, (h, w)).astype(np.float32)),
    }
    return SpatialSample(a, mol, imgs, pixel_size=1.0, name="tiny")


@pytest.fixture()
def sample():
    return tiny_sample(np.random.default_rng(11))


def test_dataset_items_match_kernels(sample):
    ds = CellCropDataset(sample, crop_size=9, channels=["membrane", "DAPI"], genes="all", spot_padding=1)
    assert len(ds) == sample.n_cells and ds.gene_names == sample.gene_names
    assert ds.channel_names == ["membrane", "DAPI"]
    index = sample.molecule_index()
    imgs = [sample.images["membrane"].read(), sample.images["DAPI"].read()]
    for i in [0, 1, 3, 7]:
        item = ds[i]
        assert set(item) == {"index", "spots", "stains", "counts"}
        assert item["index"].dtype == torch.int64 and int(item["index"]) == i
        assert item["spots"].dtype == torch.float32 and item["spots"].shape == (4, 9, 9)
        x, y = sample.centroids[i]
        np.testing.assert_allclose(item["stains"].numpy(), ref_crop(imgs, x, y, 9, "shift", 0.0, "crop"), atol=1e-6)
        # spots use the (shifted) stain box so the modalities are aligned
        origin = ref_box(x, y, 9, 40, 48, "shift")
        xs, ys, gs = cell_mols(index, i)
        want = ref_spots(xs, ys, gs, origin, 9, 1, {g: g for g in range(4)})
        np.testing.assert_array_equal(item["spots"].numpy(), want.astype(np.float32))
        np.testing.assert_array_equal(item["counts"].numpy(), sample.adata.X[i])


def test_dataset_get_batch_equals_stacked_items(sample):
    for kw in [dict(rotate=False), dict(rotate=True, seed=3), dict(stain_edge="pad", spot_origin="corner", rotate=True)]:
        ds = CellCropDataset(sample, crop_size=8, channels=["DAPI", "membrane"], **kw)
        idx = [5, 0, 11, 5, 2]
        batch = ds.get_batch(idx)
        items = [ds[i] for i in idx]
        for key in ("index", "spots", "stains", "counts"):
            torch.testing.assert_close(batch[key], torch.stack([it[key] for it in items]), rtol=0, atol=0)
        torch.testing.assert_close(ds[idx]["spots"], batch["spots"])
        torch.testing.assert_close(ds[1:3]["stains"], ds.get_batch([1, 2])["stains"])
        empty = ds.get_batch([])
        assert empty["spots"].shape == (0, 4, 8, 8) and empty["stains"].shape == (0, 2, 8, 8)
        # pooled buffers: batches still held are never overwritten by later batches
        held = [ds.get_batch([i, i + 1]) for i in range(6)]
        for i, h in enumerate(held):
            torch.testing.assert_close(h["spots"], torch.stack([ds[i]["spots"], ds[i + 1]["spots"]]))
        # the reused buffer gives the same planes, also after a previous, different batch
        ds.get_batch([1, 2, 3, 4, 6, 7, 8], reuse_buffer=True)
        torch.testing.assert_close(ds.get_batch(idx, reuse_buffer=True)["spots"], batch["spots"], rtol=0, atol=0)
        coords = ds.spot_pixels(idx)
        torch.testing.assert_close(coords, torch.nonzero(batch["spots"]))


def test_dataset_rotations_deterministic_and_shared_across_channels(sample):
    plain = CellCropDataset(sample, crop_size=8, channels=["DAPI", "membrane"])
    rot = CellCropDataset(sample, crop_size=8, channels=["DAPI", "membrane"], rotate=True, seed=5)
    idx = np.arange(len(rot))
    seen = set()
    for epoch in range(3):
        rot.set_epoch(epoch)
        ks = rot.rotations(idx)
        np.testing.assert_array_equal(ks, rotation_ks(5, epoch, sample.n_cells))
        seen.update(ks.tolist())
        b, p = rot.get_batch(idx), plain.get_batch(idx)
        torch.testing.assert_close(b["stains"], rotate_crops(p["stains"], ks))
        torch.testing.assert_close(b["spots"], rotate_crops(p["spots"], ks))
        torch.testing.assert_close(b["counts"], p["counts"])
    assert seen == {0, 1, 2, 3}
    # same (seed, epoch) -> same rotations, whatever the batch composition; another seed differs
    rot2 = CellCropDataset(sample, crop_size=8, channels=["DAPI"], rotate=True, seed=5)
    rot2.set_epoch(1)
    rot.set_epoch(1)
    np.testing.assert_array_equal(rot2.rotations([4, 2]), rot.rotations(idx)[[4, 2]])
    other = CellCropDataset(sample, crop_size=8, channels=["DAPI"], rotate=True, seed=6)
    assert not np.array_equal(other.rotations(idx), rot.rotations(idx))


def test_dataset_filters(sample):
    X = sample.adata.X
    ds = CellCropDataset(sample, crop_size=8, genes="all", min_gene_counts=1, min_cell_transcripts=3)
    keep = X.sum(axis=1) >= 3
    assert ds.n_dropped_cells == int((~keep).sum()) > 0
    assert list(ds.cell_ids) == list(sample.cell_ids[keep])
    np.testing.assert_array_equal(ds.cell_positions, np.flatnonzero(keep))
    assert "gd" not in ds.gene_names and ds.gene_names == ["ga", "gb", "gc"]
    b = ds.get_batch(np.arange(len(ds)))
    assert b["spots"].shape[1] == 3 and "stains" not in b
    np.testing.assert_array_equal(b["counts"].numpy(), X[keep][:, :3])
    # explicit gene subset/order, selected cells by id
    ds2 = CellCropDataset(sample, cells=["cell4", "cell2"], crop_size=8, genes=["gc", "ga"])
    assert list(ds2.cell_ids) == ["cell4", "cell2"] and ds2.gene_names == ["gc", "ga"]
    full = CellCropDataset(sample, crop_size=8, genes="all")
    torch.testing.assert_close(ds2.get_batch([0, 1])["spots"], full.get_batch([4, 2])["spots"][:, [2, 0]])
    # stains only: no spots, counts over all genes
    ds3 = CellCropDataset(sample, crop_size=8, channels=["DAPI"], genes=None)
    b3 = ds3[0]
    assert "spots" not in b3 and b3["counts"].shape == (4,)


def test_dataset_loader_reproducible(sample):
    ds = CellCropDataset(sample, crop_size=6, channels=["DAPI"], rotate=True, seed=1)
    dl = ds.loader(5, shuffle=True, seed=2)
    assert len(dl) == 3
    e0 = [b["index"].tolist() for b in dl]
    e1 = [b["index"].tolist() for b in dl]
    assert sorted(sum(e0, [])) == list(range(12)) and e0 != e1
    dl2 = ds.loader(5, shuffle=True, seed=2, drop_last=True)
    batches = list(dl2)
    assert len(batches) == 2 and [b["index"].tolist() for b in batches] == e0[:2]
    torch.testing.assert_close(batches[0]["stains"], ds.get_batch(e0[0])["stains"])  # epoch 0 again
    assert ds.epoch == 0
    # pickling (spawned DataLoader workers) drops the render buffers but keeps the results
    import pickle

    ds.get_batch([0, 1])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._pool is None
    torch.testing.assert_close(clone.get_batch([3, 4])["stains"], ds.get_batch([3, 4])["stains"])
    # a torch DataLoader with a batch sampler gives the same batches
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), 4, drop_last=False)
    dl3 = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None)
    torch.testing.assert_close(next(iter(dl3))["stains"], ds.get_batch([0, 1, 2, 3])["stains"])


def test_dataset_errors(sample):
    with pytest.raises(StmorphInputError, match=r"available channels \['DAPI', 'membrane'\]"):
        CellCropDataset(sample, channels=["DAPI", "phalloidin"])
    with pytest.raises(StmorphInputError, match="nope"):
        CellCropDataset(sample, genes=["ga", "nope"])
    with pytest.raises(StmorphInputError, match="cellX"):
        CellCropDataset(sample, cells=["cell1", "cellX"])
    a = sample.adata.copy()
    a.obsm["spatial"][5] = [100.0, 3.0]
    bad = SpatialSample(a, sample.molecules, sample.images)
    with pytest.raises(StmorphInputError, match="cell5"):
        CellCropDataset(bad, crop_size=8, channels=["DAPI"])
    CellCropDataset(bad, crop_size=8, channels=[])  # spots alone do not need the image bounds
    no_mol = SpatialSample(sample.adata, None, sample.images)
    with pytest.raises(StmorphInputError, match="molecule table"):
        CellCropDataset(no_mol, crop_size=8)
    with pytest.raises(IndexError):
        CellCropDataset(sample, crop_size=8)[12]


# ----------------------------------------------------------------------------------------------------------
# real data: Xenium crop, realistic molecule density


@pytest.mark.realdata
def test_xenium_crop_rendering_matches_reference(xenium_crop_dir):
    tx = pd.read_csv(xenium_crop_dir / "transcripts.csv.gz", usecols=["cell_id", "feature_name", "x_location", "y_location"])
    tx = tx[tx["cell_id"].astype(str) != "-1"]
    tx = tx[~tx["feature_name"].str.contains("Control|BLANK|NegControl|Unassigned", regex=True)]
    x = ((tx["x_location"] - 1062.0) / 0.2125).to_numpy(np.float32)
    y = ((tx["y_location"] - 212.0) / 0.2125).to_numpy(np.float32)
    cell = pd.Categorical(tx["cell_id"].astype(str))
    gene = pd.Categorical(tx["feature_name"])
    order = np.argsort(cell.codes, kind="stable")
    counts = np.bincount(cell.codes, minlength=len(cell.categories))
    index = MoleculeIndex(
        x=x[order], y=y[order], gene=gene.codes[order].astype(np.int32),
        indptr=np.concatenate([[0], np.cumsum(counts)]), gene_names=tuple(gene.categories),
    )
    cx = np.bincount(cell.codes, weights=x, minlength=len(counts)) / np.maximum(counts, 1)
    cy = np.bincount(cell.codes, weights=y, minlength=len(counts)) / np.maximum(counts, 1)
    cells = np.arange(0, len(counts), 97)[:10]
    origins = spot_origins(index, cells, np.stack([cx, cy], 1)[cells], 100)
    got = render_spot_planes(index, cells, origins, 100, padding=3)
    plane_of = {g: g for g in range(len(index.gene_names))}
    for b, c in enumerate(cells):
        xs, ys, gs = cell_mols(index, c)
        np.testing.assert_array_equal(got[b], ref_spots(xs, ys, gs, origins[b], 100, 3, plane_of))
    assert got.sum() > 0
