"""Insertion quotas (``quotas[i].insert``): lesions painted into dataset scans and generated backgrounds.

Runs the shipped phantom models (they carry lesion models and lesion privacy indexes) on a few
phantom normals, with few sampler steps: what is checked is the case's files and records, not
the look of the lesion.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from scipy import ndimage as ndi

from medsynth.cli import main
from medsynth.data.catalog import Catalog
from medsynth.data.phantoms import BASE_PATHOLOGIES, phantom_dataset
from medsynth.errors import PrivacyError, ProtocolError
from medsynth.io import read_scan
from medsynth.io.masks import read_mask
from medsynth.lesions.regions import resolve_region
from medsynth.protocol import generate, validate_protocol

HELPER = Path(__file__).with_name("crash_generate.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread, as conftest sets here
MARGIN = 2  # the compositing band (protocol.insertion.COMPOSITE_MARGIN)


@pytest.fixture(scope="module")
def normals(tmp_path_factory) -> dict[int, Path]:
    """Phantom datasets with masks: 2D (16 scans: 2 normal CT, 2 normal MR) and 3D (8 scans, 48³)."""
    root = tmp_path_factory.mktemp("backgrounds")
    return {
        2: phantom_dataset(root / "2d", dim=2, count=16, seed=5, masks=True, pathologies=BASE_PATHOLOGIES),
        3: phantom_dataset(root / "3d", dim=3, count=8, seed=5, size=48, masks=True, pathologies=BASE_PATHOLOGIES),
    }


def _protocol(root: Path, model: str, quotas: list[dict], formats: list[str], **privacy) -> Path:
    doc = {
        "protocol": 1,
        "name": "insert-test",
        "model": model,
        "seed": 11,
        "output": {"formats": formats},
        "sampler": {"steps": 3, "batch_size": 2},
        "quotas": quotas,
        # The shipped lesion indexes are weak (docs/privacy.md): accepted, and the records say so.
        "privacy": {"gate": True, "quantile": 0.99, "accept_weak_index": True, **privacy},
    }
    path = root / "protocol.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _mask(path: Path, case) -> np.ndarray:
    return read_mask(path, like=case).reshape(case.shape)


def _unchanged_outside_margin(case, background, mask) -> None:
    band = ndi.binary_dilation(mask, iterations=MARGIN + 1)  # generous: the blend band is Euclidean
    assert mask.any() and (case.array[0][~band] == pytest.approx(background.array[0][~band], abs=1e-3))
    assert not np.allclose(case.array[0][mask], background.array[0][mask], atol=1.0), "no lesion was painted"


@pytest.fixture(scope="module")
def run_2d(normals, tmp_path_factory) -> tuple[Path, Path, dict]:
    """3 CT nodules into the dataset's normals and 2 MR nodules into generated backgrounds."""
    root = tmp_path_factory.mktemp("insert2d")
    quotas = [
        {
            "pathology": "nodule",
            "modality": "CT",
            "count": 3,
            "insert": {"into": {"dataset": str(normals[2]), "pathology": "normal"}, "size_mm": [8, 20]},
        },
        {"pathology": "nodule", "modality": "MR", "count": 2, "insert": {"into": "generated"}},
    ]
    protocol = _protocol(root, "builtin:phantom-2d", quotas, ["dicom", "nifti", "png"])
    result = generate(protocol, out=root / "out")
    return protocol, root / "out", result.summary


def test_dataset_background_case_keeps_the_scan_outside_the_lesion_and_records_its_source(normals, run_2d):
    _, out, summary = run_2d
    assert summary["written"] == 5
    catalog = Catalog.from_csv(normals[2])
    dataset = [r for r in _records(out) if r["insert"]["into"] == "dataset"]
    assert [r["source"]["row"] for r in dataset] == [0, 8, 0]  # the normal CT rows, round robin
    for r in dataset:
        row = catalog.records[r["source"]["row"]]
        assert (row.pathologies, row.modality) == (("normal",), "CT")
        assert r["source"]["sha256"] == hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
        assert r["source"]["split"] == row.split and r["subject"] == row.subject and r["derived"] is True
        assert r["privacy"] == {"gate": False, "reason": "dataset background: a real scan"}
        assert r["lesion_privacy"]["gate"] is True and r["lesion_privacy"]["passed"] is True
        assert r["lesion_privacy"]["weak_index"] is True  # an accepted weak index marks every verdict
        assert "sampler" not in r and set(r["source"]) == {"row", "sha256", "split"}  # never a path
        background = catalog.load(r["source"]["row"])
        case = read_scan(out / r["files"]["nifti"], modality="CT")
        mask = _mask(out / r["files"]["mask"], case)
        assert np.allclose(case.affine, background.affine) and case.shape == background.shape
        _unchanged_outside_margin(case, background, mask)
        assert not (mask & ~resolve_region(background, "lungs").mask).any(), "the lesion left the lungs"
        assert int(mask.sum()) > 0 and abs(r["insert"]["diameter_mm"] - 14) <= 6 + 2 * max(case.spacing)


