"""CellProfiler measurements on per-cell stain crops, through ``cp-measure``.

The Moser et al. baseline: CellProfiler modules on a square crop around each cell (the "grid object", the
whole crop), on DAPI, membrane and an Otsu-thresholded DAPI channel:

* image quality - focus (normalised variance, local focus), power-spectrum slope, saturation (percent
  maximal / minimal), Otsu threshold (:func:`~stmorph.features.image_quality`, in
  :mod:`stmorph.features._quality`: cp-measure has no MeasureImageQuality);
* object intensity (``cp_measure`` ``intensity``);
* intensity distribution in 8 radial bins (``radial_distribution``, ``bin_count=8``);
* Haralick texture at scale 3 with 256 grey levels (``texture``);
* granularity with a structuring element of radius 10 and a spectrum of 16 (``granularity``).

Optional: object size/shape (``sizeshape``, meaningful with real cell masks only) and channel-pair
colocalisation (``correlation``: Pearson, Manders, RWC, Costes with an explicit ``scale_max``).

The object is the whole crop unless per-crop masks are given (real cell masks: a label image cropped with the
same boxes). Measurements are plain functions over arrays: :func:`measure_crops` takes ``(n, C, S, S)``
crops scaled to ``[0, 1]``; :func:`cellprofiler_features` is the :class:`~stmorph.SpatialSample` wrapper.

Two engines compute the same features: ``engine="fast"`` (default; :mod:`stmorph.features._fast`) measures a
chunk of crops at once - geometry shared between crops, numba kernels for granularity, radial distribution and
Haralick texture - with values equal to cp-measure's numpy functions (bit for bit for most features, to rounding
for the rest; ``tests/test_features_fast.py``); ``engine="cp_measure"`` calls cp-measure's functions one crop and
one channel at a time (the reference). Module ``quality`` is written here for both.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._threads import resolve_n_jobs
from .._utils import progress
from ..errors import StmorphInputError
from ..sample import missing_modality
from ._quality import image_quality, otsu_binary

__all__ = [
    "DEFAULT_MODULES",
    "ALL_MODULES",
    "DEFAULT_PARAMS",
    "measure_crop",
    "measure_crops",
    "cellprofiler_features",
]

#: Modules of the Moser et al. CellProfiler baseline.
DEFAULT_MODULES: tuple[str, ...] = ("quality", "intensity", "radial_distribution", "texture", "granularity")
#: Every module :func:`measure_crops` knows.
ALL_MODULES: tuple[str, ...] = DEFAULT_MODULES + ("sizeshape", "correlation")

#: Module parameters as in the study (passed to the cp-measure functions).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "quality": {"local_scale": 20},
    "intensity": {},
    "radial_distribution": {"bin_count": 8, "scaled": True},
    "texture": {"scale": 3, "gray_levels": 256},
    "granularity": {"element_size": 10, "granular_spectrum_length": 16},
    "sizeshape": {"calculate_advanced": False},
    "correlation": {"costes_scale_max": 255},
}

#: Measurement engines: stmorph's stack engine (equal values, many times faster) and cp-measure's own functions.
ENGINES: tuple[str, ...] = ("fast", "cp_measure")

_PREFIX = {"texture": "Texture_", "granularity": "", "intensity": "", "radial_distribution": "", "sizeshape": "AreaShape_"}


# ---------------------------------------------------------------------------------------------------------------
# per-crop measurement
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _accelerator(name: str | None) -> Iterator[None]:
    import cp_measure

    old = cp_measure._ACCELERATOR
    cp_measure.set_accelerator(name)
    try:
        yield
    finally:
        cp_measure.set_accelerator(old)


def _resolve_accelerator(accelerator: str | None) -> str | None:
    if accelerator == "auto":
        try:
            from cp_measure._detect import HAS_NUMBA
        except ImportError:  # pragma: no cover - older cp-measure
            return None
        return "numba" if HAS_NUMBA else None
    if accelerator not in (None, "numba"):
        raise StmorphInputError(f"accelerator={accelerator!r}", expected="'auto', 'numba' or None")
    return accelerator


def _check_modules(modules: Sequence[str]) -> tuple[str, ...]:
    mods = tuple(modules)
    bad = [m for m in mods if m not in ALL_MODULES]
    if bad or not mods:
        raise StmorphInputError(f"unknown CellProfiler modules {bad}", expected=f"a non-empty subset of {ALL_MODULES}")
    return mods


def _merged_params(params: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in DEFAULT_PARAMS.items()}
    for k, v in (params or {}).items():
        if k not in out:
            raise StmorphInputError(f"parameters for unknown module {k!r}", expected=f"one of {ALL_MODULES}")
        out[k].update(v)
    return out


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise StmorphInputError(f"engine={engine!r}", expected=f"one of {ENGINES}")
    return engine


def measure_crop(
    crop: np.ndarray,
    channel_names: Sequence[str],
    mask: np.ndarray | None = None,
    *,
    modules: Sequence[str] = DEFAULT_MODULES,
    params: dict[str, dict[str, Any]] | None = None,
    engine: Literal["fast", "cp_measure"] = "fast",
) -> dict[str, float]:
    """CellProfiler features of one ``(C, S, S)`` crop, as a flat ``{feature_channel: value}`` dict.

    Parameters
    ----------
    crop
        ``(C, S, S)`` float crop, intensities in ``[0, 1]``.
    channel_names
        One name per channel; feature names end with ``_<channel>``.
    mask
        Optional ``(S, S)`` boolean/integer object mask (non-zero = the cell). ``None``: the whole crop (grid
        object). An empty mask gives an empty dict (the caller reports the cell as NaN).
    modules
        Subset of :data:`ALL_MODULES`.
    params
        Per-module parameter overrides of :data:`DEFAULT_PARAMS`.
    engine
        ``"fast"`` (stmorph's stack engine) or ``"cp_measure"`` (cp-measure's functions, with the accelerator in
        force); same names, equal values (see the module docstring).

    Returns
    -------
    dict
        Feature name -> value. Names follow CellProfiler: ``Intensity_MeanIntensity_DAPI``,
        ``RadialDistribution_FracAtD_1of8_DAPI``, ``Texture_Contrast_3_00_256_DAPI``, ``Granularity_1_DAPI``,
        ``ImageQuality_FocusScore_DAPI``, ``AreaShape_Area``, ``Correlation_Pearson_DAPI_membrane``.

    Examples
    --------
    >>> crop = np.zeros((1, 32, 32), np.float32); crop[0, 8:24, 8:24] = 0.5
    >>> round(measure_crop(crop, ["DAPI"], modules=["intensity"])["Intensity_MeanIntensity_DAPI"], 4)
    0.125
    """
    mods = _check_modules(modules)
    prm = _merged_params(params)
    _check_engine(engine)
    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim != 3 or len(channel_names) != crop.shape[0]:
        raise StmorphInputError(
            f"crop of shape {crop.shape} with {len(channel_names)} channel names", expected="(C, S, S) and C names"
        )
    if mask is not None and np.shape(mask) != crop.shape[1:]:
        raise StmorphInputError(f"mask of shape {np.shape(mask)} for a crop of shape {crop.shape}", expected="(S, S)")
    if engine == "cp_measure":
        return _measure_crop_cp(crop, list(channel_names), mask, mods, prm)
    if mask is not None and not np.any(mask):
        return {}
    names, values = _measure_fast(crop[None], list(channel_names), None if mask is None else np.asarray(mask)[None],
                                  mods, prm)
    return {k: float(v) for k, v in zip(names, values[0])}


def _measure_crop_cp(
    crop: np.ndarray,
    channel_names: list[str],
    mask: np.ndarray | None,
    mods: tuple[str, ...],
    prm: dict[str, dict[str, Any]],
) -> dict[str, float]:
    """cp-measure's functions on one crop (the ``cp_measure`` engine)."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    labels = np.ones(crop.shape[1:], dtype=np.int32) if mask is None else (np.asarray(mask) != 0).astype(np.int32)
    if not labels.any():
        return {}
    core = get_core_measurements(sanitize=False)
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if "sizeshape" in mods:
            for k, v in core["sizeshape"](labels, crop[0], **prm["sizeshape"]).items():
                out[f"{_PREFIX['sizeshape']}{k}"] = float(np.asarray(v).ravel()[0])
        for c, ch in enumerate(channel_names):
            pix = crop[c]
            if "quality" in mods:
                for k, v in image_quality(pix, **prm["quality"]).items():
                    out[f"{k}_{ch}"] = v
            for mod in ("intensity", "radial_distribution", "texture", "granularity"):
                if mod not in mods:
                    continue
                res = core[mod](labels, pix, **prm[mod])
                for k, v in res.items():
                    out[f"{_PREFIX[mod]}{k}_{ch}"] = float(np.asarray(v, dtype=np.float64).ravel()[0])
        # colocalisation between stain channels (not with their own Otsu masks)
        pair_ch = [i for i, ch in enumerate(channel_names) if not ch.endswith("_otsu")]
        if "correlation" in mods and len(pair_ch) > 1:
            corr = get_correlation_measurements(sanitize=False)
            scale_max = int(prm["correlation"]["costes_scale_max"])
            for ia, a in enumerate(pair_ch):
                for b in pair_ch[ia + 1 :]:
                    pair = f"{channel_names[a]}_{channel_names[b]}"
                    for name, fn in corr.items():
                        kw = {"scale_max": scale_max} if name == "costes" else {}
                        for k, v in fn(crop[a], crop[b], labels, **kw).items():
                            out[f"{k}_{pair}"] = float(np.asarray(v, dtype=np.float64).ravel()[0])
    return out


