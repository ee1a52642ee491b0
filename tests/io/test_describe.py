"""Header-only description (``describe_path``/``describe_scans``, what `medsynth inspect` prints).

It must give the facts reading gives (``describe_scan(read_scan(p))``) for every format in 2D
and 3D, without decoding any pixel data, and say when a reader guessed the geometry.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsynth.errors import InputError
from medsynth.io import describe_path, describe_scan, describe_scans, read_scan, read_scans, write_scan
from medsynth.io.dicom import write_dicom
from medsynth.io.nifti import GUESSED_NIFTI
from medsynth.io.scan import Scan

_US_MULTI_FRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def _pydicom_file(name: str, tmp_path: Path) -> Path:
    path = get_testdata_file(name)  # local files of the pydicom wheel only, never downloaded
    if path is None:
        pytest.skip(f"pydicom test file {name} is not shipped with this pydicom")
    return Path(shutil.copy(path, tmp_path / name))


def _cine(path: Path, frames: int, rows: int, cols: int, *, pixel_bytes: int | None = None) -> Path:
    """A US multi-frame file without positions (a cine loop); ``pixel_bytes`` cuts its pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _US_MULTI_FRAME
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _US_MULTI_FRAME, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesNumber = "US", 1
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 33.3
    data = np.random.default_rng(0).integers(0, 255, size=(frames, rows, cols), dtype=np.uint8).tobytes()
    ds.PixelData = data if pixel_bytes is None else data[:pixel_bytes]
    ds.save_as(path, enforce_file_format=True)
    return path


def _nifti_without_orientation(path: Path) -> Path:
    header = nib.Nifti1Header()  # a bare header: nibabel stores no affine, both codes 0
    header.set_data_shape((4, 5, 6))
    header.set_zooms((1.5, 1.5, 4.0))
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None, header=header), path)
    return path


def _enhanced_ct(tmp_path: Path, ct_volume: Scan) -> Path:
    hd = pytest.importorskip("highdicom")
    files = write_dicom(ct_volume, tmp_path / "legacy", case_id="mf")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(f) for f in files][::-1],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    return tmp_path / "enhanced.dcm"


def _rgb_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (7, 9, 3), dtype=np.uint8)).save(path)
    return path


def _tiff16(path: Path) -> Path:
    import tifffile

    tifffile.imwrite(path, np.arange(30, dtype=np.uint16).reshape(5, 6) * 1000)
    return path


def _jpeg(path: Path) -> Path:
    Image.fromarray(np.full((10, 12), 128, np.uint8)).save(path, quality=90)
    return path


