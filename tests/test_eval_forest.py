"""The numba random forest against sklearn's: identical trees where no randomness is involved, same statistics
(tree sizes, per-label accuracies) where it is."""

import numpy as np
import pytest
import sklearn
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import recall_score
from sklearn.tree import DecisionTreeClassifier

from stmorph.eval import forest_predict_proba, rf_classification
from stmorph.eval._forest import _rank_encode, resolve_max_features
from stmorph.eval._forest_kernels import grow_and_route

# sklearn 1.9 (scikit-learn PR 31529) draws the bootstrap with the class weights as probabilities, as we do; older
# versions multiply the weights into the counts, so forest-level comparisons only hold from 1.9 on
_SKLEARN_19 = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 9)
needs_sklearn_19 = pytest.mark.skipif(not _SKLEARN_19, reason="compares with sklearn >= 1.9's class-weighted bootstrap")


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(900, n_features=12, n_informative=6, n_redundant=2, n_classes=5,
                               n_clusters_per_class=1, weights=[0.4, 0.25, 0.15, 0.12, 0.08], class_sep=0.8,
                               random_state=3)
    return X.astype(np.float32), y


def test_single_feature_tree_equals_sklearn(data):
    # one feature and no bootstrap: no random choice left, so the tree must be sklearn's exactly
    X, y = data
    Xtr, ytr, Xte = X[:600, :1], y[:600], X[600:, :1]
    P = forest_predict_proba(Xtr, ytr, Xte, n_trees=1, max_features=None, bootstrap=False)
    tree = DecisionTreeClassifier(class_weight="balanced", random_state=0).fit(Xtr, ytr)
    np.testing.assert_allclose(P, tree.predict_proba(Xte), atol=1e-12)
    # with unit weights the node sums are exact, so even the node count is sklearn's (with balanced weights
    # sklearn splits some pure nodes whose impurity rounds to 7e-16 > eps: same predictions, more nodes)
    P, nodes = forest_predict_proba(Xtr, ytr, Xte, n_trees=1, max_features=None, bootstrap=False,
                                    class_weight=None, return_n_nodes=True)
    tree = DecisionTreeClassifier(random_state=0).fit(Xtr, ytr)
    np.testing.assert_allclose(P, tree.predict_proba(Xte), atol=1e-12)
    assert nodes[0] == tree.tree_.node_count


def test_weighted_bootstrap_tree_structure_equals_sklearn(data):
    # all features, no bootstrap: the top splits are sklearn's (deeper, exact ties between features can be
    # broken differently: e.g. at depth 2 here two features isolate the same cells)
    X, y = data
    Xtr, ytr = X[:600], y[:600]
    ranks, values = _rank_encode(Xtr)
    grow = grow_and_route
    out = np.zeros((1, 5))
    n, feat, thr, left, right = grow(ranks, ytr.astype(np.int64), np.ones(600), np.empty(0), values, 5,
                                     Xtr.shape[1], np.uint64(7), Xtr[:1].astype(np.float64), out, 0)
    t = DecisionTreeClassifier(random_state=0).fit(Xtr, ytr).tree_
    # the root and its children
    todo = [(0, 0, 0)]
    checked = 0
    while todo:
        a, b, depth = todo.pop()
        assert feat[a] == t.feature[b]
        if feat[a] < 0:
            continue
        assert thr[a] == pytest.approx(t.threshold[b], abs=1e-6)
        checked += 1
        if depth < 1:
            todo += [(left[a], t.children_left[b], depth + 1), (right[a], t.children_right[b], depth + 1)]
    assert checked >= 3
    assert abs(n - t.node_count) <= 0.1 * t.node_count


@needs_sklearn_19
def test_forest_statistics_match_sklearn(data):
    X, y = data
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[600:], y[600:]
    ours, theirs, n_ours, n_theirs = [], [], [], []
    for seed in range(3):
        P, nodes = forest_predict_proba(Xtr, ytr, Xte, n_trees=150, random_state=seed, return_n_nodes=True)
        ours.append(recall_score(yte, P.argmax(1), average=None))
        n_ours.append(nodes.mean())
        rf = RandomForestClassifier(150, class_weight="balanced", random_state=seed, n_jobs=1).fit(Xtr, ytr)
        theirs.append(recall_score(yte, rf.predict(Xte), average=None))
        n_theirs.append(np.mean([e.tree_.node_count for e in rf.estimators_]))
    # tree sizes agree within 3% (the class-weighted bootstrap of sklearn >= 1.9 makes them ~15% smaller than
    # weighting the counts would), per-label recalls within seed-to-seed noise
    assert np.mean(n_ours) == pytest.approx(np.mean(n_theirs), rel=0.03)
    diff = np.abs(np.mean(ours, axis=0) - np.mean(theirs, axis=0))
    assert diff.max() < 0.05, diff
    assert np.mean(ours) > 0.6


def test_forest_deterministic_and_thread_independent(data):
    import numba

    X, y = data
    a = forest_predict_proba(X[:600], y[:600], X[600:], n_trees=40, random_state=5, n_jobs=1)
    b = forest_predict_proba(X[:600], y[:600], X[600:], n_trees=40, random_state=5,
                             n_jobs=min(2, numba.config.NUMBA_NUM_THREADS))
    np.testing.assert_array_equal(a, b)
    c = forest_predict_proba(X[:600], y[:600], X[600:], n_trees=40, random_state=6, n_jobs=1)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)


def test_max_samples_and_features(data):
    X, y = data
    assert resolve_max_features("sqrt", 50) == 7 and resolve_max_features(0.5, 12) == 6
    assert resolve_max_features(None, 12) == 12 and resolve_max_features("log2", 16) == 4
    _, full = forest_predict_proba(X[:600], y[:600], X[600:], n_trees=20, return_n_nodes=True)
    _, small = forest_predict_proba(X[:600], y[:600], X[600:], n_trees=20, max_samples=0.2, return_n_nodes=True)
    assert small.mean() < 0.5 * full.mean()


@needs_sklearn_19
def test_rf_classification_backends_agree(data):
    X, y = data
    a = rf_classification(X, y, n_trees=100, n_jobs=1)
    b = rf_classification(X, y, n_trees=100, n_jobs=1, backend="sklearn")
    assert a.params["backend"] == "stmorph"
    assert abs(a.balanced_accuracy - b.balanced_accuracy) < 0.03
    assert np.abs(a.per_label.to_numpy() - b.per_label.to_numpy()).max() < 0.08


def test_bad_input_is_refused(data):
    X, y = data
    bad = X[:100].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="X_train has NaN"):
        forest_predict_proba(bad, y[:100], X[100:110], n_trees=2)
    with pytest.raises(ValueError, match="do not match"):
        forest_predict_proba(X[:100], y[:100], X[100:110, :3], n_trees=2)
