"""Versions of Python, the platform and the packages a result depends on (shown in reports, part of cache keys)."""

from __future__ import annotations

import platform
import sys

__all__ = ["versions"]

_PACKAGES = ("stmorph", "torch", "numpy", "scanpy", "anndata", "mudata", "scikit-learn", "scipy", "leidenalg",
             "cp-measure", "matplotlib")


def versions() -> dict[str, str]:
    """Python, platform and package versions (``"not installed"`` for a missing package).

    Returns
    -------
    ``{name: version}``.

    Examples
    --------
    >>> "python" in versions()
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
