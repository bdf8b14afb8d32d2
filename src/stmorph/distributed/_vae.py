"""The latent space of a trained cell-crop VAE, encoded tile by tile on a dask.distributed cluster.

Each task loads the saved model (once per worker process), cuts its owned cells' stain crops from its window and
renders their spot planes from its tile's molecules - the inputs :meth:`stmorph.models.vae.CropVAE.get_latent`
builds through :class:`stmorph.crops.CellCropDataset` - and encodes them. The latent means equal the serial ones
to float32 rounding (batches of other sizes; measured max abs difference ~1e-6, tested with ``atol=1e-4``).
"""

from __future__ import annotations

import functools
import shutil
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import StmorphInputError
from ._common import array_hash, channel_ranges, out_folder, polygon_file, write_polygon_inputs
from ._crops import tile_stains
from ._engine import TileTask, crop_task_factory, engine_client, run_tiles
from ._plan import plan_tiles
from ._source import SampleSource
from ._spots import (
    gene_codes,
    render_tile_spots,
    spot_origins_for,
    tile_molecule_index,
    write_molecule_inputs,
)

__all__ = ["vae_latents"]


@functools.lru_cache(maxsize=4)
def _load_model(path: str, stamp: float) -> Any:
    from ..models.vae import CropVAE

    model = CropVAE.load(path)
    assert model.module is not None
    model.module.eval()
    return model


def _vae_tile(
    task: TileTask,
    *,
    model_dir: str,
    model_stamp: float,
    channel_specs: list[dict[str, Any]],
    ranges: list[tuple[float, float]] | None,
    seg_spec: dict[str, Any] | None,
    codes: np.ndarray | None,
    mol_dir: str | None,
    gene_names: tuple[str, ...],
    latent: str,
    batch_size: int,
    device: str,
    random_state: int,
) -> dict[str, np.ndarray]:
    import torch

    from .._utils import resolve_device

    model = _load_model(model_dir, model_stamp)
    c = model.config
    dev = resolve_device(device)
    module = model.module.to(dev)  # type: ignore[union-attr]
    n = len(task.rows)
    size = int(c.crop_size)
    index = origins = None
    if codes is not None:
        index = tile_molecule_index(task, str(mol_dir), gene_names)
        origins = spot_origins_for(index, np.arange(n), task.data["centroids"], size, c.spot_origin,
                                   int(c.spot_padding), task.data["boxes"] if channel_specs else None)
    out = np.empty((n, int(c.latent_dim)), dtype=np.float32)
    cache: dict[str, Any] = {}
    with torch.no_grad():
        for b0 in range(0, n, batch_size):
            sl = slice(b0, min(n, b0 + batch_size))
            spots = stains = None
            if codes is not None:
                assert index is not None and origins is not None
                sp = render_tile_spots(index, np.arange(sl.start, sl.stop), origins[sl], size, int(c.spot_padding),
                                       codes)
                spots = torch.from_numpy(sp.astype(np.float32)).to(dev)
            if channel_specs:
                st = tile_stains(task, channel_specs, size, c.normalize, ranges, seg_spec, bool(c.mask_stains), sl,
                                 cache)
                stains = torch.from_numpy(st).to(dev)
            mu, logvar = module.encode(spots, stains)
            if latent == "sample":
                eps = np.stack([np.random.default_rng([int(random_state), int(r)]).standard_normal(mu.shape[1])
                                for r in task.rows[sl]]).astype(np.float32)
                mu = mu + torch.from_numpy(eps).to(dev, mu.dtype) * torch.exp(0.5 * logvar)
            out[sl] = mu.float().cpu().numpy()
    return {"rows": task.rows, "latent": out}


