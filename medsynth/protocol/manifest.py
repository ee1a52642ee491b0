"""The output folder's bookkeeping: manifest lines, the run file, file hashes, resume clean-up.

Layout of an output folder::

    .medsynth-run.json           which protocol (sha256), plan and model made this folder
    dicom/<case_id>/0001.dcm...  one folder per case (a DICOM series)
    nifti/<case_id>.nii.gz
    png/<case_id>.png
    manifest.jsonl               one line per finished case, in plan order at the end of a run
    rejected.jsonl               privacy-flagged attempts that were not written (audit trail)
    dataset.json                 MONAI datalist of the written cases
    privacy_report.{json,html}   the memorization check (when the gate is on)
    summary.json

A case's manifest line is appended only after all its files are renamed into place and
synced, and the manifest is fsynced after each line. So after a crash every listed file is
complete; a torn last line (killed mid-append) is cut off, and files no line lists are
removed by ``remove_unlisted`` before a run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medsynth.errors import InputError
from medsynth.io.atomic import atomic_write_text, fsync_path

MANIFEST = "manifest.jsonl"
REJECTED = "rejected.jsonl"
RUN_FILE = ".medsynth-run.json"
DATASET = "dataset.json"
SUMMARY = "summary.json"
FORMAT_DIRS = ("dicom", "nifti", "png")
# Files a run writes at the top of its output folder (a --force restart removes exactly these).
RUN_OUTPUTS = (RUN_FILE, MANIFEST, REJECTED, DATASET, SUMMARY, "privacy_report.json", "privacy_report.html")


def rank_part(name: str, rank: int) -> str:
    """``manifest.jsonl`` -> ``manifest.rank-3.jsonl``: the part one distributed rank appends to."""
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.rank-{rank}.{ext}"


def dumps(record: dict[str, Any]) -> str:
    """One manifest line (sorted keys, so equal records are equal bytes)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


class JsonlAppender:
    """Appends JSON lines; each line is written with one ``write`` and fsynced before returning."""

    def __init__(self, path: Path):
        self.path = Path(path)
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_path(self.path.parent)  # the new directory entry must survive a crash too

    def append(self, record: dict[str, Any]) -> None:
        data = (dumps(record) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a short write to a regular file means the disk is full
            raise InputError(f"{self.path}: could not append a whole line (disk full?)")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a crash mid-append) is dropped.

    Args:
        path: the file; a missing file has no records.
        repair: also cut the torn line off the file itself.

    Raises:
        InputError: a line other than the last is not a JSON object (the file was edited or damaged).
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (torn if non-empty)
    records: list[dict[str, Any]] = []
    good_bytes = 0
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            if number == len(complete) and not tail:
                break  # the last line, torn in a way that still ended with a newline
            raise InputError(
                f"{path}: line {number} is not a JSON object; the file was edited or damaged "
                "(restore it, or start over with --force)"
            )
        records.append(record)
        good_bytes += len(line) + 1
    if repair and good_bytes != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
            fh.flush()
            os.fsync(fh.fileno())
    return records


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_output(path: Path) -> str | dict[str, str]:
    """SHA-256 of a file, or for a folder (a DICOM series) a map ``file name -> sha256``, sorted."""
    path = Path(path)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return sha256_file(path)


def listed_paths(records: Iterable[dict[str, Any]]) -> set[str]:
    """Every ``files`` entry (relative to the output folder) of the given manifest records."""
    return {rel for r in records for rel in r.get("files", {}).values()}


def remove_unlisted(out_dir: Path, listed: set[str]) -> list[Path]:
    """Delete entries of the format folders that no manifest line lists (a case cut short)."""
    removed = []
    for fmt in FORMAT_DIRS:
        folder = Path(out_dir) / fmt
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.relative_to(out_dir).as_posix() not in listed:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
    return removed


def read_run_file(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc}); start over with --force") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; start over with --force")
    return data


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
