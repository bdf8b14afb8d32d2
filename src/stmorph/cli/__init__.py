"""The ``stmorph`` command line.

Each command lives in its own module ``stmorph/cli/_<name>.py`` exposing ``register(app)``; this file only
lists them. Heavy imports happen inside the commands so ``stmorph --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="stmorph",
    help="What does cell morphology add to the transcripts? Learn, integrate and evaluate morphology + transcript "
    "representations of imaging-based spatial transcriptomics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the stmorph version and exit.", is_eager=True),
    threads: int = typer.Option(
        None, "--threads", help="Threads for torch, numba and BLAS (default: the CPUs this process may use, "
        "affinity and cgroup quota counted; also STMORPH_THREADS). Lower it on a shared machine.",
    ),
) -> None:
    """stmorph command line."""
    from .._threads import settings

    if threads is not None:
        if threads < 1:
            from ..errors import StmorphInputError

            raise StmorphInputError(f"--threads {threads}", expected="a positive number of threads")
        settings.n_threads = threads
        settings.apply()
    if version:
        from .. import __version__

        typer.echo(f"stmorph {__version__}")
        raise typer.Exit()


# one entry per command module (stmorph/cli/_<name>.py with a register(app) function)
_COMMAND_MODULES = [
    "_run",  # run, demo
    "_read",
    "_info",
    "_simulate",
    "_vae",
    "_features",
    "_muse",
    "_evaluate",
]

for _mod in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_mod}").register(app)


#: Options whose value may be left out; they then mean the value given here (``--masks`` alone = the sample's
#: own segmentation). Click's optional values are not reachable through typer, so the arguments are completed
#: before parsing.
OPTIONAL_VALUE_OPTIONS = {"--masks": "sample"}


def expand_optional_values(args: list[str]) -> list[str]:
    """Insert the implied value after an option of :data:`OPTIONAL_VALUE_OPTIONS` given without one.

    Examples
    --------
    >>> expand_optional_values(["features", "cellprofiler", "S", "--masks", "-o", "T.csv"])
    ['features', 'cellprofiler', 'S', '--masks', 'sample', '-o', 'T.csv']
    >>> expand_optional_values(["features", "cellprofiler", "S", "--masks", "lab.tif"])
    ['features', 'cellprofiler', 'S', '--masks', 'lab.tif']
    """
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        if a in OPTIONAL_VALUE_OPTIONS:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or (nxt.startswith("-") and len(nxt) > 1):
                out.append(OPTIONAL_VALUE_OPTIONS[a])
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point; bad input is reported as one clear line (no traceback)."""
    import sys

    from ..errors import StmorphInputError

    args = expand_optional_values(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="stmorph")
    except StmorphInputError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
