"""Issue 15 parts 1 and 3 through `generate`: ids a PACS keeps apart, the run's study date,
the model's body part, and the synthetic markers of NIfTI and PNG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from PIL import Image

from medsynth.protocol import generate

QUOTAS = [{"pathology": "nodule", "modality": "CT", "count": 1}, {"pathology": "normal", "modality": "MR", "count": 1}]


@pytest.fixture(scope="module")
def chest_model(model_dirs, tmp_path_factory) -> Path:
    """The tiny 2D model with ``body_part: CHEST`` in its config.json (not a recorded file)."""
    target = tmp_path_factory.mktemp("chest") / "model"
    shutil.copytree(model_dirs["2d"], target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "body_part": "CHEST"}, indent=2))
    return target


def _run(model: Path, make_protocol, write_protocol, out: Path, name: str = "tiny-study") -> Path:
    """Generate protocol ``name`` (the same file for the same name) into ``out``."""
    doc = make_protocol(model, quotas=QUOTAS, output={"dir": "unused", "formats": ["dicom", "nifti", "png"]})
    doc["name"] = name
    generate(write_protocol(doc, f"{name}.yaml"), out=out)
    return out


def _first(out: Path, case: str) -> pydicom.Dataset:
    return pydicom.dcmread(out / "dicom" / case / "00001.dcm")


def _ids(ds: pydicom.Dataset) -> tuple[str, ...]:
    return ds.PatientID, str(ds.PatientName), ds.StudyID, ds.StudyInstanceUID, ds.SeriesInstanceUID


def test_two_protocols_never_share_ids_and_a_repeated_run_keeps_them(
    chest_model, make_protocol, write_protocol, tmp_path
):
    one = _run(chest_model, make_protocol, write_protocol, tmp_path / "one", name="study-a")
    again = _run(chest_model, make_protocol, write_protocol, tmp_path / "again", name="study-a")
    other = _run(chest_model, make_protocol, write_protocol, tmp_path / "other", name="study-b")
    for case in ("nodule-CT-00000", "normal-MR-00000"):
        a, b, c = _first(one, case), _first(again, case), _first(other, case)
        assert _ids(a) == _ids(b)
        assert all(x != y for x, y in zip(_ids(a), _ids(c))), case  # same case id, another protocol
        assert a.PatientID.startswith(f"SYN-{case}-")
    # Both cases of a run are different patients too.
    assert _first(one, "nodule-CT-00000").PatientID != _first(one, "normal-MR-00000").PatientID


def test_generated_files_name_the_condition_model_body_part_and_run_date(
    chest_model, make_protocol, write_protocol, tmp_path
):
    out = _run(chest_model, make_protocol, write_protocol, tmp_path / "out")
    run = json.loads((out / ".medsynth-run.json").read_text())
    ds = _first(out, "nodule-CT-00000")
    model_id = "tiny-2d"
    assert ds.StudyDescription == ds.SeriesDescription == f"medsynth synthetic nodule CT, model {model_id}"
    assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds
    assert ds.StudyDate + ds.StudyTime == run["started"][:19].replace("-", "").replace(":", "").replace("T", "")
    mr = _first(out, "normal-MR-00000")
    assert "RescaleSlope" not in mr and mr.StudyDate == ds.StudyDate
    descrip = nib.load(out / "nifti" / "nodule-CT-00000.nii.gz").header["descrip"].item().decode()
    assert descrip == f"synthetic medsynth case=nodule-CT-00000 model={model_id}"
    with Image.open(out / "png" / "normal-MR-00000.png") as img:
        assert (img.text["Synthetic"], img.text["Model"], img.text["Case"]) == ("YES", model_id, "normal-MR-00000")


def test_a_resumed_run_keeps_the_study_date_it_started_with(
    model_dirs, make_protocol, write_protocol, tmp_path, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the first session's clock
    out = _run(model_dirs["2d"], make_protocol, write_protocol, tmp_path / "out")
    first = {case: _first(out, case) for case in ("nodule-CT-00000", "normal-MR-00000")}
    manifest = out / "manifest.jsonl"
    manifest.write_text(manifest.read_text().splitlines(keepends=True)[0])  # as if cut after the first case
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # the clock of the resuming session
    _run(model_dirs["2d"], make_protocol, write_protocol, tmp_path / "out")
    redone = _first(out, "normal-MR-00000")
    assert (redone.StudyDate, redone.StudyTime) == ("20231114", "221320")
    assert _ids(redone) == _ids(first["normal-MR-00000"])
    assert "BodyPartExamined" not in redone  # a model without body_part: left out, never empty
