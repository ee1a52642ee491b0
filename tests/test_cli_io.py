"""`medsynth inspect` and `medsynth convert`: exit codes, output lines, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsynth.cli import main
from medsynth.io import read_scan, write_scan
from medsynth.io.scan import Scan


@pytest.fixture
def scans(tmp_path):
    """A folder with a 3D CT NIfTI, a 2D PNG and a 3D MR DICOM series."""
    root = tmp_path / "scans"
    ct = Scan(np.zeros((1, 4, 5, 3), np.float32), np.diag([0.5, 0.75, 2.0, 1.0]), "CT")
    write_scan(ct, root / "ct.nii.gz", "nifti")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "xray.png")
    mr = Scan(np.ones((1, 3, 4, 4), np.float32), np.diag([3.0, 1.0, 1.0, 1.0]), "MR")
    write_scan(mr, root / "mr", "dicom", case_id="mr-1")
    return root


def test_inspect_prints_one_line_per_scan(scans, capsys):
    assert main(["inspect", str(scans)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and len(lines) == 3
    assert lines[0] == f"{scans / 'ct.nii.gz'}  OT  3D  shape=4x5x3  spacing=0.5x0.75x2mm  orientation=RAS"
    assert lines[1].startswith(str(scans / "mr")) and "  MR  3D  shape=3x4x4  spacing=3x1x1mm" in lines[1]
    assert lines[2] == f"{scans / 'xray.png'}  OT  2D  shape=6x8  spacing=1x1mm  orientation=PL"


def test_inspect_json_lines(scans, capsys):
    assert main(["inspect", "--json", str(scans / "ct.nii.gz"), str(scans / "xray.png")]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert objs == [
        {
            "path": str(scans / "ct.nii.gz"),
            "modality": "OT",
            "spatial_dims": 3,
            "channels": 1,
            "shape": [4, 5, 3],
            "spacing": [0.5, 0.75, 2.0],
            "orientation": "RAS",
            "source_format": "nifti",
        },
        {
            "path": str(scans / "xray.png"),
            "modality": "OT",
            "spatial_dims": 2,
            "channels": 1,
            "shape": [6, 8],
            "spacing": [1.0, 1.0],
            "orientation": "PL",
            "source_format": "png",
        },
    ]


def test_inspect_goes_on_after_failures_and_exits_2(scans, tmp_path, capsys):
    (scans / "fake.nii.gz").write_text("just text")
    (scans / "empty.dcm").write_bytes(b"")
    (scans / "junk").write_bytes(b"\x00junk" * 20)
    missing = tmp_path / "missing.nii"
    assert main(["inspect", str(scans), str(missing)]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3  # the three good scans are still listed
    errors = err.splitlines()
    assert len(errors) == 4 and all(e.startswith("medsynth: error: ") for e in errors)
    assert "Traceback" not in err
    assert any(e.startswith(f"medsynth: error: {scans / 'fake.nii.gz'}: not a readable NIfTI") for e in errors)
    assert any(e.startswith(f"medsynth: error: {scans / 'junk'}: not a recognised scan") for e in errors)
    assert any(e.startswith(f"medsynth: error: {missing}: no such file") for e in errors)
    assert any(str(scans / "empty.dcm") in e for e in errors)


def test_convert_nifti_to_dicom_and_2d_png_to_nifti(scans, tmp_path, capsys):
    assert main(["convert", str(scans / "ct.nii.gz"), str(tmp_path / "ct_dicom"), "--format", "dicom"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'ct_dicom'} (dicom, OT 3D")
    back = read_scan(tmp_path / "ct_dicom")
    assert back.shape == (4, 5, 3) and sorted(back.spacing) == [0.5, 0.75, 2.0]
    assert main(["convert", str(scans / "xray.png"), str(tmp_path / "xray"), "--format", "nifti"]) == 0
    assert read_scan(tmp_path / "xray.nii.gz").shape == (6, 8)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{scans}/ct.nii.gz", "{out}/ct.png", "--format", "png"], "PNG holds 2D images only"),
        (["{scans}/ct.nii.gz", "{out}/x", "--format", "jpeg"], "unknown output format 'jpeg'"),
        (["{scans}/nothing.nii.gz", "{out}/x", "--format", "nifti"], "no such file or folder"),
        (["{scans}/fake.nii.gz", "{out}/x", "--format", "nifti"], "not a readable NIfTI"),
        (["{scans}/xray.png", "{out}/x.png", "--format", "nifti"], r"needs a name ending in .nii.gz"),
    ],
)
def test_convert_failures_write_nothing(scans, tmp_path, capsys, args, message):
    (scans / "fake.nii.gz").write_text("just text")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["convert", *(a.format(scans=scans, out=out) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("medsynth: error: ") and message in err
    assert _leftovers(out) == []


def test_convert_does_not_overwrite_unless_asked(scans, tmp_path, capsys):
    dst = tmp_path / "ct.nii.gz"
    dst.write_text("precious")
    assert main(["convert", str(scans / "ct.nii.gz"), str(dst), "--format", "nifti"]) == 2
    assert "already exists" in capsys.readouterr().err and dst.read_text() == "precious"
    assert main(["convert", str(scans / "ct.nii.gz"), str(dst), "--format", "nifti", "--overwrite"]) == 0
    assert read_scan(dst).shape == (4, 5, 3)