def _measure_fast(
    crops: np.ndarray,
    channel_names: list[str],
    masks: np.ndarray | None,
    mods: tuple[str, ...],
    prm: dict[str, dict[str, Any]],
) -> tuple[list[str], np.ndarray]:
    """The ``fast`` engine on ``(n, C, S, S)`` float32 crops: names in :func:`measure_crop`'s order and values.

    Crops with an empty mask get a NaN row; when every mask is empty there are no columns (as the
    ``cp_measure`` engine, whose rows are then all empty dicts). ``sizeshape`` and ``correlation`` are measured
    by cp-measure per crop.
    """
    from ._fast import FAST_MODULES, measure_stack

    n = crops.shape[0]
    keep = np.ones(n, bool) if masks is None else (np.asarray(masks) != 0).any(axis=(1, 2))
    if not keep.any():
        return [], np.empty((n, 0))
    sub = crops if keep.all() else crops[keep]
    msub = None if masks is None else (np.asarray(masks)[keep] != 0)
    names, values = measure_stack(sub, channel_names, msub, [m for m in mods if m in FAST_MODULES], prm)
    slow = tuple(m for m in mods if m not in FAST_MODULES)
    if slow:
        rows = [
            _measure_crop_cp(sub[i], channel_names, None if msub is None else msub[i], slow, prm)
            for i in range(sub.shape[0])
        ]
        pre = [k for k in rows[0] if k.startswith(_PREFIX["sizeshape"])]
        post = [k for k in rows[0] if not k.startswith(_PREFIX["sizeshape"])]
        extra = np.array([[r.get(k, np.nan) for k in pre + post] for r in rows], dtype=np.float64).reshape(
            len(rows), len(pre) + len(post)
        )
        names = pre + names + post
        values = np.concatenate([extra[:, : len(pre)], values, extra[:, len(pre) :]], axis=1)
    if keep.all():
        return names, values
    full = np.full((n, len(names)), np.nan)
    full[keep] = values
    return names, full


