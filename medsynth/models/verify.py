"""Verified model directories: each file's size and SHA-256, recorded in ``config.json``.

A model directory's ``config.json`` holds, beside the ``ModelConfig``, a ``files`` map from a
path relative to the directory to that file's size and digest::

    "files": {
      "unet.safetensors": {"sha256": "9f2c...", "size": 8303296},
      "privacy/index.safetensors": {"sha256": "41ab...", "size": 2975120},
      ...
    }

Each writer records the files it writes, right after writing them: ``save_model`` the three
weight files, ``save_lesion_model`` the ``lesion/`` folder, the privacy index builders their
``privacy/`` folders (``record_folder``). The loaders check the files they are about to read
(``verify_files``), and protocol validation checks them all, so a truncated or damaged copy is
a one-line ``InputError`` naming the file before anything is generated or written.

What is recorded: weights and indexes, never ``config.json`` itself (a record of its own digest
cannot be written into it) nor ``model_card.md`` (training appends to the card after saving,
and a card changes no output). A directory written before records existed, or a file that no
record names, is simply not verifiable: it loads as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from medsynth.digest import sha256_file
from medsynth.errors import InputError
from medsynth.io.atomic import TMP_PREFIX, atomic_write_text

__all__ = [
    "FILES_KEY",
    "FileRecord",
    "read_config_json",
    "record_files",
    "record_folder",
    "records",
    "split_records",
    "verify_files",
]

CONFIG_NAME = "config.json"
FILES_KEY = "files"
UNRECORDED = frozenset({CONFIG_NAME, "model_card.md"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REMEDY = "copy the model again"


@dataclass(frozen=True)
class FileRecord:
    """What config.json says one file should be."""

    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        """The record of the file at ``path`` as it is now."""
        return cls(path.stat().st_size, sha256_file(path))

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


def read_config_json(model_dir: str | Path) -> dict[str, Any]:
    """``model_dir/config.json`` as a dict; one-line ``InputError`` when unreadable or not an object."""
    path = Path(model_dir) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")
    return raw


def _check_relpath(key: Any, where: Path) -> str:
    """A record's key must name a file inside the model directory (no absolute path, no ``..``)."""
    p = PurePosixPath(key) if isinstance(key, str) else None
    if p is None or not key or p.is_absolute() or ".." in p.parts or "\\" in key or str(p) != key or key in UNRECORDED:
        raise InputError(
            f"{where}: {FILES_KEY}[{str(key)[:80]!r}]: expected a relative path of a weight or index file "
            "inside the model directory (such as 'unet.safetensors')"
        )
    return key


def split_records(raw: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, FileRecord]]:
    """Split a parsed config.json into the ``ModelConfig`` part and its file records.

    Args:
        raw: the parsed config.json (not modified).
        where: the config.json path, for messages.

    Raises:
        InputError: a ``files`` entry that is not ``{"size": bytes, "sha256": 64 hex digits}``.
    """
    rest = {k: v for k, v in raw.items() if k != FILES_KEY}
    table = raw.get(FILES_KEY, {})
    if not isinstance(table, dict):
        raise InputError(f"{where}: {FILES_KEY}: expected a map of relative path -> {{size, sha256}}")
    out: dict[str, FileRecord] = {}
    for key, value in table.items():
        rel = _check_relpath(key, where)
        size = value.get("size") if isinstance(value, dict) else None
        digest = value.get("sha256") if isinstance(value, dict) else None
        if (
            not isinstance(value, dict)
            or set(value) != {"size", "sha256"}
            or isinstance(size, bool)
            or not isinstance(size, int)
            or size < 0
            or not isinstance(digest, str)
            or not _SHA256.match(digest)
        ):
            raise InputError(
                f'{where}: {FILES_KEY}[{rel!r}]: expected {{"size": bytes, "sha256": 64 hex digits}}; '
                f"got {json.dumps(value)[:80]}"
            )
        out[rel] = FileRecord(size, digest)
    return rest, out


def records(model_dir: str | Path) -> dict[str, FileRecord]:
    """The file records of a model directory; empty when it has no config.json or no records."""
    root = Path(model_dir)
    if not (root / CONFIG_NAME).is_file():
        return {}
    return split_records(read_config_json(root), root / CONFIG_NAME)[1]


