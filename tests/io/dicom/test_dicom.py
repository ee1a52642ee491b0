"""DICOM reading and writing: geometry, sorting, validation, codecs, synthetic marking.

External acceptance checks (skipped with a reason when the tool is absent):
dciodvfy (dicom3tools) validates written files; dcm2niix converts written series.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsynth import __version__
from medsynth.errors import InputError
from medsynth.io.dicom import MANUFACTURER, is_dicom_file, read_dicom, read_dicom_series, write_dicom
from medsynth.io.scan import Scan, lps_to_ras

# ----------------------------------------------------------------------------- helpers


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)  # local files of the pydicom wheel only, never downloaded
    if path is None:
        pytest.skip(f"pydicom test file {name} is not shipped with this pydicom")
    return Path(path)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _dicom_affine(rot: np.ndarray, slice_mm: float, row_mm: float, col_mm: float, origin) -> np.ndarray:
    """RAS affine of a (slice, row, col) volume laid out as DICOM slices: IOP = rot[:,0], rot[:,1]."""
    lps = np.eye(4)
    lps[:3, 0] = rot[:, 2] * slice_mm  # the normal cross(row, col) of a proper rotation
    lps[:3, 1] = rot[:, 1] * row_mm
    lps[:3, 2] = rot[:, 0] * col_mm
    lps[:3, 3] = origin
    return lps_to_ras(lps)


def _volume(modality: str, oblique: bool, *, integral: bool, seed: int = 0, shape=(5, 6, 7)) -> Scan:
    rng = np.random.default_rng(seed)
    rot = _rotation(0.35, -0.2, 0.5) if oblique else np.eye(3)
    affine = _dicom_affine(rot, 2.5, 0.8, 0.9, [10.0, -20.5, 33.25])
    if integral:
        array = rng.integers(-1000, 1500, size=(1, *shape)).astype(np.float32)
    else:
        array = (rng.random((1, *shape)) * 900.0).astype(np.float32)
    return Scan(array, affine, modality)


def _plane_2d(modality: str, channels: int = 1, seed: int = 1) -> Scan:
    rng = np.random.default_rng(seed)
    rot = _rotation(0.1, 0.4, -0.3)
    lps = np.eye(4)
    lps[:3, 0] = rot[:, 1] * 0.6  # rows step along IOP[3:6]
    lps[:3, 1] = rot[:, 0] * 0.7  # columns step along IOP[0:3]
    lps[:3, 2] = rot[:, 2] * 3.0
    lps[:3, 3] = [1.5, 2.5, -3.5]
    array = rng.integers(0, 256, size=(channels, 8, 9)).astype(np.float32)
    return Scan(array, lps_to_ras(lps), modality)


def _rewrite(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _nifti_of(scan: Scan) -> nib.Nifti1Image:
    """The expected NIfTI of a scan: by the Scan convention, array[0] with the affine."""
    return nib.as_closest_canonical(nib.Nifti1Image(scan.array[0], scan.affine))


@pytest.fixture
def ct_series(tmp_path) -> tuple[Scan, Path]:
    scan = _volume("CT", oblique=False, integral=True)
    write_dicom(scan, tmp_path / "ct", case_id="ct-1")
    return scan, tmp_path / "ct"


# ------------------------------------------------------------------ acceptance: dciodvfy


@pytest.mark.parametrize(
    "make, expected_iod",
    [
        (lambda: _volume("CT", oblique=True, integral=True), "CTImage"),
        (lambda: _volume("MR", oblique=True, integral=False), "MRImage"),
        (lambda: _volume("PT", oblique=False, integral=False), "SCImage"),
        (lambda: _plane_2d("CT"), "CTImage"),
        (lambda: _plane_2d("DX"), "SCImage"),
        (lambda: _plane_2d("OT", channels=3), "SCImage"),
    ],
    ids=["ct3d-oblique", "mr3d-oblique", "pt3d-sc", "ct2d", "dx2d-sc", "rgb2d-sc"],
)
def test_written_files_pass_dciodvfy(tmp_path, make, expected_iod, dciodvfy_errors):
    files = write_dicom(make(), tmp_path / "s", case_id="v-1")
    for path in (files[0], files[-1]):
        proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
        assert expected_iod in proc.stdout + proc.stderr
        assert dciodvfy_errors(path) == []


# ------------------------------------------------------------------ acceptance: dcm2niix


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
@pytest.mark.parametrize(
    "modality, oblique, integral",
    [("CT", False, True), ("CT", True, True), ("MR", True, False)],
    ids=["ct-axial", "ct-oblique", "mr-oblique-float"],
)
def test_dcm2niix_agrees_with_scan_geometry_and_voxels(tmp_path, modality, oblique, integral):
    scan = _volume(modality, oblique, integral=integral, shape=(6, 8, 7))
    files = write_dicom(scan, tmp_path / "series", case_id="n-1")
    proc = subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "n", "-f", "out", "-o", str(tmp_path), str(tmp_path / "series")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = nib.as_closest_canonical(nib.load(tmp_path / "out.nii"))
    expected = _nifti_of(scan)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.affine, expected.affine, atol=1e-3)
    slope = float(pydicom.dcmread(files[0]).get("RescaleSlope", 1))  # MR: none, stored in its own units
    tolerance = 0.5 if integral else slope / 2 + 1e-4  # DICOM integer rounding
    assert np.abs(got.get_fdata() - expected.get_fdata()).max() <= tolerance


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("modality, oblique, integral", [("CT", True, True), ("MR", False, False), ("PT", True, False)])
def test_3d_write_read_round_trip(tmp_path, modality, oblique, integral):
    scan = _volume(modality, oblique, integral=integral)
    files = write_dicom(scan, tmp_path / "s", case_id="rt-3d")
    assert [f.name for f in files] == [f"{i:05d}.dcm" for i in range(1, 6)]
    back = read_dicom(tmp_path / "s")
    # MR has no Rescale Slope (stored in its own units, rounded: slope 1); PT (SC) keeps one.
    slope = float(pydicom.dcmread(files[0]).get("RescaleSlope", 1))
    assert np.abs(back.array - scan.array).max() <= (0 if integral else slope / 2 + 1e-4)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-6)
    assert back.spacing == scan.spacing == (2.5, 0.8, 0.9)
    assert back.orientation == scan.orientation
    assert back.modality == modality and back.metadata["series_kind"] == "volume"


def test_slice_axis_against_the_normal_comes_back_reversed_in_same_place(tmp_path, ct_volume):
    """A scan whose slice axis runs against cross(row, col) is read in normal order: same voxels in space."""
    write_dicom(ct_volume, tmp_path / "s", case_id="flip")
    back = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(back.array, ct_volume.array[:, ::-1])
    np.testing.assert_allclose(back.affine[:3, 0], -ct_volume.affine[:3, 0], atol=1e-6)
    np.testing.assert_allclose(back.affine[:3, 1:3], ct_volume.affine[:3, 1:3], atol=1e-6)
    last = ct_volume.affine @ [ct_volume.shape[0] - 1, 0, 0, 1]
    np.testing.assert_allclose(back.affine[:, 3], last, atol=1e-6)


@pytest.mark.parametrize("modality, channels", [("CT", 1), ("MR", 1), ("CR", 1), ("OT", 3)])
def test_2d_write_read_round_trip(tmp_path, modality, channels):
    scan = _plane_2d(modality, channels)
    if modality == "MR":
        scan = scan.with_array(scan.array * 1.37 + 0.1)  # fractional values: scaled uint16
    files = write_dicom(scan, tmp_path / "s", case_id="rt-2d")
    assert len(files) == 1
    back = read_dicom(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    tolerance = float(ds.get("RescaleSlope", 1)) / 2 + 1e-4 if modality == "MR" else 0
    assert back.array.shape == scan.array.shape
    assert np.abs(back.array - scan.array).max() <= tolerance
    # in-plane columns and the plane's thickness are kept; the third column is the normal
    np.testing.assert_allclose(back.affine[:3, :2], scan.affine[:3, :2], atol=1e-6)
    np.testing.assert_allclose(back.affine[:3, 3], scan.affine[:3, 3], atol=1e-6)
    assert back.spacing == scan.spacing and back.slice_thickness == pytest.approx(3.0)
    assert back.orientation == scan.orientation
    assert back.metadata["series_kind"] == "slice"
    assert (
        ds.SOPClassUID.name
        == {
            "CT": "CT Image Storage",
            "MR": "MR Image Storage",
            "CR": "Secondary Capture Image Storage",
            "OT": "Secondary Capture Image Storage",
        }[modality]
    )


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_real_file_read_write_read_round_trip(tmp_path, name):
    first = read_dicom(_testfile(name))
    write_dicom(first, tmp_path / "s", case_id="real")
    second = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(second.array, first.array)
    np.testing.assert_allclose(second.affine, first.affine, atol=1e-6)
    assert second.modality == first.modality and second.orientation == first.orientation


def test_ct_is_read_in_hounsfield_units():
    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = read_dicom(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(scan.array[0], expected)
    assert float(ds.RescaleIntercept) == -1024 and scan.array.min() < -800  # air is near -1000 HU
    # geometry straight from the header: IPP is the origin, PixelSpacing the in-plane step
    lps = lps_to_ras(scan.affine)
    np.testing.assert_allclose(lps[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    assert scan.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))


# ------------------------------------------------------------------ sorting and validation


def test_shuffled_files_and_instance_numbers_still_sort_by_position(tmp_path, ct_series):
    scan, folder = ct_series
    files = sorted(folder.iterdir())
    rng = np.random.default_rng(7)
    for path, number in zip(files, rng.permutation(len(files)) + 1):
        _rewrite(path, InstanceNumber=int(number))
    shuffled = tmp_path / "tree"
    for k, path in enumerate(rng.permutation(files)):
        target = shuffled / f"sub{k % 2}" / f"img_{rng.integers(1e9)}"  # a tree, no suffix
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    back = read_dicom(shuffled)
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-6)


def test_missing_slice_is_an_error_naming_folder_and_positions(ct_series):
    _, folder = ct_series
    (folder / "00003.dcm").unlink()
    with pytest.raises(InputError, match=r"missing slice") as err:
        read_dicom(folder)
    message = str(err.value)
    assert str(folder) in message and "5.000 mm" in message and "2.500 mm" in message
    assert "[series 1, 4 files]" in message


def test_duplicate_position_is_an_error(ct_series):
    _, folder = ct_series
    ds = pydicom.dcmread(folder / "00002.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(InputError, match=r"share a position.*expected one slice per position"):
        read_dicom(folder)


def test_uneven_spacing_is_an_error_not_averaged(ct_series):
    _, folder = ct_series
    ds = pydicom.dcmread(folder / "00003.dcm")
    z = float(ds.ImagePositionPatient[2])
    _rewrite(
        folder / "00003.dcm", ImagePositionPatient=[ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z + 0.2]
    )
    with pytest.raises(InputError, match=r"uneven slice spacing.*median step is 2.5000 mm"):
        read_dicom(folder)


def test_small_position_rounding_is_tolerated(ct_series):
    scan, folder = ct_series
    ds = pydicom.dcmread(folder / "00003.dcm")
    z = float(ds.ImagePositionPatient[2])
    _rewrite(
        folder / "00003.dcm", ImagePositionPatient=[ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z + 0.001]
    )
    np.testing.assert_array_equal(read_dicom(folder).array, scan.array)


def test_gantry_tilt_is_an_error(ct_series):
    _, folder = ct_series
    for k, path in enumerate(sorted(folder.iterdir())):
        ipp = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        _rewrite(path, ImagePositionPatient=[ipp[0], ipp[1] + 0.5 * k, ipp[2]])
    with pytest.raises(InputError, match=r"sheared.*gantry tilt"):
        read_dicom(folder)


def test_two_series_in_a_folder(tmp_path, ct_series):
    scan, folder = ct_series
    mr = _volume("MR", oblique=True, integral=True, seed=3)
    write_dicom(mr, tmp_path / "mr", case_id="mr-1")
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed / "a")
    shutil.copytree(tmp_path / "mr", mixed / "b")
    with pytest.raises(InputError, match=r"holds 2 series, expected exactly one") as err:
        read_dicom(mixed)
    assert "[series 1, 5 files]" in str(err.value)
    (mixed / "b" / "00002.dcm").unlink()  # break the MR series: the CT still reads
    results = read_dicom_series(mixed)
    assert [label for label, _ in results] == [
        f"{mixed / 'a'} [series 1, 5 files]",
        f"{mixed / 'b'} [series 1, 4 files]",
    ]
    assert isinstance(results[0][1], Scan) and results[0][1].modality == "CT"
    assert isinstance(results[1][1], InputError) and "missing slice" in str(results[1][1])
    for label, _ in results:  # labels never carry UIDs
        assert "2.25." not in label


def test_orientation_splits_series(tmp_path, ct_series):
    """One SeriesInstanceUID holding two orientations (a localizer) yields two labelled groups."""
    _, folder = ct_series
    _rewrite(folder / "00005.dcm", ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    results = read_dicom_series(folder)
    assert len(results) == 2
    labels = sorted(label for label, _ in results)
    assert labels == sorted([f"{folder} [series 1, 4 files]", f"{folder / '00005.dcm'} [series 1, 1 file]"])
    assert all(isinstance(item, Scan) for _, item in results)


# ------------------------------------------------------------------ codecs, syntaxes, kinds


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_lossless_encodings_read_identically(name):
    reference = read_dicom(_testfile("MR_small.dcm"))
    scan = read_dicom(_testfile(name))
    np.testing.assert_array_equal(scan.array, reference.array)
    np.testing.assert_allclose(scan.affine, reference.affine)


@pytest.mark.parametrize(
    "name, shape, max_diff",
    [
        ("SC_rgb_jpeg_gdcm.dcm", (3, 100, 100), 0),  # JPEG lossless
        ("SC_rgb_gdcm_KY.dcm", (3, 100, 100), 0),  # JPEG 2000
        ("SC_rgb_jpeg_dcmtk.dcm", (3, 100, 100), 8),  # JPEG baseline, YBR
        ("SC_rgb_jls_lossy_line.dcm", (3, 100, 100), 3),  # JPEG-LS near-lossless
        ("SC_ybr_full_422_uncompressed.dcm", (3, 100, 100), 8),
    ],
)
def test_colour_images_are_three_rgb_channels(name, shape, max_diff):
    reference = read_dicom(_testfile("SC_rgb_rle.dcm")).array  # RLE: lossless RGB
    scan = read_dicom(_testfile(name))
    assert scan.array.shape == shape and scan.spatial_dims == 2
    assert np.abs(scan.array - reference).max() <= max_diff
    assert scan.metadata["series_kind"] == "projection"


@pytest.mark.parametrize(
    "name, shape",
    [
        ("JPGExtended.dcm", (1, 1024, 256)),
        ("JPEG2000.dcm", (1, 1024, 256)),
        ("SC_rgb_jpeg.dcm", (3, 256, 256)),
        ("JPEGLSNearLossless_16.dcm", (1, 50, 10)),
        ("693_J2KI.dcm", (1, 512, 512)),
        ("image_dfl.dcm", (1, 512, 512)),
    ],
)
def test_compressed_files_read(name, shape):
    scan = read_dicom(_testfile(name))
    assert scan.array.shape == shape and np.isfinite(scan.array).all() and scan.array.std() > 0


def test_projection_image_gets_documented_default_geometry():
    scan = read_dicom(_testfile("JPEG2000.dcm"))  # NM, PixelSpacing 2.26, no IPP/IOP
    assert scan.spacing == (2.26, 2.26) and scan.slice_thickness == pytest.approx(1.0)
    assert scan.orientation == "IL"  # columns toward the feet, rows toward the patient's left
    np.testing.assert_array_equal(scan.affine[:3, 3], 0)
    rgb = read_dicom(_testfile("SC_rgb_rle.dcm"))  # no spacing at all: 1 mm
    assert rgb.spacing == (1.0, 1.0)


def test_patient_orientation_and_imager_spacing_are_used(tmp_path):
    ds = pydicom.dcmread(_testfile("JPEG2000.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.5, 0.25]
    ds.PatientOrientation = ["P", "F"]
    ds.save_as(tmp_path / "lat.dcm")
    scan = read_dicom(tmp_path / "lat.dcm")
    assert scan.spacing == (0.5, 0.25) and scan.orientation == "IP"


def test_palette_colour_is_expanded_to_rgb():
    scan = read_dicom(_testfile("examples_palette.dcm"))
    assert scan.array.shape == (3, 350, 800) and scan.modality == "US"
    assert not np.array_equal(scan.array[0], scan.array[1])


def test_monochrome1_is_inverted_within_its_range(tmp_path):
    scan = _plane_2d("CT")  # int16, slope 1: stored range -32768..32767
    files = write_dicom(scan, tmp_path / "s", case_id="m1")
    _rewrite(files[0], PhotometricInterpretation="MONOCHROME1")
    back = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(back.array, -1.0 - scan.array)


def test_modality_lut_sequence_is_applied(tmp_path):
    scan = _plane_2d("CR")  # integers 0..255 -> uint16, slope 1
    files = write_dicom(scan, tmp_path / "s", case_id="lut")
    ds = pydicom.dcmread(files[0])
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "US", [3 * v + 7 for v in range(256)])
    ds.ModalityLUTSequence = [item]
    ds.save_as(files[0])
    np.testing.assert_array_equal(read_dicom(tmp_path / "s").array, 3 * scan.array + 7)


def test_enhanced_multiframe_matches_single_frame_series(tmp_path):
    hd = pytest.importorskip("highdicom")
    scan = _volume("CT", oblique=True, integral=True, seed=5)
    files = write_dicom(scan, tmp_path / "s", case_id="mf")
    datasets = [pydicom.dcmread(f) for f in files]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets[::-1],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    back = read_dicom(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-6)
    assert back.metadata["series_kind"] == "multi-frame"


def test_simple_multiframe_with_frame_offsets():
    path = _testfile("rtdose.dcm")  # 15 frames, GridFrameOffsetVector 0..70 mm, DoseGridScaling
    ds = pydicom.dcmread(path)
    scan = read_dicom(path)
    assert scan.shape == (15, 10, 10) and scan.spacing == (5.0, 10.0, 10.0)
    np.testing.assert_allclose(scan.array[0], ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    np.testing.assert_allclose(lps_to_ras(scan.affine)[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    assert scan.orientation == "SPL"


def test_multiframe_without_positions_is_a_frame_stack():
    scan = read_dicom(_testfile("SC_rgb_rle_2frame.dcm"))
    assert scan.array.shape == (3, 2, 100, 100) and scan.metadata["series_kind"] == "frame-stack"
    assert scan.spacing == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------ bad input


def test_truncated_pixel_data_is_an_input_error():
    path = _testfile("MR_truncated.dcm")
    with pytest.raises(InputError, match=r"MR_truncated\.dcm.*cannot decode the pixel data"):
        read_dicom(path)


def test_undecodable_compressed_file_is_an_input_error():
    with pytest.raises(InputError, match=r"JPEG2000-embedded-sequence-delimiter\.dcm.*cannot decode"):
        read_dicom(_testfile("JPEG2000-embedded-sequence-delimiter.dcm"))


def test_non_dicom_and_broken_files(tmp_path, ct_series):
    (tmp_path / "notes").mkdir()
    text = tmp_path / "notes" / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: not a DICOM file"):
        read_dicom(text)
    with pytest.raises(InputError, match=r"no such file or folder"):
        read_dicom(tmp_path / "absent")
    with pytest.raises(InputError, match=r"no DICOM images found \(1 files looked at: 1 not DICOM\)"):
        read_dicom(tmp_path / "notes")
    raw = (ct_series[1] / "00001.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[:300])  # 'DICM' preamble, header cut mid-element
    with pytest.raises(InputError, match=r"cut\.dcm: unreadable DICOM header"):
        read_dicom(cut)


def test_folder_skips_non_images_and_reports_broken_headers(tmp_path, ct_series):
    scan, folder = ct_series
    shutil.copy(_testfile("test-SR.dcm"), folder / "report")  # no pixel data: skipped
    shutil.copy(Path(_testfile("dicomdirtests/DICOMDIR")), folder / "DICOMDIR")  # index: skipped
    (folder / "readme.txt").write_text("not dicom")  # ignored
    (folder / ".hidden.dcm").write_bytes(b"junk")  # hidden: ignored
    np.testing.assert_array_equal(read_dicom(folder).array, scan.array)
    (folder / "broken.dcm").write_bytes((folder / "00001.dcm").read_bytes()[:300])
    with pytest.raises(InputError, match=r"broken\.dcm: unreadable DICOM header"):
        read_dicom(folder)
    results = read_dicom_series(folder)
    assert [type(item) for _, item in results] == [InputError, Scan]
    assert results[0][0] == str(folder / "broken.dcm")


def test_folder_without_images_and_lone_dicomdir(tmp_path):
    shutil.copy(_testfile("test-SR.dcm"), tmp_path / "a.dcm")
    with pytest.raises(InputError, match=r"no DICOM images found .*1 without pixel data"):
        read_dicom(tmp_path)
    with pytest.raises(InputError, match=r"is a DICOM file without pixel data \(Comprehensive SR Storage\)"):
        read_dicom(tmp_path / "a.dcm")
    with pytest.raises(InputError, match=r"is a DICOMDIR index"):
        read_dicom(_testfile("dicomdirtests/DICOMDIR"))


def test_malformed_attribute_value_is_an_input_error(tmp_path):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(_testfile("rtdose.dcm"))
    tag = Tag(0x3004000E)  # DoseGridScaling, DS
    ds._dict[tag] = RawDataElement(tag, "DS", 3, b"abc", 0, True, True)
    ds.save_as(tmp_path / "dose.dcm")
    with pytest.raises(InputError, match=r"dose\.dcm \[series 1, 1 file, 15 frames\]: unusable DICOM attribute value"):
        read_dicom(tmp_path / "dose.dcm")


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "rtdose.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_corrupted_files_give_input_errors_only(tmp_path, name):
    """Random byte damage (header and pixels) and truncation: a Scan or an InputError, nothing else."""
    raw = _testfile(name).read_bytes()
    rng = np.random.default_rng(11)
    outcomes = set()
    for k in range(25):
        data = bytearray(raw)
        for i in rng.integers(132, len(data), size=rng.integers(1, 6)):
            data[i] = int(rng.integers(0, 256))
        if k % 4 == 0:
            data = data[: int(rng.integers(140, len(data)))]
        path = tmp_path / f"{k}.dcm"
        path.write_bytes(bytes(data))
        try:
            outcomes.add(type(read_dicom(path)).__name__)
        except InputError:
            outcomes.add("InputError")
    assert outcomes <= {"Scan", "InputError"} and "InputError" in outcomes


def test_is_dicom_file(tmp_path):
    assert is_dicom_file(_testfile("CT_small.dcm"))
    assert is_dicom_file(_testfile("ExplVR_LitEndNoMeta.dcm"))  # no preamble, parseable header
    (tmp_path / "x.nii").write_bytes(b"\x5c\x01\x00\x00" + bytes(400))
    (tmp_path / "empty").write_bytes(b"")
    assert not is_dicom_file(tmp_path / "x.nii")
    assert not is_dicom_file(tmp_path / "empty")
    assert not is_dicom_file(tmp_path / "missing")
    assert not is_dicom_file(_testfile("test1.json"))


def test_pixels_are_decoded_once_per_file(ct_series, monkeypatch):
    """Grouping reads headers only; each file's pixel data is parsed exactly once."""
    _, folder = ct_series
    full_reads = []
    original = pydicom.dcmread

    def counting(path, *args, **kwargs):
        if not kwargs.get("stop_before_pixels"):
            full_reads.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    read_dicom(folder)
    assert sorted(full_reads) == sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ writer: what is in the files