def _measure_chunk(
    crops: np.ndarray,
    masks: np.ndarray | None,
    channel_names: list[str],
    otsu_channels: list[str],
    modules: tuple[str, ...],
    params: dict[str, dict[str, Any]],
    accelerator: str | None,
    engine: str = "cp_measure",
) -> list[dict[str, float]] | tuple[list[str], np.ndarray]:
    names = list(channel_names) + [f"{ch}_otsu" for ch in otsu_channels]
    idx = [channel_names.index(ch) for ch in otsu_channels]
    # threads share cp-measure's global accelerator: the caller sets it once around them ("keep")
    ctx = contextlib.nullcontext() if accelerator == "keep" else _accelerator(accelerator)
    with ctx:
        if engine == "fast":
            from ._fast import otsu_binary_stack

            if idx:
                crops = np.concatenate([crops, np.stack([otsu_binary_stack(crops[:, j]) for j in idx], axis=1)], axis=1)
            return _measure_fast(np.ascontiguousarray(crops, dtype=np.float32), names, masks, modules, params)
        rows = []
        for i in range(crops.shape[0]):
            crop = crops[i]
            if idx:
                crop = np.concatenate([crop, np.stack([otsu_binary(crop[j]) for j in idx])], axis=0)
            rows.append(measure_crop(crop, names, None if masks is None else masks[i], modules=modules,
                                     params=params, engine="cp_measure"))
    return rows


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def measure_crops(
    crops: np.ndarray,
    channel_names: Sequence[str],
    masks: np.ndarray | None = None,
    *,
    modules: Sequence[str] = DEFAULT_MODULES,
    otsu_channels: Sequence[str] = (),
    params: dict[str, dict[str, Any]] | None = None,
    n_jobs: int | None = 1,
    backend: Literal["loky", "threading"] = "loky",
    chunk_size: int | None = None,
    accelerator: str | None = "auto",
    index: Sequence[str] | None = None,
    progress_desc: str = "CellProfiler features",
    engine: Literal["fast", "cp_measure"] = "fast",
) -> pd.DataFrame:
    """CellProfiler features of many crops: one row per crop, one column per feature.

    Parameters
    ----------
    crops
        ``(n, C, S, S)`` float crops with intensities in ``[0, 1]`` (texture quantises ``[0, 1]`` to 256 grey
        levels; values outside are an error).
    channel_names
        ``C`` channel names.
    masks
        Optional ``(n, S, S)`` object masks (non-zero = the cell); ``None``: the whole crop is the object.
        Cells whose mask is empty get an all-NaN row.
    modules
        Subset of :data:`ALL_MODULES` (default :data:`DEFAULT_MODULES`, the study's).
    otsu_channels
        Channels to add an Otsu-thresholded binary copy of (named ``<channel>_otsu``), e.g. ``("DAPI",)``.
    params
        Per-module overrides of :data:`DEFAULT_PARAMS`.
    n_jobs
        Parallel workers (joblib); ``None`` / ``-1``: ``stmorph.settings.workers()`` (the CPUs this process may
        use unless set; :func:`stmorph._threads.resolve_n_jobs`). ``1`` runs in this process.
    backend
        ``"loky"`` (processes) or ``"threading"``; see ``benchmarks/RESULTS.md`` for which is faster.
    chunk_size
        Crops per call of the engine (and per parallel task); default 64 for ``"fast"`` (measured together), 16
        for ``"cp_measure"``.
    accelerator
        cp-measure accelerator for the ``cp_measure`` engine (and the ``sizeshape``/``correlation`` modules of
        the fast one): ``"auto"`` (numba when installed: ~20x faster texture, values within ~1e-4), ``"numba"``
        or ``None`` (numpy: the values the ``fast`` engine equals).
    index
        Row labels (cell ids); default ``0..n-1`` as strings.
    progress_desc
        Progress-bar label.
    engine
        ``"fast"`` (default): stmorph's stack engine, equal values (:mod:`stmorph.features._fast`);
        ``"cp_measure"``: cp-measure's functions crop by crop.

    Returns
    -------
    pandas.DataFrame
        ``(n, n_features)`` float64; NaN where a measurement is undefined (reported by :func:`select_features`).

    Examples
    --------
    >>> crops = np.random.default_rng(0).random((3, 2, 40, 40)).astype(np.float32)
    >>> df = measure_crops(crops, ["DAPI", "membrane"], modules=["intensity"])
    >>> df.shape
    (3, 42)
    """
    crops = np.asarray(crops)
    if crops.ndim != 4:
        raise StmorphInputError(f"crops have shape {crops.shape}", expected="(n, C, S, S)")
    channel_names = [str(c) for c in channel_names]
    if len(channel_names) != crops.shape[1] or len(set(channel_names)) != len(channel_names):
        raise StmorphInputError(
            f"{len(channel_names)} channel names {channel_names} for {crops.shape[1]} channels",
            expected="one unique name per channel",
        )
    otsu_channels = [str(c) for c in otsu_channels]
    missing = [c for c in otsu_channels if c not in channel_names]
    if missing:
        raise StmorphInputError(f"otsu_channels {missing} are not among {channel_names}", expected="channel names")
    if crops.size and (np.nanmin(crops) < -1e-6 or np.nanmax(crops) > 1 + 1e-6):
        raise StmorphInputError(
            f"crop intensities span [{np.nanmin(crops):.4g}, {np.nanmax(crops):.4g}]",
            expected="values in [0, 1] (scale by the image maximum, e.g. crop_stains(normalize='image'))",
        )
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (crops.shape[0],) + crops.shape[2:]:
            raise StmorphInputError(f"masks have shape {masks.shape} for crops {crops.shape}", expected="(n, S, S)")
    mods = _check_modules(modules)
    prm = _merged_params(params)
    acc = _resolve_accelerator(accelerator)
    _check_engine(engine)
    n = crops.shape[0]
    idx = [str(i) for i in range(n)] if index is None else [str(i) for i in index]
    if len(idx) != n:
        raise StmorphInputError(f"{len(idx)} index labels for {n} crops", expected="one label per crop")
    crops = np.clip(np.nan_to_num(crops.astype(np.float32, copy=False), nan=0.0), 0.0, 1.0)
    size = (64 if engine == "fast" else 16) if chunk_size is None else chunk_size
    parts = _chunks(n, max(1, int(size)))
    args = (channel_names, otsu_channels, mods, prm, acc, engine)
    n_jobs = resolve_n_jobs(n_jobs)
    results: list[Any] = []
    bar = progress(range(n), desc=progress_desc, total=n, unit="cell")
    if n_jobs == 1 or len(parts) == 1:
        for sl in parts:
            results.append(_measure_chunk(crops[sl], None if masks is None else masks[sl], *args))
            bar.update(sl.stop - sl.start)  # type: ignore[attr-defined]
    else:
        from joblib import Parallel, delayed

        if backend == "threading":
            args = (channel_names, otsu_channels, mods, prm, "keep", engine)
        elif backend != "loky":
            raise StmorphInputError(f"backend={backend!r}", expected="'loky' or 'threading'")
        par = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")
        with _accelerator(acc) if backend == "threading" else contextlib.nullcontext():
            gen = par(delayed(_measure_chunk)(crops[sl], None if masks is None else masks[sl], *args) for sl in parts)
            for sl, res in zip(parts, gen):
                results.append(res)
                bar.update(sl.stop - sl.start)  # type: ignore[attr-defined]
    bar.close()  # type: ignore[attr-defined]
    if engine == "fast":
        names = next((r[0] for r in results if r[0]), [])
        values = np.full((n, len(names)), np.nan)
        for sl, (nm, v) in zip(parts, results):
            if nm:
                values[sl] = v
        return pd.DataFrame(values, columns=names, index=pd.Index(idx, name="cell_id"))
    rows: list[dict[str, float]] = [r for res in results for r in res]
    columns: list[str] = []
    seen: set[str] = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    df = pd.DataFrame.from_records(rows, columns=columns, index=pd.Index(idx, name="cell_id"))
    return df.astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# SpatialSample wrapper