def test_mask_nifti_seg_and_outline_are_on_the_case_grid(run_2d, dciodvfy_errors):
    _, out, _ = run_2d
    for r in _records(out):
        assert {"mask", "seg", "outline"} <= set(r["files"]) and set(r["sha256"]) == set(r["files"])
        case = read_scan(out / r["files"]["nifti"], modality=r["modality"])
        mask = _mask(out / r["files"]["mask"], case)
        assert np.array_equal(_mask(out / r["files"]["seg"], case), mask)
        seg = pydicom.dcmread(out / r["files"]["seg"])
        series = pydicom.dcmread(next((out / r["files"]["dicom"]).iterdir()))
        assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "nodule"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.SeriesInstanceUID
        assert (seg.FrameOfReferenceUID, seg.StudyInstanceUID) == (series.FrameOfReferenceUID, series.StudyInstanceUID)
        assert dciodvfy_errors(out / r["files"]["seg"]) == []
        from PIL import Image

        assert Image.open(out / r["files"]["outline"]).mode == "RGB"


def test_generated_background_is_gated_whole_and_its_lesion_against_training_lesions(run_2d):
    _, out, summary = run_2d
    generated = [r for r in _records(out) if r["insert"]["into"] == "generated"]
    assert len(generated) == 2
    for r in generated:
        assert r["privacy"]["gate"] is True and r["privacy"]["passed"] is True
        assert r["lesion_privacy"]["gate"] is True and r["lesion_privacy"]["group"] == "nodule/MR"
        assert "source" not in r and "derived" not in r and r["sampler"]["steps"] == 3
    pv = summary["privacy"]
    assert (pv["checked"], pv["lesions"]["checked"], pv["dataset_backgrounds"]) == (2, 5, 3)
    assert (out / "lesion_privacy_report.html").is_file() and (out / "privacy_report.html").is_file()


def test_labels_csv_and_datalist_carry_the_source_subject(normals, run_2d):
    _, out, _ = run_2d
    labels = Catalog.from_csv(out / "labels.csv")
    subjects = {Path(r.path).name: r.subject for r in labels.records}
    datalist = json.loads((out / "dataset.json").read_text())["training"]
    for r in _records(out):
        expected = r.get("subject", r["case_id"])
        assert subjects[Path(r["files"]["nifti"]).name] == expected
        item = next(i for i in datalist if i["case_id"] == r["case_id"])
        assert item["subject"] == expected and item["label"] == r["files"]["mask"]
    assert all(labels.records[i].mask is not None for i in range(len(labels.records)))


