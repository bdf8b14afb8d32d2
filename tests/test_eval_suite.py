"""Classification, clustering, metrics, gene prediction, co-localization, the evaluator and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from stmorph.errors import StmorphInputError
from stmorph.eval import (
    EvalConfig,
    cluster_metrics,
    evaluate_spaces,
    hungarian_jaccard,
    knn_colocalization,
    knn_graph,
    latent_f_tests,
    leiden_tune,
    multiplex_leiden,
    rf_classification,
    ridge_gene_prediction,
    silhouette,
)
from stmorph.pp import de_gene_subset, normalize_counts, pca_gene_subset, random_gene_subset, wilcoxon_scores


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(240, centers=6, n_features=8, cluster_std=1.0, random_state=0)
    return X, np.array([f"t{i}" for i in y])


def _silhouette_by_definition(X, lab):
    """Rousseeuw's silhouette written out with loops (a(i): mean distance to the own cluster, b(i): lowest mean
    distance to another cluster, s = (b - a) / max(a, b), 0 for singletons)."""
    X = np.asarray(X, float)
    lab = np.asarray(lab)
    s = []
    for i in range(len(X)):
        d = np.sqrt(((X - X[i]) ** 2).sum(axis=1))
        own = (lab == lab[i])
        if own.sum() == 1:
            s.append(0.0)
            continue
        a = d[own].sum() / (own.sum() - 1)
        b = min(d[lab == c].mean() for c in set(lab) if c != lab[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_silhouette_by_hand_and_by_definition(blobs):
    # by hand: points 0, 1 (cluster a) and 4 (cluster b) on a line
    # a(0) = 1, b(0) = 4 -> 3/4; a(1) = 1, b(1) = 3 -> 2/3; point 4 is a singleton -> 0
    X = np.array([[0.0], [1.0], [4.0]])
    assert silhouette(X, np.array(["a", "a", "b"])) == pytest.approx((3 / 4 + 2 / 3 + 0) / 3, rel=1e-12)
    X, y = blobs
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(y.size) < 0.2, "t0", y)
    noisy[0] = "single"  # a singleton cluster
    for lab in (y, noisy):
        assert silhouette(X, lab) == pytest.approx(_silhouette_by_definition(X, lab), rel=1e-10)


def test_cluster_metrics_orientation_and_jaccard():
    from sklearn.metrics import homogeneity_score

    labels = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2)
    clusters = np.array([0, 0, 1, 1, 2, 2, 2, 2, 2, 2])  # a split in two; b and c merged
    m = cluster_metrics(labels, clusters)
    # by hand (natural logs): H(labels) over sizes 4, 4, 2 of 10; clusters {a,a}, {a,a}, {b,b,b,b,c,c}
    H_lab = -(2 * 0.4 * np.log(0.4) + 0.2 * np.log(0.2))
    H_lab_given_cl = 0.6 * -(4 / 6 * np.log(4 / 6) + 2 / 6 * np.log(2 / 6))  # only the mixed cluster is impure
    H_cl = -(2 * 0.2 * np.log(0.2) + 0.6 * np.log(0.6))
    H_cl_given_lab = 0.4 * np.log(2)  # label a is split in two halves; b and c each sit in one cluster
    assert m["homogeneity"] == pytest.approx(1 - H_lab_given_cl / H_lab, rel=1e-12)
    assert m["completeness"] == pytest.approx(1 - H_cl_given_lab / H_cl, rel=1e-12)
    assert m["homogeneity"] == pytest.approx(0.6380, abs=1e-4) and m["completeness"] == pytest.approx(0.7082, abs=1e-4)
    # the reference's swapped call gives completeness, not homogeneity
    assert homogeneity_score(clusters, labels) == pytest.approx(m["completeness"])
    assert m["homogeneity"] != pytest.approx(m["completeness"])
    # ARI by its pair-counting formula: sum over the contingency table of C(n_ij, 2) etc.
    from math import comb

    index = sum(comb(v, 2) for v in (2, 2, 4, 2))
    a_sum = sum(comb(v, 2) for v in (4, 4, 2))
    b_sum = sum(comb(v, 2) for v in (2, 2, 6))
    expected = a_sum * b_sum / comb(10, 2)
    assert m["ari"] == pytest.approx((index - expected) / ((a_sum + b_sum) / 2 - expected), rel=1e-12)
    jac = hungarian_jaccard(labels, clusters)
    assert jac["a"] == pytest.approx(0.5)  # matched to one half of its split
    assert jac["b"] == pytest.approx(4 / 6)
    assert jac["c"] == 0.0  # the optimal matching leaves c the empty cluster 1 (b takes cluster 2)
    assert sum(v is None for v in jac.values()) == 0  # 3 labels, 3 clusters: all matched
    jac2 = hungarian_jaccard(labels, np.zeros(10))
    assert sum(v is None for v in jac2.values()) == 2  # one cluster: two labels unmatched


def test_rf_classification_recovers_blobs(blobs):
    X, y = blobs
    res = rf_classification(X, y, n_trees=30, n_jobs=1)
    assert res.balanced_accuracy > 0.95
    assert set(res.per_label.index) == set(y)
    assert res.confusion.to_numpy().sum() == y.size
    # per-label recall of pure noise is near chance (1/6)
    noise = np.random.default_rng(1).normal(size=X.shape)
    assert rf_classification(noise, y, n_trees=30, n_jobs=1).balanced_accuracy < 0.4


def test_leiden_tune_and_multiplex(blobs):
    from sklearn.metrics import adjusted_rand_score

    X, y = blobs
    res = leiden_tune(X, k_grid=(10, 20), resolutions=(0.05, 0.5, 1.0), min_clusters=5)
    assert len(res.grid) == 6 and set(res.graphs) == {10, 20}
    assert res.grid.loc[res.grid.eligible, "silhouette"].max() == pytest.approx(res.silhouette)
    assert adjusted_rand_score(y, res.clusters) > 0.9
    assert (res.grid.n_clusters[res.grid.eligible] >= 5).all()
    # a space that only separates 3 groups + an informative one: the multiplex leans on the informative one
    noise = np.random.default_rng(0).normal(size=X.shape)
    mx = multiplex_leiden(X, noise, k=(res.k, 15), resolution=(res.resolution, 1.0), weights=(0.2, 0.5, 0.9))
    assert mx.weight == pytest.approx(0.9)
    assert adjusted_rand_score(y, mx.clusters) > 0.8
    # worker processes change nothing: every run is seeded on its own
    serial = leiden_tune(X, k_grid=(10, 20), resolutions=(0.05, 0.5, 1.0), min_clusters=5, n_jobs=1)
    pd.testing.assert_frame_equal(serial.grid, res.grid)
    np.testing.assert_array_equal(serial.clusters, res.clusters)
    mx1 = multiplex_leiden(X, noise, k=(res.k, 15), resolution=(res.resolution, 1.0), weights=(0.2, 0.5, 0.9),
                           n_jobs=1)
    pd.testing.assert_frame_equal(mx1.grid, mx.grid)


def test_leiden_igraph_backend_and_guard(blobs):
    X, y = blobs
    res = leiden_tune(X, k_grid=(15,), resolutions=(0.5, 1.0), backend="igraph")
    assert adjusted_rand_score(y, res.clusters) > 0.9
    with pytest.raises(StmorphInputError):
        leiden_tune(X, k_grid=(15,), resolutions=(0.5,), backend="louvain")
    cfg = EvalConfig(leiden_backend="igraph", run_permanova=False, run_permdisp=False, run_classification=False)
    with pytest.raises(StmorphInputError):
        evaluate_spaces({"A": X, "B": X[:, ::-1]}, y.astype(str), config=cfg, multiplex=[("A", "B")])


def test_multiplex_optimiser_equals_muon_with_weights():
    """Our multiplex call = muon.tl.leiden with edge weights on the same (doubled-edge) graphs."""
    import warnings

    import anndata as ad
    import mudata as md
    from sklearn.datasets import make_blobs

    from stmorph._cluster._community import _leiden_multiplex

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import muon as mu
        from scanpy._utils import get_igraph_from_adjacency

    X, _ = make_blobs(150, centers=4, random_state=3)
    Y = np.random.default_rng(3).normal(size=(150, 5))
    graphs = [knn_graph(X, 10), knn_graph(Y, 10)]
    mods = {}
    for name, G in zip(("a", "b"), graphs):
        a = ad.AnnData(np.zeros((150, 0), dtype=np.float32))
        a.obsp["connectivities"] = G
        a.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
        mods[name] = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(mods)
        mu.tl.leiden(mdata, resolution={"a": 0.8, "b": 0.5}, mod_weights={"a": 0.7, "b": 0.3}, random_state=3,
                     key_added="mx", directed=False, partition_kwargs={"weights": "weight"})
    igs = [get_igraph_from_adjacency(G, directed=False) for G in graphs]
    ours = _leiden_multiplex(igs, (0.8, 0.5), (0.7, 0.3), random_state=3)
    assert adjusted_rand_score(mdata.obs["mx"].astype(str), ours.astype(str)) == 1.0


@pytest.mark.slow
def test_knn_graph_matches_scanpy():
    pytest.importorskip("umap")
    import anndata as ad
    import scanpy as sc

    from stmorph.eval import knn_graph

    X, _ = make_blobs(120, centers=3, n_features=5, random_state=2)
    a = ad.AnnData(np.zeros((120, 0), dtype=np.float32))
    a.obsm["r"] = X.astype(np.float32)
    sc.pp.neighbors(a, n_neighbors=10, use_rep="r", transformer="sklearn")
    G = knn_graph(X, 10)
    assert abs(G - a.obsp["connectivities"]).max() < 1e-4


def test_gene_prediction_and_f_tests():
    from sklearn.feature_selection import f_regression
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 4))
    Y = np.c_[2 * Z[:, 1] + 0.2 * rng.normal(size=300), rng.normal(size=300), Z[:, 3] + rng.normal(size=300)]
    r2 = ridge_gene_prediction(Z, Y, ["g1", "g2", "g3"])
    assert r2.loc["g1", "r2"] > 0.95 and abs(r2.loc["g2", "r2"]) < 0.1 and 0.3 < r2.loc["g3", "r2"] < 0.7
    ft = latent_f_tests(Z, Y, ["g1", "g2", "g3"])
    F_ref = np.vstack([f_regression(Z, Y[:, j])[0] for j in range(3)])
    p_ref = np.vstack([f_regression(Z, Y[:, j])[1] for j in range(3)])
    padj_ref = multipletests(p_ref.ravel(), method="fdr_bh")[1].reshape(p_ref.shape).min(axis=1)
    np.testing.assert_allclose(ft["f"], F_ref.max(axis=1), rtol=1e-8)
    np.testing.assert_allclose(ft["padj"], padj_ref, rtol=1e-6)
    assert ft["best_latent"].tolist()[0] == 1 and ft["best_latent"].tolist()[2] == 3


def test_gene_subsets_and_normalisation():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(120, 30)).astype(float)
    lab = np.repeat(["a", "b", "c"], 40)
    counts[:40, 5] += 20
    counts[40:80, 7] += 20
    counts[80:, 11] += 20
    X = normalize_counts(counts)
    tot = np.expm1(X).sum(axis=1)
    np.testing.assert_allclose(tot, np.median(counts.sum(axis=1)))
    genes = [f"G{i}" for i in range(30)]
    assert de_gene_subset(X, genes, lab) == ["G5", "G7", "G11"]
    # z-scores order genes as the Mann-Whitney U statistic does (same test)
    from scipy.stats import mannwhitneyu

    z = wilcoxon_scores(X, lab).loc["a"].to_numpy()
    U = np.array([mannwhitneyu(X[:40, j], X[40:, j]).statistic for j in range(30)])
    n1, n2 = 40, 80
    np.testing.assert_allclose(z, (U - n1 * n2 / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12), rtol=1e-10)
    pca = pca_gene_subset(X, genes, n_pcs=15, n_top=3)
    assert len(pca) == len(set(pca)) and {"G5", "G7", "G11"} <= set(pca[:6])
    r1 = random_gene_subset(genes, 10, random_state=3)
    assert r1 == random_gene_subset(genes, 10, random_state=3) and len(set(r1)) == 10
    assert r1 != random_gene_subset(genes, 10, random_state=4)


def test_knn_colocalization():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, size=(300, 2))
    clusters = np.where(xy[:, 0] < 3, "left", "mixed")
    mixed = clusters == "mixed"
    clusters[mixed] = rng.choice(["m1", "m2"], size=mixed.sum())
    df = knn_colocalization(xy, clusters, n_neighbors=8, permutations=199)
    assert df.loc["left", "pvalue"] <= 0.01 and df.loc["left", "enrichment"] > 2
    assert df["n_cells"].sum() == 300
    # labels drawn at random over the whole tissue: no co-localization, score ~ the label's frequency
    rnd = rng.choice(["r1", "r2", "r3"], size=300)
    dr = knn_colocalization(xy, rnd, n_neighbors=8, permutations=199)
    assert (dr["pvalue"] > 0.01).all()
    np.testing.assert_allclose(dr["expected"], (dr["n_cells"] - 1) / 299, atol=0.01)


def test_evaluate_spaces_and_cli(tmp_path, blobs):
    from typer.testing import CliRunner

    from stmorph.cli import app

    X, y = blobs
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(y.size)]
    counts = pd.DataFrame(rng.poisson(np.exp(0.3 * X[:, :4] - 0.5)), index=ids, columns=list("ABCD"))
    counts.iloc[:, 0] += 1
    feat = pd.DataFrame(X, index=ids, columns=[f"f{i}" for i in range(8)])
    noise = pd.DataFrame(rng.normal(size=(y.size, 3)), index=ids)
    feat.iloc[:-3].to_csv(tmp_path / "feat.csv", index_label="cell")  # 3 cells missing here
    noise.to_csv(tmp_path / "noise.csv", index_label="cell")
    counts.to_csv(tmp_path / "counts.csv", index_label="cell")
    lab = pd.DataFrame({"cell": ids, "label": y})
    lab.loc[:4, "label"] = "Removed"
    lab.to_csv(tmp_path / "labels.csv", index=False)
    res = CliRunner().invoke(app, [
        "evaluate", "--features", f"A={tmp_path / 'feat.csv'}", "--features", f"N={tmp_path / 'noise.csv'}",
        "--labels", str(tmp_path / "labels.csv"), "--label-column", "label", "--multiplex", "A+N",
        "--ridge", "A", "--counts", str(tmp_path / "counts.csv"), "--exclude-label", "Removed",
        "--out", str(tmp_path / "out"), "--permutations", "49", "--n-trees", "20", "--permdisp-test", "centroid",
    ])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    A = s["feature_spaces"]["A"]
    assert A["n_cells"] == y.size - 3 - 5 and A["n_features"] == 8
    assert A["classification"]["balanced_accuracy"] > 0.9
    assert s["feature_spaces"]["N"]["classification"]["balanced_accuracy"] < 0.5
    assert A["permanova"] == {"n_pairs": 15, "n_significant": 15}
    assert set(A["clustering"]) >= {"k", "resolution", "n_clusters", "silhouette", "homogeneity", "completeness",
                                    "ami", "ari", "jaccard"}
    assert A["clustering"]["ari"] > 0.9
    assert set(s["multiplex"]["A+N"]) >= {"weight", "n_clusters", "silhouette", "homogeneity", "jaccard"}
    assert set(s["ridge"]["A"]["r2"]) == set("ABCD")
    assert s["cells"]["dropped"]["A"] == 5 and s["cells"]["inputs"]["A"] == y.size - 3  # the 5 "Removed" cells
    assert (tmp_path / "out" / "tables" / "permanova_A.csv").exists()
    assert (tmp_path / "out" / "figures" / "per_label_balanced_accuracy.png").exists()
    # bad input: a clear one-line error
    bad = CliRunner().invoke(app, ["evaluate", "--features", "A", "--labels", "x.csv", "--out", str(tmp_path)])
    assert bad.exit_code != 0


def test_evaluate_spaces_direct_tc_counts():
    X, y = make_blobs(150, centers=5, n_features=6, random_state=3)
    cfg = EvalConfig(permutations=49, n_trees=20, k_grid=(15,), resolutions=(0.5, 1.0), permdisp_tests=("centroid",),
                     run_clustering=False)
    res = evaluate_spaces({"A": X}, y.astype(str), config=cfg)
    fs = res.summary["feature_spaces"]["A"]
    assert "clustering" not in fs and fs["permdisp"]["n_pairs"] == 10
    assert res.tables["classification_A"].shape == (5, 1)
