"""Inputs of ``stmorph evaluate``, ``stmorph muse`` and the study config: no silent wrong results (issue 11).

Each test builds its data here (small tables, ``stmorph.datasets`` simulators) and states the wrong result the
old code gave without a word.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from typer.testing import CliRunner

from stmorph.cli import app
from stmorph.errors import StmorphInputError
from stmorph.eval import align_inputs, read_feature_table

FAST = ["--permutations", "9", "--n-trees", "10", "--permdisp-test", "centroid", "--no-figures",
        "--leiden-backend", "igraph"]


def _blobs(n: int = 90, seed: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    X, y = make_blobs(n, centers=3, n_features=4, random_state=seed)
    return X, [f"c{i}" for i in range(n)], [f"t{v}" for v in y]


def _evaluate(args: list[str]):
    return CliRunner().invoke(app, ["evaluate", *args, *FAST])


def _h5ad_with_embedding(path: Path, n: int = 40, ids: list[str] | None = None) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.poisson(2.0, (n, 5)).astype(np.float32),
                   obs=pd.DataFrame(index=ids or [f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(5)]))
    a.obsm["spatial"] = rng.random((n, 2))
    a.obsm["X_ls2_cpu"] = rng.normal(size=(n, 3))
    a.write_h5ad(path)
    return a


# -- 1. an .h5ad's latent in obsm is never silently replaced by X ---------------------------------------------
def test_h5ad_with_embedding_needs_a_key(tmp_path):
    f = tmp_path / "sample_ls2.h5ad"
    a = _h5ad_with_embedding(f)
    with pytest.raises(StmorphInputError, match="X_ls2_cpu") as err:  # old: X (the counts), silently
        read_feature_table(f)
    assert "sample_ls2.h5ad" in str(err.value) and "spatial" not in str(err.value).split("obsm")[1].split("]")[0]
    df = read_feature_table(f"{f}:X_ls2_cpu")
    np.testing.assert_allclose(df.to_numpy(), a.obsm["X_ls2_cpu"])
    assert list(df.index) == list(a.obs_names)
    assert read_feature_table(f, obsm_key="X_ls2_cpu").equals(df)
    assert list(read_feature_table(f"{f}:X").columns) == list(a.var_names)  # X when asked for explicitly
    with pytest.raises(StmorphInputError, match="X_nope"):
        read_feature_table(f"{f}:X_nope")
    del a.obsm["X_ls2_cpu"]  # only `spatial` left: X is unambiguous
    a.write_h5ad(tmp_path / "counts.h5ad")
    assert read_feature_table(tmp_path / "counts.h5ad").shape == (40, 5)


def test_cli_evaluate_h5ad_key(tmp_path):
    X, ids, y = _blobs(60)
    a = ad.AnnData(np.ones((60, 7), np.float32), obs=pd.DataFrame(index=ids))
    a.obsm["X_ls2_cpu"] = X
    a.write_h5ad(tmp_path / "s.h5ad")
    pd.DataFrame({"cell_id": ids, "label": y}).to_csv(tmp_path / "lab.csv", index=False)
    base = ["--labels", str(tmp_path / "lab.csv"), "--out", str(tmp_path / "out")]
    res = _evaluate(["--features", f"LS2={tmp_path / 's.h5ad'}", *base])
    assert res.exit_code != 0 and isinstance(res.exception, StmorphInputError)
    assert "X_ls2_cpu" in str(res.exception) and "s.h5ad" in str(res.exception)
    res = _evaluate(["--features", f"LS2={tmp_path / 's.h5ad'}:X_ls2_cpu", *base])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["feature_spaces"]["LS2"]["n_features"] == 4  # the latent, not the 7 columns of X


def test_config_table_space_reads_obsm_key(tmp_path):
    from stmorph.datasets import synthetic_tissue
    from stmorph.pipeline import SpaceContext, build_space

    sample = synthetic_tissue(n_cells=40, n_types=2, n_genes=8, random_state=0)
    f = tmp_path / "ls2.h5ad"
    a = _h5ad_with_embedding(f, n=sample.n_cells, ids=list(sample.cell_ids))
    ctx = SpaceContext(sample=sample, workdir=tmp_path)
    with pytest.raises(StmorphInputError, match="X_ls2_cpu"):  # old: the 5 count columns of X
        build_space("LS2", {"kind": "table", "path": str(f)}, ctx)
    for spec in ({"key": "X_ls2_cpu"}, {"obsm_key": "X_ls2_cpu"}, {"path": f"{f}:X_ls2_cpu"}):
        df = build_space("LS2", {"kind": "table", "path": str(f)} | spec, ctx)
        assert df.shape == (sample.n_cells, 3)
        np.testing.assert_allclose(df.loc[list(a.obs_names)].to_numpy(), a.obsm["X_ls2_cpu"], rtol=1e-6)


# -- 2. the id column: by name, never an unnamed row index; joins that mostly miss are refused ------------------
def test_unnamed_row_index_is_refused(tmp_path):
    X, ids, _ = _blobs(50)
    f = tmp_path / "feat.csv"
    pd.DataFrame(X).sample(frac=1.0, random_state=0).to_csv(f)  # a shuffled pandas row index, header ""
    with pytest.raises(StmorphInputError, match="--id-column") as err:  # old: joined on shuffled row numbers
        read_feature_table(f)
    assert "feat.csv" in str(err.value) and "row numbers" in str(err.value)
    assert read_feature_table(f, id_column="Unnamed: 0").shape == (50, 4)  # explicit: the user's decision


def test_id_column_found_by_name_and_unnamed_index_never_a_feature(tmp_path):
    X, ids, _ = _blobs(30)
    df = pd.DataFrame(X, columns=["f0", "f1", "f2", "f3"])
    df.insert(2, "Barcode", ids)
    df.to_csv(tmp_path / "a.csv")  # columns: "Unnamed: 0", f0, f1, Barcode, f2, f3
    with pytest.warns(UserWarning, match="Unnamed: 0"):
        t = read_feature_table(tmp_path / "a.csv")  # old: refused, "Barcode" taken as a feature
    assert list(t.index) == ids and list(t.columns) == ["f0", "f1", "f2", "f3"]
    np.testing.assert_allclose(t.to_numpy(), X)
    df.drop(columns="Barcode").to_csv(tmp_path / "b.csv", index=False)  # no id column at all: first column, named
    assert read_feature_table(tmp_path / "b.csv").shape == (30, 3)
    named = pd.DataFrame(X, index=ids)  # a pandas index of cell names written without a header: ids, not row numbers
    named.to_csv(tmp_path / "c.csv")
    assert list(read_feature_table(tmp_path / "c.csv").index) == ids


def test_align_refuses_mostly_unmatched_ids():
    feats = {"A": pd.DataFrame({"f": np.arange(40.0)}, index=[f"c{i}" for i in range(40)])}  # 30 of 40 labelled
    lab = pd.Series(["x", "y"] * 50, index=[f"c{i}" for i in range(30)] + [str(i) for i in range(70)])
    with pytest.raises(StmorphInputError, match="30%") as err:  # old: 30 cells evaluated, no word
        align_inputs(feats, lab)
    msg = str(err.value)
    assert "input 'labels'" in msg and "'0'" in msg and "'c0'" in msg  # the input, examples from both sides
    _, lab2, rep = align_inputs(feats, lab, min_overlap=0.2)
    assert rep["n_cells"] == 30 and rep["shared_fraction"] == {"A": 0.75, "labels": 0.3}
    with pytest.raises(StmorphInputError, match="duplicated"):
        align_inputs({"A": pd.concat([feats["A"], feats["A"].iloc[:2]])}, lab, min_overlap=0)


# -- 3. missing labels are dropped and counted, duplicated label ids refused, small labels left out ------------
def test_cli_missing_and_small_labels(tmp_path):
    X, ids, y = _blobs(90)
    pd.DataFrame(X, index=pd.Index(ids, name="cell_id")).to_csv(tmp_path / "f.csv")
    lab = pd.DataFrame({"cell_id": ids, "label": y})
    lab.loc[[0, 1, 2], "label"] = np.nan
    lab.loc[3, "label"] = "  "
    lab.loc[[4, 5], "label"] = "rare"
    lab.to_csv(tmp_path / "lab.csv", index=False)
    res = _evaluate(["--features", f"A={tmp_path / 'f.csv'}", "--labels", str(tmp_path / "lab.csv"),
                     "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "4 cells without a label" in res.output
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    per_label = s["feature_spaces"]["A"]["classification"]["per_label"]
    assert set(per_label) == {"t0", "t1", "t2"}  # old: a class "nan" (and "rare", 2 cells for 5 folds)
    assert s["cells"]["missing_labels"] == 4 and s["cells"]["small_labels_left_out"] == {"rare": 2}
    assert s["feature_spaces"]["A"]["n_cells"] == s["cells"]["n_cells"] == 84
    assert s["cells"]["dropped"]["A"] == 6


def test_duplicated_label_ids_are_refused(tmp_path):
    from stmorph.eval import read_label_table

    X, ids, y = _blobs(40)
    pd.DataFrame(X, index=pd.Index(ids, name="cell")).to_csv(tmp_path / "f.csv")
    lab = pd.DataFrame({"cell": ids + ids[:3], "label": y + ["t0", "t1", "t2"]})
    lab.to_csv(tmp_path / "lab.csv", index=False)
    with pytest.raises(StmorphInputError, match="duplicated") as err:
        read_label_table(tmp_path / "lab.csv")
    assert "lab.csv" in str(err.value) and "'c0'" in str(err.value)
    res = _evaluate(["--features", f"A={tmp_path / 'f.csv'}", "--labels", str(tmp_path / "lab.csv"),
                     "--out", str(tmp_path / "out")])  # old: labels misaligned with the features
    assert res.exit_code != 0 and "duplicated" in str(res.exception) and "lab.csv" in str(res.exception)


def test_read_label_table_formats(tmp_path):
    from stmorph.eval import read_label_table

    ids = [f"c{i}" for i in range(6)]
    df = pd.DataFrame({"cell_id": ids, "n": range(6), "cell_type": ["a", "b", None, "a", "", "b"]})
    df.to_parquet(tmp_path / "l.parquet")
    df.to_csv(tmp_path / "l.tsv", sep="\t", index=False)
    a = ad.AnnData(np.zeros((6, 1), np.float32), obs=df.set_index("cell_id"))
    a.write_h5ad(tmp_path / "l.h5ad")
    for f in ("l.parquet", "l.tsv", "l.h5ad"):
        lab = read_label_table(tmp_path / f, label_column="cell_type")
        assert list(lab.index) == ids, f
        assert lab.isna().tolist() == [False, False, True, False, True, False], f
        assert lab.dropna().tolist() == ["a", "b", "a", "b"], f
    with pytest.raises(StmorphInputError, match="label column"):
        read_label_table(tmp_path / "l.tsv", label_column="nope")


def test_one_input_path_for_evaluate_and_run():
    """`stmorph evaluate` and `stmorph run` align their inputs with the same function, and a label that is small
    only among the cells every input shares is left out (before: kept, then the forest's 5 folds failed)."""
    import stmorph.cli._evaluate as cli_eval
    import stmorph.pipeline._evaluate as pipe_eval
    from stmorph.eval import align_inputs, drop_small_labels

    lab = pd.Series(["a"] * 6 + ["b"] * 4 + ["c"] * 5, index=[f"c{i}" for i in range(15)])
    kept, out = drop_small_labels(lab, 5)
    assert out == {"b": 4} and set(kept) == {"a", "c"} and len(kept) == 11
    lab = pd.Series(["a"] * 6 + ["b"] * 6 + ["c"] * 6, index=[f"c{i}" for i in range(18)])
    feats = pd.DataFrame({"f": np.arange(17.0)}, index=[f"c{i}" for i in range(17)])  # one "c" cell unshared
    tables, labels, report = align_inputs({"A": feats}, lab, min_label_size=5)
    assert report["small_labels_left_out"] == {} and len(labels) == 17
    tables, labels, report = align_inputs({"A": feats.iloc[:-1]}, lab, min_label_size=5)
    assert report["small_labels_left_out"] == {"c": 4} and set(labels) == {"a", "b"}
    assert list(tables["A"].index) == list(labels.index) and report["n_cells"] == 12
    for fn in (pipe_eval.evaluate_study, cli_eval.register):
        assert "align_inputs" in _names(fn.__code__), fn  # one implementation, not a copy


def _names(code) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            out |= _names(c)
    return out


# -- 5. the report counts each label pair once ------------------------------------------------------------------
def test_report_counts_each_significant_pair_once(tmp_path):
    import matplotlib.pyplot as plt

    from stmorph.pipeline.report import _pairwise_heatmaps

    labs = ["a", "b", "c", "d"]  # 6 pairs, 2 of them significant
    pairs = [("a", "b", 0.01), ("a", "c", 0.20), ("a", "d", 0.04), ("b", "c", 0.50), ("b", "d", 0.06),
             ("c", "d", 0.90)]
    (tmp_path / "tables").mkdir()
    pd.DataFrame(pairs, columns=["group1", "group2", "padj"]).to_csv(tmp_path / "tables" / "permanova_A.csv", index=False)

    class Figs:
        titles: list[str] = []

        def save(self, fig, name):
            self.titles += [ax.get_title() for ax in fig.axes if ax.get_title()]
            plt.close(fig)
            return name

    figs = Figs()
    _pairwise_heatmaps(tmp_path, figs, tmp_path, ["A"])
    assert figs.titles == ["A: 2/6 pairs p_adj < 0.05"]  # old: "A: 12/6" (diagonal and lower triangle counted)
    from stmorph.pl._eval import count_significant_pairs

    m = pd.read_csv(tmp_path / "pairwise_matrix_permanova_A.csv", index_col=0)
    assert count_significant_pairs(m) == (2, 6)
    full = m.to_numpy().copy()
    np.fill_diagonal(full, 0.0)  # a zero diagonal is not a pair either
    assert count_significant_pairs(full) == (2, 6)
    lower = np.tril(np.nan_to_num(m.to_numpy(), nan=1.0), -1) + np.triu(np.full((4, 4), np.nan))
    assert count_significant_pairs(lower) == (2, 6)  # one triangle filled
    assert count_significant_pairs(m, alpha=0.1) == (3, 6)
    assert labs == list(m.index)


# -- 6. the whole study config is validated before anything is computed -----------------------------------------
def _raw(**patch) -> dict:
    raw = {"sample": {"reader": "synthetic", "options": {"n_cells": 40, "n_types": 2, "n_genes": 8}},
           "spaces": {"TC": {"kind": "counts"}, "P": {"kind": "gene_subset", "method": "random", "n_genes": 4}},
           "evaluate": {"n_trees": 10, "permutations": 9, "k_grid": [10], "multiplex": [["TC", "P"]], "ridge": ["P"],
                        "exclude_labels": ["Removed"], "min_label_size": 3, "figures": False}}
    for k, v in patch.items():
        raw[k] = raw[k] | v if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return raw


def test_config_typo_in_evaluate_fails_before_any_space_is_built(tmp_path, monkeypatch):
    from stmorph.pipeline import SPACE_KINDS, config_from_dict, load_config, run_study

    config_from_dict(_raw())  # valid
    with pytest.raises(StmorphInputError, match=r"evaluate\.permutatons") as err:
        config_from_dict(_raw(evaluate={"permutatons": 99}), source=Path("study.toml"))
    assert "did you mean 'permutations'" in str(err.value) and "study.toml" in str(err.value)

    def boom(ctx, p):
        raise AssertionError("a feature space was built before the configuration was checked")

    monkeypatch.setitem(SPACE_KINDS, "counts", boom)
    f = tmp_path / "study.toml"
    f.write_text('[sample]\nreader = "synthetic"\noptions = { n_cells = 40, n_types = 2, n_genes = 8 }\n'
                 '[spaces.TC]\nkind = "counts"\n[evaluate]\npermutatons = 99\n')
    with pytest.raises(StmorphInputError, match=r"evaluate\.permutatons"):  # old: the space, then a late error
        run_study(load_config(f), quiet=True)
    assert not (tmp_path / "study_out" / "stages").exists()


@pytest.mark.parametrize(("patch", "key", "hint"), [
    ({"spaces": {"TC": {"kind": "countz"}}}, "spaces.TC.kind", "'counts'"),
    ({"spaces": {"TC": {"kind": "counts", "gens": ["g0"]}}}, "spaces.TC.gens", "'genes'"),
    ({"spaces": {"E": {"kind": "table"}}}, "spaces.E.path", "path"),
    ({"spaces": {"M": {"kind": "muse", "inputs": ["TC", "LS2"]}}}, "spaces.M.inputs", "'LS2'"),
    ({"spaces": {"B": {"kind": "baseline", "method": "concat_pca", "inputs": ["TC", "P"], "n_comp": 3}}},
     "spaces.B.n_comp", "'n_comps'"),
    ({"sample": {"reader": "xenum"}}, "sample.reader", "'xenium'"),
    ({"sample": {"pth": "x"}}, "sample.pth", "'path'"),
    ({"evaluate": {"multiplex": [["TC", "LS2"]]}}, "evaluate.multiplex", "'LS2'"),
    ({"evaluate": {"ridge": ["TCC"]}}, "evaluate.ridge", "'TC'"),
    ({"evaluate": {"n_trees": "many"}}, "evaluate.n_trees", "integer"),
    ({"evaluate": {"resolutions": [0.5, "x"]}}, "evaluate.resolutions", "numbers"),
    ({"evaluate": {"random_state": 1}}, "evaluate.random_state", "seed"),
    ({"report": {"titel": "x"}}, "report.titel", "'title'"),
    ({"seed": "0"}, "seed", "integer"),
])
def test_config_problems_name_the_key(patch, key, hint):
    from stmorph.pipeline import config_from_dict

    raw = _raw()
    for section, value in patch.items():
        if section == "spaces":
            raw["spaces"] = raw["spaces"] | value
        elif isinstance(value, dict):
            raw[section] = (raw.get(section) or {}) | value
        else:
            raw[section] = value
    with pytest.raises(StmorphInputError) as err:
        config_from_dict(raw, source=Path("my_study.toml"))
    msg = str(err.value)
    assert f"{key}:" in msg and hint in msg and "my_study.toml" in msg, msg


# -- 7. counts-only inputs: CSV/TSV, parquet, .h5ad, .loom for evaluate and muse --------------------------------
def _write_loom(path: Path, counts: np.ndarray, ids: list[str], genes: list[str]) -> None:
    import h5py

    with h5py.File(path, "w") as h:
        h["matrix"] = counts.T  # loom: genes x cells
        h.create_group("col_attrs")["CellID"] = np.array(ids, dtype="S")
        h.create_group("row_attrs")["Gene"] = np.array(genes, dtype="S")
        h.create_group("layers")


def test_counts_tables_in_every_format(tmp_path):
    rng = np.random.default_rng(1)
    ids, genes = [f"c{i}" for i in range(25)], [f"g{j}" for j in range(6)]
    counts = pd.DataFrame(rng.poisson(3.0, (25, 6)).astype(np.float32), index=pd.Index(ids, name="cell_id"),
                          columns=genes)
    counts.to_csv(tmp_path / "c.csv")
    counts.to_csv(tmp_path / "c.tsv", sep="\t")
    counts.to_csv(tmp_path / "c.csv.gz")
    counts.to_parquet(tmp_path / "c.parquet")  # ids in the parquet index (as `stmorph features` writes them)
    ad.AnnData(counts.to_numpy(), obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "c.h5ad")
    _write_loom(tmp_path / "c.loom", counts.to_numpy(), ids, genes)
    for f in ("c.csv", "c.tsv", "c.csv.gz", "c.parquet", "c.h5ad", "c.loom"):
        t = read_feature_table(tmp_path / f)
        assert list(t.index) == ids and list(t.columns) == genes, f
        np.testing.assert_allclose(t.to_numpy(), counts.to_numpy(), err_msg=f)


def test_muse_from_counts_and_feature_tables(tmp_path):
    from stmorph.cli._muse import mudata_from_tables
    from stmorph.datasets import simulate_multimodal

    sim = simulate_multimodal(n_clusters=3, n_cells=60, n_features=(12, 10), latent_dim=4, random_state=0)
    rna, morph = (sim.mod[m] for m in sim.mod)
    ids = [f"cell{i}" for i in range(sim.n_obs)]
    pd.DataFrame(rna.X, index=pd.Index(ids, name="cell_id")).iloc[::-1].to_csv(tmp_path / "rna.csv")
    pd.DataFrame(morph.X, index=pd.Index(ids, name="cell_id")).iloc[:55].to_parquet(tmp_path / "morph.parquet")
    paths = {"rna": str(tmp_path / "rna.csv"), "morph": str(tmp_path / "morph.parquet")}
    mdata = mudata_from_tables(paths)
    assert list(mdata.mod) == ["rna", "morph"] and mdata.n_obs == 55
    for name, a in (("rna", rna), ("morph", morph)):  # aligned by id, not by row
        np.testing.assert_allclose(mdata.mod[name][ids[:55]].X, a.X[:55], rtol=1e-6)

    out = tmp_path / "joint.h5mu"
    args = ["muse", "--modality", f"rna={paths['rna']}", "--modality", f"morph={paths['morph']}", "-o", str(out),
            "--latent-dim", "3", "--epochs", "1", "--warmup-epochs", "1", "--triplet-init-epochs", "1", "--k", "8",
            "--threads", "1"]
    res = CliRunner().invoke(app, args)  # old: an .h5mu was the only input
    assert res.exit_code == 0, res.output
    import mudata

    back = mudata.read_h5mu(out)
    assert back.obsm["X_muse"].shape == (55, 3)
    res = CliRunner().invoke(app, ["muse", "--modality", f"rna={paths['rna']}", "-o", str(tmp_path / "x.h5mu")])
    assert res.exit_code != 0 and "at least twice" in str(res.exception)
