"""Atomic writes: everything is written under a temporary name and renamed when complete.

A crash (even SIGKILL) leaves either the old state or the new one, never a half-written
file. Temporary names start with ``.tmp-`` so that a resumed run can sweep them away.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsynth.errors import machine_error

TMP_PREFIX = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory entry, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    Works for a file or a folder (a DICOM series): whatever the caller creates at the
    yielded path is moved into place in one rename. On error the temporary is removed.

    Raises:
        MachineError: the write failed for a reason of the machine (disk full, permission
            denied, read-only or vanished folder, I/O error), even where a library wrapped the
            OSError (pydicom, PIL, safetensors); the message names ``path``, on one line.

    Example:
        >>> with atomic_path(out / "case.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    final = Path(path)
    tmp = _tmp_sibling(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_dir():
            for child in tmp.rglob("*"):
                if child.is_file():
                    fsync_path(child)
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
        else:
            fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except Exception as exc:
        # An OSError from f.write names no file, and a library's wrapper may carry a whole
        # traceback as its text: name the destination and the cause instead.
        fault = machine_error(exc, final, output=True)
        if fault is None:
            raise
        raise fault from exc
    finally:
        _discard(tmp)


def _discard(tmp: Path) -> None:
    """Remove a leftover temporary, best effort: on a failing disk the removal may fail too, and
    must not hide the first error; the next run's ``remove_stale_temporaries`` sweeps it."""
    try:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any, *, allow_nan: bool = False) -> None:
    """Pretty JSON (sorted keys, indent 2), written atomically.

    ``allow_nan=False`` refuses NaN/inf, which strict JSON readers reject; training logs,
    where a diverged loss is worth recording as it is, pass ``allow_nan=True``.
    """
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=allow_nan) + "\n")


def remove_stale_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Delete leftovers of interrupted atomic writes under ``root``; return what was removed."""
    removed = []
    for p in sorted(Path(root).rglob(f"{TMP_PREFIX}*"), key=lambda q: len(q.parts), reverse=True):
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed
