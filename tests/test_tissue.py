"""Tests of the synthetic tissue simulator and its Baysor / Xenium writers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage, stats

from stmorph import SpatialSample, StmorphInputError
from stmorph.datasets import demo_tissue, synthetic_tissue, write_baysor_layout, write_xenium_layout
from stmorph.datasets._layouts import assign_types, make_layout, place_cells
from stmorph.datasets._tissue import MORPHOLOGY_FEATURES, defocus_stack


@pytest.fixture(scope="module")
def tissue():
    """A small tissue with its cell and nucleus label images."""
    return synthetic_tissue(300, n_types=6, n_genes=40, random_state=3, return_masks="both")


def _anova(values: np.ndarray, groups: np.ndarray) -> float:
    return float(stats.f_oneway(*[values[groups == g] for g in np.unique(groups)]).pvalue)


def _log_norm(X: np.ndarray) -> np.ndarray:
    return np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 50)


def _nucleus_mean_dapi(sample: SpatialSample, nuc: np.ndarray) -> np.ndarray:
    dapi = sample.images["DAPI"].read().astype(np.float64)
    n = sample.n_cells + 1
    return np.bincount(nuc.ravel(), dapi.ravel(), n)[1:] / np.bincount(nuc.ravel(), minlength=n)[1:]


# -- structure and determinism ---------------------------------------------------------------------------------
def test_sample_structure(tissue):
    s, label, nuc = tissue
    a = s.adata
    assert a.shape == (300, 40)
    assert isinstance(a.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert list(a.obs["cell_type"].cat.categories) == [f"type_{k}" for k in range(6)]
    assert a.obs["cell_type"].nunique() == 6
    assert np.array_equal(a.X, np.rint(a.X)) and a.X.min() >= 0
    assert a.obsm["spatial"].shape == (300, 2)
    m = s.molecules
    assert list(m.columns) == ["x", "y", "z", "gene", "cell_id", "in_nucleus"]
    assert list(m["gene"].cat.categories) == list(a.var_names)
    assert m["cell_id"].isna().sum() > 0  # background molecules
    assert set(s.images) == {"DAPI", "membrane"}
    for img in s.images.values():
        assert img.dtype == np.uint16 and img.shape == label.shape
    assert s.pixel_size == 0.5
    assert s.provenance["reader"] == "synthetic_tissue"
    info = a.uns["synthetic_tissue"]
    assert info["morphology_only_groups"] == [["type_0", "type_4"]]
    assert info["expression_only_groups"] == [["type_1", "type_5"]]
    assert label.dtype == np.int32 and label.max() == 300 and nuc.max() == 300
    # centroids are the mask centroids
    rows, cols = np.nonzero(label == 17)
    assert np.allclose(a.obsm["spatial"][16], [cols.mean(), rows.mean()])


def test_deterministic_and_seed_dependent():
    kw = dict(n_cells=120, n_types=4, n_genes=20)
    s1, s2, s3 = synthetic_tissue(**kw, random_state=7), synthetic_tissue(**kw, random_state=7), synthetic_tissue(
        **kw, random_state=8
    )
    assert np.array_equal(s1.adata.X, s2.adata.X)
    pd.testing.assert_frame_equal(s1.molecules, s2.molecules)
    for ch in ("DAPI", "membrane"):
        assert np.array_equal(s1.images[ch].read(), s2.images[ch].read())
    assert np.array_equal(s1.centroids, s2.centroids)
    assert not np.array_equal(s1.centroids, s3.centroids)
    assert s1.images["DAPI"].shape != s3.images["DAPI"].shape or not np.array_equal(
        s1.images["DAPI"].read(), s3.images["DAPI"].read()
    )
    # a generator works as random_state too, and draws from it only
    s4 = synthetic_tissue(**kw, random_state=np.random.default_rng(7))
    assert np.array_equal(s4.adata.X, s1.adata.X)


def test_design_random_state_shares_the_types_across_tissues():
    """Two tissues of one design are other cells of the same types: a classifier of one labels the other."""
    from sklearn.neighbors import NearestCentroid

    kw = dict(n_cells=300, n_types=4, n_genes=30, morphology_only_types=0)  # every type has its own expression
    a = synthetic_tissue(**kw, random_state=1, design_random_state=11)
    b = synthetic_tissue(**kw, random_state=2, design_random_state=11)
    c = synthetic_tissue(**kw, random_state=2)  # the programs drawn from random_state: other types
    ia, ib, ic = (s.adata.uns["synthetic_tissue"] for s in (a, b, c))
    assert np.array_equal(ia["expression_profile"], ib["expression_profile"])
    assert not np.array_equal(ia["expression_profile"], ic["expression_profile"])
    assert ia["params"]["design_random_state"] == 11 and "design_random_state" not in ic["params"]
    assert not np.array_equal(a.centroids[:50], b.centroids[:50])

    def log_norm(s):
        x = np.asarray(s.adata.X, dtype=float)
        return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 100)

    def acc(train, test):
        clf = NearestCentroid().fit(log_norm(train), train.adata.obs["cell_type"].astype(str))
        return float(np.mean(clf.predict(log_norm(test)) == test.adata.obs["cell_type"].astype(str).to_numpy()))

    # measured: 0.98 across the two tissues of one design, 0.98 within one; 0.31 across designs
    assert acc(a, b) > 0.9  # the same types: tissue a's centroids label tissue b
    assert acc(a, c) < 0.6  # type names alone mean nothing across designs
    # without design_random_state nothing changes: the same draws as before
    d = synthetic_tissue(**kw, random_state=2)
    assert np.array_equal(d.adata.X, c.adata.X)


# -- transcripts -------------------------------------------------------------------------------------------------
def test_counts_equal_molecules(tissue):
    s = tissue[0]
    m = s.molecules.dropna(subset=["cell_id"])
    tab = pd.crosstab(pd.Categorical(m["cell_id"], categories=s.cell_ids), m["gene"], dropna=False)
    assert np.array_equal(tab.to_numpy(), s.adata.X.astype(np.int64))
    # via the data model's index as well
    idx = s.molecule_index()
    assert np.array_equal(idx.counts_per_cell(), s.adata.X.sum(1).astype(np.int64))
    # background molecules: about background_fraction of the assigned ones
    n_bg = s.molecules["cell_id"].isna().sum()
    assert n_bg == round(0.02 * len(m))


def test_molecules_inside_their_cell(tissue):
    s, label, nuc = tissue
    m = s.molecules
    assigned = m["cell_id"].notna().to_numpy()
    col = np.floor(m["x"].to_numpy(np.float64) + 0.5).astype(int)
    row = np.floor(m["y"].to_numpy(np.float64) + 0.5).astype(int)
    pos = pd.Index(s.cell_ids).get_indexer(m["cell_id"][assigned].astype(str))
    assert np.array_equal(label[row[assigned], col[assigned]], pos + 1)
    assert np.array_equal(m["in_nucleus"].to_numpy()[assigned], nuc[row[assigned], col[assigned]] > 0)
    # nucleus bias: more molecules in nuclei than the nuclear area share alone would give
    share_area = (s.adata.obs["nucleus_area"] / s.adata.obs["cell_area"]).mean()
    assert m["in_nucleus"][assigned].mean() > share_area + 0.1
    z = m["z"].to_numpy()
    assert z.min() >= 0 and z.max() <= 2 * 1.5 + 1e-6


# -- layout ----------------------------------------------------------------------------------------------------------
def test_cells_do_not_overlap_and_nuclei_inside(tissue):
    s, label, nuc = tissue
    obs = s.adata.obs
    # one label per pixel by construction; every cell present, in one connected piece, sized 20-50 px across
    assert np.array_equal(np.bincount(label.ravel(), minlength=301)[1:], obs["cell_area"].to_numpy())
    assert (obs["cell_area"] > 0).all()
    for i, sl in enumerate(ndimage.find_objects(label)):
        assert ndimage.label(label[sl] == i + 1)[1] == 1
    diam = np.sqrt(4 * obs["cell_area"] / np.pi)
    assert 20 <= diam.median() <= 40 and diam.min() > 12 and diam.max() < 60
    # nuclei lie inside their own cell and are smaller
    inside = nuc > 0
    assert np.array_equal(nuc[inside], label[inside])
    assert (obs["nucleus_area"] > 0).all() and (obs["nucleus_area"] < obs["cell_area"]).all()
    # dart throwing kept the seeds apart (centroids move a little from the seeds, so check the radii sum loosely)
    r = obs["true_cell_radius"].to_numpy()
    xy = s.centroids
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    lim = 0.6 * (r[:, None] + r[None])
    np.fill_diagonal(d, np.inf)
    assert (d > lim).all()


def test_place_cells_minimum_distance():
    rng = np.random.default_rng(1)

    def f(xy, g):
        return np.zeros(len(xy), dtype=int), g.uniform(5, 10, len(xy))

    xy, t, r = place_cells(150, 300, 300, f, rng, min_dist_factor=0.9)
    assert len(xy) == 150
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert (d >= 0.9 * (r[:, None] + r[None]) - 1e-9).all()
    assert (xy[:, 0] >= 0.8 * r).all() and (xy[:, 1] <= 300 - 0.8 * r).all()


def test_layers_layout_orders_types_by_depth(tissue):
    s = tissue[0]
    info = s.adata.uns["synthetic_tissue"]
    y = s.centroids[:, 1]
    t = s.adata.obs["cell_type"].astype(str).to_numpy()
    layer_means = [y[t == k].mean() for k in info["layer_types"]]
    assert np.all(np.diff(layer_means) > 0)  # layer 0 at the top, then down
    for k in info["scattered_types"]:  # scattered types spread over the whole depth
        assert y[t == k].std() > 0.2 * s.images["DAPI"].shape[0]


def test_other_layouts():
    rng = np.random.default_rng(0)
    spec = make_layout("patches", 4, 200, 200, rng)
    t = assign_types(spec, rng.uniform(0, 200, (2000, 2)), rng)
    assert set(np.unique(t)) == {0, 1, 2, 3}
    spec = make_layout("random", 3, 200, 200, rng, proportions=np.array([0.6, 0.3, 0.1]))
    t = assign_types(spec, rng.uniform(0, 200, (5000, 2)), rng)
    assert np.allclose(np.bincount(t) / 5000, [0.6, 0.3, 0.1], atol=0.03)
    s = synthetic_tissue(100, n_types=4, layout="random", morphology_only_types=0, expression_only_types=0)
    assert s.adata.obs["cell_type"].nunique() == 4
    assert s.adata.uns["synthetic_tissue"]["morphology_only_groups"] == []


# -- signal knobs ----------------------------------------------------------------------------------------------------
def test_expression_signal_controls_type_differences(tissue):
    s = tissue[0]
    t = s.adata.obs["cell_type"].cat.codes.to_numpy()
    p = np.array([_anova(col, t) for col in _log_norm(s.adata.X).T])
    markers = s.adata.var["marker_of"].to_numpy() != ""
    assert np.mean(p[markers] < 1e-6) > 0.8
    s0 = synthetic_tissue(300, n_types=6, n_genes=40, expression_signal=0.0, random_state=3)
    t0 = s0.adata.obs["cell_type"].cat.codes.to_numpy()
    p0 = np.array([_anova(col, t0) for col in _log_norm(s0.adata.X).T])
    assert np.sum(p0 < 0.01) <= 3  # ~0.4 expected by chance over 40 genes
    assert stats.kstest(p0, "uniform").pvalue > 0.01  # null p-values are uniform
    info = s0.adata.uns["synthetic_tissue"]
    prof = np.asarray(info["expression_profile"])
    assert np.allclose(prof, prof[0])


def test_morphology_signal_controls_morphology(tissue):
    s, label, nuc = tissue
    t = s.adata.obs["cell_type"].cat.codes.to_numpy()
    assert _anova(s.adata.obs["nucleus_area"].to_numpy(float), t) < 1e-20
    assert _anova(_nucleus_mean_dapi(s, nuc), t) < 1e-20
    s0, _, nuc0 = synthetic_tissue(300, n_types=6, n_genes=40, morphology_signal=0.0, random_state=3,
                                   return_masks="both")
    t0 = s0.adata.obs["cell_type"].cat.codes.to_numpy()
    assert _anova(s0.adata.obs["nucleus_area"].to_numpy(float), t0) > 1e-3
    assert _anova(_nucleus_mean_dapi(s0, nuc0), t0) > 1e-3
    assert _anova(s0.adata.obs["cell_area"].to_numpy(float), t0) > 1e-3
    tm = s0.adata.uns["synthetic_tissue"]["type_morphology"]
    for feat in MORPHOLOGY_FEATURES:
        assert np.allclose(tm[feat], tm[feat][0])


def test_morphology_only_and_expression_only_pairs(tissue):
    s, label, nuc = tissue
    info = s.adata.uns["synthetic_tissue"]
    names = info["type_names"]
    prof = np.asarray(info["expression_profile"])
    tm = info["type_morphology"]
    t = s.adata.obs["cell_type"].cat.codes.to_numpy()
    (a, b), = [[names.index(x) for x in g] for g in info["morphology_only_groups"]]
    assert np.array_equal(prof[a], prof[b]) and info["markers"][names[a]] == info["markers"][names[b]]
    assert max(abs(tm[f][a] - tm[f][b]) / MORPHOLOGY_FEATURES[f][1] for f in MORPHOLOGY_FEATURES) > 0.5
    sel = np.isin(t, [a, b])
    p_genes = np.array([_anova(col, t[sel]) for col in _log_norm(s.adata.X[sel]).T])
    assert np.sum(p_genes < 0.01) <= 3  # counts do not separate the pair
    morph_p = min(_anova(s.adata.obs["nucleus_area"].to_numpy(float)[sel], t[sel]),
                  _anova(_nucleus_mean_dapi(s, nuc)[sel], t[sel]))
    assert morph_p < 1e-6  # morphology does
    (c, d), = [[names.index(x) for x in g] for g in info["expression_only_groups"]]
    assert all(tm[f][c] == tm[f][d] for f in MORPHOLOGY_FEATURES)
    assert not np.allclose(prof[c], prof[d])
    sel = np.isin(t, [c, d])
    p_genes = np.array([_anova(col, t[sel]) for col in _log_norm(s.adata.X[sel]).T])
    assert np.sum(p_genes < 1e-4) >= 4


def test_library_size_independent_of_area_by_default(tissue):
    s = tissue[0]
    r = stats.spearmanr(s.adata.obs["cell_area"], s.adata.X.sum(1))
    assert abs(r.statistic) < 0.2
    s2 = synthetic_tissue(300, n_types=6, n_genes=40, area_scaling=1.0, random_state=3)
    assert stats.spearmanr(s2.adata.obs["cell_area"], s2.adata.X.sum(1)).statistic > 0.4


def test_nb_dispersion_sets_overdispersion():
    s = synthetic_tissue(150, n_types=2, n_genes=10, expression_signal=0.0, library_sd=0.0, mean_counts=200,
                         nb_dispersion=0.0, morphology_only_types=0, expression_only_types=0, random_state=1)
    X = s.adata.X
    assert np.allclose(X.var(0) / X.mean(0), 1.0, atol=0.35)  # Poisson: variance == mean
    s = synthetic_tissue(150, n_types=2, n_genes=10, expression_signal=0.0, library_sd=0.0, mean_counts=200,
                         nb_dispersion=0.5, morphology_only_types=0, expression_only_types=0, random_state=1)
    X = s.adata.X
    alpha = ((X.var(0, ddof=1) - X.mean(0)) / X.mean(0) ** 2).mean()
    assert 0.35 < alpha < 0.65


# -- images -----------------------------------------------------------------------------------------------------------
def test_images_show_nuclei_and_membranes(tissue):
    s, label, nuc = tissue
    dapi = s.images["DAPI"].read().astype(float)
    mem = s.images["membrane"].read().astype(float)
    cyto = (label > 0) & (nuc == 0)
    assert dapi[nuc > 0].mean() > 5 * dapi[cyto].mean()
    edge = ndimage.morphological_gradient(label, size=3) > 0
    interior = ndimage.binary_erosion(label > 0, iterations=4) & ~edge
    assert mem[edge & (label > 0)].mean() > 2 * mem[interior].mean()


def test_defocus_stack_middle_plane_is_the_image():
    img = (np.random.default_rng(0).random((40, 50)) * 1000).astype(np.uint16)
    st = defocus_stack(img, 5)
    assert st.shape == (5, 40, 50) and st.dtype == np.uint16
    assert np.array_equal(st[2], img)
    assert st[0].std() < st[1].std() < st[2].std()


# -- writers ----------------------------------------------------------------------------------------------------------
def test_write_baysor_layout(tissue, tmp_path):
    s = tissue[0]
    out = write_baysor_layout(s, tmp_path / "baysor")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cell_assignment.csv", "dapi_stack.tif", "membrane_stack.tif", "segmentation.csv",
                     "segmentation_cell_stats.csv", "segmentation_counts.tsv"]
    seg = pd.read_csv(out / "segmentation.csv")
    assert list(seg.columns) == ["x", "y", "z", "gene", "cell", "is_noise"]
    assert seg["is_noise"].dtype == bool and seg["is_noise"].any()
    assert (seg.loc[seg["is_noise"], "cell"] == 0).all()
    real = seg[~seg["is_noise"]]
    assert len(real) == len(s.molecules)
    assert (real["cell"] == 0).sum() == s.molecules["cell_id"].isna().sum()
    tab = pd.crosstab(real.loc[real["cell"] > 0, "cell"], real.loc[real["cell"] > 0, "gene"])
    tab = tab.reindex(index=range(1, s.n_cells + 1), columns=s.gene_names, fill_value=0)
    assert np.array_equal(tab.to_numpy(), s.adata.X.astype(int))
    stats_ = pd.read_csv(out / "segmentation_cell_stats.csv")
    assert list(stats_.columns) == ["cell", "x", "y", "n_transcripts", "density", "elongation", "area",
                                    "avg_confidence"]
    assert np.allclose(stats_[["x", "y"]].to_numpy(), s.centroids)
    assert np.array_equal(stats_["n_transcripts"], s.adata.X.sum(1).astype(int))
    counts = pd.read_csv(out / "segmentation_counts.tsv", sep="\t")
    assert counts.columns[0] == "gene" and list(counts.columns[1:]) == [str(i) for i in range(1, s.n_cells + 1)]
    assert np.array_equal(counts.set_index("gene").to_numpy().T, s.adata.X.astype(int))
    lab = pd.read_csv(out / "cell_assignment.csv")
    assert list(lab.columns) == ["cell", "leiden_final"]
    removed = lab["leiden_final"] == "Removed"
    assert removed.sum() == 9  # 3 % of 300
    kept = lab.loc[~removed]
    assert np.array_equal(kept["leiden_final"], s.adata.obs["cell_type"].astype(str).to_numpy()[kept["cell"] - 1])
    for ch, f in (("DAPI", "dapi_stack.tif"), ("membrane", "membrane_stack.tif")):
        st = tifffile.imread(out / f)
        assert st.shape == (3, *s.images[ch].shape) and st.dtype == np.uint16
        assert np.array_equal(st[1], s.images[ch].read())


def test_write_xenium_layout(tissue, tmp_path):
    s = tissue[0]
    out = write_xenium_layout(s, tmp_path / "xenium", origin_um=(100.0, 50.0))
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_boundaries.parquet", "cell_types.csv", "cells.csv.gz", "cells.parquet", "cells.zarr.zip",
        "experiment.xenium", "morphology_focus", "morphology_mip.tif", "nucleus_boundaries.parquet",
        "transcripts.csv.gz"]
    tx = pd.read_csv(out / "transcripts.csv.gz")
    assert list(tx.columns) == ["transcript_id", "cell_id", "overlaps_nucleus", "feature_name", "x_location",
                                "y_location", "z_location", "qv"]
    assert tx["transcript_id"].is_unique
    assert tx["qv"].between(20, 40).all()
    ctrl = tx["feature_name"].str.startswith(("NegControlProbe_", "BLANK_"))
    assert tx.loc[ctrl, "feature_name"].str.startswith("NegControlProbe_00001").any()
    assert (tx["feature_name"] == "BLANK_0001").any()
    genes = tx[~ctrl]
    assert len(genes) == len(s.molecules)
    assert (genes["cell_id"] == "UNASSIGNED").sum() == s.molecules["cell_id"].isna().sum()
    assert np.allclose((genes["x_location"].to_numpy() - 100.0) / 0.5, s.molecules["x"], atol=1e-3)
    assert np.allclose((genes["y_location"].to_numpy() - 50.0) / 0.5, s.molecules["y"], atol=1e-3)
    assert np.array_equal(genes["overlaps_nucleus"].to_numpy(), s.molecules["in_nucleus"].to_numpy().astype(int))
    cells = pd.read_csv(out / "cells.csv.gz")
    assert list(cells.columns) == ["cell_id", "x_centroid", "y_centroid", "transcript_counts",
                                   "control_probe_counts", "total_counts", "cell_area", "nucleus_area"]
    assert list(cells["cell_id"]) == list(s.cell_ids)
    assert np.allclose(cells["x_centroid"], 100.0 + 0.5 * s.centroids[:, 0])
    assert np.array_equal(cells["transcript_counts"], s.adata.X.sum(1).astype(int))
    assert cells["control_probe_counts"].sum() == ctrl.sum() - (tx.loc[ctrl, "cell_id"] == "UNASSIGNED").sum()
    assert np.allclose(cells["cell_area"], 0.25 * s.adata.obs["cell_area"])
    # per-cell gene counts from the transcripts (controls excluded) equal the sample's counts
    g = genes[genes["cell_id"] != "UNASSIGNED"]
    tab = pd.crosstab(g["cell_id"], g["feature_name"]).reindex(index=s.cell_ids, columns=s.gene_names, fill_value=0)
    assert np.array_equal(tab.to_numpy(), s.adata.X.astype(int))
    assert json.loads((out / "experiment.xenium").read_text())["pixel_size"] == 0.5
    assert np.array_equal(tifffile.imread(out / "morphology_mip.tif"), s.images["DAPI"].read())
    ct = pd.read_csv(out / "cell_types.csv")
    assert list(ct.columns) == ["cell_id", "cell_type"]
    assert np.array_equal(ct["cell_type"], s.adata.obs["cell_type"].astype(str))


def test_writers_refuse_overwrite_and_are_atomic(tissue, tmp_path, monkeypatch):
    s = synthetic_tissue(60, n_types=4, n_genes=12, random_state=0)
    target = tmp_path / "x"
    write_xenium_layout(s, target)
    with pytest.raises(FileExistsError):
        write_xenium_layout(s, target)
    with pytest.raises(FileExistsError):
        write_baysor_layout(s, target)
    write_baysor_layout(s, target, overwrite=True)
    assert (target / "segmentation.csv").exists() and not (target / "transcripts.csv.gz").exists()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError):
        write_baysor_layout(s, tmp_path / "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # nothing half-written left behind


# -- persistence, demo, bad input ---------------------------------------------------------------------------------------
def test_sample_round_trips_through_write(tissue, tmp_path):
    s = tissue[0]
    s.write(tmp_path / "s.stmorph")
    r = SpatialSample.read(tmp_path / "s.stmorph")
    assert np.array_equal(r.adata.X, s.adata.X)
    assert np.array_equal(r.images["DAPI"].read(), s.images["DAPI"].read())
    assert [list(p) for p in r.adata.uns["synthetic_tissue"]["morphology_only_groups"]] == [["type_0", "type_4"]]


def test_demo_tissue_cached_copies():
    a, b = demo_tissue(), demo_tissue()
    assert a.n_cells == 400 and a.name == "demo_tissue"
    assert a.images["DAPI"].read() is b.images["DAPI"].read()
    a.adata.obs["x"] = 1
    assert "x" not in b.adata.obs
    assert np.array_equal(a.adata.X, b.adata.X)


@pytest.mark.parametrize(
    "kw, column",
    [
        (dict(n_types=3, morphology_only_types=1, expression_only_types=1), "morphology_only_types"),
        (dict(layout="spiral"), "layout"),
        (dict(expression_signal=-1.0), "expression_signal"),
        (dict(nucleus_bias=2.0), "nucleus_bias"),
        (dict(image_size=60), "image_size"),
    ],
)
def test_bad_input(kw, column):
    with pytest.raises(StmorphInputError) as err:
        synthetic_tissue(50, **kw)
    assert column in str(err.value)


def test_cli_simulate(tmp_path):
    from typer.testing import CliRunner

    from stmorph.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["simulate", str(tmp_path / "s"), "--n-cells", "60", "--n-types", "4", "--n-genes", "12",
                              "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "morphology-only pairs" in res.output
    s = SpatialSample.read(tmp_path / "s")
    ref = synthetic_tissue(60, 4, 12, random_state=2)
    assert np.array_equal(s.adata.X, ref.adata.X)
    res = runner.invoke(app, ["simulate", str(tmp_path / "b"), "--as", "baysor", "--n-cells", "60", "--n-types", "4",
                              "--z-planes", "5"])
    assert res.exit_code == 0, res.output
    assert tifffile.imread(tmp_path / "b" / "dapi_stack.tif").shape[0] == 5
    res = runner.invoke(app, ["simulate", str(tmp_path / "b"), "--as", "baysor"])
    assert res.exit_code != 0  # exists, no --overwrite


def test_default_groups_adapt_to_few_types():
    s = synthetic_tissue(60, n_types=2, n_genes=10)
    info = s.adata.uns["synthetic_tissue"]
    assert info["morphology_only_groups"] == [["type_0", "type_1"]] and info["expression_only_groups"] == []
    prof = np.asarray(info["expression_profile"])
    assert np.array_equal(prof[0], prof[1])
    s = synthetic_tissue(40, n_types=1, n_genes=10)
    assert s.adata.uns["synthetic_tissue"]["morphology_only_groups"] == []


def test_pairs_are_separable_by_the_right_modality_only(tissue):
    """Cross-validated balanced accuracy: image features separate the morphology-only pair, counts do not;
    the reverse holds for the expression-only pair."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    s, label, nuc = tissue
    n = s.n_cells + 1
    dapi = s.images["DAPI"].read().astype(float)
    mem = s.images["membrane"].read().astype(float)

    def mean_by(img, lab):
        return np.bincount(lab.ravel(), img.ravel(), n)[1:] / np.maximum(np.bincount(lab.ravel(), minlength=n)[1:], 1)

    m_dapi = mean_by(dapi, nuc)
    cv_dapi = np.sqrt(np.maximum(mean_by(dapi**2, nuc) - m_dapi**2, 0)) / m_dapi
    feats = np.column_stack([s.adata.obs["nucleus_area"], s.adata.obs["cell_area"], m_dapi, cv_dapi, mean_by(mem, label)])
    t = s.adata.obs["cell_type"].astype(str).to_numpy()
    info = s.adata.uns["synthetic_tissue"]
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    acc = {}
    for kind in ("morphology_only_groups", "expression_only_groups"):
        sel = np.isin(t, info[kind][0])
        X = _log_norm(s.adata.X[sel])
        acc[kind] = (
            cross_val_score(RandomForestClassifier(100, random_state=0), feats[sel], t[sel], cv=cv,
                            scoring="balanced_accuracy").mean(),
            cross_val_score(LogisticRegression(C=0.1, max_iter=2000), X, t[sel], cv=cv,
                            scoring="balanced_accuracy").mean(),
        )
    img, cnt = acc["morphology_only_groups"]
    assert img > 0.9 and cnt < 0.7
    img, cnt = acc["expression_only_groups"]
    assert img < 0.7 and cnt > 0.9
