"""Finding scan files: a readability check and the walk over a dataset folder.

Shared by the dispatcher (``medsynth.io``) and the format readers that look inside
folders (the DICOM header peek), so that every part of ``medsynth.io`` passes over the
same files: hidden files and folders, and the temporaries of interrupted atomic writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from medsynth.errors import file_error
from medsynth.io.atomic import TMP_PREFIX


def check_readable(path: Path) -> None:
    """Raise ``InputError`` when ``path`` does not exist or this user cannot read it."""
    if not path.exists():
        raise file_error(path, "no such file or folder")
    if not os.access(path, os.R_OK):
        raise file_error(path, "permission denied (not readable by this user)")


def walk_files(root: Path) -> list[Path]:
    """Files under ``root`` in sorted order, without hidden files/folders or atomic temporaries."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith((".", TMP_PREFIX)))
    return found
