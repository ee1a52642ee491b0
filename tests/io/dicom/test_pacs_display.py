"""Issue 15 part 1: DICOM that a PACS keeps apart and a viewer displays right.

Identity that never collides across datasets and stays put on a rewrite, MR in its own units
with a window that works without rescaling, the study attributes a PACS queries and a DICOMDIR
needs, no empty optional attributes, CT window presets; checked with pydicom, dicom3tools
(dciodvfy) and dcmtk (dcm2pnm renders with the first window, dcmmkdir builds a DICOMDIR).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.errors import InputError
from medsynth.io.dicom import read_dicom, write_dicom
from medsynth.io.scan import Scan

GENERATED = {"model": "builtin:phantom-2d", "pathology": "effusion|nodule", "body_part": "CHEST"}
WHEN = datetime(2026, 11, 21, 22, 14, 6, tzinfo=UTC)

# Type 2 attributes (present, empty when unknown) of the modules written: the only empty values
# allowed. Everything else (type 1 and type 3) must carry a value.
TYPE_2 = {
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientBirthDate",
    "PatientSex",
    "PatientPosition",  # 2C: CT and MR with a patient frame
    "PositionReferenceIndicator",
    "KVP",
    "AcquisitionNumber",
    "ScanOptions",
    "RepetitionTime",
    "EchoTime",
    "EchoTrainLength",
}


# (slice, row, column) along LPS z, y, x as DICOM stores an axial series: reads back unchanged.
_AXIAL = np.array([[0.0, 0.0, -0.9, 0.0], [0.0, -0.9, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _mr(shape=(6, 24, 24), seed: int = 0) -> Scan:
    """An MR-like volume: a bright body on a dark background, arbitrary units ~0..1100, fractional."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (yy**2 + xx**2 < 0.6).astype(np.float32)
    values = body * (700 + 150 * np.sin(5 * xx)) + rng.normal(0, 20, shape) + 30
    return Scan(np.clip(values, 0, None).astype(np.float32)[None], _AXIAL, "MR")


def _ct(shape=(4, 16, 16), seed: int = 0) -> Scan:
    rng = np.random.default_rng(seed)
    return Scan(rng.integers(-1000, 400, size=(1, *shape)).astype(np.float32), _AXIAL, "CT")


def _slice(scan: Scan) -> Scan:
    return Scan(scan.array[:, 0], np.diag([0.7, 0.7, 3.0, 1.0]), scan.modality)


def _ids(path: Path) -> tuple[str, str, str, str]:
    ds = pydicom.dcmread(path)
    return ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID, ds.SeriesInstanceUID


# ------------------------------------------------------------------ identity


def test_equal_case_ids_in_two_namespaces_are_different_patients(tmp_path):
    scan = _ct()
    one = _ids(write_dicom(scan, tmp_path / "a", case_id="nodule-CT-00000", uid_namespace="p1", seed=7)[0])
    again = _ids(write_dicom(scan, tmp_path / "b", case_id="nodule-CT-00000", uid_namespace="p1", seed=7)[0])
    other = _ids(write_dicom(scan, tmp_path / "c", case_id="nodule-CT-00000", uid_namespace="p2", seed=7)[0])
    reseeded = _ids(write_dicom(scan, tmp_path / "d", case_id="nodule-CT-00000", uid_namespace="p1", seed=8)[0])
    assert one == again
    for different in (other, reseeded):
        assert all(x != y for x, y in zip(one, different))
    assert re.fullmatch(r"SYN-nodule-CT-00000-[0-9a-f]{12}", one[0])


def test_converted_files_of_different_sources_never_share_a_patient(tmp_path):
    """`convert` names a case after its folder: two different scans written as "ct" stay apart."""
    a, b = _ct(seed=1), _ct(seed=2)
    first = _ids(write_dicom(a, tmp_path / "x" / "ct", case_id="ct", synthetic=False)[0])
    second = _ids(write_dicom(b, tmp_path / "y" / "ct", case_id="ct", synthetic=False)[0])
    repeat = _ids(write_dicom(a, tmp_path / "z" / "ct", case_id="ct", synthetic=False)[0])
    assert first == repeat and all(x != y for x, y in zip(first, second))
    assert re.fullmatch(r"ANON-ct-[0-9a-f]{12}", first[0]) and first[1].startswith("ANONYMOUS^ct-")


