"""The ``medsynth`` command line: thin; it parses, calls the library, maps errors to exit codes.

Exit status: 0 success, 2 bad input (``MedsynthError``), 3 privacy gate failed
(``PrivacyError``), 1 an internal error (a bug: please report it with ``--debug`` output).
Errors print as one line, ``medsynth: error: ...``; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from typing import Optional

import click
import typer

from medsynth import __version__
from medsynth.errors import MedsynthError

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
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """medsynth: train, generate, gate and evaluate synthetic scans."""


# --- commands are registered below, one block per library module -------------------------


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="medsynth", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.ClickException as exc:  # usage errors: unknown option, missing arg
        exc.show()
        return 2
    except click.exceptions.Abort:
        print("medsynth: error: aborted", file=sys.stderr)
        return 130
    except MedsynthError as exc:
        if debug:
            raise
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medsynth: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's fault: still one line unless --debug
        if debug:
            raise
        print(
            f"medsynth: error: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
