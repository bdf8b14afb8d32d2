"""``stmorph run CONFIG.toml`` and ``stmorph demo``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        config: Path = typer.Argument(..., help="Study configuration (TOML); see docs/examples/ for the seed study and a Xenium sample."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: the config's `out`, else <config>_out)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only write the log file, print nothing but the report path."),
    ) -> None:
        """Run a whole study: sample -> feature spaces -> evaluation -> HTML report (cached, resumable)."""
        from ..pipeline import run_study

        res = run_study(config, out=out, quiet=quiet)
        typer.echo(res["report"])

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("stmorph_demo"), "--out", "-o", help="Output folder for the demo's report and tables."),
        n_cells: int | None = typer.Option(None, help="Override the number of simulated cells (default from the demo config)."),
        seed: int = typer.Option(0, help="Random seed of the simulation and every model."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the report path."),
    ) -> None:
        """Simulate the embedded synthetic tissue and run the whole study on it with CPU-sized presets."""
        from ..pipeline import config_from_dict, run_study
        from ..pipeline._demo import demo_config

        raw = demo_config(seed=seed, n_cells=n_cells)
        cfg = config_from_dict(raw, out=out)
        res = run_study(cfg, quiet=quiet)
        typer.echo(f"report: {Path(res['report']).resolve()}")
