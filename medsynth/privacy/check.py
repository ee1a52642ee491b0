"""`medsynth privacy-check` and `medsynth privacy-index`: the check on any synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

from medsynth.errors import InputError, PrivacyError
from medsynth.privacy.index import PrivacyIndex, build_index_for_model, flagged_rate_test


def _catalog(csv: Path):
    from medsynth.data.catalog import Catalog

    return Catalog.from_csv(csv)


def _load_all(catalog) -> tuple[list, list[str], list[str]]:
    scans = [catalog.load(i) for i in range(len(catalog))]
    groups = [f"{r.pathology}/{r.modality}" for r in catalog.records]
    paths = [str(r.path) for r in catalog.records]
    return scans, groups, paths


def _synthetic(source: Path) -> tuple[list, list[str], list[str]]:
    """Scans, groups and ids of a dataset CSV or a medsynth output directory (manifest.jsonl)."""
    from medsynth.io import read_scan

    if source.is_dir():
        manifest = source / "manifest.jsonl"
        if not manifest.is_file():
            raise InputError(f"{source}: not a medsynth output directory (no manifest.jsonl); pass a dataset CSV instead")
        scans, groups, ids = [], [], []
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                files = rec["files"]
                rel = files.get("nifti") or files.get("dicom") or files.get("png")
                scans.append(read_scan(source / rel, modality=rec["modality"]))
                groups.append(f"{rec['pathology']}/{rec['modality']}")
                ids.append(rec["case_id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{manifest}:{n}: not a manifest line ({exc})") from None
        return scans, groups, ids
    return _load_all(_catalog(source))


def privacy_check(train: Path, holdout: Path, synthetic: Path, out: Path, quantile: float, strict: bool) -> dict:
    """Check ``synthetic`` against ``train`` (calibrated on ``holdout``), write the report.

    The run fails (``PrivacyError``, exit 3) when the flagged rate is significantly above
    1 - quantile (one-sided binomial, alpha 0.01), or with ``strict`` when any case is flagged.
    """
    from medsynth.privacy.report import write_report

    tr_scans, tr_groups, tr_paths = _load_all(_catalog(train))
    ho_scans, ho_groups, _ = _load_all(_catalog(holdout))
    sy_scans, sy_groups, sy_ids = _synthetic(synthetic)
    if not sy_scans:
        raise InputError(f"{synthetic}: no synthetic scans to check")
    # Here the user holds the training data, so the report names training scans by their paths.
    index = PrivacyIndex.build(
        tr_scans, ho_scans, train_groups=tr_groups, holdout_groups=ho_groups, train_ids=tr_paths, quantile=quantile
    )
    verdicts = index.check(sy_scans, sy_groups)
    n_flagged = sum(not v.passed for v in verdicts)
    pvalue, failed = flagged_rate_test(n_flagged, len(verdicts), quantile)
    settings = {"quantile": quantile, "strict": strict, "train": str(train), "holdout": str(holdout),
                "synthetic": str(synthetic)}
    write_report(out, index=index, synthetic_ids=sy_ids, verdicts=verdicts, settings=settings)
    result = {"checked": len(verdicts), "flagged": n_flagged, "rate_pvalue": pvalue,
              "failed": bool(failed or (strict and n_flagged > 0)), "report": str(out / "privacy_report.html")}
    if result["failed"]:
        raise PrivacyError(
            f"{n_flagged} of {len(verdicts)} synthetic scans flagged as near copies of training scans "
            f"(binomial p={pvalue:.3g} against the {1 - quantile:.1%} expected); report: {result['report']}"
        )
    return result


def privacy_index(model: str, train: Path, holdout: Path, quantile: float) -> Path:
    """Rebuild ``MODEL/privacy`` from the training and holdout CSVs."""
    from medsynth.models.artifact import resolve_model_path

    model_dir = resolve_model_path(model)
    build_index_for_model(model_dir, _catalog(train), _catalog(holdout), quantile=quantile)
    return model_dir / "privacy"
