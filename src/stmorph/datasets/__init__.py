"""stmorph.datasets"""
from ._tissue import demo_tissue, synthetic_tissue, write_baysor_layout, write_xenium_layout  # noqa: F401
