"""Image quality of a crop (CellProfiler's MeasureImageQuality, which cp-measure does not have) and the Otsu
binary channel of the Moser et al. baseline.

* :func:`image_quality` - focus (normalised variance, local focus), power-spectrum slope, saturation (percent
  maximal / minimal), Otsu threshold;
* :func:`otsu_binary` - ``image > Otsu threshold`` as a 0/1 channel (CellProfiler's Threshold module output).

Module ``quality`` of :func:`~stmorph.features.measure_crops` (both engines; the fast engine's stack version,
equal values, is in :mod:`stmorph.features._fast`).
"""

from __future__ import annotations

import numpy as np

from ..errors import StmorphInputError

__all__ = ["image_quality", "otsu_binary"]


def _power_loglog_slope(img: np.ndarray) -> float:
    """Slope of log(radial power) against log(spatial frequency), as CellProfiler's PowerLogLogSlope.

    ``centrosome.radial_power_spectrum.rps`` computes the same radial power spectrum but calls
    ``ndarray.ptp``, which numpy 2 removed; this is the same computation over numpy 2 API.
    """
    h, w = img.shape
    maxwidth = min(h, w) / 8.0
    radii_used = np.arange(2, int(np.floor(maxwidth)))
    if radii_used.size < 2:
        return float("nan")
    x = img.astype(np.float64)
    if np.ptp(x) > 0:
        mad = np.median(np.abs(x - x.mean()))
        if mad > 0:
            x = x / mad
    power = np.abs(np.fft.fft2(x - x.mean())) ** 2
    r2 = np.arange(h)[:, None] ** 2 + np.arange(w)[None, :] ** 2
    r2 = np.minimum(r2, np.flipud(r2))
    r2 = np.minimum(r2, np.fliplr(r2))
    radii = np.floor(np.sqrt(r2)).astype(np.int64) + 1
    sums = np.bincount(radii.ravel(), weights=power.ravel(), minlength=int(radii_used.max()) + 1)[radii_used]
    ok = sums > 0
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(np.log(radii_used[ok]), np.log(sums[ok]), 1)[0]
    return float(slope)


def image_quality(image: np.ndarray, *, local_scale: int = 20) -> dict[str, float]:
    """Image-quality measurements of one 2-D image (CellProfiler MeasureImageQuality, per crop).

    Parameters
    ----------
    image
        2-D float image, intensities in ``[0, 1]``.
    local_scale
        Side in pixels of the non-overlapping windows of the local focus score.

    Returns
    -------
    dict
        ``ImageQuality_FocusScore`` (variance / mean of the image, NaN for an all-zero image),
        ``ImageQuality_LocalFocusScore`` (mean of the per-window focus scores over windows with a non-zero
        mean), ``ImageQuality_PowerLogLogSlope``, ``ImageQuality_PercentMaximal`` /
        ``ImageQuality_PercentMinimal`` (percent of pixels at the image maximum / minimum: saturation) and
        ``ImageQuality_ThresholdOtsu`` (:func:`skimage.filters.threshold_otsu`; NaN for a constant image).

    Examples
    --------
    >>> img = np.zeros((40, 40)); img[:20] = 0.5
    >>> q = image_quality(img)
    >>> q["ImageQuality_PercentMaximal"], q["ImageQuality_FocusScore"]
    (50.0, 0.25)
    """
    from skimage.filters import threshold_otsu

    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2:
        raise StmorphInputError(f"image_quality needs a 2-D image, got shape {x.shape}", expected="(rows, columns)")
    mean = x.mean()
    focus = float(x.var() / mean) if mean > 0 else float("nan")
    s = max(2, int(local_scale))
    h, w = (x.shape[0] // s) * s, (x.shape[1] // s) * s
    local = float("nan")
    if h and w:
        tiles = x[:h, :w].reshape(h // s, s, w // s, s).swapaxes(1, 2).reshape(-1, s * s)
        tm = tiles.mean(axis=1)
        ok = tm > 0
        if ok.any():
            local = float(np.mean(tiles[ok].var(axis=1) / tm[ok]))
    lo, hi = x.min(), x.max()
    otsu = float(threshold_otsu(x)) if hi > lo else float("nan")
    return {
        "ImageQuality_FocusScore": focus,
        "ImageQuality_LocalFocusScore": local,
        "ImageQuality_PowerLogLogSlope": _power_loglog_slope(x),
        "ImageQuality_PercentMaximal": float(100.0 * np.mean(x == hi)),
        "ImageQuality_PercentMinimal": float(100.0 * np.mean(x == lo)),
        "ImageQuality_ThresholdOtsu": otsu,
    }


def otsu_binary(image: np.ndarray) -> np.ndarray:
    """Binary image ``image > Otsu threshold`` as float32 (0/1), as CellProfiler's Threshold module output.

    A constant image gives all zeros.

    Parameters
    ----------
    image
        2-D image.

    Returns
    -------
    float32 array of 0 and 1, same shape.

    Examples
    --------
    >>> img = np.zeros((4, 4)); img[1:3, 1:3] = 1.0
    >>> int(otsu_binary(img).sum())
    4
    """
    from skimage.filters import threshold_otsu

    x = np.asarray(image)
    if x.max() <= x.min():
        return np.zeros(x.shape, dtype=np.float32)
    return (x > threshold_otsu(x)).astype(np.float32)
