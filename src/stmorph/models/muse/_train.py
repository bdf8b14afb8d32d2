"""MUSE training: schedule presets, margin estimation and the training loop.

The schedule of the reference implementation is

1. autoencoder warm-up without the triplet loss (``n_epochs_warmup`` epochs);
2. margin estimate from the warm-up latent: ``median(top 20% pairwise distances) - median(bottom 20%)``;
3. triplet training with the initial (e.g. PCA + PhenoGraph) labels (``n_epochs_triplet_init`` epochs);
4. re-clustering of every modality's hidden representation ``h_m``, then ``n_epochs`` main epochs,
   re-clustering after every main epoch whose index is a multiple of ``cluster_update_every``.

Batches are drawn without replacement from a fresh permutation each epoch and the last incomplete batch is
dropped, as in the reference. All data stay as tensors on the device; each epoch gathers the permuted data once
and the batches are contiguous slices of it (no DataLoader): at MUSE's tiny layer sizes the per-step overhead
is a large part of the cost.

Large ``n``: the ``"fast"`` preset keeps the number of optimisation steps about constant above 1,000 cells
(:meth:`MuseSchedule.for_n_cells`), the pseudo-labels are clustered on a subsample
(``label_max_cells`` of :meth:`stmorph.models.muse.MUSE.fit`), the margin is estimated from a subsample and
all cells are encoded in chunks under ``no_grad``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..._utils import progress
from ._module import MuseModule, batch_hard_triplet_losses, dense_reconstruction, zero_inflated_reconstruction

__all__ = ["MuseSchedule", "PRESETS", "estimate_margin", "muse_loss", "train_muse", "encode_all"]


@dataclass(frozen=True)
class MuseSchedule:
    """Training schedule of MUSE.

    Parameters
    ----------
    n_epochs_warmup
        Autoencoder epochs before the triplet loss is switched on.
    n_epochs_triplet_init
        Triplet epochs with the initial labels.
    n_epochs
        Main epochs with labels re-estimated from ``h_m``.
    cluster_update_every
        Re-cluster ``h_m`` after every main epoch whose index is a multiple of this.
    lr
        Adam learning rate.
    batch_size
        Cells per batch.
    reference_n_cells
        Above this many cells, epochs are capped (see :meth:`for_n_cells`); None: never.
    max_batches_per_epoch
        At most this many batches per epoch (a random subset of the cells each epoch); None: all.
    label_resolution
        Leiden resolution of the pseudo-labels (the initial labels, the joint labels of a gated modality and the
        re-clusterings of ``h_m``); the final clusters of the latent use the model's ``resolution``.

    Examples
    --------
    >>> PRESETS["reference"].n_epochs
    500
    """

    n_epochs_warmup: int
    n_epochs_triplet_init: int
    n_epochs: int
    cluster_update_every: int
    lr: float
    batch_size: int
    reference_n_cells: int | None = None
    max_batches_per_epoch: int | None = None
    label_resolution: float = 1.0

    def to_dict(self) -> dict:
        """Plain-dict view (for ``uns``)."""
        return asdict(self)

    def for_n_cells(self, n: int) -> MuseSchedule:
        """The schedule actually run on ``n`` cells.

        With ``reference_n_cells`` set (the ``"fast"`` preset) and ``n`` larger than it, every epoch is capped
        at ``ceil(reference_n_cells / batch_size)`` batches drawn from a fresh random permutation, so the total
        number of optimisation steps does not grow with ``n``; without it (``"reference"``) whole epochs are run.

        Why steps and not epochs: the session-1 rule (fewer epochs, at least 2 per stage) ran 9,372 steps at
        100,000 cells; under Adam every entry of the selection matrices moves by up to ``lr`` per step against
        the penalty, they shrank towards zero, the latent collapsed (mean standard deviation 0.002) and the
        final ARI was 0.217 (seed 0), against 0.91-0.97 at 10,000 cells with ~940 steps.

        Examples
        --------
        >>> PRESETS["fast"].for_n_cells(100_000).max_batches_per_epoch
        32
        >>> PRESETS["reference"].for_n_cells(100_000).max_batches_per_epoch is None
        True
        """
        if self.reference_n_cells is None or n <= self.reference_n_cells:
            return self
        cap = int(np.ceil(self.reference_n_cells / self.batch_size))
        return replace(self, max_batches_per_epoch=cap if self.max_batches_per_epoch is None
                       else min(cap, self.max_batches_per_epoch))


#: ``"reference"``: the paper's exact schedule (200 + 200 + 500 epochs, Adam 1e-4, batch 64; 13,500 steps
#: on 1,000 cells).
#: ``"fast"``: the default: 2 warm-up epochs, 20 triplet epochs on the initial labels, no main stage (no
#: re-clustering of ``h_m``), Adam 1e-3, batch 64: 330 steps on 1,000 cells. Chosen on development seeds of
#: stmorph's own simulator (:func:`stmorph.datasets.simulate_multimodal`, demo setting, seeds 0-7 with two
#: modalities and 0-5 with three; never on the benchmark's held-out reference-simulator seeds >= 1000):
#: mean ARI 0.911 (two modalities) / 0.988 (three), against 0.875 / 0.778 for the previous ``fast`` schedule
#: (4 + 8 + 20 epochs, re-clustering every 6, lr 1e-3). Diagnosis (benchmarks/RESULTS.md, MUSE section): with a
#: short schedule the labels re-clustered from ``h_m`` are worse than the initial ones (three modalities, seed 2:
#: ARI with the modality's own labels 0.92 -> 0.26 over five updates), the triplet loss on them shrinks the
#: latent (mean standard deviation 0.009, loss ~ margin) and the clusters merge (7 of 10 found); with the
#: initial labels only the latent keeps its spread (0.33-0.37) and the same seed scores 0.99. Also measured on the
#: development seeds (two / three modalities): 2 + 30 epochs at 5e-4 0.919 / 0.989 (480 steps), 2 + 30 at 1e-3
#: 0.896 / 0.976, 2 + 20 at 2e-3 0.900 / 0.981, 2 + 20 at 3e-4 0.796 (two) / 0.993 (three, seeds 0-5 in two
#: halves); keeping re-clustering with more steps at lower rates (4 + 16 + 40 at 3e-4, 10 + 20 + 60 at 1e-4) gave
#: 0.65 / 0.55 on three-modality seeds 0, 2, 4. Above 2,000 cells each epoch is capped at 32 batches
#: (:meth:`MuseSchedule.for_n_cells`).
#: Pseudo-labels at Leiden resolution 1.0 in both presets (``label_resolution``; phenograph's default). A finer
#: 1.5 was tried for the fast preset against its 20-cluster weakness (it never re-clusters, so its initial labels
#: are its only labels; at 1.0 they merge small clusters, modularity's resolution limit: 20 true clusters of ~50
#: cells in 1,000 gave 5-11 labels per modality against 11-15 distinct groups in each). On development seeds of
#: stmorph's simulator it helped (20 clusters, seeds 0-7: 0.563 -> 0.637; transcript decay 0.1: 0.707 -> 0.724;
#: one homogeneous modality: 0.737 -> 0.762; demo and three modalities level), but on the 20 held-out
#: reference-simulator datasets (two modalities) it fell from 0.903 to 0.839, worst dataset 0.511 (7 clusters
#: found of 10): finer labels score lower silhouettes, the gate then closes on informative modalities. Not
#: adopted. The 20-cluster weakness is addressed instead by the triplet positives: with label agreement (default
#: of :class:`~stmorph.models.muse.MUSE`) a merged pseudo-label no longer pulls apart-in-another-modality cells
#: together (reference-simulator, 20 clusters, 10 held-out datasets: 0.564 -> 0.759, the reference 0.651).
PRESETS: dict[str, MuseSchedule] = {
    "reference": MuseSchedule(200, 200, 500, 200, 1e-4, 64),
    "fast": MuseSchedule(2, 20, 0, 10, 1e-3, 64, reference_n_cells=2000),
}


def estimate_margin(
    z: np.ndarray, *, max_cells: int = 4000, quantile: float = 0.2, random_state: int | np.random.Generator = 0
) -> float:
    """Triplet margin from the spread of the latent: ``median(top q) - median(bottom q)`` of pairwise distances.

    Uses all cells when ``n <= max_cells`` (the reference's exact value) and a uniform subsample of
    ``max_cells`` cells otherwise (the all-pairs distance is ``O(n^2)``).

    Parameters
    ----------
    z
        ``(n, d)`` latent representation.
    max_cells
        Subsample size above which distances are estimated.
    quantile
        Fraction of smallest / largest distances (0.2 in MUSE).
    random_state
        Seed of the subsample.

    Returns
    -------
    The margin (float).

    Examples
    --------
    >>> round(estimate_margin(np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])), 3)
    8.0
    """
    from scipy.spatial.distance import pdist

    from ..._utils import as_generator

    z = np.asarray(z, dtype=np.float64)
    if z.shape[0] > max_cells:
        sel = as_generator(random_state).choice(z.shape[0], size=max_cells, replace=False)
        z = z[sel]
    d = np.sort(pdist(z, "euclidean"))
    top = max(int(d.size * quantile), 1)
    return float(np.median(d[-top:]) - np.median(d[:top]))


def muse_loss(
    module: MuseModule,
    xs: Sequence[torch.Tensor],
    zero_inflated: Sequence[bool],
    labels: torch.Tensor | None,
    margin: float,
    lambda_regul: float,
    lambda_super: float,
    *,
    penalty: str = "norm",
    reconstruction: str = "norm",
    masks: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    label_weights: torch.Tensor | None = None,
    min_agree: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MUSE's total loss on one batch.

    ``sum_m recon_m + lambda_regul * sum_m ||W_m||_F + lambda_super * sum_m triplet(z; labels_m)``; the
    triplet terms are skipped when ``labels`` is None (warm-up).

    Parameters
    ----------
    module
        The network.
    xs
        One ``(batch, p_m)`` tensor per modality.
    zero_inflated
        Per modality: use the non-zero-entries reconstruction loss.
    labels
        ``(M, batch)`` labels, one row per modality, or None.
    margin, lambda_regul, lambda_super
        Triplet margin and loss weights.
    label_weights
        Optional ``(M,)`` per-modality factors of the triplet terms (``label_weighting="silhouette"``);
        None: all 1 (the reference).
    min_agree
        Triplet positives need the same label in at least this many modalities
        (:func:`~stmorph.models.muse.batch_hard_triplet_losses`); None: each modality's own labels (MUSE).

    Returns
    -------
    The total loss and a dict of its terms (detached).

    Examples
    --------
    >>> net = MuseModule([3, 4], latent_dim=2)
    >>> loss, terms = muse_loss(net, [torch.rand(5, 3), torch.rand(5, 4)], [True, False], None, 0.0, 5.0, 5.0)
    >>> sorted(terms)
    ['reconstruction', 'selection', 'triplet']
    """
    z, _, recons = module(list(xs))
    if masks is None:
        masks = [None] * len(xs)
    if reconstruction == "mse":
        rec = sum(
            zero_inflated_mse(x, xh, *(mk or ())) if zi else (xh - x).pow(2).mean()
            for x, xh, zi, mk in zip(xs, recons, zero_inflated, masks)
        )
    else:
        rec = sum(
            zero_inflated_reconstruction(x, xh, *(mk or ())) if zi else dense_reconstruction(x, xh)
            for x, xh, zi, mk in zip(xs, recons, zero_inflated, masks)
        )
    sel = module.selection_penalty(squared=penalty == "squared")
    total = rec + lambda_regul * sel
    if labels is not None and lambda_super != 0:
        per_mod = batch_hard_triplet_losses(labels, z, margin, min_agree)
        trip = per_mod.sum() if label_weights is None else (per_mod * label_weights).sum()
        total = total + lambda_super * trip
    else:
        trip = torch.zeros((), device=z.device)
    return total, {"reconstruction": rec.detach(), "selection": sel.detach(), "triplet": trip.detach()}


