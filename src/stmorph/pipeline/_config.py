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

import difflib
import tomllib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import StmorphInputError

__all__ = ["StudyConfig", "load_config", "config_from_dict"]

_TOP_KEYS = {"sample", "spaces", "evaluate", "report", "compute", "out", "seed", "label_key", "device"}
#: ``[compute]``: per-cell work on a Dask cluster (``stmorph.distributed``); results equal the serial ones.
_COMPUTE_KEYS = {"workers": 1, "scheduler": "", "tile_size": 2048}


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
    compute
        ``[compute]``: ``workers`` (Dask worker processes for per-cell work; 1 = serial), ``scheduler`` (the
        address of a running Dask scheduler) and ``tile_size`` (pixels).
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
    compute: dict[str, Any] = field(default_factory=dict)


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
    """Validate a configuration given as a dictionary (same structure as the TOML file).

    The whole configuration is checked before anything is computed: unknown keys in every section (with a
    "did you mean"), the reader name, each space's ``kind`` and the keys its builder accepts
    (:func:`stmorph.pipeline._spaces.space_parameters`), ``[evaluate]`` keys (fields of
    :class:`stmorph.eval.EvalConfig` plus ``multiplex``, ``ridge``, ``exclude_labels``, ``min_label_size``,
    ``figures``) and their types, and that ``multiplex``/``ridge``/``inputs`` name defined spaces.

    Parameters
    ----------
    raw
        The configuration (TOML structure).
    base_dir
        Folder relative paths are resolved against.
    source
        The file it came from (named in errors).
    out
        Override of the output folder.

    Returns
    -------
    The validated :class:`StudyConfig`.

    Raises
    ------
    StmorphInputError
        Naming the file, the key path (e.g. ``evaluate.permutatons``) and what was expected.
    """
    base_dir = Path(base_dir)
    where = source if source is not None else "<config>"
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        hints = "".join(_did_you_mean(k, _TOP_KEYS) for k in sorted(unknown))
        raise StmorphInputError(f"unknown top-level keys {sorted(unknown)}{hints}", file=where,
                                expected=f"keys among {sorted(_TOP_KEYS)}")
    _validate(raw, where)
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
        for key in ("path", "masks"):  # file paths relative to the config (masks = true: the sample's own)
            val = spec.get(key)
            if isinstance(val, str) and not (key == "masks" and val == "sample"):
                p = Path(val).expanduser()
                spec[key] = str(p if p.is_absolute() else (base_dir / p).resolve())
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
        compute=dict(raw.get("compute") or {}),
    )


# -- whole-config validation: every section is checked before anything is computed ---------------------------
_SAMPLE_KEYS = {"reader", "path", "options", "annotate"}
_REPORT_KEYS = {"title", "prune_stale"}
# evaluate_study arguments the pipeline sets itself (a key in [evaluate] would clash with them)
_EVALUATE_SET_BY_RUN = {"sample": "", "frames": "", "out": "the top-level `out`", "label_key": "the top-level `label_key`",
                        "random_state": "the top-level `seed`"}