def test_written_files_are_marked_synthetic_and_carry_full_geometry(ct_series):
    scan, folder = ct_series
    files = sorted(folder.iterdir())
    datasets = [pydicom.dcmread(f) for f in files]
    lps = lps_to_ras(scan.affine)
    for k, ds in enumerate(datasets):
        assert ds.SyntheticData == "YES"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.BurnedInAnnotation == "NO"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert re.fullmatch(r"SYNTHETIC\^ct-1-[0-9a-f]{12}", str(ds.PatientName))
        assert re.fullmatch(r"SYN-ct-1-[0-9a-f]{12}", ds.PatientID)
        item = ds.ContributingEquipmentSequence[0]
        code = item.PurposeOfReferenceCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
            "109100",
            "DCM",
            "Synthesizing Equipment",
        )
        assert "medsynth" in item.Manufacturer and item.SoftwareVersions == f"medsynth {__version__}"
        assert ds.InstanceNumber == k + 1
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], lps[:3, 3] + k * lps[:3, 0], atol=1e-9)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.9]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 2.5
        assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16  # int16
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)  # stored = HU
        assert [float(v) for v in ds.WindowCenter] == [40, -600] and [float(v) for v in ds.WindowWidth] == [350, 1500]
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in datasets}) == 1


def test_manufacturer_collides_with_no_dcm2niix_vendor():
    vendor_prefixes = {"SI", "GE", "HI", "ME", "PH", "TO", "CA", "CP", "UI", "BR", "MR", "HY"}
    assert MANUFACTURER[:2].upper() not in vendor_prefixes and "medsynth" in MANUFACTURER


