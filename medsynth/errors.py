"""Errors a user can cause.

Every message names the file or field, the value, what was expected and what to do.
The CLI prints ``medsynth: error: <message>`` on one line and exits with ``exit_code``:
2 bad input, 3 privacy gate failed, 4 a fault of the machine (``MachineError``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
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


class MachineError(MedsynthError):
    """A fault of the machine, not of the input: disk full, permission denied, a read-only or
    vanished output folder, an I/O error or an interrupted network share (exit status 4).

    The message is one line, ``<file>: <cause> (<what to do>)``. Every write is atomic and every
    manifest line fsynced, so nothing finished is lost: rerunning the same command once the
    cause is fixed resumes (``generate``, ``train``) or simply writes again.
    """

    exit_code = 4

    def __init__(self, message: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


_RERUN = "rerun the same command: it resumes"
# errno -> (cause, what to do); the faults a user fixes on the machine, whatever the input.
_MACHINE_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", f"free space and {_RERUN}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space or raise the quota and {_RERUN}"),
    errno.EFBIG: ("file too large for this file system", f"move it to one that takes larger files and {_RERUN}"),
    errno.EACCES: ("permission denied", f"fix the folder's permissions and {_RERUN}"),
    errno.EPERM: ("permission denied", f"fix the folder's permissions and {_RERUN}"),
    errno.EROFS: ("read-only file system", f"make it writable and {_RERUN}"),
    errno.EIO: ("I/O error or network share interrupted", f"check the disk or reconnect the share and {_RERUN}"),
    errno.ESTALE: ("I/O error or network share interrupted", f"reconnect the share and {_RERUN}"),
    errno.ENOTCONN: ("I/O error or network share interrupted", f"reconnect the share and {_RERUN}"),
    errno.EHOSTDOWN: ("I/O error or network share interrupted", f"reconnect the share and {_RERUN}"),
    errno.ENXIO: ("I/O error or network share interrupted", f"reconnect the device and {_RERUN}"),
    errno.EMFILE: ("too many open files", f"raise the limit (ulimit -n) and {_RERUN}"),
    errno.ENFILE: ("too many open files", f"raise the limit (ulimit -n) and {_RERUN}"),
}
_VANISHED = ("the output folder vanished", f"restore or remount it and {_RERUN}")
# An OSError's errno, or where a library kept only its text: "[Errno 28] ..." (Python, pydicom's
# re-raised copies) and "(os error 28)" (Rust's io::Error, as safetensors reports it).
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]|\(os error (\d+)\)")


def _os_errors(exc: BaseException) -> Iterator[tuple[int, str | None]]:
    """(errno, filename) of every OS error in ``exc``'s chain (causes and contexts), outermost first.

    Libraries wrap the OSError of a failed write: pydicom re-raises it with its whole traceback
    as the text, PIL as the context of another error, safetensors as a message only.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        filename = getattr(e, "filename", None) if isinstance(e, OSError) else None
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            match = _ERRNO_TEXT.search(str(e))
            code = int(match.group(1) or match.group(2)) if match else None
        if code is not None:
            yield code, None if filename is None else os.fsdecode(filename)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]


def _inside(name: str, folder: Path) -> bool:
    try:
        return Path(name).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def machine_error(
    exc: BaseException, path: object = None, *, output: bool = False, default: object = None
) -> MachineError | None:
    """The ``MachineError`` that ``exc`` amounts to, or None when nothing in its chain is a machine fault.

    Args:
        exc: the exception, an OSError or one wrapping it (see ``_os_errors``).
        path: the file or folder being written; named unless the OS error names a file
            outside its folder (something else failed, so that file is named).
        output: ``exc`` happened while writing output: a missing folder then means it
            vanished (ENOENT is otherwise a missing input, an ``InputError`` elsewhere).
        default: named when neither ``path`` nor the OS error names a file.
    """
    if isinstance(exc, MedsynthError):
        return None  # already says what went wrong
    for code, filename in _os_errors(exc):
        where = path if path is not None else (filename or default)
        if path is not None and filename is not None and not _inside(filename, Path(str(path)).parent):
            where = filename
        if code == errno.ENOENT:
            if not output or where is None or Path(str(where)).parent.is_dir():
                return None  # not a folder that disappeared under a write
            cause, remedy = _VANISHED
        elif code in _MACHINE_FAULTS:
            cause, remedy = _MACHINE_FAULTS[code]
        else:
            continue
        return MachineError(f"{where if where is not None else 'medsynth'}: {cause} ({remedy})", code)
    return None


# What a path the user named can be wrong with, whatever the machine: these stay bad input.
_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST})


def os_error_line(exc: OSError, default: object = None, *, output: bool = False) -> MedsynthError:
    """Any OSError as one line: a machine fault as ``machine_error`` words it (exit status 4), a
    path that cannot be (missing, not a folder, too long) as an ``InputError`` (2), any other
    errno by its system text as a ``MachineError``. The last resort of the CLI and the runner."""
    known = machine_error(exc, output=output, default=default)
    if known is not None:
        return known
    where = exc.filename if exc.filename is not None else default
    # strerror, else the first line only: a library may have put a whole traceback in the text.
    text = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    line = f"{where if where is not None else 'medsynth'}: {text[:1].lower() + text[1:]}"
    if exc.errno in _PATH_ERRNOS:
        return InputError(f"{line} (check the path, then run the same command again)")
    return MachineError(f"{line} (fix it and {_RERUN})", exc.errno)


def os_fault(exc: BaseException) -> MedsynthError | None:
    """The one-line error an exception that escaped to the CLI amounts to: any OSError (see
    ``os_error_line``) or one a library wrapped (see ``machine_error``); None for anything else."""
    return os_error_line(exc) if isinstance(exc, OSError) else machine_error(exc)
