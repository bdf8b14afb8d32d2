"""Multi-modal integration baselines of the MUSE paper, with MuData in and ``obsm`` embeddings out.

* :func:`pca_single` - PCA of one modality;
* :func:`concat_pca` - concatenation after standard / min-max / quantile scaling of each modality, then PCA;
* :func:`cca` - canonical correlation analysis of two modalities (whitened by PCA, SVD of the
  cross-covariance; canonical variates of both modalities concatenated);
* :func:`multiview_ae` - MUSE's network and schedule without the triplet loss (plain multi-view autoencoder);
* :func:`mofa` - MOFA+ through mofapy2 (optional extra ``stmorph[mofa]``): 100 factors, 500 iterations, one group,
  one view per modality, each view centred and scaled to unit total variance (``scale_views``).

Baseline settings follow the paper's Methods (benchmarked against the reference MUSE in
``benchmarks/bench_muse_reference.py``). MOFA+ without view scaling (its default) lets the view with the larger
variance (the transcripts) dominate the factors: ARI 0.24 against 0.98 with ``scale_views=True`` on one
development dataset of :func:`stmorph.datasets.simulate_multimodal` (demo setting, seed 0).

Array-level versions (``*_arrays``) take one ``(n, p_m)`` matrix per modality and return the embedding.

The MuData wrappers follow the scverse convention of every ``stmorph.tl`` function: the embedding in
``mdata.obsm[key_added]``, its parameters in ``mdata.uns[key_added]`` (also kept, as before, under
``mdata.uns["baselines"][key_added]``; deprecated), ``copy=True`` returns the modified MuData.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..errors import StmorphInputError

__all__ = [
    "pca_arrays",
    "concat_pca_arrays",
    "cca_arrays",
    "multiview_ae_arrays",
    "mofa_arrays",
    "pca_single",
    "concat_pca",
    "cca",
    "multiview_ae",
    "mofa",
]


def _dense(x: Any) -> np.ndarray:
    import scipy.sparse as sp

    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x, dtype=np.float64)


def pca_arrays(X: Any, n_comps: int = 100, *, random_state: int = 0) -> np.ndarray:
    """PCA scores of ``X`` (``n_comps`` capped at ``min(n - 1, p)``).

    Parameters
    ----------
    X
        ``(n, p)`` matrix.
    n_comps
        Number of components.
    random_state
        Seed of the solver.

    Returns
    -------
    ``(n, n_comps)`` float32 scores.

    Examples
    --------
    >>> pca_arrays(np.random.default_rng(0).normal(size=(50, 4)), 2).shape
    (50, 2)
    """
    from sklearn.decomposition import PCA

    X = _dense(X)
    n_comps = int(min(n_comps, X.shape[0] - 1, X.shape[1]))
    return PCA(n_components=n_comps, random_state=random_state).fit_transform(X).astype(np.float32)


def _scale(X: np.ndarray, scaling: str, random_state: int) -> np.ndarray:
    from sklearn.preprocessing import MinMaxScaler, QuantileTransformer, StandardScaler

    if scaling == "standard":
        return StandardScaler().fit_transform(X)
    if scaling == "minmax":
        return MinMaxScaler().fit_transform(X)
    if scaling == "quantile":
        qt = QuantileTransformer(n_quantiles=min(1000, X.shape[0]), random_state=random_state)
        return qt.fit_transform(X)
    raise StmorphInputError(f"unknown scaling {scaling!r}", expected="'standard', 'minmax' or 'quantile'")


def concat_pca_arrays(
    xs: Sequence[Any],
    scaling: Literal["standard", "minmax", "quantile"] = "standard",
    n_comps: int = 100,
    *,
    random_state: int = 0,
) -> np.ndarray:
    """Scale each modality, concatenate the features and take the PCA.

    Parameters
    ----------
    xs
        One ``(n, p_m)`` matrix per modality.
    scaling
        ``"standard"`` (z-score), ``"minmax"`` ([0, 1]) or ``"quantile"`` (uniform quantiles) per feature.
    n_comps
        PCA components.
    random_state
        Seed.

    Returns
    -------
    ``(n, n_comps)`` float32 embedding.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> concat_pca_arrays([rng.normal(size=(30, 3)), rng.normal(size=(30, 4))], "minmax", 5).shape
    (30, 5)
    """
    mats = [_scale(_dense(x), scaling, random_state) for x in xs]
    return pca_arrays(np.hstack(mats), n_comps, random_state=random_state)


def cca_arrays(
    x: Any, y: Any, n_comps: int = 20, *, n_pcs: int = 100, reg: float = 1e-6, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlation analysis of two modalities.

    Each modality is centred and reduced to at most ``n_pcs`` principal components (which also regularises
    ``p > n`` problems), whitened, and the SVD of the whitened cross-covariance gives the canonical
    directions. Exact CCA in closed form (no iterative NIPALS as in :class:`sklearn.cross_decomposition.CCA`).

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(n, q)`` matrices.
    n_comps
        Number of canonical pairs.
    n_pcs
        Principal components kept per modality before CCA.
    reg
        Ridge added to the whitening (relative to the largest variance).
    random_state
        Seed of the PCA solver.

    Returns
    -------
    Canonical variates of ``x`` ``(n, c)``, of ``y`` ``(n, c)`` (unit variance) and the canonical
    correlations ``(c,)`` in decreasing order.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.normal(size=(200, 1))
    >>> u, v, r = cca_arrays(s + 0.1 * rng.normal(size=(200, 3)), s + 0.1 * rng.normal(size=(200, 2)), 1)
    >>> bool(r[0] > 0.9)
    True
    """

    def whiten(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(0)
        k = int(min(n_pcs, a.shape[0] - 1, a.shape[1]))
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        s = s[:k]
        keep = s > s[0] * np.sqrt(reg) if s.size else s.astype(bool)
        return u[:, :k][:, keep] * np.sqrt(a.shape[0] - 1)  # unit-variance, uncorrelated columns

    del random_state  # exact SVD: nothing random
    wx, wy = whiten(_dense(x)), whiten(_dense(y))
    n = wx.shape[0]
    c = (wx.T @ wy) / (n - 1)
    a, rho, bt = np.linalg.svd(c, full_matrices=False)
    k = int(min(n_comps, rho.size))
    return (wx @ a[:, :k]).astype(np.float32), (wy @ bt.T[:, :k]).astype(np.float32), rho[:k]


def multiview_ae_arrays(
    xs: Sequence[Any],
    *,
    latent_dim: int = 100,
    preset: str = "fast",
    zero_inflated: Sequence[bool] | None = None,
    random_state: int = 0,
    device: str = "auto",
    n_jobs: int | None = None,
    **schedule: Any,
) -> np.ndarray:
    """Multi-view autoencoder: MUSE's network, losses and schedule without the triplet loss.

    The same epochs, learning rate and batch size as :class:`stmorph.models.muse.MUSE` with ``preset`` (all its
    epochs are reconstruction epochs: there are no labels), ``lambda_super = 0``.

    Parameters
    ----------
    xs
        One ``(n, p_m)`` matrix per modality (the first zero-inflated by default).
    latent_dim
        Joint latent dimension.
    preset
        MUSE schedule preset (``"fast"`` or ``"reference"``).
    zero_inflated
        Per modality: transcript (non-zero entries) loss.
    random_state
        Seed.
    device
        Torch device.
    n_jobs
        Torch CPU threads.
    **schedule
        Overrides of the schedule (``n_epochs_warmup``, ``lr``, ...).

    Returns
    -------
    ``(n, latent_dim)`` float32 latent.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> multiview_ae_arrays([rng.random((70, 4)), rng.random((70, 5))], latent_dim=3, n_epochs_warmup=1,
    ...                     n_epochs_triplet_init=1, n_epochs=0).shape
    (70, 3)
    """
    from ..models.muse import MUSE

    mats = [_dense(x).astype(np.float32) for x in xs]
    model = MUSE([x.shape[1] for x in mats], latent_dim=latent_dim, zero_inflated=zero_inflated, lambda_super=0.0,
                 device=device, random_state=random_state)
    model.fit(mats, preset=preset, n_jobs=n_jobs, **schedule)
    return model.transform(mats)[0]


def mofa_arrays(
    xs: Sequence[Any],
    n_factors: int = 100,
    *,
    n_iterations: int = 500,
    scale_views: bool = True,
    convergence_mode: str = "fast",
    random_state: int = 0,
    use_float32: bool = True,
) -> np.ndarray:
    """MOFA+ factors of one group of cells with one view per modality (mofapy2, Gaussian likelihoods).

    Each feature is centred (MOFA+'s default) and, with ``scale_views``, each view is scaled to unit total
    variance so that a view with larger values does not dominate the factors (MOFA+'s recommendation when the
    views differ in scale, as transcripts and image features do).

    Parameters
    ----------
    xs
        One ``(n, p_m)`` matrix per modality.
    n_factors
        Number of factors (100 in the MUSE paper).
    n_iterations
        Maximum number of iterations (500 in the MUSE paper).
    scale_views
        Scale every view to unit variance.
    convergence_mode
        mofapy2's convergence tolerance (``"fast"``, ``"medium"``, ``"slow"``).
    random_state
        Seed.
    use_float32
        Compute in float32 (faster, less memory).

    Returns
    -------
    ``(n, k)`` float32 factor values (``k <= n_factors``).

    Examples
    --------
    >>> mofa_arrays([np.random.rand(50, 4), np.random.rand(50, 3)], 2, n_iterations=5)  # doctest: +SKIP
    """
    try:
        from mofapy2.run.entry_point import entry_point
    except ImportError as exc:
        raise ImportError(
            "MOFA+ needs the optional package mofapy2: pip install 'stmorph[mofa]' (or pip install mofapy2)"
        ) from exc
    import contextlib
    import io

    mats = [_dense(x) for x in xs]
    with contextlib.redirect_stdout(io.StringIO()):
        ent = entry_point()
        ent.set_data_options(scale_views=scale_views, center_groups=True, use_float32=use_float32)
        ent.set_data_matrix([[x] for x in mats], likelihoods=["gaussian"] * len(mats))
        ent.set_model_options(factors=int(n_factors))
        ent.set_train_options(iter=int(n_iterations), convergence_mode=convergence_mode, seed=int(random_state),
                              quiet=True, verbose=False)
        ent.build()
        ent.run()
    return np.asarray(ent.model.nodes["Z"].getExpectation(), dtype=np.float32)


# -- MuData wrappers ----------------------------------------------------------------------------------------
def _mods(mdata, modalities: Sequence[str] | None, *, min_n: int = 1) -> list[str]:
    if not hasattr(mdata, "mod"):
        raise StmorphInputError("expected a MuData", expected="a mudata.MuData")
    mods = list(mdata.mod) if modalities is None else list(modalities)
    missing = [m for m in mods if m not in mdata.mod]
    if missing:
        raise StmorphInputError(f"modalities {missing} not in the MuData", expected=f"names among {list(mdata.mod)}")
    if len(mods) < min_n:
        raise StmorphInputError(f"{len(mods)} modalities selected", expected=f"at least {min_n}")
    ref = mdata.obs_names
    for m in mods:
        if not mdata.mod[m].obs_names.equals(ref):
            raise StmorphInputError(
                f"modality '{m}' does not have the MuData's cells in the same order",
                expected="identical obs_names (use mu.pp.intersect_obs)",
            )
    return mods


def _finish(mdata, copy: bool, key: str, emb: np.ndarray, params: dict) -> Any:
    mdata.obsm[key] = emb
    mdata.uns[key] = params
    mdata.uns.setdefault("baselines", {})[key] = params  # the former key (deprecated), the same dict
    return mdata if copy else None


def pca_single(
    mdata, modality: str, n_comps: int = 100, *, random_state: int = 0, key_added: str | None = None, copy: bool = False
):
    """PCA of one modality of a MuData into ``mdata.obsm[key_added]`` (default ``X_pca_<modality>``).

    Parameters
    ----------
    mdata
        MuData.
    modality
        Modality name.
    n_comps
        Components.
    random_state
        Seed.
    key_added
        ``obsm`` key of the embedding and ``uns`` key of its parameters.
    copy
        Work on a copy and return it.

    Returns
    -------
    None or the copy.

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=60, n_features=(10, 10), latent_dim=4)
    >>> pca_single(md, "rna", 5)
    >>> md.obsm["X_pca_rna"].shape
    (60, 5)
    """
    if copy:
        mdata = mdata.copy()
    (mod,) = _mods(mdata, [modality])
    key = key_added or f"X_pca_{mod}"
    emb = pca_arrays(mdata.mod[mod].X, n_comps, random_state=random_state)
    params = {"method": "pca", "modality": mod, "n_comps": int(emb.shape[1]), "random_state": int(random_state)}
    return _finish(mdata, copy, key, emb, params)


def concat_pca(
    mdata,
    modalities: Sequence[str] | None = None,
    scaling: Literal["standard", "minmax", "quantile"] = "standard",
    n_comps: int = 100,
    *,
    random_state: int = 0,
    key_added: str | None = None,
    copy: bool = False,
):
    """Concatenation of scaled modalities then PCA, into ``obsm[key_added]`` (default ``X_concat_<scaling>``).

    Parameters
    ----------
    mdata
        MuData.
    modalities
        Modalities (default all).
    scaling
        ``"standard"``, ``"minmax"`` or ``"quantile"``.
    n_comps
        PCA components.
    random_state
        Seed.
    key_added
        ``obsm`` key of the embedding and ``uns`` key of its parameters.
    copy
        Work on a copy and return it.

    Returns
    -------
    None or the copy.

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=60, n_features=(10, 10), latent_dim=4)
    >>> concat_pca(md, scaling="quantile", n_comps=5)
    >>> md.obsm["X_concat_quantile"].shape
    (60, 5)
    """
    if copy:
        mdata = mdata.copy()
    mods = _mods(mdata, modalities, min_n=2)
    key = key_added or f"X_concat_{scaling}"
    emb = concat_pca_arrays([mdata.mod[m].X for m in mods], scaling, n_comps, random_state=random_state)
    params = {"method": "concat_pca", "modalities": mods, "scaling": scaling, "n_comps": int(emb.shape[1]),
              "random_state": int(random_state)}
    return _finish(mdata, copy, key, emb, params)


def cca(
    mdata,
    modalities: Sequence[str] | None = None,
    n_comps: int = 20,
    *,
    n_pcs: int = 100,
    random_state: int = 0,
    key_added: str = "X_cca",
    copy: bool = False,
):
    """CCA of two modalities; the canonical variates of both are concatenated into ``obsm[key_added]``.

    Parameters
    ----------
    mdata
        MuData.
    modalities
        Exactly two modalities (default: the first two).
    n_comps
        Canonical pairs (the embedding has ``2 * n_comps`` columns).
    n_pcs
        Principal components per modality before CCA.
    random_state
        Seed.
    key_added
        ``obsm`` and ``uns`` key; canonical correlations go to ``uns[key_added]["correlations"]``.
    copy
        Work on a copy and return it.

    Returns
    -------
    None or the copy.

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=60, n_features=(10, 10), latent_dim=4)
    >>> cca(md, n_comps=3)
    >>> md.obsm["X_cca"].shape
    (60, 6)
    """
    if copy:
        mdata = mdata.copy()
    mods = _mods(mdata, modalities, min_n=2)
    if modalities is None:
        mods = mods[:2]
    if len(mods) != 2:
        raise StmorphInputError(f"CCA got {len(mods)} modalities", expected="exactly 2")
    u, v, rho = cca_arrays(mdata.mod[mods[0]].X, mdata.mod[mods[1]].X, n_comps, n_pcs=n_pcs, random_state=random_state)
    params = {"method": "cca", "modalities": mods, "n_comps": int(u.shape[1]), "correlations": rho.tolist(),
              "random_state": int(random_state)}
    return _finish(mdata, copy, key_added, np.hstack([u, v]), params)


def multiview_ae(
    mdata,
    modalities: Sequence[str] | None = None,
    *,
    latent_dim: int = 100,
    preset: str = "fast",
    n_epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    zero_inflated: Sequence[bool] | None = None,
    random_state: int = 0,
    device: str = "auto",
    n_jobs: int | None = None,
    key_added: str = "X_mvae",
    copy: bool = False,
    n_threads: int | None = None,
):
    """Plain multi-view autoencoder: MUSE's network, losses and schedule without the triplet loss.

    Parameters
    ----------
    mdata
        MuData.
    modalities
        Modalities (default all).
    latent_dim
        Joint latent dimension.
    preset
        MUSE schedule whose epochs, learning rate and batch size are used (all epochs reconstruct). ``"fast"``
        (default, 22 epochs) is cheap but leaves the reconstruction short of converged; ``"reference"`` is the
        paper's Methods (MUSE's 900 epochs at lr 1e-4) and the fair baseline: on 20 held-out
        reference-simulator datasets (two modalities, 1,000 cells) mean ARI 0.211 fast, 0.432 reference
        (~60 s per run on one thread; the reference code without the triplet loss: 0.396 on the first 5),
        benchmarks/RESULTS.md, "Baselines".
    n_epochs
        If given: train this many epochs instead of the preset's.
    lr, batch_size
        Overrides of the preset's Adam learning rate and batch size.
    zero_inflated
        Per modality: transcript (non-zero entries) loss; default the first modality.
    random_state
        Seed.
    device
        Torch device.
    n_jobs
        Torch CPU threads during training; ``None``: as :class:`stmorph.models.muse.MUSE`.
    key_added
        ``obsm`` key of the embedding and ``uns`` key of its parameters.
    copy
        Work on a copy and return it.
    n_threads
        Deprecated alias of ``n_jobs``.

    Returns
    -------
    None or the copy.

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=80, n_features=(10, 10), latent_dim=4)
    >>> multiview_ae(md, latent_dim=8, n_epochs=2)
    >>> md.obsm["X_mvae"].shape
    (80, 8)
    """
    from ..models.muse._model import _deprecated_n_threads

    n_jobs = _deprecated_n_threads(n_jobs, n_threads, "stmorph.tl.multiview_ae")
    if copy:
        mdata = mdata.copy()
    mods = _mods(mdata, modalities, min_n=2)
    sched: dict[str, Any] = {"lr": lr, "batch_size": batch_size}
    if n_epochs is not None:
        sched.update(n_epochs_warmup=int(n_epochs), n_epochs_triplet_init=0, n_epochs=0)
    z = multiview_ae_arrays([mdata.mod[m].X for m in mods], latent_dim=latent_dim, preset=preset,
                            zero_inflated=zero_inflated, random_state=random_state, device=device, n_jobs=n_jobs,
                            **sched)
    params = {"method": "multiview_ae", "modalities": mods, "latent_dim": int(latent_dim), "preset": preset,
              "n_epochs": None if n_epochs is None else int(n_epochs), "random_state": int(random_state)}
    return _finish(mdata, copy, key_added, z, params)


def mofa(
    mdata,
    modalities: Sequence[str] | None = None,
    n_factors: int = 100,
    *,
    n_iterations: int = 500,
    scale_views: bool = True,
    random_state: int = 0,
    key_added: str = "X_mofa",
    copy: bool = False,
    **kwargs: Any,
):
    """MOFA+ factors (mofapy2, needs ``pip install 'stmorph[mofa]'``) into ``obsm[key_added]``.

    One group of cells, one view per modality, features centred and views scaled to unit variance; 100 factors
    and 500 iterations as in the MUSE paper (see :func:`mofa_arrays`).

    Parameters
    ----------
    mdata
        MuData.
    modalities
        Modalities (default all).
    n_factors
        Number of factors.
    n_iterations
        Maximum iterations.
    scale_views
        Scale each view to unit variance.
    random_state
        Seed of MOFA+.
    key_added
        ``obsm`` key of the embedding and ``uns`` key of its parameters.
    copy
        Work on a copy and return it.
    **kwargs
        Passed to :func:`mofa_arrays` (``convergence_mode``, ``use_float32``).

    Returns
    -------
    None or the copy.

    Examples
    --------
    >>> mofa(mdata, n_factors=5)  # doctest: +SKIP
    """
    if copy:
        mdata = mdata.copy()
    mods = _mods(mdata, modalities, min_n=2)
    emb = mofa_arrays([mdata.mod[m].X for m in mods], n_factors, n_iterations=n_iterations, scale_views=scale_views,
                      random_state=random_state, **kwargs)
    params = {"method": "mofa", "modalities": mods, "n_factors": int(emb.shape[1]), "n_iterations": int(n_iterations),
              "scale_views": bool(scale_views), "random_state": int(random_state)}
    return _finish(mdata, copy, key_added, emb, params)
