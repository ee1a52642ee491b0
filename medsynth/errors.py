"""Errors a user can cause.

Every message names the file or field, the value, what was expected and what to do.
The CLI prints ``medsynth: error: <message>`` on one line and exits with ``exit_code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsynth.protocol.summary import RunResult


class MedsynthError(Exception):
    """Base of all errors a user can cause; the CLI maps it to ``exit_code``."""

    exit_code: int = 2


class InputError(MedsynthError):
    """A file, folder, CSV or argument that cannot be used as given."""


class ErrorLines(MedsynthError):
    """Several problems at once, printed one per line, each ``medsynth: error:``-prefixed.

    Mixed into an error class (``ProtocolErrors``, ``ConfigErrors``): the CLI prefixes the first
    line itself, so the later lines carry the prefix in the message.
    """

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("\nmedsynth: error: ".join(self.lines))


class ConfigErrors(ErrorLines, InputError):
    """A training config with one or more problems (one line each)."""


class ProtocolError(MedsynthError):
    """A protocol file that does not validate."""


class PrivacyError(MedsynthError):
    """The privacy gate failed a run or a check (exit status 3).

    ``result`` is what a failed protocol run still wrote (its summary, report and cases; only
    ``dataset.json`` is withheld), so a caller can show it; None when there is nothing to show.
    """

    exit_code = 3

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def file_error(path: object, reason: str) -> InputError:
    """An ``InputError`` in the ``<path>: <reason>`` form used for unreadable files."""
    return InputError(f"{path}: {reason}")
