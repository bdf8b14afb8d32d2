"""``stmorph.tl.muse``: MUSE on a MuData (scverse conventions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..errors import StmorphInputError

__all__ = ["muse"]


def _modality_matrix(adata, layer: str | None, name: str) -> Any:
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise StmorphInputError(
            f"layer '{layer}' not found in modality '{name}'", expected=f"one of {list(adata.layers)} or None (X)"
        )
    return adata.layers[layer]


def muse(
    mdata,
    modalities: Sequence[str] | None = None,
    *,
    latent_dim: int = 100,
    zero_inflated: Sequence[str] | Sequence[bool] | None = None,
    init_labels: dict[str, str | np.ndarray] | None = None,
    layers: dict[str, str] | None = None,
    preset: str = "fast",
    n_epochs_warmup: int | None = None,
    n_epochs_triplet_init: int | None = None,
    n_epochs: int | None = None,
    cluster_update_every: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    label_resolution: float | None = None,
    lambda_regul: float = 5.0,
    lambda_super: float = 5.0,
    k: int = 30,
    resolution: float = 1.0,
    cluster_method: Literal["leiden", "louvain"] = "leiden",
    n_pcs: int = 100,
    label_max_cells: int | None = 20_000,
    label_weighting: Literal["none", "silhouette", "gate"] = "gate",
    label_agreement: bool = True,
    random_state: int = 0,
    key_added: str = "X_muse",
    cluster_key: str = "muse_clusters",
    device: str = "auto",
    n_jobs: int | None = None,
    save_model: str | None = None,
    copy: bool = False,
    n_threads: int | None = None,
):
    """MUSE joint representation and clusters of a multi-modal :class:`mudata.MuData`.

    Trains MUSE (Bao et al. 2022) on the given modalities (the same cells in each), then clusters the joint
    latent PhenoGraph-style.

    Parameters
    ----------
    mdata
        MuData with at least two modalities over the same cells (in the same order).
    modalities
        Modalities to integrate (default: all, in ``mdata.mod`` order). The first is treated as the
        transcript modality unless ``zero_inflated`` says otherwise.
    latent_dim
        Dimension of the joint latent (100).
    zero_inflated
        Modalities whose reconstruction loss uses only the non-zero entries (transcripts; must be
        non-negative), as names or one bool per modality. Default: the first modality.
    init_labels
        Optional initial labels per modality: ``{modality: obs column of that modality or an array}``; the
        others get PCA + PhenoGraph-style clusters.
    layers
        Optional ``{modality: layer}`` to train on a layer instead of ``X``.
    preset
        ``"fast"`` (default: 2 warm-up + 20 triplet epochs on the initial labels, no re-clustering, lr 1e-3;
        benchmarked against the reference implementation in ``benchmarks/bench_muse_reference.py``) or
        ``"reference"`` (the paper's exact 200 + 200 + 500 epochs at lr 1e-4, with re-clustering of ``h_m``).
    n_epochs_warmup, n_epochs_triplet_init, n_epochs, cluster_update_every, lr, batch_size, label_resolution
        Overrides of single fields of the preset; ``label_resolution`` is the Leiden resolution of the
        pseudo-labels (1.0 in both presets; finer labels help data with many small clusters, see ``PRESETS``).
    lambda_regul, lambda_super
        Weights of the selection penalty and of the triplet losses (5 and 5).
    k, resolution, cluster_method
        PhenoGraph-style clustering (Jaccard kNN graph + Leiden/Louvain): ``k`` and ``cluster_method`` for the
        pseudo-labels and the final clusters, ``resolution`` for the final clusters.
    n_pcs
        Principal components for the initial labels.
    label_max_cells
        The pseudo-labels (initial labels, re-clusterings) cluster at most this many random cells and label
        the rest by the nearest cluster centroid (bounds their cost at large n; None: all cells). The final
        ``cluster_key`` clusters always use every cell.
    label_weighting
        ``"none"`` (the reference), ``"silhouette"`` (scale each modality's triplet loss by the silhouette
        of its pseudo-labels relative to the best modality) or ``"gate"`` (a modality whose initial labels
        are no better than random trains on the labels of all modalities clustered together instead of its
        own; the default, a no-op when every modality's labels carry structure); see
        :class:`stmorph.models.muse.MUSE`. Helps when one modality's labels are near random (heavy transcript
        dropout, a structureless modality), see benchmarks/RESULTS.md.
    label_agreement
        True (default): a same-label pair of modality ``m`` is a triplet positive only when another modality
        also gives both cells the same label, so cell types that one modality merges and another separates
        stay apart (many small cell types: 20 clusters of ~50 cells, ARI 0.56 -> 0.76 on the reference
        simulator); False: MUSE's own positives. See :class:`stmorph.models.muse.MUSE`.
    random_state
        Seed (weights, batches, PCA, clustering).
    key_added
        ``mdata.obsm`` key of the joint latent (and ``mdata.uns`` key of the parameters); the hidden
        representation of modality ``m`` goes to ``mdata.obsm[f"{key_added}_{m}"]``.
    cluster_key
        ``mdata.obs`` key of the final clusters (categorical).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    n_jobs
        Torch CPU threads during training; ``None``: one below 5,000 cells (measured fastest, quiet and beside
        other jobs), else ``stmorph.settings.workers()``, unless the user set a thread count
        (:func:`stmorph._threads.model_threads`).
    save_model
        Optional folder to save the trained model in (:meth:`stmorph.models.muse.MUSE.save`), with the modalities'
        feature names, so that applying it to other data checks them.
    copy
        Return a modified copy (a MuData) instead of writing into ``mdata``.
    n_threads
        Deprecated alias of ``n_jobs``.

    Returns
    -------
    None (``copy=False``) or the modified copy. Writes ``obsm[key_added]``, ``obsm[f"{key_added}_{m}"]``,
    ``obs[cluster_key]``, per-modality labels of the last update in ``obs[f"{cluster_key}_{m}"]``, and
    ``uns[key_added]`` (parameters, margin, timings). The same dict is also kept under the former key
    ``uns["muse"]`` (deprecated; read ``uns[key_added]``).

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=200, n_features=(30, 30), latent_dim=5)
    >>> muse(md, latent_dim=10, n_epochs_warmup=2, n_epochs_triplet_init=2, n_epochs=2)
    >>> md.obsm["X_muse"].shape
    (200, 10)
    """
    import pandas as pd

    from .._cluster import phenograph_scaling
    from ..models.muse import MUSE
    from ..models.muse._model import _deprecated_n_threads

    n_jobs = _deprecated_n_threads(n_jobs, n_threads, "stmorph.tl.muse")
    if copy:
        mdata = mdata.copy()
    if not hasattr(mdata, "mod"):
        raise StmorphInputError("muse needs a MuData", expected="a mudata.MuData with >= 2 modalities")
    mods = list(mdata.mod) if modalities is None else list(modalities)
    missing = [m for m in mods if m not in mdata.mod]
    if missing:
        raise StmorphInputError(f"modalities {missing} not in the MuData", expected=f"names among {list(mdata.mod)}")
    if len(mods) < 2:
        raise StmorphInputError(f"{len(mods)} modality selected", expected="at least 2 modalities")
    ref = mdata.mod[mods[0]].obs_names
    for m in mods[1:]:
        if not mdata.mod[m].obs_names.equals(ref):
            raise StmorphInputError(
                f"modality '{m}' does not have the same cells in the same order as '{mods[0]}'",
                expected="identical obs_names across modalities (subset with mu.pp.intersect_obs first)",
            )
    if not mdata.obs_names.equals(ref):
        raise StmorphInputError(
            "the MuData's cells differ from its modalities' cells",
            expected="identical obs_names in the MuData and each modality (use mu.pp.intersect_obs)",
        )
    if zero_inflated is None:
        zi = [True] + [False] * (len(mods) - 1)
    elif all(isinstance(v, bool | np.bool_) for v in zero_inflated) and len(zero_inflated) == len(mods):
        zi = [bool(v) for v in zero_inflated]
    else:
        unknown = [v for v in zero_inflated if v not in mods]
        if unknown:
            raise StmorphInputError(f"zero_inflated names {unknown} are not selected modalities", expected=str(mods))
        zi = [m in zero_inflated for m in mods]
    layers = layers or {}
    xs = [_modality_matrix(mdata.mod[m], layers.get(m), m) for m in mods]
    names = [[str(v) for v in mdata.mod[m].var_names] for m in mods]
    labels0: list[np.ndarray | None] = []
    for m in mods:
        spec = (init_labels or {}).get(m)
        if isinstance(spec, str):
            if spec not in mdata.mod[m].obs:
                raise StmorphInputError(
                    f"initial-label column not found in modality '{m}'", column=spec, expected="an obs column"
                )
            spec = mdata.mod[m].obs[spec].to_numpy()
        labels0.append(None if spec is None else np.asarray(spec))

    model = MUSE(
        [x.shape[1] for x in xs],
        latent_dim=latent_dim,
        zero_inflated=zi,
        lambda_regul=lambda_regul,
        lambda_super=lambda_super,
        modality_names=mods,
        device=device,
        random_state=random_state,
        label_weighting=label_weighting,
        label_agreement=label_agreement,
    )
    model.fit(
        xs,
        labels0,
        preset=preset,
        n_epochs_warmup=n_epochs_warmup,
        n_epochs_triplet_init=n_epochs_triplet_init,
        n_epochs=n_epochs,
        cluster_update_every=cluster_update_every,
        lr=lr,
        batch_size=batch_size,
        label_resolution=label_resolution,
        k=k,
        resolution=resolution,
        cluster_method=cluster_method,
        n_pcs=n_pcs,
        label_max_cells=label_max_cells,
        n_jobs=n_jobs,
        feature_names=names,
        layers={m: v for m, v in layers.items() if m in mods},
    )
    import time

    t0 = time.perf_counter()
    z, hs = model.transform(xs, feature_names=names)
    steps: dict[str, float] = {}
    clusters = model.cluster(z, timings=steps)
    t_cl = time.perf_counter() - t0

    mdata.obsm[key_added] = z
    for m, h in zip(mods, hs):
        mdata.obsm[f"{key_added}_{m}"] = h
    mdata.obs[cluster_key] = pd.Categorical(clusters.astype(str), categories=[str(c) for c in np.unique(clusters)])
    info = model.train_info
    for m, lab in zip(mods, info["last_labels"]):
        lab = np.asarray(lab)
        mdata.obs[f"{cluster_key}_{m}"] = pd.Categorical(lab.astype(str), categories=[str(c) for c in np.unique(lab)])
    uns = {
        "params": {
            "modalities": mods,
            "zero_inflated": zi,
            "latent_dim": int(latent_dim),
            "lambda_regul": float(lambda_regul),
            "lambda_super": float(lambda_super),
            "preset": preset,
            "schedule": info["schedule"],
            "k": int(k),
            "resolution": float(resolution),
            "label_resolution": float(info["schedule"]["label_resolution"]),
            "cluster_method": cluster_method,
            "n_pcs": int(n_pcs),
            "label_max_cells": 0 if label_max_cells is None else int(label_max_cells),  # 0: all cells
            "label_weighting": label_weighting,
            "label_agreement": bool(label_agreement),
            "random_state": int(random_state),
            "device": str(model.device),
            "key_added": key_added,
            "cluster_key": cluster_key,
        },
        "margin": float(info["margin"]),
        "n_label_updates": int(info["n_label_updates"]),
        "timings_s": {
            "initial_labels": float(info["time_initial_labels_s"]),
            "training": float(info["time_training_s"]),
            "final_clustering": float(t_cl),
        },
        # what changes with size (NN-descent and 2 Leiden iterations above 50,000 cells)
        "final_clustering": {**phenograph_scaling(z.shape[0]), "timings_s": {k: float(v) for k, v in steps.items()}},
    }
    mdata.uns[key_added] = uns
    if key_added != "muse":
        mdata.uns["muse"] = uns  # the former key (deprecated), the same dict
    if save_model is not None:
        model.save(save_model)
    return mdata if copy else None
