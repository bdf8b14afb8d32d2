"""A Breiman random forest (the algorithm of sklearn's ``RandomForestClassifier``) compiled with numba.

Why our own: the study's forest (1,000 fully grown trees x 5 folds) was most of ``stmorph evaluate``'s time. This
implementation grows the trees of sklearn's defaults: a bootstrap of n draws with replacement (with balanced class
weights as the draws' sampling probabilities, as sklearn >= 1.9 does), ``max_features`` candidate features per node
drawn without replacement (features constant in the node count as drawn; at least one must vary), the best Gini
split at midpoints between distinct values, trees grown until pure, soft voting of leaf class fractions. It

- sorts integer rank keys computed once per training fold instead of float values in every node,
- updates the weighted Gini sums in O(1) per candidate threshold (sklearn loops over all classes for each one),
- routes the test cells through each tree as soon as it is grown, so no forest is kept in memory,
- runs trees in parallel without the GIL, each tree with its own counter-based random stream, so the result does
  not depend on the number of threads.

Only the random numbers differ from sklearn, so the two agree in distribution, not bit for bit; the tests compare
tree sizes and per-label accuracies with sklearn's over several seeds. Measured on the ileum (1,000 trees x 5 folds,
one thread): 7.1 vs 34.0 CPU ms per tree on the 50-d stain space (4.8x), 15.6 vs 15.6 on the 241 log counts, where
most thresholds are ties that sklearn's per-threshold class loop skips cheaply (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["forest_predict_proba", "resolve_max_features"]

_N_BLOCKS = 16  # trees are summed in this many fixed blocks: deterministic for any thread count


def resolve_max_features(max_features: str | int | float | None, d: int) -> int:
    """Number of candidate features per split, with sklearn's conventions.

    Parameters
    ----------
    max_features
        ``"sqrt"``, ``"log2"``, an int, a fraction in (0, 1], or None (all features).
    d
        Number of features.

    Returns
    -------
    The number of features tried per node (at least 1).

    Examples
    --------
    >>> resolve_max_features("sqrt", 50)
    7
    """
    if max_features is None:
        return d
    if isinstance(max_features, str):
        if max_features == "sqrt":
            return max(1, int(np.sqrt(d)))
        if max_features == "log2":
            return max(1, int(np.log2(d)))
        raise ValueError(f"max_features={max_features!r}; expected 'sqrt', 'log2', an int, a float or None")
    if isinstance(max_features, (int, np.integer)) and not isinstance(max_features, bool):
        return int(min(max(1, max_features), d))
    return max(1, int(float(max_features) * d))


def _rank_encode(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature dense ranks of ``X`` (ties share a rank) and the sorted unique values.

    Returns ``ranks (d, n) int32`` (one contiguous row per feature) and ``values (d, max_unique) float64``
    (padded with +inf).
    """
    n, d = X.shape
    ranks = np.empty((d, n), dtype=np.int32)
    uniq = []
    for j in range(d):
        u, inv = np.unique(X[:, j], return_inverse=True)
        ranks[j] = inv
        uniq.append(u)
    m = max(u.size for u in uniq)
    values = np.full((d, m), np.inf)
    for j, u in enumerate(uniq):
        values[j, : u.size] = u
    return ranks, values


