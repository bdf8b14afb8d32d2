"""Small shared helpers: random states, torch devices, progress bars, JSON-safe values, atomic writes
(:mod:`stmorph._atomic`, re-exported here)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import PurePath
from typing import Any, TypeVar

import numpy as np

from ._atomic import atomic_dir, atomic_path

T = TypeVar("T")

__all__ = [
    "as_generator",
    "resolve_device",
    "seed_torch",
    "progress",
    "atomic_dir",
    "atomic_path",
    "jsonable",
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


def jsonable(obj: Any, *, default: Callable[[Any], Any] = str, finite: bool = False) -> Any:
    """``obj`` in plain JSON types, recursively: what :func:`json.dumps` writes.

    Mappings become dicts with string keys, lists and tuples lists, numpy arrays nested lists, numpy scalars
    Python numbers, paths strings; strings, numbers, booleans and ``None`` stay; anything else goes through
    ``default``.

    Parameters
    ----------
    obj
        Nested mappings, lists, tuples, numpy values, paths, numbers, strings, None.
    default
        Applied to any other object (``str``; ``repr`` for a fingerprint that tells objects apart; ``lambda v: v``
        to leave them for the caller).
    finite
        Non-finite floats (NaN, inf) become ``None`` (strict JSON has no NaN); default kept as they are.

    Returns
    -------
    The same structure in JSON types.

    Examples
    --------
    >>> jsonable({"a": np.arange(2), 3: (np.float32(0.5), None, PurePath("x"))})
    {'a': [0, 1], '3': [0.5, None, 'x']}
    >>> jsonable([float("nan"), np.inf], finite=True)
    [None, None]
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, default=default, finite=finite) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v, default=default, finite=finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), default=default, finite=finite)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, float) and finite and not math.isfinite(obj):
        return None
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return default(obj)
