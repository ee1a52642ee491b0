"""The end of a protocol run (rank 0): merged manifest, privacy report, MONAI datalist and ``summary.json``.

``finalize`` joins the ranks' manifest and rejected parts in plan order, judges the run's
privacy (``gate.judge``), writes the report, the datalist (only when the gate passed) and the
summary; ``format_summary`` is what ``medsynth generate`` prints of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.io.atomic import atomic_write_text, write_json
from medsynth.io.scan import Scan
from medsynth.protocol.gate import Gate, judge
from medsynth.protocol.manifest import (
    LESION,
    MANIFEST,
    REJECTED,
    ManifestRecord,
    RejectedRecord,
    read_manifest,
    read_rejected,
    utc_now,
)
from medsynth.protocol.plan import RunPlan
from medsynth.protocol.plan_grid import GridPlan
from medsynth.protocol.state import DATASET, LABELS, LESION_REPORT, PRIVACY_REPORT, SUMMARY, OutputFolder

if TYPE_CHECKING:
    from medsynth.privacy.provenance import ReportProvenance


@dataclass
class RunResult:
    """What a run produced; ``summary`` is also written to ``summary.json``."""

    output_dir: Path
    summary: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not self.summary["privacy"].get("failed", False)


@dataclass
class Session:
    """What the summary says about this session of the run, besides its outputs."""

    device: str
    world_size: int
    started: float  # time.monotonic() when the session began


def finalize(
    plan: RunPlan,
    folder: OutputFolder,
    session: Session,
    *,
    gate: Gate | None,
    redraw: Callable[[RejectedRecord], Scan],
    gate_failure: str | None = None,
) -> RunResult:
    """Rank 0, after every rank finished: merge the manifest, judge privacy, write report, datalist and summary.

    Args:
        plan: the run's plan.
        folder: its output folder.
        session: this session's device, world size and start.
        gate: the gate the session used; None if it sampled nothing (or the gate is off).
        redraw: a flagged attempt's sample drawn again from its seed (for the report's thumbnails).
        gate_failure: why the run stopped early (``on_flag: fail``), or None.
    """
    p = plan.protocol
    # Keyed by str | None as records' case ids are typed; every id of this run's records is planned.
    position: dict[str | None, int] = {c.case_id: c.position for c in plan.cases}
    records = folder.merge(MANIFEST, read_manifest, lambda r: position[r.case_id])
    rejected = folder.merge(REJECTED, read_rejected, lambda r: (position[r.case_id], r.attempt))
    derived = sum(bool(r.derived) for r in records)
    if p.privacy.gate:
        gate = gate or Gate(plan.model.path, p.privacy, plan.weak_indexes)
        privacy = judge(p.privacy, gate, records, rejected, gate_failure)
        if any(q.insert is None or q.insert.into != "dataset" for q in plan.quotas):
            privacy["report"] = _write_privacy_report(plan, gate, records, rejected, redraw, folder.model_sha)
        if any(q.insert is not None for q in plan.quotas):
            privacy.setdefault("lesions", {"checked": 0, "flagged": 0})["report"] = _write_lesion_report(
                plan, gate, records, rejected, folder.model_sha
            )
    else:
        privacy = {"gate": False, "note": "privacy gate off (privacy.gate: false): cases were not checked"}
    if derived:
        privacy["dataset_backgrounds"] = derived
    if p.privacy.gate and plan.weak_indexes:
        privacy["weak_index"] = [u.to_dict() for u in plan.indexes if u.weaknesses]
    failed = privacy.get("failed", False)
    if not failed:
        _write_datalist(plan, records)
        _write_labels(plan, records)
    summary = {
        "protocol": {"name": p.name, "sha256": plan.source.sha256},
        "model": {"id": plan.model.id, "sha256": folder.model_sha},
        "output_dir": str(plan.output_dir),
        "formats": list(p.output.formats),
        "requested": sum(q.count for q in plan.quotas),
        "written": len(records),
        "quotas": _quota_counts(plan, records, rejected),
        "privacy": privacy,
        "files": {
            "manifest": MANIFEST,
            "datalist": None if failed else DATASET,
            "labels": None if failed else LABELS,
            "rejected": REJECTED,
            **({"privacy_report": PRIVACY_REPORT} if privacy.get("report") else {}),
            **({"lesion_privacy_report": LESION_REPORT} if privacy.get("lesions", {}).get("report") else {}),
        },
        "device": session.device,
        "world_size": session.world_size,
        "seconds_this_session": round(time.monotonic() - session.started, 2),
        "finished": utc_now(),
    }
    write_json(plan.output_dir / SUMMARY, summary)
    return RunResult(plan.output_dir, summary)


def _quota_counts(plan: RunPlan, records: list[ManifestRecord], rejected: list[RejectedRecord]) -> list[dict[str, Any]]:
    """Per quota: requested, written, dropped and out of attempts."""
    written = {r.case_id for r in records}
    finally_rejected = {r.case_id: r.action for r in rejected if r.final}
    quotas = []
    for q in plan.quotas:
        ids = [c.case_id for b in plan.batches if b.quota == q.index for c in b.cases]
        quotas.append(
            {
                "quota": q.where,
                "class": q.group,
                "label": q.label,
                "requested": q.count,
                "written": sum(i in written for i in ids),
                "dropped": sum(finally_rejected.get(i) == "drop" for i in ids),
                "out_of_attempts": sum(finally_rejected.get(i) == "resample" for i in ids),
                **({"extend_strength": q.extend.strength} if q.extend else {}),
                **({"insert_into": q.insert.into} if q.insert else {}),
                **({"grid": _grid_doc(q.grid)} if q.grid else {}),
            }
        )
    return quotas


def _grid_doc(grid: GridPlan) -> dict[str, Any]:
    return {
        "shape": None if grid.shape is None else list(grid.shape),
        "spacing": None if grid.spacing is None else list(grid.spacing),
        "fov_extrapolated": grid.fov_extrapolated,
    }


def _write_privacy_report(
    plan: RunPlan,
    gate: Gate,
    records: list[ManifestRecord],
    rejected: list[RejectedRecord],
    redraw: Callable[[RejectedRecord], Scan],
    model_sha: str,
) -> str:
    """``privacy_report.{json,html}`` of every checked sample; returns the HTML file's name.

    Flagged samples are never written, so they are drawn again from their recorded seeds (one at
    a time: equal to the flagged sample up to float rounding) to be shown beside the feature map
    of their nearest training scan.
    """
    from medsynth.models.artifact import PRIVACY_DIR
    from medsynth.privacy.report import write_report

    # Whole-image checks only: dataset backgrounds were not checked, flagged lesions are in the lesion report.
    checked = [r for r in records if r.privacy and r.privacy.get("gate")]
    flagged = [r for r in rejected if r.kind != LESION]
    entries: list[tuple[str, Any]] = [(str(r.case_id), r.privacy) for r in checked] + [
        (f"{r.case_id}#attempt{r.attempt}", r.privacy) for r in flagged
    ]
    _, html = write_report(
        plan.output_dir,
        index=gate.index,
        synthetic_ids=[e[0] for e in entries],
        verdicts=[e[1] for e in entries],
        settings=plan.protocol.privacy.model_dump(),
        synthetic_scans=[None] * len(checked) + [redraw(r) for r in flagged],
        provenance=_provenance(plan, model_sha, PRIVACY_DIR),
    )
    return Path(html).name


def _write_lesion_report(
    plan: RunPlan, gate: Gate, records: list[ManifestRecord], rejected: list[RejectedRecord], model_sha: str
) -> str:
    """``lesion_privacy_report.{json,html}`` of every checked inserted lesion; returns the HTML file's name.

    Flagged lesions are shown beside their nearest training lesion by the index's stored maps
    (their own crops are not redrawn).
    """
    from medsynth.privacy.lesion_report import write_lesion_report
    from medsynth.privacy.lesions import LESION_INDEX_DIR

    checked = [r for r in records if r.lesion_privacy and r.lesion_privacy.get("gate")]
    flagged = [r for r in rejected if r.kind == LESION]
    entries = [(str(r.case_id), r.lesion_privacy or {}, "dataset" if r.derived else "synthetic") for r in checked]
    entries += [(f"{r.case_id}#attempt{r.attempt}", r.privacy, _background(plan, r)) for r in flagged]
    _, html = write_lesion_report(
        plan.output_dir,
        index=gate.lesion_index,
        case_ids=[e[0] for e in entries],
        verdicts=[e[1] for e in entries],
        crops=None,
        backgrounds=[e[2] for e in entries],
        settings=plan.protocol.privacy.model_dump(),
        alpha=plan.protocol.privacy.alpha,
        provenance=_provenance(plan, model_sha, LESION_INDEX_DIR),
    )
    return Path(html).name


def _provenance(plan: RunPlan, model_sha: str, index_dir: str) -> ReportProvenance:
    """The reports' provenance: the model as the manifest names it, the protocol by name, file and digests."""
    from medsynth.privacy.provenance import for_model

    protocol = {
        "name": plan.protocol.name,
        "file": plan.source.path.name,  # the name only: the folder may say who ran it, and where
        "sha256": plan.source.sha256,
        "plan_sha256": plan.plan_sha256,
    }
    return for_model(
        plan.model.path, model_id=plan.model.id, model_sha256=model_sha, index_dir=index_dir, protocol=protocol
    )


