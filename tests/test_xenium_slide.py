"""The out-of-core synthetic Xenium slide (``write_xenium_slide``): it reads back with ``read_xenium`` as the
grid of tissues it was drawn from, and the writer holds only a few tissues at a time."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pandas as pd
import pytest
import tifffile

from stmorph.datasets import _slides, write_xenium_slide
from stmorph.datasets._slides import TissueGrid
from stmorph.io import read_xenium

N_CELLS, TISSUE, SEED = 800, 300, 2  # 3 tissues (the last one cut to 200 cells) on a 2 x 2 grid
KW = {"n_genes": 20, "n_types": 4}


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("slide") / "xenium"
    write_xenium_slide(out, N_CELLS, tissue_cells=TISSUE, seed=SEED, show_progress=False, **KW)
    return out


@pytest.fixture(scope="module")
def truth():
    """The tissues of the slide, drawn again (the grid is deterministic)."""
    grid = TissueGrid(N_CELLS, tissue_cells=TISSUE, seed=SEED, pixel_size=0.5, **KW)
    out = []
    for t in grid:
        s = t.sample
        out.append({"n": t.n_cells, "origin": t.origin, "first": t.first_cell,
                    "X": np.rint(np.asarray(s.adata.X[: t.n_cells])).astype(np.int64),
                    "centroids": np.asarray(s.centroids[: t.n_cells]),
                    "types": s.adata.obs["cell_type"].astype(str).to_numpy()[: t.n_cells],
                    "genes": list(s.gene_names), "cells": t.cells.copy()})
    return grid, out


def test_slide_reads_back_as_its_tissues(slide, truth):
    grid, tissues = truth
    s = read_xenium(slide, labels="cell_types.csv")
    assert s.n_cells == N_CELLS and s.adata.obs_names.is_unique
    assert s.pixel_size == 0.5 and s.images["DAPI"].shape == grid.shape == (2 * grid.block[0], 2 * grid.block[1])
    genes = tissues[0]["genes"]
    assert sorted(s.gene_names) == sorted(genes)
    X = s.adata[:, genes].X
    X = np.rint(X.toarray() if hasattr(X, "toarray") else np.asarray(X)).astype(np.int64)
    for t in tissues:  # cells in slide order: tissue by tissue
        rows = slice(t["first"], t["first"] + t["n"])
        np.testing.assert_array_equal(X[rows], t["X"])
        off = np.array([t["origin"][1], t["origin"][0]], dtype=np.float64)
        np.testing.assert_allclose(s.centroids[rows], t["centroids"] + off, atol=1e-6)
        assert (s.adata.obs["cell_type"].astype(str).to_numpy()[rows] == t["types"]).all()
    assert [t["n"] for t in tissues] == [300, 300, 200]
    # every assigned molecule belongs to one cell of the slide, and molecules match the counts
    mol = s.molecules
    assert mol["cell_id"].dropna().isin(s.adata.obs_names).all()
    assert int(mol["cell_id"].notna().sum()) == int(X.sum())
    assert s.provenance["report"]["segmentation_check"]["inside_own_cell"] > 0.99


def test_slide_masks_own_every_cell_once(slide, truth):
    grid, tissues = truth
    s = read_xenium(slide)
    assert s.segmentation.kind == "raster" and "cells.zarr.zip" in str(s.segmentation.path)
    lab = np.asarray(s.segmentation.read())
    label_id = s.adata.obs["label_id"].to_numpy()
    assert (label_id == np.arange(1, N_CELLS + 1)).all()  # label = row + 1 (XOA 2.x), one label a cell
    present = np.unique(lab[lab > 0])
    np.testing.assert_array_equal(present, np.arange(1, N_CELLS + 1))
    for t in tissues:  # each block holds its tissue's cells (the cut cells of the last one have no mask)
        r0, c0 = t["origin"]
        blk = lab[r0:r0 + t["cells"].shape[0], c0:c0 + t["cells"].shape[1]]
        want = np.where((t["cells"] > 0) & (t["cells"] <= t["n"]), t["cells"] + t["first"], 0)
        np.testing.assert_array_equal(blk, want)
    # the boundaries give the same cells; nuclei keep their cells
    b = read_xenium(slide, segmentation="boundaries")
    assert b.n_cells == N_CELLS and (b.adata.obs["label_id"].to_numpy() > 0).all()
    nb = pd.read_parquet(slide / "nucleus_boundaries.parquet")
    assert set(nb["cell_id"]) <= set(s.adata.obs_names)


def test_slide_files(slide):
    exp = json.loads((slide / "experiment.xenium").read_text())
    assert exp["num_cells"] == N_CELLS and exp["stmorph_slide"]["tissues"] == 3
    tx = pd.read_parquet(slide / "transcripts.parquet")
    assert tx["transcript_id"].is_unique and tx["transcript_id"].is_monotonic_increasing
    assert tx["feature_name"].str.startswith(("NegControlProbe_", "BLANK_")).sum() >= 12
    import pyarrow.parquet as pq

    assert pq.ParquetFile(slide / "transcripts.parquet").metadata.num_row_groups == 3  # one per tissue
    cells = pd.read_parquet(slide / "cells.parquet")
    assert len(cells) == N_CELLS and cells["cell_id"].iloc[0] == "aaaaaaab-1"
    assert (cells["total_counts"] == cells["transcript_counts"] + cells["control_probe_counts"]).all()
    labels = pd.read_csv(slide / "cell_types.csv")
    assert (labels["cell_id"] == cells["cell_id"]).all() and labels["tissue"].tolist()[-1] == 2
    with tifffile.TiffFile(slide / "morphology_focus" / "morphology_focus_0001.ome.tif") as tf:
        levels = tf.series[0].levels
        assert len(levels) >= 2 and levels[0].pages[0].is_tiled
        full = levels[0].asarray()
        np.testing.assert_array_equal(levels[1].asarray(), full[::2, ::2])
        assert "ATP1A1/CD45/E-Cadherin" in tf.ome_metadata
    assert not any(p.name.startswith(".") for p in slide.iterdir())  # the scratch files are gone


def test_writer_holds_a_few_tissues(tmp_path, monkeypatch):
    """Structural memory check: the tissues come from a generator, and while tissue k is drawn no tissue before
    k - 1 is alive anywhere (the writer keeps nothing of a written tissue)."""
    alive: list[weakref.ref] = []
    most = []
    orig = TissueGrid._draw

    def draw(self, *a, **k):
        gc.collect()
        most.append(sum(r() is not None for r in alive))
        out = orig(self, *a, **k)
        alive.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(_slides.TissueGrid, "_draw", draw)
    write_xenium_slide(tmp_path / "x", 5 * 120, tissue_cells=120, seed=1, show_progress=False, n_genes=10,
                       n_types=3, cells_zarr=False, boundaries=False, pyramid=False)
    assert len(alive) >= 5 and max(most) <= 1, most


def test_slide_with_own_cell_ids(tmp_path):
    out = write_xenium_slide(tmp_path / "x", 200, tissue_cells=100, seed=3, xenium_cell_ids=False, n_genes=10,
                             n_types=4, show_progress=False, pyramid=False)
    s = read_xenium(out)  # the masks' rows matched to the cells table by row order
    assert s.adata.obs_names[:2].tolist() == ["0_cell_1", "0_cell_2"] and s.adata.obs_names[-1] == "1_cell_100"
    assert (s.adata.obs["label_id"].to_numpy() == np.arange(1, 201)).all()
    assert s.provenance["report"]["segmentation_check"]["inside_own_cell"] > 0.99


def test_slide_errors(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError):
        write_xenium_slide(tmp_path / "x", 10, tissue_cells=10)
    from stmorph.errors import StmorphInputError

    with pytest.raises(StmorphInputError):
        TissueGrid(10, tissue_cells=5, image_size=100)


# ---------------------------------------------------------------------------------------------------------------
# the streaming conversion (convert_xenium, `stmorph read xenium`) equals read_xenium + write
# ---------------------------------------------------------------------------------------------------------------
def _assert_same_folder(a, b, *, exact_centroids: bool = True) -> None:
    from stmorph import SpatialSample

    sa, sb = SpatialSample.read(a), SpatialSample.read(b)
    assert list(sa.adata.obs_names) == list(sb.adata.obs_names)
    assert list(sa.adata.var_names) == list(sb.adata.var_names)
    xa, xb = sa.adata.X, sb.adata.X
    assert type(xa) is type(xb)
    np.testing.assert_array_equal(xa.toarray() if hasattr(xa, "toarray") else xa,
                                  xb.toarray() if hasattr(xb, "toarray") else xb)
    pd.testing.assert_frame_equal(sa.adata.obs, sb.adata.obs)
    if exact_centroids:
        np.testing.assert_array_equal(sa.centroids, sb.centroids)
    else:
        np.testing.assert_allclose(sa.centroids, sb.centroids, rtol=1e-9)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "molecules.parquet"), pd.read_parquet(b / "molecules.parquet"))
    ma, mb = (json.loads((p / "sample.json").read_text()) for p in (a, b))
    assert ma == mb
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


@pytest.mark.parametrize("options", [
    {"labels": "cell_types.csv", "exclude_labels": ["type_1"], "min_qv": 25.0},
    {"segmentation": "boundaries", "genes": ["gene_003", "gene_001"], "exclude_controls": False},
])
def test_streaming_conversion_equals_in_memory(slide, tmp_path, options, monkeypatch):
    from stmorph.io import _xenium, write
    from stmorph.io._xenium import convert_xenium

    monkeypatch.setattr(_xenium, "_COUNT_FLUSH", 5_000)  # the counts summed over several additions
    write(read_xenium(slide, **options), tmp_path / "mem")
    convert_xenium(slide, tmp_path / "stream", batch_rows=7_000, **options)  # ~8 batches
    _assert_same_folder(tmp_path / "mem", tmp_path / "stream")


def test_streaming_conversion_csv_and_no_cells_table(tmp_path, monkeypatch):
    from stmorph.datasets import synthetic_tissue, write_xenium_layout
    from stmorph.io import _xenium, write
    from stmorph.io._xenium import convert_xenium

    # counts added in several steps while cells and genes are still appearing (the matrix grows)
    monkeypatch.setattr(_xenium, "_COUNT_FLUSH", 700)
    d = write_xenium_layout(synthetic_tissue(n_cells=120, n_types=4, n_genes=12, random_state=5), tmp_path / "x")
    for f in ("cells.csv.gz", "cells.parquet"):
        (d / f).unlink()
    assert (d / "transcripts.csv.gz").exists() and not (d / "transcripts.parquet").exists()
    write(read_xenium(d, min_qv=21.0), tmp_path / "mem")
    convert_xenium(d, tmp_path / "stream", batch_rows=997, min_qv=21.0)
    _assert_same_folder(tmp_path / "mem", tmp_path / "stream", exact_centroids=False)
    with pytest.raises(FileExistsError):
        convert_xenium(d, tmp_path / "stream")


def test_cli_simulates_and_reads_a_slide(tmp_path, capsys, monkeypatch):
    from stmorph.cli import main

    monkeypatch.setenv("STMORPH_PROGRESS", "0")
    raw, out = tmp_path / "raw", tmp_path / "s"
    for args in (["simulate", str(raw), "--as", "xenium", "--n-cells", "250", "--tissue-cells", "100",
                  "--n-genes", "10", "--n-types", "4", "--seed", "1"],
                 ["read", "xenium", str(raw), "--out", str(out), "--labels", "cell_types.csv"]):
        with pytest.raises(SystemExit) as ex:
            main(args)
        assert ex.value.code == 0
    text = capsys.readouterr().out
    assert "3 distinct tissues of 100 cells" in text and "250 cells x 10 genes" in text
    assert " 0 molecules" not in text
    from stmorph import SpatialSample

    s = SpatialSample.read(out)
    assert s.n_cells == 250 and s.provenance["n_molecules"] == len(s.molecules)


def test_streaming_segmentation_check_on_a_sample(slide, tmp_path, monkeypatch):
    from stmorph import SpatialSample
    from stmorph.io import _xenium
    from stmorph.io._xenium import convert_xenium

    monkeypatch.setattr(_xenium, "_CHECK_SAMPLE", 3_000)  # every k-th assigned molecule is kept for the check
    convert_xenium(slide, tmp_path / "s", batch_rows=5_000)
    s = SpatialSample.read(tmp_path / "s")
    full = read_xenium(slide).provenance["report"]["segmentation_check"]
    got = s.provenance["report"]["segmentation_check"]
    assert 0 < got["molecules"] < full["molecules"] and got["inside_own_cell"] > 0.99
    assert s.provenance["n_molecules"] == len(s.molecules)
