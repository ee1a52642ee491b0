"""A generation output folder's state: whose run it holds, which cases are done, and its clean-up.

Layout of an output folder::

    .medsynth-run.json           which protocol (sha256), plan and model made this folder
    dicom/<case_id>/0001.dcm...  one folder per case (a DICOM series)
    nifti/<case_id>.nii.gz
    png/<case_id>.png
    masks/<case_id>.nii.gz       insertion cases: the lesion mask; seg/<case_id>.dcm its DICOM SEG,
                                 outline/<case_id>.png the image with the mask outlined (2D)
    manifest.jsonl               one line per finished case, in plan order at the end of a run
    rejected.jsonl               privacy-flagged attempts that were not written (audit trail)
    dataset.json                 MONAI datalist of the written cases
    labels.csv                   the written cases as a dataset CSV (path, pathology, modality, subject, mask)
    privacy_report.{json,html}   the memorization check (when the gate is on)
    summary.json

A case's manifest line is appended only after all its files are renamed into place and
synced, and the manifest is fsynced after each line. So after a crash every listed file is
complete; a torn last line (killed mid-append) is cut off, and files no line lists are
removed before a run resumes. Under torchrun each rank appends to its own part
(``manifest.rank-<rank>.jsonl``); ``merge`` joins the parts at the end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from medsynth import __version__
from medsynth.distributed import DistContext
from medsynth.errors import InputError, os_error_line
from medsynth.io.atomic import TMP_PREFIX, atomic_write_text, fsync_path, remove_stale_temporaries, write_json
from medsynth.io.formats import FORMATS
from medsynth.io.provenance import generation_time
from medsynth.protocol.insertion import EXTRA_FOLDERS
from medsynth.protocol.manifest import (
    MANIFEST,
    REJECTED,
    LineError,
    ManifestRecord,
    RejectedRecord,
    rank_part,
    read_manifest,
    read_rejected,
)
from medsynth.protocol.plan import RunPlan

RUN_FILE = ".medsynth-run.json"
DATASET = "dataset.json"
LABELS = "labels.csv"
SUMMARY = "summary.json"
PRIVACY_REPORT = "privacy_report.html"
LESION_REPORT = "lesion_privacy_report.html"
# Files a run writes at the top of its output folder (a --force restart removes exactly these).
RUN_OUTPUTS = (
    RUN_FILE,
    MANIFEST,
    REJECTED,
    DATASET,
    LABELS,
    SUMMARY,
    "privacy_report.json",
    PRIVACY_REPORT,
    "lesion_privacy_report.json",
    LESION_REPORT,
)

Record = TypeVar("Record", ManifestRecord, RejectedRecord)


@dataclass
class ResumeState:
    """Which cases earlier sessions of a run finished: where this session picks up."""

    done: set[str] = field(default_factory=set)  # written (listed in the manifest)
    settled: set[str] = field(default_factory=set)  # finally rejected (dropped, or out of attempts)
    rejected_keys: set[tuple[str, int]] = field(default_factory=set)  # (case_id, attempt) recorded


class OutputFolder:
    """The output folder of ``plan`` as this rank sees it (its part files, every rank's records)."""

    def __init__(self, plan: RunPlan, ctx: DistContext, model_sha: str) -> None:
        self.plan = plan
        self.out = plan.output_dir
        self.ctx = ctx
        self.model_sha = model_sha

    # -- files -----------------------------------------------------------------------------------

    def part(self, name: str) -> Path:
        """The file this rank appends to: ``name`` itself, or its rank part under torchrun."""
        return self.out / (name if not self.ctx.distributed else rank_part(name, self.ctx.rank))

    def _all_parts(self, name: str) -> list[Path]:
        stem, ext = name.rsplit(".", 1)
        return [self.out / name, *sorted(self.out.glob(f"{stem}.rank-*.{ext}"))]

    def _read_all(self, name: str, read: Callable[..., list[tuple[int, Record]]], repair: bool = False) -> list[Record]:
        """Every rank's records of ``name`` (a torn last line of each part dropped, or with ``repair`` cut off)."""
        records = []
        for path in self._all_parts(name):
            try:
                records += [r for _, r in read(path, torn_tail=True, repair=repair)]
            except LineError as exc:
                what = "is not a JSON object" if exc.syntax else f"is not a record of this file ({exc.detail})"
                raise InputError(
                    f"{path}: line {exc.line} {what}; the file was edited or damaged "
                    "(restore it, or start over with --force)"
                ) from None
        return records

    def manifest(self, repair: bool = False) -> list[ManifestRecord]:
        """Every rank's manifest records."""
        return self._read_all(MANIFEST, read_manifest, repair)

    def rejected(self, repair: bool = False) -> list[RejectedRecord]:
        """Every rank's rejected attempts."""
        return self._read_all(REJECTED, read_rejected, repair)

    def merge(
        self, name: str, read: Callable[..., list[tuple[int, Record]]], key: Callable[[Record], Any]
    ) -> list[Record]:
        """Rank parts + main file -> the main file in ``key`` order (atomically); parts removed.

        A record in two files (a rank's part and an earlier session's merged file) is kept once.
        """
        records: dict[Hashable, Record] = {}
        for r in self._read_all(name, read):
            records.setdefault(key(r), r)
        ordered = sorted(records.values(), key=key)
        atomic_write_text(self.out / name, "".join(r.to_json() + "\n" for r in ordered))
        for part in self._all_parts(name)[1:]:
            part.unlink()
        fsync_path(self.out)
        return ordered

    # -- before a run ----------------------------------------------------------------------------

    def _run_record(self) -> dict[str, Any]:
        """The content of ``.medsynth-run.json``: what made this folder."""
        return {
            "medsynth_version": __version__,
            "protocol": {"name": self.plan.protocol.name, "sha256": self.plan.source.sha256},
            "plan_sha256": self.plan.plan_sha256,
            "model": {"id": self.plan.model.id, "sha256": self.model_sha},
            # The run's generation time, recorded once: every case's DICOM Study Date/Time, so a
            # resumed run writes the same bytes (SOURCE_DATE_EPOCH pins it across runs).
            "started": generation_time().isoformat(),
        }

    def started(self) -> datetime:
        """The run's generation time as recorded in ``.medsynth-run.json`` (after ``prepare``).

        A folder made before the time was recorded: the run file's modification time, which
        ``prepare`` does not change either.
        """
        path = self.out / RUN_FILE
        recorded = (self._read_run_file() or {}).get("started")
        try:
            return datetime.fromisoformat(str(recorded)).astimezone(UTC)
        except ValueError:
            return datetime.fromtimestamp(int(path.stat().st_mtime), UTC)

    def _mismatch(self, run: dict[str, Any]) -> str | None:
        mine = self._run_record()
        if run.get("protocol", {}).get("sha256") != mine["protocol"]["sha256"]:
            return (
                f"was made by another protocol (protocol_sha256 {str(run.get('protocol', {}).get('sha256'))[:12]}..., "
                f"this one is {mine['protocol']['sha256'][:12]}...)"
            )
        if run.get("model", {}).get("sha256") != self.model_sha:
            return "was made with other model weights (model sha256 differs)"
        if run.get("plan_sha256") != mine["plan_sha256"]:
            return "was made from another plan (a dataset the protocol names has changed)"
        return None

    def _read_run_file(self) -> dict[str, Any] | None:
        path = self.out / RUN_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text("utf-8"))
        except OSError as exc:  # an I/O error or permissions, not a broken file: --force would not help
            raise os_error_line(exc, path) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not readable JSON ({exc}); start over with --force") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object; start over with --force")
        return data

    def _remove_unlisted(self, listed: set[str]) -> None:
        """Delete entries of the format (and mask) folders that no manifest line lists (a case cut short)."""
        for name in [fmt.folder for fmt in FORMATS.values()] + list(EXTRA_FOLDERS):
            folder = self.out / name
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry.relative_to(self.out).as_posix() not in listed:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def _wipe(self) -> None:
        """Remove a previous run's outputs (``--force``): its format folders and its run files."""
        self._remove_unlisted(set())
        for name in RUN_OUTPUTS:
            for path in self._all_parts(name) if name.endswith(".jsonl") else [self.out / name]:
                if path.exists():
                    path.unlink()
        fsync_path(self.out)

    def prepare(self, force: bool) -> None:
        """Rank 0, before any rank runs: refuse a foreign folder, start over on ``force``, clean up after a crash.

        Raises:
            InputError: the folder is a file, holds something that is no medsynth run, holds
                another protocol's, model's or plan's run (without ``force``), or its manifest
                lists files that are gone.
        """
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: is a file; the output must be a folder")
        out.mkdir(parents=True, exist_ok=True)
        run = self._read_run_file()
        if run is None:
            foreign = sorted(e.name for e in out.iterdir() if not e.name.startswith(TMP_PREFIX))
            if foreign:
                raise InputError(
                    f"{out}: is not empty and holds no medsynth run (found {', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty output folder with --out"
                )
        else:
            why = self._mismatch(run)
            if why and not force:
                raise InputError(
                    f"{out}: {why}; use another --out folder, or --force to delete that run's outputs and start over"
                )
            if force:
                self._wipe()
        remove_stale_temporaries(out)
        listed = _listed_paths(self.manifest(repair=True))
        self.rejected(repair=True)
        missing = [rel for rel in sorted(listed) if not (out / rel).exists()]
        if missing:
            raise InputError(
                f"{out}: the manifest lists files that are gone ({', '.join(missing[:3])}); "
                "restore them, or start over with --force"
            )
        self._remove_unlisted(listed)
        if not (out / RUN_FILE).exists():
            write_json(out / RUN_FILE, self._run_record())

    def resume_state(self) -> ResumeState:
        """What earlier sessions finished (every rank reads it once the folder is prepared).

        Raises:
            InputError: the manifest lists cases this plan does not have.
        """
        planned = {c.case_id for c in self.plan.cases}
        records = self.manifest()
        unknown = sorted({r.case_id for r in records} - planned, key=str)
        if unknown:
            raise InputError(
                f"{self.out / MANIFEST}: lists cases this protocol does not plan ({unknown[:3]}); "
                "start over with --force"
            )
        state = ResumeState(done=planned & {r.case_id for r in records})
        for r in self.rejected():
            state.rejected_keys.add((r.case_id, r.attempt))
            if r.final:
                state.settled.add(r.case_id)
        return state


def _listed_paths(records: Iterable[ManifestRecord]) -> set[str]:
    """Every ``files`` entry (relative to the output folder) of the given manifest records."""
    return {rel for r in records for rel in r.files.values()}