# Each builder makes one scan under tmp_path and returns its path; ids name format and case.
CASES: dict[str, Callable[..., Path]] = {
    "nifti-3d-oblique": lambda t, ct, mr: write_scan(ct, t / "ct.nii.gz", "nifti"),
    "nifti-2d": lambda t, ct, mr: write_scan(mr, t / "mr.nii", "nifti"),
    "nifti-3d-no-orientation": lambda t, ct, mr: _nifti_without_orientation(t / "none.nii"),
    "dicom-3d-series": lambda t, ct, mr: write_scan(ct, t / "ct_dicom", "dicom"),
    "dicom-2d-slice": lambda t, ct, mr: write_scan(mr, t / "mr_dicom", "dicom"),
    "dicom-2d-projection": lambda t, ct, mr: _pydicom_file("JPEG2000.dcm", t),
    "dicom-2d-rgb": lambda t, ct, mr: _pydicom_file("SC_rgb_rle.dcm", t),
    "dicom-2d-palette": lambda t, ct, mr: _pydicom_file("examples_palette.dcm", t),
    "dicom-3d-frame-stack": lambda t, ct, mr: _pydicom_file("SC_rgb_rle_2frame.dcm", t),
    "dicom-3d-frame-offsets": lambda t, ct, mr: _pydicom_file("rtdose.dcm", t),
    "dicom-3d-enhanced": lambda t, ct, mr: _enhanced_ct(t, ct),
    "dicom-3d-cine": lambda t, ct, mr: _cine(t / "cine.dcm", 6, 8, 10),
    "png-grey": lambda t, ct, mr: write_scan(mr.with_array(np.round(mr.array / 3)), t / "mr.png", "png"),
    "png-rgb": lambda t, ct, mr: _rgb_png(t / "rgb.png"),
    "tiff-16bit": lambda t, ct, mr: _tiff16(t / "x.tif"),
    "jpeg": lambda t, ct, mr: _jpeg(t / "x.jpg"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_header_facts_equal_the_facts_of_the_read_scan(tmp_path, ct_volume, mr_slice, case):
    path = CASES[case](tmp_path, ct_volume, mr_slice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the no-orientation NIfTI warns on reading
        scan = read_scan(path, modality="MR")
    info = describe_path(path, modality="MR")
    assert describe_scan(info) == describe_scan(scan)
    np.testing.assert_allclose(info.affine, scan.affine, atol=1e-9)
    assert info.metadata == scan.metadata


def test_a_tree_is_described_with_the_labels_and_errors_of_read_scans(tmp_path, ct_volume, mr_slice):
    for build in CASES.values():
        try:
            build(tmp_path, ct_volume, mr_slice)
        except pytest.skip.Exception:
            continue
    (tmp_path / "broken.nii.gz").write_text("not a scan")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        read = read_scans(tmp_path)
    described = describe_scans(tmp_path)
    assert [label for label, _ in described] == [label for label, _ in read]
    for (label, item), (_, scan) in zip(described, read, strict=True):
        if isinstance(scan, Scan):
            assert not isinstance(item, Exception), label
            assert describe_scan(item) == describe_scan(scan), label
        else:
            assert isinstance(item, InputError) and str(item) == str(scan), label


# ---------------------------------------------------------------- no pixel data is decoded


@pytest.fixture
def no_decoding(monkeypatch):
    """Make every pixel decoder of every format fail loudly; record full DICOM reads."""
    import tifffile
    from nibabel.arrayproxy import ArrayProxy
    from PIL import ImageFile

    def refuse(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Dataset, "pixel_array", property(refuse))
    monkeypatch.setattr(ArrayProxy, "__array__", refuse)
    monkeypatch.setattr(ArrayProxy, "get_unscaled", refuse)
    monkeypatch.setattr(ArrayProxy, "_get_scaled", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    full_reads: list[str] = []
    original = pydicom.dcmread

    def counting(path, *args, **kwargs):
        if not kwargs.get("stop_before_pixels"):
            full_reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    return full_reads


@pytest.mark.filterwarnings("ignore:.*no orientation stored:UserWarning")
def test_no_format_decodes_pixels_to_be_described(tmp_path, ct_volume, mr_slice, no_decoding):
    paths = []
    for case, build in CASES.items():
        if case.startswith(("png", "tiff", "jpeg", "nifti")) or case in ("dicom-3d-series", "dicom-2d-slice"):
            paths.append(build(tmp_path, ct_volume, mr_slice))  # written before decoding is refused
    big = _cine(tmp_path / "big.dcm", 200, 128, 128)
    infos = [describe_path(p) for p in [*paths, big]]
    assert infos[-1].shape == (200, 128, 128) and infos[-1].modality == "US"
    assert no_decoding == []  # every DICOM was parsed with stop_before_pixels
    for path in [*paths, big]:  # the patches do catch each reader (which reports decoder failures)
        with pytest.raises(InputError, match="pixel data was decoded"):
            read_scan(path)


def test_dicom_with_truncated_pixel_data_is_described_but_not_read(tmp_path):
    path = _cine(tmp_path / "cut.dcm", 300, 64, 64, pixel_bytes=1000)  # 1000 of 1.2 million bytes
    info = describe_path(path)
    assert (info.shape, info.channels, info.spacing, info.modality) == ((300, 64, 64), 1, (1.0, 1.0, 1.0), "US")
    assert info.metadata["series_kind"] == "frame-stack" and "frames have no positions" in info.geometry_guessed
    with pytest.raises(InputError, match="cut.dcm"):
        read_scan(path)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_nifti_with_truncated_data_is_described_from_its_header(tmp_path, ct_volume, name):
    big = ct_volume.with_array(np.zeros((1, 40, 50, 60), np.float32) + 7.0)
    whole = write_scan(big, tmp_path / f"whole{name[3:]}", "nifti")
    raw = whole.read_bytes()
    if name.endswith(".gz"):
        (tmp_path / name).write_bytes(gzip.compress(gzip.decompress(raw)[:2000]))
    else:
        (tmp_path / name).write_bytes(raw[:2000])  # the header and a few voxels of 120000
    info = describe_path(tmp_path / name)
    assert describe_scan(info) == describe_scan(read_scan(whole))
    with pytest.raises(InputError, match=r"cannot read the voxel data.*truncated"):
        read_scan(tmp_path / name)


def test_a_header_that_cannot_answer_falls_back_to_the_reader(tmp_path):
    frames = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (0, 9)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="stack.tif: TIFF has 2 pages"):
        describe_path(tmp_path / "stack.tif")


# ---------------------------------------------------------------- guessed geometry


def test_guessed_geometry_is_recorded_by_each_reader(tmp_path, ct_volume, mr_slice):
    png = CASES["png-grey"](tmp_path, ct_volume, mr_slice)
    assert read_scan(png).geometry_guessed.startswith("PNG stores no patient geometry")
    with pytest.warns(UserWarning, match="no orientation stored"):
        assert read_scan(_nifti_without_orientation(tmp_path / "none.nii")).geometry_guessed == GUESSED_NIFTI
    projection = read_scan(_pydicom_file("JPEG2000.dcm", tmp_path))
    assert projection.geometry_guessed.startswith("no ImagePositionPatient/ImageOrientationPatient")
    assert "spacing from PixelSpacing" in projection.geometry_guessed
    for measured in (
        write_scan(ct_volume, tmp_path / "a.nii.gz", "nifti"),
        CASES["dicom-3d-series"](tmp_path, ct_volume, mr_slice),
    ):
        assert read_scan(measured).geometry_guessed is None
    # Orientation but no position: the origin is assumed.
    files = write_dicom(mr_slice, tmp_path / "nopos", case_id="np")
    ds = pydicom.dcmread(files[0])
    del ds.ImagePositionPatient
    ds.save_as(files[0])
    assert read_scan(tmp_path / "nopos").geometry_guessed == "no ImagePositionPatient: origin 0"
    # with_array keeps the guess: a scan derived from a guessed one is no more certain.
    assert projection.with_array(projection.array * 2).geometry_guessed == projection.geometry_guessed


def test_written_dicom_keeps_a_guess_a_guess(tmp_path, mr_slice):
    guessed = Scan(mr_slice.array, mr_slice.affine, "MR", geometry_guessed="PNG stores no patient geometry")
    files = write_dicom(guessed, tmp_path / "g", case_id="g")
    assert pydicom.dcmread(files[0]).ImageComments == (
        "geometry assumed by medsynth, not measured: PNG stores no patient geometry"
    )
    assert read_scan(tmp_path / "g").geometry_guessed == "PNG stores no patient geometry"
    assert describe_path(tmp_path / "g").geometry_guessed == "PNG stores no patient geometry"
    plain = write_dicom(mr_slice, tmp_path / "p", case_id="p")
    assert "ImageComments" not in pydicom.dcmread(plain[0])


def test_dicom_without_modality_takes_the_given_one(tmp_path, mr_slice):
    files = write_dicom(mr_slice, tmp_path / "s", case_id="m")
    ds = pydicom.dcmread(files[0])
    del ds.Modality
    ds.save_as(files[0])
    assert read_scan(tmp_path / "s").modality == "OT"
    assert read_scan(tmp_path / "s", modality="mr").modality == "MR"
    assert describe_path(tmp_path / "s", modality="MR").modality == "MR"
    # The file's own Modality wins over the argument.
    other = write_dicom(mr_slice, tmp_path / "t", case_id="t")
    assert read_scan(other[0].parent, modality="CT").modality == "MR"


def test_a_folder_of_one_file_scans_is_no_single_scan(tmp_path, mr_slice):
    write_scan(mr_slice, tmp_path / "a.nii.gz", "nifti")
    write_scan(mr_slice, tmp_path / "b.nii.gz", "nifti")
    for fn in (read_scan, describe_path):
        with pytest.raises(InputError, match=r"folder holds 2 NIfTI/PNG/TIFF file\(s\) and no single DICOM series"):
            fn(tmp_path)


def test_modality_codes_are_dicom_defined_terms():
    from medsynth.io import check_modality
    from medsynth.io.modality import known_modalities

    assert {"CT", "MR", "PT", "US", "DX", "CR", "MG", "NM", "OT", "SEG"} <= known_modalities()
    assert check_modality(" us ") == "US"
    with pytest.raises(InputError, match=r"modality 'MRI' is not a DICOM modality code \(did you mean MR\?\)"):
        check_modality("MRI")
