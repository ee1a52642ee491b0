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
from typing import Any

from medsynth.io.atomic import write_json
from medsynth.io.scan import Scan
from medsynth.protocol.gate import Gate, judge
from medsynth.protocol.manifest import (
    MANIFEST,
    REJECTED,
    ManifestRecord,
    RejectedRecord,
    read_manifest,
    read_rejected,
    utc_now,
)
from medsynth.protocol.plan import RunPlan
from medsynth.protocol.state import DATASET, PRIVACY_REPORT, SUMMARY, OutputFolder


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
    if p.privacy.gate:
        gate = gate or Gate(plan.model.path, p.privacy)
        privacy = judge(p.privacy, gate, len(records), rejected, gate_failure)
        privacy["report"] = _write_privacy_report(plan, gate, records, rejected, redraw)
    else:
        privacy = {"gate": False, "note": "privacy gate off (privacy.gate: false): cases were not checked"}
    failed = privacy.get("failed", False)
    if not failed:
        _write_datalist(plan, records)
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
            "rejected": REJECTED,
            **({"privacy_report": PRIVACY_REPORT} if privacy.get("report") else {}),
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
                "requested": q.count,
                "written": sum(i in written for i in ids),
                "dropped": sum(finally_rejected.get(i) == "drop" for i in ids),
                "out_of_attempts": sum(finally_rejected.get(i) == "resample" for i in ids),
                **({"extend_strength": q.extend.strength} if q.extend else {}),
            }
        )
    return quotas


def _write_privacy_report(
    plan: RunPlan,
    gate: Gate,
    records: list[ManifestRecord],
    rejected: list[RejectedRecord],
    redraw: Callable[[RejectedRecord], Scan],
) -> str:
    """``privacy_report.{json,html}`` of every checked sample; returns the HTML file's name."""
    from medsynth.privacy.report import write_report

    entries: list[tuple[str, Any]] = [(str(r.case_id), r.privacy) for r in records] + [
        (f"{r.case_id}#attempt{r.attempt}", r.privacy) for r in rejected
    ]
    _, html = write_report(
        plan.output_dir,
        index=gate.index,
        synthetic_ids=[e[0] for e in entries],
        verdicts=[e[1] for e in entries],
        settings=plan.protocol.privacy.model_dump(),
        synthetic_maps=_flagged_maps(gate, len(records), rejected, redraw),
    )
    return Path(html).name


def _flagged_maps(
    gate: Gate, n_written: int, rejected: list[RejectedRecord], redraw: Callable[[RejectedRecord], Scan]
) -> Any:
    """Feature maps for the report's side-by-side thumbnails of the flagged attempts.

    Flagged samples are never written, so they are drawn again from their recorded seeds
    (one at a time: equal to the flagged sample up to float rounding). Written cases need
    no thumbnail and get zeros.
    """
    if not rejected:
        return None
    import numpy as np

    from medsynth.privacy.features import scan_features

    maps = scan_features([redraw(r) for r in rejected], gate.index.feature_config).maps
    out = np.zeros((n_written + len(maps), *maps.shape[1:]), maps.dtype)
    out[n_written:] = maps
    return out


def _write_datalist(plan: RunPlan, records: list[ManifestRecord]) -> None:
    """``dataset.json``: a MONAI datalist (``monai.data.load_decathlon_datalist`` reads it)."""
    training = [
        {"image": r.preferred_file(), "pathology": r.pathology, "modality": r.modality, "case_id": r.case_id}
        for r in records
    ]
    write_json(plan.output_dir / DATASET, {"name": plan.protocol.name, "training": training})


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as a few human-readable lines (what ``medsynth generate`` prints)."""
    out = Path(summary["output_dir"])
    lines = [f"wrote {summary['written']} of {summary['requested']} requested cases to {out}"]
    for q in summary["quotas"]:
        extra = "".join(f", {q[k]} {k.replace('_', ' ')}" for k in ("dropped", "out_of_attempts") if q.get(k))
        lines.append(f"  {q['class']:<28} {q['written']:>6} / {q['requested']}{extra}")
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
    lines.append(f"manifest: {out / summary['files']['manifest']}")
    if summary["files"].get("datalist"):
        lines.append(f"MONAI datalist: {out / summary['files']['datalist']}")
    return lines