def test_longest_case_id_fits_the_value_lengths(tmp_path):
    case = "n" * 56
    ds = pydicom.dcmread(write_dicom(_ct(), tmp_path / "s", case_id=case, uid_namespace="p", **GENERATED)[0])
    assert len(ds.PatientID) <= 64 and len(str(ds.PatientName)) <= 64 and len(ds.StudyID) <= 16
    assert len(ds.StudyDescription) <= 64 and len(ds.SeriesDescription) <= 64


# ------------------------------------------------------------------ MR units and window


def test_mr_has_no_rescale_and_its_window_works_on_stored_values(tmp_path):
    scan = _mr()
    files = write_dicom(scan, tmp_path / "s", case_id="mr-1", **GENERATED)
    centers, stored = set(), []
    for path in files:
        ds = pydicom.dcmread(path)
        assert not {"RescaleSlope", "RescaleIntercept", "RescaleType"} & set(ds.dir())
        centers.add((float(ds.WindowCenter), float(ds.WindowWidth)))
        stored.append(ds.pixel_array.astype(np.float64))
    assert len(centers) == 1  # one window for the series
    (center, width), values = centers.pop(), np.stack(stored)
    np.testing.assert_array_equal(values, np.round(scan.array[0]))  # documented units: value = stored
    outside = np.mean((values < center - width / 2) | (values > center + width / 2))
    assert outside < 0.02, f"{outside:.1%} of MR pixels saturate in the file's own window"
    assert np.abs(read_dicom(tmp_path / "s").array - scan.array).max() <= 0.5


def test_mr_mapping_is_the_same_across_cases(tmp_path):
    """Equal values are stored equally in every case (no per-file slope)."""
    a, b = _mr(seed=1), _mr(seed=2)
    b = b.with_array(b.array * 0.5)  # another range
    da = pydicom.dcmread(write_dicom(a, tmp_path / "a", case_id="a")[2])
    db = pydicom.dcmread(write_dicom(b, tmp_path / "b", case_id="b")[2])
    np.testing.assert_array_equal(da.pixel_array, np.round(a.array[0, 2]))
    np.testing.assert_array_equal(db.pixel_array, np.round(b.array[0, 2]))