def _background(plan: RunPlan, r: RejectedRecord) -> str:
    quota = {c.case_id: c.quota for c in plan.cases}[r.case_id]
    q = next(q for q in plan.quotas if q.index == quota)
    return "dataset" if q.insert is not None and q.insert.into == "dataset" else "synthetic"


def _subject(r: ManifestRecord) -> str:
    """A case's subject: its source's for a dataset background (a real patient), else the case itself."""
    return r.subject if r.subject is not None else str(r.case_id)


def _write_datalist(plan: RunPlan, records: list[ManifestRecord]) -> None:
    """``dataset.json``: a MONAI datalist (``monai.data.load_decathlon_datalist`` reads it).

    Each entry carries ``subject`` (so a split stays patient-disjoint) and, for an insertion
    case, its lesion mask as ``label``.
    """
    training = []
    for r in records:
        item = {"image": r.preferred_file(), "pathology": r.pathology, "modality": r.modality, "case_id": r.case_id}
        if "mask" in r.files:
            item["label"] = r.files["mask"]
        training.append({**item, "subject": _subject(r)})
    write_json(plan.output_dir / DATASET, {"name": plan.protocol.name, "training": training})


def _write_labels(plan: RunPlan, records: list[ManifestRecord]) -> None:
    """``labels.csv``: the written cases as a dataset CSV (``Catalog.from_csv`` reads it; docs/data.md)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "pathology", "modality", "subject", "mask"])
    for r in records:
        writer.writerow([r.preferred_file(), r.pathology, r.modality, _subject(r), r.files.get("mask", "")])
    atomic_write_text(plan.output_dir / LABELS, buffer.getvalue())


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as a few human-readable lines (what ``medsynth generate`` prints)."""
    out = Path(summary["output_dir"])
    lines = [f"wrote {summary['written']} of {summary['requested']} requested cases to {out}"]
    for q in summary["quotas"]:
        extra = "".join(f", {q[k]} {k.replace('_', ' ')}" for k in ("dropped", "out_of_attempts") if q.get(k))
        lines.append(f"  {q.get('label', q['class']):<36} {q['written']:>6} / {q['requested']}{extra}")
        if q.get("grid", {}).get("fov_extrapolated"):
            lines.append(
                "  WARNING: field of view outside the model's trained range, sampled by request "
                "(output.allow_fov_extrapolation)"
            )
    pv = summary["privacy"]
    if not pv.get("gate"):
        lines.append("privacy gate: OFF (cases were not checked for memorization)")
    else:
        verdict = "FAILED" if pv["failed"] else "passed"
        lines.append(
            f"privacy gate {verdict}: {pv['flagged']} of {pv['checked']} samples flagged "
            f"({pv['flagged_rate']:.1%}, expected {pv['expected_rate']:.1%}, binomial p={pv['pvalue']:.3g})"
        )
        if pv.get("report"):
            lines.append(f"privacy report: {out / pv['report']}")
        lesions = pv.get("lesions")
        if lesions:
            lines.append(
                f"lesion privacy gate: {lesions['flagged']} of {lesions['checked']} inserted lesions flagged"
                + (f" (report: {out / lesions['report']})" if lesions.get("report") else "")
            )
    for weak in pv.get("weak_index", []):
        lines.append(
            f"WARNING: weak {weak['index']} privacy index accepted (privacy.accept_weak_index): "
            + "; ".join(weak["weaknesses"])
        )
    if pv.get("dataset_backgrounds"):
        lines.append(
            f"{pv['dataset_backgrounds']} case(s) are real dataset scans with an inserted lesion: derived from "
            "patients, not de-identified synthetic data; their backgrounds were not privacy-gated"
        )
    lines.append(f"manifest: {out / summary['files']['manifest']}")
    if summary["files"].get("datalist"):
        lines.append(f"MONAI datalist: {out / summary['files']['datalist']}")
    return lines
