"""stmorph.pp: preprocessing of samples before feature learning.

* :func:`annotate_by_reference` - cell-type labels from reference expression profiles (for samples without labels)
"""

from ._annotate import annotate_by_reference, reference_profiles

__all__ = ["annotate_by_reference", "reference_profiles"]
