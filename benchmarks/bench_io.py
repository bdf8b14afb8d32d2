"""Reader timings on the shared real data, against the bare pandas parse of the same files.

Run: ``python benchmarks/bench_io.py`` (needs ../shared/data). Prints a table: the stmorph reader, the pandas
``read_csv`` of the same tables (the floor: parsing only), the overhead ratio, and the sample write/read round trip.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import stmorph.io as sio

DATA = Path(os.environ.get("STMORPH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    logging.getLogger("stmorph.io").setLevel(logging.ERROR)
    if not DATA.is_dir():
        sys.exit(f"no shared data at {DATA}")
    il, xe = DATA / "merfish_ileum", DATA / "xenium_breast_crop"
    rows = []

    def pandas_ileum():
        for f in ("gene_counts.csv", "cell_meta_data.csv", "cell_assignment.csv", "stain_vae_embedding.csv"):
            pd.read_csv(il / f)

    t_il = best_of(lambda: sio.read_merfish_tables(il))
    rows.append(("merfish_tables (5,194 cells)", t_il, best_of(pandas_ileum)))
    t_xe = best_of(lambda: sio.read_xenium(xe, origin=(1062.0, 212.0), pixel_size=0.2125))
    rows.append(("xenium crop (186,146 tx)", t_xe, best_of(lambda: pd.read_csv(xe / "transcripts.csv.gz"))))
    s = sio.read_xenium(xe, origin=(1062.0, 212.0), pixel_size=0.2125)
    with tempfile.TemporaryDirectory() as d:
        t_w = best_of(lambda: sio.write(s, Path(d) / "x.stmorph", overwrite=True))
        t_r = best_of(lambda: sio.read(Path(d) / "x.stmorph"))
    print(f"{'reader':32s} {'stmorph s':>10s} {'pandas s':>10s} {'ratio':>7s}")
    for name, t, ref in rows:
        print(f"{name:32s} {t:10.3f} {ref:10.3f} {t / ref:7.2f}")
    print(f"{'write stmorph folder (xenium)':32s} {t_w:10.3f}")
    print(f"{'read stmorph folder (xenium)':32s} {t_r:10.3f}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