def zero_inflated_mse(
    x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None, n_obs: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared-norm variant of the transcript loss (``reconstruction_loss="mse"``): the issue's formula, the sum of
    squared errors on the non-zero entries of ``x`` divided by their number.

    Examples
    --------
    >>> zero_inflated_mse(torch.tensor([[1.0, 0.0]]), torch.tensor([[4.0, 7.0]]))
    tensor(9.)
    """
    if mask is None:
        mask = (x > 0).to(x_hat.dtype)
    if n_obs is None:
        n_obs = mask.sum()
    err = (x_hat - x) * mask
    return (err * err).sum() / n_obs.clamp_min(1)


@torch.no_grad()
def encode_all(
    module: MuseModule, xs: Sequence[torch.Tensor], *, chunk: int = 8192
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Encode all cells in chunks; return ``z`` and the per-modality ``h_m`` as float32 numpy arrays.

    Parameters
    ----------
    module
        A (trained) network.
    xs
        One ``(n, p_m)`` tensor per modality.
    chunk
        Cells per forward pass.

    Returns
    -------
    ``z`` ``(n, latent_dim)`` and a list of ``(n, n_hidden)`` arrays.

    Examples
    --------
    >>> z, hs = encode_all(MuseModule([3, 4], latent_dim=2), [torch.rand(5, 3), torch.rand(5, 4)])
    >>> z.shape, hs[0].shape
    ((5, 2), (5, 128))
    """
    was_training = module.training
    module.eval()
    zs, hss = [], [[] for _ in xs]
    n = xs[0].shape[0]
    for s in range(0, n, chunk):
        z, hs = module.encode([x[s : s + chunk] for x in xs])
        zs.append(z.float().cpu().numpy())
        for m, h in enumerate(hs):
            hss[m].append(h.float().cpu().numpy())
    module.train(was_training)
    return np.concatenate(zs), [np.concatenate(h) for h in hss]


def partition_silhouette(
    X: np.ndarray, labels: np.ndarray, *, n_pcs: int = 10, max_cells: int = 4000, random_state: int = 0
) -> float:
    """Label-free quality of a partition: its silhouette in the leading principal components of ``X``.

    Used by ``label_weighting="silhouette"`` to down-weight a modality whose pseudo-labels are close to random.
    The silhouette is taken in the first ``n_pcs`` (10) principal components rather than in all dimensions:
    on the simulated sweeps (seeds 0-2) it then separates near-random transcript labels (decay 0.1: ARI with
    the modality's own labels 0.10-0.20, silhouette -0.07 to -0.02) from useful ones (ARI >= 0.69: silhouette
    0.18-0.31); in 100 principal components the two overlapped (-0.04 to 0.00 vs -0.002 to 0.12).

    Parameters
    ----------
    X
        ``(n, d)`` representation the partition was computed in (input features or ``h_m``).
    labels
        ``(n,)`` integer labels.
    n_pcs
        Principal components kept (fewer if ``X`` has fewer columns or rows).
    max_cells
        Silhouette on a seeded subsample of at most this many cells (it is O(n^2)).
    random_state
        Seed of the PCA solver and the subsample.

    Returns
    -------
    The mean silhouette in ``[-1, 1]``; 0.0 when there are fewer than 2 labels.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (50, 5)), rng.normal(8, 1, (50, 5))])
    >>> lab = np.repeat([0, 1], 50)
    >>> partition_silhouette(X, lab) > 0.7, abs(partition_silhouette(X, rng.permutation(lab))) < 0.1
    (True, True)
    """
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels)
    n = X.shape[0]
    if len(np.unique(labels)) < 2 or n < 3:
        return 0.0
    rng = np.random.default_rng(random_state)
    idx = np.sort(rng.choice(n, size=max_cells, replace=False)) if n > max_cells else np.arange(n)
    Xs, ls = X[idx], labels[idx]
    if len(np.unique(ls)) < 2:
        return 0.0
    n_comp = int(min(n_pcs, Xs.shape[1], Xs.shape[0] - 1))
    if n_comp < Xs.shape[1]:
        Xs = PCA(n_components=n_comp, random_state=random_state).fit_transform(Xs)
    if len(np.unique(ls)) >= Xs.shape[0]:
        return 0.0
    return float(silhouette_score(Xs, ls))