def _write_records(root: Path, raw: dict[str, Any], table: dict[str, FileRecord]) -> None:
    """Rewrite config.json with ``table`` as its records (atomically; the format ``save_model`` writes)."""
    data = {k: v for k, v in raw.items() if k != FILES_KEY}
    if table:
        data[FILES_KEY] = {rel: table[rel].to_dict() for rel in sorted(table)}
    atomic_write_text(root / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _update(root: Path, drop: str | None, relpaths: Iterable[str]) -> dict[str, FileRecord]:
    if not (root / CONFIG_NAME).is_file():
        # A folder saved beside no model config (a test's bare directory): nothing to record into.
        return {}
    raw = read_config_json(root)
    _, table = split_records(raw, root / CONFIG_NAME)
    if drop is not None:
        table = {rel: r for rel, r in table.items() if not rel.startswith(drop)}
    new = {}
    for rel in relpaths:
        rel = _check_relpath(rel, root / CONFIG_NAME)
        path = root / rel
        if not path.is_file():
            raise InputError(f"{path}: missing; cannot record a file that was not written")
        new[rel] = FileRecord.of(path)
    table.update(new)
    _write_records(root, raw, table)
    return new


def record_files(model_dir: str | Path, relpaths: Iterable[str]) -> dict[str, FileRecord]:
    """Record the size and SHA-256 of ``relpaths`` (relative to ``model_dir``) in its config.json.

    Earlier records of the same paths are replaced, others kept. A directory without a
    config.json is left alone (there is no model to verify).

    Returns:
        The records written.
    """
    return _update(Path(model_dir), None, list(relpaths))


def record_folder(model_dir: str | Path, folder: str) -> dict[str, FileRecord]:
    """Record every file now under ``model_dir/folder`` (recursively), replacing all earlier records there.

    For writers that replace a folder whole (``privacy/``, ``lesion/``, ``lesion/privacy/``):
    records of files the folder no longer holds are dropped with it.
    """
    root = Path(model_dir)
    prefix = folder.strip("/") + "/"
    base = root / folder
    found = (
        sorted(
            p.relative_to(root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not any(part.startswith(TMP_PREFIX) for part in p.relative_to(root).parts)
        )
        if base.is_dir()
        else []
    )
    return _update(root, prefix, found)


def _selected(rel: str, only: Sequence[str] | None) -> bool:
    # An entry ending in "/" selects a folder, any other entry one file.
    return only is None or any(rel.startswith(o) if o.endswith("/") else rel == o for o in only)


def verify_files(model_dir: str | Path, only: Sequence[str] | None = None) -> int:
    """Check the recorded files of ``model_dir`` (or those ``only`` selects) against config.json.

    Sizes are checked first for every file (cheap: a truncated copy fails at once), then the
    SHA-256 of each. Files without a record are not checked.

    Args:
        model_dir: a model directory (one without config.json or records passes: not verifiable).
        only: relative paths (``"unet.safetensors"``) and folders (``"privacy/"``, trailing slash)
            to check; all records when None.

    Returns:
        The number of files checked.

    Raises:
        InputError: a recorded file that is missing, of another size or another digest (one
            line naming the file, what it is and what config.json records), or malformed records.
    """
    root = Path(model_dir)
    table = {rel: r for rel, r in records(root).items() if _selected(rel, only)}
    for rel, rec in sorted(table.items()):
        path = root / rel
        if not path.is_file():
            raise InputError(
                f"{path}: missing, but {CONFIG_NAME} records it ({rec.size:,} bytes); "
                f"the model directory is incomplete: {_REMEDY}"
            )
        size = path.stat().st_size
        if size != rec.size:
            raise InputError(
                f"{path}: {size:,} bytes, but {CONFIG_NAME} records {rec.size:,}; "
                f"the file is truncated or replaced: {_REMEDY}"
            )
    for rel, rec in sorted(table.items()):
        digest = sha256_file(root / rel)
        if digest != rec.sha256:
            raise InputError(
                f"{root / rel}: sha256 {digest[:16]}..., but {CONFIG_NAME} records {rec.sha256[:16]}...; "
                f"the file is damaged or replaced: {_REMEDY}"
            )
    return len(table)
