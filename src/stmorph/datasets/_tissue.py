"""A seeded simulator of a spatial-transcriptomics tissue with cell morphology: the embedded default data.

:func:`synthetic_tissue` lays out cells of ``K`` types in space (curved layers plus scattered types, by
default), gives each type its own expression program (negative binomial counts with marker genes) and its own
morphology (cell size and shape, nucleus size and shape, DAPI intensity and chromatin texture, membrane
intensity and thickness), renders a DAPI and a membrane image, and places every counted transcript inside its
cell. Knobs set how much of the type signal lives in morphology and how much in the transcripts, and pairs of
types can share their expression (only morphology separates them) or their morphology (only transcripts do).

:func:`write_baysor_layout` and :func:`write_xenium_layout` write a sample to disk in the layouts the stmorph
readers understand (Baysor/MERFISH as in the seed study, and native 10x Xenium); they live next to their readers
(:mod:`stmorph.io._baysor`, :mod:`stmorph.io._xenium`) and are re-exported here, with :func:`defocus_stack`.

Coordinates are pixels: pixel ``(row, col)`` is centred on ``(y, x) = (row, col)`` and covers
``[col - 0.5, col + 0.5)``; the pixel of a point is ``floor(x + 0.5)``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import as_generator
from ..errors import StmorphInputError
from ..sample import LABEL_ID_KEY, LabelImage, SpatialSample, StainImage
from ._layouts import LAYOUTS, assign_types, make_layout, place_cells

__all__ = [
    "synthetic_tissue",
    "demo_tissue",
    "write_baysor_layout",
    "write_xenium_layout",
    "defocus_stack",
    "MORPHOLOGY_FEATURES",
]

#: Type-level morphology features: ``name -> (base value, spread at morphology_signal=1, lower, upper bound)``.
#: A type's value is ``base + morphology_signal * spread * z`` with ``z`` in [-1, 1] from a Latin-hypercube
#: design over types, clipped to the bounds. Lengths are pixels; intensities fractions of the dynamic range.
MORPHOLOGY_FEATURES: dict[str, tuple[float, float, float, float]] = {
    "cell_radius": (12.5, 3.0, 6.0, 40.0),  # radius of the disc of equal area before neighbours clip the cell
    "cell_aspect": (1.3, 0.3, 1.0, 3.0),  # major / minor axis of the cell ellipse
    "nucleus_fraction": (0.5, 0.12, 0.2, 0.8),  # nucleus radius / cell radius
    "nucleus_aspect": (1.35, 0.3, 1.0, 3.0),  # major / minor axis of the nucleus (eccentricity)
    "dapi_intensity": (0.5, 0.22, 0.08, 1.0),  # mean DAPI in the nucleus
    "texture_contrast": (0.35, 0.25, 0.0, 1.2),  # chromatin texture strength (0 = smooth)
    "texture_granularity": (0.5, 0.45, 0.0, 1.0),  # 1 = fine granular spots, 0 = coarse blotches
    "membrane_intensity": (0.5, 0.25, 0.05, 1.0),  # membrane outline brightness
    "membrane_thickness": (1.8, 0.8, 0.6, 5.0),  # outline thickness (Gaussian sd, pixels)
}

# per-cell variability around the type value (sd of a log-normal factor, or absolute sd for granularity)
_CELL_NOISE = {
    "cell_radius": 0.08,
    "cell_aspect": 0.08,
    "nucleus_fraction": 0.07,
    "nucleus_aspect": 0.07,
    "dapi_intensity": 0.10,
    "texture_contrast": 0.10,
    "texture_granularity": 0.05,
    "membrane_intensity": 0.10,
    "membrane_thickness": 0.10,
}

_CELL_EXTENT = 1.4  # cell ellipses reach 1.3 radii; neighbours clip them (weighted Voronoi partition)
_FILL = 0.5  # fraction of the tissue covered by the radius discs when the image size is derived
_DAPI_SCALE = 40000.0
_MEMBRANE_SCALE = 30000.0
_Z_STEP_UM = 1.5


# ----------------------------------------------------------------------------------------------------------
# type programs
# ----------------------------------------------------------------------------------------------------------
def _pick_groups(
    n_types: int, layer_types: tuple[int, ...], scattered: tuple[int, ...], n_morph: int, n_expr: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Disjoint type pairs: a layered type with a scattered one where possible (so place does not separate them)."""
    if 2 * (n_morph + n_expr) > n_types:
        raise StmorphInputError(
            f"{n_morph} morphology-only and {n_expr} expression-only pairs need {2 * (n_morph + n_expr)} types, "
            f"but n_types={n_types}",
            column="morphology_only_types / expression_only_types",
            expected="2 * (morphology_only_types + expression_only_types) <= n_types",
        )
    lay = list(layer_types)
    sca = list(scattered)
    pairs = []
    for _ in range(n_morph + n_expr):
        a = lay.pop(0) if lay else sca.pop(0)
        b = sca.pop(0) if sca else lay.pop(0)
        pairs.append((min(a, b), max(a, b)))
    return pairs[:n_morph], pairs[n_morph:]


