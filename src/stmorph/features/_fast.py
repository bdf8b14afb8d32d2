"""The ``fast`` CellProfiler engine: cp-measure's measurements on a stack of crops at once, equal to cp-measure's.

:func:`stmorph.features.measure_crops` (``engine="fast"``, the default) calls :func:`measure_stack` on chunks of
crops instead of cp-measure's functions one crop and one channel at a time. Every module computes what the
cp-measure (numpy, ``accelerator=None``) function computes, with the same arithmetic where that decides the value:

* **geometry once**: everything that depends only on the object (the whole crop for the grid object) is computed
  once per crop shape and reused for every crop and channel - the radial-distribution rings and wedges
  (cp-measure's own centrosome calls), the granularity "upsample then average" weights (cp-measure's own sparse
  operator), the power-spectrum radii;
* **float32 where cp-measure is float32**: intensity sums, means, standard deviations and quantiles are numpy
  reductions of the same float32 values along the same contiguous axis (bit-identical per crop), radial histograms
  are accumulated sequentially in float32 in pixel order as ``scipy.sparse.coo_matrix.toarray`` does;
* **numba kernels** for the per-pixel loops: granularity (cross erosion, grey-scale reconstruction by dilation
  (Vincent's hybrid algorithm: the reconstruction is unique, so equal to scikit-image's), the weighted means in
  CSR order), the radial histograms and Haralick texture (co-occurrence counts as mahotas, then mahotas's 13
  formulas in float64).

Values are therefore equal to cp-measure's to the last bit for most features and to rounding (~1e-12 relative)
for the rest; ``tests/test_features_fast.py`` checks every feature crop by crop, and ``benchmarks/RESULTS.md``
lists the tolerance of each and why. Haralick ``InfoMeas2`` is the one feature where the two can differ by more
than rounding in relative terms: where a co-occurrence matrix is (nearly) independent, mahotas's value is
``sqrt(1 - exp(-2 d))`` of a difference ``d`` of two entropies that is itself rounding noise (~1e-15), so both
implementations return noise of order ``sqrt(1e-15) ~ 3e-8``; the difference is bounded by ``1e-7`` absolute.
The one place where the values differ on purpose is granularity on crops of 20-35 px (default parameters), where
cp-measure's own value is undefined (:func:`granularity_stack`).

Modules ``sizeshape`` and ``correlation`` are not re-implemented: the caller measures them with cp-measure.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

__all__ = [
    "FAST_MODULES",
    "granularity_stack",
    "intensity_stack",
    "measure_stack",
    "otsu_binary_stack",
    "otsu_thresholds",
    "quality_stack",
    "radial_stack",
    "texture_stack",
]

#: Modules this engine computes itself (the rest go through cp-measure per crop).
FAST_MODULES: tuple[str, ...] = ("quality", "intensity", "radial_distribution", "texture", "granularity")
#: The parameters each of them takes (those of the cp-measure function / of ``image_quality``).
_PARAMS: dict[str, set[str]] = {
    "quality": {"local_scale"},
    "intensity": {"edge_measurements", "legacy"},
    "radial_distribution": {"bin_count", "scaled", "maximum_radius"},
    "texture": {"scale", "gray_levels"},
    "granularity": {"subsample_size", "image_sample_size", "element_size", "granular_spectrum_length"},
}

_HARALICK = (
    "AngularSecondMoment Contrast Correlation Variance InverseDifferenceMoment SumAverage SumVariance SumEntropy "
    "Entropy DifferenceVariance DifferenceEntropy InfoMeas1 InfoMeas2"
).split()
_INTENSITY = [
    "Intensity_IntegratedIntensity", "Intensity_MeanIntensity", "Intensity_StdIntensity", "Intensity_MinIntensity",
    "Intensity_MaxIntensity", "Intensity_MassDisplacement", "Intensity_LowerQuartileIntensity",
    "Intensity_MedianIntensity", "Intensity_MADIntensity", "Intensity_UpperQuartileIntensity",
    "Location_CenterMassIntensity_X", "Location_CenterMassIntensity_Y", "Location_CenterMassIntensity_Z",
    "Location_MaxIntensity_X", "Location_MaxIntensity_Y", "Location_MaxIntensity_Z",
]
_INTENSITY_EDGE = [
    "Intensity_IntegratedIntensityEdge", "Intensity_MeanIntensityEdge", "Intensity_StdIntensityEdge",
    "Intensity_MinIntensityEdge", "Intensity_MaxIntensityEdge",
]
_QUALITY = [
    "ImageQuality_FocusScore", "ImageQuality_LocalFocusScore", "ImageQuality_PowerLogLogSlope",
    "ImageQuality_PercentMaximal", "ImageQuality_PercentMinimal", "ImageQuality_ThresholdOtsu",
]


# ---------------------------------------------------------------------------------------------------------------
# numba kernels (module level so that numba's on-disk cache hits)
# ---------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _erode_cross(src, dst):  # pragma: no cover - numba
    """Grey erosion with the 3 x 3 cross (``disk(1)``); out-of-image neighbours ignored (= scikit-image 'reflect')."""
    h, w = src.shape
    for y in range(h):
        for x in range(w):
            v = src[y, x]
            if y > 0 and src[y - 1, x] < v:
                v = src[y - 1, x]
            if y < h - 1 and src[y + 1, x] < v:
                v = src[y + 1, x]
            if x > 0 and src[y, x - 1] < v:
                v = src[y, x - 1]
            if x < w - 1 and src[y, x + 1] < v:
                v = src[y, x + 1]
            dst[y, x] = v


@njit(cache=True, nogil=True)
def _grey_footprint(src, dys, dxs, minimum, dst):  # pragma: no cover - numba
    """Grey erosion (``minimum``) or dilation of each image of a stack with a symmetric footprint given by its
    offsets, out-of-image offsets ignored.

    For a disk this equals scikit-image's ``erosion``/``dilation`` (scipy ``mode="reflect"``: a reflected
    neighbour of a disk offset lies inside the disk), except where scipy reads outside the array: an axis of 2
    pixels with a radius >= 8 (see :func:`granularity_stack`).
    """
    n, h, w = src.shape
    for t in range(n):
        for y in range(h):
            for x in range(w):
                v = src[t, y, x]
                for k in range(dys.shape[0]):
                    yy = y + dys[k]
                    xx = x + dxs[k]
                    if yy < 0 or yy >= h or xx < 0 or xx >= w:
                        continue
                    u = src[t, yy, xx]
                    if minimum:
                        if u < v:
                            v = u
                    elif u > v:
                        v = u
                dst[t, y, x] = v


@njit(cache=True, nogil=True)
def _reconstruct(seed, mask, out, queue, inq):  # pragma: no cover - numba
    """Grey-scale reconstruction by dilation of ``seed`` under ``mask`` (``seed <= mask``), 4-connected.

    Vincent (1993)'s hybrid algorithm: a raster and an anti-raster pass, then a FIFO propagation. The
    reconstruction is unique, so this equals ``skimage.morphology.reconstruction(seed, mask, footprint=disk(1))``
    value for value (its padding with ``min(seed)`` cannot raise any pixel).
    """
    h, w = seed.shape
    for y in range(h):
        for x in range(w):
            v = seed[y, x]
            if y > 0 and out[y - 1, x] > v:
                v = out[y - 1, x]
            if x > 0 and out[y, x - 1] > v:
                v = out[y, x - 1]
            m = mask[y, x]
            out[y, x] = v if v < m else m
    size = h * w
    head = 0
    n_q = 0
    for y in range(h - 1, -1, -1):
        for x in range(w - 1, -1, -1):
            v = out[y, x]
            if y < h - 1 and out[y + 1, x] > v:
                v = out[y + 1, x]
            if x < w - 1 and out[y, x + 1] > v:
                v = out[y, x + 1]
            m = mask[y, x]
            if m < v:
                v = m
            out[y, x] = v
            push = False
            if y < h - 1 and out[y + 1, x] < v and out[y + 1, x] < mask[y + 1, x]:
                push = True
            if x < w - 1 and out[y, x + 1] < v and out[y, x + 1] < mask[y, x + 1]:
                push = True
            inq[y * w + x] = push
            if push:
                queue[(head + n_q) % size] = y * w + x
                n_q += 1
    while n_q > 0:
        p = queue[head]
        head = (head + 1) % size
        n_q -= 1
        inq[p] = False
        py = p // w
        px = p - py * w
        v = out[py, px]
        for k in range(4):
            qy = py
            qx = px
            if k == 0:
                qy = py - 1
            elif k == 1:
                qy = py + 1
            elif k == 2:
                qx = px - 1
            else:
                qx = px + 1
            if qy < 0 or qy >= h or qx < 0 or qx >= w:
                continue
            jq = out[qy, qx]
            mq = mask[qy, qx]
            if jq < v and mq != jq:
                out[qy, qx] = v if v < mq else mq
                q = qy * w + qx
                if not inq[q]:
                    inq[q] = True
                    queue[(head + n_q) % size] = q
                    n_q += 1


@njit(cache=True, nogil=True)
def _granularity_kernel(pixels, weights, wix, counts, start_means, n_steps, out):  # pragma: no cover - numba
    """Granular spectrum of each background-subtracted, subsampled image ``pixels[t]`` (float32).

    Step ``g``: ``ero = erosion(ero, disk(1))``, ``rec = reconstruction(ero, pixels)``, the object's mean of
    ``rec`` brought back to the original scale = ``sum_k weights[wix[t], k] * rec[k] / counts[t]`` summed in
    column order (the order of scipy's CSR mat-vec), ``out[t, g] = (mean_before - mean) * 100 / start_mean``.
    """
    n, h, w = pixels.shape
    ero = np.empty((h, w), np.float32)
    tmp = np.empty((h, w), np.float32)
    rec = np.empty((h, w), np.float32)
    queue = np.empty(h * w, np.int64)
    inq = np.zeros(h * w, np.bool_)
    eps = 2.220446049250313e-16  # np.finfo(float).eps
    for t in range(n):
        img = pixels[t]
        ero[:, :] = img
        current = start_means[t]
        start = eps if current < eps else current  # np.maximum (NaN stays NaN)
        wt = weights[wix[t]]
        for g in range(n_steps):
            _erode_cross(ero, tmp)
            ero[:, :] = tmp
            _reconstruct(ero, img, rec, queue, inq)
            s = 0.0
            k = 0
            for y in range(h):
                for x in range(w):
                    s += wt[k] * np.float64(rec[y, x])
                    k += 1
            new = s / counts[t]
            out[t, g] = (current - new) * 100 / start
            current = new


@njit(cache=True, nogil=True)
def _masked_sums(pix, masks, out):  # pragma: no cover - numba
    """``out[t] = sum of pix[t] over masks[t]`` in float64, sequentially in pixel order (as ``np.bincount``)."""
    n, h, w = pix.shape
    for t in range(n):
        s = 0.0
        for y in range(h):
            for x in range(w):
                if masks[t, y, x]:
                    s += np.float64(pix[t, y, x])
        out[t] = s


@njit(cache=True, nogil=True)
def _radial_sums(pix, gix, bins, wedges, n_bins, hist, wedge_sums):  # pragma: no cover - numba
    """Per-crop ring sums and ring x wedge sums, accumulated in float32 in pixel order.

    ``bins[gix[t]]`` / ``wedges[gix[t]]`` hold each pixel's ring and wedge (-1: not a measured pixel), C order;
    the float32 sequential sums are what ``scipy.sparse.coo_matrix(...).toarray()`` computes in cp-measure.
    """
    n, h, w = pix.shape
    for t in range(n):
        b = bins[gix[t]]
        r = wedges[gix[t]]
        for i in range(n_bins):
            hist[t, i] = np.float32(0.0)
            for k in range(8):
                wedge_sums[t, i, k] = np.float32(0.0)
        k = 0
        for y in range(h):
            for x in range(w):
                bi = b[k]
                if bi >= 0:
                    v = pix[t, y, x]
                    hist[t, bi] += v
                    wedge_sums[t, bi, r[k]] += v
                k += 1


@njit(cache=True, nogil=True)
def _histogram_256(x, first, denom, edges, nbins, counts):  # pragma: no cover - numba
    """``np.histogram(x[t], bins=256)`` of each row, with numpy's arithmetic in ``x``'s dtype.

    numpy's uniform-bin fast path: ``int((x - first) / denom * 256)``, moved one bin down or up where ``x`` falls
    on the other side of a (``linspace``) bin edge; the last bin includes the right edge.
    """
    n, m = x.shape
    last = counts.shape[1] - 1
    for t in range(n):
        f0 = first[t]
        dn = denom[t]
        e = edges[t]
        for k in range(last + 1):
            counts[t, k] = 0
        for i in range(m):
            v = x[t, i]
            b = int(((v - f0) / dn) * nbins)
            if b == last + 1:
                b -= 1
            if v < e[b]:
                b -= 1
            if b != last and v >= e[b + 1]:
                b += 1
            counts[t, b] += 1


@njit(cache=True, nogil=True, inline="always")
def _order_key(u):  # pragma: no cover - numba
    # float32 bit pattern -> unsigned key with the same order as the float values
    if u & np.uint32(0x80000000):
        return u ^ np.uint32(0xFFFFFFFF)
    return u | np.uint32(0x80000000)


@njit(cache=True, nogil=True)
def _select_ranks(x, ranks, out):  # pragma: no cover - numba
    """``out[t, k] = np.sort(x[t])[ranks[k]]`` for float32 rows (``ranks`` ascending), by a radix select.

    The float32 bit patterns are mapped to order-preserving unsigned keys; one histogram of their high 16 bits
    locates the bucket of every wanted rank, then only the keys in those buckets are sorted. Order statistics
    are values of ``x``, so this equals a full sort exactly (up to the sign of a zero, which compares equal).
    """
    n, m = x.shape
    nr = ranks.shape[0]
    keys = x.view(np.uint32)
    hist = np.zeros(65536, np.int32)
    slot_of = np.full(65536, -1, np.int32)
    rb = np.empty(nr, np.int64)
    rr = np.empty(nr, np.int64)
    off = np.empty(nr + 1, np.int64)
    fill = np.empty(nr, np.int64)
    buf = np.empty(m, np.uint32)
    for t in range(n):
        hist[:] = 0
        for i in range(m):
            hist[_order_key(keys[t, i]) >> np.uint32(16)] += 1
        j = 0
        acc = 0
        for b in range(65536):
            c = hist[b]
            while j < nr and ranks[j] < acc + c:
                rb[j] = b
                rr[j] = ranks[j] - acc
                j += 1
            acc += c
            if j == nr:
                break
        ns = 0
        off[0] = 0
        for j in range(nr):
            b = rb[j]
            if slot_of[b] < 0:
                slot_of[b] = ns
                off[ns + 1] = off[ns] + hist[b]
                fill[ns] = 0
                ns += 1
        for i in range(m):
            k = _order_key(keys[t, i])
            sl = slot_of[k >> np.uint32(16)]
            if sl >= 0:
                buf[off[sl] + fill[sl]] = k
                fill[sl] += 1
        for sl in range(ns):
            buf[off[sl] : off[sl + 1]] = np.sort(buf[off[sl] : off[sl + 1]])
        for j in range(nr):
            k = buf[off[slot_of[rb[j]]] + rr[j]]
            u = k ^ np.uint32(0x80000000) if k & np.uint32(0x80000000) else k ^ np.uint32(0xFFFFFFFF)
            out[t, j] = np.array([u], np.uint32).view(np.float32)[0]
        for j in range(nr):
            slot_of[rb[j]] = -1


@njit(cache=True, nogil=True)
def _centres_of_mass(pix, sy, sx):  # pragma: no cover - numba
    """``sy[t] = sum_yx y * pix[t, y, x]``, ``sx[t]`` likewise, in float64 (divide by the integrated intensity)."""
    n, h, w = pix.shape
    for t in range(n):
        a = 0.0
        b = 0.0
        for y in range(h):
            for x in range(w):
                v = np.float64(pix[t, y, x])
                a += y * v
                b += x * v
        sy[t] = a
        sx[t] = b


@njit(cache=True, nogil=True)
def _entropy(a, n):  # pragma: no cover - numba
    s = 0.0
    for i in range(n):
        v = a[i]
        if v > 0.0:
            s -= np.log2(v) * v
    return s


@njit(cache=True, nogil=True)
def _haralick_kernel(q, scale, out):  # pragma: no cover - numba
    """The 13 Haralick features for 4 directions of each quantised image ``q[t]`` (uint8, 0 = ignored).

    Co-occurrence counts as ``mahotas.features.haralick(img, distance=scale, ignore_zeros=True)`` (symmetric,
    directions (0, 1), (1, 1), (1, 0), (1, -1) times ``scale``), then mahotas's formulas (not the centred
    variance of cp-measure's numba backend) in float64. A direction without a non-zero pair: the whole image NaN.
    """
    n, h, w = q.shape
    cmat = np.zeros((256, 256), np.int64)
    px = np.zeros(256)
    py = np.zeros(256)
    pxpy = np.zeros(512)
    pxmy = np.zeros(256)
    present = np.zeros(256, np.bool_)
    lev = np.zeros(256, np.int64)
    dys = (0, 1, 1, 1)
    dxs = (1, 1, 0, -1)
    for t in range(n):
        img = q[t]
        present[:] = False
        for y in range(h):
            for x in range(w):
                present[img[y, x]] = True
        fm1 = 0
        n_lev = 0  # the non-zero grey levels in the image: the only rows / columns a GLCM entry can have
        for k in range(256):
            if present[k]:
                fm1 = k + 1
                if k > 0:
                    lev[n_lev] = k
                    n_lev += 1
        empty = False
        for d in range(4):
            dy = dys[d] * scale
            dx = dxs[d] * scale
            for ii in range(n_lev):
                for jj in range(n_lev):
                    cmat[lev[ii], lev[jj]] = 0
            total = 0
            for y in range(h):
                y2 = y + dy
                if y2 < 0 or y2 >= h:
                    continue
                for x in range(w):
                    x2 = x + dx
                    if x2 < 0 or x2 >= w:
                        continue
                    a = img[y, x]
                    b = img[y2, x2]
                    if a == 0 or b == 0:
                        continue
                    cmat[a, b] += 1
                    cmat[b, a] += 1
                    total += 2
            if total == 0:
                empty = True
                break
            T = np.float64(total)
            for k in range(fm1):
                px[k] = 0.0
                py[k] = 0.0
                pxmy[k] = 0.0
            for k in range(2 * fm1):
                pxpy[k] = 0.0
            asm = 0.0
            ent = 0.0
            ij = 0.0
            idm = 0.0
            for ii in range(n_lev):
                i = lev[ii]
                for jj in range(n_lev):
                    j = lev[jj]
                    c = cmat[i, j]
                    if c == 0:
                        continue
                    p = c / T
                    px[j] += p  # p.sum(0)
                    py[i] += p  # p.sum(1)
                    asm += p * p
                    ent -= np.log2(p) * p
                    ij += (i * j) * p
                    idm += (1.0 / ((i - j) * (i - j) + 1)) * p
                    pxpy[i + j] += p
                    pxmy[i - j if i >= j else j - i] += p
            ux = 0.0
            uy = 0.0
            ex2 = 0.0
            ey2 = 0.0
            for k in range(fm1):
                ux += px[k] * k
                uy += py[k] * k
                ex2 += px[k] * (k * k)
                ey2 += py[k] * (k * k)
            vx = ex2 - ux * ux
            vy = ey2 - uy * uy
            sx = np.sqrt(vx)
            sy = np.sqrt(vy)
            contrast = 0.0
            for k in range(fm1):
                contrast += (k * k) * pxmy[k]
            sum_avg = 0.0
            sum_sq = 0.0
            for k in range(2 * fm1):
                sum_avg += k * pxpy[k]
                sum_sq += (k * k) * pxpy[k]
            # difference variance: numpy's var of the length-fm1 P(|i - j|) array
            dm = 0.0
            for k in range(fm1):
                dm += pxmy[k]
            dm /= fm1
            dvar = 0.0
            for k in range(fm1):
                dvar += (pxmy[k] - dm) * (pxmy[k] - dm)
            dvar /= fm1
            hx = _entropy(px, fm1)
            hy = _entropy(py, fm1)
            # HXY1 = -sum p_ij log2(px_i py_j) over p > 0; HXY2 = -sum_ij px_i py_j log2(px_i py_j)
            hxy1 = 0.0
            for ii in range(n_lev):
                i = lev[ii]
                for jj in range(n_lev):
                    j = lev[jj]
                    c = cmat[i, j]
                    if c == 0:
                        continue
                    hxy1 -= np.log2(px[i] * py[j]) * (c / T)
            sxs = 0.0
            sys_ = 0.0
            for k in range(fm1):
                sxs += px[k]
                sys_ += py[k]
            hxy2 = hx * sys_ + hy * sxs
            o = out[t, d]
            o[0] = asm
            o[1] = contrast
            o[2] = 1.0 if (sx == 0.0 or sy == 0.0) else (1.0 / sx / sy) * (ij - ux * uy)
            o[3] = vx
            o[4] = idm
            o[5] = sum_avg
            o[6] = sum_sq - sum_avg * sum_avg
            o[7] = _entropy(pxpy, 2 * fm1)
            o[8] = ent
            o[9] = dvar
            o[10] = _entropy(pxmy, fm1)
            hm = hx if hx > hy else hy
            o[11] = (ent - hxy1) if hm == 0.0 else (ent - hxy1) / hm
            a = 1.0 - np.exp(-2.0 * (hxy2 - ent))
            o[12] = np.sqrt(a if a > 0.0 else 0.0)
        if empty:
            for d in range(4):
                for f in range(13):
                    out[t, d, f] = np.nan


# ---------------------------------------------------------------------------------------------------------------
# modules on a stack: (n, S, S) float32 pixels, optional (n, S, S) bool masks -> (n, k) float64
# ---------------------------------------------------------------------------------------------------------------
def otsu_thresholds(images: np.ndarray) -> np.ndarray:
    """``skimage.filters.threshold_otsu`` of every image of a stack (bit-identical), NaN for a constant image.

    Parameters
    ----------
    images
        ``(n, H, W)`` float32 or float64 images.

    Returns
    -------
    ``(n,)`` thresholds in the images' dtype.
    """
    x = np.ascontiguousarray(images)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    dt = flat.dtype.type
    lo = flat.min(axis=1)
    hi = flat.max(axis=1)
    out = np.full(n, np.nan, dtype=flat.dtype)
    var = hi > lo
    if not var.any():
        return out
    flat, lo, hi = flat[var], lo[var], hi[var]
    # np.histogram(image, bins=256): edges = linspace(min, max, 257) in the image dtype
    edges = np.stack([np.linspace(a, b, 257, endpoint=True, dtype=flat.dtype) for a, b in zip(lo, hi)])
    counts = np.empty((flat.shape[0], 256), np.int64)
    _histogram_256(flat, lo, np.subtract(hi, lo, dtype=flat.dtype), edges, dt(256), counts)
    # skimage's threshold_otsu on (counts as float32, bin centres), one row per image
    counts = counts.astype(np.float32)
    centres = (edges[:, :-1] + edges[:, 1:]) / 2.0
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    mean1 = np.cumsum(counts * centres, axis=1) / weight1
    mean2 = (np.cumsum((counts * centres)[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
    variance12 = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    idx = np.argmax(variance12, axis=1)
    out[var] = centres[np.arange(len(idx)), idx]
    return out


def otsu_binary_stack(images: np.ndarray) -> np.ndarray:
    """:func:`stmorph.features.otsu_binary` of every image of a float32 stack (bit-identical), float32 0/1."""
    x = np.asarray(images, dtype=np.float32)
    thr = otsu_thresholds(x)
    out = (x > thr[:, None, None]).astype(np.float32)
    out[np.isnan(thr)] = 0.0
    return out


def _quality_names() -> list[str]:
    return list(_QUALITY)


@functools.lru_cache(maxsize=8)
def _power_geometry(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Radius bin of every full-spectrum pixel (as ``_power_loglog_slope``), its index in the ``rfft2`` half
    spectrum (conjugate symmetry of a real image's FFT), the radii used and the bin count."""
    maxwidth = min(h, w) / 8.0
    radii_used = np.arange(2, int(np.floor(maxwidth)))
    r2 = np.arange(h)[:, None] ** 2 + np.arange(w)[None, :] ** 2
    r2 = np.minimum(r2, np.flipud(r2))
    r2 = np.minimum(r2, np.fliplr(r2))
    radii = (np.floor(np.sqrt(r2)).astype(np.int64) + 1).ravel()
    wh = w // 2 + 1
    ii, jj = np.mgrid[0:h, 0:w]
    mirror = jj >= wh
    src_i = np.where(mirror, (-ii) % h, ii)
    src_j = np.where(mirror, w - jj, jj)
    half_index = (src_i * wh + src_j).ravel()
    nb = int(max(radii.max(), radii_used.max() if radii_used.size else 0)) + 1
    return radii, half_index, radii_used, nb


def quality_stack(pix: np.ndarray, *, local_scale: int = 20) -> np.ndarray:
    """:func:`stmorph.features.image_quality` of every image of a stack, ``(n, 6)`` in its key order.

    One image at a time (the arrays stay in cache); the power spectrum comes from ``rfft2`` and conjugate
    symmetry instead of ``fft2`` (equal to rounding, ~1e-15 relative on the slope).

    Parameters
    ----------
    pix
        ``(n, H, W)`` images.
    local_scale
        Side of the local-focus windows.

    Returns
    -------
    ``(n, 6)`` float64.
    """
    x_all = np.asarray(pix)
    n, h, w = x_all.shape
    out = np.full((n, 6), np.nan)
    s = max(2, int(local_scale))
    hh, ww = (h // s) * s, (w // s) * s
    radii, half_index, radii_used, nb = _power_geometry(h, w)
    lx = np.log(radii_used)
    for i in range(n):
        x = x_all[i].astype(np.float64)
        mean = x.mean()
        if mean > 0:
            out[i, 0] = float(x.var() / mean)
        if hh and ww:
            tiles = x[:hh, :ww].reshape(hh // s, s, ww // s, s).swapaxes(1, 2).reshape(-1, s * s)
            tm = tiles.mean(axis=1)
            ok = tm > 0
            if ok.any():
                out[i, 1] = float(np.mean(tiles[ok].var(axis=1) / tm[ok]))
        lo, hi = x.min(), x.max()
        if radii_used.size >= 2:
            y = x
            if hi > lo:
                mad = np.median(np.abs(x - mean))
                if mad > 0:
                    y = x / mad
            f = np.fft.rfft2(y - y.mean())
            power = (f.real * f.real + f.imag * f.imag).ravel()[half_index]
            sums = np.bincount(radii, weights=power, minlength=nb)[radii_used]
            ok = sums > 0
            if ok.sum() >= 2:
                out[i, 2] = float(np.polyfit(lx[ok], np.log(sums[ok]), 1)[0])
        out[i, 3] = 100.0 * np.mean(x == hi)
        out[i, 4] = 100.0 * np.mean(x == lo)
    out[:, 5] = otsu_thresholds(x_all.astype(np.float64))
    return out


def _intensity_names(edge: bool = True) -> list[str]:
    return list(_INTENSITY) + (list(_INTENSITY_EDGE) if edge else [])


def _interp_cols(
    sorted_vals: np.ndarray, n: int, frac: float, legacy: bool = False, cols: dict[int, int] | None = None
) -> np.ndarray:
    # cp-measure's _interp on float32 rows (the python-float weights act in float32, NEP 50); sorted_vals holds
    # the sorted rows, or only some of their ranks with cols mapping rank -> column
    pos = n * frac if legacy else (n - 1) * frac
    lo = min(int(pos), n - 1)
    hi = min(lo + 1, n - 1)
    f = pos - lo
    if cols is not None:
        lo, hi = cols[lo], cols[hi]
    return sorted_vals[:, lo] * (1.0 - f) + sorted_vals[:, hi] * f


def _interp_kth(n: int, frac: float, legacy: bool) -> list[int]:
    pos = n * frac if legacy else (n - 1) * frac
    lo = min(int(pos), n - 1)
    return sorted({lo, min(lo + 1, n - 1)})


def intensity_stack(
    pix: np.ndarray, masks: np.ndarray | None = None, *, edge_measurements: bool = True, legacy: bool = False
) -> np.ndarray:
    """cp-measure ``get_intensity`` (numpy backend) of each image of a stack, one object per image.

    Parameters
    ----------
    pix
        ``(n, H, W)`` float32 images.
    masks
        ``(n, H, W)`` bool object masks (each non-empty); ``None``: the whole image (grid object).
    edge_measurements, legacy
        As cp-measure.

    Returns
    -------
    ``(n, 16)``, or ``(n, 21)`` with the edge features, float64 in :func:`_intensity_names` order.
    """
    pix = np.asarray(pix)
    n, h, w = pix.shape
    k = 21 if edge_measurements else 16
    if masks is not None:
        rows = [_intensity_one(pix[i], masks[i], legacy)[:k] for i in range(n)]
        return np.stack(rows) if rows else np.empty((0, k))
    out = np.zeros((n, k))
    if n == 0:
        return out
    m = h * w
    v = pix.reshape(n, m)
    integ = v.sum(axis=1)
    out[:, 0] = integ
    out[:, 1] = v.mean(axis=1)
    out[:, 2] = v.std(axis=1)
    # order statistics (exact values of v) by radix select instead of a sort: min, max, quartiles, median
    wanted = sorted({0, m - 1, *[k for q in (0.25, 0.5, 0.75) for k in _interp_kth(m, q, legacy)]})
    sel = np.empty((n, len(wanted)), np.float32)
    _select_ranks(np.ascontiguousarray(v, dtype=np.float32), np.array(wanted, np.int64), sel)
    cols = {r: i for i, r in enumerate(wanted)}
    out[:, 3] = sel[:, 0]
    out[:, 4] = sel[:, -1]
    med = _interp_cols(sel, m, 0.5, legacy, cols)
    out[:, 6] = _interp_cols(sel, m, 0.25, legacy, cols)
    out[:, 7] = med
    out[:, 9] = _interp_cols(sel, m, 0.75, legacy, cols)
    # MAD: two order statistics of |v - median| (float32, as cp-measure's vals - median)
    mad_frac = 0.5  # legacy: the (1 / ndim)-quantile, ndim = 2
    kth = _interp_kth(m, mad_frac, legacy)
    dsel = np.empty((n, len(kth)), np.float32)
    _select_ranks(np.abs(v - med[:, None]), np.array(kth, np.int64), dsel)
    out[:, 8] = _interp_cols(dsel, m, mad_frac, legacy, {r: i for i, r in enumerate(kth)})
    am = np.argmax(v, axis=1)
    out[:, 14] = am // w
    out[:, 13] = am % w
    cy, cx = np.empty(n), np.empty(n)
    _centres_of_mass(pix, cy, cx)
    nz = integ != 0
    i64 = integ.astype(np.float64)
    out[:, 11] = np.where(nz, cy / np.where(nz, i64, 1.0), np.nan)
    out[:, 10] = np.where(nz, cx / np.where(nz, i64, 1.0), np.nan)
    out[:, 12] = np.where(nz, 0.0, np.nan)
    # distance to the centroid of the binary object (the image centre), z included as cp-measure
    dy = out[:, 11] - (h - 1) / 2
    dx = out[:, 10] - (w - 1) / 2
    out[:, 5] = np.sqrt(out[:, 12] * out[:, 12] + dy * dy + dx * dx)
    # the grid object has no edge pixels (find_boundaries of a label filling the image): edge features stay 0
    return out


def _intensity_one(pix: np.ndarray, mask: np.ndarray, legacy: bool = False) -> np.ndarray:
    """One masked object: cp-measure's numpy ``get_intensity`` arithmetic on ``pix[mask]``."""
    import skimage.segmentation

    out = np.zeros(21)
    vals = pix[mask]
    nv = vals.size
    integ = vals.sum()
    out[0] = integ
    out[1] = vals.mean()
    out[2] = vals.std()
    sv = np.sort(vals)[None]
    out[3] = sv[0, 0]
    out[4] = sv[0, -1]
    med = float(_interp_cols(sv, nv, 0.5, legacy)[0])
    out[6] = _interp_cols(sv, nv, 0.25, legacy)[0]
    out[7] = med
    out[9] = _interp_cols(sv, nv, 0.75, legacy)[0]
    out[8] = _interp_cols(np.sort(np.abs(vals - med))[None], nv, 0.5, legacy)[0]
    coords = np.argwhere(mask)
    am = int(np.argmax(vals))
    out[14], out[13] = coords[am]
    cm = coords.mean(axis=0)
    if integ != 0:
        cmi = (coords * vals[:, None]).sum(axis=0) / integ
        out[11], out[10] = cmi
        out[12] = 0.0
        d = cmi - cm
        out[5] = np.sqrt((d * d).sum())
    else:
        out[10:13] = np.nan
        out[5] = np.nan
    edge = mask & skimage.segmentation.find_boundaries(mask[None].astype(np.intp), mode="inner")[0]
    if edge.any():
        ev = pix[edge]
        out[16:21] = [ev.sum(), ev.mean(), ev.std(), ev.min(), ev.max()]
    return out


# -- radial distribution ------------------------------------------------------------------------------------------
def _radial_names(bin_count: int, scaled: bool) -> list[str]:
    names = []
    for b in range(bin_count + (0 if scaled else 1)):
        for feat in ("FracAtD", "MeanFrac", "RadialCV"):
            tag = "Overflow" if b == bin_count else f"{b + 1}of{bin_count}"
            names.append(f"RadialDistribution_{feat}_{tag}")
    return names


def _radial_geometry(labels: np.ndarray, bin_count: int, scaled: bool, maximum_radius: float) -> dict[str, Any]:
    """What cp-measure's ``get_radial_distribution`` derives from the labels alone (its own code, one object).

    Returns each pixel's ring (``bin``, -1 outside the measured pixels) and wedge, C order, plus the per-ring
    pixel counts (``number_at_distance``) and per ring x wedge counts.
    """
    import centrosome.cpmorphology
    import centrosome.propagate
    from cp_measure.core.measureobjectintensitydistribution import _maximum_position_of_labels

    labels = labels.astype(np.int64)
    nobjects = int(labels.max())
    d_to_edge = centrosome.cpmorphology.distance_to_edge(labels)
    i, j = _maximum_position_of_labels(d_to_edge, labels, nobjects)
    center_labels = np.zeros(labels.shape, int)
    center_labels[i, j] = labels[i, j]
    colors = centrosome.cpmorphology.color_labels(labels)
    ncolors = np.max(colors)
    d_from_center = np.zeros(labels.shape)
    cl = np.zeros(labels.shape, int)
    for color in range(1, ncolors + 1):
        mask = colors == color
        l_, d = centrosome.propagate.propagate(np.zeros(center_labels.shape), center_labels, mask, 1)
        d_from_center[mask] = d[mask]
        cl[mask] = l_[mask]
    good_mask = cl > 0
    i_center = np.zeros(cl.shape)
    i_center[good_mask] = i[cl[good_mask] - 1]
    j_center = np.zeros(cl.shape)
    j_center[good_mask] = j[cl[good_mask] - 1]
    normalized_distance = np.zeros(labels.shape)
    if scaled:
        total_distance = d_from_center + d_to_edge
        normalized_distance[good_mask] = d_from_center[good_mask] / (total_distance[good_mask] + 0.001)
    else:
        normalized_distance[good_mask] = d_from_center[good_mask] / maximum_radius
    bin_indexes = (normalized_distance * bin_count).astype(int)
    bin_indexes[bin_indexes > bin_count] = bin_count
    ii, jj = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
    imask = ii > i_center
    jmask = jj > j_center
    absmask = abs(ii - i_center) > abs(jj - j_center)
    radial_index = imask.astype(int) + jmask.astype(int) * 2 + absmask.astype(int) * 4
    bins = np.where(good_mask, bin_indexes, -1).astype(np.int64).ravel()
    wedges = np.where(good_mask, radial_index, 0).astype(np.int64).ravel()
    nb = bin_count + 1
    number = np.bincount(bins[bins >= 0], minlength=nb).astype(np.float64)
    wedge_counts = np.zeros((nb, 8))
    np.add.at(wedge_counts, (bins[bins >= 0], wedges[bins >= 0]), 1.0)
    return {"bins": bins, "wedges": wedges, "number": number, "wedge_counts": wedge_counts}


@functools.lru_cache(maxsize=16)
def _radial_geometry_grid(shape: tuple[int, int], bin_count: int, scaled: bool, maximum_radius: float):
    return _radial_geometry(np.ones(shape, np.int64), bin_count, scaled, maximum_radius)


def radial_stack(
    pix: np.ndarray,
    geoms: list[dict[str, Any]],
    gix: np.ndarray,
    *,
    bin_count: int = 4,
    scaled: bool = True,
) -> np.ndarray:
    """cp-measure ``get_radial_distribution`` of each image of a stack, given each image's object geometry.

    Parameters
    ----------
    pix
        ``(n, H, W)`` float32 images.
    geoms
        Geometries from :func:`_radial_geometry`.
    gix
        ``(n,)`` index into ``geoms`` of each image's object.
    bin_count, scaled
        As cp-measure.

    Returns
    -------
    ``(n, k)`` float64 in :func:`_radial_names` order.
    """
    n = pix.shape[0]
    nb = bin_count + 1
    bins = np.stack([g["bins"] for g in geoms])
    wedges = np.stack([g["wedges"] for g in geoms])
    hist = np.empty((n, nb), np.float32)
    wsum = np.empty((n, nb, 8), np.float32)
    _radial_sums(np.ascontiguousarray(pix, dtype=np.float32), gix.astype(np.int64), bins, wedges, nb, hist, wsum)
    number = np.stack([g["number"] for g in geoms])[gix]
    wcount = np.stack([g["wedge_counts"] for g in geoms])[gix]
    # the rest is cp-measure's array code, one row per crop instead of per object
    with np.errstate(divide="ignore", invalid="ignore"):
        sum_by_object = np.sum(hist, 1)
        fraction_at_distance = hist / np.dstack([sum_by_object] * nb)[0]
        sum_by_object = np.sum(number, 1)
        fraction_at_bin = number / np.dstack([sum_by_object] * nb)[0]
        mean_pixel_fraction = fraction_at_distance / (fraction_at_bin + np.finfo(float).eps)
        cols = []
        for b in range(bin_count + (0 if scaled else 1)):
            radial_values = wsum[:, b, :]
            pixel_count = wcount[:, b, :]
            mask = pixel_count == 0
            radial_means = np.ma.MaskedArray(radial_values / pixel_count, mask)
            radial_cv = np.std(radial_means, 1) / np.mean(radial_means, 1)
            radial_cv[np.sum(~mask, 1) == 0] = 0
            cols += [fraction_at_distance[:, b], mean_pixel_fraction[:, b], np.array(radial_cv)]
    return np.stack(cols, axis=1).astype(np.float64)


# -- texture ---------------------------------------------------------------------------------------------------
def _texture_names(scale: int, gray_levels: int) -> list[str]:
    return [f"Texture_{f}_{scale:d}_{d:02d}_{gray_levels:d}" for d in range(4) for f in _HARALICK]


def texture_stack(
    pix: np.ndarray, masks: np.ndarray | None = None, *, scale: int = 3, gray_levels: int = 256
) -> np.ndarray:
    """cp-measure ``get_texture`` (mahotas Haralick, 4 directions) of each image of a stack, one object per image.

    Parameters
    ----------
    pix
        ``(n, H, W)`` float images in ``[0, 1]``.
    masks
        Optional ``(n, H, W)`` bool object masks (pixels outside are background, as cp-measure).
    scale, gray_levels
        As cp-measure.

    Returns
    -------
    ``(n, 52)`` float64 in :func:`_texture_names` order (direction-major).
    """
    import skimage.exposure
    import skimage.util

    if scale < 1:
        raise ValueError(f"scale must be at least 1 pixel, got {scale}")
    q = skimage.util.img_as_ubyte(np.asarray(pix), force_copy=True)
    if masks is not None:
        q[~masks] = 0
    if gray_levels != 256:
        q = skimage.exposure.rescale_intensity(q, in_range=(0, 255), out_range=(0, gray_levels - 1)).astype(np.uint8)
    out = np.empty((q.shape[0], 4, 13))
    _haralick_kernel(np.ascontiguousarray(q), int(scale), out)
    return out.reshape(q.shape[0], 52)


# -- granularity ---------------------------------------------------------------------------------------------------
def _granularity_names(length: int) -> list[str]:
    return [f"Granularity_{i}" for i in range(1, length + 1)]


def _fused_weights(orig_shape: np.ndarray, new_shape: np.ndarray, orig_mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Row 1 of cp-measure's ``_make_fused_upsample_mean`` operator, dense, and the object's pixel count.

    Built with the same scipy calls (COO -> CSR with duplicates summed), so the weights are cp-measure's bit for
    bit; a dense row summed in column order adds exact zeros where the CSR row has no entry.
    """
    import scipy.sparse

    i, j = np.mgrid[0 : orig_shape[0], 0 : orig_shape[1]].astype(float)
    i *= float(new_shape[0] - 1) / float(orig_shape[0] - 1)
    j *= float(new_shape[1] - 1) / float(orig_shape[1] - 1)
    labels = orig_mask.ravel()
    foreground = labels > 0
    fg_labels = labels[foreground]
    r, c = i.ravel()[foreground], j.ravel()[foreground]
    in_bounds = (r >= 0) & (r <= new_shape[0] - 1) & (c >= 0) & (c <= new_shape[1] - 1)
    r, c, op_labels = r[in_bounds], c[in_bounds], fg_labels[in_bounds]
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    fr, fc = r - r0, c - c0
    r1 = np.minimum(r0 + 1, new_shape[0] - 1)
    c1 = np.minimum(c0 + 1, new_shape[1] - 1)
    ncols = int(new_shape[1])
    neighbours = np.concatenate([r0 * ncols + c0, r0 * ncols + c1, r1 * ncols + c0, r1 * ncols + c1])
    weights = np.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    rows = np.tile(op_labels, 4)
    operator = scipy.sparse.coo_matrix(
        (weights, (rows, neighbours)), shape=(2, int(new_shape[0]) * ncols)
    ).tocsr()
    dense = np.zeros(int(new_shape[0]) * ncols)
    start, stop = operator.indptr[1], operator.indptr[2]
    dense[operator.indices[start:stop]] = operator.data[start:stop]
    return dense, float(np.count_nonzero(foreground))


@functools.lru_cache(maxsize=16)
def _fused_weights_grid(orig: tuple[int, int], new: tuple[int, int]) -> tuple[np.ndarray, float]:
    return _fused_weights(np.array(orig), np.array(new), np.ones(orig, np.int64))


def _map_stack(stack: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.map_coordinates(stack[t], (i, j), order=1)`` for every ``t`` in one call (bit-identical)."""
    import scipy.ndimage

    n = stack.shape[0]
    k = np.broadcast_to(np.arange(n, dtype=float)[:, None, None], (n,) + i.shape)
    return scipy.ndimage.map_coordinates(
        stack, (k, np.broadcast_to(i, k.shape), np.broadcast_to(j, k.shape)), order=1
    )


def granularity_stack(
    pix: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    granular_spectrum_length: int = 16,
) -> np.ndarray:
    """cp-measure ``get_granularity`` (2-D) of each image of a stack, one object per image.

    Equal to cp-measure bit for bit, with one exception where cp-measure's value is undefined: when the
    background image is 2 pixels wide (crops of 20-35 px with the default ``subsample_size`` and
    ``image_sample_size`` of 0.25) and ``element_size >= 8``, ``scipy.ndimage.grey_erosion(mode="reflect")``
    (under ``skimage.morphology.erosion``) reads memory outside the array, so cp-measure's granularity depends
    on whatever lies next to the image in memory. This engine uses the erosion's definition there (the minimum
    over the in-image part of the disk, what scipy returns for every other size).

    Parameters
    ----------
    pix
        ``(n, H, W)`` float32 images.
    masks
        Optional ``(n, H, W)`` bool object masks; ``None``: the whole image.
    subsample_size, image_sample_size, element_size, granular_spectrum_length
        As cp-measure.

    Returns
    -------
    ``(n, granular_spectrum_length)`` float64.
    """
    import skimage.morphology

    pix = np.ascontiguousarray(pix)
    n = pix.shape[0]
    ng = int(granular_spectrum_length)
    orig_shape = np.array(pix.shape[1:])
    effective = (orig_shape * subsample_size).astype(int) if subsample_size < 1 else orig_shape
    if (effective < 2).any() or n == 0:
        return np.full((n, ng), np.nan)
    new_shape = orig_shape.copy()
    if subsample_size < 1:
        new_shape = (orig_shape * subsample_size).astype(int)
        i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float) / subsample_size
        pixels = _map_stack(pix, i, j)
    else:
        pixels = pix.copy()
    if image_sample_size < 1:
        back_shape = new_shape * image_sample_size
        i, j = np.mgrid[0 : back_shape[0], 0 : back_shape[1]].astype(float) / image_sample_size
        back = _map_stack(pixels, i, j)
    else:
        back = pixels.copy()
        back_shape = new_shape
    # skimage erosion then dilation with disk(element_size); computed here because scipy's 'reflect' mode reads
    # outside the array for an axis of 2 pixels and a radius >= 8 (2 x 2 background images: crops of 20-35 px
    # with the default parameters), where cp-measure's values depend on neighbouring memory
    dys, dxs = np.nonzero(skimage.morphology.disk(element_size, dtype=bool))
    dys, dxs = (dys - element_size).astype(np.int64), (dxs - element_size).astype(np.int64)
    back = np.ascontiguousarray(back)
    tmp = np.empty_like(back)
    _grey_footprint(back, dys, dxs, True, tmp)
    _grey_footprint(tmp, dys, dxs, False, back)
    if image_sample_size < 1:
        i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float)
        i *= (back_shape[0] - 1) / (new_shape[0] - 1)
        j *= (back_shape[1] - 1) / (new_shape[1] - 1)
        back = _map_stack(back, i, j)
    pixels = pixels - back
    pixels[pixels < 0] = 0
    if masks is None:
        w, cnt = _fused_weights_grid(tuple(int(v) for v in orig_shape), tuple(int(v) for v in new_shape))
        weights = w[None]
        wix = np.zeros(n, np.int64)
        counts = np.full(n, cnt)
        sums = np.empty(n)
        _masked_sums(pix, np.ones(pix.shape, np.bool_), sums)
    else:
        built = [_fused_weights(orig_shape, new_shape, masks[t].astype(np.int64)) for t in range(n)]
        weights = np.stack([b[0] for b in built])
        counts = np.array([b[1] for b in built])
        wix = np.arange(n, dtype=np.int64)
        sums = np.empty(n)
        _masked_sums(pix, np.ascontiguousarray(masks, dtype=np.bool_), sums)
    start_means = sums / counts
    out = np.empty((n, ng))
    _granularity_kernel(
        np.ascontiguousarray(pixels, dtype=np.float32), weights, wix, counts, start_means, ng, out
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# the whole stack
# ---------------------------------------------------------------------------------------------------------------
def module_names(mod: str, prm: dict[str, Any]) -> list[str]:
    """Feature names (without the channel suffix) of one module, in cp-measure's order."""
    if mod == "quality":
        return _quality_names()
    if mod == "intensity":
        return _intensity_names(bool(prm.get("edge_measurements", True)))
    if mod == "radial_distribution":
        return _radial_names(int(prm.get("bin_count", 4)), bool(prm.get("scaled", True)))
    if mod == "texture":
        return _texture_names(int(prm.get("scale", 3)), int(prm.get("gray_levels", 256)))
    if mod == "granularity":
        return _granularity_names(int(prm.get("granular_spectrum_length", 16)))
    raise ValueError(mod)


def measure_stack(
    crops: np.ndarray,
    channel_names: Sequence[str],
    masks: np.ndarray | None,
    modules: Sequence[str],
    params: dict[str, dict[str, Any]],
) -> tuple[list[str], np.ndarray]:
    """The :data:`FAST_MODULES` features of a stack of crops, per channel, in ``measure_crop``'s column order.

    Parameters
    ----------
    crops
        ``(n, C, S, S)`` float32 crops in ``[0, 1]``.
    channel_names
        ``C`` names (suffix of every feature).
    masks
        ``(n, S, S)`` bool masks, each non-empty, or ``None`` (grid object).
    modules
        The modules to compute, a subset of :data:`FAST_MODULES` (others are ignored).
    params
        Full per-module parameters (``DEFAULT_PARAMS`` merged with overrides).

    Returns
    -------
    names, values
        ``names`` per channel then module; ``values`` ``(n, len(names))`` float64.
    """
    from ..errors import StmorphInputError

    crops = np.asarray(crops, dtype=np.float32)
    n, n_ch, h, w = crops.shape
    mods = [m for m in FAST_MODULES if m in modules]
    for m in mods:
        bad = set(params.get(m, {})) - _PARAMS[m]
        if bad:
            raise StmorphInputError(f"unknown parameters {sorted(bad)} for module {m!r}", expected=str(sorted(_PARAMS[m])))
    geoms: list[dict[str, Any]] = []
    gix = np.zeros(n, np.int64)
    if "radial_distribution" in mods:
        rp = params["radial_distribution"]
        bc, sc, mr = int(rp.get("bin_count", 4)), bool(rp.get("scaled", True)), rp.get("maximum_radius", 100)
        if masks is None:
            geoms = [_radial_geometry_grid((h, w), bc, sc, mr)]
        else:
            geoms = [_radial_geometry(masks[t].astype(np.int64), bc, sc, mr) for t in range(n)]
            gix = np.arange(n, dtype=np.int64)
    names: list[str] = []
    blocks: list[np.ndarray] = []
    for c, ch in enumerate(channel_names):
        pix = np.ascontiguousarray(crops[:, c])
        for mod in mods:
            prm = params.get(mod, {})
            if mod == "quality":
                vals = quality_stack(pix, **prm)
            elif mod == "intensity":
                vals = intensity_stack(pix, masks, **prm)
            elif mod == "radial_distribution":
                vals = radial_stack(pix, geoms, gix, bin_count=bc, scaled=sc)
            elif mod == "texture":
                vals = texture_stack(pix, masks, **prm)
            else:
                vals = granularity_stack(pix, masks, **prm)
            names += [f"{k}_{ch}" for k in module_names(mod, prm)]
            blocks.append(vals)
    values = np.concatenate(blocks, axis=1) if blocks else np.empty((n, 0))
    return names, values