def vae_latents(
    sample: Any,
    model: Any,
    *,
    out_dir: str | PathLike | None = None,
    latent: Literal["mean", "sample"] = "mean",
    batch_size: int | None = None,
    device: str = "cpu",
    random_state: int = 0,
    key_added: str | None = None,
    tile_size: int = 2048,
    client: Any = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    overwrite: bool | str = False,
    show_progress: bool | None = None,
) -> np.ndarray:
    """Encode every cell with a trained :class:`~stmorph.models.vae.CropVAE`, tile by tile on a cluster.

    Parameters
    ----------
    sample
        A sample folder or a :class:`~stmorph.SpatialSample`.
    model
        A trained :class:`~stmorph.models.vae.CropVAE` (saved to ``out_dir/model`` for the workers) or the folder
        of one saved with :meth:`~stmorph.models.vae.CropVAE.save`.
    out_dir
        Output folder (manifest, per-tile latents as ``.npz``); ``None``: a temporary one (no resume).
    latent
        ``"mean"`` (the posterior mean: equal to :meth:`~stmorph.models.vae.CropVAE.get_latent` to float32
        rounding) or ``"sample"`` (one draw per cell, seeded by ``(random_state, cell row)``, so independent of
        the tiling; the draws differ from the serial ones, which follow the batch order).
    batch_size
        Cells per forward pass (default 4 x the model's training batch size).
    device
        Torch device of the workers (``"cpu"``; ``"auto"`` takes a GPU when the worker has one).
    random_state
        Seed of the draws for ``latent="sample"``.
    key_added
        With a :class:`~stmorph.SpatialSample`: also write the latent to ``adata.obsm[key_added]``.
    tile_size, client, n_workers, scheduler, retries, overwrite, show_progress
        See :func:`~stmorph.distributed.cellprofiler_features`.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, latent_dim)`` float32 in the sample's cell order; NaN rows for cells the model's dataset
        leaves out (``min_cell_transcripts``), as :func:`stmorph.tl.vae` writes them.

    Examples
    --------
    >>> vae.save("ls2_model")  # doctest: +SKIP
    >>> z = vae_latents("tissue.stmorph", "ls2_model", n_workers=2, out_dir="z_tiles")  # doctest: +SKIP
    """
    from ..models.vae import CropVAE

    if latent not in ("mean", "sample"):
        raise StmorphInputError(f"latent={latent!r}", expected="'mean' or 'sample'")
    out, temporary = out_folder(out_dir)
    try:
        inputs = out / "inputs"
        if isinstance(model, CropVAE):
            if model.module is None or model.registry is None:
                raise StmorphInputError("the model is not trained", expected="a trained CropVAE or its folder")
            model_dir = out / "model"
            model.save(model_dir)
        else:
            model_dir = Path(model)
            model = CropVAE.load(model_dir)
        assert model.registry is not None
        model_dir = model_dir.resolve()
        stamp = max((p.stat().st_mtime for p in model_dir.iterdir() if p.is_file()), default=0.0)
        c = model.config
        src = SampleSource.resolve(sample, inputs)
        chans = list(c.channels)
        specs = src.channel_specs(chans)
        genes = list(model.registry["genes"]) if c.spots else []
        if list(model.registry["channels"]) != chans or int(model.registry["crop_size"]) != int(c.crop_size):
            raise StmorphInputError("the model's registration differs from its configuration",
                                    expected="a model saved by CropVAE.save")
        missing = [g for g in genes if g not in set(src.var_names)]
        if missing:
            raise StmorphInputError(f"the model's genes {missing[:10]} are not in the sample", column="var_names",
                                    expected="the genes the model was trained on")
        keep = np.ones(src.n_cells, dtype=bool)
        if c.min_cell_transcripts > 0:
            keep = src.row_sums(genes if c.spots else None) >= c.min_cell_transcripts
        resolved = src.resolve_masks(True, None, inputs) if c.mask_stains else None
        ids = None if resolved is None else resolved[1]
        size = int(c.crop_size)
        plan = plan_tiles(src.centroids, tile_size, crop_size=size, edge=c.stain_edge, image_shape=src.image_shape)
        plan["cells"] = [np.asarray(cl, dtype=np.int64)[keep[np.asarray(cl, dtype=np.int64)]] for cl in plan["cells"]]
        plan["n_cells"] = [len(cl) for cl in plan["cells"]]
        plan = plan[plan["n_cells"] > 0].reset_index(drop=True)
        from ..crops import crop_boxes

        boxes = crop_boxes(src.centroids, size, src.image_shape, edge=c.stain_edge)
        codes = gene_codes(src.var_names, genes) if c.spots else None
        cells_token = array_hash(src.centroids, ids, keep, plan["tile"].to_numpy(),
                                 np.concatenate(list(plan["cells"])) if len(plan) else None)
        bs = int(batch_size or 4 * c.batch_size)

        make_task = crop_task_factory(
            {"boxes": boxes, "centroids": src.centroids, "ids": ids},
            (lambda tile: polygon_file(inputs, tile)) if resolved is not None and resolved[0]["kind"] == "polygons"
            else None,
        )

        def before_submit(pending: Any) -> None:
            if resolved is not None and resolved[0]["kind"] == "polygons":
                write_polygon_inputs(src, pending, inputs)
            if codes is not None:
                write_molecule_inputs(src, plan, inputs, cells_token[:16])

        with engine_client(client, n_workers, scheduler) as cl:
            ranges = channel_ranges(specs, cl, cache_dir=out) if c.normalize == "image" and specs else None
            params = {"model": model._fingerprint(), "weights": array_hash(*[
                          v.detach().cpu().numpy() for v in model.module.state_dict().values()]),  # type: ignore[union-attr]
                      "latent": latent, "random_state": int(random_state), "ranges": ranges,
                      "inputs": src.fingerprint_inputs(), "cells": cells_token}
            common = {"model_dir": str(model_dir), "model_stamp": stamp, "channel_specs": specs, "ranges": ranges,
                      "seg_spec": None if resolved is None else resolved[0], "codes": codes,
                      "mol_dir": str((inputs / "molecules").resolve()) if codes is not None else None,
                      "gene_names": tuple(src.var_names), "latent": latent, "batch_size": bs, "device": device,
                      "random_state": int(random_state)}
            run = run_tiles(_vae_tile, plan, out, make_task=make_task, common=common, params=params, kind="vae",
                            client=cl, retries=retries, overwrite=overwrite, before_submit=before_submit,
                            show_progress=show_progress)
        full = np.full((src.n_cells, int(c.latent_dim)), np.nan, dtype=np.float32)
        for f in run.files().values():
            with np.load(f) as z:
                full[z["rows"]] = z["latent"]
        if key_added is not None and src.sample is not None:
            src.sample.adata.obsm[key_added] = full
        return full
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
