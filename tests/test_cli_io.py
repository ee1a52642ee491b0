"""`medsynth inspect` and `medsynth convert`: exit codes, output lines, one-line errors."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medsynth.cli import main
from medsynth.io import read_scan, write_scan
from medsynth.io.dicom import write_dicom
from medsynth.io.nifti import GUESSED_NIFTI
from medsynth.io.scan import Scan

PNG_GUESS = "PNG stores no patient geometry: 1 mm pixels, axial display orientation, origin 0"


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
    assert lines[2] == (
        f"{scans / 'xray.png'}  OT  2D  shape=6x8  spacing=1x1mm  orientation=PL  geometry=guessed ({PNG_GUESS})"
    )


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
            "geometry_guessed": None,
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
            "geometry_guessed": PNG_GUESS,
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


# ---------------------------------------------------------------- convert --modality


def test_convert_modality_names_what_the_file_does_not_say(scans, tmp_path, capsys):
    assert (
        main(["convert", str(scans / "ct.nii.gz"), str(tmp_path / "ct"), "--format", "dicom", "--modality", "ct"]) == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'ct'} (dicom, CT 3D")
    first = sorted((tmp_path / "ct").iterdir())[0]
    assert pydicom.dcmread(first).SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    # A DICOM's own Modality may be repeated, not contradicted.
    assert (
        main(["convert", str(scans / "mr"), str(tmp_path / "mr.nii.gz"), "--format", "nifti", "--modality", "MR"]) == 0
    )


@pytest.mark.parametrize(
    ("source", "modality", "message"),
    [
        ("mr", "CT", r"mr: --modality CT contradicts the file's own Modality MR; drop --modality"),
        ("ct.nii.gz", "CAT", r"--modality 'CAT' is not a DICOM modality code \(did you mean CT\?\)"),
        ("ct.nii.gz", "", r"--modality '' is not a DICOM modality code"),
    ],
)
def test_convert_refuses_a_wrong_modality(scans, tmp_path, capsys, source, modality, message):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["convert", str(scans / source), str(out / "x.nii.gz"), "--format", "nifti", "--modality", modality]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("medsynth: error: ")
    assert re.search(message, err), err
    assert _leftovers(out) == []


# ---------------------------------------------------------------- guessed geometry


def test_inspect_says_when_geometry_was_guessed(scans, tmp_path, capsys):
    header = nib.Nifti1Header()  # no sform/qform: the Analyze fallback
    header.set_data_shape((4, 5, 6))
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None, header=header), tmp_path / "none.nii")
    files = write_dicom(Scan(np.zeros((1, 6, 7), np.float32), np.eye(4), "DX"), tmp_path / "dx", case_id="dx")
    ds = pydicom.dcmread(files[0])
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PatientOrientation  # a bare radiograph
    ds.save_as(files[0])
    assert main(["inspect", str(tmp_path / "none.nii"), str(tmp_path / "dx"), str(scans / "ct.nii.gz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"  geometry=guessed ({GUESSED_NIFTI})")
    assert "  DX  2D  shape=6x7  spacing=1x1mm  orientation=IL  geometry=guessed (no ImagePositionPatient/" in lines[1]
    assert "geometry=" not in lines[2]
    assert main(["inspect", "--json", str(tmp_path / "dx")]) == 0
    guess = json.loads(capsys.readouterr().out)["geometry_guessed"]
    assert guess.startswith("no ImagePositionPatient/ImageOrientationPatient") and "origin 0" in guess


def test_convert_to_dicom_refuses_guessed_geometry_unless_allowed(scans, tmp_path, capsys, dciodvfy_errors):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["convert", str(scans / "xray.png"), str(out / "xray"), "--format", "dicom", "--modality", "DX"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(
        f"medsynth: error: {scans / 'xray.png'}: its geometry was guessed"
    )
    assert f"({PNG_GUESS})" in err and "--allow-guessed-geometry" in err
    assert _leftovers(out) == []
    # Other formats do not state patient geometry the way DICOM does: no check there.
    assert main(["convert", str(scans / "xray.png"), str(out / "xray.nii.gz"), "--format", "nifti"]) == 0
    capsys.readouterr()

    assert main([*argv, "--allow-guessed-geometry"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out / 'xray'} (dicom, DX 2D")
    [written] = sorted((out / "xray").iterdir())
    ds = pydicom.dcmread(written)
    assert ds.Modality == "DX" and ds.ImageComments == f"geometry assumed by medsynth, not measured: {PNG_GUESS}"
    assert dciodvfy_errors(written) == []
    # Read back, it is still a guess: converting it again needs the flag again.
    assert read_scan(out / "xray").geometry_guessed == PNG_GUESS
    assert main(["convert", str(out / "xray"), str(out / "again"), "--format", "dicom"]) == 2
    assert "its geometry was guessed" in capsys.readouterr().err


def test_inspect_of_a_big_cine_reads_no_pixel_data(tmp_path, capsys, monkeypatch):
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "US", pydicom.uid.generate_uid(), 1
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = 256, 256, 120, 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(120 * 256 * 256 * 3)  # 23.6 MB
    ds.save_as(tmp_path / "cine.dcm", enforce_file_format=True)

    def refuse(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(refuse))
    assert main(["inspect", str(tmp_path / "cine.dcm")]) == 0
    line = capsys.readouterr().out
    assert "  US  3D  shape=120x256x256  spacing=1x1x1mm  orientation=PIL  channels=3  geometry=guessed (" in line
