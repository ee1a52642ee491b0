"""`medsynth generate`: exact quotas, manifest, hashes, datalist, refusals, extend and balance modes."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from medsynth.cli import main
from medsynth.io import read_scan, write_scan
from medsynth.io.scan import Scan
from medsynth.protocol import generate
from medsynth.seeding import derive_seed


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generates_exactly_the_quotas_with_a_complete_manifest(
    model_dirs, make_protocol, write_protocol, tmp_path, capsys
):
    doc = make_protocol(model_dirs["2d"], output={"dir": "out", "formats": ["dicom", "nifti", "png"]})
    path = write_protocol(doc)
    assert main(["generate", str(path)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert f"wrote 5 of 5 requested cases to {out}" in printed

    lines = _manifest(out)
    assert Counter((r["pathology"], r["modality"]) for r in lines) == {("normal", "CT"): 3, ("nodule", "MR"): 2}
    assert [r["case_id"] for r in lines] == [
        "normal-CT-00000",
        "normal-CT-00001",
        "normal-CT-00002",
        "nodule-MR-00000",
        "nodule-MR-00001",
    ]
    protocol_sha = _sha(path)
    listed = set()
    for r in lines:
        k = int(r["case_id"][-5:])
        assert r["seed"] == derive_seed(doc["seed"], r["pathology"], r["modality"], k, 0)
        assert r["protocol_sha256"] == protocol_sha
        assert r["model"]["id"] == "tiny-2d" and len(r["model"]["sha256"]) == 64
        assert r["privacy"] == {"gate": False}
        assert r["sampler"]["method"] == "ddim" and r["sampler"]["steps"] == 2
        assert r["sampler"]["guidance_scale"] == (4.0 if r["pathology"] == "nodule" else 3.0)
        assert set(r["files"]) == {"dicom", "nifti", "png"}
        for fmt in ("nifti", "png"):
            assert _sha(out / r["files"][fmt]) == r["sha256"][fmt]
            listed.add(out / r["files"][fmt])
        series = out / r["files"]["dicom"]
        assert r["sha256"]["dicom"] == {p.name: _sha(p) for p in sorted(series.iterdir())}
        listed.update(series.iterdir())
        assert "created" in r
    on_disk = {p for d in ("dicom", "nifti", "png") for p in (out / d).rglob("*") if p.is_file()}
    assert on_disk == listed, "every written file is listed, and only those"

    # The files are what they claim: the model grid in RAS, CT in HU, DICOM readable as the same scan.
    nifti = read_scan(out / lines[0]["files"]["nifti"])
    dicom = read_scan(out / lines[0]["files"]["dicom"])
    assert nifti.shape == (16, 16) and nifti.spacing == (2.5, 2.5)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-4)
    np.testing.assert_allclose(dicom.array, nifti.array, atol=1.0)  # DICOM stores integer HU
    assert nifti.array.min() >= -1000.0 and nifti.array.max() <= 1000.0

    # MONAI reads the datalist.
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(out / "dataset.json"), data_list_key="training", base_dir=str(out))
    assert [Path(i["image"]) for i in items] == [out / r["files"]["nifti"] for r in lines]
    assert [i["pathology"] for i in items] == [r["pathology"] for r in lines]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == summary["requested"] == 5
    assert [q["written"] for q in summary["quotas"]] == [3, 2]
    assert summary["privacy"]["gate"] is False


def test_a_case_regenerates_alone_from_its_manifest_seed(model_dirs, make_protocol, write_protocol, tmp_path):
    from medsynth.models.artifact import load_model
    from medsynth.sampling import Synthesizer

    generate(write_protocol(make_protocol(model_dirs["2d"])))
    line = _manifest(tmp_path / "out")[4]
    synth = Synthesizer(load_model(model_dirs["2d"]))
    s = line["sampler"]
    again = synth.generate(
        [line["pathology"]],
        [line["modality"]],
        [line["seed"]],
        num_inference_steps=s["steps"],
        guidance_scale=s["guidance_scale"],
        sampler=s["method"],
    )[0]
    written = read_scan(tmp_path / "out" / line["files"]["nifti"])
    np.testing.assert_allclose(written.array, again.array, atol=1e-3)


def test_another_protocol_is_refused_unless_force(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    first = make_protocol(model_dirs["2d"])
    generate(write_protocol(first))
    out = tmp_path / "out"
    before = sorted(p.name for p in (out / "nifti").iterdir())

    changed = make_protocol(model_dirs["2d"], quotas=[{"pathology": "mass", "modality": "CT", "count": 1}])
    path = write_protocol(changed)
    assert main(["generate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another protocol" in err[0] and "--force" in err[0]
    assert sorted(p.name for p in (out / "nifti").iterdir()) == before, "a refused run touches nothing"

    assert main(["generate", str(path), "--force"]) == 0
    assert sorted(p.name for p in (out / "nifti").iterdir()) == ["mass-CT-00000.nii.gz"]
    assert [r["case_id"] for r in _manifest(out)] == ["mass-CT-00000"]


def test_a_foreign_folder_is_refused(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.docx").write_text("precious")
    path = write_protocol(make_protocol(model_dirs["2d"]))
    for extra in ([], ["--force"]):
        assert main(["generate", str(path), *extra]) == 2
        assert "holds no medsynth run" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thesis.docx"]


def test_rerunning_a_finished_run_changes_no_file(model_dirs, make_protocol, write_protocol, tmp_path):
    path = write_protocol(make_protocol(model_dirs["2d"]))
    generate(path)
    out = tmp_path / "out"
    stamp = {p: (p.stat().st_mtime_ns, _sha(p)) for p in out.rglob("*") if p.is_file() and p.parent != out}
    manifest = (out / "manifest.jsonl").read_text()
    generate(path)
    assert {p: (p.stat().st_mtime_ns, _sha(p)) for p in out.rglob("*") if p.is_file() and p.parent != out} == stamp
    assert (out / "manifest.jsonl").read_text() == manifest


def test_leftovers_of_a_crash_are_swept_and_the_run_completes(model_dirs, make_protocol, write_protocol, tmp_path):
    """Simulated crash debris: a torn manifest line, temporaries, files of an unlisted case."""
    path = write_protocol(make_protocol(model_dirs["2d"]))
    generate(path, out=tmp_path / "ref")
    out = tmp_path / "out"
    generate(path)
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    # Keep two lines; cut the third in half (a kill mid-append); leave the files of cases 3-5 behind.
    (out / "manifest.jsonl").write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    (out / "nifti" / ".tmp-0123456789ab-normal-CT-00009.nii.gz").write_bytes(b"half")
    (out / "dicom" / ".tmp-0123456789ab-x").mkdir(parents=True)
    (out / ".tmp-0123456789ab-summary.json").write_text("{")
    generate(path)
    assert not list(out.rglob(".tmp-*"))
    assert [_strip(r) for r in _manifest(out)] == [_strip(r) for r in _manifest(tmp_path / "ref")]
    for sub in ("nifti", "png"):
        assert {p.name: _sha(p) for p in (out / sub).iterdir()} == {
            p.name: _sha(p) for p in (tmp_path / "ref" / sub).iterdir()
        }


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "created"}


def test_3d_run_writes_dicom_series_and_nifti(model_dirs, make_protocol, write_protocol, tmp_path):
    doc = make_protocol(
        model_dirs["3d"],
        output={"dir": "out", "formats": ["dicom", "nifti"]},
        quotas=[{"pathology": "mass", "modality": "CT", "count": 2}],
    )
    result = generate(write_protocol(doc))
    assert result.summary["written"] == 2
    line = _manifest(tmp_path / "out")[1]
    series = tmp_path / "out" / line["files"]["dicom"]
    assert sorted(line["sha256"]["dicom"]) == [f"{i:05d}.dcm" for i in range(1, 9)]
    nifti, dicom = read_scan(tmp_path / "out" / line["files"]["nifti"]), read_scan(series)
    assert nifti.shape == dicom.shape == (8, 8, 8)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-4)
    import pydicom

    ds = pydicom.dcmread(series / "00001.dcm")
    assert ds.PatientID.startswith(f"SYN-{line['case_id']}-") and ds.SyntheticData == "YES"
    # Another study (here: the same settings, another seed) never reuses the UIDs of this one.
    doc["seed"] += 1
    generate(write_protocol(doc, "other.yaml"), out=tmp_path / "other")
    other = pydicom.dcmread(tmp_path / "other" / line["files"]["dicom"] / "00001.dcm")
    assert other.PatientID != ds.PatientID  # issue 15: another study is another synthetic patient
    assert other.StudyInstanceUID != ds.StudyInstanceUID and other.SOPInstanceUID != ds.SOPInstanceUID


def test_json_progress_lines(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    path = write_protocol(make_protocol(model_dirs["2d"]))
    assert main(["generate", str(path), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "start" and [q["total"] for q in events[0]["quotas"]] == [3, 2]
    cases = [e for e in events if e["event"] == "case"]
    assert [e["case_id"] for e in cases] == [r["case_id"] for r in _manifest(tmp_path / "out")]
    assert cases[-1]["eta_s"] == 0.0 and cases[0]["done"] == 1
    assert events[-1]["event"] == "summary" and events[-1]["written"] == 5


def _real_scans(tmp_path: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.normal(0, 300, (1, 20, 24)).astype(np.float32)
        scan = Scan(arr, np.diag([2.0, 2.0, 3.0, 1.0]), "CT")
        paths.append(write_scan(scan, tmp_path / "real" / f"scan{i}.nii.gz", "nifti"))
    return paths


def test_extend_mode_varies_source_scans(model_dirs, make_protocol, write_protocol, tmp_path):
    _real_scans(tmp_path, 2)
    extend = {"sources": ["real/scan0.nii.gz", "real/scan1.nii.gz"], "strength": 0.5}
    doc = make_protocol(
        model_dirs["2d"], quotas=[{"pathology": "nodule", "modality": "CT", "count": 3, "extend": extend}]
    )
    result = generate(write_protocol(doc))
    lines = _manifest(tmp_path / "out")
    assert [r["extend"] for r in lines] == [
        {"source_index": 0, "strength": 0.5},
        {"source_index": 1, "strength": 0.5},
        {"source_index": 0, "strength": 0.5},
    ]
    assert "real/" not in json.dumps(lines), "source paths never reach the manifest"
    assert result.summary["quotas"][0]["extend_strength"] == 0.5
    # Outputs are on the model grid, and the same source at different seeds gives different cases.
    a, c = (read_scan(tmp_path / "out" / lines[i]["files"]["nifti"]) for i in (0, 2))
    assert a.shape == (16, 16) and not np.allclose(a.array, c.array)


def test_balance_mode_fills_each_class_to_the_target(model_dirs, make_protocol, write_protocol, tmp_path):
    paths = _real_scans(tmp_path, 4)
    rows = ["path,pathology,modality"] + [
        f"{p.relative_to(tmp_path)},{lab},CT" for p, lab in zip(paths, ["normal", "normal", "normal", "nodule"])
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    doc = make_protocol(model_dirs["2d"], quotas=None, balance={"dataset": "labels.csv", "target": "majority"})
    generate(write_protocol(doc))
    assert Counter(r["pathology"] for r in _manifest(tmp_path / "out")) == {"nodule": 2}
    doc["balance"]["target"] = 4
    generate(write_protocol(doc), force=True)
    assert Counter(r["pathology"] for r in _manifest(tmp_path / "out")) == {"nodule": 3, "normal": 1}


def test_bad_device_is_a_clean_error(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    path = write_protocol(make_protocol(model_dirs["2d"]))
    assert main(["generate", str(path), "--device", "tpu"]) == 2
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", [yaml.safe_dump({"protocol": 1})])
def test_generate_validates_first(text, write_protocol, tmp_path, capsys):
    assert main(["generate", str(write_protocol(text))]) == 2
    assert "name: a required key is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unusable_output_folders_are_clean_errors(model_dirs, make_protocol, write_protocol, tmp_path, capsys):
    path = write_protocol(make_protocol(model_dirs["2d"]))
    (tmp_path / "afile").write_text("x")
    for out, words in [
        (tmp_path / "afile", "is a file"),
        (Path("/proc/medsynth-cannot-exist"), "run the same command"),
    ]:
        assert main(["generate", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"medsynth: error: {out}") and words in err[0], err
