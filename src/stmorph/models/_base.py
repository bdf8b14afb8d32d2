"""What every stmorph model shares: saving and loading, and the data registry checked on use (scvi-tools style).

A model is split like scvi-tools: a PyTorch *module* (the network), a *training* function, and a user-facing
*model* class deriving from :class:`BaseModel`. The model keeps

* ``module`` - the network;
* a configuration (whatever rebuilds the network: :meth:`BaseModel._config_dict`);
* ``registry`` - the data the model was trained on, registered at the first fit: the feature names (genes,
  feature columns per modality), stain channels, crop size... Data given to a trained model is checked against
  it (:func:`check_names`), so features in another order, renamed or missing are found instead of silently
  fed to the wrong inputs.

:meth:`BaseModel.save` writes a folder with the weights (``model.pt``, a plain ``state_dict`` read back with
``weights_only=True``) and one JSON file (``<model>.json``: format, version, configuration, registry and the
model's own extras such as the training history); :meth:`BaseModel.load` rebuilds the model from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .._utils import atomic_path
from ..errors import StmorphInputError

__all__ = ["BaseModel", "check_names", "to_jsonable"]

log = logging.getLogger("stmorph.models")

M = TypeVar("M", bound="BaseModel")

#: How many differing names an error message lists.
_N_SHOWN = 5


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars, tuples and paths turned into plain JSON types (recursively).

    Parameters
    ----------
    obj
        Nested dicts, lists, tuples, numpy values, paths, numbers, strings, None.

    Returns
    -------
    The same structure in types :func:`json.dumps` writes.

    Examples
    --------
    >>> to_jsonable({"a": np.arange(2), "b": (np.float32(0.5), None)})
    {'a': [0, 1], 'b': [0.5, None]}
    """
    from .._utils import jsonable

    return jsonable(obj, default=lambda v: str(v) if isinstance(v, PathLike) else v)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PathLike):
        return str(obj)
    return float(obj)


def _shown(names: Sequence[str]) -> str:
    more = f" and {len(names) - _N_SHOWN} more" if len(names) > _N_SHOWN else ""
    return f"{list(names[:_N_SHOWN])}{more}"


def check_names(
    registered: Sequence[Any],
    given: Sequence[Any] | None,
    *,
    what: str = "features",
    reorder: bool = True,
) -> np.ndarray | None:
    """Check the names of the data given to a model against the ones it was trained on.

    Parameters
    ----------
    registered
        Names in the model's registry, in the order of its inputs.
    given
        Names of the data, in its column order (``None``: the data carries no names; nothing to check).
    what
        What the names are, for messages (``"modality 'rna' features"``, ``"genes"``).
    reorder
        When every registered name is present (once) in ``given`` but in another order, or among other names,
        return the columns to take instead of raising. ``False``: any difference raises.

    Returns
    -------
    ``None`` when ``given`` is ``None`` or equals ``registered``; otherwise (``reorder``) the positions in
    ``given`` of the registered names, in registered order (``data[:, idx]`` matches the model).

    Raises
    ------
    StmorphInputError
        When names differ and cannot be matched; the message names the missing and unknown names and the first
        positions that differ.

    Examples
    --------
    >>> check_names(["a", "b", "c"], ["a", "b", "c"]) is None
    True
    >>> check_names(["a", "b", "c"], ["c", "a", "b"]).tolist()
    [1, 2, 0]
    >>> check_names(["a", "b"], ["a", "x"])  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StmorphInputError: features differ from the ones the model was trained on: missing ['b'] ...
    """
    if given is None:
        return None
    reg = [str(v) for v in registered]
    got = [str(v) for v in given]
    if got == reg:
        return None
    unique = len(set(reg)) == len(reg) and len(set(got)) == len(got)
    pos = {n: i for i, n in enumerate(got)}
    if reorder and unique and all(n in pos for n in reg):
        idx = np.array([pos[n] for n in reg], dtype=np.intp)
        if len(got) > len(reg):
            log.warning("%s: %d columns the model was not trained on are left out", what, len(got) - len(reg))
        else:
            log.info("%s: reordered to the model's order", what)
        return idx
    got_set, reg_set = set(got), set(reg)
    missing = [n for n in reg if n not in got_set]
    unknown = [n for n in got if n not in reg_set]
    first = [(i, g, r) for i, (g, r) in enumerate(zip(got, reg)) if g != r]
    parts = []
    if len(got) != len(reg):
        parts.append(f"{len(got)} instead of {len(reg)}")
    if missing:
        parts.append(f"missing {_shown(missing)}")
    if unknown:
        parts.append(f"not trained on {_shown(unknown)}")
    if first:
        shown = ", ".join(f"{g!r} where the model has {r!r} (position {i})" for i, g, r in first[:_N_SHOWN])
        parts.append(f"first mismatches: {shown}")
    if not missing and not unknown:
        parts.append("the same names in another order" if len(got) == len(reg) else "repeated names")
    raise StmorphInputError(
        f"{what} differ from the ones the model was trained on: " + "; ".join(parts),
        expected=f"the {len(reg)} registered names" + (" (any order)" if reorder and unique else " in the registered order"),
    )


