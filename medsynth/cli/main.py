"""The ``medsynth`` command line: thin; it parses, calls the library, maps errors to exit codes.

Exit status: 0 success, 2 bad input (``MedsynthError``), 3 privacy gate failed (``PrivacyError``), 4 a fault of the
machine (``MachineError``), 130 interrupted, 1 an internal error (a bug: please report it with ``--debug`` output).
Errors print as one line, ``medsynth: error: ...`` (usage errors name the command and the value
given: ``medsynth generate: error: Invalid value for '--threads': ... (got '0'); see ...``);
``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from types import ModuleType

import click
import typer

# Each command module registers its commands on the app when imported; the order is the help's.
from medsynth.cli import evaluate, finetune, io, pacs, privacy, protocol, training  # noqa: F401
from medsynth.cli.app import app
from medsynth.errors import MedsynthError, os_fault

_typer_click: ModuleType
try:  # typer >= 0.25 vendors its own click: its exceptions are not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

_EXIT = (click.exceptions.Exit, typer.Exit)
_USAGE = (click.exceptions.ClickException, _typer_click.ClickException)
_ABORT = (click.exceptions.Abort, typer.Abort)


def _given(param_names: list[str], args: list[str]) -> str | None:
    """The value typed for an option (``--opt V`` or ``--opt=V``), or None."""
    for i, a in enumerate(args):
        for name in param_names:
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a[len(name) + 1 :]
    return None


def _usage_line(exc: Exception, args: list[str]) -> str:
    """Click's three-line usage error as one line: command, message, the value given, where to look."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "medsynth"
    message = (exc.format_message() if hasattr(exc, "format_message") else str(exc)).rstrip(".")
    param = getattr(exc, "param", None)
    names = list(getattr(param, "opts", []) or [])
    value = _given(names, args) if names else None
    got = f" (got {value!r})" if value is not None else ""
    return f"{command}: error: {message}{got}; see '{command} --help'"


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="medsynth", standalone_mode=False)
    except _EXIT as exc:
        return exc.exit_code
    except _USAGE as exc:  # usage errors: unknown option, missing argument, value out of range
        print(_usage_line(exc, args), file=sys.stderr)
        return 2
    except _ABORT:
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
        fault = os_fault(exc)  # a full disk, a read-only folder (exit 4), a bad path (2): not bugs
        internal = f"internal error: {type(exc).__name__}: {exc} "
        internal += "(rerun with --debug for the traceback and please report it)"
        print(f"medsynth: error: {fault or internal}", file=sys.stderr)
        return fault.exit_code if fault else 1
    return result if isinstance(result, int) else 0
