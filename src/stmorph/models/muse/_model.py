"""User-facing MUSE model: fit on arrays, embed, save and load (scvi-tools-style module/model/train split)."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..._cluster import APPROX_KNN_MIN_CELLS, phenograph_leiden, phenograph_scaling
from ..._threads import model_threads, resolve_n_jobs
from ..._utils import resolve_device, seed_torch
from ...errors import StmorphInputError
from .._base import BaseModel, check_names, to_jsonable
from ._module import MuseModule
from ._train import PRESETS, MuseSchedule, encode_all, train_muse

__all__ = ["MUSE", "muse_fit_predict", "initial_labels", "get_schedule"]

#: Below this many cells MUSE trains on ``stmorph.settings.small_model_threads`` (1) unless told otherwise.
SMALL_MUSE_CELLS = 5_000


def get_schedule(preset: str | MuseSchedule = "fast", **overrides: Any) -> MuseSchedule:
    """Return a :class:`MuseSchedule` from a preset name (``"fast"`` or ``"reference"``) with overrides.

    Parameters
    ----------
    preset
        Preset name or a schedule.
    **overrides
        Fields to replace (``None`` values are ignored), e.g. ``n_epochs=100``. Explicit epoch counts switch
        off the fast preset's scaling with the number of cells.

    Returns
    -------
    The schedule.

    Examples
    --------
    >>> get_schedule("reference", lr=1e-3).lr
    0.001
    """
    if isinstance(preset, MuseSchedule):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise StmorphInputError(f"unknown MUSE preset {preset!r}", expected=f"one of {sorted(PRESETS)}")
    kw = {k: v for k, v in overrides.items() if v is not None}
    if any(k.startswith("n_epochs") or k == "cluster_update_every" for k in kw):
        kw.setdefault("reference_n_cells", None)  # epochs given explicitly: run them as given
    return replace(base, **kw) if kw else base


def initial_labels(
    X: np.ndarray,
    *,
    n_pcs: int = 100,
    k: int = 30,
    resolution: float = 1.0,
    method: Literal["leiden", "louvain"] = "leiden",
    random_state: int = 0,
    max_cells: int | None = None,
) -> np.ndarray:
    """MUSE's initial labels of one modality: PCA (up to ``n_pcs`` components) then PhenoGraph-style clustering.

    Parameters
    ----------
    X
        ``(n, p)`` features of one modality.
    n_pcs
        Number of principal components (capped at ``min(n - 1, p)``).
    k, resolution, method
        Passed to :func:`stmorph._cluster.phenograph_leiden`.
    random_state
        Seed of the PCA solver and the clustering.
    max_cells
        Cluster at most this many (randomly chosen) cells and label the others by the nearest cluster
        centroid in PCA space (see :func:`stmorph._cluster.phenograph_leiden`); None: all cells.

    Returns
    -------
    ``(n,)`` int labels.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (60, 8)), rng.normal(6, 1, (60, 8))])
    >>> len(np.unique(initial_labels(X, k=30)))
    2
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    n_comp = int(min(n_pcs, X.shape[0] - 1, X.shape[1]))
    pcs = PCA(n_components=n_comp, random_state=random_state).fit_transform(X) if n_comp >= 1 else X
    return phenograph_leiden(pcs, k=k, resolution=resolution, random_state=random_state, method=method,
                             max_cells=max_cells)


def joint_initial_labels(xs: Sequence[np.ndarray], **kwargs: Any) -> np.ndarray:
    """Labels of all modalities together: every feature standardised, modalities concatenated, then
    :func:`initial_labels` (PCA + PhenoGraph-style clustering).

    MUSE's gate gives these labels to a modality whose own labels are no better than noise (see
    ``label_weighting``).

    Parameters
    ----------
    xs
        One ``(n, p_m)`` array per modality.
    **kwargs
        Passed to :func:`initial_labels` (``n_pcs``, ``k``, ``resolution``, ``method``, ``random_state``,
        ``max_cells``).

    Returns
    -------
    ``(n,)`` int labels.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = np.vstack([rng.normal(0, 1, (60, 5)), rng.normal(5, 1, (60, 5))])
    >>> len(np.unique(joint_initial_labels([a, rng.normal(size=(120, 5))], k=30)))
    2
    """
    parts = []
    for x in xs:
        x = np.asarray(x, dtype=np.float32)
        sd = x.std(axis=0)
        parts.append((x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0).astype(np.float32))
    return initial_labels(np.hstack(parts), **kwargs)


