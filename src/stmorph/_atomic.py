"""Atomic writes: write beside the final place, move into place in one step only when the writing succeeded.

* :func:`atomic_dir` - a folder (a sample folder, a vendor layout, a pipeline stage, stitched images);
* :func:`atomic_path` - one file (a manifest, a table, model weights).

A failed or interrupted write never leaves anything half-written at the final path: on error the temporary
folder or file is removed, and the final path keeps its previous content.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, unique: bool = True) -> Iterator[Path]:
    """Yield a new hidden folder beside ``path``; rename it to ``path`` when the block succeeds.

    Parameters
    ----------
    path
        The folder to create.
    overwrite
        Replace an existing ``path`` (a folder or a file; removed only once the block has succeeded). When
        false and ``path`` exists, :class:`FileExistsError` is raised before anything is written.
    unique
        ``True``: the temporary folder is ``.<name>.partial-<random>``, so concurrent writers of one target do not
        collide. ``False``: it is ``.<name>.partial`` and a leftover of a killed write is removed first (one
        writer per target; repeated interrupted runs do not pile up partial folders).

    Yields
    ------
    pathlib.Path
        The empty temporary folder to write into.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> with atomic_dir("out_dir", overwrite=True) as tmp:  # doctest: +SKIP
    ...     (tmp / "table.csv").write_text("a,b\\n")
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    suffix = f"-{uuid.uuid4().hex[:8]}" if unique else ""
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    if not unique and tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            _remove(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; move it into place (replacing ``path``) if the block succeeds.

    The temporary file is not created: the block writes it (its permissions follow the umask, as for any other
    file written). On error it is removed.

    Parameters
    ----------
    path
        The file to write.
    suffix
        Suffix of the temporary name (default ``.tmp``), for writers that choose the format from it (``.h5ad``,
        ``.npz``, ``.csv.gz``).

    Yields
    ------
    pathlib.Path
        The temporary file path to write.

    Examples
    --------
    >>> with atomic_path("out.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{suffix or '.tmp'}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