def _morphology_design(
    n_types: int, expr_only: list[tuple[int, int]], rng: np.random.Generator, n_tries: int = 64
) -> np.ndarray:
    """(n_types, n_features) design in [-1, 1]: per feature a permutation of evenly spaced levels, the draw
    that maximises the smallest distance between types that should differ."""
    n_feat = len(MORPHOLOGY_FEATURES)
    levels = np.linspace(-1, 1, n_types) if n_types > 1 else np.zeros(1)
    same = {(a, b) for a, b in expr_only}
    best, best_score = None, -np.inf
    for _ in range(n_tries):
        z = np.column_stack([rng.permutation(levels) for _ in range(n_feat)])
        for a, b in expr_only:
            z[b] = z[a]
        d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
        mask = ~np.eye(n_types, dtype=bool)
        for a, b in same:
            mask[a, b] = mask[b, a] = False
        score = d[mask].min() if mask.any() else 0.0
        if score > best_score:
            best, best_score = z, score
    return best


def _type_morphology(design: np.ndarray, signal: float) -> dict[str, np.ndarray]:
    out = {}
    for j, (name, (base, spread, lo, hi)) in enumerate(MORPHOLOGY_FEATURES.items()):
        out[name] = np.clip(base + signal * spread * design[:, j], lo, hi)
    return out


