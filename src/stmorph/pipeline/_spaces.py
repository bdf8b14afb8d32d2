"""Feature-space builders of the study pipeline (a registry: one function per ``kind``).

Each builder takes the :class:`SpaceContext` and the space's configuration table and returns a
:class:`pandas.DataFrame` of cells x features indexed by cell id. Register new kinds with :func:`space_kind`.

Kinds
-----
``counts``        normalised (median total, log1p) transcript counts; ``genes`` optional list
``gene_subset``   counts restricted to a PCA / DE / random gene subset (``method``, ``n_genes`` for random)
``obsm``          an embedding already in ``sample.adata.obsm[key]``
``table``         a CSV / parquet / h5ad table of per-cell features (``path``, ``id_column``)
``vae``           a cell-crop VAE trained on the sample (``preset`` and overrides)
``cellprofiler``  CellProfiler measurements of stain crops (``size``, ``channels``)
``cnn``           pretrained-CNN features of stain crops (``weights``, ``arch``, ``n_components``)
``muse``          MUSE joint embedding of other spaces (``inputs = [A, B]``)
``baseline``      a MUSE baseline over other spaces (``method``, ``inputs``)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StmorphInputError
from ..sample import SpatialSample

__all__ = ["SpaceContext", "SPACE_KINDS", "space_kind", "build_space", "space_inputs"]


@dataclass
class SpaceContext:
    """What a builder may use: the sample, finished upstream spaces, seed, device and a scratch folder."""

    sample: SpatialSample
    workdir: Path
    seed: int = 0
    device: str = "auto"
    label_key: str = "cell_type"
    upstream: dict[str, pd.DataFrame] = field(default_factory=dict)


Builder = Callable[[SpaceContext, dict[str, Any]], pd.DataFrame]
SPACE_KINDS: dict[str, Builder] = {}


def space_kind(name: str) -> Callable[[Builder], Builder]:
    """Register a feature-space builder under ``name`` (decorator)."""

    def deco(fn: Builder) -> Builder:
        SPACE_KINDS[name] = fn
        return fn

    return deco


def space_inputs(spec: dict[str, Any]) -> list[str]:
    """Names of the spaces a space is built from (``inputs``; empty for most kinds)."""
    return [str(s) for s in spec.get("inputs", [])]


def build_space(name: str, spec: dict[str, Any], ctx: SpaceContext) -> pd.DataFrame:
    """Build one feature space and check its shape and values."""
    kind = spec["kind"]
    if kind not in SPACE_KINDS:
        raise StmorphInputError(
            f"unknown kind '{kind}' for feature space '{name}'", column=f"spaces.{name}.kind", expected=f"one of {sorted(SPACE_KINDS)}"
        )
    params = {k: v for k, v in spec.items() if k != "kind"}
    df = SPACE_KINDS[kind](ctx, params)
    if not isinstance(df, pd.DataFrame) or df.shape[0] == 0 or df.shape[1] == 0:
        raise RuntimeError(f"feature space '{name}' ({kind}) produced no features")
    df.index = df.index.astype(str)
    df.columns = [str(c) for c in df.columns]
    return df.astype(np.float32)


def _frame(X: Any, index: pd.Index, prefix: str, names: list[str] | None = None) -> pd.DataFrame:
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    cols = names if names is not None else [f"{prefix}{i}" for i in range(X.shape[1])]
    return pd.DataFrame(X, index=index, columns=cols)


def _normalised_counts(sample: SpatialSample, genes: list[str] | None = None) -> pd.DataFrame:
    import scanpy as sc

    a = sample.adata.copy()
    if genes is not None:
        missing = [g for g in genes if g not in a.var_names]
        if missing:
            raise StmorphInputError(f"genes not in the sample: {missing[:10]}", column="genes", expected="names in adata.var_names")
        a = a[:, list(genes)].copy()
    sc.pp.normalize_total(a, target_sum=None)
    sc.pp.log1p(a)
    return _frame(a.X, a.obs_names, "", list(a.var_names))


@space_kind("counts")
def _counts(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    return _normalised_counts(ctx.sample, p.get("genes"))


@space_kind("gene_subset")
def _gene_subset(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import eval as ev

    method = p.get("method", "pca")
    genes = ev.select_genes(ctx.sample.adata, method=method, label_key=ctx.label_key, random_state=ctx.seed,
                            **{k: v for k, v in p.items() if k != "method"})
    return _normalised_counts(ctx.sample, list(genes))


@space_kind("obsm")
def _obsm(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    key = p.get("key")
    if key not in ctx.sample.adata.obsm:
        raise StmorphInputError(f"obsm key '{key}' not in the sample", column="key", expected=f"one of {list(ctx.sample.adata.obsm)}")
    return _frame(ctx.sample.adata.obsm[key], ctx.sample.cell_ids, f"{key}_")


@space_kind("table")
def _table(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    path = Path(p["path"])
    if not path.exists():
        raise StmorphInputError("feature table not found", file=path, expected="a CSV, parquet or h5ad file")
    if path.suffix == ".h5ad":
        import anndata as ad

        a = ad.read_h5ad(path)
        df = _frame(a.X, a.obs_names, "", list(map(str, a.var_names)))
    else:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        id_col = p.get("id_column") or df.columns[0]
        if id_col not in df.columns:
            raise StmorphInputError("id column not found", file=path, column=id_col, expected=f"one of {list(df.columns)[:10]}")
        df = df.set_index(df[id_col].astype(str)).drop(columns=[id_col])
    df.index = df.index.astype(str)
    common = ctx.sample.cell_ids.intersection(df.index)
    if len(common) == 0:
        raise StmorphInputError("no cell id of the table matches the sample", file=path, column=p.get("id_column"),
                                expected=f"ids like {list(ctx.sample.cell_ids[:3])}")
    return df.loc[common].select_dtypes("number")


@space_kind("vae")
def _vae(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import tl

    preset = p.pop("preset", "ls1_cpu")
    key = f"X_{preset}"
    tl.train_vae(ctx.sample, preset=preset, key_added=key, device=ctx.device, random_state=ctx.seed,
                 checkpoint_dir=ctx.workdir / "checkpoints", **p)
    a = ctx.sample.adata
    emb = a.obsm[key]
    keep = ~np.isnan(np.asarray(emb, dtype=float)).any(axis=1)
    return _frame(np.asarray(emb)[keep], a.obs_names[keep], "z")


@space_kind("cellprofiler")
def _cellprofiler(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import features

    return features.cellprofiler_table(ctx.sample, random_state=ctx.seed, **p)


@space_kind("cnn")
def _cnn(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import features

    return features.cnn_table(ctx.sample, device=ctx.device, random_state=ctx.seed, **p)


def _upstream_mudata(ctx: SpaceContext, inputs: list[str]):
    import anndata as ad
    import mudata as md

    if len(inputs) < 2:
        raise StmorphInputError("needs at least two input spaces", column="inputs", expected="inputs = ['A', 'B']")
    missing = [i for i in inputs if i not in ctx.upstream]
    if missing:
        raise StmorphInputError(f"input spaces {missing} are not defined", column="inputs", expected="names of other [spaces.*] tables")
    common = ctx.upstream[inputs[0]].index
    for i in inputs[1:]:
        common = common.intersection(ctx.upstream[i].index)
    mods = {}
    for i in inputs:
        df = ctx.upstream[i].loc[common]
        mods[i] = ad.AnnData(df.to_numpy(np.float32), obs=pd.DataFrame(index=common), var=pd.DataFrame(index=df.columns))
    return md.MuData(mods)


@space_kind("muse")
def _muse(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import tl

    inputs = [str(s) for s in p.pop("inputs", [])]
    mdata = _upstream_mudata(ctx, inputs)
    tl.muse(mdata, random_state=ctx.seed, device=ctx.device, **p)
    return _frame(mdata.obsm["X_muse"], mdata.obs_names, "muse")


@space_kind("baseline")
def _baseline(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import tl

    inputs = [str(s) for s in p.pop("inputs", [])]
    method = p.pop("method", "concat_pca")
    mdata = _upstream_mudata(ctx, inputs)
    key = tl.run_baseline(mdata, method, random_state=ctx.seed, **p)
    return _frame(mdata.obsm[key], mdata.obs_names, method)
