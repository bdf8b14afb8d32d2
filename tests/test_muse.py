"""Tests of MUSE: simulator, loss terms against hand computations, training, AnnData/MuData API, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist
from sklearn.metrics import adjusted_rand_score

from stmorph import StmorphInputError
from stmorph.datasets import simulate_multimodal
from stmorph.models.muse import (
    MUSE,
    PRESETS,
    MuseModule,
    batch_hard_triplet_loss,
    batch_hard_triplet_losses,
    dense_reconstruction,
    estimate_margin,
    get_schedule,
    initial_labels,
    joint_initial_labels,
    muse_fit_predict,
    muse_loss,
    pairwise_distances,
    partition_silhouette,
    silhouette_weights,
    zero_inflated_reconstruction,
)

TINY = dict(n_epochs_warmup=3, n_epochs_triplet_init=3, n_epochs=3, cluster_update_every=2, n_threads=1, k=10)


@pytest.fixture(scope="module")
def tiny_mdata():
    return simulate_multimodal(n_clusters=4, n_cells=150, n_features=(30, 40), latent_dim=8, random_state=0)


# -- simulator -----------------------------------------------------------------------------------------------
def test_simulator_shapes_and_reproducibility():
    a = simulate_multimodal(n_clusters=6, n_cells=300, n_features=(40, 50), random_state=3)
    b = simulate_multimodal(n_clusters=6, n_cells=300, n_features=(40, 50), random_state=3)
    c = simulate_multimodal(n_clusters=6, n_cells=300, n_features=(40, 50), random_state=4)
    assert a["rna"].shape == (300, 40) and a["morph"].shape == (300, 50)
    assert np.array_equal(a["rna"].X, b["rna"].X) and np.array_equal(a["morph"].X, b["morph"].X)
    assert not np.array_equal(a["rna"].X, c["rna"].X)
    assert a.obs["true_cluster"].dtype.name == "category"
    assert set(a.obs["true_cluster"].astype(int)) == set(range(6))
    # transcripts: non-negative; morphology in (0, 1) before dropout, uniform dropout at rate decay=0.1
    assert a["rna"].X.min() >= 0
    full = a["morph"].layers["full"]
    assert full.min() > 0 and full.max() < 1
    assert abs((a["morph"].X == 0).mean() - 0.1) < 0.01


def test_simulator_merging_structure():
    md = simulate_multimodal(n_clusters=10, n_cells=2000, n_features=(20, 20), merge_prob=1.0, random_state=0)
    true = md.obs["true_cluster"].astype(int).to_numpy()
    la = md["rna"].obs["sim_label"].astype(int).to_numpy()
    lb = md["morph"].obs["sim_label"].astype(int).to_numpy()
    # merge_prob=1: modality a merges all of clusters 0-4 into one, keeps 5-9; modality b the reverse
    assert len(np.unique(la)) == 6 and len(np.unique(lb)) == 6
    assert len(np.unique(la[true < 5])) == 1 and len(np.unique(lb[true >= 5])) == 1
    # jointly, the two label sets identify every true cluster
    joint = la * 100 + lb
    assert adjusted_rand_score(true, joint) == pytest.approx(1.0)
    none = simulate_multimodal(n_clusters=10, n_cells=500, n_features=(20, 20), merge_prob=0.0, random_state=0)
    assert np.array_equal(none["rna"].obs["sim_label"].astype(int), none.obs["true_cluster"].astype(int))


def test_simulator_dropout_depends_on_expression():
    md = simulate_multimodal(n_clusters=4, n_cells=400, n_features=(100, 20), decay=(0.5, 0.1), random_state=1)
    full = md["rna"].layers["full"]
    dropped = (md["rna"].X == 0) & (full > 0)
    high = full > np.quantile(full[full > 0], 0.9)
    low = (full > 0) & (full < np.quantile(full[full > 0], 0.1))
    assert dropped[low].mean() > dropped[high].mean() + 0.3


def test_simulator_three_modalities_and_errors():
    md = simulate_multimodal(n_clusters=6, n_cells=120, n_features=(10, 12, 14), random_state=0)
    assert list(md.mod) == ["rna", "morph", "morph2"]
    assert md["morph2"].shape == (120, 14)
    with pytest.raises(StmorphInputError, match="n_features"):
        simulate_multimodal(n_features=(10, 12), n_modalities=3)
    with pytest.raises(StmorphInputError, match="merge_prob"):
        simulate_multimodal(merge_prob=1.5)


# -- loss terms ----------------------------------------------------------------------------------------------
def test_reconstruction_losses_by_hand():
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    xh = torch.tensor([[2.0, 5.0, 0.0], [1.0, 1.0, 4.0]])
    # non-zero entries: errors 1, -2, -2 -> norm 3, three entries
    assert zero_inflated_reconstruction(x, xh).item() == pytest.approx(3.0 / 3.0)
    assert dense_reconstruction(x, xh).item() == pytest.approx(np.sqrt(1 + 25 + 4 + 1 + 4 + 16))
    # precomputed float mask and count (the training loop's fast path) give the same value
    mask = (x > 0).float()
    assert zero_inflated_reconstruction(x, xh, mask, mask.sum()).item() == pytest.approx(1.0)
    # squared-norm variants: mean squared error on the non-zero entries (1 + 4 + 4) / 3
    from stmorph.models.muse._train import zero_inflated_mse

    assert zero_inflated_mse(x, xh).item() == pytest.approx(3.0)


def test_pairwise_distances_match_scipy_and_have_finite_gradients():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 5))
    z[3] = z[7]  # a duplicate: zero distance
    zt = torch.tensor(z, requires_grad=True)
    d = pairwise_distances(zt)
    np.testing.assert_allclose(d.detach().numpy(), cdist(z, z), atol=1e-6)
    d.sum().backward()
    assert torch.isfinite(zt.grad).all()


def _triplet_bruteforce(labels, z, margin, positives=None):
    d = cdist(z, z)
    agree = labels if positives is None else positives
    out = []
    for i in range(len(labels)):
        pos = [d[i, j] for j in range(len(labels)) if labels[j] == labels[i] and agree[j] == agree[i] and j != i]
        neg = [d[i, j] for j in range(len(labels)) if labels[j] != labels[i]]
        hp = max(pos) if pos else 0.0
        hn = min(neg) if neg else d[i].max()  # reference: no negative -> row maximum (+ own distance 0)
        out.append(max(hp - hn + margin, 0.0))
    return float(np.mean(out))


def test_batch_hard_triplet_matches_bruteforce():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 4))
    labels = rng.integers(0, 4, size=30)
    labels[0] = 9  # a singleton: no positive
    for margin in (0.0, 0.5, 3.0):
        got = batch_hard_triplet_loss(torch.tensor(labels), torch.tensor(z), margin).item()
        assert got == pytest.approx(_triplet_bruteforce(labels, z, margin), rel=1e-6, abs=1e-9)
    two = batch_hard_triplet_losses(torch.tensor(np.stack([labels, labels % 2])), torch.tensor(z), 1.0)
    assert two[1].item() == pytest.approx(_triplet_bruteforce(labels % 2, z, 1.0), rel=1e-6)
    # a batch with a single label has no negatives: hardest negative = row maximum
    one = np.zeros(30, dtype=int)
    assert batch_hard_triplet_loss(torch.tensor(one), torch.tensor(z), 1.0).item() == pytest.approx(
        _triplet_bruteforce(one, z, 1.0)
    )


def test_agreed_positives_match_bruteforce_and_stop_the_merging_pull():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(40, 3))
    own = rng.integers(0, 3, size=(2, 40))
    combo = own[0] * 3 + own[1]  # cells agree when both modalities' labels agree
    got = batch_hard_triplet_losses(torch.tensor(own), torch.tensor(z), 0.7, min_agree=2)
    for m in range(2):
        assert got[m].item() == pytest.approx(_triplet_bruteforce(own[m], z, 0.7, combo), rel=1e-6)
    # two groups that modality 0 merges and modality 1 separates: MUSE's modality-0 term pulls them together
    # (its hardest positive lies in the other group); with agreed positives that pull is gone, the push stays
    z2 = np.r_[np.zeros((5, 1)), np.ones((5, 1))]
    lab = np.stack([np.zeros(10, int), np.repeat([0, 1], 5)])
    plain = batch_hard_triplet_losses(torch.tensor(lab), torch.tensor(z2), 0.5)
    agreed = batch_hard_triplet_losses(torch.tensor(lab), torch.tensor(z2), 0.5, min_agree=2)
    # modality 0 (one label, no negatives: row maximum 1 + own 0): plain hp = 1 -> relu(1 - 1 + 0.5) = 0.5;
    # agreed hp = 0 -> relu(0 - 1 + 0.5) = 0
    assert plain[0].item() == pytest.approx(0.5) and agreed[0].item() == pytest.approx(0.0)
    assert plain[1].item() == pytest.approx(agreed[1].item()) == pytest.approx(0.0)


def test_label_agreement_keeps_apart_types_that_one_modality_merges():
    # the simulator merges different pairs of cell types in each modality; given each modality's merged labels,
    # MUSE's own positives pull every merged pair together (clusters lost), agreed positives recover all types
    md = simulate_multimodal(n_clusters=12, n_cells=600, n_features=(200, 200), random_state=0)
    xs = [np.asarray(md[m].X, np.float32) for m in md.mod]
    truth = md.obs["true_cluster"].to_numpy()
    merged = [md[m].obs["sim_label"].to_numpy() for m in md.mod]
    assert all(len(np.unique(lab)) < 12 for lab in merged)
    res = {}
    for agree in (False, True):
        out = muse_fit_predict(xs, merged, random_state=0, device="cpu", n_jobs=1, label_agreement=agree,
                               show_progress=False)
        res[agree] = (adjusted_rand_score(truth, out["clusters"]), len(np.unique(out["clusters"])))
        assert out["model"].config()["label_agreement"] is agree
    assert res[True][0] > 0.95 and res[True][1] == 12
    assert res[False][0] < res[True][0] - 0.05 and res[False][1] < 12


def test_margin_estimate():
    z = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # distances sorted: 1 2 3 3 4 5 6 7 9 10 -> top 20% (2): median 9.5; bottom 20%: median 1.5
    assert estimate_margin(z) == pytest.approx(8.0)
    rng = np.random.default_rng(0)
    big = rng.normal(size=(3000, 10))
    d = np.sort(pdist(big))
    top = int(d.size * 0.2)
    exact = np.median(d[-top:]) - np.median(d[:top])
    assert estimate_margin(big) == pytest.approx(exact)
    assert estimate_margin(big, max_cells=800) == pytest.approx(exact, rel=0.03)


def test_label_resolution_sets_the_pseudo_labels_only(tiny_mdata):
    """label_resolution is the resolution of the initial labels (initial_labels at that resolution); the final
    clusters keep `resolution`."""
    xs = [tiny_mdata["rna"].X, tiny_mdata["morph"].X]
    m = MUSE([30, 40], latent_dim=5, random_state=0).fit(xs, label_resolution=3.0, **TINY)
    for x, lab in zip(xs, m.train_info["initial_labels"]):
        np.testing.assert_array_equal(lab, initial_labels(x, k=10, resolution=3.0, random_state=0))
    assert m.train_info["schedule"]["label_resolution"] == 3.0 and m.train_info["resolution"] == 1.0


def test_training_margin_encodes_only_the_subsample():
    """Above margin_max_cells the margin is estimate_margin's subsample of the latent of every cell, although only
    the subsample's cells are encoded (no warm-up: the latent is the initial network's)."""
    import copy

    from stmorph.models.muse import MuseSchedule, encode_all, train_muse

    torch.manual_seed(0)
    net = MuseModule([6, 5], latent_dim=4, n_hidden=16)
    before = copy.deepcopy(net)
    xs = [torch.rand(300, 6), torch.rand(300, 5)]
    lab = [np.arange(300) % 3, np.arange(300) % 2]
    out = train_muse(net, xs, lab, zero_inflated=[False, False], schedule=MuseSchedule(0, 1, 0, 1, 1e-3, 64),
                     cluster_fn=lambda h: np.zeros(len(h), int), margin_max_cells=40, random_state=7)
    z_all, _ = encode_all(before, xs)
    assert out["margin"] == pytest.approx(estimate_margin(z_all, max_cells=40, random_state=7), rel=1e-5)
    assert out["margin"] != pytest.approx(estimate_margin(z_all, max_cells=40, random_state=8), rel=1e-3)


def test_module_shapes_and_total_loss():
    torch.manual_seed(0)
    net = MuseModule([7, 9, 5], latent_dim=6, n_hidden=16)
    xs = [torch.rand(10, 7), torch.rand(10, 9), torch.rand(10, 5)]
    z, hs, recons = net(xs)
    assert z.shape == (10, 6) and [h.shape for h in hs] == [(10, 16)] * 3
    assert [r.shape for r in recons] == [(10, 7), (10, 9), (10, 5)]
    sel = sum(np.linalg.norm(w.detach().numpy()) for w in net.selection)
    assert net.selection_penalty().item() == pytest.approx(sel, rel=1e-5)
    sq = sum(float((w.detach().numpy().astype(np.float64) ** 2).sum()) for w in net.selection)
    assert net.selection_penalty(squared=True).item() == pytest.approx(sq, rel=1e-5)
    labels = torch.tensor(np.random.default_rng(0).integers(0, 3, size=(3, 10)))
    total, terms = muse_loss(net, xs, [True, False, False], labels, 0.7, 5.0, 2.0)
    rec = zero_inflated_reconstruction(xs[0], recons[0]) + dense_reconstruction(xs[1], recons[1])
    rec = rec + dense_reconstruction(xs[2], recons[2])
    trip = sum(batch_hard_triplet_loss(lab, z, 0.7) for lab in labels)
    assert total.item() == pytest.approx((rec + 5.0 * sel + 2.0 * trip).item(), rel=1e-5)
    assert terms["triplet"].item() == pytest.approx(trip.item(), rel=1e-5)


def test_presets():
    ref = PRESETS["reference"]
    assert (ref.n_epochs_warmup, ref.n_epochs_triplet_init, ref.n_epochs, ref.cluster_update_every) == (200, 200, 500, 200)
    assert ref.lr == 1e-4 and ref.batch_size == 64
    assert get_schedule("fast", n_epochs=7).n_epochs == 7
    # the fast preset caps every epoch at 32 batches above 2000 cells; explicit epochs run whole epochs
    fast = PRESETS["fast"]
    assert fast.for_n_cells(2000) == fast
    big = fast.for_n_cells(10_000)
    # the default: 2 warm-up + 20 triplet epochs on the initial labels, no re-clustering stage, lr 1e-3
    assert (big.n_epochs_warmup, big.n_epochs_triplet_init, big.n_epochs, big.lr) == (2, 20, 0, 1e-3)
    assert big.max_batches_per_epoch == 32
    assert get_schedule("fast", n_epochs=7).for_n_cells(10_000).max_batches_per_epoch is None
    assert ref.for_n_cells(10_000) == ref
    # pseudo-labels at phenograph's resolution in both presets (finer on request)
    assert ref.label_resolution == 1.0 and fast.label_resolution == 1.0
    assert get_schedule("fast", label_resolution=0.8).label_resolution == 0.8
    with pytest.raises(StmorphInputError, match="preset"):
        get_schedule("slow")


# -- training ------------------------------------------------------------------------------------------------
def test_fit_is_deterministic_and_learns(tiny_mdata):
    xs = [tiny_mdata["rna"].X, tiny_mdata["morph"].X]
    a = muse_fit_predict(xs, latent_dim=10, random_state=1, **TINY)
    b = muse_fit_predict(xs, latent_dim=10, random_state=1, **TINY)
    np.testing.assert_array_equal(a["latent"], b["latent"])
    np.testing.assert_array_equal(a["clusters"], b["clusters"])
    hist = a["model"].train_info["history"]
    assert len(hist) == 9 and [h["stage"] for h in hist][:3] == ["warmup"] * 3
    assert hist[2]["reconstruction"] < hist[0]["reconstruction"]
    assert hist[0]["triplet"] == 0 and hist[3]["triplet"] > 0
    assert a["model"].train_info["margin"] > 0
    assert a["model"].train_info["n_label_updates"] == 2  # after the triplet stage and after main epoch 0
    c = muse_fit_predict(xs, latent_dim=10, random_state=2, **TINY)
    assert not np.array_equal(a["latent"], c["latent"])
    stages = a["model"].train_info["time_stages_s"]
    assert set(stages) == {"warmup", "margin", "triplet_init", "main", "recluster"}
    assert all(v >= 0 for v in stages.values())


@pytest.mark.slow
def test_large_n_path_on_small_data():
    """The large-n code path, forced at 1,500 cells: epochs capped at the batches of 500 cells (8 of 23) and
    pseudo-labels clustered on a 500-cell subsample, the rest propagated by nearest centroid."""
    from stmorph.models.muse import MuseSchedule

    md = simulate_multimodal(n_clusters=4, n_cells=1500, n_features=(300, 300), random_state=0)
    xs = [md["rna"].X, md["morph"].X]
    sched = MuseSchedule(4, 8, 20, 6, 1e-3, 64, reference_n_cells=500)
    assert sched.for_n_cells(1500).max_batches_per_epoch == 8
    out = muse_fit_predict(xs, latent_dim=20, preset=sched, label_max_cells=500, n_threads=1, random_state=0)
    info = out["model"].train_info
    assert info["schedule"]["max_batches_per_epoch"] == 8 and info["label_max_cells"] == 500
    assert info["n_label_updates"] == 5
    assert all(lab.shape == (1500,) for lab in out["labels"])
    # measured 0.674 (seed 0); each modality's initial labels reach ARI 0.71 / 0.68 here; random labels give ~0
    truth = md.obs["true_cluster"].to_numpy()
    assert adjusted_rand_score(truth, out["clusters"]) > 0.5


@pytest.mark.slow
def test_recovers_simulated_clusters():
    """Small MUSE simulation (4 clusters, 500 cells): MUSE finds the clusters better than the transcripts alone."""
    md = simulate_multimodal(n_clusters=4, n_cells=500, n_features=(300, 300), random_state=0)
    truth = md.obs["true_cluster"].to_numpy()
    out = muse_fit_predict([md["rna"].X, md["morph"].X], n_threads=1)
    ari = adjusted_rand_score(truth, out["clusters"])
    rna_alone = adjusted_rand_score(truth, out["model"].train_info["initial_labels"][0])
    assert ari > 0.65, ari
    assert ari > rna_alone + 0.05, (ari, rna_alone)


def test_user_labels_and_validation(tiny_mdata):
    xs = [tiny_mdata["rna"].X, tiny_mdata["morph"].X]
    given = [tiny_mdata["rna"].obs["sim_label"].to_numpy(), None]
    out = muse_fit_predict(xs, given, latent_dim=6, **TINY)
    lab0 = out["model"].train_info["initial_labels"][0]
    assert adjusted_rand_score(given[0], lab0) == pytest.approx(1.0)
    neg = [xs[0] - 1.0, xs[1]]
    with pytest.raises(StmorphInputError, match="negative"):
        muse_fit_predict(neg, latent_dim=6, **TINY)
    # negative values are fine when no modality is zero-inflated
    muse_fit_predict(neg, latent_dim=6, zero_inflated=[False, False], **TINY)
    with pytest.raises(StmorphInputError, match="cells"):
        muse_fit_predict([xs[0], xs[1][:-1]], latent_dim=6, **TINY)
    with pytest.raises(StmorphInputError, match="NaN"):
        bad = xs[1].copy()
        bad[0, 0] = np.nan
        muse_fit_predict([xs[0], bad], latent_dim=6, **TINY)
    with pytest.raises(StmorphInputError, match="shape"):
        muse_fit_predict(xs, [np.zeros(3), None], latent_dim=6, **TINY)


def test_save_load_roundtrip(tmp_path, tiny_mdata):
    xs = [tiny_mdata["rna"].X, tiny_mdata["morph"].X]
    model = MUSE([30, 40], latent_dim=5, random_state=0).fit(xs, **TINY)
    model.save(tmp_path / "m.pt")
    again = MUSE.load(tmp_path / "m.pt", device="cpu")
    np.testing.assert_allclose(model.transform(xs)[0], again.transform(xs)[0], rtol=1e-6)
    assert again.train_info["margin"] == pytest.approx(model.train_info["margin"])
    assert again.label_agreement is True
    with pytest.raises(StmorphInputError, match="not found"):
        MUSE.load(tmp_path / "missing.pt")
    # a model saved before label agreement existed was trained with MUSE's own positives and keeps them
    import json

    meta_path = tmp_path / "m.pt" / "muse.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["label_agreement"]
    meta_path.write_text(json.dumps(meta))
    assert MUSE.load(tmp_path / "m.pt", device="cpu").label_agreement is False


def test_default_keeps_initial_labels_and_separates_three_modalities():
    """The default schedule trains the triplet loss on the initial labels only (no re-clustering of h_m) and
    recovers clusters that each modality sees only in part (9 clusters; each modality merges neighbours within
    its own third of them)."""
    md = simulate_multimodal(n_clusters=9, n_cells=600, n_features=(300, 300, 300), random_state=0)
    truth = md.obs["true_cluster"].to_numpy()
    out = muse_fit_predict([md[m].X for m in md.mod], n_jobs=1, random_state=0)
    info = out["model"].train_info
    assert info["n_label_updates"] == 0 and info["schedule"]["n_epochs"] == 0
    gated = [out["model"].modality_names.index(m) for m in info["gated_modalities"]]
    together = joint_initial_labels([md[m].X for m in md.mod], resolution=info["schedule"]["label_resolution"])
    for m, (last, first) in enumerate(zip(info["last_labels"], info["initial_labels"])):
        np.testing.assert_array_equal(last, together if m in gated else first)
    assert {h["stage"] for h in info["history"]} == {"warmup", "triplet_init"}
    # measured: single modalities (PCA + clustering) 0.58 / 0.45 / 0.65, MUSE 0.91 (with label_resolution=1.5:
    # 1.0, its first modality's 17 labels score below 0 and it trains on the joint labels)
    single = max(adjusted_rand_score(truth, initial_labels(md[m].X, random_state=0)) for m in md.mod)
    joint = adjusted_rand_score(truth, out["clusters"])
    assert single < 0.7 and joint > 0.85 and joint > single + 0.15, (single, joint)


def test_three_modalities():
    md = simulate_multimodal(n_clusters=6, n_cells=150, n_features=(20, 20, 20), latent_dim=8, random_state=0)
    out = muse_fit_predict([md[m].X for m in md.mod], latent_dim=8, **TINY)
    assert out["latent"].shape == (150, 8) and len(out["hidden"]) == 3 and len(out["labels"]) == 3


# -- MuData API and CLI --------------------------------------------------------------------------------------
def test_tl_muse_writes_scverse_keys(tiny_mdata):
    import stmorph.tl as tl

    md = tiny_mdata.copy()
    res = tl.muse(md, latent_dim=6, random_state=0, **TINY)
    assert res is None
    assert md.obsm["X_muse"].shape == (150, 6)
    assert md.obsm["X_muse_rna"].shape == (150, 128) and md.obsm["X_muse_morph"].shape == (150, 128)
    assert md.obs["muse_clusters"].dtype.name == "category"
    assert md.obs["muse_clusters_rna"].dtype.name == "category"
    p = md.uns["muse"]["params"]
    assert p["modalities"] == ["rna", "morph"] and p["zero_inflated"] == [True, False]
    assert md.uns["muse"]["margin"] > 0
    assert p["resolution"] == 1.0 and p["label_resolution"] == 1.0
    fc = md.uns["muse"]["final_clustering"]  # what the final clustering did at this size
    assert fc["n_cells"] == fc["clustered_cells"] == 150 and fc["leiden_iterations"] == -1
    assert not fc["approximate_knn"] and not fc["propagated"] and set(fc["timings_s"]) == {"knn", "graph", "leiden"}
    cp = tl.muse(tiny_mdata, latent_dim=6, key_added="X_m2", cluster_key="c2", copy=True, **TINY)
    assert "X_m2" in cp.obsm and "X_m2" not in tiny_mdata.obsm
    np.testing.assert_allclose(cp.obsm["X_m2"], md.obsm["X_muse"])  # same seed, same result
    with pytest.raises(StmorphInputError, match="not in the MuData"):
        tl.muse(md, ["rna", "protein"], **TINY)
    with pytest.raises(StmorphInputError, match="column"):
        tl.muse(md, init_labels={"rna": "nope"}, **TINY)


def test_cli_muse(tmp_path, tiny_mdata):
    from typer.testing import CliRunner

    from stmorph.cli import app

    src = tmp_path / "in.h5mu"
    tiny_mdata.write_h5mu(src)
    out = tmp_path / "out.h5mu"
    args = ["muse", str(src), "-o", str(out), "--latent-dim", "4", "--epochs", "2", "--warmup-epochs", "2",
            "--triplet-init-epochs", "2", "--k", "10", "--threads", "1", "--model-out", str(tmp_path / "m.pt"),
            "--label-max-cells", "100", "--label-weighting", "gate", "--no-label-agreement"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    import mudata

    back = mudata.read_h5mu(out)
    assert back.obsm["X_muse"].shape == (150, 4) and "muse_clusters" in back.obs
    params = back.uns["muse"]["params"]
    assert params["label_weighting"] == "gate" and int(params["label_max_cells"]) == 100
    assert not bool(params["label_agreement"])
    assert (tmp_path / "m.pt").exists()
    res = CliRunner().invoke(app, args)  # exists, no --overwrite
    assert res.exit_code != 0


# -- label_weighting="silhouette" ----------------------------------------------------------------------------
def _silhouette_by_definition(X, lab):
    """Rousseeuw's silhouette with loops: a(i) mean distance to the own cluster, b(i) lowest mean distance to
    another cluster, s = (b - a) / max(a, b)."""
    s = []
    for i in range(len(X)):
        d = np.sqrt(((X - X[i]) ** 2).sum(axis=1))
        own = lab == lab[i]
        a = d[own].sum() / (own.sum() - 1)
        b = min(d[lab == c].mean() for c in np.unique(lab) if c != lab[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_partition_silhouette_by_definition_and_weights():
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(3), 60)
    # 3 clusters in an 8-dimensional subspace of 40 dimensions: the 10 leading principal components hold all of
    # the data, so the silhouette in them must equal the silhouette in the original space
    L = rng.normal(0, 1, (180, 8)) + 8.0 * np.eye(8)[lab * 2]
    Q, _ = np.linalg.qr(rng.normal(size=(40, 8)))
    X = L @ Q.T
    ref = _silhouette_by_definition(X, lab)
    assert partition_silhouette(X, lab) == pytest.approx(ref, abs=1e-4)
    assert partition_silhouette(X, lab) > 0.5
    assert abs(partition_silhouette(X, rng.permutation(lab))) < 0.05  # random labels: ~0
    sub = partition_silhouette(X, lab, max_cells=90)  # subsample path
    assert sub == pytest.approx(ref, abs=0.1)
    assert partition_silhouette(X, np.zeros(180, int)) == 0.0
    np.testing.assert_allclose(silhouette_weights([0.3, 0.15, -0.2]), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(silhouette_weights([-0.1, -0.2]), [1.0, 1.0])


def test_weighted_triplet_loss_by_hand():
    torch.manual_seed(0)
    net = MuseModule([7, 9], latent_dim=6, n_hidden=16)
    xs = [torch.rand(12, 7), torch.rand(12, 9)]
    labels = torch.tensor(np.random.default_rng(1).integers(0, 3, size=(2, 12)))
    w = torch.tensor([0.25, 1.0])
    total_w, terms_w = muse_loss(net, xs, [True, False], labels, 0.7, 5.0, 2.0, label_weights=w)
    total, _ = muse_loss(net, xs, [True, False], labels, 0.7, 5.0, 2.0)
    z, _ = net.encode(xs)
    t0, t1 = (batch_hard_triplet_loss(lab, z, 0.7).item() for lab in labels)
    assert terms_w["triplet"].item() == pytest.approx(0.25 * t0 + t1, rel=1e-5)
    assert (total - total_w).item() == pytest.approx(2.0 * 0.75 * t0, rel=1e-4)


def test_silhouette_weighting_drops_a_noise_modality():
    """A modality of pure noise gets triplet weight 0 at every (re)clustering; the informative one keeps 1."""
    md = simulate_multimodal(n_clusters=4, n_cells=200, n_features=(30, 40), latent_dim=8, random_state=0)
    noise = np.random.default_rng(0).random((200, 30)).astype(np.float32)
    xs = [noise, md["morph"].X]
    out = muse_fit_predict(xs, latent_dim=10, random_state=0, label_weighting="silhouette", **TINY)
    w = np.array(out["model"].train_info["label_weights"])
    assert w.shape == (3, 2)  # initial labels + 2 re-clusterings, 2 modalities
    assert np.all(w[:, 1] == 1.0)
    assert w[0, 0] < 0.3, w  # initial labels of the noise modality (measured silhouette ~0)
    # "gate" decides once from the signs of the initial silhouettes; uniform noise clustered by Leiden scores
    # slightly above 0 (measured 0.005 here), so a noise modality is kept by the gate: check the rule itself
    gate = muse_fit_predict(xs, latent_dim=10, random_state=0, label_weighting="gate", **TINY)
    info = gate["model"].train_info
    s0 = np.array(info["label_silhouettes"][0])
    np.testing.assert_array_equal(info["label_weights"], [(s0 > 0).astype(float).tolist()] * 3)
    assert len(info["label_silhouettes"]) == 1 and s0[1] > 0.1
    # random user labels on a modality score below 0 (measured -0.02): the gate closes, and that modality trains
    # on the joint labels of both modalities for the whole training (kept at every re-clustering)
    rand = np.random.default_rng(0).integers(0, 4, 200)
    gate2 = muse_fit_predict(xs, [rand, None], latent_dim=10, random_state=0, label_weighting="gate", **TINY)
    info2 = gate2["model"].train_info
    base = muse_fit_predict(xs, latent_dim=10, random_state=0, **TINY)
    assert info2["label_silhouettes"][0][0] < 0
    assert info2["gated_modalities"] == [gate2["model"].modality_names[0]]
    np.testing.assert_array_equal(info2["label_weights"], [[1.0, 1.0]] * 3)
    joint = joint_initial_labels(xs, k=10, random_state=0, resolution=info2["schedule"]["label_resolution"])
    np.testing.assert_array_equal(info2["last_labels"][0], joint)
    assert adjusted_rand_score(joint, rand) < 0.05  # not the random labels
    assert base["model"].train_info["gated_modalities"] == []
    np.testing.assert_array_equal(base["model"].train_info["label_weights"], np.ones((3, 2)))
    with pytest.raises(StmorphInputError):
        MUSE([3, 3], label_weighting="bogus")
    with pytest.raises(StmorphInputError, match="label_agreement"):
        MUSE([3, 3], label_agreement="false")


def test_joint_initial_labels_combine_the_modalities():
    """Modality A splits the cells by one factor, B by another: only the joint labels find all four groups."""
    rng = np.random.default_rng(0)
    f1, f2 = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    a = (f1[:, None] * 6.0 + rng.normal(size=(400, 20))).astype(np.float32)
    b = (f2[:, None] * 60.0 + rng.normal(scale=10.0, size=(400, 30))).astype(np.float32)  # other units
    truth = 2 * f1 + f2
    joint = joint_initial_labels([a, b], k=30, random_state=0)
    assert adjusted_rand_score(truth, joint) > 0.95
    for x in (a, b):  # each alone finds its own factor only (ARI ~0.33 against the four groups)
        assert adjusted_rand_score(truth, initial_labels(x, k=30, random_state=0)) < 0.6
