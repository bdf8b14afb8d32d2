"""Content-addressed, atomic stage cache for the study pipeline.

A stage's key is the SHA-256 of its configuration section plus the keys of the stages it depends on (and, for
files read from disk, their path, size and modification time). A stage writes into a temporary folder beside its
final place and is renamed into place when it finishes, so a killed run never leaves a half-written stage: the
next run finds the finished stages and redoes only the rest. A changed parameter changes the key of its stage and of
every stage downstream, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_dir

__all__ = ["stage_key", "file_fingerprint", "StageCache", "StageResult"]

_DONE = "_stage.json"


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stage_key(section: Any, *upstream: str) -> str:
    """Hash a JSON-able configuration section together with upstream keys and stmorph's version (hex, 16 characters).

    The version is part of the key because a release may change what a stage computes with the same settings
    (e.g. 0.2.0's default random forest and VAE presets), so a cache written by another version is not reused.

    Examples
    --------
    >>> stage_key({"a": 1, "b": [1, 2]}) == stage_key({"b": [1, 2], "a": 1})
    True
    """
    from .. import __version__

    payload = json.dumps({"section": _canonical(section), "upstream": list(upstream), "stmorph": __version__},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Identify a file (or folder) cheaply by resolved path, size and modification time.

    Stain images can be tens of GB, so content hashing is avoided; touching or replacing a file changes its
    fingerprint and re-runs the stages that read it.
    """
    p = Path(path).resolve()
    if not p.exists():
        return {"path": str(p), "missing": True}
    if p.is_dir():
        entries = sorted((str(f.relative_to(p)), f.stat().st_size, int(f.stat().st_mtime)) for f in p.rglob("*") if f.is_file())
        return {"path": str(p), "entries": hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]}
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime": int(st.st_mtime)}


@dataclass
class StageResult:
    """A finished stage: its folder, key, whether it came from the cache, and its elapsed time."""

    name: str
    key: str
    path: Path
    cached: bool
    seconds: float
    meta: dict[str, Any]


class StageCache:
    """Stage folders ``<root>/<name>-<key>/`` written atomically.

    Parameters
    ----------
    root
        Folder holding the stage folders (``<out>/stages``).
    log
        Callable receiving one line of progress text per stage.
    """

    def __init__(self, root: str | os.PathLike, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def is_done(self, name: str, key: str) -> bool:
        return (self.path(name, key) / _DONE).exists()

    def run(self, name: str, key: str, fn: Callable[[Path], dict[str, Any] | None]) -> StageResult:
        """Run ``fn(tmp_dir)`` unless the stage is cached; return the finished stage.

        ``fn`` writes its outputs into the folder it is given and may return a JSON-able dict of metadata.
        """
        final = self.path(name, key)
        if self.is_done(name, key):
            meta = json.loads((final / _DONE).read_text())
            self.log(f"[{name}] cached ({final.name})")
            return StageResult(name, key, final, True, 0.0, meta)
        t0 = time.perf_counter()
        self.log(f"[{name}] running ...")
        with atomic_dir(final, overwrite=True, unique=False) as tmp:
            meta = fn(tmp) or {}
            seconds = time.perf_counter() - t0
            meta = {"stage": name, "key": key, "seconds": round(seconds, 3), **meta}
            (tmp / _DONE).write_text(json.dumps(_canonical(meta), indent=2, default=str))
        self.log(f"[{name}] done in {seconds:.1f} s")
        return StageResult(name, key, final, False, seconds, meta)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove stage folders whose ``name-key`` is not in ``keep`` (stale results); returns removed names."""
        removed = []
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
                shutil.rmtree(d)
                removed.append(d.name)
        return removed
