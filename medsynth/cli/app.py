"""The typer app that every command module of ``medsynth.cli`` registers its commands on."""

from __future__ import annotations

import typer

from medsynth import __version__

app = typer.Typer(
    name="medsynth",
    help="Synthetic medical images from latent diffusion models, with a privacy gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medsynth {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """medsynth: train, generate, gate and evaluate synthetic scans."""
