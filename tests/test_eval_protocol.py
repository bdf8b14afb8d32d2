"""The study's clustering protocol, the strict cluster-count bound of both protocols, and the DE-panel leak.

Expectations come from known structure (well-separated blobs, noise genes with random labels), brute-force
neighbour sets and the study's grid as written in its code, never from the library call a function wraps.
"""

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
    evaluate_spaces,
    leiden_tune,
    multiplex_leiden,
    rf_classification,
    silhouette,
    study_neighbors,
    write_results,
)
from stmorph.eval._cluster import STUDY_K_GRID, STUDY_RESOLUTIONS, STUDY_WEIGHTS
from stmorph.pp import de_gene_columns, de_gene_subset

ONLY_CLUSTERING = dict(run_permanova=False, run_permdisp=False, run_classification=False)


def _blobs(n_centers: int, n: int = 240, seed: int = 0, std: float = 0.6):
    X, y = make_blobs(n, centers=n_centers, n_features=6, cluster_std=std, center_box=(-20, 20), random_state=seed)
    return X, y


def test_study_grid_is_the_studys():
    # optimize_leiden_hyperparams: k_range (10, 50, 5); resolutions 0.1..1.0 by 0.1, then by 0.2 to 2.0; weights
    # np.arange(0.05, 1.05, 0.05) kept strictly inside (0, 1)
    assert STUDY_K_GRID == (10, 15, 20, 25, 30, 35, 40, 45, 50)
    assert STUDY_RESOLUTIONS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
    assert len(STUDY_WEIGHTS) == 19 and STUDY_WEIGHTS[0] == 0.05 and STUDY_WEIGHTS[-1] == 0.95
    assert np.allclose(np.diff(STUDY_WEIGHTS), 0.05)
    cfg = EvalConfig(protocol="study", **ONLY_CLUSTERING)
    X, y = _blobs(7, n=120)
    res = evaluate_spaces({"A": X}, y.astype(str), config=cfg)
    used = res.summary["config"]
    assert tuple(used["k_grid"]) == STUDY_K_GRID and tuple(used["resolutions"]) == STUDY_RESOLUTIONS
    assert tuple(used["multiplex_weights"]) == STUDY_WEIGHTS
    assert len(res.tables["leiden_grid_A"]) == 9 * 15
    with pytest.raises(StmorphInputError, match="protocol"):
        EvalConfig(protocol="studdy")


def test_study_neighbors_are_the_exact_k_nearest():
    X, _ = _blobs(4, n=150, std=2.0)
    k = 12
    G = study_neighbors(X, k)
    assert G.shape == (150, 150) and abs(G - G.T).max() < 1e-12  # the fuzzy union is symmetric
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    for i in range(150):
        nn = set(np.argsort(D[i])[1:k].tolist())  # k includes the cell itself (scanpy's convention)
        row = set(G[i].indices.tolist())
        assert nn <= row  # every cell is linked to its k - 1 nearest cells ...
        for j in row - nn:  # ... and otherwise only to cells that have it among theirs
            assert i in set(np.argsort(D[j])[1:k].tolist())


@pytest.mark.parametrize("protocol", ["fast", "study"])
def test_protocols_recover_well_separated_blobs(protocol):
    X, y = _blobs(7)
    res = leiden_tune(X, k_grid=(10, 15), resolutions=(0.3, 1.0), protocol=protocol, n_jobs=1)
    assert res.protocol == protocol and res.bound_met
    assert adjusted_rand_score(y, res.clusters) == pytest.approx(1.0)
    ok = res.grid[res.grid.eligible]
    assert res.silhouette == pytest.approx(ok.silhouette.max())
    assert res.silhouette == pytest.approx(silhouette(X, res.clusters))
    assert (ok.n_clusters > 5).all()