def _deprecated_n_threads(n_jobs: int | None, n_threads: int | None, where: str) -> int | None:
    """``n_jobs``, or the deprecated ``n_threads`` when only that one is given (with a FutureWarning)."""
    if n_threads is None:
        return n_jobs
    warnings.warn(f"{where}: n_threads is deprecated, use n_jobs (the same meaning as everywhere in stmorph)",
                  FutureWarning, stacklevel=3)
    if n_jobs is not None and resolve_n_jobs(n_jobs) != resolve_n_jobs(n_threads):
        raise StmorphInputError(f"n_jobs={n_jobs} and n_threads={n_threads}", expected="n_jobs alone")
    return n_threads


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Limit torch and BLAS/OpenMP threads (numpy, scikit-learn) to ``n`` inside the block (None: no change)."""
    import torch
    from threadpoolctl import threadpool_limits

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(old)


def _check_arrays(xs: Sequence[Any], zero_inflated: Sequence[bool], names: Sequence[str]) -> list[np.ndarray]:
    import scipy.sparse as sp

    out = []
    n = None
    for x, zi, name in zip(xs, zero_inflated, names):
        if sp.issparse(x):
            x = x.toarray()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise StmorphInputError(
                f"modality '{name}' has shape {x.shape}", expected="a 2-D (cells, features) matrix"
            )
        if n is None:
            n = x.shape[0]
        elif x.shape[0] != n:
            raise StmorphInputError(
                f"modality '{name}' has {x.shape[0]} cells, the first has {n}",
                expected="the same cells in every modality",
            )
        if not np.all(np.isfinite(x)):
            raise StmorphInputError(
                f"modality '{name}' contains NaN or infinite values", expected="finite values"
            )
        if zi and (x < 0).any():
            raise StmorphInputError(
                f"modality '{name}' is treated as zero-inflated (transcripts) but has negative values; the "
                "transcript loss uses only the non-zero entries, so zeros must mean 'not observed'",
                expected="non-negative values (counts or log-normalised counts), or zero_inflated=False",
            )
        out.append(x)
    if n is not None and n < 3:
        raise StmorphInputError(f"only {n} cells", expected="at least 3 cells")
    return out


def _split_input(item: Any) -> tuple[Any, list[str] | None]:
    """The matrix of one modality and its feature names (a DataFrame's columns, an AnnData's ``var_names``)."""
    import pandas as pd

    if isinstance(item, pd.DataFrame):
        return item.to_numpy(), [str(c) for c in item.columns]
    if hasattr(item, "var_names") and hasattr(item, "X"):  # AnnData
        return item.X, [str(v) for v in item.var_names]
    return item, None


class MUSE(BaseModel):
    """MUSE (Bao et al. 2022): a joint representation of two or more modalities guided by their own clusters.

    The first :meth:`fit` registers the data (:class:`~stmorph.models._base.BaseModel`): the modalities, their
    feature counts and, when the data carries them, their feature names (DataFrame columns, AnnData
    ``var_names``, a MuData's modalities, or ``feature_names=``). :meth:`transform` checks data against this
    registry: named features in another order (or among further features) are reordered to the registered
    order; renamed or missing features raise a :class:`~stmorph.errors.StmorphInputError` naming the first
    mismatches. Plain arrays carry no names: only their feature counts can be checked. :meth:`save` /
    :meth:`load` keep the registry with the weights (a folder: ``muse.json`` + ``model.pt``).

    Parameters
    ----------
    n_features
        Features per modality (``>= 2`` modalities).
    latent_dim
        Dimension of the joint latent ``z`` (100 in the paper).
    n_hidden
        Hidden layer width (128).
    zero_inflated
        Per modality, whether to use the transcript (non-zero entries) reconstruction loss; default: only the
        first modality.
    lambda_regul
        Weight of the selection-matrix penalty (5).
    lambda_super
        Weight of the triplet losses (5).
    modality_names
        Names used in messages and outputs.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``.
    random_state
        Seed of the initial weights, batches, PCA and clustering.
    selection_penalty, reconstruction_loss
        Loss forms: ``"norm"`` (the reference) or the squared / mean-squared alternatives (measured, not better).
    label_weighting
        ``"none"`` (the reference) or ``"silhouette"``: scale each modality's triplet loss by the quality of
        its pseudo-labels, ``clip(s_m, 0) / max_m s_m`` with ``s_m`` the silhouette of the labels in the
        first 10 principal components of the space they were clustered in (see
        :func:`stmorph.models.muse._train.silhouette_weights`); meant for a modality whose labels are near
        random (e.g. heavy transcript dropout). ``"gate"``: a modality whose initial labels have a silhouette
        <= 0 (no better than noise) trains, for the whole training, on the labels of all modalities clustered
        together (:func:`joint_initial_labels`) instead of its own; identical to ``"none"`` when every
        modality's initial labels score above 0, and the modalities gated are listed in
        ``train_info["gated_modalities"]``. "gate" is the default, chosen on development seeds of stmorph's
        simulator: identical ARI in the demo setting (8 + 6 seeds, where no modality triggers it); with one
        homogeneous modality mean ARI 0.249 -> 0.725 on 6 seeds for the gate itself (then weight 0), and with
        the joint labels instead of weight 0: 0.685 -> 0.705 (homogeneous, 4 seeds) and 0.696 -> 0.725
        (transcript dropout decay 0.1, 8 seeds). ``"none"`` with ``preset="reference"`` and
        ``label_agreement=False`` is the paper's MUSE.
    label_agreement
        True (default): a pair of cells with the same pseudo-label in modality ``m`` is a triplet positive of
        ``m``'s loss only when at least one other modality also gives both the same label; negatives stay per
        modality (:func:`~stmorph.models.muse.batch_hard_triplet_losses` with ``min_agree=2``). False: MUSE's
        own positives. Why: a modality's pseudo-labels often merge cell types that another modality separates
        (modularity's resolution limit: 20 types of ~50 cells in 1,000 gave 5-11 labels per modality); MUSE's
        batch-hard loss then pulls each merged group together through its hardest positive, against the other
        modality's push, and the latent merges the types. The fast preset never re-clusters, so its initial
        labels are all it has. Chosen on development seeds of stmorph's simulator (never the benchmark's
        held-out reference-simulator seeds), mean ARI without -> with: 20 clusters 0.566 -> 0.753 (30 seeds,
        worst 0.327 -> 0.626); demo 0.895 -> 0.903 (30 seeds, worst 0.731 -> 0.733; one seed 0.837 -> 0.762,
        a type that one modality cuts arbitrarily is split); transcript dropout decay 0.1 0.709 -> 0.723 and
        one homogeneous modality 0.702 -> 0.714 (12 seeds each); three modalities 0.986 -> 0.977 (12 seeds;
        requiring all three modalities to agree: 0.972, worst 0.865). Held-out reference-simulator data, checked
        once after the choice: 20 clusters 0.564 -> 0.759 (the reference implementation 0.651), demo two
        modalities 0.903 -> 0.915, three 0.989 -> 0.980, uncoupled modalities 0.530 -> 0.324
        (benchmarks/RESULTS.md, section "Label agreement").

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=200, n_features=(30, 30), latent_dim=5)
    >>> xs = [md["rna"].X, md["morph"].X]
    >>> m = MUSE([30, 30], latent_dim=10).fit(xs, n_epochs_warmup=2, n_epochs_triplet_init=2, n_epochs=2)
    >>> m.transform(xs)[0].shape
    (200, 10)
    """

    _FORMAT = "stmorph.MUSE"
    _FORMAT_VERSION = 1
    _META_FILE = "muse.json"
    _WEIGHTS_FILE = "model.pt"
    _WHAT = "MUSE model"

    def __init__(
        self,
        n_features: Sequence[int],
        latent_dim: int = 100,
        n_hidden: int = 128,
        *,
        zero_inflated: Sequence[bool] | None = None,
        lambda_regul: float = 5.0,
        lambda_super: float = 5.0,
        modality_names: Sequence[str] | None = None,
        device: str | Any = "auto",
        random_state: int = 0,
        selection_penalty: Literal["norm", "squared"] = "norm",
        reconstruction_loss: Literal["norm", "mse"] = "norm",
        label_weighting: Literal["none", "silhouette", "gate"] = "gate",
        label_agreement: bool = True,
    ) -> None:
        n_features = [int(p) for p in n_features]
        if len(n_features) < 2:
            raise StmorphInputError(f"{len(n_features)} modality given", expected="at least 2 modalities")
        self.n_features = n_features
        self.latent_dim = int(latent_dim)
        self.n_hidden = int(n_hidden)
        self.zero_inflated = (
            [True] + [False] * (len(n_features) - 1)
            if zero_inflated is None
            else [bool(v) for v in zero_inflated]
        )
        if len(self.zero_inflated) != len(n_features):
            raise StmorphInputError(
                f"zero_inflated has {len(self.zero_inflated)} entries",
                expected=f"{len(n_features)} (one per modality)",
            )
        self.lambda_regul = float(lambda_regul)
        self.lambda_super = float(lambda_super)
        if selection_penalty not in ("norm", "squared"):
            raise StmorphInputError(f"selection_penalty={selection_penalty!r}", expected="'norm' or 'squared'")
        if reconstruction_loss not in ("norm", "mse"):
            raise StmorphInputError(f"reconstruction_loss={reconstruction_loss!r}", expected="'norm' or 'mse'")
        if label_weighting not in ("none", "silhouette", "gate"):
            raise StmorphInputError(
                f"label_weighting={label_weighting!r}", expected="'none', 'silhouette' or 'gate'"
            )
        self.selection_penalty = selection_penalty
        self.reconstruction_loss = reconstruction_loss
        self.label_weighting = label_weighting
        if not isinstance(label_agreement, bool | np.bool_):  # a string "false" would otherwise turn it on
            raise StmorphInputError(f"label_agreement={label_agreement!r}", expected="True or False")
        self.label_agreement = bool(label_agreement)
        self.modality_names = (
            list(modality_names)
            if modality_names is not None
            else [f"mod{i}" for i in range(len(n_features))]
        )
        self.device = resolve_device(device)
        self.random_state = int(random_state)
        seed_torch(self.random_state)
        self.module = MuseModule(n_features, self.latent_dim, self.n_hidden).to(self.device)
        self.is_fitted = False
        self.train_info: dict[str, Any] = {}
        self.registry: dict[str, Any] | None = None

    # -- data registry ---------------------------------------------------------------------------------------
    def _inputs(
        self, data: Any, feature_names: Sequence[Sequence[str] | None] | None, layers: dict[str, str] | None
    ) -> tuple[list[Any], list[list[str] | None]]:
        """One matrix and its feature names (or None) per modality, from a MuData or a sequence of matrices."""
        if hasattr(data, "mod"):  # MuData: the registered modalities, by name
            missing = [m for m in self.modality_names if m not in data.mod]
            if missing:
                raise StmorphInputError(f"modalities {missing} not in the MuData",
                                        expected=f"the model's modalities {self.modality_names}")
            lay = dict((self.registry or {}).get("layers") or {})
            lay.update(layers or {})
            mats, names = [], []
            for m in self.modality_names:
                a = data.mod[m]
                layer = lay.get(m)
                if layer is not None and layer not in a.layers:
                    raise StmorphInputError(f"layer '{layer}' not found in modality '{m}'",
                                            expected=f"one of {list(a.layers)} or None (X)")
                mats.append(a.X if layer is None else a.layers[layer])
                names.append([str(v) for v in a.var_names])
        else:
            if (isinstance(data, np.ndarray) and data.ndim == 2) or hasattr(data, "var_names"):
                raise StmorphInputError(f"got one {type(data).__name__}",
                                        expected="one matrix per modality (a list), or a MuData")
            split = [_split_input(x) for x in data]
            mats, names = [x for x, _ in split], [n for _, n in split]
        if len(mats) != len(self.n_features):
            raise StmorphInputError(f"{len(mats)} arrays given", expected=f"{len(self.n_features)} (one per modality)")
        if feature_names is not None:
            if len(feature_names) != len(mats):
                raise StmorphInputError(f"feature_names has {len(feature_names)} entries",
                                        expected=f"{len(mats)} (one per modality, None for unnamed)")
            names = [None if f is None else [str(v) for v in f] for f in feature_names]
        return mats, names

    def _match_registry(self, mats: list[Any], names: list[list[str] | None]) -> list[Any]:
        """The matrices with their columns in the registered order (checked by name where both have names)."""
        reg = self.registry
        if reg is None:
            return mats
        out = []
        for x, given, known, m in zip(mats, names, reg.get("features") or [None] * len(mats), self.modality_names):
            idx = None if known is None else check_names(known, given, what=f"the features of modality '{m}'")
            out.append(x if idx is None else x[:, idx])
        return out

    def _register(self, arrays: list[np.ndarray], names: list[list[str] | None], layers: dict[str, str] | None) -> None:
        for x, nm, m in zip(arrays, names, self.modality_names):
            if nm is not None and len(nm) != x.shape[1]:
                raise StmorphInputError(f"{len(nm)} feature names for the {x.shape[1]} features of modality '{m}'",
                                        expected="one name per column")
        self.registry = {
            "modalities": list(self.modality_names),
            "n_features": [int(p) for p in self.n_features],
            "features": [None if nm is None else list(nm) for nm in names],
            "layers": {m: str(v) for m, v in (layers or {}).items() if v is not None and m in self.modality_names},
        }

    def _check_counts(self, arrays: list[np.ndarray]) -> None:
        for x, p, name in zip(arrays, self.n_features, self.modality_names):
            if x.shape[1] != p:
                raise StmorphInputError(
                    f"modality '{name}' has {x.shape[1]} features", expected=f"{p} as at construction"
                )

    # ------------------------------------------------------------------------------------------------------
    def _cluster_fn(self, k: int, resolution: float, method: str, max_cells: int | None = None):
        def fn(h: np.ndarray) -> np.ndarray:
            return phenograph_leiden(
                h, k=k, resolution=resolution, random_state=self.random_state, method=method, max_cells=max_cells
            )

        return fn

    def fit(
        self,
        xs: Sequence[Any],
        init_labels: Sequence[np.ndarray | None] | None = None,
        *,
        preset: str | MuseSchedule = "fast",
        n_epochs_warmup: int | None = None,
        n_epochs_triplet_init: int | None = None,
        n_epochs: int | None = None,
        cluster_update_every: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        label_resolution: float | None = None,
        k: int = 30,
        resolution: float = 1.0,
        cluster_method: Literal["leiden", "louvain"] = "leiden",
        n_pcs: int = 100,
        margin_max_cells: int = 4000,
        label_max_cells: int | None = 20_000,
        n_jobs: int | None = None,
        show_progress: bool | None = None,
        feature_names: Sequence[Sequence[str] | None] | None = None,
        layers: dict[str, str] | None = None,
        n_threads: int | None = None,
    ) -> MUSE:
        """Train on one ``(n, p_m)`` array per modality (rows = the same cells in every modality).

        Parameters
        ----------
        xs
            One matrix per modality (dense, scipy sparse, a DataFrame or an AnnData), or a MuData holding the
            model's modalities. The first fit registers the modalities, feature counts and names (see
            :class:`MUSE`); a later fit checks the data against them.
        init_labels
            Initial labels per modality (None entries, or None: PCA + PhenoGraph-style clustering).
        preset
            ``"fast"`` (default: 2 + 20 epochs at lr 1e-3, triplet loss on the initial labels, no re-clustering)
            or ``"reference"`` (the paper's 200 + 200 + 500 epochs at lr 1e-4); the epoch, learning
            rate and batch arguments override single fields.
        n_epochs_warmup, n_epochs_triplet_init, n_epochs, cluster_update_every, lr, batch_size, label_resolution
            Schedule overrides (see :class:`~stmorph.models.muse.MuseSchedule`); ``label_resolution`` is the
            Leiden resolution of the pseudo-labels (1.0 in both presets; finer labels help data with many small clusters, see ``PRESETS``).
        k, resolution, cluster_method
            PhenoGraph-style clustering: ``k`` and ``cluster_method`` for the pseudo-labels and the final clusters
            (:meth:`cluster`), ``resolution`` for the final clusters.
        n_pcs
            Principal components for the initial labels.
        margin_max_cells
            Cells subsampled for the triplet-margin estimate.
        label_max_cells
            The pseudo-labels (initial labels and the re-clusterings of ``h_m``) cluster at most this many
            randomly chosen cells and give the others the label of the nearest cluster centroid; this bounds
            their cost at large ``n`` (None: cluster all cells). The final clusters of ``z``
            (:meth:`cluster`) always use every cell.
        n_jobs
            Torch (and BLAS) CPU threads during training; ``None``: one below 5,000 cells (fastest quiet and
            beside other jobs), else ``stmorph.settings.workers()``, unless the user set a thread count
            (:func:`stmorph._threads.model_threads`).
        show_progress
            Progress bar (None: follow ``STMORPH_PROGRESS``).
        feature_names
            Feature names per modality (None entries: unnamed), overriding the names the data carries.
        layers
            ``{modality: layer}`` read instead of ``X`` for MuData input (registered for :meth:`transform`).
        n_threads
            Deprecated alias of ``n_jobs``.

        Returns
        -------
        ``self``.

        Examples
        --------
        >>> MUSE([5, 5]).fit([np.random.rand(80, 5), np.random.rand(80, 5)], n_epochs_warmup=1,
        ...                  n_epochs_triplet_init=1, n_epochs=1).is_fitted
        True
        """
        import torch

        n_jobs = _deprecated_n_threads(n_jobs, n_threads, "MUSE.fit")
        mats, names = self._inputs(xs, feature_names, layers)
        mats = self._match_registry(mats, names)
        arrays = _check_arrays(mats, self.zero_inflated, self.modality_names)
        self._check_counts(arrays)
        if self.registry is None:
            self._register(arrays, names, layers)
        schedule = get_schedule(
            preset,
            n_epochs_warmup=n_epochs_warmup,
            n_epochs_triplet_init=n_epochs_triplet_init,
            n_epochs=n_epochs,
            cluster_update_every=cluster_update_every,
            lr=lr,
            batch_size=batch_size,
            label_resolution=label_resolution,
        )
        label_res = float(schedule.label_resolution)
        n = arrays[0].shape[0]
        t0 = time.perf_counter()
        with _torch_threads(model_threads(n_jobs, small=n < SMALL_MUSE_CELLS)):
            labels0 = []
            for m, x in enumerate(arrays):
                given = None if init_labels is None else init_labels[m]
                if self.lambda_super == 0:  # labels unused (plain autoencoder)
                    labels0.append(np.zeros(n, dtype=np.int64))
                elif given is None:
                    labels0.append(
                        initial_labels(
                            x,
                            n_pcs=n_pcs,
                            k=k,
                            resolution=label_res,
                            method=cluster_method,
                            random_state=self.random_state,
                            max_cells=label_max_cells,
                        )
                    )
                else:
                    given = np.asarray(given)
                    if given.shape != (n,):
                        raise StmorphInputError(
                            f"initial labels of modality '{self.modality_names[m]}' have shape {given.shape}",
                            expected=f"({n},)",
                        )
                    labels0.append(np.unique(given, return_inverse=True)[1].astype(np.int64))
            t1 = time.perf_counter()
            xs_t = [torch.from_numpy(x).to(self.device) for x in arrays]
            gen = seed_torch(self.random_state)
            out = train_muse(
                self.module,
                xs_t,
                labels0,
                zero_inflated=self.zero_inflated,
                schedule=schedule,
                cluster_fn=self._cluster_fn(k, label_res, cluster_method, label_max_cells),
                lambda_regul=self.lambda_regul,
                lambda_super=self.lambda_super,
                margin_max_cells=margin_max_cells,
                generator=gen,
                random_state=self.random_state,
                show_progress=show_progress,
                penalty=self.selection_penalty,
                reconstruction=self.reconstruction_loss,
                label_weighting=self.label_weighting,
                joint_labels=lambda: joint_initial_labels(arrays, n_pcs=n_pcs, k=k, resolution=label_res,
                                                          method=cluster_method, random_state=self.random_state,
                                                          max_cells=label_max_cells),
                label_agreement=self.label_agreement,
            )
        t2 = time.perf_counter()
        self.is_fitted = True
        self.train_info = {
            "schedule": out["schedule"].to_dict(),
            "margin": out["margin"],
            "n_label_updates": out["n_updates"],
            "initial_labels": labels0,
            "last_labels": out["labels"],
            "history": out["history"],
            "time_initial_labels_s": t1 - t0,
            "time_training_s": t2 - t1,
            "time_stages_s": out["timings"],
            "k": k,
            "resolution": resolution,
            "cluster_method": cluster_method,
            "label_max_cells": label_max_cells,
            "label_weights": out["label_weights"],
            "label_silhouettes": out["label_silhouettes"],
            "gated_modalities": [self.modality_names[m] for m in out["gated"]],
        }
        return self

    def transform(
        self,
        xs: Sequence[Any],
        *,
        feature_names: Sequence[Sequence[str] | None] | None = None,
        layers: dict[str, str] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Joint latent ``z`` and per-modality hidden representations ``h_m`` of new or training cells.

        Parameters
        ----------
        xs
            One ``(n, p_m)`` matrix per modality (array, sparse, DataFrame, AnnData) or a MuData. Named features
            are matched to the registered ones by name (reordered when all are present; otherwise a
            :class:`~stmorph.errors.StmorphInputError` names the first mismatches); unnamed ones only by count.
        feature_names
            Feature names per modality, overriding the names the data carries.
        layers
            ``{modality: layer}`` for MuData input (default: the registered layers, else ``X``).

        Returns
        -------
        ``z`` ``(n, latent_dim)`` and a list of ``(n, n_hidden)`` arrays.

        Examples
        --------
        >>> z, hs = MUSE([4, 6], latent_dim=3).transform([np.ones((5, 4)), np.ones((5, 6))])
        >>> z.shape
        (5, 3)
        """
        import torch

        mats, names = self._inputs(xs, feature_names, layers)
        mats = self._match_registry(mats, names)
        arrays = _check_arrays(mats, [False] * len(mats), self.modality_names)
        self._check_counts(arrays)
        return encode_all(self.module, [torch.from_numpy(x).to(self.device) for x in arrays])

    def cluster(self, z: np.ndarray, **kw: Any) -> np.ndarray:
        """PhenoGraph-style clusters of ``z`` with the settings used in :meth:`fit` (overridable).

        Parameters
        ----------
        z
            Latent representation.
        **kw
            Overrides of ``k``, ``resolution``, ``method``; other arguments of
            :func:`stmorph._cluster.phenograph_leiden` (``n_jobs``, ``timings``, ``show_progress``: by default a
            bar above :data:`~stmorph._cluster.APPROX_KNN_MIN_CELLS` cells only).

        Returns
        -------
        Integer labels. Above :data:`~stmorph._cluster.APPROX_KNN_MIN_CELLS` cells the neighbour search is
        NN-descent and Leiden runs 2 iterations (:func:`~stmorph._cluster.phenograph_scaling` says what a size
        gets); every cell is in the graph.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> z = np.r_[rng.normal(0, 0.1, (50, 5)), rng.normal(3, 0.1, (50, 5))]
        >>> int(MUSE([2, 2]).cluster(z, k=20).max())
        1
        """
        opts = {
            "k": self.train_info.get("k", 30),
            "resolution": self.train_info.get("resolution", 1.0),
            "method": self.train_info.get("cluster_method", "leiden"),
        }
        opts["show_progress"] = None if len(z) > APPROX_KNN_MIN_CELLS else False
        opts.update(kw)
        return phenograph_leiden(z, random_state=self.random_state, **opts)

    # ------------------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments (enough to rebuild the network)."""
        return {
            "n_features": self.n_features,
            "latent_dim": self.latent_dim,
            "n_hidden": self.n_hidden,
            "zero_inflated": self.zero_inflated,
            "lambda_regul": self.lambda_regul,
            "lambda_super": self.lambda_super,
            "modality_names": self.modality_names,
            "random_state": self.random_state,
            "selection_penalty": self.selection_penalty,
            "reconstruction_loss": self.reconstruction_loss,
            "label_weighting": self.label_weighting,
            "label_agreement": self.label_agreement,
        }

    # -- persistence (BaseModel) ---------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        return self.config()

    def _extra_meta(self) -> dict[str, Any]:
        info = {k: v for k, v in self.train_info.items() if k not in ("initial_labels", "last_labels")}
        return {"is_fitted": self.is_fitted, "train_info": to_jsonable(info)}

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], *, device: str | Any = "auto") -> MUSE:
        # models saved before label agreement existed were trained with MUSE's own positives
        model = cls(**{"label_agreement": False, **meta["config"]}, device=device)
        model.registry = meta.get("registry")
        model.is_fitted = bool(meta.get("is_fitted", True))
        model.train_info = dict(meta.get("train_info") or {})
        return model

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Save configuration, data registry, training summary (``muse.json``) and weights (``model.pt``) to a folder.

        Parameters
        ----------
        path
            Folder (created); each file is written atomically.
        overwrite
            Replace existing files.

        Returns
        -------
        pathlib.Path
            The folder.

        Examples
        --------
        >>> MUSE([3, 3]).save("muse_model")  # doctest: +SKIP
        """
        return super().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | Any = "auto") -> MUSE:  # type: ignore[override]
        """Load a model written by :meth:`save` (a folder; the single files of stmorph <= 0.2 are read too).

        Parameters
        ----------
        path
            Folder written by :meth:`save`.
        device
            Device to load onto.

        Returns
        -------
        The model.

        Examples
        --------
        >>> m = MUSE.load("muse_model")  # doctest: +SKIP
        """
        if not os.path.exists(path):
            raise StmorphInputError(
                "MUSE model not found", file=path, expected="a folder written by MUSE.save"
            )
        if os.path.isdir(path):
            return super().load(path, device=device)
        return cls._load_single_file(path, device=device)

    @classmethod
    def _load_single_file(cls, path: str | os.PathLike, *, device: str | Any = "auto") -> MUSE:
        """A model saved as one ``torch.save`` file (stmorph <= 0.2: no registry, so only counts are checked)."""
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
            raise StmorphInputError(
                "not a MUSE model file", file=path, expected="a folder written by MUSE.save"
            )
        model = cls._restore({"config": state["config"], "is_fitted": state.get("is_fitted", True),
                              "train_info": state.get("train_info", {})}, state["state_dict"], device=device)
        return model


def muse_fit_predict(
    xs: Sequence[Any],
    init_labels: Sequence[np.ndarray | None] | None = None,
    *,
    latent_dim: int = 100,
    zero_inflated: Sequence[bool] | None = None,
    lambda_regul: float = 5.0,
    lambda_super: float = 5.0,
    device: str | Any = "auto",
    random_state: int = 0,
    selection_penalty: Literal["norm", "squared"] = "norm",
    reconstruction_loss: Literal["norm", "mse"] = "norm",
    label_weighting: Literal["none", "silhouette", "gate"] = "gate",
    label_agreement: bool = True,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Array API: train MUSE on one array per modality and return the latent, hidden states and clusters.

    Parameters
    ----------
    xs
        One ``(n, p_m)`` array per modality (the first is the transcript modality by default).
    init_labels
        Optional initial labels per modality.
    latent_dim, zero_inflated, lambda_regul, lambda_super, device, random_state
        See :class:`MUSE`.
    selection_penalty, reconstruction_loss, label_weighting, label_agreement
        See :class:`MUSE`.
    **fit_kwargs
        Passed to :meth:`MUSE.fit` (``preset``, epochs, ``k``, ...).

    Returns
    -------
    Dict with ``latent`` ``(n, latent_dim)``, ``hidden`` (list of ``(n, 128)``), ``clusters`` (PhenoGraph-style
    labels of ``latent``), ``labels`` (the last per-modality labels), ``model``, ``timings`` (seconds) and
    ``final_clustering`` (:func:`~stmorph._cluster.phenograph_scaling` of the final clustering, with the seconds
    of its neighbour search, graph and Leiden).

    Examples
    --------
    >>> from stmorph.datasets import simulate_multimodal
    >>> md = simulate_multimodal(n_clusters=4, n_cells=200, n_features=(30, 30), latent_dim=5)
    >>> out = muse_fit_predict([md["rna"].X, md["morph"].X], latent_dim=10, n_epochs_warmup=2,
    ...                        n_epochs_triplet_init=2, n_epochs=2)
    >>> out["latent"].shape, out["clusters"].shape
    ((200, 10), (200,))
    """
    model = MUSE(
        [np.shape(_split_input(x)[0])[1] for x in xs],
        latent_dim=latent_dim,
        zero_inflated=zero_inflated,
        lambda_regul=lambda_regul,
        lambda_super=lambda_super,
        device=device,
        random_state=random_state,
        selection_penalty=selection_penalty,
        reconstruction_loss=reconstruction_loss,
        label_weighting=label_weighting,
        label_agreement=label_agreement,
    )
    model.fit(xs, init_labels, **fit_kwargs)
    t0 = time.perf_counter()
    z, hs = model.transform(xs)
    steps: dict[str, float] = {}
    clusters = model.cluster(z, timings=steps)
    t_cl = time.perf_counter() - t0
    info = model.train_info
    timings = {
        "initial_labels": info["time_initial_labels_s"],
        "training": info["time_training_s"],
        "final_clustering": t_cl,
    }
    timings["total"] = sum(timings.values())
    return {
        "latent": z,
        "hidden": hs,
        "clusters": clusters,
        "labels": info["last_labels"],
        "model": model,
        "timings": timings,
        "final_clustering": {**phenograph_scaling(len(z)), "timings_s": steps},
    }
