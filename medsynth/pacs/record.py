"""The push record: which instance of which case was stored where, one JSON line per stored instance.

``OUTPUT_DIR/push/<target digest>.jsonl`` (``Target.digest``: sha256 of the target's key, which
holds no credentials); under torchrun each rank appends to its own ``<digest>.rank-<N>.jsonl``.
A line, keys sorted::

    {"case_id": "nodule-CT-00003", "file": "dicom/nodule-CT-00003/00001.dcm", "sha256": "...",
     "sop_instance_uid": "2.25....", "stored": "2026-01-01T00:00:00+00:00",
     "target": "dicomweb:https://pacs.example.org/dicom-web"}

A line is appended (one ``write``, fsynced: ``JsonlAppender``) only after the server confirmed
the instance (STOW-RS ``ReferencedSOPSequence``, C-STORE status success or warning), so the
record never claims more than was stored. A crash between the server's answer and the append
leaves the instance unrecorded: the next push sends it again, which a PACS takes as the same
instance (delivery is at least once). An instance counts as stored when its file and its
sha256 are in the record, so a regenerated file with other bytes is pushed again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import InputError, os_error_line
from medsynth.io.atomic import fsync_path
from medsynth.pacs.target import Target
from medsynth.protocol.manifest import JsonlAppender, LineError, ManifestRecord, RejectedRecord, dumps, read_jsonl

PUSH_DIR = "push"


@dataclass(frozen=True)
class StoredInstance:
    """One line of a push record."""

    case_id: str
    file: str  # relative to the output folder, POSIX
    sha256: str
    sop_instance_uid: str
    target: str  # Target.key
    stored: str  # UTC time stamp of the server's confirmation

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredInstance:
        """The instance of a parsed line; ValueError when a field is missing or not text."""
        names = [f for f in cls.__dataclass_fields__]
        bad = [k for k in names if not isinstance(data.get(k), str)]
        if bad:
            raise ValueError(f"expected text fields {', '.join(names)}; {', '.join(bad)} missing or not text")
        return cls(**{k: data[k] for k in names})

    def to_json(self) -> str:
        return dumps(asdict(self))


def record_path(out: Path, target: Target, rank: int | None = None) -> Path:
    """The file this process appends to: ``push/<digest>.jsonl``, or its rank part under torchrun."""
    name = f"{target.digest}.jsonl" if rank is None else f"{target.digest}.rank-{rank}.jsonl"
    return Path(out) / PUSH_DIR / name


def read_record(out: Path, target: Target) -> dict[tuple[str, str], StoredInstance]:
    """Everything stored at ``target`` from ``out`` so far: (file, sha256) -> its line; every rank's part.

    A torn last line (a crash during its append) is dropped: that instance is sent again.

    Raises:
        InputError: a line is not a push record line of this target (the file was edited or damaged).
    """
    folder = Path(out) / PUSH_DIR
    parts = sorted(folder.glob(f"{target.digest}.jsonl")) + sorted(folder.glob(f"{target.digest}.rank-*.jsonl"))
    stored: dict[tuple[str, str], StoredInstance] = {}
    for path in parts:
        try:
            lines = read_jsonl(path, torn_tail=True)
            for number, data in lines:
                try:
                    item = StoredInstance.from_dict(data)
                except ValueError as exc:
                    raise LineError(number, str(exc), syntax=False) from None
                if item.target != target.key:
                    raise LineError(number, f"records target {item.target!r}, not {target.key!r}", syntax=False)
                stored[(item.file, item.sha256)] = item
        except LineError as exc:
            raise InputError(
                f"{path}: line {exc.line}: {exc.detail}; the push record was edited or damaged "
                "(delete it to push everything again: a PACS keeps one copy of each instance)"
            ) from None
    return stored


class RecordAppender(JsonlAppender):
    """``JsonlAppender`` for push-record lines: one ``write`` per line, fsynced; the folder made first."""

    def __init__(self, path: Path) -> None:
        if not path.parent.is_dir():
            try:
                path.parent.mkdir(parents=True)
                fsync_path(path.parent.parent)  # the new folder's entry must survive a crash too
            except OSError as exc:
                raise os_error_line(exc, path.parent, output=True) from exc
        super().__init__(path)

    def append(self, record: ManifestRecord | RejectedRecord | StoredInstance) -> None:
        # JsonlAppender only calls record.to_json(); its annotation names the two records it was written for.
        super().append(record)  # type: ignore[arg-type]