def test_mr_values_beyond_16_bits_are_refused(tmp_path):
    scan = _mr().with_array(_mr().array * 100)
    with pytest.raises(InputError, match=r"MR scan for case big has values .*16 bits.*sop_class='sc' or NIfTI"):
        write_dicom(scan, tmp_path / "s", case_id="big")
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(shutil.which("dcm2pnm") is None, reason="dcmtk (dcm2pnm) not installed")
def test_dcmtk_renders_mr_with_its_window_without_warnings(tmp_path):
    """dcmtk shows what a viewer shows: the first window, on the stored values; no 'W:' line."""
    from PIL import Image

    files = write_dicom(_mr(), tmp_path / "s", case_id="mr-1", **GENERATED)
    out = tmp_path / "mr.pgm"
    proc = subprocess.run(
        ["dcm2pnm", "-v", "+Wi", "1", str(files[3]), str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not re.search(r"^[WEF]:", proc.stdout + proc.stderr, re.M), proc.stderr
    pixels = np.asarray(Image.open(out))
    assert np.mean(pixels == pixels.max()) < 0.02 and np.mean(pixels == 255) < 0.02


# ------------------------------------------------------------------ study attributes


@pytest.mark.parametrize(
    "make", [_ct, _mr, lambda: _slice(_ct()), lambda: _slice(_mr())], ids=["ct3d", "mr3d", "ct2d", "mr2d"]
)
def test_study_attributes_present_and_no_empty_optional_attribute(tmp_path, make):
    scan = make()
    files = write_dicom(
        scan, tmp_path / "s", case_id="nodule-X-00001", uid_namespace="p", seed=3, created=WHEN, **GENERATED
    )
    ds = pydicom.dcmread(files[0])
    assert (ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC) == ("20261121", "221406", "+0000")
    assert ds.SeriesDate == ds.ContentDate == "20261121"
    assert re.fullmatch(r"SYN-[0-9a-f]{12}", ds.StudyID)
    modality = scan.modality
    expected = f"medsynth synthetic effusion+nodule {modality}, model builtin:phantom-2d"
    assert ds.StudyDescription == ds.SeriesDescription == expected
    assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds
    empty = []
    for element in ds.iterall():
        if element.VR != "SQ" and element.keyword not in TYPE_2 and element.value in (None, "", b"", []):
            empty.append(element.keyword)
    assert empty == []


def test_ct_window_presets_with_explanations(tmp_path):
    ds = pydicom.dcmread(write_dicom(_ct(), tmp_path / "s", case_id="ct-1")[0])
    presets = list(zip(ds.WindowCenterWidthExplanation, ds.WindowCenter, ds.WindowWidth))
    assert [(name, float(c), float(w)) for name, c, w in presets] == [("MEDIASTINUM", 40, 350), ("LUNG", -600, 1500)]


def test_generation_time_is_now_or_source_date_epoch(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    before = datetime.now(UTC).replace(microsecond=0)
    ds = pydicom.dcmread(write_dicom(_ct(), tmp_path / "a", case_id="c")[0])
    stamp = datetime.strptime(ds.StudyDate + ds.StudyTime, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ds = pydicom.dcmread(write_dicom(_ct(), tmp_path / "b", case_id="c")[0])
    assert (ds.StudyDate, ds.StudyTime) == ("20231114", "221320")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InputError, match=r"SOURCE_DATE_EPOCH 'yesterday': expected a whole number"):
        write_dicom(_ct(), tmp_path / "c", case_id="c")


def test_bad_body_part_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"body_part 'chest\?'.*CHEST"):
        write_dicom(_ct(), tmp_path / "s", case_id="c", body_part="chest?")


# ------------------------------------------------------------------ validators


def _dciodvfy(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(("Error", "Warning"))]


@pytest.mark.parametrize(
    "make", [_ct, _mr, lambda: _slice(_ct()), lambda: _slice(_mr())], ids=["ct3d", "mr3d", "ct2d", "mr2d"]
)
def test_dciodvfy_has_nothing_to_say_but_the_dictionary_gap(tmp_path, make, dciodvfy_errors):
    """No Error and no Warning at all, except about SyntheticData (0008,001C), unknown to the 2022 dictionary."""
    files = write_dicom(make(), tmp_path / "s", case_id="v-1", uid_namespace="p", seed=1, **GENERATED)
    for path in (files[0], files[-1]):
        assert dciodvfy_errors(path) == []
        assert [ln for ln in _dciodvfy(path) if "(0008,001c)" not in ln.lower()] == []


@pytest.mark.skipif(shutil.which("dcmmkdir") is None, reason="dcmtk (dcmmkdir) not installed")
@pytest.mark.parametrize("synthetic", [True, False], ids=["generated", "converted"])
def test_dcmtk_builds_a_dicomdir(tmp_path, synthetic):
    """A DICOMDIR's study record needs Study Date, Time and ID: dcmmkdir refused files without them."""
    files = write_dicom(_ct(), tmp_path / "series", case_id="c-1", synthetic=synthetic)
    media = tmp_path / "media"
    (media / "S1").mkdir(parents=True)
    for k, path in enumerate(files, 1):  # media file names: ISO 9660, at most 8 characters
        shutil.copy(path, media / "S1" / f"IM{k}")
    proc = subprocess.run(["dcmmkdir", "+r", "S1"], cwd=media, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pydicom.dcmread(media / "DICOMDIR").DirectoryRecordSequence[1].StudyDate
