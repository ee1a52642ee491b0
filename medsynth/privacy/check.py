"""`medsynth privacy-check` and `medsynth privacy-index`: the check on any synthetic set.

Scans are read one at a time from their files (lazy sequences), so large data sets do not
have to fit in memory; only their feature maps are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.errors import InputError, PrivacyError
from medsynth.io.scan import Scan
from medsynth.lazy import LazySequence
from medsynth.privacy.calibration import check_quantile, flagged_rate_test
from medsynth.privacy.catalogs import build_index_for_model, catalog_groups, check_disjoint
from medsynth.privacy.index import PrivacyIndex

if TYPE_CHECKING:
    from medsynth.data.catalog import Catalog


def _catalog(csv: Path) -> Catalog:
    from medsynth.data.catalog import Catalog

    return Catalog.from_csv(csv)


def _dataset(catalog: Catalog) -> tuple[Sequence[Scan], list[str], list[str]]:
    """Lazy scans, groups and paths of a catalog."""
    return LazySequence(len(catalog), catalog.load), catalog_groups(catalog), [str(r.path) for r in catalog.records]


def _manifest(source: Path) -> tuple[Sequence[Scan], list[str], list[str]]:
    """Lazy scans, groups and case ids of a medsynth output directory (its manifest.jsonl)."""
    from medsynth.conditions import group_key
    from medsynth.io import read_scan
    from medsynth.protocol.manifest import MANIFEST, LineError, read_manifest

    manifest = source / MANIFEST
    if not manifest.is_file():
        raise InputError(f"{source}: not a medsynth output directory (no manifest.jsonl); pass a dataset CSV instead")

    def bad_line(n: int, detail: str) -> InputError:
        return InputError(
            f"{manifest}: line {n} is not a manifest line with case_id, pathology, modality and "
            f"files {{nifti|dicom|png: path}} ({detail})"
        )

    try:
        records = read_manifest(manifest)
    except LineError as exc:
        raise bad_line(exc.line, exc.detail) from None
    entries = []
    for n, rec in records:
        if rec.case_id is None:
            raise bad_line(n, "case_id missing")
        # The preferred file: NIfTI (float values as generated), else DICOM, else the 8-bit PNG.
        entries.append(
            (source / rec.preferred_file(), rec.modality, group_key(rec.pathology, rec.modality), rec.case_id)
        )
    if not entries:
        raise InputError(f"{manifest}: no cases listed; nothing to check")

    def load(i: int) -> Scan:
        return read_scan(entries[i][0], modality=entries[i][1])

    return LazySequence(len(entries), load), [e[2] for e in entries], [e[3] for e in entries]


def privacy_check(
    train: Path, holdout: Path, synthetic: Path, out: Path, quantile: float = 0.99, strict: bool = False
) -> dict[str, Any]:
    """Check ``synthetic`` against ``train`` (calibrated on ``holdout``) and write the report.

    Args:
        train, holdout: dataset CSVs (``path,pathology,modality[,split,subject]``); disjoint.
        synthetic: a dataset CSV or a medsynth output directory (``manifest.jsonl``).
        out: folder for ``privacy_report.json`` and ``privacy_report.html``.
        quantile: tau is this quantile of holdout->train similarity.
        strict: fail when any case is flagged.

    Returns:
        ``{"checked", "flagged", "rate_pvalue", "failed", "report"}``.

    Raises:
        InputError: unreadable or overlapping inputs (exit 2).
        PrivacyError: the flagged rate is significantly above ``1 - quantile`` (one-sided
            binomial, alpha 0.01), or with ``strict`` any case is flagged (exit 3). The report
            is written first.
    """
    from medsynth.privacy.provenance import for_datasets
    from medsynth.privacy.report import write_report

    q = check_quantile(quantile, "--quantile")
    train_cat, holdout_cat = _catalog(train), _catalog(holdout)
    check_disjoint(train_cat, holdout_cat)
    tr_scans, tr_groups, tr_paths = _dataset(train_cat)
    ho_scans, ho_groups, _ = _dataset(holdout_cat)
    if synthetic.is_dir():
        sy_scans, sy_groups, sy_ids = _manifest(synthetic)
    else:
        sy_scans, sy_groups, sy_ids = _dataset(_catalog(synthetic))
    # Here the user holds the training data, so the report names training scans by their paths
    # (this index is never saved).
    index = PrivacyIndex.build(
        tr_scans, ho_scans, train_groups=tr_groups, holdout_groups=ho_groups, train_ids=tr_paths, quantile=q
    )
    verdicts = index.check(sy_scans, sy_groups, names=sy_ids)
    n_flagged = sum(not v.passed for v in verdicts)
    pvalue, failed = flagged_rate_test(n_flagged, len(verdicts), q)
    settings = {
        "quantile": q,
        "strict": strict,
        "train": str(train),
        "holdout": str(holdout),
        "synthetic": str(synthetic),
    }
    # The user holds both sets here: flagged cases are drawn beside the training scans themselves.
    _, html_path = write_report(
        out,
        index=index,
        synthetic_ids=sy_ids,
        verdicts=verdicts,
        settings=settings,
        synthetic_scans=sy_scans,
        training_scans=tr_scans,
        provenance=for_datasets(train_cat.fingerprint(), synthetic),
    )
    result = {
        "checked": len(verdicts),
        "flagged": n_flagged,
        "rate_pvalue": pvalue,
        "failed": bool(failed or (strict and n_flagged > 0)),
        "report": str(html_path),
    }
    if result["failed"]:
        why = (
            "--strict and at least one case is flagged"
            if not failed
            else f"binomial p={pvalue:.3g} against the {1 - q:.1%} expected of new scans"
        )
        raise PrivacyError(
            f"{n_flagged} of {len(verdicts)} synthetic scans flagged as near copies of training scans "
            f"({why}); report: {result['report']}"
        )
    return result


FORCED_FILE = "forced.json"  # in MODEL/privacy: the index was built from a set that is not the model's


def matches_training_set(catalog: Catalog, recorded: dict[str, Any]) -> bool:
    """Whether ``catalog`` holds the files a model's training fingerprint names.

    The fingerprint hashes paths relative to the training CSV's folder, which a CSV elsewhere
    (``train.csv`` in the work folder) does not share: every ancestor of the scans' common folder
    is tried as that root. Counts per class must match exactly.
    """
    import os

    from medsynth.digest import sha256_lines

    if not catalog.records or catalog.fingerprint()["counts"] != recorded.get("counts"):
        return False
    paths = [str(r.path) for r in catalog.records]
    common = Path(os.path.commonpath(paths))
    for root in (common, *common.parents):
        if sha256_lines(sorted(Path(os.path.relpath(p, root)).as_posix() for p in paths)) == recorded.get(
            "file_list_sha256"
        ):
            return True
    return False


def privacy_index(model: str, train: Path, holdout: Path, quantile: float = 0.99, *, force: bool = False) -> Path:
    """Rebuild ``MODEL/privacy`` from the training and holdout CSVs; return its path.

    Raises:
        InputError: ``train`` is not the model's training set (its recorded fingerprint), unless
            ``force`` (then ``privacy/forced.json`` records it), or the sets overlap.
    """
    from medsynth.io.atomic import write_json
    from medsynth.models.artifact import load_config, resolve_model_path

    q = check_quantile(quantile, "--quantile")
    model_dir = resolve_model_path(model)
    recorded = load_config(model_dir).fingerprint
    train_cat, holdout_cat = _catalog(train), _catalog(holdout)
    matches = matches_training_set(train_cat, recorded)
    if not matches and not force:
        given = train_cat.fingerprint()["counts"]
        raise InputError(
            f"{train}: is not the training set of {model} (per class {given}; the model was trained on "
            f"{recorded.get('counts')}); give the model's training CSV (medsynth train writes it as "
            "WORK_DIR/splits/train.csv) and a holdout it never saw, or --force to build the index anyway"
        )
    build_index_for_model(model_dir, train_cat, holdout_cat, quantile=q)
    if not matches:
        write_json(
            model_dir / "privacy" / FORCED_FILE,
            {
                "forced": True,
                "reason": "--train does not match the model's training fingerprint",
                "given": train_cat.fingerprint(),
            },
        )
    return model_dir / "privacy"
