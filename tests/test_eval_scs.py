"""MUSE's spatial co-localization score (SCS) against a direct transcription of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from stmorph.errors import StmorphInputError
from stmorph.eval import colocalization_score, spatial_colocalization_score


def _scs_by_definition(xy, in_cluster):
    """Bao et al. 2022, Methods: r_ij = 1 / d_ij for every cell pair, pairs ranked by r (descending); walking down
    the list, a within-cluster pair adds r_ij / (sum of r over within-cluster pairs), any other pair subtracts
    1 / (number of other pairs); SCS = the running sum's value of largest absolute deviation from 0. Pairs at equal
    distance are one step; coincident cells use r = 1 / (half the smallest positive neighbour distance)."""
    n = len(xy)
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            pairs.append((float(np.sqrt(((xy[i] - xy[j]) ** 2).sum())), bool(in_cluster[i] and in_cluster[j])))
    positive = [d for d, _ in pairs if d > 0]
    floor = min(positive) / 2

    def r(d):
        return 1.0 / max(d, floor)

    pairs.sort(key=lambda p: p[0])
    r_within = sum(r(d) for d, w in pairs if w)
    n_other = sum(1 for _, w in pairs if not w)
    run, best, k = 0.0, 0.0, 0
    while k < len(pairs):
        e = k
        while e < len(pairs) and pairs[e][0] == pairs[k][0]:
            d, w = pairs[e]
            run += r(d) / r_within if w else -1.0 / n_other
            e += 1
        if abs(run) > abs(best):
            best = run
        k = e
    return best


def test_scs_equals_the_definition_on_random_cells():
    rng = np.random.default_rng(1)
    for _ in range(4):
        xy = rng.uniform(0, 10, size=(30, 2))
        lab = rng.integers(0, 3, size=30)
        for c in range(3):
            assert spatial_colocalization_score(xy, lab == c) == pytest.approx(
                _scs_by_definition(xy, lab == c), abs=1e-12)


def test_scs_ties_and_coincident_cells():
    # a 6 x 5 lattice: many pairs at exactly equal distance (one step of the walk each), plus a duplicated cell
    xy = np.array([(i, j) for i in range(6) for j in range(5)], dtype=float)
    xy = np.vstack([xy, xy[7]])
    for mask in (xy[:, 0] < 2, (xy[:, 0] + xy[:, 1]) % 2 == 0, np.arange(31) % 4 == 0):
        assert spatial_colocalization_score(xy, mask) == pytest.approx(_scs_by_definition(xy, mask), abs=1e-12)


def test_scs_extremes_by_hand():
    # the two closest cells as a cluster: their pair comes first and carries all the within-cluster weight,
    # so the walk jumps to +1 at once; the two farthest cells: every other pair comes first, -1 just before theirs
    xy = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 1.0], [5.0, 4.0], [9.0, 9.0], [2.0, 7.0]])
    assert spatial_colocalization_score(xy, np.array([0, 1])) == pytest.approx(1.0)
    assert spatial_colocalization_score(xy, np.array([0, 4])) == pytest.approx(-1.0)
    assert np.isnan(spatial_colocalization_score(xy, np.array([2])))  # no pair within a one-cell cluster


def test_knot_approximation_within_its_bound():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, size=(1200, 2))
    lab = np.where(xy[:, 0] < 150, "band", rng.choice(["r0", "r1", "r2"], size=1200))
    exact = colocalization_score(xy, lab, permutations=0)
    approx = colocalization_score(xy, lab, permutations=0, max_exact_pairs=0, n_knots=4096)
    assert exact.attrs["method"] == "exact" and approx.attrs["method"] == "knots"
    n_pairs = 1200 * 1199 / 2
    within = exact["n_cells"] * (exact["n_cells"] - 1) / 2
    bound = approx.attrs["max_interval_pairs"] / (n_pairs - within)  # interpolation error of the other-pairs term
    assert (np.abs(exact["scs"] - approx["scs"]) <= bound + 1e-12).all()
    assert bound.max() < 2e-3


def test_permutation_p_values_follow_their_definition():
    rng = np.random.default_rng(2)
    xy = np.vstack([rng.uniform(0, 2, size=(8, 2)), rng.uniform(0, 10, size=(22, 2))])  # 8 cells in one corner
    lab = np.r_[["corner"] * 8, rng.choice(["m1", "m2"], size=22)]
    df = colocalization_score(xy, lab, permutations=40, random_state=5, batch=40)
    # the same permutations, drawn as the function documents: one generator, rows permuted in batches of 40
    perm = np.random.default_rng(5).permuted(np.broadcast_to(np.unique(lab, return_inverse=True)[1], (40, 30)), axis=1)
    cats = np.unique(lab)
    for g, c in enumerate(cats):
        obs = _scs_by_definition(xy, lab == c)
        null = np.array([_scs_by_definition(xy, p == g) for p in perm])
        row = df.set_index("cluster").loc[c]
        assert row["scs"] == pytest.approx(obs, abs=1e-12)
        assert row["p_value"] == pytest.approx((1 + np.sum(null >= obs - 1e-12)) / 41)
    assert df.set_index("cluster").loc["corner", "p_value"] == pytest.approx(1 / 41)  # one region of the tissue
    assert list(df.columns) == ["cluster", "n_cells", "scs", "p_value"] and df["n_cells"].sum() == 30


def test_random_labels_are_not_significant_and_seeds_reproduce():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 10, size=(150, 2))
    lab = rng.choice(["r1", "r2", "r3"], size=150)  # positions carry no label information
    a = colocalization_score(xy, lab, permutations=199, random_state=0)
    assert (a["p_value"] > 0.05).all()
    # a random cell subset still has positive SCS (r favours close pairs): only the permutation null calibrates it
    assert (a["scs"] > 0).all()
    b = colocalization_score(xy, lab, permutations=199, random_state=0, batch=7)
    np.testing.assert_array_equal(a["p_value"], b["p_value"])  # batching does not change the permutations
    two = colocalization_score(xy, lab, permutations=199, alternative="two-sided")
    assert (two["p_value"] >= 1 / 200).all()


def test_bad_inputs():
    xy = np.random.default_rng(0).uniform(size=(10, 2))
    with pytest.raises(StmorphInputError):
        colocalization_score(xy[:5], np.zeros(10))
    with pytest.raises(StmorphInputError):
        colocalization_score(xy, np.zeros(10), alternative="less")
    with pytest.raises(StmorphInputError):
        spatial_colocalization_score(np.where(xy > 0.5, np.nan, xy), np.ones(10, bool))


def test_pipeline_summary_scores_clusters_when_asked(tmp_path):
    import json

    import anndata as ad
    import pandas as pd

    from stmorph.pipeline._evaluate import evaluate_study
    from stmorph.sample import SpatialSample

    rng = np.random.default_rng(0)
    n = 120
    lab = np.repeat(["a", "b", "c", "d", "e", "f"], 20)
    # every type sits in its own stripe of the tissue and has its own features: clusters = types = stripes
    xy = np.c_[np.repeat(np.arange(6), 20) * 10 + rng.uniform(0, 8, n), rng.uniform(0, 50, n)]
    feats = pd.DataFrame(np.eye(6)[np.repeat(np.arange(6), 20)] * 10 + rng.normal(size=(n, 6)),
                         index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(rng.poisson(2, size=(n, 5)).astype(np.float32), obs=pd.DataFrame({"cell_type": lab}, index=feats.index))
    a.obsm["spatial"] = xy
    s = evaluate_study(SpatialSample(adata=a), {"F": feats}, out=tmp_path, figures=False, colocalization=True,
                       run_permanova=False, run_permdisp=False, run_classification=False, k_grid=[10],
                       resolutions=[0.5, 1.0])
    co = json.loads((tmp_path / "summary.json").read_text())["colocalization"]["F"]
    assert co == s["colocalization"]["F"] and len(co) == 6
    assert all(v["p_value"] <= 0.01 and v["scs"] > 0.5 for v in co.values())
    assert (tmp_path / "tables" / "colocalization_F.csv").exists()