def _expression_program(
    n_types: int,
    n_genes: int,
    markers_per_type: int,
    signal: float,
    morph_only: list[tuple[int, int]],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-type relative expression (rows sum to 1), the log fold changes and each type's marker genes."""
    log_base = rng.normal(0.0, 0.8, n_genes)
    perm = rng.permutation(n_genes)
    lfc = np.zeros((n_types, n_genes))
    markers: list[np.ndarray] = []
    for k in range(n_types):
        idx = perm[(np.arange(markers_per_type) + k * markers_per_type) % n_genes]
        markers.append(np.sort(idx))
        lfc[k, idx] = np.log(2.0) * rng.uniform(1.5, 3.0, markers_per_type)
    for a, b in morph_only:  # the pair shares one program
        lfc[b] = lfc[a]
        markers[b] = markers[a]
    lfc *= signal
    prof = np.exp(log_base[None, :] + lfc)
    prof /= prof.sum(1, keepdims=True)
    return prof, lfc, markers


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------
def _render_masks(
    xy: np.ndarray,
    cell_axes: np.ndarray,
    angle: np.ndarray,
    nuc_center: np.ndarray,
    nuc_axes: np.ndarray,
    nuc_angle: np.ndarray,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell labels (multiplicatively weighted elliptical Voronoi, clipped at the ellipse), nucleus labels and
    the nucleus' normalised squared radius (for the dome-shaped intensity profile)."""
    from scipy import ndimage

    H, W = shape
    label = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    nuc = np.zeros(shape, dtype=np.int32)
    nuc_rho = np.ones(shape, dtype=np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    boxes = []
    for i in range(len(xy)):
        cx, cy = xy[i]
        a, b = cell_axes[i]
        ext = a + 1.0
        r0, r1 = max(int(np.floor(cy - ext)), 0), min(int(np.ceil(cy + ext)) + 1, H)
        c0, c1 = max(int(np.floor(cx - ext)), 0), min(int(np.ceil(cx + ext)) + 1, W)
        boxes.append((r0, r1, c0, c1))
        dy = (np.arange(r0, r1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(c0, c1, dtype=np.float32) - cx)[None, :]
        u = dx * cos[i] + dy * sin[i]
        v = dy * cos[i] - dx * sin[i]
        rho = (u / a) ** 2 + (v / b) ** 2
        sb = best[r0:r1, c0:c1]
        upd = (rho <= 1.0) & (rho < sb)
        sb[upd] = rho[upd]
        label[r0:r1, c0:c1][upd] = i + 1
    # a weighted Voronoi region can (rarely) come out in pieces: keep the piece holding the cell's seed
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        own = label[r0:r1, c0:c1] == i + 1
        parts, n_parts = ndimage.label(own)
        if n_parts > 1:
            sr = min(max(int(np.floor(xy[i, 1] + 0.5)) - r0, 0), r1 - r0 - 1)
            sc = min(max(int(np.floor(xy[i, 0] + 0.5)) - c0, 0), c1 - c0 - 1)
            keep = parts[sr, sc] or int(np.argmax(np.bincount(parts.ravel())[1:])) + 1
            label[r0:r1, c0:c1][own & (parts != keep)] = 0
    ncos, nsin = np.cos(nuc_angle), np.sin(nuc_angle)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        cx, cy = nuc_center[i]
        a, b = nuc_axes[i]
        dy = (np.arange(r0, r1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(c0, c1, dtype=np.float32) - cx)[None, :]
        u = dx * ncos[i] + dy * nsin[i]
        v = dy * ncos[i] - dx * nsin[i]
        rho = (u / a) ** 2 + (v / b) ** 2
        inside = (rho <= 1.0) & (label[r0:r1, c0:c1] == i + 1)
        nuc[r0:r1, c0:c1][inside] = i + 1
        nuc_rho[r0:r1, c0:c1][inside] = rho[inside]
    return label, nuc, nuc_rho


def _boundary(label: np.ndarray) -> np.ndarray:
    """Cell pixels with a 4-neighbour of another label (another cell or background)."""
    b = np.zeros(label.shape, dtype=bool)
    diff = label[1:, :] != label[:-1, :]
    b[1:, :] |= diff
    b[:-1, :] |= diff
    diff = label[:, 1:] != label[:, :-1]
    b[:, 1:] |= diff
    b[:, :-1] |= diff
    # the image border closes cells too
    b[0, :] = b[-1, :] = True
    b[:, 0] = b[:, -1] = True
    return b & (label > 0)


def _to_uint16(img: np.ndarray, background: float, read_noise: float, rng: np.random.Generator) -> np.ndarray:
    out = img + background
    out += rng.standard_normal(img.shape, dtype=np.float32) * (read_noise + 0.03 * out)
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


def _render_images(
    label: np.ndarray,
    nuc: np.ndarray,
    nuc_rho: np.ndarray,
    cell: dict[str, np.ndarray],
    rng: np.random.Generator,
    blur: float,
) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    shape = label.shape

    def per_pixel(values: np.ndarray, lab: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], values]).astype(np.float32)[lab]

    # chromatin texture: two standardised noise fields (fine granules, coarse blotches), mixed per cell
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8)
    fine /= fine.std() + 1e-8
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 2.2)
    coarse /= coarse.std() + 1e-8
    g = per_pixel(cell["texture_granularity"], nuc)
    tex = g * fine + (1 - g) * coarse
    tex /= np.sqrt(g**2 + (1 - g) ** 2) + 1e-8  # unit variance whatever the mix
    c = per_pixel(cell["texture_contrast"], nuc)
    dapi = per_pixel(cell["dapi_intensity"], nuc) * (1.15 - 0.3 * nuc_rho) * np.exp(c * tex - 0.5 * c**2)
    dapi *= nuc > 0
    dapi += 0.03 * (label > 0)  # faint cytoplasm
    if blur > 0:
        dapi = ndimage.gaussian_filter(dapi, blur)
    dapi_u16 = _to_uint16(dapi * _DAPI_SCALE, 400.0, 60.0, rng)

    dist = ndimage.distance_transform_edt(~_boundary(label)).astype(np.float32)
    t = per_pixel(cell["membrane_thickness"], label)
    t[t == 0] = 1.0
    mem = per_pixel(cell["membrane_intensity"], label) * (np.exp(-0.5 * (dist / t) ** 2) + 0.06)
    if blur > 0:
        mem = ndimage.gaussian_filter(mem, blur)
    mem_u16 = _to_uint16(mem * _MEMBRANE_SCALE, 300.0, 60.0, rng)
    return dapi_u16, mem_u16


# ----------------------------------------------------------------------------------------------------------
# the simulator
# ----------------------------------------------------------------------------------------------------------
def synthetic_tissue(
    n_cells: int = 600,
    n_types: int = 6,
    n_genes: int = 60,
    image_size: int | tuple[int, int] | None = None,
    *,
    layout: Literal["layers", "patches", "random"] = "layers",
    morphology_signal: float = 1.0,
    expression_signal: float = 1.0,
    morphology_only_types: int | None = None,
    expression_only_types: int | None = None,
    markers_per_type: int | None = None,
    mean_counts: float = 60.0,
    library_sd: float = 0.3,
    nb_dispersion: float = 0.2,
    area_scaling: float = 0.0,
    morphology_noise: float = 1.0,
    n_scattered_types: int | None = None,
    scattered_fraction: float = 0.25,
    type_proportions: np.ndarray | list[float] | None = None,
    nucleus_bias: float = 0.2,
    background_fraction: float = 0.02,
    blur: float = 0.8,
    z_planes: int = 3,
    z_step_um: float = _Z_STEP_UM,
    pixel_size: float = 0.5,
    name: str = "synthetic_tissue",
    return_masks: bool | Literal["both"] = False,
    random_state: int | np.random.Generator | None = 0,
    design_random_state: int | None = None,
) -> SpatialSample | tuple[SpatialSample, np.ndarray] | tuple[SpatialSample, np.ndarray, np.ndarray]:
    """Simulate a tissue of cell types with expression, morphology, stain images and transcripts.

    Cells are placed without overlap (dart throwing with per-cell radii); each cell is an ellipse clipped
    by its neighbours (a weighted Voronoi partition), with an elliptical nucleus inside it. Each type has an
    expression program (negative binomial counts, marker genes over a shared background) and a morphology
    (see :data:`MORPHOLOGY_FEATURES`). The DAPI image shows nuclei (dome-shaped intensity, chromatin texture,
    slight blur and noise); the membrane image shows cell outlines. Every counted transcript is placed inside
    its cell (``counts == molecules`` per cell and gene), plus a few unassigned background molecules.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_types
        Number of cell types (``type_0`` ... ``type_{K-1}``).
    n_genes
        Number of genes (``gene_000`` ...).
    image_size
        ``(height, width)`` or one side in pixels; default derived from ``n_cells`` and the cell sizes
        (cell discs of the type radii cover half of the tissue: ~780 px square for 600 cells).
    layout
        ``"layers"`` (curved horizontal bands of types, like villus epithelium and muscle layers, plus
        scattered types everywhere), ``"patches"`` (Voronoi domains, each dominated by a type) or ``"random"``.
    morphology_signal
        Scales the differences in morphology between types: 0 = all types look alike, 1 = default spread,
        larger = more distinct (values are clipped to plausible bounds).
    expression_signal
        Scales the marker-gene log fold changes: 0 = identical expression of all types.
    morphology_only_types
        Number of type pairs that share one expression program and differ only in morphology; default 1
        (0 with a single type).
    expression_only_types
        Number of type pairs that share one morphology and differ only in expression; default 1 when
        ``n_types >= 4``, else 0.
    markers_per_type
        Marker genes per type; default ``max(2, n_genes // (2 * n_types))``. Markers are up-regulated
        2.8- to 8-fold (log2 1.5 to 3, times ``expression_signal``).
    mean_counts
        Mean transcripts per cell.
    library_sd
        Standard deviation of the log library size across cells.
    nb_dispersion
        Negative binomial dispersion ``alpha`` (variance ``mu + alpha * mu**2``); 0 gives Poisson counts.
    area_scaling
        Exponent tying library size to cell area (``(area / mean area) ** area_scaling``); 0 keeps counts
        independent of morphology.
    morphology_noise
        Scales the cell-to-cell variability of every morphology feature within a type.
    n_scattered_types
        Number of scattered types in the ``"layers"`` layout (default ``round(n_types / 3)``).
    scattered_fraction
        Fraction of cells belonging to the scattered types.
    type_proportions
        Relative abundance of each type (``"random"``/``"patches"`` layouts and among scattered types).
    nucleus_bias
        Probability that a transcript is placed in the nucleus rather than uniformly over the cell.
    background_fraction
        Unassigned background molecules (``cell_id`` NA), as a fraction of the assigned ones.
    blur
        Gaussian blur (pixels) of the stain images.
    z_planes
        Number of z-planes of the stacks written by :func:`write_baysor_layout` (molecule ``z`` spans them).
    z_step_um
        Distance between z-planes in micrometres (molecule ``z`` is in micrometres).
    pixel_size
        Micrometres per pixel.
    name
        Sample name.
    return_masks
        ``True``: also return the cell label image (int32, 0 = background, cell ``i`` of ``adata`` is
        ``i + 1``); ``"both"``: the cell and the nucleus label images.
    random_state
        Seed or generator; the whole simulation draws from this one generator unless ``design_random_state``
        is given.
    design_random_state
        Seed of the cell types' programs alone (their morphology and expression, markers included). Tissues
        with the same ``design_random_state`` and different ``random_state`` are different cells of the same
        types, like several slides of one study: ``type_0`` means the same thing in all of them. ``None``
        (default): the programs are drawn from ``random_state`` too.

    Returns
    -------
    SpatialSample or tuple
        The sample: ``adata`` with integer counts in ``X`` (float32), ``obs["cell_type"]`` (categorical),
        ``obsm["spatial"]`` mask centroids ``[x, y]`` in pixels, truth columns ``obs["cell_area"]``,
        ``obs["nucleus_area"]`` (pixels) and the per-cell morphology parameters; ``var["marker_of"]``;
        ``uns["synthetic_tissue"]`` with the parameters, ``morphology_only_groups``,
        ``expression_only_groups`` (type-name pairs), type morphology and expression profiles. ``molecules``
        has ``x, y, z, gene, cell_id, in_nucleus``; images ``"DAPI"`` and ``"membrane"`` (uint16). With
        ``return_masks`` the label image(s) follow.

    Examples
    --------
    >>> from stmorph.datasets import synthetic_tissue
    >>> sample = synthetic_tissue(n_cells=200, n_types=4, random_state=0)
    >>> sample.adata.obs["cell_type"].nunique()
    4
    >>> sample, labels = synthetic_tissue(n_cells=100, n_types=4, return_masks=True)
    >>> int(labels.max())
    100
    """
    _check_args(n_cells, n_types, n_genes, layout, morphology_signal, expression_signal, mean_counts, nb_dispersion,
                nucleus_bias, background_fraction, z_planes, pixel_size)
    rng = as_generator(random_state)
    if morphology_only_types is None:
        morphology_only_types = 1 if n_types >= 2 else 0
    if expression_only_types is None:
        expression_only_types = 1 if n_types >= 4 else 0
    params = dict(
        n_cells=int(n_cells), n_types=int(n_types), n_genes=int(n_genes), layout=layout,
        morphology_signal=float(morphology_signal), expression_signal=float(expression_signal),
        morphology_only_types=int(morphology_only_types), expression_only_types=int(expression_only_types),
        mean_counts=float(mean_counts), library_sd=float(library_sd), nb_dispersion=float(nb_dispersion),
        area_scaling=float(area_scaling), morphology_noise=float(morphology_noise),
        scattered_fraction=float(scattered_fraction), nucleus_bias=float(nucleus_bias),
        background_fraction=float(background_fraction), blur=float(blur), z_planes=int(z_planes),
        z_step_um=float(z_step_um), pixel_size=float(pixel_size),
        random_state=_seed_repr(random_state),
    )
    if design_random_state is not None:
        params["design_random_state"] = int(design_random_state)
    if markers_per_type is None:
        markers_per_type = max(2, n_genes // (2 * n_types))
    markers_per_type = int(min(markers_per_type, n_genes))
    params["markers_per_type"] = markers_per_type

    # -- tissue size and layout ------------------------------------------------------------------------------
    props = None if type_proportions is None else np.asarray(type_proportions, dtype=float)
    spec0 = make_layout(layout, n_types, 100, 100, np.random.default_rng(0), n_scattered=n_scattered_types,
                        scattered_fraction=scattered_fraction, proportions=props)
    morph_pairs, expr_pairs = _pick_groups(n_types, spec0.layer_types, spec0.scattered_types,
                                           int(morphology_only_types), int(expression_only_types))
    # the cell types' programs come from their own seed when one is given, so that several tissues (slides,
    # batches) can share one set of types; without it they are drawn from ``rng`` as before
    design_rng = rng if design_random_state is None else np.random.default_rng(int(design_random_state))
    design = _morphology_design(n_types, expr_pairs, design_rng)
    type_morph = _type_morphology(design, float(morphology_signal))
    profile, lfc, markers = _expression_program(n_types, n_genes, markers_per_type, float(expression_signal),
                                                morph_pairs, design_rng)

    r_type = type_morph["cell_radius"]
    sd_r = _CELL_NOISE["cell_radius"] * morphology_noise
    if image_size is None:
        expected_props = _expected_proportions(spec0)
        mean_area = float(np.sum(expected_props * np.pi * r_type**2)) * np.exp(2 * sd_r**2)
        side = int(np.ceil(np.sqrt(n_cells * mean_area / _FILL)))
        H = W = side
        fixed = False
    else:
        H, W = (int(image_size), int(image_size)) if np.isscalar(image_size) else (int(image_size[0]),
                                                                                   int(image_size[1]))
        fixed = True
    while True:
        spec = make_layout(layout, n_types, W, H, rng, n_scattered=n_scattered_types,
                           scattered_fraction=scattered_fraction, proportions=props)

        def radius_of(cand: np.ndarray, g: np.random.Generator, spec=spec) -> tuple[np.ndarray, np.ndarray]:
            t = assign_types(spec, cand, g)
            return t, r_type[t] * np.exp(g.normal(0.0, sd_r, len(t)))

        xy, types, radius = place_cells(n_cells, W, H, radius_of, rng, min_dist_factor=0.85,
                                        max_candidates=40 * n_cells + 5000)
        if len(xy) == n_cells:
            break
        if fixed:
            raise StmorphInputError(
                f"only {len(xy)} of {n_cells} cells fit into an image of {H} x {W} pixels",
                column="image_size",
                expected="a larger image_size, fewer cells or image_size=None",
            )
        H = W = int(np.ceil(H * 1.08))
    params["image_size"] = [int(H), int(W)]
    params["n_scattered_types"] = len(spec.scattered_types)
    if props is not None:
        params["type_proportions"] = [float(v) for v in props]

    # -- per-cell morphology ---------------------------------------------------------------------------------
    cell: dict[str, np.ndarray] = {"cell_radius": radius}
    for feat, (_, _, lo, hi) in MORPHOLOGY_FEATURES.items():
        if feat == "cell_radius":
            continue
        sd = _CELL_NOISE[feat] * morphology_noise
        base = type_morph[feat][types]
        if feat == "texture_granularity":
            cell[feat] = np.clip(base + rng.normal(0.0, sd, n_cells), lo, hi)
        elif feat in ("cell_aspect", "nucleus_aspect"):
            cell[feat] = np.clip(1.0 + (base - 1.0) * np.exp(rng.normal(0.0, sd * 3, n_cells)), lo, hi)
        else:
            cell[feat] = np.clip(base * np.exp(rng.normal(0.0, sd, n_cells)), lo, hi)
    angle = rng.uniform(0, np.pi, n_cells)
    sq = np.sqrt(cell["cell_aspect"])
    cell_axes = _CELL_EXTENT * radius[:, None] * np.column_stack([sq, 1 / sq])
    rn = cell["nucleus_fraction"] * radius
    nq = np.sqrt(cell["nucleus_aspect"])
    nuc_axes = rn[:, None] * np.column_stack([nq, 1 / nq])
    nuc_angle = angle + rng.normal(0.0, 0.3, n_cells)
    offset = rng.normal(0.0, 0.06, (n_cells, 2)) * radius[:, None]
    nuc_center = xy + offset

    label, nuc, nuc_rho = _render_masks(xy, cell_axes, angle, nuc_center, nuc_axes, nuc_angle, (H, W))
    dapi, membrane = _render_images(label, nuc, nuc_rho, cell, rng, float(blur))

    # -- mask statistics ---------------------------------------------------------------------------------------
    n_lab = n_cells + 1
    cell_area = np.bincount(label.ravel(), minlength=n_lab)[1:]
    nucleus_area = np.bincount(nuc.ravel(), minlength=n_lab)[1:]
    rows, cols = np.indices((H, W))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(label.ravel(), weights=cols.ravel(), minlength=n_lab)[1:] / cell_area
        cy = np.bincount(label.ravel(), weights=rows.ravel(), minlength=n_lab)[1:] / cell_area
    empty = cell_area == 0
    cx[empty], cy[empty] = xy[empty, 0], xy[empty, 1]  # practically never: keep the seed point

    # -- counts ------------------------------------------------------------------------------------------------
    lib = mean_counts * np.exp(rng.normal(-0.5 * library_sd**2, library_sd, n_cells))
    if area_scaling:
        lib *= (np.maximum(cell_area, 1) / max(cell_area.mean(), 1)) ** area_scaling
    mu = lib[:, None] * profile[types]
    if nb_dispersion > 0:
        mu = rng.gamma(1.0 / nb_dispersion, mu * nb_dispersion)
    counts = rng.poisson(mu).astype(np.int64)
    counts[empty] = 0

    # -- molecules ---------------------------------------------------------------------------------------------
    molecules = _place_molecules(counts, label, nuc, nucleus_bias, background_fraction, profile[types].mean(0),
                                 int(z_planes), float(z_step_um), rng)

    # -- assemble ------------------------------------------------------------------------------------------------
    type_names = [f"type_{k}" for k in range(n_types)]
    gene_names = [f"gene_{g:03d}" for g in range(n_genes)]
    cell_ids = [f"cell_{i + 1}" for i in range(n_cells)]
    obs = pd.DataFrame(index=pd.Index(cell_ids, name="cell_id"))
    obs["cell_type"] = pd.Categorical.from_codes(types, categories=type_names)
    obs["cell_area"] = cell_area.astype(np.int64)
    obs["nucleus_area"] = nucleus_area.astype(np.int64)
    for feat, vals in cell.items():
        obs[f"true_{feat}"] = vals.astype(np.float64)
    marker_of = np.array([""] * n_genes, dtype=object)
    for k in range(n_types):
        for g in markers[k]:
            marker_of[g] = type_names[k] if not marker_of[g] else f"{marker_of[g]},{type_names[k]}"
    var = pd.DataFrame({"marker_of": marker_of.astype(str)}, index=pd.Index(gene_names, name="gene"))
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = np.column_stack([cx, cy]).astype(np.float64)

    def pairs_to_names(pairs: list[tuple[int, int]]) -> list[list[str]]:
        return [[type_names[a], type_names[b]] for a, b in pairs]

    adata.uns["synthetic_tissue"] = {
        "params": params,
        "type_names": type_names,
        "layer_types": [type_names[k] for k in spec.layer_types],
        "scattered_types": [type_names[k] for k in spec.scattered_types],
        "morphology_only_groups": pairs_to_names(morph_pairs),
        "expression_only_groups": pairs_to_names(expr_pairs),
        "type_morphology": {k: np.asarray(v, dtype=np.float64) for k, v in type_morph.items()},
        "expression_profile": profile,
        "log_fold_change": lfc,
        "markers": {type_names[k]: [gene_names[g] for g in markers[k]] for k in range(n_types)},
    }
    molecules["gene"] = pd.Categorical.from_codes(molecules["gene"].to_numpy(), categories=gene_names)
    ids = np.asarray(cell_ids, dtype=object)
    cid = molecules.pop("cell")
    molecules["cell_id"] = pd.array(np.where(cid.to_numpy() > 0, ids[np.maximum(cid.to_numpy() - 1, 0)], None),
                                    dtype="string")
    molecules = molecules[["x", "y", "z", "gene", "cell_id", "in_nucleus"]]
    images = {"DAPI": StainImage(dapi), "membrane": StainImage(membrane)}
    adata.obs[LABEL_ID_KEY] = np.arange(1, n_cells + 1, dtype=np.int64)  # cell i is label i + 1 in `label`
    sample = SpatialSample(adata, molecules, images, float(pixel_size), name,
                           {"reader": "synthetic_tissue", "params": params}, LabelImage(label))
    if return_masks == "both":
        return sample, label, nuc
    if return_masks:
        return sample, label
    return sample


def _seed_repr(random_state: Any) -> int | str:
    if random_state is None:
        return 0
    if isinstance(random_state, int | np.integer):
        return int(random_state)
    return "numpy.random.Generator"


def _expected_proportions(spec: Any) -> np.ndarray:
    n = len(spec.proportions)
    if spec.kind != "layers":
        return np.asarray(spec.proportions)
    p = np.zeros(n)
    p[list(spec.layer_types)] = (1 - spec.scattered_fraction) / len(spec.layer_types)
    if spec.scattered_types:
        sp = np.asarray(spec.proportions)[list(spec.scattered_types)]
        p[list(spec.scattered_types)] = spec.scattered_fraction * sp / sp.sum()
    return p


def _place_molecules(
    counts: np.ndarray,
    label: np.ndarray,
    nuc: np.ndarray,
    nucleus_bias: float,
    background_fraction: float,
    bg_profile: np.ndarray,
    z_planes: int,
    z_step: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One molecule per count, at a random pixel of its cell (of its nucleus with prob. ``nucleus_bias``)."""
    n_cells, n_genes = counts.shape
    H, W = label.shape
    totals = counts.sum(1)
    cell_of = np.repeat(np.arange(n_cells), totals)
    gene = np.repeat(np.tile(np.arange(n_genes), n_cells), counts.ravel())

    def pixel_table(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = lab.ravel()
        pix = np.flatnonzero(flat)
        order = np.argsort(flat[pix], kind="stable")
        pix = pix[order]
        size = np.bincount(flat[pix] - 1, minlength=n_cells)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        return pix, start, size

    cpix, cstart, csize = pixel_table(label)
    npix, nstart, nsize = pixel_table(nuc)
    use_nuc = (rng.random(len(cell_of)) < nucleus_bias) & (nsize[cell_of] > 0)
    u = rng.random(len(cell_of))
    pick = np.where(
        use_nuc,
        npix[np.minimum(nstart[cell_of] + (u * nsize[cell_of]).astype(np.int64), max(len(npix) - 1, 0))]
        if len(npix) else 0,
        cpix[cstart[cell_of] + (u * csize[cell_of]).astype(np.int64)],
    )
    row, col = np.divmod(pick, W)
    x = col + rng.random(len(pick)) - 0.5
    y = row + rng.random(len(pick)) - 0.5
    z_top = (z_planes - 1) * z_step
    cell_z = rng.normal(0.5 * z_top, 0.25 * z_step, n_cells)
    z = np.clip(cell_z[cell_of] + rng.normal(0.0, 0.6 * z_step, len(pick)), 0.0, z_top)
    in_nuc = nuc.ravel()[pick] > 0
    # background molecules: anywhere, not assigned
    n_bg = int(round(background_fraction * len(pick)))
    bx = rng.uniform(-0.5, W - 0.5, n_bg)
    by = rng.uniform(-0.5, H - 0.5, n_bg)
    bz = rng.uniform(0.0, z_top, n_bg) if z_top > 0 else np.zeros(n_bg)
    bgene = rng.choice(n_genes, n_bg, p=bg_profile / bg_profile.sum())
    return pd.DataFrame(
        {
            "x": np.concatenate([x, bx]).astype(np.float32),
            "y": np.concatenate([y, by]).astype(np.float32),
            "z": np.concatenate([z, bz]).astype(np.float32),
            "gene": np.concatenate([gene, bgene]).astype(np.int64),
            "cell": np.concatenate([cell_of + 1, np.zeros(n_bg, dtype=np.int64)]),
            "in_nucleus": np.concatenate([in_nuc, np.zeros(n_bg, dtype=bool)]),
        }
    )


def _check_args(n_cells, n_types, n_genes, layout, morphology_signal, expression_signal, mean_counts,
                nb_dispersion, nucleus_bias, background_fraction, z_planes, pixel_size) -> None:
    checks = [
        (n_cells >= 1, "n_cells", "at least 1 cell"),
        (n_types >= 1, "n_types", "at least 1 type"),
        (n_genes >= 1, "n_genes", "at least 1 gene"),
        (layout in LAYOUTS, "layout", f"one of {LAYOUTS}"),
        (morphology_signal >= 0, "morphology_signal", ">= 0"),
        (expression_signal >= 0, "expression_signal", ">= 0"),
        (mean_counts > 0, "mean_counts", "> 0"),
        (nb_dispersion >= 0, "nb_dispersion", ">= 0"),
        (0 <= nucleus_bias <= 1, "nucleus_bias", "a probability in [0, 1]"),
        (background_fraction >= 0, "background_fraction", ">= 0"),
        (z_planes >= 1, "z_planes", ">= 1"),
        (pixel_size > 0, "pixel_size", "> 0"),
    ]
    for ok, col, exp in checks:
        if not ok:
            raise StmorphInputError(f"invalid value for {col}", column=col, expected=exp)


@functools.lru_cache(maxsize=4)
def _demo_cached(n_cells: int, random_state: int) -> SpatialSample:
    sample = synthetic_tissue(n_cells=n_cells, n_types=6, n_genes=60, random_state=random_state,
                              name="demo_tissue")
    for img in sample.images.values():
        img.read().flags.writeable = False
    return sample


def demo_tissue(n_cells: int = 400, *, random_state: int = 0) -> SpatialSample:
    """The small default tissue used by ``stmorph demo`` and the tests (generated once per process).

    Six types over 60 genes in curved layers, one morphology-only and one expression-only pair. Each call
    returns a fresh copy of the counts and molecules (the read-only images are shared), so callers may
    modify the sample in place.

    Parameters
    ----------
    n_cells
        Number of cells.
    random_state
        Seed.

    Returns
    -------
    SpatialSample
        See :func:`synthetic_tissue`.

    Examples
    --------
    >>> from stmorph.datasets import demo_tissue
    >>> demo_tissue().n_cells
    400
    """
    s = _demo_cached(int(n_cells), int(random_state))
    out = s.copy()
    out.molecules = s.molecules.copy()
    return out


# ----------------------------------------------------------------------------------------------------------
# writers: they live next to their readers (stmorph.io); re-exported here, where they are documented.
# ----------------------------------------------------------------------------------------------------------
from ..io._baysor import write_baysor_layout  # noqa: E402
from ..io._writers_common import defocus_stack  # noqa: E402
from ..io._xenium import write_xenium_layout  # noqa: E402
