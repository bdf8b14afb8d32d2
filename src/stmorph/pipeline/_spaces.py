"""Feature-space builders of the study pipeline (a registry: one function per ``kind``).

Each builder takes the :class:`SpaceContext` and the space's configuration table and returns a
:class:`pandas.DataFrame` of cells x features indexed by cell id. Register new kinds with :func:`space_kind`.

Kinds
-----
``counts``        normalised (median total, log1p) transcript counts; ``genes`` optional list
``gene_subset``   counts restricted to a PCA / DE / random gene subset (``method``, ``n_genes`` for random)
``obsm``          an embedding already in ``sample.adata.obsm[key]``
``table``         a CSV / parquet / h5ad / loom table of per-cell features (``path``, ``id_column``; ``key`` for an obsm key)
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

__all__ = ["SpaceContext", "SPACE_KINDS", "space_kind", "build_space", "space_inputs", "space_parameters"]


@dataclass
class SpaceContext:
    """What a builder may use: the sample, finished upstream spaces, seed, device and a scratch folder."""

    sample: SpatialSample
    workdir: Path
    seed: int = 0
    device: str = "auto"
    label_key: str = "cell_type"
    upstream: dict[str, pd.DataFrame] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)


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
    """Counts (optionally of ``genes`` only) scaled to the median total and log1p (:func:`stmorph.eval.normalize_counts`)."""
    from ..eval import normalize_counts

    a = sample.adata
    if genes is not None:
        missing = [g for g in genes if g not in a.var_names]
        if missing:
            raise StmorphInputError(f"genes not in the sample: {missing[:10]}", column="genes", expected="names in adata.var_names")
        a = a[:, list(genes)]
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    return _frame(normalize_counts(X), a.obs_names, "", list(a.var_names))


@space_kind("counts")
def _counts(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    return _normalised_counts(ctx.sample, p.get("genes"))


@space_kind("gene_subset")
def _gene_subset(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    """Counts restricted to a limited gene panel: ``method`` = "pca" (top loadings of the first PCs),
    "de" (top Wilcoxon gene per label) or "random" (``n_genes``, seeded)."""
    from ..pp import de_gene_subset, normalize_counts, pca_gene_subset, random_gene_subset

    a = ctx.sample.adata
    method = p.get("method", "pca")
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    genes = list(a.var_names)
    if method == "pca":
        panel = pca_gene_subset(normalize_counts(X), genes, n_pcs=int(p.get("n_pcs", 15)), n_top=int(p.get("n_top", 3)))
    elif method == "de":
        lab = ctx.sample.labels(ctx.label_key)
        if lab is None:
            raise StmorphInputError("a DE gene panel needs labels", column=ctx.label_key)
        known = lab.notna().to_numpy()
        panel = de_gene_subset(normalize_counts(X)[known], genes, lab.astype(str).to_numpy()[known])
    elif method == "random":
        panel = random_gene_subset(genes, int(p.get("n_genes", 20)), random_state=ctx.seed)
    else:
        raise StmorphInputError(f"unknown gene panel method '{method}'", column="method", expected="pca, de or random")
    df = _normalised_counts(ctx.sample, list(panel))
    if method == "de":
        # chosen with the labels the evaluation classifies: the evaluation re-chooses it inside each training fold
        # (stmorph.pp.de_gene_columns); the mark survives the stage cache (parquet keeps DataFrame.attrs)
        df.attrs["stmorph_panel"] = {"method": "de", "label_key": ctx.label_key}
    return df


@space_kind("obsm")
def _obsm(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    key = p.get("key")
    if key not in ctx.sample.adata.obsm:
        raise StmorphInputError(f"obsm key '{key}' not in the sample", column="key", expected=f"one of {list(ctx.sample.adata.obsm)}")
    return _frame(ctx.sample.adata.obsm[key], ctx.sample.cell_ids, f"{key}_")


@space_kind("table")
def _table(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    """Per-cell features from a file (:func:`stmorph.eval.read_feature_table`): ``path`` (CSV/TSV, parquet,
    ``.h5ad``/``.loom``, optionally ``file.h5ad:KEY``), ``id_column``, and for AnnData ``key``/``obsm_key``
    (an obsm key, a layer or ``"X"``; required when ``obsm`` holds embeddings)."""
    import logging

    from ..eval import read_feature_table

    if p.get("path") is None:
        raise StmorphInputError("a table space needs a `path`", column="path", expected=_TABLE_HINT)
    key = p.get("key", p.get("obsm_key"))
    df = read_feature_table(p["path"], id_column=p.get("id_column"), obsm_key=key, numeric_only=True)
    common = ctx.sample.cell_ids.intersection(df.index)
    if len(common) == 0:
        raise StmorphInputError("no cell id of the table matches the sample", file=p["path"], column=p.get("id_column"),
                                expected=f"ids like {list(ctx.sample.cell_ids[:3])}; the table has {list(df.index[:3])}")
    if len(common) < 0.5 * len(df):
        logging.getLogger("stmorph.pipeline").warning(
            "table %s: only %d of its %d cell ids are in the sample (ids like %s; the sample has %s)",
            p["path"], len(common), len(df), list(df.index.difference(common)[:3]), list(ctx.sample.cell_ids[:3]))
    return df.loc[common]


_TABLE_HINT = "a CSV/TSV, parquet, .h5ad or .loom file"


@space_kind("vae")
def _vae(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    """A cell-crop VAE (``preset`` = ls1_cpu ... ls5_cpu or vae1 ... vae5, plus config overrides)."""
    from .. import tl

    preset = p.pop("preset", "ls1_cpu")
    key = "X_vae_pipeline"
    tl.train_vae(ctx.sample, preset=preset, key_added=key, device=ctx.device, random_state=ctx.seed,
                 checkpoint_dir=ctx.workdir / "checkpoints", **p)
    return _obsm_frame(ctx.sample, key, "z")


def _obsm_frame(sample: SpatialSample, key: str, prefix: str) -> pd.DataFrame:
    """An obsm entry as a DataFrame (feature names from a DataFrame or ``uns[f"{key}_features"]``)."""
    a = sample.adata
    val = a.obsm[key]
    if isinstance(val, pd.DataFrame):
        df = val.copy()
        df.index = a.obs_names
    else:
        names = a.uns.get(f"{key}_features")
        df = _frame(val, a.obs_names, prefix, None if names is None else [str(n) for n in names])
    keep = ~df.isna().any(axis=1)
    return df.loc[keep]


@space_kind("cellprofiler")
def _cellprofiler(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import features

    workers, scheduler = int(ctx.compute.get("workers", 1)), ctx.compute.get("scheduler") or None
    if workers > 1 or scheduler:  # tile by tile on Dask: the same table as the serial call
        from .. import distributed

        for k in ("n_jobs", "backend"):
            p.pop(k, None)
        distributed.cellprofiler_features(
            ctx.sample, key_added="X_cp_pipeline", out_dir=ctx.workdir / "tiles", n_workers=workers,
            scheduler=scheduler, tile_size=int(ctx.compute.get("tile_size", 2048)), overwrite="changed", **p,
        )
    else:
        p.setdefault("n_jobs", 2)
        features.cellprofiler_features(ctx.sample, key_added="X_cp_pipeline", **p)
    return _obsm_frame(ctx.sample, "X_cp_pipeline", "cp")


@space_kind("cnn")
def _cnn(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    from .. import features

    workers, scheduler = int(ctx.compute.get("workers", 1)), ctx.compute.get("scheduler") or None
    if workers > 1 or scheduler:  # tile by tile on Dask (CPU workers): the same table as the serial call on CPU
        from .. import distributed

        distributed.cnn_features(
            ctx.sample, key_added="X_cnn_pipeline", out_dir=ctx.workdir / "tiles", n_workers=workers,
            scheduler=scheduler, tile_size=int(ctx.compute.get("tile_size", 2048)), overwrite="changed",
            random_state=ctx.seed, **p,
        )
    else:
        features.cnn_features(ctx.sample, key_added="X_cnn_pipeline", device=ctx.device, random_state=ctx.seed, **p)
    return _obsm_frame(ctx.sample, "X_cnn_pipeline", "cnn")


def _upstream_mudata(ctx: SpaceContext, inputs: list[str]):
    import anndata as ad
    import mudata as md

    md.set_options(pull_on_update=False)

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


_BASELINES = ("concat_pca", "cca", "multiview_ae", "mofa")


@space_kind("baseline")
def _baseline(ctx: SpaceContext, p: dict[str, Any]) -> pd.DataFrame:
    """A MUSE baseline over other spaces: ``method`` = concat_pca (``scaling``), cca, multiview_ae or mofa."""
    from .. import tl

    inputs = [str(s) for s in p.pop("inputs", [])]
    method = p.pop("method", "concat_pca")
    if method not in _BASELINES:
        raise StmorphInputError(f"unknown baseline '{method}'", column="method", expected=f"one of {list(_BASELINES)}")
    mdata = _upstream_mudata(ctx, inputs)
    getattr(tl, method)(mdata, random_state=ctx.seed, key_added="X_baseline", **p)
    return _frame(mdata.obsm["X_baseline"], mdata.obs_names, method)


# -- the keys each kind accepts (checked by config_from_dict before anything is computed) -----------------------
_STATIC_PARAMETERS: dict[str, set[str]] = {
    "counts": {"genes"},
    "gene_subset": {"method", "n_pcs", "n_top", "n_genes"},
    "obsm": {"key"},
    "table": {"path", "id_column", "key", "obsm_key"},
}


def _named_parameters(fn: Callable[..., Any], exclude: set[str], *, var_keyword_ok: bool = False) -> set[str] | None:
    """Keyword parameters of ``fn`` minus ``exclude``; ``None`` when it takes ``**kwargs`` (anything goes) unless
    ``var_keyword_ok`` (the caller knows where they go)."""
    import inspect

    params = inspect.signature(fn).parameters.values()
    if not var_keyword_ok and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - exclude


def space_parameters(kind: str, spec: dict[str, Any] | None = None) -> set[str] | None:
    """Keys (besides ``kind``) a ``[spaces.NAME]`` table of this kind accepts, or ``None`` when any key is.

    Pass-through kinds accept the keyword arguments of the function their builder calls, minus those the builder
    sets itself (sample, seed, device, output key): ``vae`` those of :func:`stmorph.tl.train_vae` plus the
    :class:`~stmorph.models.vae.VAEConfig` fields, ``cellprofiler``/``cnn`` those of
    :func:`stmorph.features.cellprofiler_features`/:func:`~stmorph.features.cnn_features`, ``muse`` those of
    :func:`stmorph.tl.muse` plus ``inputs``, ``baseline`` those of its ``method`` plus ``inputs``.

    Parameters
    ----------
    kind
        A name of :data:`SPACE_KINDS`.
    spec
        The space's table (for ``baseline``, whose keys depend on ``method``).

    Returns
    -------
    The accepted keys, or ``None`` for kinds without a declared key set (e.g. registered by a user).

    Examples
    --------
    >>> sorted(space_parameters("table"))
    ['id_column', 'key', 'obsm_key', 'path']
    """
    import dataclasses

    spec = spec or {}
    if kind in _STATIC_PARAMETERS:
        return set(_STATIC_PARAMETERS[kind])
    if kind == "vae":
        from ..models.vae import VAEConfig
        from ..tl import train_vae

        named = _named_parameters(train_vae, {"sample", "key_added", "device", "random_state", "checkpoint_dir",
                                              "copy", "return_model"}, var_keyword_ok=True) or set()
        return named | ({f.name for f in dataclasses.fields(VAEConfig)} - {"seed"})  # **config_overrides
    if kind == "cellprofiler":
        from ..features import cellprofiler_features

        return _named_parameters(cellprofiler_features, {"sample", "key_added", "copy"})
    if kind == "cnn":
        from ..features import cnn_features

        return _named_parameters(cnn_features, {"data", "key_added", "device", "random_state", "copy"})
    if kind == "muse":
        from ..tl import muse

        keys = _named_parameters(muse, {"mdata", "modalities", "random_state", "device", "key_added", "copy"})
        return None if keys is None else keys | {"inputs"}
    if kind == "baseline":
        from .. import tl

        method = spec.get("method", "concat_pca")
        if method not in _BASELINES:
            return {"inputs", "method"}
        keys = _named_parameters(getattr(tl, method), {"mdata", "modalities", "random_state", "key_added", "copy"})
        return None if keys is None else keys | {"inputs", "method"}
    return None
