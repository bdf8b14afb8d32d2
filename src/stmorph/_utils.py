"""Small shared helpers: random states, torch devices, progress bars, atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = [
    "as_generator",
    "resolve_device",
    "seed_torch",
    "progress",
    "atomic_path",
    "default_num_threads",
]


def as_generator(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` from a seed, a generator or ``None`` (seed 0).

    ``None`` maps to seed 0 rather than to entropy: stmorph results reproduce by default.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        random_state = 0
    return np.random.default_rng(int(random_state))


def resolve_device(device: str | Any = "auto") -> Any:
    """Map ``"auto"`` to CUDA when available (else CPU); pass explicit devices through.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def seed_torch(seed: int) -> Any:
    """Seed torch (CPU and CUDA) and return a seeded :class:`torch.Generator`."""
    import torch

    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def default_num_threads() -> int:
    """Number of worker threads/processes to use by default (all visible cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def progress(iterable: Iterable[T], *, desc: str | None = None, total: int | None = None, disable: bool | None = None, **kw: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm progress bar.

    The bar is hidden when ``disable`` is True, or when ``disable`` is None and the environment variable
    ``STMORPH_PROGRESS=0`` is set (tests and CI set it to keep logs short).
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("STMORPH_PROGRESS", "1") == "0"
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kw)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it into place only if the block succeeds.

    Nothing half-written is ever left at ``path``: on error the temporary file is removed.

    Examples
    --------
    >>> with atomic_path("out.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