def test_killed_insertion_run_resumes_to_the_uninterrupted_bytes(run_2d, output_tree, tmp_path):
    protocol, reference, _ = run_2d
    out = tmp_path / "out"
    # Killed at the 12th rename into place: case 2's scan files are in place, its mask or SEG not yet.
    cmd = [sys.executable, str(HELPER), "at-replace", "12", "--", "generate", str(protocol), "--out", str(out)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert 0 < (out / "manifest.jsonl").read_text().count("\n") < 5
    generate(protocol, out=out)
    assert output_tree(out) == output_tree(reference)


def test_3d_insertion_into_dataset_volumes(normals, tmp_path, dciodvfy_errors):
    quotas = [
        {"pathology": "nodule", "modality": "CT", "count": 1, "insert": {"into": {"dataset": str(normals[3])}}},
    ]
    protocol = _protocol(tmp_path, "builtin:phantom-3d", quotas, ["dicom", "nifti"])
    generate(protocol, out=tmp_path / "out")
    (r,) = _records(tmp_path / "out")
    out = tmp_path / "out"
    case = read_scan(out / r["files"]["nifti"], modality="CT")
    background = Catalog.from_csv(normals[3]).load(r["source"]["row"])
    mask = _mask(out / r["files"]["mask"], case)
    assert case.spatial_dims == 3 and case.shape == background.shape
    _unchanged_outside_margin(case, background, mask)
    assert np.array_equal(_mask(out / r["files"]["seg"], case), mask)
    assert dciodvfy_errors(out / r["files"]["seg"]) == []
    assert (out / r["files"]["outline"]).is_file()


def test_flagged_lesions_are_redrawn_and_listed_in_the_lesion_report(normals, tmp_path):
    """At quantile 0.51 the lesion threshold is the held-out median: about half the lesions are flagged."""
    quotas = [
        {"pathology": "nodule", "modality": "CT", "count": 6, "insert": {"into": {"dataset": str(normals[2])}}},
    ]
    protocol = _protocol(tmp_path, "builtin:phantom-2d", quotas, ["nifti"], quantile=0.51, max_attempts=4, alpha=0.001)
    try:
        summary = generate(protocol, out=tmp_path / "out").summary
    except PrivacyError as exc:  # a case flagged on all its attempts fails the run; its records stay
        assert "flagged on every attempt" in str(exc) and "lesion_privacy_report.html" in str(exc)
        summary = exc.result.summary
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert rejected and all(r["kind"] == "lesion" for r in rejected)
    assert all(r["privacy"]["score"] > r["privacy"]["threshold"] for r in rejected)
    records = _records(tmp_path / "out")
    for r in records:
        assert r["lesion_privacy"]["passed"] and r["lesion_privacy"]["score"] <= r["lesion_privacy"]["threshold"]
        assert r["attempt"] == sum(x["case_id"] == r["case_id"] for x in rejected)
    assert len(records) + sum(r["final"] for r in rejected) == 6
    lesions = summary["privacy"]["lesions"]
    assert lesions["flagged"] == len(rejected) and lesions["checked"] == len(records) + len(rejected)
    html = (tmp_path / "out" / "lesion_privacy_report.html").read_text()
    assert all(f"{r['case_id']}#attempt{r['attempt']}" in html for r in rejected)


# -- checks before any work ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("insert", "expected"),
    [
        ({"into": "elsewhere"}, "expected 'generated' or a mapping"),
        ({"into": "generated", "size_mm": [20, 6]}, "lo <= hi"),
        ({"into": "generated", "size_mm": [6, 200]}, "may be at most"),
        ({"into": "generated", "region": "liver"}, "expected 'lungs', 'body' or a mapping"),
        ({"into": {"dataset": "DATA", "pathology": "pneumothorax"}}, "has no rows of class pneumothorax/CT"),
        ({"into": {"dataset": "DATA3D"}}, "holds 3D scans; the lesion model inserts into 2D scans"),
        ({"into": {"dataset": "missing.csv"}}, "missing.csv"),
    ],
)
def test_bad_insertion_quotas_are_one_line_errors(normals, tmp_path, insert, expected):
    spec = json.loads(json.dumps(insert).replace('"DATA3D"', json.dumps(str(normals[3]))))
    spec = json.loads(json.dumps(spec).replace('"DATA"', json.dumps(str(normals[2]))))
    quotas = [{"pathology": "nodule", "modality": "CT", "count": 1, "insert": spec}]
    protocol = _protocol(tmp_path, "builtin:phantom-2d", quotas, ["nifti"])
    with pytest.raises(ProtocolError) as err:
        validate_protocol(protocol)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "synthetic").exists()


def test_insert_needs_a_lesion_model_that_knows_the_pathology(model_dirs, normals, tmp_path, capsys):
    quotas = [{"pathology": "effusion", "modality": "CT", "count": 1, "insert": {"into": "generated"}}]
    assert main(["validate", str(_protocol(tmp_path, "builtin:phantom-2d", quotas, ["nifti"]))]) == 2
    err = capsys.readouterr().err
    assert "the lesion model of builtin:phantom-2d" in err and "'effusion'" in err and "Traceback" not in err
    quotas[0]["pathology"] = "nodule"
    protocol = _protocol(tmp_path, str(model_dirs["2d"]), quotas, ["nifti"], gate=False)
    with pytest.raises(ProtocolError, match="has no lesion model"):
        validate_protocol(protocol)
    extend = {**quotas[0], "extend": {"sources": str(normals[2])}}
    with pytest.raises(ProtocolError, match="at most one of `extend`"):
        validate_protocol(_protocol(tmp_path, "builtin:phantom-2d", [extend], ["nifti"]))
