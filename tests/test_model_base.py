"""One convention across tools: the models' shared save/load and data registry (``stmorph.models._base``), and the
scverse conventions of ``stmorph.tl`` / ``stmorph.features`` (``obsm[key_added]``, ``uns[key_added]``, ``copy=True``
returns the type passed in, ``random_state``, ``n_jobs``)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from stmorph import SpatialSample, StainImage, StmorphInputError
from stmorph.datasets import simulate_multimodal
from stmorph.models._base import BaseModel, check_names, to_jsonable
from stmorph.models.muse import MUSE

TINY_MUSE = dict(n_epochs_warmup=2, n_epochs_triplet_init=2, n_epochs=2, cluster_update_every=2, n_jobs=1, k=10)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mdata():
    import mudata as md

    md.set_options(pull_on_update=False)
    return simulate_multimodal(n_clusters=3, n_cells=90, n_features=(12, 15), latent_dim=4, random_state=0)


# -- check_names -----------------------------------------------------------------------------------------------
def test_check_names_equal_reordered_superset():
    reg = ["a", "b", "c"]
    assert check_names(reg, reg) is None
    assert check_names(reg, None) is None  # unnamed data: nothing to check
    idx = check_names(reg, ["c", "a", "b"])
    assert [["c", "a", "b"][i] for i in idx] == reg
    idx = check_names(reg, ["x", "b", "c", "a"])  # every registered name present, plus another
    assert idx.tolist() == [3, 1, 2]


def test_check_names_names_the_first_mismatches():
    reg = [f"g{i}" for i in range(10)]
    given = list(reg)
    given[2], given[7] = "renamed", "other"
    with pytest.raises(StmorphInputError) as exc:
        check_names(reg, given, what="genes")
    msg = str(exc.value)
    assert msg.startswith("genes differ")
    assert "missing ['g2', 'g7']" in msg and "'renamed'" in msg and "'other'" in msg
    assert "'renamed' where the model has 'g2' (position 2)" in msg
    # another order is refused when the caller cannot reorder
    with pytest.raises(StmorphInputError, match="another order"):
        check_names(reg, reg[::-1], reorder=False)
    with pytest.raises(StmorphInputError, match="9 instead of 10"):
        check_names(reg, reg[:9])
    # repeated names cannot be matched by name: only the exact order passes
    assert check_names(["a", "a"], ["a", "a"]) is None
    with pytest.raises(StmorphInputError):
        check_names(["a", "a", "b"], ["b", "a", "a"])


def test_to_jsonable():
    out = to_jsonable({"a": np.arange(3), "b": (np.float32(1.5), [np.int64(2)]), 3: None})
    assert out == {"a": [0, 1, 2], "b": [1.5, [2]], "3": None}
    json.dumps(out)


# -- BaseModel -------------------------------------------------------------------------------------------------
class _Tiny(BaseModel):
    _FORMAT = "test.Tiny"
    _META_FILE = "tiny.json"
    _WHAT = "tiny model"

    def __init__(self, n: int = 3):
        self.n = n
        self.module = torch.nn.Linear(n, 2)
        self.registry = None
        self.notes: list[str] = []

    def _config_dict(self):
        return {"n": self.n}

    def _extra_meta(self):
        return {"notes": self.notes}

    @classmethod
    def _from_meta(cls, meta, **kwargs):
        obj = cls(**meta["config"])
        obj.registry = meta["registry"]
        obj.notes = meta["notes"]
        return obj


def test_base_model_save_load_roundtrip(tmp_path):
    m = _Tiny(4)
    m.registry = {"features": ["a", "b", "c", "d"]}
    m.notes = ["trained"]
    assert m.save(tmp_path / "m") == tmp_path / "m"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.pt", "tiny.json"]
    meta = json.loads((tmp_path / "m" / "tiny.json").read_text())
    assert meta["format"] == "test.Tiny" and meta["version"] == 1 and meta["config"] == {"n": 4}
    back = _Tiny.load(tmp_path / "m")
    assert back.registry == m.registry and back.notes == ["trained"] and back.n == 4
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k])
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StmorphInputError, match="folder"):
        m.save(tmp_path / "file")
    with pytest.raises(StmorphInputError, match="no saved tiny model"):
        _Tiny.load(tmp_path)
    # another model's folder, a newer format
    meta["format"] = "test.Other"
    (tmp_path / "m" / "tiny.json").write_text(json.dumps(meta))
    with pytest.raises(StmorphInputError, match="not a stmorph tiny model folder"):
        _Tiny.load(tmp_path / "m")
    meta["format"], meta["version"] = "test.Tiny", 99
    (tmp_path / "m" / "tiny.json").write_text(json.dumps(meta))
    with pytest.raises(StmorphInputError, match="newer stmorph"):
        _Tiny.load(tmp_path / "m")


def test_crop_vae_and_muse_share_the_base():
    from stmorph.models.vae import CropVAE

    assert issubclass(CropVAE, BaseModel) and issubclass(MUSE, BaseModel)
    assert CropVAE._META_FILE == "vae.json" and CropVAE._WEIGHTS_FILE == "model.pt"
    with pytest.raises(RuntimeError, match="not trained"):
        CropVAE("ls1_cpu").save("never_written")


# -- the MUSE registry -----------------------------------------------------------------------------------------
def test_muse_registry_saved_and_checked(mdata, tmp_path):
    import stmorph.tl as tl

    md = mdata.copy()
    tl.muse(md, latent_dim=4, save_model=str(tmp_path / "muse"), **TINY_MUSE)
    assert sorted(p.name for p in (tmp_path / "muse").iterdir()) == ["model.pt", "muse.json"]
    model = MUSE.load(tmp_path / "muse", device="cpu")
    reg = model.registry
    assert reg["modalities"] == ["rna", "morph"] and reg["n_features"] == [12, 15]
    assert reg["features"] == [list(md["rna"].var_names), list(md["morph"].var_names)]
    assert model.is_fitted and model.train_info["margin"] > 0

    # the saved model reproduces the latent on the MuData, on DataFrames and on AnnDatas
    z, _ = model.transform(md)
    np.testing.assert_allclose(z, md.obsm["X_muse"], rtol=1e-5, atol=1e-6)
    rna, morph = md["rna"].to_df(), md["morph"].to_df()
    np.testing.assert_allclose(model.transform([rna, morph])[0], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.transform([md["rna"], md["morph"]])[0], z, rtol=1e-5, atol=1e-6)

    # named features in another order are put back in the registered order
    shuffled = morph[morph.columns[np.random.default_rng(0).permutation(morph.shape[1])]]
    np.testing.assert_allclose(model.transform([rna, shuffled])[0], z, rtol=1e-5, atol=1e-6)
    # ... also in a MuData whose modality has its features reordered
    md2 = md.copy()
    md2.mod["rna"] = md["rna"][:, md["rna"].var_names[::-1]].copy()
    np.testing.assert_allclose(model.transform(md2)[0], z, rtol=1e-5, atol=1e-6)

    # renamed features: a clear error naming the first mismatches
    renamed = rna.rename(columns={rna.columns[4]: "GENE_X"})
    with pytest.raises(StmorphInputError, match="modality 'rna'") as exc:
        model.transform([renamed, morph])
    assert f"missing ['{rna.columns[4]}']" in str(exc.value) and "'GENE_X'" in str(exc.value)
    assert f"'GENE_X' where the model has '{rna.columns[4]}' (position 4)" in str(exc.value)
    # feature_names= names plain arrays
    with pytest.raises(StmorphInputError, match="differ"):
        model.transform([rna.to_numpy(), morph.to_numpy()], feature_names=[list(renamed.columns), None])
    # unnamed arrays: only the counts can be checked
    np.testing.assert_allclose(model.transform([rna.to_numpy(), morph.to_numpy()])[0], z, rtol=1e-5, atol=1e-6)
    with pytest.raises(StmorphInputError, match="14 features"):
        model.transform([rna.to_numpy(), morph.to_numpy()[:, :14]])
    with pytest.raises(StmorphInputError, match="one matrix per modality"):
        model.transform(md["rna"])  # one AnnData is not a list of modalities
    import mudata

    with pytest.raises(StmorphInputError, match="not in the MuData"):
        model.transform(mudata.MuData({"rna": md["rna"].copy()}))


def test_muse_registry_from_dataframes_and_refit(mdata):
    rna, morph = mdata["rna"].to_df(), mdata["morph"].to_df()
    m = MUSE([12, 15], latent_dim=3, modality_names=["rna", "morph"]).fit([rna, morph], **TINY_MUSE)
    assert m.registry["features"] == [list(rna.columns), list(morph.columns)]
    arrays = MUSE([12, 15], latent_dim=3).fit([rna.to_numpy(), morph.to_numpy()], **TINY_MUSE)
    assert arrays.registry["features"] == [None, None]
    with pytest.raises(StmorphInputError, match="differ"):  # a later fit checks against the registry
        m.fit([rna.rename(columns={rna.columns[0]: "x"}), morph], **TINY_MUSE)


def test_muse_reads_the_single_file_of_earlier_versions(mdata, tmp_path):
    xs = [mdata["rna"].X, mdata["morph"].X]
    m = MUSE([12, 15], latent_dim=3).fit(xs, **TINY_MUSE)
    info = {k: v for k, v in m.train_info.items() if k not in ("initial_labels", "last_labels")}
    torch.save({"config": m.config(), "state_dict": m.module.state_dict(), "is_fitted": True, "train_info": info},
               tmp_path / "old.pt")
    old = MUSE.load(tmp_path / "old.pt", device="cpu")
    assert old.registry is None
    np.testing.assert_allclose(old.transform(xs)[0], m.transform(xs)[0], rtol=1e-6)
    with pytest.raises(StmorphInputError, match="not found"):
        MUSE.load(tmp_path / "absent")


# -- tl: copy returns the type passed in, uns[key_added] -----------------------------------------------------------
def test_tl_muse_copy_and_uns(mdata):
    import mudata

    import stmorph.tl as tl

    out = tl.muse(mdata, latent_dim=4, key_added="X_m", copy=True, **TINY_MUSE)
    assert isinstance(out, mudata.MuData) and "X_m" not in mdata.obsm
    assert out.uns["X_m"]["params"]["key_added"] == "X_m"
    assert out.uns["muse"] is out.uns["X_m"]  # the former key, kept (deprecated)
    with pytest.warns(FutureWarning, match="n_threads"):
        again = tl.muse(mdata, latent_dim=4, key_added="X_m", copy=True,
                        **{**TINY_MUSE, "n_jobs": None, "n_threads": 1})
    np.testing.assert_array_equal(again.obsm["X_m"], out.obsm["X_m"])


def test_tl_baselines_copy_and_uns(mdata):
    import mudata

    import stmorph.tl as tl

    for fn, kw, key in [
        (tl.pca_single, {"modality": "rna", "n_comps": 3}, "X_pca_rna"),
        (tl.concat_pca, {"n_comps": 3}, "X_concat_standard"),
        (tl.cca, {"n_comps": 2}, "X_cca"),
        (tl.multiview_ae, {"latent_dim": 3, "n_epochs": 1, "n_jobs": 1}, "X_mvae"),
    ]:
        out = fn(mdata, copy=True, random_state=1, **kw)
        assert isinstance(out, mudata.MuData), fn.__name__
        assert key in out.obsm and key not in mdata.obsm
        assert out.uns[key]["random_state"] == 1 and out.uns[key]["method"]
        assert out.uns["baselines"][key] is out.uns[key]  # the former key, kept (deprecated)
    assert fn(mdata.copy(), **kw) is None


def test_train_vae_copy_returns_a_sample_and_uns_key():
    from stmorph.datasets import synthetic_tissue
    from stmorph.models.vae import CropVAE, get_preset
    from stmorph.tl import train_vae

    tissue = synthetic_tissue(n_cells=24, n_types=2, n_genes=6, random_state=1)
    cfg = get_preset("ls2_cpu", widths=(4, 8, 8, 16, 16), latent_dim=3, batch_size=8, epochs=1)
    out = train_vae(tissue, cfg, channels=["DAPI"], device="cpu", copy=True)
    assert isinstance(out, SpatialSample) and out is not tissue
    assert "X_ls2_cpu" in out.adata.obsm and "X_ls2_cpu" not in tissue.adata.obsm
    assert out.images["DAPI"] is tissue.images["DAPI"]  # images shared, adata copied
    info = out.adata.uns["X_ls2_cpu"]
    assert info["random_state"] == 0 and info["preset"] == "ls2_cpu"
    assert out.adata.uns["ls2_cpu"] is info  # the former key without "X_", kept (deprecated)
    back, model = train_vae(tissue, cfg, channels=["DAPI"], device="cpu", copy=True, return_model=True,
                            key_added="ls2")
    assert isinstance(back, SpatialSample) and isinstance(model, CropVAE)
    assert "ls2" in back.adata.uns and "X_ls2" not in back.adata.uns


# -- features: copy and uns ------------------------------------------------------------------------------------
@pytest.fixture()
def small_sample():
    rng = np.random.default_rng(0)
    n = 6
    img = (rng.random((60, 60)) * 3000).astype(np.uint16)
    adata = ad.AnnData(np.ones((n, 1), np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    adata.obsm["spatial"] = rng.uniform(10, 50, (n, 2))
    return SpatialSample(adata, images={"DAPI": StainImage(img), "membrane": StainImage(img.T.copy())})


def test_features_copy_and_uns(small_sample):
    from stmorph.features import SmallResNet, cellprofiler_features, cnn_features

    out = cellprofiler_features(small_sample, size=16, modules=["intensity"], select=False, copy=True,
                                accelerator=None, key_added="X_cp")
    assert isinstance(out, SpatialSample) and "X_cp" in out.adata.obsm and "X_cp" not in small_sample.adata.obsm
    assert out.adata.uns["X_cp"]["size"] == 16
    out = cnn_features(small_sample, SmallResNet(widths=(4, 8)), size=16, n_components=2, input_size=32, copy=True)
    assert isinstance(out, SpatialSample) and "X_cnn" not in small_sample.adata.obsm
    assert out.adata.uns["X_cnn"]["n_components"] == 2


# -- n_jobs ----------------------------------------------------------------------------------------------------
def test_n_jobs_means_the_same_everywhere(monkeypatch):
    from stmorph import settings
    from stmorph._threads import resolve_n_jobs

    monkeypatch.setattr(settings, "n_workers", 3)
    assert resolve_n_jobs(None) == resolve_n_jobs(-1) == 3
    assert resolve_n_jobs(2) == 2 and resolve_n_jobs(-2) == 2 and resolve_n_jobs(-10) == 1
    with pytest.raises(StmorphInputError, match="n_jobs=0"):
        resolve_n_jobs(0)
    import stmorph.models.muse._model as mm

    seen = []
    monkeypatch.setattr(mm, "_torch_threads", lambda n: seen.append(n) or __import__("contextlib").nullcontext())
    md = simulate_multimodal(n_clusters=2, n_cells=40, n_features=(5, 5), latent_dim=2, random_state=0)
    monkeypatch.delenv("STMORPH_THREADS", raising=False)
    MUSE([5, 5], latent_dim=2).fit([md["rna"].X, md["morph"].X], **{**TINY_MUSE, "n_jobs": None})
    assert seen == [1]  # a small model: one thread (model_threads), whatever the worker count
    monkeypatch.setattr(settings, "n_threads", 3)  # the user's thread setting wins
    MUSE([5, 5], latent_dim=2).fit([md["rna"].X, md["morph"].X], **{**TINY_MUSE, "n_jobs": None})
    assert seen == [1, 3]


# -- CLI: --random-state, --seed a hidden alias -----------------------------------------------------------------
def test_cli_random_state_and_hidden_seed_alias(mdata, tmp_path):
    import mudata
    from typer.testing import CliRunner

    from stmorph.cli import app

    for cmd in (["muse"], ["vae"], ["features", "cnn"]):
        res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "--random-state" in res.output and "--seed" not in res.output, cmd
    src = tmp_path / "in.h5mu"
    mdata.write_h5mu(src)
    args = ["muse", str(src), "--latent-dim", "3", "--epochs", "1", "--warmup-epochs", "1",
            "--triplet-init-epochs", "1", "--k", "10", "--threads", "1", "--device", "cpu"]
    a = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a.h5mu"), "--random-state", "4"])
    b = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b.h5mu"), "--seed", "4"])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    za, zb = (mudata.read_h5mu(tmp_path / f"{n}.h5mu") for n in "ab")
    np.testing.assert_array_equal(za.obsm["X_muse"], zb.obsm["X_muse"])
    assert int(za.uns["X_muse"]["params"]["random_state"]) == 4
    c = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "c.h5mu"), "--random-state", "1", "--seed", "2"])
    assert c.exit_code != 0