def _did_you_mean(key: str, allowed: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(map(str, allowed)), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown_keys(section: dict[str, Any], allowed: set[str], prefix: str, problems: list[tuple[str, str]]) -> None:
    for k in section:
        if k not in allowed:
            problems.append((f"{prefix}.{k}", f"unknown key{_did_you_mean(k, allowed)} (expected one of {sorted(allowed)})"))


def _type_problem(value: Any, default: Any) -> str | None:
    """What is wrong with ``value`` for a field whose default is ``default`` (``None`` if nothing is)."""
    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if isinstance(default, float) or default is None:
        return None if is_num(value) else "expected a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            return "expected a list"
        if default and isinstance(default[0], str):
            return None if all(isinstance(v, str) for v in value) else "expected a list of strings"
        if default and is_num(default[0]):
            return None if all(is_num(v) for v in value) else "expected a list of numbers"
    return None


def _evaluate_keys() -> dict[str, Any]:
    """Keys of [evaluate] with their defaults (the type to check): EvalConfig fields + evaluate_study's options."""
    import dataclasses
    import inspect

    from ..eval import EvalConfig
    from ._evaluate import evaluate_study

    keys: dict[str, Any] = {}
    for f in dataclasses.fields(EvalConfig):
        keys[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    for name, p in inspect.signature(evaluate_study).parameters.items():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            keys[name] = p.default if p.default is not p.empty else None
    for k in _EVALUATE_SET_BY_RUN:
        keys.pop(k, None)
    return keys


def _validate(raw: dict[str, Any], where: str | PathLike) -> None:
    """Check every section of a raw configuration; raise one error listing all problems."""
    from ._spaces import SPACE_KINDS, space_parameters

    problems: list[tuple[str, str]] = []
    for key, kind, what in (("seed", int, "an integer"), ("label_key", str, "a string"), ("device", str, "a string"),
                            ("out", str, "a path (string)")):
        if key in raw and (not isinstance(raw[key], kind) or isinstance(raw[key], bool)):
            problems.append((key, f"expected {what}, got {raw[key]!r}"))
    # [sample]
    sample = raw.get("sample")
    if sample is not None and not isinstance(sample, dict):
        problems.append(("sample", "expected a table ([sample])"))
    elif sample:
        _unknown_keys(sample, _SAMPLE_KEYS, "sample", problems)
        reader = sample.get("reader")
        if reader is not None:
            from ..io import available_formats

            readers = list(dict.fromkeys([*available_formats(), "synthetic", "stmorph", "auto"]))
            if reader not in readers:
                problems.append(("sample.reader", f"unknown reader {reader!r}{_did_you_mean(str(reader), readers)} "
                                                  f"(expected one of {readers})"))
        if "options" in sample and not isinstance(sample["options"], dict):
            problems.append(("sample.options", "expected a table of reader arguments"))
        if "annotate" in sample and not isinstance(sample["annotate"], dict):
            problems.append(("sample.annotate", "expected a table (reference = 'ref.csv', ...)"))
    # [spaces.*]
    spaces = raw.get("spaces") if isinstance(raw.get("spaces"), dict) else {}
    for name, spec in spaces.items():
        if not isinstance(spec, dict):
            continue  # reported by config_from_dict
        kind = spec.get("kind")
        prefix = f"spaces.{name}"
        if kind is None:
            continue
        if kind not in SPACE_KINDS:
            problems.append((f"{prefix}.kind", f"unknown kind {kind!r}{_did_you_mean(str(kind), SPACE_KINDS)} "
                                               f"(expected one of {sorted(SPACE_KINDS)})"))
            continue
        allowed = space_parameters(kind, spec)
        if allowed is not None:
            _unknown_keys({k: v for k, v in spec.items() if k != "kind"}, allowed, prefix, problems)
        if kind == "table" and not spec.get("path"):
            problems.append((f"{prefix}.path", "a table space needs a `path` (CSV/TSV, parquet, .h5ad or .loom)"))
        if kind == "baseline" and "method" in spec:
            from ._spaces import _BASELINES

            if spec["method"] not in _BASELINES:
                problems.append((f"{prefix}.method", f"unknown baseline {spec['method']!r}"
                                                     f"{_did_you_mean(str(spec['method']), _BASELINES)} "
                                                     f"(expected one of {list(_BASELINES)})"))
        if "inputs" in spec:
            inputs = spec["inputs"]
            if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
                problems.append((f"{prefix}.inputs", "expected a list of space names"))
            else:
                for i in inputs:
                    if i not in spaces:
                        problems.append((f"{prefix}.inputs", f"{i!r} is not a feature space{_did_you_mean(i, spaces)} "
                                                             f"(expected names among {list(spaces)})"))
    # [compute]
    comp = raw.get("compute")
    if comp is not None and not isinstance(comp, dict):
        problems.append(("compute", "expected a table ([compute])"))
    elif comp:
        _unknown_keys(comp, set(_COMPUTE_KEYS), "compute", problems)
        for k, default in _COMPUTE_KEYS.items():
            if k in comp:
                msg = _type_problem(comp[k], default)
                if msg is None and k in ("workers", "tile_size") and comp[k] < 1:
                    msg = "expected a positive integer"
                if msg:
                    problems.append((f"compute.{k}", msg))
    # [evaluate]
    ev = raw.get("evaluate")
    if ev is not None and not isinstance(ev, dict):
        problems.append(("evaluate", "expected a table ([evaluate])"))
    elif ev:
        keys = _evaluate_keys()
        for k, v in ev.items():
            if k in _EVALUATE_SET_BY_RUN:
                use = _EVALUATE_SET_BY_RUN[k]
                problems.append((f"evaluate.{k}", f"set by the pipeline, not in [evaluate]{f'; use {use}' if use else ''}"))
            elif k not in keys:
                problems.append((f"evaluate.{k}", f"unknown key{_did_you_mean(k, keys)} (expected one of "
                                                  f"{sorted(keys)}: stmorph.eval.EvalConfig fields and "
                                                  "multiplex, ridge, exclude_labels, min_label_size, figures)"))
            elif k == "protocol":
                from ..eval._cluster import PROTOCOLS

                if v not in PROTOCOLS:
                    problems.append(("evaluate.protocol", f"unknown protocol {v!r}{_did_you_mean(str(v), PROTOCOLS)} "
                                                          f"(expected one of {list(PROTOCOLS)})"))
            elif k == "multiplex":
                ok = isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v)
                if not ok:
                    problems.append(("evaluate.multiplex", "expected a list of pairs, e.g. [['TC', 'LS2']]"))
                    continue
                for p in v:
                    for s in p:
                        if s not in spaces:
                            problems.append(("evaluate.multiplex", f"{s!r} is not a feature space"
                                                                   f"{_did_you_mean(str(s), spaces)} (expected names "
                                                                   f"among {list(spaces)})"))
            elif k == "ridge":
                if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                    problems.append(("evaluate.ridge", "expected a list of space names, e.g. ['LS2']"))
                    continue
                for s in v:
                    if s not in spaces:
                        problems.append(("evaluate.ridge", f"{s!r} is not a feature space{_did_you_mean(s, spaces)} "
                                                           f"(expected names among {list(spaces)})"))
            elif k == "exclude_labels":
                if not isinstance(v, list):
                    problems.append(("evaluate.exclude_labels", "expected a list of labels, e.g. ['Removed']"))
            elif k == "min_label_size":
                if not isinstance(v, int) or isinstance(v, bool):
                    problems.append(("evaluate.min_label_size", "expected an integer"))
            else:
                bad = _type_problem(v, keys[k])
                if bad:
                    problems.append((f"evaluate.{k}", f"{bad}, got {v!r}"))
    # [report]
    rep = raw.get("report")
    if rep is not None and not isinstance(rep, dict):
        problems.append(("report", "expected a table ([report])"))
    elif rep:
        _unknown_keys(rep, _REPORT_KEYS, "report", problems)
    if problems:
        lines = "\n".join(f"  {k}: {msg}" for k, msg in problems)
        raise StmorphInputError(f"{len(problems)} problem(s) in the configuration:\n{lines}", file=where,
                                column=problems[0][0])
