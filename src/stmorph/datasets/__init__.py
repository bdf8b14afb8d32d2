"""stmorph.datasets: seeded simulators.

* :func:`synthetic_tissue` - a tissue of cell types laid out in space, each with its own expression program and
  morphology, rendered into DAPI and membrane images with transcripts inside the cells (the embedded demo data);
  :func:`demo_tissue` is the small cached default, :func:`write_baysor_layout` / :func:`write_xenium_layout` write
  it in vendor layouts.
* :func:`write_xenium_slide` - a slide of many distinct tissues (100k - 1M cells) in the Xenium layout, written
  out of core.
* :func:`simulate_multimodal` - MUSE's two- (or more) modality simulator.
"""

from ._multimodal import simulate_multimodal
from ._slides import write_xenium_slide
from ._tissue import demo_tissue, synthetic_tissue, write_baysor_layout, write_xenium_layout

__all__ = ["demo_tissue", "simulate_multimodal", "synthetic_tissue", "write_baysor_layout", "write_xenium_layout",
           "write_xenium_slide"]
