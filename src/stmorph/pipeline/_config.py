"""The study configuration (``stmorph run CONFIG.toml``).

A configuration has four parts::

    [sample]                  # where the cells come from: a reader and its arguments
    reader = "xenium"         # any name of stmorph.io.available_formats(), "stmorph" (a saved sample) or "synthetic"
    path = "xenium_output"    # relative paths are relative to the config file
    options = { }             # keyword arguments of the reader
    annotate = { reference = "ref.csv" }   # optional: labels from reference profiles (stmorph.pp)

    [spaces.TC]               # one table per feature space; `kind` picks the builder (see SPACE_KINDS)
    kind = "counts"

    [evaluate]                # stmorph.eval options; multiplex pairs, ridge spaces
    multiplex = [["TC", "LS2"]]

    [report]
    title = "My study"

Top-level keys ``out`` (output folder, default ``<config stem>_out`` beside the config) and ``seed`` (default 0).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import StmorphInputError

__all__ = ["StudyConfig", "load_config", "config_from_dict"]

_TOP_KEYS = {"sample", "spaces", "evaluate", "report", "out", "seed", "label_key", "device"}


@dataclass
class StudyConfig:
    """A parsed, validated study configuration.

    Attributes
    ----------
    sample
        Reader section: ``reader``, ``path`` and ``options``.
    spaces
        Feature spaces by name, each a dict with ``kind`` and its parameters, in file order.
    evaluate
        Evaluation options.
    report
        Report options.
    out
        Output folder.
    seed
        Random seed used by every stage unless a section sets its own.
    label_key
        The ``obs`` column holding cell-type labels.
    device
        Torch device for model training (``"auto"``).
    source
        The file the configuration was read from (``None`` for dictionaries).
    """

    sample: dict[str, Any]
    spaces: dict[str, dict[str, Any]]
    evaluate: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    out: Path = Path("stmorph_out")
    seed: int = 0
    label_key: str = "cell_type"
    device: str = "auto"
    source: Path | None = None


def load_config(path: str | PathLike, *, out: str | PathLike | None = None) -> StudyConfig:
    """Read and validate a TOML study configuration.

    Parameters
    ----------
    path
        The ``.toml`` file.
    out
        Override of the output folder.

    Examples
    --------
    >>> cfg = load_config("docs/examples/xenium_study.toml")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise StmorphInputError("configuration file not found", file=path, expected="a TOML file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StmorphInputError(f"invalid TOML: {exc}", file=path) from exc
    return config_from_dict(raw, base_dir=path.parent, source=path, out=out)


def config_from_dict(
    raw: dict[str, Any],
    *,
    base_dir: str | PathLike = ".",
    source: Path | None = None,
    out: str | PathLike | None = None,
) -> StudyConfig:
    """Validate a configuration given as a dictionary (same structure as the TOML file)."""
    base_dir = Path(base_dir)
    where = source if source is not None else "<config>"
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise StmorphInputError(f"unknown top-level keys {sorted(unknown)}", file=where, expected=f"keys among {sorted(_TOP_KEYS)}")
    sample = dict(raw.get("sample") or {})
    if "reader" not in sample:
        raise StmorphInputError("the [sample] section needs a `reader`", file=where, column="sample.reader", expected="e.g. 'xenium', 'baysor', 'synthetic'")
    if sample.get("path") is not None:
        p = Path(str(sample["path"])).expanduser()
        sample["path"] = str(p if p.is_absolute() else (base_dir / p).resolve())
    sample.setdefault("options", {})
    if isinstance(sample.get("annotate"), dict) and sample["annotate"].get("reference"):
        ref = Path(str(sample["annotate"]["reference"])).expanduser()
        sample["annotate"] = {**sample["annotate"], "reference": str(ref if ref.is_absolute() else (base_dir / ref).resolve())}
    spaces = raw.get("spaces") or {}
    if not isinstance(spaces, dict) or not spaces:
        raise StmorphInputError("no feature spaces: add at least one [spaces.NAME] table", file=where, column="spaces")
    for name, spec in spaces.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise StmorphInputError(f"feature space '{name}' needs a `kind`", file=where, column=f"spaces.{name}.kind")
        if "path" in spec and spec["path"] is not None:
            p = Path(str(spec["path"])).expanduser()
            spec["path"] = str(p if p.is_absolute() else (base_dir / p).resolve())
    if out is None:
        out = raw.get("out")
        if out is None:
            stem = source.stem if source is not None else "stmorph"
            out = base_dir / f"{stem}_out"
        else:
            out = Path(str(out)).expanduser()
            out = out if out.is_absolute() else base_dir / out
    return StudyConfig(
        sample=sample,
        spaces={str(k): dict(v) for k, v in spaces.items()},
        evaluate=dict(raw.get("evaluate") or {}),
        report=dict(raw.get("report") or {}),
        out=Path(out),
        seed=int(raw.get("seed", 0)),
        label_key=str(raw.get("label_key", "cell_type")),
        device=str(raw.get("device", "auto")),
        source=source,
    )
