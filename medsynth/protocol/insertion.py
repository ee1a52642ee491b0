"""The per-case work of an insertion quota: background, lesion, its gate, and the case's extra files.

One attempt of a case of an insertion quota (``quotas[i].insert``), everything drawn from the
attempt's case seed ``s = CasePlan.seed(protocol seed, attempt)``:

1. the background: data row ``rows[j mod len(rows)]`` of the dataset CSV (the same one on
   every attempt, on its own grid, spacing, affine and units), or a ``normal`` scan of the
   quota's modality that the Synthesizer samples from ``s`` (checked by the whole-image gate);
2. the lesion: ``lesions.case.insert_case`` with the lesion seed ``derive_seed(s, "lesion")``:
   size uniform in ``size_mm``, shape (the model's training shapes, else the generator),
   a uniformly random place in the region with its margin in the body, inpainted by the
   lesion model and composited so that the background is untouched beyond the margin;
3. the lesion gate (``privacy.lesions.check_lesions``) on the inserted lesion.

A flag at step 1 or 3 follows ``privacy.on_flag`` as a flagged sample does: the next attempt
draws a new lesion (and, for a generated background, a new background).

Files of a case beside its scan: ``masks/<case>.nii.gz`` (the lesion mask, a uint8 label map on
the case's grid), ``seg/<case>.dcm`` (a DICOM SEG of the case's DICOM series, when DICOM is
written; its content date/time fixed from the case, so a rewrite gives the same bytes) and,
``outline/<case>.png`` (the image with the mask's outline; of a volume, the slice holding most of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth.conditions import NORMAL
from medsynth.digest import hash_output, sha256_file, sha256_json
from medsynth.errors import InputError, MedsynthError
from medsynth.io.scan import Scan
from medsynth.protocol.manifest import BACKGROUND, LESION
from medsynth.protocol.plan import CasePlan, QuotaPlan, RunPlan
from medsynth.protocol.plan_insert import INTO_DATASET
from medsynth.seeding import derive_seed

if TYPE_CHECKING:
    from medsynth.protocol.gate import Gate

# Folders of an output folder that hold an insertion case's extra files (state.py cleans them).
MASKS, SEGS, OUTLINES = "masks", "seg", "outline"
EXTRA_FOLDERS = (MASKS, SEGS, OUTLINES)
NOT_GATED = {"gate": False, "reason": "dataset background: a real scan"}
COMPOSITE_MARGIN = 2  # background voxels blended around the mask (insert_case's default)
_SEG_EPOCH = datetime(2000, 1, 1)


@dataclass
class Attempt:
    """One attempt of one case: the scan and what the gate said of it.

    ``flagged`` is None (write it), ``"image"`` (the whole-image gate flagged the sample or the
    generated background) or ``LESION`` (the lesion gate flagged the inserted lesion).
    """

    scan: Scan
    privacy: dict[str, Any]
    lesion_privacy: dict[str, Any] | None = None
    mask: np.ndarray | None = None
    insert: dict[str, Any] | None = None
    row: int | None = None  # a dataset background's 0-based data row

    @property
    def flagged(self) -> str | None:
        if self.privacy.get("gate") and not self.privacy.get("passed"):
            return "image"
        if self.lesion_privacy and self.lesion_privacy.get("gate") and not self.lesion_privacy.get("passed"):
            return LESION
        return None

    def reject_kind(self) -> str | None:
        """``RejectedRecord.kind`` of this attempt's flag."""
        if self.flagged == LESION:
            return LESION
        return BACKGROUND if self.insert is not None else None

    def verdict(self) -> dict[str, Any]:
        """The verdict that flagged it."""
        return self.lesion_privacy if self.flagged == LESION and self.lesion_privacy else self.privacy


def seg_datetime(plan: RunPlan, case_id: str) -> datetime:
    """A SEG's content date/time, fixed from the protocol and the case (the same on every rewrite)."""
    return _SEG_EPOCH + timedelta(seconds=derive_seed(plan.source.sha256, case_id, "seg") % (20 * 365 * 86400))


