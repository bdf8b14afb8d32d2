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
) -> None:
    """stmorph command line."""
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


def main() -> None:
    """Console entry point; bad input is reported as one clear line (no traceback)."""
    from ..errors import StmorphInputError

    try:
        app()
    except StmorphInputError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