def silhouette_weights(scores: Sequence[float]) -> np.ndarray:
    """Per-modality triplet weights from partition silhouettes: ``clip(s_m, 0) / max_m s_m``.

    The modality with the best-separated pseudo-labels keeps the full weight (1), a modality whose labels are
    no better than random (silhouette <= 0) gets 0, the others a proportional share. All 1 when no modality
    has a positive silhouette (nothing to choose from: the reference behaviour).

    Parameters
    ----------
    scores
        One silhouette per modality (:func:`partition_silhouette`).

    Returns
    -------
    ``(M,)`` float array in ``[0, 1]``.

    Examples
    --------
    >>> silhouette_weights([0.2, -0.05]).tolist(), silhouette_weights([0.1, 0.2]).tolist()
    ([1.0, 0.0], [0.5, 1.0])
    """
    s = np.clip(np.asarray(scores, dtype=float), 0.0, None)
    if s.max() <= 0:
        return np.ones_like(s)
    return s / s.max()


def train_muse(
    module: MuseModule,
    xs: Sequence[torch.Tensor],
    init_labels: Sequence[np.ndarray],
    *,
    zero_inflated: Sequence[bool],
    schedule: MuseSchedule,
    cluster_fn: Callable[[np.ndarray], np.ndarray],
    lambda_regul: float = 5.0,
    lambda_super: float = 5.0,
    margin_max_cells: int = 4000,
    generator: torch.Generator | None = None,
    random_state: int = 0,
    show_progress: bool | None = None,
    penalty: str = "norm",
    reconstruction: str = "norm",
    label_weighting: str = "gate",
    joint_labels: Callable[[], np.ndarray] | None = None,
    label_agreement: bool = False,
) -> dict:
    """Train a :class:`MuseModule` with MUSE's staged schedule (in place).

    Parameters
    ----------
    module
        The network (on the same device as ``xs``).
    xs
        One ``(n, p_m)`` float tensor per modality.
    init_labels
        Initial labels per modality (length ``n`` each).
    zero_inflated
        Per modality: non-zero-entries reconstruction (transcripts) or dense.
    schedule
        Epochs, learning rate and batch size.
    cluster_fn
        Maps a ``(n, d)`` representation to integer labels (used to re-cluster ``h_m``).
    lambda_regul, lambda_super
        Weights of the selection penalty and of the triplet losses.
    margin_max_cells
        Subsample size for the margin estimate.
    generator
        Torch generator for the batch permutations (seeded by ``random_state`` when None).
    random_state
        Seed for the generator and the margin subsample.
    label_weighting
        ``"none"`` (the reference: every modality's triplet loss has weight ``lambda_super``) or
        ``"silhouette"``: each time the pseudo-labels are (re)computed, modality ``m``'s triplet term is
        multiplied by :func:`silhouette_weights` of the labels' :func:`partition_silhouette` (initial labels:
        in the input features; re-clusterings: in ``h_m``); ``"gate"``: weight 0 for the whole training for
        a modality whose *initial* labels have :func:`partition_silhouette` <= 0, 1 otherwise (all 1 when
        every modality is <= 0). Caveat (measured): Leiden partitions of pure uniform noise score slightly
        above 0 (0.005-0.05), so the gate only catches labels that are worse than that, as the transcript
        labels at heavy dropout are (-0.07 to -0.02 on the simulator).
    joint_labels
        With ``"gate"``: called once when the gate closes for some (not all) modalities; it returns labels of
        all modalities clustered together, which then replace the gated modalities' labels (weight 1, kept
        for the whole training, never re-clustered). None: the gated modalities' triplet terms get weight 0.
        Why: with one modality gated, the triplet loss reproduces the other modality's labels and the latent
        clusters no better than that modality alone; the joint labels let the gated modality's information
        in (development seeds of stmorph's simulator, transcript decay 0.1: mean ARI 0.696 -> 0.725; one
        homogeneous modality: 0.685 -> 0.705).
    label_agreement
        Triplet positives of modality ``m`` only among cells that share their current label (gated modalities:
        the joint labels) in ``m`` and in at least one other modality; negatives stay per modality. False
        (MUSE's own positives; :class:`~stmorph.models.muse.MUSE` turns it on by default, see its
        ``label_agreement``).
    show_progress
        Progress bar (None: follow ``STMORPH_PROGRESS``).

    Returns
    -------
    Dict with ``margin``, ``labels`` (the last per-modality labels used), ``history`` (per-epoch mean loss
    terms), ``n_updates`` (number of re-clusterings), ``schedule`` (the schedule run, after
    :meth:`MuseSchedule.for_n_cells`) and ``timings`` (wall seconds of the warm-up, the margin estimate, the
    triplet stage with the initial labels, the main stage's training steps and all re-clusterings).

    Examples
    --------
    >>> net = MuseModule([3, 4], latent_dim=2)
    >>> xs = [torch.rand(70, 3), torch.rand(70, 4)]
    >>> lab = [np.zeros(70, int), np.zeros(70, int)]
    >>> out = train_muse(net, xs, lab, zero_inflated=[True, False], schedule=MuseSchedule(1, 1, 1, 1, 1e-3, 64),
    ...                  cluster_fn=lambda h: np.zeros(len(h), int))
    >>> sorted(out)
    ['gated', 'history', 'label_silhouettes', 'label_weights', 'labels', 'margin', 'n_updates', 'schedule', 'timings']
    """
    device = xs[0].device
    n = int(xs[0].shape[0])
    schedule = schedule.for_n_cells(n)
    bs = int(min(schedule.batch_size, n))
    n_batches = max(n // bs, 1)  # the reference drops the last incomplete batch
    if schedule.max_batches_per_epoch is not None:
        n_batches = max(1, min(n_batches, int(schedule.max_batches_per_epoch)))
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(int(random_state))
    min_agree = 2 if label_agreement else None  # the modality's own label and at least one other modality's
    opt_kw = {"fused": True} if device.type in ("cpu", "cuda") else {}
    try:
        opt = torch.optim.Adam(module.parameters(), lr=schedule.lr, **opt_kw)
    except (RuntimeError, TypeError):  # pragma: no cover - fused Adam unavailable on this build/device
        opt = torch.optim.Adam(module.parameters(), lr=schedule.lr)
    zi = [bool(v) for v in zero_inflated]
    history: list[dict[str, float]] = []
    if label_weighting not in ("none", "silhouette", "gate"):
        raise ValueError(f"label_weighting={label_weighting!r}: expected 'none', 'silhouette' or 'gate'")
    weight_log: list[list[float]] = []
    score_log: list[list[float]] = []
    state: dict[str, torch.Tensor | None] = {"w": None}
    gated: dict[int, np.ndarray] = {}  # gated modality -> the joint labels that replace its own

    def set_weights(reps: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        if label_weighting == "none" or (label_weighting == "gate" and weight_log):
            # "gate" decides once, on the initial labels, and keeps its weights for the whole training
            weight_log.append(list(weight_log[-1]) if weight_log else [1.0] * len(labels))
            return
        scores = [partition_silhouette(r, lab, random_state=random_state) for r, lab in zip(reps, labels)]
        score_log.append([float(v) for v in scores])
        if label_weighting == "gate":
            w = (np.asarray(scores) > 0).astype(float)
            w = w if w.any() else np.ones_like(w)
        else:
            w = silhouette_weights(scores)
        weight_log.append([float(v) for v in w])
        state["w"] = torch.as_tensor(w, dtype=xs[0].dtype, device=device)

    def to_label_tensors(labels: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.stack([np.asarray(lab) for lab in labels]), dtype=torch.long, device=device)

    def run_epoch(labels_t: torch.Tensor | None, margin: float, stage: str) -> None:
        # one gather per epoch, then contiguous slices (instead of an index_select per batch), and the
        # transcript masks (x > 0) and their per-batch counts once per epoch, not per step (a boolean compare +
        # ``where`` on a 64 x 500 batch cost ~0.2-0.3 ms). With the cheaper pairwise distances: 5-10 % less
        # CPU per step (A/B, 4 interleaved pairs, 1 thread, load ~4-5: 8.2-10.4 vs 9.2-11.6 ms per step)
        perm = torch.randperm(n, generator=generator)[: n_batches * bs].to(device)
        xp = [x.index_select(0, perm) for x in xs]
        mp = [(x > 0).to(x.dtype) if z else None for x, z in zip(xp, zi)]
        cnt = [None if m is None else m.view(n_batches, bs, -1).sum(dim=(1, 2)) for m in mp]
        lp = None if labels_t is None else labels_t.index_select(1, perm)
        acc = torch.zeros(3, device=device)
        for b in range(n_batches):
            sl = slice(b * bs, (b + 1) * bs)
            xb = [x[sl] for x in xp]
            mb = [None if m is None else (m[sl], c[b]) for m, c in zip(mp, cnt)]
            lb = None if lp is None else lp[:, sl]
            loss, terms = muse_loss(module, xb, zi, lb, margin, lambda_regul, lambda_super, penalty=penalty,
                                    reconstruction=reconstruction, masks=mb,
                                    label_weights=state["w"] if lb is not None else None, min_agree=min_agree)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc += torch.stack([terms["reconstruction"], terms["selection"], terms["triplet"]])
        acc = (acc / n_batches).tolist()
        history.append({"stage": stage, "reconstruction": acc[0], "selection": acc[1], "triplet": acc[2]})

    timings = {"warmup": 0.0, "margin": 0.0, "triplet_init": 0.0, "main": 0.0, "recluster": 0.0}

    def recluster() -> list[np.ndarray]:
        t = time.perf_counter()
        _, hs = encode_all(module, xs)
        out = [gated[m] if m in gated else np.asarray(cluster_fn(h)) for m, h in enumerate(hs)]
        set_weights(hs, out)
        timings["recluster"] += time.perf_counter() - t
        return out

    total = schedule.n_epochs_warmup + schedule.n_epochs_triplet_init + schedule.n_epochs
    bar = progress(range(total), desc="MUSE", total=total, disable=None if show_progress is None else not show_progress)
    it = iter(bar)
    module.train()
    t = time.perf_counter()
    for _ in range(schedule.n_epochs_warmup):
        next(it)
        run_epoch(None, 0.0, "warmup")
    timings["warmup"] = time.perf_counter() - t
    if lambda_super == 0:  # plain multi-view autoencoder: no margin, no labels, no re-clustering
        for _ in range(schedule.n_epochs_triplet_init + schedule.n_epochs):
            next(it)
            run_epoch(None, 0.0, "autoencoder")
        if hasattr(bar, "close"):
            bar.close()
        return {"margin": 0.0, "labels": [np.asarray(lab) for lab in init_labels], "history": history, "n_updates": 0,
                "schedule": schedule, "timings": timings, "label_weights": weight_log,
                "label_silhouettes": score_log, "gated": []}
    t = time.perf_counter()
    # only the cells the margin's subsample takes (estimate_margin's own draw) are encoded: at 1,000,000 cells
    # encoding all of them for it held 1.4 GB of z and h_m
    rows = None
    if n > margin_max_cells:
        from ..._utils import as_generator

        rows = torch.as_tensor(as_generator(random_state).choice(n, size=margin_max_cells, replace=False),
                               device=device)
    z, _ = encode_all(module, xs if rows is None else [x.index_select(0, rows) for x in xs])
    margin = estimate_margin(z, max_cells=margin_max_cells, random_state=random_state)
    timings["margin"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = [np.asarray(lab) for lab in init_labels]
    set_weights([x.detach().cpu().numpy() for x in xs] if label_weighting != "none" else [], labels)
    closed = [m for m, w in enumerate(weight_log[-1]) if w == 0.0]
    if label_weighting == "gate" and closed and joint_labels is not None:
        joint = np.asarray(joint_labels())
        for m in closed:
            gated[m] = labels[m] = joint
        weight_log[-1] = [1.0] * len(labels)
        state["w"] = None  # every modality's triplet term at lambda_super again
    labels_t = to_label_tensors(labels)
    for _ in range(schedule.n_epochs_triplet_init):
        next(it)
        run_epoch(labels_t, margin, "triplet_init")
    timings["triplet_init"] = time.perf_counter() - t
    n_updates = 0
    if schedule.n_epochs > 0:  # no main stage (the "fast" preset): the initial labels are the last labels
        labels = recluster()
        labels_t = to_label_tensors(labels)
        n_updates = 1
    t = time.perf_counter()
    t_rc0 = timings["recluster"]
    for epoch in range(schedule.n_epochs):
        next(it)
        run_epoch(labels_t, margin, "main")
        if epoch % max(schedule.cluster_update_every, 1) == 0 and epoch < schedule.n_epochs - 1:
            labels = recluster()
            labels_t = to_label_tensors(labels)
            n_updates += 1
    timings["main"] = time.perf_counter() - t - (timings["recluster"] - t_rc0)
    for _ in it:  # pragma: no cover - exhaust the bar
        pass
    if hasattr(bar, "close"):
        bar.close()
    return {"margin": margin, "labels": labels, "history": history, "n_updates": n_updates, "schedule": schedule,
            "timings": timings, "label_weights": weight_log,
            "label_silhouettes": score_log, "gated": sorted(gated)}
