"""Writing a command's per-cell result: a plain table (cell id first) or an AnnData file."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import typer

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")


def is_table(path: Path) -> bool:
    """Whether ``path`` names a plain table (csv/tsv/parquet, optionally gzipped)."""
    return path.name.lower().endswith(TABLE_SUFFIXES)


def random_state_option(random_state: int, seed: int | None) -> int:
    """The ``--random-state`` value, or that of the hidden, deprecated ``--seed`` alias when only it is given.

    Parameters
    ----------
    random_state
        ``--random-state`` (default 0).
    seed
        ``--seed`` (``None`` when not given).

    Returns
    -------
    int
        The seed to use.
    """
    if seed is None:
        return int(random_state)
    if random_state not in (0, seed):
        from ..errors import StmorphInputError

        raise StmorphInputError(f"--random-state {random_state} and --seed {seed}",
                                expected="--random-state alone (--seed is its deprecated alias)")
    typer.secho("warning: --seed is deprecated, use --random-state", fg=typer.colors.YELLOW, err=True)
    return int(seed)


def write_obsm(adata: ad.AnnData, key: str, out: Path, *, h5ad: Path | None = None) -> None:
    """Write ``adata.obsm[key]`` as a table (first column ``cell_id``, feature names from
    ``uns[key + "_features"]``) to ``out``; with ``h5ad`` also the whole AnnData. Both are written atomically.

    Parameters
    ----------
    adata
        The cells.
    key
        The ``obsm`` key.
    out
        ``.csv``, ``.tsv``, ``.parquet`` (``.csv.gz``/``.tsv.gz``) file.
    h5ad
        Optional ``.h5ad`` file for the AnnData.
    """
    import pandas as pd

    from .._utils import atomic_path
    from ..errors import StmorphInputError

    if not is_table(out):
        raise StmorphInputError("unsupported output type", file=out, expected=f"a table file: {', '.join(TABLE_SUFFIXES)}")
    names = adata.uns.get(f"{key}_features")
    val = adata.obsm[key]
    if names is None or len(names) != val.shape[1]:
        base = key[2:] if key.startswith("X_") else key
        names = [f"{base}_{i}" for i in range(val.shape[1])]
    df = pd.DataFrame(val, index=pd.Index(adata.obs_names, name="cell_id"), columns=[str(n) for n in names])
    name = out.name.lower()
    with atomic_path(out, suffix="".join(out.suffixes) or ".csv") as tmp:
        if name.endswith(".parquet"):
            df.to_parquet(tmp)
        else:
            df.to_csv(tmp, sep="\t" if ".tsv" in name else ",", compression="gzip" if name.endswith(".gz") else None)
    if h5ad is not None:
        with atomic_path(h5ad, suffix=".h5ad") as tmp:
            adata.write_h5ad(tmp)
    typer.echo(f"{df.shape[0]} cells x {df.shape[1]} features -> {out}" + (f" (and {h5ad})" if h5ad else ""))
