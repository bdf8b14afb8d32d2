"""MUSE's multi-modal simulator (Bao et al. 2022), seeded and generalised to any number of modalities.

Every cell gets a true cluster. The true clusters are split into as many contiguous groups as there are
modalities; modality ``m`` randomly merges neighbouring clusters of *its* group (each merge with probability
``merge_prob``) and keeps the other clusters apart. Each modality therefore sees only part of the true
structure, and only a joint representation can separate all clusters.

* transcript-like modality (``"transcript"``): per modality-label cluster means ``mu ~ U(-0.5, 0.5)^k``,
  latent ``z ~ N(mu, 0.1 I)``, ``x = relu(A z)`` with ``A ~ U(-0.5, 0.5)^{p x k}``, then Gaussian noise
  (standard deviation ``sigma``) and ``relu`` again; dropout of each entry with probability
  ``exp(-decay * x^2)`` (``x`` before the noise), as in the reference.
* morphology-like modality (``"morphology"``): ``x = sigmoid(A2 sigmoid(A1 z) + noise)`` with
  ``A1 ~ U(-0.5, 0.5)^{p x k}``, ``A2 ~ U(-0.5, 0.5)^{p x p}``; each entry dropped with probability ``decay``.

Unlike the reference (global numpy and Python random states), everything is drawn from one seeded
:class:`numpy.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._utils import as_generator
from ..errors import StmorphInputError

__all__ = ["simulate_multimodal"]

_DEFAULT_NAMES = {2: ("rna", "morph"), 3: ("rna", "morph", "morph2")}


def _per_modality(value: Any, n_mod: int, name: str) -> list:
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * n_mod
    value = list(value)
    if len(value) != n_mod:
        raise StmorphInputError(
            f"{name} has {len(value)} entries for {n_mod} modalities", expected=f"one value or {n_mod} values"
        )
    return value


def _merge_labels(true: np.ndarray, group: np.ndarray, merge_prob: float, rng: np.random.Generator) -> np.ndarray:
    """Merge neighbouring clusters of ``group`` (sorted ids) with probability ``merge_prob`` each."""
    target = group.copy()
    u = rng.uniform(size=max(group.size - 1, 0))
    for i in range(u.size):
        if u[i] < merge_prob:
            target[i + 1] = target[i]
    out = true.copy()
    for src, dst in zip(group, target):
        out[true == src] = dst
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_multimodal(
    n_clusters: int = 10,
    n_cells: int = 1000,
    n_features: int | Sequence[int] = (500, 500),
    latent_dim: int = 30,
    sigma: float | Sequence[float] | None = None,
    decay: float | Sequence[float] | None = None,
    merge_prob: float = 0.7,
    *,
    n_modalities: int | None = None,
    kinds: Sequence[str] | None = None,
    modality_names: Sequence[str] | None = None,
    random_state: int | np.random.Generator | None = 0,
):
    """Simulate MUSE's multi-modal benchmark data (two or more modalities sharing true clusters).

    Parameters
    ----------
    n_clusters
        Number of true clusters.
    n_cells
        Number of cells (clusters drawn uniformly per cell).
    n_features
        Features per modality (one value for all, or one per modality).
    latent_dim
        Dimension ``k`` of the latent code behind each modality.
    sigma
        Standard deviation of the Gaussian noise, per modality (default 0.1 for every modality).
    decay
        Transcript-like modalities: decay coefficient of the dropout probability ``exp(-decay x^2)``;
        morphology-like modalities: the uniform dropout probability. Default: 0.5 for transcript-like and
        0.1 for morphology-like modalities (the paper's demo setting).
    merge_prob
        Probability of merging each pair of neighbouring clusters within a modality's group.
    n_modalities
        Number of modalities; defaults to the length of ``n_features`` (2 for the defaults).
    kinds
        ``"transcript"`` or ``"morphology"`` per modality; default: the first is transcript-like, the rest
        morphology-like.
    modality_names
        Names of the modalities in the MuData; default ``("rna", "morph")`` / ``("rna", "morph", "morph2")``
        / ``mod0, mod1, ...``.
    random_state
        Seed or generator; the whole simulation is drawn from it.

    Returns
    -------
    :class:`mudata.MuData` with one AnnData per modality (``X``: data with dropouts, float32;
    ``layers["full"]``: before dropout; ``obs["sim_label"]``: the merged, modality-specific labels) and
    ``obs["true_cluster"]`` (categorical) on the MuData. Parameters in ``uns["simulation"]``.

    Examples
    --------
    >>> mdata = simulate_multimodal(n_clusters=4, n_cells=100, n_features=(20, 30), latent_dim=5)
    >>> mdata["rna"].shape, mdata["morph"].shape
    ((100, 20), (100, 30))
    >>> mdata.obs["true_cluster"].nunique()
    4
    """
    import anndata as ad
    import mudata as md
    import pandas as pd

    if n_modalities is None:
        n_modalities = 2 if isinstance(n_features, int | np.integer) else len(n_features)
    n_mod = int(n_modalities)
    if n_mod < 2:
        raise StmorphInputError(f"n_modalities={n_mod}", expected="at least 2 modalities")
    if n_clusters < n_mod:
        raise StmorphInputError(f"n_clusters={n_clusters} < n_modalities={n_mod}", expected="n_clusters >= n_modalities")
    if not 0.0 <= merge_prob <= 1.0:
        raise StmorphInputError(f"merge_prob={merge_prob}", expected="a probability in [0, 1]")
    feats = [int(p) for p in _per_modality(n_features, n_mod, "n_features")]
    kinds = list(kinds) if kinds is not None else ["transcript"] + ["morphology"] * (n_mod - 1)
    if len(kinds) != n_mod or any(k not in ("transcript", "morphology") for k in kinds):
        raise StmorphInputError(f"kinds={kinds}", expected=f"{n_mod} entries, each 'transcript' or 'morphology'")
    sigmas = [float(s) for s in _per_modality(0.1 if sigma is None else sigma, n_mod, "sigma")]
    if decay is None:
        decay = [0.5 if kind == "transcript" else 0.1 for kind in kinds]
    decays = [float(d) for d in _per_modality(decay, n_mod, "decay")]
    names = list(modality_names) if modality_names is not None else list(
        _DEFAULT_NAMES.get(n_mod, tuple(f"mod{i}" for i in range(n_mod)))
    )
    if len(names) != n_mod or len(set(names)) != n_mod:
        raise StmorphInputError(f"modality_names={names}", expected=f"{n_mod} distinct names")

    rng = as_generator(random_state)
    true = rng.integers(0, n_clusters, size=n_cells)
    groups = np.array_split(np.arange(n_clusters), n_mod)
    k = int(latent_dim)
    obs_names = [f"cell{i}" for i in range(n_cells)]
    mods = {}
    for m in range(n_mod):
        labels = _merge_labels(true, groups[m], merge_prob, rng)
        Z = np.zeros((n_cells, k))
        for lab in np.unique(labels):
            sel = labels == lab
            mu = rng.uniform(-0.5, 0.5, size=k)
            Z[sel] = mu + rng.normal(0.0, np.sqrt(0.1), size=(int(sel.sum()), k))
        p = feats[m]
        if kinds[m] == "transcript":
            A = rng.uniform(-0.5, 0.5, size=(p, k))
            X = np.maximum(Z @ A.T, 0.0)
            p_drop = np.exp(-decays[m] * X**2)
            X = np.maximum(X + rng.normal(0.0, sigmas[m], size=X.shape), 0.0)
            drop = rng.uniform(size=X.shape) < p_drop
        else:
            A1 = rng.uniform(-0.5, 0.5, size=(p, k))
            A2 = rng.uniform(-0.5, 0.5, size=(p, p))
            H = _sigmoid(Z @ A1.T)
            X = _sigmoid(H @ A2.T + rng.normal(0.0, sigmas[m], size=(n_cells, p)))
            drop = rng.uniform(size=X.shape) < decays[m]
        Xd = X.copy()
        Xd[drop] = 0.0
        obs = pd.DataFrame({"sim_label": pd.Categorical(labels)}, index=obs_names)
        var = pd.DataFrame(index=[f"{names[m]}_f{j}" for j in range(p)])
        a = ad.AnnData(X=Xd.astype(np.float32), obs=obs, var=var)
        a.layers["full"] = X.astype(np.float32)
        a.uns["kind"] = kinds[m]
        mods[names[m]] = a
    mdata = md.MuData(mods)
    mdata.obs["true_cluster"] = pd.Categorical(true)
    mdata.uns["simulation"] = {
        "n_clusters": int(n_clusters),
        "n_cells": int(n_cells),
        "n_features": feats,
        "latent_dim": k,
        "sigma": sigmas,
        "decay": decays,
        "merge_prob": float(merge_prob),
        "kinds": kinds,
    }
    return mdata
