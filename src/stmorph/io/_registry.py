"""The reader registry: ``read(path, format=None)`` dispatches to registered readers by name or detection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import StmorphInputError
from ..sample import SpatialSample

__all__ = ["ReaderSpec", "register_reader", "available_formats", "detect_format", "read", "write"]


@dataclass(frozen=True)
class ReaderSpec:
    """One registered reader: a name, a detection predicate and the reading function."""

    name: str
    detect: Callable[[Path], bool] | None
    read: Callable[..., SpatialSample]
    description: str = ""


_READERS: dict[str, ReaderSpec] = {}


def register_reader(
    name: str,
    *,
    detect: Callable[[Path], bool] | None,
    read: Callable[..., SpatialSample],
    description: str = "",
    overwrite: bool = False,
) -> ReaderSpec:
    """Register a reader so that :func:`read` can use it by name and, with ``detect``, by auto-detection.

    Parameters
    ----------
    name
        Format name (``read(path, format=name)``).
    detect
        ``detect(path) -> bool``: whether ``path`` is in this format; ``None``: never auto-detected. Detection
        runs in registration order; the first match wins.
    read
        ``read(path, **kwargs) -> SpatialSample``.
    description
        One line shown by ``available_formats(describe=True)`` and the CLI.
    overwrite
        Replace an existing reader of that name (otherwise an error).

    Returns
    -------
    ReaderSpec
        The registered entry.

    Examples
    --------
    >>> from stmorph.io import register_reader, read
    >>> register_reader("mylab", detect=lambda p: (p / "mylab.json").exists(), read=my_reader)  # doctest: +SKIP
    >>> sample = read("some_folder")  # doctest: +SKIP
    """
    if not overwrite and name in _READERS:
        raise ValueError(f"a reader named '{name}' is already registered; pass overwrite=True to replace it")
    if not callable(read) or (detect is not None and not callable(detect)):
        raise TypeError("read (and detect, unless None) must be callables")
    spec = ReaderSpec(name, detect, read, description)
    _READERS[name] = spec
    return spec


def available_formats(describe: bool = False) -> list[str] | dict[str, str]:
    """Names of the registered formats (in detection order), or ``{name: description}`` with ``describe``.

    Parameters
    ----------
    describe
        Return descriptions too.

    Returns
    -------
    list of str or dict

    Examples
    --------
    >>> from stmorph.io import available_formats
    >>> "xenium" in available_formats()
    True
    """
    if describe:
        return {k: v.description for k, v in _READERS.items()}
    return list(_READERS)


def detect_format(path: str | PathLike) -> str:
    """The first registered format whose ``detect`` accepts ``path``.

    Parameters
    ----------
    path
        A folder or file.

    Returns
    -------
    str
        The format name.

    Examples
    --------
    >>> from stmorph.io import detect_format
    >>> detect_format("/work/shared/data/xenium_breast_crop")  # doctest: +SKIP
    'xenium'
    """
    p = Path(path)
    if not p.exists():
        raise StmorphInputError("path not found", file=p, expected="an existing folder or file")
    for spec in _READERS.values():
        if spec.detect is None:
            continue
        try:
            if spec.detect(p):
                return spec.name
        except OSError:
            continue
    listing = ", ".join(sorted(c.name for c in p.iterdir())[:15]) if p.is_dir() else p.name
    raise StmorphInputError(
        f"cannot tell the format from the files present ({listing})",
        file=p,
        expected=f"one of {available_formats()} (pass format=...)",
    )


def read(path: str | PathLike, format: str | None = None, **kwargs: Any) -> SpatialSample:
    """Read a sample in any registered format; ``format=None`` detects it from the files present.

    Parameters
    ----------
    path
        Folder (or file, for table formats) to read.
    format
        A name of :func:`available_formats` (``"stmorph"``, ``"xenium"``, ``"baysor"``, ``"merfish_tables"``,
        ``"merscope"``, ``"cosmx"``, ``"generic"``, ``"spatialdata"``) or ``None``/``"auto"``.
    **kwargs
        Passed to the reader (e.g. ``z=``, ``pixel_size=``, ``origin=``).

    Returns
    -------
    SpatialSample

    Examples
    --------
    >>> import stmorph as st
    >>> sample = st.io.read("/work/shared/data/merfish_ileum")  # doctest: +SKIP
    >>> sample = st.io.read("xenium_out/", format="xenium", min_qv=20)  # doctest: +SKIP
    """
    if format in (None, "auto"):
        format = detect_format(path)
    if format not in _READERS:
        raise StmorphInputError(f"unknown format '{format}'", expected=f"one of {available_formats()} or 'auto'")
    return _READERS[format].read(path, **kwargs)


def write(sample: SpatialSample, path: str | PathLike, *, copy_images: bool = False, overwrite: bool = False) -> Path:
    """Write ``sample`` as a stmorph sample folder (format ``"stmorph"``; read it back with :func:`read`).

    Parameters
    ----------
    sample
        The sample.
    path
        Target folder (``cells.h5ad``, ``molecules.parquet``, ``images/``, ``sample.json``); written atomically.
    copy_images
        Copy file-backed images into the folder instead of referencing them.
    overwrite
        Replace an existing folder.

    Returns
    -------
    Path
        The folder written.

    Examples
    --------
    >>> import stmorph as st
    >>> st.io.write(sample, "ileum.stmorph")  # doctest: +SKIP
    >>> st.io.read("ileum.stmorph").n_cells  # doctest: +SKIP
    """
    return sample.write(path, copy_images=copy_images, overwrite=overwrite)