@pytest.mark.parametrize("protocol", ["fast", "study"])
def test_bound_is_strict_even_against_the_best_silhouette(protocol):
    # five tight blobs: the 5-cluster partition has the best silhouette, but <= 5 clusters are never chosen
    X, y = _blobs(5, n=200, std=0.3)
    res = leiden_tune(X, k_grid=(10,), resolutions=(0.1, 0.5, 2.0, 4.0), protocol=protocol, n_jobs=1)
    five = res.grid[res.grid.n_clusters == 5]
    assert len(five) and five.silhouette.max() > res.grid[res.grid.n_clusters > 5].silhouette.max()
    assert res.bound_met and np.unique(res.clusters).size > 5
    assert not res.grid.loc[res.grid.n_clusters <= 5, "eligible"].any()
    # no grid point above the bound: said so, and the clustering with the most clusters is kept
    with pytest.warns(UserWarning, match="bound_met=False"):
        low = leiden_tune(X, k_grid=(10,), resolutions=(0.1, 0.5), protocol=protocol, n_jobs=1)
    assert not low.bound_met and np.unique(low.clusters).size == low.grid.n_clusters.max() <= 5


def test_multiplex_bound_reported_in_summary_json(tmp_path):
    # two views of 4 groups: no weight gives more than 5 clusters; before, the multiplex kept 4 with only a warning
    X, y = _blobs(4, n=160, std=0.5)
    Y = X[:, ::-1] + np.random.default_rng(0).normal(scale=0.1, size=X.shape)
    with pytest.warns(UserWarning, match="bound_met=False"):
        mx = multiplex_leiden(X, Y, k=(10, 10), resolution=(0.5, 0.5), weights=(0.3, 0.7))
    assert not mx.bound_met and (mx.grid.n_clusters <= 5).all()
    cfg = EvalConfig(k_grid=(10,), resolutions=(0.3, 0.5), multiplex_weights=(0.3, 0.7), **ONLY_CLUSTERING)
    with pytest.warns(UserWarning):
        res = evaluate_spaces({"A": X, "B": Y}, y.astype(str), config=cfg, multiplex=[("A", "B")])
    write_results(res, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["multiplex"]["A+B"]["bound_met"] is False and s["multiplex"]["A+B"]["min_clusters"] == 5
    assert s["feature_spaces"]["A"]["clustering"]["bound_met"] is False
    assert s["feature_spaces"]["A"]["clustering"]["protocol"] == "fast"


def test_study_multiplex_uses_each_spaces_tuning_and_the_weight_grid():
    X, y = _blobs(7, n=210)
    noise = np.random.default_rng(1).normal(size=(210, 4))
    a = leiden_tune(X, k_grid=(15,), resolutions=(0.5,), protocol="study", n_jobs=1)
    b = leiden_tune(noise, k_grid=(10,), resolutions=(1.0,), protocol="study", n_jobs=1)
    mx = multiplex_leiden(X, noise, k=(a.k, b.k), resolution=(a.resolution, b.resolution), protocol="study",
                          graphs=(a.graphs[a.k], b.graphs[b.k]), n_jobs=-1)
    assert mx.protocol == "study" and len(mx.grid) == 19 and mx.bound_met
    # the informative space should carry the clustering: heavy weight on it, the blobs recovered
    assert mx.weight >= 0.5 and adjusted_rand_score(y, mx.clusters) > 0.9
    best = mx.grid[mx.grid.eligible].silhouette.max()
    assert mx.silhouette == pytest.approx(best)
    assert mx.silhouette == pytest.approx((silhouette(X, mx.clusters) + silhouette(noise, mx.clusters)) / 2)


def test_cli_protocol_study(tmp_path):
    from typer.testing import CliRunner

    from stmorph.cli import app

    X, y = _blobs(7, n=140)
    ids = [f"c{i}" for i in range(len(y))]
    pd.DataFrame(X, index=ids).to_csv(tmp_path / "f.csv", index_label="cell")
    pd.DataFrame({"cell": ids, "label": [f"t{v}" for v in y]}).to_csv(tmp_path / "l.csv", index=False)
    args = ["evaluate", "--features", f"A={tmp_path / 'f.csv'}", "--labels", str(tmp_path / "l.csv"),
            "--n-trees", "10", "--permutations", "9", "--permdisp-test", "centroid", "--no-figures", "--no-report"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--protocol", "study"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    cl = s["feature_spaces"]["A"]["clustering"]
    assert cl["protocol"] == "study" and cl["k"] in STUDY_K_GRID and cl["bound_met"] is True
    assert cl["ari"] == pytest.approx(1.0)
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o2"), "--protocol", "scanpy"])
    assert bad.exit_code != 0


def test_study_protocol_refuses_igraph_backend():
    X, y = _blobs(7, n=100)
    cfg = EvalConfig(protocol="study", leiden_backend="igraph", **ONLY_CLUSTERING)
    with pytest.raises(StmorphInputError, match="study"):
        evaluate_spaces({"A": X}, y.astype(str), config=cfg)


# -- the DE panel leak ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noise_genes():
    """3,000 noise genes (Poisson counts, normalised), 4 labels of 15 cells unrelated to them: any accuracy above
    chance (0.25) is selection bias."""
    from stmorph.pp import normalize_counts

    counts = np.random.default_rng(0).poisson(50.0, size=(60, 3000)).astype(float)
    return counts, normalize_counts(counts), np.repeat(["a", "b", "c", "d"], 15)


def test_de_panel_inside_folds_removes_the_leak(noise_genes):
    _, X, y = noise_genes
    panel = de_gene_columns(X, y)
    assert [f"g{j}" for j in panel] == de_gene_subset(X, [f"g{j}" for j in range(3000)], y)
    leaky = rf_classification(X[:, panel], y, n_trees=100, n_jobs=1)
    inside = rf_classification(X, y, n_trees=100, n_jobs=1, select=de_gene_columns)
    assert inside.balanced_accuracy < 0.25 + 0.1  # chance: nothing to learn
    assert leaky.balanced_accuracy - inside.balanced_accuracy > 0.15  # the panel saw the test labels
    seen = []

    def spy(Xtr, ytr):
        seen.append(len(ytr))
        return de_gene_columns(Xtr, ytr)

    rf_classification(X, y, n_trees=5, n_jobs=1, select=spy)
    assert seen == [48] * 5  # chosen from the 4/5 training cells of each fold only


def test_evaluate_spaces_reports_leaky_and_fold_internal(noise_genes):
    _, X, y = noise_genes
    panel = de_gene_columns(X, y)
    cfg = EvalConfig(n_trees=50, rf_n_jobs=1, run_permanova=False, run_permdisp=False, run_clustering=False)
    res = evaluate_spaces({"DE": X[:, panel]}, y, config=cfg, fold_panels={"DE": (X, de_gene_columns)})
    c = res.summary["feature_spaces"]["DE"]["classification"]
    assert c["panel_selection"] == "inside each training fold"
    assert c["leakage"] == pytest.approx(c["balanced_accuracy_leaky"] - c["balanced_accuracy"])
    assert c["leakage"] > 0.15 and c["balanced_accuracy"] < 0.35
    with pytest.raises(StmorphInputError):
        evaluate_spaces({"DE": X[:, panel]}, y, config=cfg, fold_panels={"nope": (X, de_gene_columns)})


def test_pipeline_de_panel_is_marked_and_classified_inside_folds(tmp_path, noise_genes):
    import anndata as ad

    from stmorph.pipeline._evaluate import evaluate_study
    from stmorph.pipeline._spaces import SpaceContext, build_space
    from stmorph.sample import SpatialSample

    counts, _, y = noise_genes
    a = ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame({"cell_type": y}, index=[f"c{i}" for i in range(60)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(3000)]))
    a.obsm["spatial"] = np.random.default_rng(0).uniform(0, 100, size=(60, 2))
    sample = SpatialSample(adata=a)
    ctx = SpaceContext(sample=sample, workdir=tmp_path)
    de = build_space("DE", {"kind": "gene_subset", "method": "de"}, ctx)
    de.to_parquet(tmp_path / "de.parquet")  # as the stage cache stores it
    de = pd.read_parquet(tmp_path / "de.parquet")
    assert de.attrs["stmorph_panel"]["method"] == "de"
    s = evaluate_study(sample, {"DE": de}, out=tmp_path / "ev", figures=False, n_trees=50, rf_n_jobs=1,
                       run_permanova=False, run_permdisp=False, run_clustering=False)
    c = s["feature_spaces"]["DE"]["classification"]
    assert c["panel_selection"] == "inside each training fold" and c["leakage"] > 0.15
