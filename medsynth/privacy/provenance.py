"""Where a privacy report came from: date, medsynth version, model, protocol and training set.

An ethics board reading a report must be able to tie it to the exact model, protocol and
training set it judged. The block holds digests and counts only, never a path of a training
scan or an identifier: the model by its id and ``model_sha256`` (the digest a run's manifest
and ``summary.json`` carry), the privacy index by the SHA-256 that the model directory's
``config.json`` records for it (``models.verify``), the protocol by its name, file name, the
SHA-256 of the file's bytes and the plan's digest, the training set by the fingerprint the
model's config records (counts per class and a SHA-256 of the sorted relative file list,
``Catalog.fingerprint``) or, for ``medsynth privacy-check``, the fingerprint of the given CSV.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsynth import __version__
from medsynth.io.provenance import generation_time

NOT_RECORDED = "not recorded"


def _now() -> str:
    # generation_time: SOURCE_DATE_EPOCH when set, so that two runs can be compared byte for byte
    return generation_time().strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class ReportProvenance:
    """The report's provenance block (``to_dict`` is the JSON report's ``provenance``).

    Attributes:
        model: ``{"id", "sha256"}`` of the model whose output was checked (empty: unknown).
        index: ``{"path", "sha256"}`` of the privacy index file the thresholds come from.
        protocol: ``{"name", "file", "sha256", "plan_sha256"}`` of the protocol run (empty: none).
        training_set: ``{"counts", "file_list_sha256", "source"}``.
        created, medsynth_version: when and by which medsynth the report was written.
    """

    model: dict[str, str] = field(default_factory=dict)
    index: dict[str, str] = field(default_factory=dict)
    protocol: dict[str, str] = field(default_factory=dict)
    training_set: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    medsynth_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """``(label, value)`` lines for the HTML block, every field named even when unknown."""
        ts = self.training_set
        counts = ts.get("counts") or {}
        training = (
            f"{sum(counts.values())} scans ({', '.join(f'{g}: {n}' for g, n in sorted(counts.items()))})"
            if counts
            else NOT_RECORDED
        )
        return [
            ("report written", self.created),
            ("medsynth version", self.medsynth_version),
            ("model", self.model.get("id") or NOT_RECORDED),
            ("model digest (SHA-256)", self.model.get("sha256") or NOT_RECORDED),
            ("privacy index", self.index.get("path") or NOT_RECORDED),
            ("privacy index digest (SHA-256)", self.index.get("sha256") or NOT_RECORDED),
            ("protocol", _protocol_line(self.protocol)),
            ("protocol file digest (SHA-256)", self.protocol.get("sha256") or NOT_RECORDED),
            ("plan digest (SHA-256)", self.protocol.get("plan_sha256") or NOT_RECORDED),
            ("training set", training + (f" — {ts['source']}" if ts.get("source") else "")),
            ("training file list digest (SHA-256)", ts.get("file_list_sha256") or NOT_RECORDED),
        ]


def _protocol_line(protocol: dict[str, str]) -> str:
    if not protocol:
        return "none (not made by a protocol run)"
    return f"{protocol.get('name', '?')} ({protocol.get('file', '?')})"


def for_model(
    model_dir: str | Path,
    *,
    model_id: str,
    model_sha256: str,
    index_dir: str = "privacy",
    protocol: dict[str, str] | None = None,
) -> ReportProvenance:
    """The provenance of a report made from a model directory's privacy index (a protocol run).

    Args:
        model_dir: the model directory (its config.json gives the index digest and the fingerprint).
        model_id: the model as a manifest names it (``builtin:phantom-2d`` or the config's name).
        model_sha256: ``models.artifact.model_sha256`` of the directory.
        index_dir: the index folder inside the model directory (``lesion/privacy`` for lesions).
        protocol: ``{"name", "file", "sha256", "plan_sha256"}`` of the run.
    """
    from medsynth.models.artifact import load_config
    from medsynth.models.verify import records

    root = Path(model_dir)
    rel = f"{index_dir}/index.safetensors"
    record = records(root).get(rel)
    fingerprint = dict(load_config(root).fingerprint)
    training = {
        "counts": fingerprint.get("counts", {}),
        "file_list_sha256": fingerprint.get("file_list_sha256", ""),
        "source": "as recorded in the model's config.json when it was trained",
    }
    return ReportProvenance(
        model={"id": model_id, "sha256": model_sha256},
        index={"path": rel, "sha256": record.sha256 if record else ""},
        protocol=dict(protocol or {}),
        training_set=training,
    )


def for_datasets(train_fingerprint: dict[str, Any], synthetic: Path) -> ReportProvenance:
    """The provenance of a ``medsynth privacy-check`` report.

    The training set is the given CSV's fingerprint; the model and protocol are those that the
    synthetic folder's ``summary.json`` names when it is a medsynth output, else not recorded
    (a CSV of synthetic scans says nothing about what made them).
    """
    model: dict[str, str] = {}
    protocol: dict[str, str] = {}
    summary = synthetic / "summary.json" if synthetic.is_dir() else None
    if summary is not None and summary.is_file():
        try:
            doc = json.loads(summary.read_text(encoding="utf-8"))
            model = {k: str(v) for k, v in doc.get("model", {}).items() if k in ("id", "sha256")}
            p = doc.get("protocol", {})
            protocol = {k: str(v) for k, v in p.items() if k in ("name", "sha256")}
            if protocol:
                protocol["file"] = "named in the output's summary.json"
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            # The provenance is a courtesy here: an unreadable summary leaves it "not recorded".
            model, protocol = {}, {}
    training = {
        "counts": train_fingerprint.get("counts", {}),
        "file_list_sha256": train_fingerprint.get("file_list_sha256", ""),
        "source": "the --train CSV of this check",
    }
    return ReportProvenance(
        model=model,
        index={"path": "built in memory by this check (not saved)", "sha256": ""},
        protocol=protocol,
        training_set=training,
    )