def test_uids_are_deterministic_per_case_and_files_reproducible(tmp_path):
    scan = _volume("MR", oblique=True, integral=False)
    a = write_dicom(scan, tmp_path / "a", case_id="case-7")
    b = write_dicom(scan, tmp_path / "b", case_id="case-7")
    c = write_dicom(scan, tmp_path / "c", case_id="case-8")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    uid = lambda p: pydicom.dcmread(p).SOPInstanceUID  # noqa: E731
    assert uid(a[0]) == uid(b[0]) != uid(c[0])
    assert pydicom.dcmread(a[0]).StudyInstanceUID != pydicom.dcmread(c[0]).StudyInstanceUID


def test_mr_is_stored_in_its_own_units_without_rescale(tmp_path):
    """Issue 15: MR Image has no Modality LUT: stored = round(value), the same mapping in every file."""
    scan = _volume("MR", oblique=False, integral=False)
    files = write_dicom(scan, tmp_path / "s", case_id="prec")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds and "RescaleType" not in ds
        assert ds.PixelRepresentation == 0
        np.testing.assert_array_equal(ds.pixel_array, np.round(scan.array[0, k]))
    assert np.abs(read_dicom(tmp_path / "s").array - scan.array).max() <= 0.5


def test_no_input_identifier_reaches_the_output(tmp_path):
    path = _testfile("MR_small.dcm")
    src = pydicom.dcmread(path)
    scan = read_dicom(path)
    files = write_dicom(scan, tmp_path / "s", case_id="anon")
    blob = files[0].read_bytes()
    identifiers = [
        str(src.PatientName),
        src.PatientID,
        src.StudyInstanceUID,
        src.SeriesInstanceUID,
        src.SOPInstanceUID,
        src.FrameOfReferenceUID,
        src.StudyDate,
        src.get("InstitutionName", ""),
    ]
    for value in filter(None, identifiers):
        assert value.encode() not in blob, value
    assert set(scan.metadata) <= {
        "source_format",
        "series_kind",
        "transfer_syntax",
        "photometric",
        "manufacturer_model",
        "bits_stored",
        "window_center",
        "window_width",
        "body_part",
    }


