"""Push the complete cases of a generation output folder to a PACS: resumable, idempotent, verified.

What is pushed: the DICOM files of each case in the manifest (its series, and its SEG for an
insertion case), after checking each file against the sha256 the manifest recorded. A case
derived from a real patient (a dataset background, ``derived: true``) or one a privacy gate did
not pass is withheld and counted, never sent: a PACS receives synthetic cases only.

How: ``Pusher`` checks the server (QIDO-RS or C-ECHO: reachable, login accepted) before it sends
anything, then stores each case's instances that the push record (``record.py``) does not list,
recording each one the server confirms. So a second push of the same folder stores nothing new,
and a push cut short (a server gone, a network down, a killed process) resumes where it stopped.
``medsynth push`` calls ``push_folder``; ``medsynth generate`` with ``output.push`` creates a
``Pusher`` and calls ``push_case`` as each case's manifest line is written.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsynth.digest import sha256_file
from medsynth.errors import InputError
from medsynth.pacs.failure import PushError
from medsynth.pacs.record import RecordAppender, StoredInstance, read_record, record_path
from medsynth.pacs.target import DICOMWEB, Target, dicomweb_credentials
from medsynth.protocol.manifest import MANIFEST, LineError, ManifestRecord, read_manifest, utc_now

# One STOW-RS request carries at most this many instances and bytes (a PACS or a proxy in front
# of it may refuse larger bodies); C-STORE sends one instance per request anyway.
MAX_BATCH_FILES = 64
MAX_BATCH_BYTES = 64 * 2**20

CaseFiles = list[tuple[Path, str]]  # (file, sha256) of one case's DICOM instances


def withheld_reason(r: ManifestRecord) -> str | None:
    """Why a manifest case is not pushed, or None when it is a released synthetic case."""
    if r.derived:
        return "derived from a real patient (a dataset background)"
    if (r.privacy or {}).get("passed") is False or (r.lesion_privacy or {}).get("passed") is False:
        return "not released by the privacy gate"
    return None


def _digest_of(r: ManifestRecord, key: str, name: str | None) -> str | None:
    recorded: Any = (r.sha256 or {}).get(key)
    if name is not None:
        return recorded.get(name) if isinstance(recorded, dict) else None
    return recorded if isinstance(recorded, str) else None


def case_files(out: Path, r: ManifestRecord) -> CaseFiles:
    """The DICOM instances of a case (series folders and ``.dcm`` files of ``files``), verified.

    Raises:
        InputError: a listed file is missing, or its bytes differ from the manifest's sha256.
    """
    found: CaseFiles = []
    for key, rel in sorted(r.files.items()):
        path = out / rel
        if path.is_dir():
            entries = [(p, _digest_of(r, key, p.name)) for p in sorted(path.glob("*.dcm"))]
        elif rel.endswith(".dcm"):
            entries = [(path, _digest_of(r, key, None))]
        else:
            continue  # NIfTI, PNG, masks: not DICOM
        if not entries or not all(p.is_file() for p, _ in entries):
            raise InputError(
                f"{path}: listed in {out / MANIFEST} for case {r.case_id} but missing; restore it or regenerate"
            )
        for p, recorded in entries:
            digest = sha256_file(p)
            if recorded is not None and digest != recorded:
                raise InputError(
                    f"{p}: its bytes differ from the sha256 in {out / MANIFEST} (case {r.case_id}); "
                    "the file changed after generation and is not pushed: regenerate it"
                )
            found.append((p, digest))
    return found


def read_cases(out: Path) -> list[ManifestRecord]:
    """The complete cases of an output folder, in manifest order (every rank's part, each case once).

    Raises:
        InputError: no manifest (not a ``medsynth generate`` output folder), or a damaged line.
    """
    main = out / MANIFEST
    if not out.is_dir() or not main.is_file():
        raise InputError(f"{out}: has no {MANIFEST}; expected the output folder of `medsynth generate`")
    stem, ext = MANIFEST.rsplit(".", 1)
    cases: dict[str, ManifestRecord] = {}
    for path in [main, *sorted(out.glob(f"{stem}.rank-*.{ext}"))]:
        try:
            # torn_tail: a run still writing, or one cut short, may have a torn last line
            for _, r in read_manifest(path, torn_tail=True):
                cases.setdefault(r.case_id or r.preferred_file(), r)
        except LineError as exc:
            raise InputError(f"{path}: line {exc.line}: {exc.detail}; the manifest was edited or damaged") from None
    return list(cases.values())


def _batches(files: CaseFiles) -> Iterator[CaseFiles]:
    batch: CaseFiles = []
    size = 0
    for item in files:
        n = item[0].stat().st_size
        if batch and (len(batch) >= MAX_BATCH_FILES or size + n > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch


@dataclass
class PushResult:
    """What a push did (``medsynth push`` prints it)."""

    target: str
    record: Path
    stored: int = 0  # instances this push stored
    already: int = 0  # instances an earlier push had stored (not sent again)
    cases: int = 0  # released cases whose every instance is now stored at the target
    withheld: Counter[str] = field(default_factory=Counter)  # reason -> cases not pushed

    def to_dict(self) -> dict[str, Any]:
        """The counts as JSON values (a ``push`` progress event of ``medsynth generate``)."""
        return {
            "target": self.target,
            "stored": self.stored,
            "already": self.already,
            "cases": self.cases,
            "withheld": dict(self.withheld),
            "record": str(self.record),
        }

    def lines(self) -> list[str]:
        out = [
            f"pushed {self.stored} instance(s) to {self.target}; {self.already} were already stored; "
            f"{self.cases} case(s) complete there",
            f"push record: {self.record}",
        ]
        out += [f"withheld {n} case(s): {why}" for why, n in sorted(self.withheld.items())]
        return out


class Pusher:
    """Pushes cases of one output folder to one target, recording each stored instance.

    Args:
        out: the output folder.
        target: where to.
        rank: under torchrun, this rank (it appends to its own part of the record).
        environ: where DICOMweb credentials are read (default ``os.environ``).

    Raises:
        InputError: a damaged push record, or inconsistent credential variables.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        target: Target,
        *,
        rank: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from medsynth.pacs.dicomweb import DicomwebStore
        from medsynth.pacs.dimse import DimseStore

        self.out = Path(out)
        self.target = target
        self.done = read_record(self.out, target)
        self.result = PushResult(target.key, record_path(self.out, target, rank))
        self._appender: RecordAppender | None = None
        self.store: DicomwebStore | DimseStore
        if target.kind == DICOMWEB:
            self.store = DicomwebStore(target, dicomweb_credentials(environ))
        else:
            self.store = DimseStore(target)

    def check(self) -> None:
        """Reachable, and the login (DICOMweb) or calling AE title (DIMSE) accepted; else PushError."""
        self.store.check()

    def _record(self, case_id: str, path: Path, sha: str, uid: str) -> None:
        if self._appender is None:  # created on the first stored instance: a refused push leaves no record
            self._appender = RecordAppender(self.result.record)
        item = StoredInstance(case_id, path.relative_to(self.out).as_posix(), sha, uid, self.target.key, utc_now())
        self._appender.append(item)
        self.done[(item.file, item.sha256)] = item
        self.result.stored += 1

    def push_case(self, r: ManifestRecord, files: CaseFiles | None = None) -> int:
        """Store the case's instances the record does not list; the number stored now.

        Args:
            files: ``case_files(out, r)`` when already computed.

        Raises:
            InputError: a file is missing or changed (``case_files``).
            PushError: the server refused or failed; what it stored before is recorded.
        """
        reason = withheld_reason(r)
        if reason is not None:
            self.result.withheld[reason] += 1
            return 0
        files = case_files(self.out, r) if files is None else files
        todo = [(p, sha) for p, sha in files if (p.relative_to(self.out).as_posix(), sha) not in self.done]
        self.result.already += len(files) - len(todo)
        before = self.result.stored
        digests = dict(todo)
        case_id = r.case_id or r.preferred_file()
        try:
            for batch in _batches(todo):
                failed = self.store.store(
                    [p for p, _ in batch], lambda p, uid: self._record(case_id, p, digests[p], uid)
                )
                if failed:
                    raise PushError(
                        f"{self.target.key} did not store {len(failed)} instance(s) of case {case_id} "
                        f"(first: {failed[0]})"
                    )
        except PushError as exc:
            if self.result.stored:
                raise PushError(
                    f"{exc}; {self.result.stored} instance(s) were stored before it stopped, recorded in "
                    f"{self.result.record}; run the same command again to resume",
                    stored=self.result.stored,
                ) from None
            raise
        if files:
            self.result.cases += 1
        return self.result.stored - before

    def close(self) -> None:
        self.store.close()
        if self._appender is not None:
            self._appender.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_target(target: Target, *, environ: Mapping[str, str] | None = None) -> None:
    """Ask the server once (QIDO-RS or C-ECHO) whether a push could start now.

    Raises:
        InputError: inconsistent credential variables.
        PushError: unreachable, TLS not trusted, login or calling AE title refused.
    """
    from medsynth.pacs.dicomweb import DicomwebStore
    from medsynth.pacs.dimse import DimseStore

    store = DicomwebStore(target, dicomweb_credentials(environ)) if target.kind == DICOMWEB else DimseStore(target)
    try:
        store.check()
    finally:
        store.close()


def push_folder(out: str | os.PathLike[str], target: Target, *, environ: Mapping[str, str] | None = None) -> PushResult:
    """Push every released case of ``out`` that ``target`` does not have yet (see the module docstring).

    Every case's files are checked against the manifest, and the server is checked, before the
    first instance is sent.

    Raises:
        InputError: not an output folder, a damaged manifest or push record, a missing or changed
            file, or inconsistent credential variables.
        PushError: the server is unreachable, refuses the login or the calling AE title, or fails
            to store an instance (one line; what was stored is recorded; rerun to resume).
    """
    folder = Path(out)
    records = read_cases(folder)
    files = {id(r): case_files(folder, r) for r in records if withheld_reason(r) is None}
    with Pusher(folder, target, environ=environ) as pusher:
        pusher.check()
        for r in records:
            pusher.push_case(r, files.get(id(r)))
    return pusher.result
