"""Shared pytest fixtures.

Real data lives in ``../shared/data`` beside the repository root; tests that need it use the ``shared_data``
fixture and are skipped with a clear message where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("STMORPH_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STMORPH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """Keep torch to the cores we have and deterministic."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    # one thread per pytest-xdist worker: two workers x two OpenMP threads on 2 cores oversubscribe, which
    # measured ~3x slower per VAE step than one thread each
    n = 1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(n)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set STMORPH_SHARED_DATA or place ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ileum_dir(shared_data: Path) -> Path:
    d = shared_data / "merfish_ileum"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.fixture(scope="session")
def xenium_crop_dir(shared_data: Path) -> Path:
    d = shared_data / "xenium_breast_crop"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d