class Inserter:
    """An insertion run's lesion model, backgrounds and files (loaded when first needed)."""

    def __init__(self, plan: RunPlan, device: Any) -> None:
        self.plan = plan
        self.device = device
        self._lesion: Any = None
        self._bank: Any = None
        self._pre: Any = None
        self._source_sha: dict[tuple[int, int], str] = {}

    def _load(self) -> None:
        if self._lesion is not None:
            return
        from medsynth.data.transforms import Preprocessing
        from medsynth.lesions.model import load_lesion_model, load_mask_bank
        from medsynth.models.artifact import load_config

        path = self.plan.model.path
        lesion = load_lesion_model(path, device=self.device)
        if lesion is None:
            raise InputError(f"{path}: the lesion model (lesion/) is gone; restore it, or drop the insertion quotas")
        self._lesion = lesion
        self._bank = load_mask_bank(path)
        self._pre = Preprocessing.from_dict(load_config(path).preprocessing)

    # -- backgrounds ---------------------------------------------------------------------------

    def row(self, q: QuotaPlan, c: CasePlan) -> int:
        """The 0-based data row of the CSV a dataset case inserts into."""
        assert q.insert is not None and q.insert.rows
        return q.insert.rows[c.source or 0]

    def _where(self, q: QuotaPlan, row: int) -> str:
        assert q.insert is not None
        return f"{q.where}.insert.into.dataset {q.insert.dataset}: data row {row}"

    def read_background(self, q: QuotaPlan, c: CasePlan) -> Scan:
        """A dataset case's background (read when needed: one scan in memory at a time).

        Raises:
            InputError: the scan cannot be read; the message names the dataset row.
        """
        assert q.insert is not None and q.insert.catalog is not None
        row = self.row(q, c)
        try:
            return q.insert.catalog.load(row)
        except MedsynthError as exc:
            raise InputError(f"{self._where(q, row)}: {exc}") from None

    def source(self, q: QuotaPlan, row: int) -> dict[str, Any]:
        """The manifest's ``source``: the row, its scan's SHA-256 (a DICOM folder: of its files' digests), its split."""
        assert q.insert is not None and q.insert.catalog is not None
        key = (q.index, row)
        if key not in self._source_sha:
            path = Path(q.insert.catalog.records[row].path)
            self._source_sha[key] = sha256_json(hash_output(path)) if path.is_dir() else sha256_file(path)
        split = q.insert.catalog.records[row].split  # a case of a test patient's scan belongs to test too
        return {"row": row, "sha256": self._source_sha[key], **({"split": split} if split else {})}

    def subject(self, q: QuotaPlan, row: int) -> str:
        """The source row's subject; a row without one is its own subject, named by the CSV's hash and the row."""
        assert q.insert is not None and q.insert.catalog is not None
        subject = q.insert.catalog.records[row].subject
        return subject if subject is not None else f"{(q.insert.dataset_sha256 or '')[:12]}-row-{row}"

    def generated_backgrounds(self, synth: Any, q: QuotaPlan, seeds: list[int]) -> list[Scan]:
        """``normal`` scans of the quota's modality, one per seed (the quota's whole-image sampler)."""
        return list(
            synth.generate(
                [[NORMAL]] * len(seeds),
                [q.modality] * len(seeds),
                seeds,
                batch_size=self.plan.protocol.sampler.batch_size,
                num_inference_steps=q.steps,
                guidance_scale=q.guidance_scale,
                sampler=q.method,
            )
        )

    # -- an attempt ----------------------------------------------------------------------------

    def attempt(
        self, synth: Any, q: QuotaPlan, cases: list[CasePlan], seeds: list[int], gate: Gate | None
    ) -> list[Attempt]:
        """One attempt of each case (backgrounds, lesions, both gates), in ``cases`` order."""
        assert q.insert is not None
        self._load()
        ins = q.insert
        rows: list[int | None]
        if ins.into == INTO_DATASET:
            rows = [self.row(q, c) for c in cases]
            backgrounds = [self.read_background(q, c) for c in cases]
            checks = [dict(NOT_GATED) for _ in cases]
        else:
            rows = [None] * len(cases)
            backgrounds = self.generated_backgrounds(synth, q, seeds)
            checks = gate.check(backgrounds, ins.background) if gate else [{"gate": False}] * len(cases)
        out = []
        for c, bg, seed, check, row in zip(cases, backgrounds, seeds, checks, rows):
            a = Attempt(scan=bg, privacy=check, row=row)
            if a.flagged is None:
                self._insert(q, c, a, seed)
            out.append(a)
        done = [a for a in out if a.mask is not None]
        if gate is not None and done:
            masks = [a.mask for a in done if a.mask is not None]  # all of them: the filter is for mypy
            verdicts = gate.check_lesions([a.scan for a in done], masks, q.group)
            for a, v in zip(done, verdicts):
                a.lesion_privacy = v
        for a in done:
            a.lesion_privacy = a.lesion_privacy or {"gate": False}
        return out

    def _insert(self, q: QuotaPlan, c: CasePlan, a: Attempt, seed: int) -> None:
        from medsynth.lesions.case import insert_case

        assert q.insert is not None
        ins = q.insert
        what = self._where(q, a.row) if a.row is not None else f"case {c.case_id} (background seed {seed})"
        lesion_seed = derive_seed(seed, "lesion")
        try:
            case = insert_case(
                self._lesion,
                a.scan,
                q.pathologies,
                seed=lesion_seed,
                size_mm=ins.size_mm,
                region=ins.region,
                bank=self._bank,
                preprocessing=self._pre,
                steps=ins.steps,
                sampler=ins.method,
                guidance_scale=ins.guidance_scale,
                margin=COMPOSITE_MARGIN,
                what=what,
            )
        except InputError as exc:
            message = str(exc)
            raise InputError(message if message.startswith(what) else f"{what}: {message}") from None
        a.scan, a.mask = case.scan, case.mask
        a.insert = {
            "into": ins.into,
            **case.record(),
            "lesion_seed": lesion_seed,
            "size_mm": list(ins.size_mm),
            "method": ins.method,
            "steps": ins.steps,
            "guidance_scale": ins.guidance_scale,
        }

    # -- files ---------------------------------------------------------------------------------

    def write_files(
        self, out: Path, c: CasePlan, q: QuotaPlan, a: Attempt, files: dict[str, str], hashes: dict[str, Any]
    ) -> None:
        """The mask, the SEG (beside a written DICOM series) and the 2D outline; added to ``files``/``hashes``."""
        from medsynth.io.dicom.seg import write_seg
        from medsynth.io.masks import write_mask_nifti, write_mask_outline_png

        assert a.mask is not None
        (out / MASKS).mkdir(exist_ok=True)
        written = {"mask": write_mask_nifti(a.mask, a.scan, out / MASKS / f"{c.case_id}.nii.gz")}
        if "dicom" in files:
            (out / SEGS).mkdir(exist_ok=True)
            written["seg"] = write_seg(
                a.mask,
                out / files["dicom"],
                out / SEGS / f"{c.case_id}.dcm",
                pathology=q.pathology,
                like=a.scan,
                content_datetime=seg_datetime(self.plan, c.case_id),
            )
        # 3D: the slice (first axis) that holds most of the lesion.
        (out / OUTLINES).mkdir(exist_ok=True)
        written["outline"] = write_mask_outline_png(a.scan, a.mask, out / OUTLINES / f"{c.case_id}.png")
        for key, path in written.items():
            files[key] = Path(path).relative_to(out).as_posix()
            hashes[key] = hash_output(path)

    def record_fields(self, q: QuotaPlan, a: Attempt) -> dict[str, Any]:
        """The manifest fields of an insertion case besides the common ones."""
        fields: dict[str, Any] = {"insert": a.insert, "lesion_privacy": a.lesion_privacy}
        if a.row is not None:
            fields.update(source=self.source(q, a.row), subject=self.subject(q, a.row), derived=True)
        return fields
