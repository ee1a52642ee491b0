"""SHA-256 digests of files, folders and JSON documents: one chunked reader for all of them.

Used by manifests (each written file), model directories (their weights) and protocols.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def update_from_file(h: Any, path: str | os.PathLike[str]) -> None:
    """Feed a file's bytes to the hash object ``h`` in 1 MiB chunks (bounded memory)."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    update_from_file(h, path)
    return h.hexdigest()


def sha256_lines(lines: Iterable[str]) -> str:
    """Hex SHA-256 of ``lines`` joined by newlines (UTF-8), for lists of relative paths."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def sha256_json(data: Any) -> str:
    """Hex SHA-256 of a JSON document in canonical form (sorted keys), for fingerprints."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def hash_output(path: str | os.PathLike[str]) -> str | dict[str, str]:
    """SHA-256 of a file, or for a folder (a DICOM series) a map ``file name -> sha256``, sorted."""
    path = Path(path)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return sha256_file(path)