class BaseModel:
    """Base of stmorph's user-facing models: a module, a configuration and a data registry, saved together.

    Subclasses set the class attributes and implement :meth:`_config_dict` and :meth:`_from_meta`; they may add
    entries to the saved metadata with :meth:`_extra_meta` and refuse to save with :meth:`_check_savable`.

    Attributes
    ----------
    module
        The PyTorch module (``None`` until built).
    registry
        The data registration (feature names, channels, crop size...; ``None`` until the first fit): a
        JSON-serialisable dict, saved with the model and checked when data is given to it.

    Examples
    --------
    >>> class Tiny(BaseModel):  # doctest: +SKIP
    ...     _FORMAT, _META_FILE = "example.Tiny", "tiny.json"
    ...     def _config_dict(self): return {"n": self.n}
    ...     @classmethod
    ...     def _from_meta(cls, meta, **kw): ...
    """

    #: Format tag written to and checked in the metadata file.
    _FORMAT: ClassVar[str] = "stmorph.BaseModel"
    #: Highest metadata version this class reads (and the one it writes).
    _FORMAT_VERSION: ClassVar[int] = 1
    #: Metadata file in the saved folder.
    _META_FILE: ClassVar[str] = "model.json"
    #: Weights file in the saved folder.
    _WEIGHTS_FILE: ClassVar[str] = "model.pt"
    #: What the model is, for messages ("VAE", "MUSE").
    _WHAT: ClassVar[str] = "model"

    module: Any = None
    registry: dict[str, Any] | None = None

    # -- hooks -----------------------------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        """The configuration saved with the model (enough, with the registry, to rebuild the module)."""
        raise NotImplementedError

    def _extra_meta(self) -> dict[str, Any]:
        """Further entries of the metadata file (e.g. the training history)."""
        return {}

    def _check_savable(self) -> None:
        """Raise when the model cannot be saved (e.g. not trained yet)."""
        if self.module is None:
            raise RuntimeError("nothing to save: the model has no module yet")

    @classmethod
    def _from_meta(cls: type[M], meta: dict[str, Any], **kwargs: Any) -> M:
        """A model with its module built (random weights) and its registry set, from the metadata."""
        raise NotImplementedError

    # -- persistence -----------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"format": self._FORMAT, "version": self._FORMAT_VERSION, "config": self._config_dict(),
                "registry": self.registry, **self._extra_meta()}

    def save(self, path: str | PathLike, *, overwrite: bool = True) -> Path:
        """Write the weights (``model.pt``) and the configuration, registry and extras (a JSON file) to a folder.

        Parameters
        ----------
        path
            Folder (created).
        overwrite
            Replace existing files.

        Returns
        -------
        pathlib.Path
            The folder.

        Examples
        --------
        >>> model.save("models/m")  # doctest: +SKIP
        """
        import torch

        self._check_savable()
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StmorphInputError(f"cannot save the {self._WHAT} into a file", file=path,
                                    expected="a folder path (created)")
        path.mkdir(parents=True, exist_ok=True)
        if not overwrite and (path / self._WEIGHTS_FILE).exists():
            raise FileExistsError(f"{path / self._WEIGHTS_FILE} exists; pass overwrite=True")
        with atomic_path(path / self._WEIGHTS_FILE) as tmp:
            torch.save({k: v.cpu() for k, v in self.module.state_dict().items()}, tmp)
        with atomic_path(path / self._META_FILE) as tmp:
            tmp.write_text(json.dumps(self._meta(), indent=2, default=_json_default))
        return path

    @classmethod
    def read_meta(cls, path: str | PathLike) -> dict[str, Any] | None:
        """The metadata of a folder written by :meth:`save` (``None`` when the folder has no metadata file).

        Parameters
        ----------
        path
            The folder.

        Returns
        -------
        dict or None
            Format, version, configuration, registry and extras.

        Raises
        ------
        StmorphInputError
            When the file belongs to another model or to a newer stmorph.
        """
        meta_path = Path(path) / cls._META_FILE
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise StmorphInputError(f"cannot read the model metadata ({exc})", file=meta_path,
                                    expected=f"a file written by {cls.__name__}.save") from exc
        if not isinstance(meta, dict) or meta.get("format") != cls._FORMAT:
            raise StmorphInputError(f"not a stmorph {cls._WHAT} folder", file=meta_path, expected=cls._FORMAT)
        version = int(meta.get("version", 1))
        if version > cls._FORMAT_VERSION:
            raise StmorphInputError(f"saved by a newer stmorph (format version {version})", file=meta_path,
                                    expected=f"version <= {cls._FORMAT_VERSION}; update stmorph")
        return meta

    @classmethod
    def _restore(cls: type[M], meta: dict[str, Any], state: dict[str, Any], **kwargs: Any) -> M:
        """A model from its metadata and weights."""
        obj = cls._from_meta(meta, **kwargs)
        obj.module.load_state_dict(state)
        return obj

    @classmethod
    def load(cls: type[M], path: str | PathLike, **kwargs: Any) -> M:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            The folder.
        **kwargs
            Passed to the subclass's constructor hook (e.g. ``device``).

        Returns
        -------
        The model.

        Examples
        --------
        >>> model = Model.load("models/m")  # doctest: +SKIP
        """
        import torch

        path = Path(path)
        meta = cls.read_meta(path)
        if meta is None:
            raise StmorphInputError(f"no saved {cls._WHAT} here", file=path,
                                    expected=f"{cls._META_FILE} + {cls._WEIGHTS_FILE} written by {cls.__name__}.save")
        state = torch.load(path / cls._WEIGHTS_FILE, map_location="cpu", weights_only=True)
        return cls._restore(meta, state, **kwargs)
