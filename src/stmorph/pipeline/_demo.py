"""The demo study: the embedded synthetic tissue through the whole pipeline with CPU-sized presets.

It mirrors the seed study's design at a size that finishes in minutes on 2 CPU cores: transcript counts (TC) and a
limited gene panel, the transcript-spot VAE (LS1), the stain VAE (LS2), the combined VAE (LS5), CellProfiler features,
MUSE of counts with the stain space and its concatenation baseline; then every evaluation, multiplex Leiden of TC
with the stain space, and ridge regression of genes from the stain space. The evaluation uses fewer trees and
permutations than the study (noted in the report's parameters).
"""

from __future__ import annotations

from typing import Any

__all__ = ["demo_config"]


def demo_config(*, seed: int = 0, n_cells: int | None = None) -> dict[str, Any]:
    """The demo configuration as a dictionary (same structure as a TOML study file).

    Parameters
    ----------
    seed
        Seed of the simulation and of every model.
    n_cells
        Number of simulated cells (default 400).

    Examples
    --------
    >>> cfg = demo_config(seed=1)
    >>> cfg["sample"]["reader"]
    'synthetic'
    """
    return {
        "seed": seed,
        "sample": {
            "reader": "synthetic",
            "options": {"n_cells": n_cells or 400, "n_types": 6, "n_genes": 60, "name": "synthetic_tissue"},
        },
        "spaces": {
            "TC": {"kind": "counts"},
            "TC_pca_panel": {"kind": "gene_subset", "method": "pca"},
            "LS1": {"kind": "vae", "preset": "ls1_cpu", "epochs": 6},
            "LS2": {"kind": "vae", "preset": "ls2_cpu", "epochs": 10},
            "LS5": {"kind": "vae", "preset": "ls5_cpu", "epochs": 6},
            "CP": {"kind": "cellprofiler", "size": 64},
            "MUSE_TC_LS2": {"kind": "muse", "inputs": ["TC", "LS2"], "preset": "fast"},
            "concat_TC_LS2": {"kind": "baseline", "method": "concat_pca", "inputs": ["TC", "LS2"]},
        },
        "evaluate": {
            "n_trees": 200,
            "permutations": 199,
            "multiplex": [["TC", "LS2"]],
            "ridge": ["LS2"],
        },
        "report": {"title": "stmorph demo: what does morphology add on a synthetic tissue?"},
    }