def test_sc_forced_and_other_modalities(tmp_path):
    files = write_dicom(_plane_2d("CT"), tmp_path / "sc", case_id="sc", sop_class="sc")
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID.name == "Secondary Capture Image Storage" and ds.ConversionType == "SYN"
    assert ds.Modality == "CT" and ds.RescaleType == "HU"
    rgb = pydicom.dcmread(write_dicom(_plane_2d("MR", channels=3), tmp_path / "rgb", case_id="rgb")[0])
    assert rgb.PhotometricInterpretation == "RGB" and rgb.SamplesPerPixel == 3


def test_write_refuses_bad_input_and_leaves_nothing(tmp_path, monkeypatch):
    good = _plane_2d("CT")
    cases = [
        (dict(scan=good, case_id="bad id"), r"case_id 'bad id'"),
        (dict(scan=good, case_id="ok", sop_class="enhanced"), r"sop_class 'enhanced'"),
        (dict(scan=good.with_array(np.full((1, 8, 9), np.nan, np.float32)), case_id="ok"), r"NaN"),
        (dict(scan=good.with_array(np.zeros((2, 8, 9), np.float32)), case_id="ok"), r"2 channels"),
        (dict(scan=_plane_2d("OT", 3).with_array(np.full((3, 8, 9), 300.0, np.float32)), case_id="ok"), r"0\.\.255"),
    ]
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    cases.append(
        (dict(scan=Scan(np.zeros((1, 3, 4, 5), np.float32), sheared, "CT"), case_id="ok"), r"sheared|orthogonal")
    )
    for kwargs, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            write_dicom(out_dir=tmp_path / "out", **kwargs)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError, match=r"busy: exists and holds"):
        write_dicom(good, tmp_path / "busy", case_id="ok")

    calls = []
    original = pydicom.Dataset.save_as

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing)
    with pytest.raises(OSError):
        write_dicom(_volume("CT", False, integral=True), tmp_path / "out", case_id="ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no series, no temporaries


@pytest.mark.parametrize("degrees, refused", [(0.05, True), (0.001, False)])
def test_slightly_sheared_slice_axis(tmp_path, degrees, refused):
    """A slice axis 0.05 degrees off the normal is refused, never projected away; 0.001 is rounding."""
    scan = _volume("CT", oblique=False, integral=True)
    affine = scan.affine.copy()
    t = np.radians(degrees)
    affine[:3, 0] = np.array([np.sin(t), 0.0, np.cos(t)]) * 2.5  # RAS: tilt toward x
    tilted = Scan(scan.array, affine, "CT")
    if refused:
        with pytest.raises(InputError, match=r"degrees off the slice normal"):
            write_dicom(tilted, tmp_path / "s", case_id="tilt")
    else:
        write_dicom(tilted, tmp_path / "s", case_id="tilt")
        np.testing.assert_allclose(read_dicom(tmp_path / "s").affine, affine, atol=1e-3)


def test_rewriting_a_case_replaces_its_series(tmp_path):
    first = write_dicom(_volume("CT", False, integral=True), tmp_path / "s", case_id="r")
    second = write_dicom(_plane_2d("CT"), tmp_path / "s", case_id="r")
    assert len(first) == 5 and sorted(tmp_path.joinpath("s").iterdir()) == second


def test_converted_real_scan_is_not_marked_synthetic(tmp_path):
    """`convert` writes SyntheticData NO and an anonymous patient; generated output stays YES."""
    scan = Scan(
        np.linspace(-500, 500, 2 * 8 * 8, dtype=np.float32).reshape(1, 2, 8, 8), np.diag([2.0, 1.0, 1.0, 1.0]), "CT"
    )
    synth = write_dicom(scan, tmp_path / "syn", case_id="c1")
    real = write_dicom(scan, tmp_path / "real", case_id="c1", synthetic=False)
    a, b = pydicom.dcmread(synth[0]), pydicom.dcmread(real[0])
    assert (a.SyntheticData, b.SyntheticData) == ("YES", "NO")
    assert re.fullmatch(r"ANONYMOUS\^c1-[0-9a-f]{12}", str(b.PatientName)) and b.PatientIdentityRemoved == "YES"
    purpose = b.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue
    assert purpose == "109102"


def test_uid_namespace_separates_equal_case_ids(tmp_path):
    scan = Scan(np.zeros((1, 2, 8, 8), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]), "CT")
    one = pydicom.dcmread(write_dicom(scan, tmp_path / "a", case_id="c1", uid_namespace="p1")[0])
    same = pydicom.dcmread(write_dicom(scan, tmp_path / "b", case_id="c1", uid_namespace="p1")[0])
    other = pydicom.dcmread(write_dicom(scan, tmp_path / "c", case_id="c1", uid_namespace="p2")[0])
    assert one.SOPInstanceUID == same.SOPInstanceUID
    assert one.StudyInstanceUID != other.StudyInstanceUID and one.SOPInstanceUID != other.SOPInstanceUID
