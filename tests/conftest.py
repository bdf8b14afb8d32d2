"""Shared pytest fixtures.

Real data lives in ``../shared/data`` beside the repository root; tests that need it use the ``shared_data``
fixture and are skipped with a clear message where it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
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


@pytest.fixture
def chromium_page_check(tmp_path: Path) -> Callable[[Path], dict]:
    """Load an HTML page in headless Chromium and report, after the load event, how many ``<img>`` it has, how
    many failed to decode, and the first script error (``None`` when there was none). Skips without Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); skipping the browser rendering check")

    def check(page: Path) -> dict:
        page = Path(page).resolve()
        probe = tmp_path / f"{page.stem}.check.html"  # the page plus a check run after load (the page is unchanged)
        probe.write_text(page.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load',function(){var imgs=document.images,bad=0;"
            "for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)bad++;}"
            "document.body.setAttribute('data-check','images='+imgs.length+';broken='+bad);});"
            "window.onerror=function(m){document.body.setAttribute('data-error',m);};</script></body>"))
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
               "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        dom = proc.stdout
        assert 'data-check="images=' in dom, proc.stderr[-2000:]
        check = dom.split('data-check="', 1)[1].split('"', 1)[0]
        error = dom.split('data-error="', 1)[1].split('"', 1)[0] if 'data-error="' in dom else None
        return {"images": int(check.split(";")[0].split("=")[1]), "broken": int(check.split(";")[1].split("=")[1]),
                "error": error}

    return check