def forest_predict_proba(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    *,
    n_trees: int = 1000,
    max_features: str | int | float | None = "sqrt",
    class_weight: str | None = "balanced",
    random_state: int = 0,
    n_jobs: int | None = -1,
    return_n_nodes: bool = False,
    bootstrap: bool = True,
    max_samples: float | None = None,
):
    """Grow a random forest on the training cells and return the test cells' class probabilities.

    Same trees as ``sklearn.ensemble.RandomForestClassifier(n_estimators=n_trees, class_weight=class_weight,
    max_features=max_features)`` with its other defaults (bootstrap, Gini, fully grown), drawn with other random
    numbers. Features are compared in float32, as in sklearn.

    Parameters
    ----------
    X_train
        ``(n, d)`` training features.
    y_train
        ``(n,)`` integer class codes ``0..C-1`` (every class present).
    X_test
        ``(m, d)`` test features.
    n_trees
        Number of trees.
    max_features
        Candidate features per node (see :func:`resolve_max_features`).
    class_weight
        ``"balanced"`` (``n / (C * n_c)`` per class, as sklearn) or None. With ``bootstrap`` the weights are the
        sampling probabilities of the bootstrap draws, as in sklearn >= 1.9 (sklearn < 1.9 multiplied them into
        the bootstrap counts).
    random_state
        Seed; each tree's stream is derived from it and the tree's index.
    n_jobs
        Threads (-1: numba's default, all cores); results do not depend on it.
    return_n_nodes
        Also return the number of nodes of each tree.
    bootstrap
        Draw a bootstrap sample per tree (sklearn's default); False grows every tree on all cells.
    max_samples
        Bootstrap draws per tree as a fraction of the training cells (None: as many as cells, sklearn's default).

    Returns
    -------
    ``(m, C)`` mean leaf class fractions (soft votes); with ``return_n_nodes`` also ``(n_trees,)`` node counts.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4)); y = (X[:, 0] > 0).astype(int)
    >>> P = forest_predict_proba(X[:150], y[:150], X[150:], n_trees=50)
    >>> float((P.argmax(1) == y[150:]).mean()) > 0.9
    True
    """
    import numba

    from ._forest_kernels import forest_kernel

    Xtr = np.asarray(X_train, dtype=np.float32)
    Xte = np.ascontiguousarray(np.asarray(X_test, dtype=np.float32))
    y = np.ascontiguousarray(np.asarray(y_train, dtype=np.int64))
    if Xtr.ndim != 2 or Xte.ndim != 2 or Xtr.shape[1] != Xte.shape[1] or y.shape[0] != Xtr.shape[0]:
        raise ValueError(f"shapes X_train {Xtr.shape}, y_train {y.shape}, X_test {Xte.shape} do not match")
    for name, A in (("X_train", Xtr), ("X_test", Xte)):
        if not np.isfinite(A).all():
            raise ValueError(f"{name} has NaN or infinite values (or values beyond float32); impute or drop them first")
    if y.size == 0 or y.min() < 0:
        raise ValueError("y_train must hold integer class codes 0..C-1 for at least one cell")
    n_classes = int(y.max()) + 1
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if class_weight == "balanced":
        cw = np.where(counts > 0, y.size / (n_classes * np.maximum(counts, 1)), 0.0)
    elif class_weight is None:
        cw = np.ones(n_classes)
    else:
        raise ValueError(f"class_weight={class_weight!r}; expected 'balanced' or None")
    if bootstrap:
        # sklearn >= 1.9: the class weights become the bootstrap's sampling probabilities and the bootstrap counts
        # the tree's sample weights (older versions multiplied the class weights into the counts instead)
        sw = np.ones(y.size)
        cum = np.cumsum(cw[y]) if class_weight is not None else np.empty(0)
    else:
        sw, cum = cw[y], np.empty(0)
    n_draws = 0
    if bootstrap:
        n_draws = y.size if max_samples is None else max(1, int(round(y.size * float(max_samples))))
    ranks, values = _rank_encode(Xtr)
    mtry = resolve_max_features(max_features, Xtr.shape[1])
    ss = np.random.SeedSequence(int(random_state))
    seeds = ss.generate_state(n_trees, dtype=np.uint64)
    old = numba.get_num_threads()
    threads = old if n_jobs is None or n_jobs < 1 else min(int(n_jobs), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    try:
        proba, nodes = forest_kernel(ranks, y, sw, cum, values, n_classes, mtry, seeds,
                               Xte.astype(np.float64), _N_BLOCKS, n_draws)
    finally:
        numba.set_num_threads(old)
    return (proba, nodes) if return_n_nodes else proba