# ---------------------------------------------------------------------------------------------------------------
def _crop_functions() -> tuple[Any, Any]:
    """:func:`stmorph.crops.crop_boxes` and :func:`stmorph.crops.crop_stains` (imported late: crops imports torch)."""
    from ..crops import crop_boxes, crop_stains

    return crop_boxes, crop_stains


def _channel_scale(img: np.ndarray, intensity_scale: str | float) -> float:
    if isinstance(intensity_scale, int | float) and not isinstance(intensity_scale, bool):
        return float(intensity_scale)
    if intensity_scale == "image":
        return float(np.max(img))
    if intensity_scale == "dtype":
        return float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0
    raise StmorphInputError(f"intensity_scale={intensity_scale!r}", expected="'image', 'dtype' or a number")


def finalize_features(
    df: pd.DataFrame,
    *,
    masks: bool,
    n_empty_masks: int,
    modules: Sequence[str],
    channels: Sequence[str],
    select: bool,
    selection: dict[str, Any] | None,
    fill_nan: str | None,
    key: str,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Checks, feature selection and NaN handling of a raw cells x features table (serial and distributed runs).

    Parameters
    ----------
    df
        Raw measurements, cells in order.
    masks, n_empty_masks
        Whether cell masks were used, and how many cells had an empty one (all empty is an error).
    modules, channels
        What was measured (for messages).
    select, selection
        Run :func:`~stmorph.features.select_features` with these arguments.
    fill_nan
        ``"median"``: NaN left after selection becomes the feature median (counted, warned); ``None``: kept.
    key
        The ``obsm`` key (for messages).

    Returns
    -------
    ``(table, summary)``: the final table and the facts for ``uns[key]`` (object, counts, NaN, dropped features).

    Raises
    ------
    StmorphInputError
        When no cell has a pixel of its mask, nothing could be measured, or selection dropped every feature.
    """
    from ._selection import select_features

    if fill_nan not in ("median", None):
        raise StmorphInputError(f"fill_nan={fill_nan!r}", expected="'median' or None")
    n = df.shape[0]
    if masks and n and n_empty_masks == n:
        raise StmorphInputError(
            f"none of the {n} cells has a pixel of its own label in the masks", column="label_id",
            expected="each cell's label value in the masks (obs['label_id'] or mask_ids=)",
        )
    if df.shape[1] == 0 or df.isna().all(axis=None):
        raise StmorphInputError(
            f"no CellProfiler feature could be measured (modules {list(modules)}, channels {list(channels)})",
            expected="modules and channels that yield features",
        )
    n_measured = df.shape[1]
    empty_cells = int(df.isna().all(axis=1).sum())
    report = None
    if select:
        df, report = select_features(df, **(selection or {}))
    if df.shape[1] == 0:
        raise StmorphInputError(
            f"feature selection dropped all {n_measured} features", expected="select=False, or more cells/modules"
        )
    nan_counts = {c: int(v) for c, v in df.isna().sum().items() if v}
    if fill_nan == "median" and nan_counts:
        med = df.median(axis=0, skipna=True)
        df = df.fillna(med).fillna(0.0) if med.isna().any() else df.fillna(med)
        warnings.warn(
            f"{sum(nan_counts.values())} undefined CellProfiler values in {len(nan_counts)} features were replaced "
            f"by the feature median (counts in uns['{key}']['nan_filled'])",
            RuntimeWarning,
            stacklevel=3,
        )
    summary: dict[str, Any] = {
        "object": "mask" if masks else "grid",
        "empty_masks": int(n_empty_masks),
        "n_features_measured": int(n_measured),
        "n_features_kept": int(df.shape[1]),
        "cells_with_empty_mask": empty_cells,
        "nan_counts": nan_counts,
        "nan_filled": nan_counts if fill_nan == "median" else {},
    }
    if report is not None:
        summary["dropped"] = {
            "feature": report["feature"].tolist(),
            "reason": report["reason"].tolist(),
            "detail": report["detail"].tolist(),
        }
    return df, summary


def cellprofiler_features(
    sample,
    *,
    size: int = 100,
    channels: Sequence[str] | None = None,
    otsu_channels: Sequence[str] | None = ("DAPI",),
    masks: Any = None,
    mask_ids: np.ndarray | str | None = None,
    crop_um: float | None = None,
    modules: Sequence[str] = DEFAULT_MODULES,
    params: dict[str, dict[str, Any]] | None = None,
    intensity_scale: str | float = "image",
    edge: Literal["shift", "pad"] = "shift",
    select: bool = True,
    selection: dict[str, Any] | None = None,
    fill_nan: Literal["median"] | None = "median",
    key_added: str | None = None,
    n_jobs: int | None = 1,
    backend: Literal["loky", "threading"] = "loky",
    batch_size: int = 256,
    accelerator: str | None = "auto",
    copy: bool = False,
    engine: Literal["fast", "cp_measure"] = "fast",
):
    """CellProfiler features of every cell of a sample into ``adata.obsm["X_cp_<name>"]``.

    Crops ``size x size`` boxes around the centroids (:func:`stmorph.crops.crop_stains`), scales each channel
    to ``[0, 1]`` by ``intensity_scale``, measures them (:func:`measure_crops`), then selects features
    (:func:`stmorph.features.select_features`) and handles NaN explicitly.

    Parameters
    ----------
    sample
        A :class:`~stmorph.SpatialSample` with stain images.
    size
        Crop side in pixels (the study: 100 small, 300 large).
    channels
        Channels to measure; default all of ``sample.images``.
    otsu_channels
        Channels to add an Otsu-thresholded binary copy of; default ``("DAPI",)`` when present (missing
        channels are skipped with no error only for this default).
    masks
        The cell masks: ``True`` (or ``"sample"``) the sample's own segmentation
        (:attr:`~stmorph.SpatialSample.segmentation`); a label image file, array or
        :class:`~stmorph.LabelImage` on the stains' grid. ``None``: the whole crop is the object (grid object).
        When no cell has a pixel of its label in its crop the call fails (wrong ids), instead of measuring nothing.
    mask_ids
        Label of each cell in ``masks``: an array, an ``obs`` column name, or ``None``: ``obs["label_id"]`` when
        present, else ``1..n`` (row order).
    crop_um
        Crop side in micrometres instead of ``size`` pixels (through the sample's pixel size).
    modules, params
        See :func:`measure_crops`.
    intensity_scale
        ``"image"``: divide each channel by its image maximum (keeps all 256 texture grey levels in use);
        ``"dtype"``: by the dtype maximum (CellProfiler's own convention); or a number.
    edge
        Crop placement at the border (:func:`stmorph.crops.crop_boxes`; ``"shift"`` as in the study).
    select
        Run :func:`~stmorph.features.select_features` (variance, NA, correlation 0.9, blocklist).
    selection
        Keyword arguments for :func:`~stmorph.features.select_features`.
    fill_nan
        ``"median"``: NaN left after selection is replaced by the feature median, and every replaced value
        is counted in ``uns[key]["nan_filled"]`` (and warned about); ``None``: NaN stays in ``obsm``.
    key_added
        ``obsm`` key; default ``X_cp_<size>``.
    n_jobs, backend, accelerator
        Parallelism and cp-measure accelerator, see :func:`measure_crops`.
    batch_size
        Cells cropped at once (bounds memory for large crops).
    copy
        Return a new sample instead of writing into ``sample.adata``.
    engine
        ``"fast"`` (default) or ``"cp_measure"``: see :func:`measure_crops` (equal values).

    Returns
    -------
    ``None`` (in place) or the new :class:`~stmorph.SpatialSample` when ``copy=True``. Writes
    ``obsm[key]`` (float32), ``uns[key + "_features"]`` (names) and ``uns[key]`` (parameters, dropped features
    with reasons, NaN counts, timing).

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue  # doctest: +SKIP
    >>> sample = synthetic_tissue(n_cells=100, random_state=0)  # doctest: +SKIP
    >>> cellprofiler_features(sample, size=64)  # doctest: +SKIP
    >>> sample.adata.obsm["X_cp_64"].shape  # doctest: +SKIP
    """

    t0 = time.perf_counter()
    if fill_nan not in ("median", None):
        raise StmorphInputError(f"fill_nan={fill_nan!r}", expected="'median' or None")
    if copy:
        sample = sample.copy()
    chans = list(sample.channel_names if channels is None else channels)
    if not chans:
        raise missing_modality("images")
    missing = [c for c in chans if c not in sample.images]
    if missing:
        raise StmorphInputError(f"channels {missing} not in the sample", expected=f"some of {sample.channel_names}")
    if otsu_channels == ("DAPI",):
        otsu = [c for c in otsu_channels if c in chans]
    else:
        otsu = list(otsu_channels or ())
    from ..crops import check_masks_found, crop_masks, crop_size_px, resolve_masks

    size = crop_size_px(sample, None if crop_um is not None else size, crop_um, what="CellProfiler crop")
    images = [sample.images[c].read() for c in chans]
    scales = [_channel_scale(im, intensity_scale) for im in images]
    crop_boxes, crop_stains = _crop_functions()
    boxes = crop_boxes(sample.centroids, size, images[0].shape, edge=edge)
    resolved = resolve_masks(sample, masks, mask_ids)
    key = key_added or f"X_cp_{size}"
    n = sample.n_cells
    frames = []
    n_empty_masks = 0
    for b0 in range(0, n, max(1, int(batch_size))):
        sl = slice(b0, min(n, b0 + int(batch_size)))
        crops = crop_stains(
            images, None, size, boxes=boxes[sl], edge=edge, normalize="image",
            image_range=[(0.0, s if s > 0 else 1.0) for s in scales],
        )
        mk = None if resolved is None else crop_masks(resolved[0], boxes[sl], size, resolved[1][sl])
        if mk is not None:
            n_empty_masks += check_masks_found(mk, sample.cell_ids[sl], total=n if n <= batch_size else None)
        frames.append(
            measure_crops(
                crops, chans, mk, modules=modules, otsu_channels=otsu, params=params, n_jobs=n_jobs,
                backend=backend, accelerator=accelerator, index=sample.cell_ids[sl],
                progress_desc=f"CellProfiler features {sl.start}-{sl.stop} of {n}", engine=engine,
            )
        )
    df = pd.concat(frames, axis=0)
    t_measure = time.perf_counter() - t0
    df, summary = finalize_features(
        df, masks=resolved is not None, n_empty_masks=n_empty_masks, modules=modules, channels=chans, select=select,
        selection=selection, fill_nan=fill_nan, key=key,
    )
    adata = sample.adata
    adata.obsm[key] = df.to_numpy(dtype=np.float32)
    adata.uns[f"{key}_features"] = list(df.columns)
    info: dict[str, Any] = {
        "method": "cellprofiler (cp-measure)",
        "engine": engine,
        "size": int(size),
        "channels": chans,
        "otsu_channels": otsu,
        "modules": list(modules),
        "params": {k: v for k, v in _merged_params(params).items() if k in modules},
        "intensity_scale": {c: s for c, s in zip(chans, scales)},
        "edge": edge,
        **summary,
        "seconds": round(time.perf_counter() - t0, 3),
        "seconds_measure": round(t_measure, 3),
    }
    adata.uns[key] = info
    return sample if copy else None
