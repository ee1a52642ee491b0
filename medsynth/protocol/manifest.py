"""The manifest of a generation output folder: one ``ManifestRecord`` per JSON line, and its reader and writer.

A manifest line, keys sorted::

    {"attempt": 0, "case_id": "nodule-CT-00003", "created": "2026-01-01T00:00:00+00:00",
     "files": {"dicom": "dicom/nodule-CT-00003", "nifti": "nifti/nodule-CT-00003.nii.gz"},
     "modality": "CT", "model": {"id": "builtin:phantom-2d", "sha256": "..."},
     "pathology": "nodule", "privacy": {"gate": true, "passed": true, "score": 0.94, ...},
     "protocol_sha256": "...", "sampler": {"method": "dpm++", "steps": 20, ...},
     "seed": 6952788546179835772, "sha256": {"dicom": {"00001.dcm": "..."}, "nifti": "..."}}

plus ``"extend": {"source_index": 0, "strength": 0.5}`` for a case varied from a real scan
(its index in the quota's source list, never its path). ``rejected.jsonl`` holds one
``RejectedRecord`` per privacy-flagged attempt that was not written (the audit trail).

The protocol runner writes both files with ``JsonlAppender``: each line with one ``write``,
fsynced, and a case's line only after its files are complete. So the only damage a crash
leaves is a torn last line, which ``read_jsonl(torn_tail=True)`` drops. Other readers (the
privacy check, evaluation, hand-made manifests) take every line as it is: there a manifest
needs only ``pathology``, ``modality`` and ``files``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from medsynth.errors import os_error_line
from medsynth.io.atomic import fsync_path
from medsynth.io.formats import PREFERENCE, preferred_format

R = TypeVar("R")

MANIFEST = "manifest.jsonl"
REJECTED = "rejected.jsonl"
# RejectedRecord.kind: what the gate flagged, when it is not a whole sampled scan.
LESION = "lesion"  # an inserted lesion (the lesion index)
BACKGROUND = "background"  # a generated background of an insertion (the whole-image index)


def rank_part(name: str, rank: int) -> str:
    """``manifest.jsonl`` -> ``manifest.rank-3.jsonl``: the part one distributed rank appends to."""
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.rank-{rank}.{ext}"


def dumps(record: Mapping[str, Any]) -> str:
    """One JSON line (sorted keys, so equal records are equal bytes; strict JSON, no NaN)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def utc_now() -> str:
    """The time stamp of records and summaries: UTC, to the second (``2026-01-01T00:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class LineError(ValueError):
    """A line of a JSON-lines file that is not the record its reader expects.

    Each reader words its own message from these parts (whose file it is, what to do).

    Attributes:
        line: the line's number, from 1.
        syntax: True when the line is not a JSON object at all (damaged or torn); False when
            it is an object that lacks, or mistypes, a field of the record.
        detail: what is wrong (the JSON parser's message, or which field).
    """

    def __init__(self, line: int, detail: str, *, syntax: bool) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line, self.detail, self.syntax = line, detail, syntax


# -- the records ----------------------------------------------------------------------------------


def _field(data: Mapping[str, Any], key: str, kind: type, what: str, *, required: bool = False) -> Any:
    """``data[key]`` if it is a ``kind`` (None when absent and not ``required``); else ValueError naming it."""
    value = data.get(key)
    if value is None and not required:
        return None
    # bool is an int to Python, but true is never a seed or an attempt number.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{key} must be {what}, not {value!r}")
    return value


@dataclass(kw_only=True)
class ManifestRecord:
    """One finished case: what it is, its files and their hashes, and how it was made.

    A record the protocol runner writes has every field but ``extend`` (only for cases varied
    from a real scan); a hand-made manifest needs ``pathology``, ``modality`` and ``files``.
    Fields that are None are absent from the JSON line.

    Example:
        >>> r = ManifestRecord(pathology="nodule", modality="CT",
        ...                    files={"png": "png/a.png", "nifti": "nifti/a.nii.gz"})
        >>> r.preferred_file()
        'nifti/a.nii.gz'
        >>> ManifestRecord.from_dict(json.loads(r.to_json())) == r
        True
    """

    pathology: str  # the canonical label, '|'-joined when several
    modality: str
    files: dict[str, str]  # format -> path relative to the output folder (DICOM: a folder)
    case_id: str | None = None
    seed: int | None = None
    attempt: int | None = None  # 0 first; each privacy resample adds one
    sha256: dict[str, str | dict[str, str]] | None = None  # format -> digest (DICOM: file -> digest)
    model: dict[str, str] | None = None  # {"id", "sha256"}
    protocol_sha256: str | None = None
    sampler: dict[str, Any] | None = None  # method, steps, guidance_scale, batch_size
    privacy: dict[str, Any] | None = None  # the gate's verdict ({"gate": false} when it is off)
    created: str | None = None
    extend: dict[str, Any] | None = None  # {"source_index", "strength"}
    # Insertion cases: {"into", "diameter_mm", "centre_voxel", "region", "lesion_seed", ...}.
    insert: dict[str, Any] | None = None
    lesion_privacy: dict[str, Any] | None = None  # the lesion gate's verdict ({"gate": false} when off)
    source: dict[str, Any] | None = None  # a dataset background: {"row": N, "sha256": ...}, never its path
    subject: str | None = None  # a dataset background: the source row's subject
    derived: bool | None = None  # True: holds a real patient's anatomy (a dataset background)
    # A quota with its own output grid: {"shape", "spacing", "fov_extrapolated"} (plan_grid).
    grid: dict[str, Any] | None = None
    # Keys this version does not know (a newer medsynth's), kept so rewriting a manifest loses none.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if preferred_format(self.files) is None:
            raise ValueError(f"files {sorted(self.files)} has none of the readable formats {list(PREFERENCE)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestRecord:
        """The record of a parsed manifest line.

        A ``pathology`` given as a list of labels is ``|``-joined in its order.

        Raises:
            ValueError: a required field is missing, a field has the wrong type, or ``files``
                names no readable format; the message says which.
        """
        if not {"pathology", "modality", "files"} <= data.keys():
            raise ValueError("expected a JSON object with pathology, modality and files")
        files = _field(data, "files", dict, "an object {format: path}", required=True)
        if not all(isinstance(v, str) for v in files.values()):
            raise ValueError(f"files must map each format to a path, not {files!r}")
        pathology = data["pathology"]
        if isinstance(pathology, list) and all(isinstance(p, str) for p in pathology):
            pathology = "|".join(pathology)
        if not isinstance(pathology, str):
            raise ValueError(f"pathology must be a label or a list of labels, not {pathology!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            pathology=pathology,
            modality=_field(data, "modality", str, "a modality code", required=True),
            files=files,
            case_id=_field(data, "case_id", str, "a string"),
            seed=_field(data, "seed", int, "an integer"),
            attempt=_field(data, "attempt", int, "an integer"),
            sha256=_field(data, "sha256", dict, "an object {format: digest}"),
            model=_field(data, "model", dict, "an object {id, sha256}"),
            protocol_sha256=_field(data, "protocol_sha256", str, "a string"),
            sampler=_field(data, "sampler", dict, "an object"),
            privacy=_field(data, "privacy", dict, "an object"),
            created=_field(data, "created", str, "a time stamp"),
            extend=_field(data, "extend", dict, "an object {source_index, strength}"),
            insert=_field(data, "insert", dict, "an object {into, diameter_mm, ...}"),
            lesion_privacy=_field(data, "lesion_privacy", dict, "an object"),
            source=_field(data, "source", dict, "an object {row, sha256}"),
            subject=_field(data, "subject", str, "a string"),
            derived=_field(data, "derived", bool, "true or false"),
            grid=_field(data, "grid", dict, "an object {shape, spacing, fov_extrapolated}"),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the line: the fields that are not None, and ``extra``."""
        d = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return {**self.extra, **d}

    def to_json(self) -> str:
        """The manifest line, without its newline."""
        return dumps(self.to_dict())

    def preferred_file(self) -> str:
        """The file a reader takes (relative to the output folder): NIfTI, else DICOM, else PNG.

        NIfTI and DICOM keep modality units (HU for CT) and float values; a PNG is an 8-bit preview.
        """
        fmt = preferred_format(self.files)
        assert fmt is not None  # __post_init__ refuses a record without one
        return self.files[fmt]


@dataclass
class RejectedRecord:
    """One privacy-flagged attempt that was not written (a line of ``rejected.jsonl``).

    ``final``: the case gets no further attempt; ``action`` is then ``privacy.on_flag``
    (``drop``, ``fail``, or ``resample`` when the attempts ran out), else ``resample``.
    ``kind``: ``"lesion"`` for an inserted lesion the lesion gate flagged, ``"background"`` for
    a generated background of an insertion; absent (None) for a sampled scan.
    """

    case_id: str
    pathology: str
    modality: str
    seed: int
    attempt: int
    final: bool
    action: str
    privacy: dict[str, Any]
    created: str
    kind: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RejectedRecord:
        """The record of a parsed line.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        types: dict[str, tuple[type, str]] = {
            "case_id": (str, "a string"),
            "pathology": (str, "a label"),
            "modality": (str, "a modality code"),
            "seed": (int, "an integer"),
            "attempt": (int, "an integer"),
            "final": (bool, "true or false"),
            "action": (str, "a string"),
            "privacy": (dict, "an object"),
            "created": (str, "a time stamp"),
        }
        missing = [k for k in types if k not in data]
        if missing:
            raise ValueError(f"expected a JSON object with {', '.join(types)}; {', '.join(missing)} missing")
        fields_ = {k: _field(data, k, kind, what, required=True) for k, (kind, what) in types.items()}
        return cls(**fields_, kind=_field(data, "kind", str, "a string"))

    def to_json(self) -> str:
        """The line, without its newline (``kind`` only when set)."""
        return dumps({k: v for k, v in asdict(self).items() if k != "kind" or v is not None})


# -- reading and writing --------------------------------------------------------------------------


def read_jsonl(
    path: str | os.PathLike[str], *, torn_tail: bool = False, repair: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON-lines file, each with its line number; blank lines are skipped.

    Args:
        path: the file; a missing file has no lines.
        torn_tail: the file is a run's own journal, whose last line a crash may have cut
            short: bytes after the last newline, or a last line that is not a JSON object,
            are dropped. Without it every line counts, the last one too.
        repair: with ``torn_tail``, also cut the torn line off the file itself.

    Raises:
        LineError: a line (other than a torn last one) is not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    chunks = raw.split(b"\n")
    # With torn_tail, the bytes after the last newline are a line cut short; otherwise a last line.
    lines = chunks[:-1] if torn_tail else chunks
    records: list[tuple[int, dict[str, Any]]] = []
    good_bytes = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                value = json.loads(line)
                error = None if isinstance(value, dict) else f"found {type(value).__name__}"
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                error = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            if error is not None:
                if torn_tail and number == len(lines) and not chunks[-1]:
                    break  # the last line, torn in a way that still ended with a newline
                raise LineError(number, error, syntax=True)
            records.append((number, value))
        good_bytes += len(line) + 1
    if torn_tail and repair and good_bytes != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
            fh.flush()
            os.fsync(fh.fileno())
    return records


def _read_records(
    path: str | os.PathLike[str], parse: Callable[[Mapping[str, Any]], R], torn_tail: bool, repair: bool
) -> list[tuple[int, R]]:
    out = []
    for number, data in read_jsonl(path, torn_tail=torn_tail, repair=repair):
        try:
            out.append((number, parse(data)))
        except ValueError as exc:
            raise LineError(number, str(exc), syntax=False) from None
    return out


def read_manifest(
    path: str | os.PathLike[str], *, torn_tail: bool = False, repair: bool = False
) -> list[tuple[int, ManifestRecord]]:
    """The records of a manifest, each with its line number (for messages); options as ``read_jsonl``.

    Raises:
        LineError: a line is not JSON (``syntax``) or not a manifest record (see ``from_dict``).
    """
    return _read_records(path, ManifestRecord.from_dict, torn_tail, repair)


def read_rejected(
    path: str | os.PathLike[str], *, torn_tail: bool = False, repair: bool = False
) -> list[tuple[int, RejectedRecord]]:
    """The records of a ``rejected.jsonl``, each with its line number; options as ``read_jsonl``.

    Raises:
        LineError: a line is not JSON (``syntax``) or not a rejected-attempt record.
    """
    return _read_records(path, RejectedRecord.from_dict, torn_tail, repair)


class JsonlAppender:
    """Appends records as JSON lines; each line is written with one ``write`` and fsynced before returning."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = -1
        existed = self.path.exists()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if not existed:
                fsync_path(self.path.parent)  # the new directory entry must survive a crash too
        except OSError as exc:
            raise os_error_line(exc, self.path, output=True) from exc

    def append(self, record: ManifestRecord | RejectedRecord) -> None:
        """Write one line and fsync it; a torn line left by a failure is repaired on resume.

        Raises:
            MachineError: the disk is full, the folder read-only or gone, an I/O error.
        """
        data = (record.to_json() + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write to a regular file means the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            os.fsync(self._fd)
        except OSError as exc:  # os.write names no file: name the manifest
            raise os_error_line(exc, self.path, output=True) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
