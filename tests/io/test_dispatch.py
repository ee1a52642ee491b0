"""The I/O dispatch: which reader runs, folders and trees, write_scan names, header peeks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from medsynth.errors import InputError, MedsynthError
from medsynth.io import (
    FORMATS,
    convert,
    detect_format,
    peek_spatial_dims,
    read_scan,
    read_scans,
    write_scan,
)
from medsynth.io.nifti import write_nifti
from medsynth.io.scan import Scan


def _pydicom_file(name: str):
    pydicom_data = pytest.importorskip("pydicom.data")
    return pydicom_data.get_testdata_file(name)


def test_dispatch_by_name_and_by_content(tmp_path, ct_volume, mr_slice):
    nii = write_nifti(mr_slice, tmp_path / "a.nii")
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "b.png")
    shutil.copy(nii, tmp_path / "nifti_without_suffix")
    shutil.copy(tmp_path / "b.png", tmp_path / "png_without_suffix")
    shutil.copy(_pydicom_file("CT_small.dcm"), tmp_path / "IM0001")
    assert detect_format(tmp_path / "a.nii") == "nifti"
    assert detect_format(tmp_path / "b.png") == "png"
    assert detect_format(tmp_path / "nifti_without_suffix") == "nifti"
    assert detect_format(tmp_path / "png_without_suffix") == "png"
    assert detect_format(tmp_path / "IM0001") == "dicom"

    assert read_scan(tmp_path / "a.nii", modality="MR").modality == "MR"
    assert read_scan(tmp_path / "nifti_without_suffix").shape == (9, 11)
    assert read_scan(tmp_path / "png_without_suffix").orientation == "PL"
    ct = read_scan(tmp_path / "IM0001", modality="MR")  # DICOM keeps its own Modality
    assert ct.modality == "CT" and ct.spatial_dims == 2 and ct.shape == (128, 128)


def test_unreadable_inputs_are_one_line_errors(tmp_path, ct_volume):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01junk" * 50)
    gz = write_nifti(ct_volume, tmp_path / "v.nii.gz")
    shutil.copy(gz, tmp_path / "v.gz")
    (tmp_path / "fake.nii.gz").write_text("I am a text file")
    expected = {
        "missing": "no such file or folder",
        "empty": "empty file",
        "junk.bin": "not a recognised scan",
        "v.gz": "must be named .nii.gz",
        "fake.nii.gz": "not a readable NIfTI",
    }
    for name, reason in expected.items():
        with pytest.raises(InputError) as info:
            read_scan(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name)), str(info.value)
        assert reason in str(info.value) and "\n" not in str(info.value)


def test_dicom_folder_reads_as_one_series_and_round_trips(tmp_path, ct_volume):
    folder = write_scan(ct_volume, tmp_path / "series", "dicom", case_id="case-1")
    assert folder == tmp_path / "series" and len(list(folder.glob("*.dcm"))) == 6
    scan = read_scan(folder)
    assert scan.modality == "CT" and scan.shape == ct_volume.shape
    # DICOM stores slices along row x column, so the reader may return the slice axis
    # reversed with a matching affine: compare voxel by voxel in patient space.
    index_map = np.linalg.inv(ct_volume.affine) @ scan.affine
    np.testing.assert_allclose(index_map, np.round(index_map), atol=1e-3)
    ijk = np.stack(np.meshgrid(*map(np.arange, scan.shape), indexing="ij"), -1).reshape(-1, 3)
    ijk_original = np.rint(ijk @ index_map[:3, :3].T + index_map[:3, 3]).astype(int)
    np.testing.assert_allclose(scan.array[0][tuple(ijk.T)], ct_volume.array[0][tuple(ijk_original.T)], atol=0.5)
    assert peek_spatial_dims(folder) == 3
    assert peek_spatial_dims(_pydicom_file("CT_small.dcm")) == 2


def test_folder_of_nifti_files_is_not_one_scan(tmp_path, mr_slice):
    write_nifti(mr_slice, tmp_path / "a.nii.gz")
    write_nifti(mr_slice, tmp_path / "b.nii.gz")
    with pytest.raises(InputError, match="2 NIfTI/PNG/TIFF file.*use read_scans"):
        read_scan(tmp_path)


def test_read_scans_walks_a_tree_with_errors_per_item(tmp_path, ct_volume, mr_slice):
    write_nifti(ct_volume, tmp_path / "vol.nii.gz")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "sub" / "x.png")
    write_scan(ct_volume, tmp_path / "dicom" / "s1", "dicom", case_id="s1")
    (tmp_path / "broken.nii.gz").write_text("text")
    (tmp_path / "junk.bin").write_bytes(b"junk" * 10)
    (tmp_path / "labels.csv").write_text("path,pathology,modality\n")  # companion: passed over
    (tmp_path / ".DS_Store").write_bytes(b"\x00" * 10)  # hidden: passed over
    items = read_scans(tmp_path)
    labels = [label for label, _ in items]
    ok = {label: item for label, item in items if isinstance(item, Scan)}
    bad = {label: item for label, item in items if isinstance(item, MedsynthError)}
    assert len(items) == 5
    assert set(ok) == {str(tmp_path / "vol.nii.gz"), str(tmp_path / "sub" / "x.png")} | {
        label for label in labels if label.startswith(str(tmp_path / "dicom"))
    }
    assert len(ok) == 3 and len(bad) == 2
    assert set(bad) == {str(tmp_path / "broken.nii.gz"), str(tmp_path / "junk.bin")}
    dicom_scan = next(item for label, item in ok.items() if "dicom" in label)
    assert dicom_scan.shape == ct_volume.shape
    assert labels == sorted(labels)


def test_read_scans_on_missing_empty_and_single_paths(tmp_path, mr_slice):
    [(label, err)] = read_scans(tmp_path / "nope")
    assert isinstance(err, InputError) and label == str(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    [(label, err)] = read_scans(tmp_path / "empty_dir")
    assert isinstance(err, InputError) and "no scans found" in str(err)
    path = write_nifti(mr_slice, tmp_path / "one.nii.gz")
    [(label, scan)] = read_scans(path)
    assert label == str(path) and isinstance(scan, Scan)


def test_write_scan_names_and_formats(tmp_path, ct_volume, mr_slice):
    assert FORMATS == ("nifti", "dicom", "png")
    assert write_scan(ct_volume, tmp_path / "case-1", "nifti") == tmp_path / "case-1.nii.gz"
    assert write_scan(ct_volume, tmp_path / "c2.nii", "nifti") == tmp_path / "c2.nii"
    assert write_scan(mr_slice, tmp_path / "case-3", "png") == tmp_path / "case-3.png"
    assert read_scan(tmp_path / "case-1.nii.gz").shape == ct_volume.shape
    with pytest.raises(InputError, match="unknown output format 'jpeg'; allowed: nifti, dicom, png"):
        write_scan(ct_volume, tmp_path / "x", "jpeg")
    with pytest.raises(InputError, match=r"needs a name ending in \.nii\.gz or \.nii"):
        write_scan(ct_volume, tmp_path / "x.png", "nifti")
    with pytest.raises(InputError, match="PNG holds 2D images only"):
        write_scan(ct_volume, tmp_path / "vol", "png")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="taken"):
        write_scan(ct_volume, tmp_path / "taken", "dicom", case_id="c")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "vol.png").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_convert_checks_before_writing(tmp_path, ct_volume, mr_slice):
    src = write_nifti(ct_volume, tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="PNG holds 2D images only"):
        convert(src, tmp_path / "out", "png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
    written, scan = convert(src, tmp_path / "out", "dicom")
    assert written == tmp_path / "out" and read_scan(written).shape == scan.shape
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        convert(src, tmp_path / "out", "dicom")
    convert(src, tmp_path / "out", "dicom", overwrite=True)
    two = write_nifti(mr_slice, tmp_path / "mr.nii.gz")
    written, _ = convert(two, tmp_path / "mr", "png")
    # the RAS-ordered axial slice (9 x 11) is shown transposed: rows anterior->posterior
    assert written == tmp_path / "mr.png" and read_scan(written).shape == (11, 9)


def test_peek_spatial_dims_reads_headers(tmp_path, ct_volume, mr_slice):
    assert peek_spatial_dims(write_nifti(ct_volume, tmp_path / "v.nii.gz")) == 3
    assert peek_spatial_dims(write_nifti(mr_slice, tmp_path / "s.nii.gz")) == 2
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "p.png")
    assert peek_spatial_dims(tmp_path / "p.png") == 2
    write_scan(mr_slice, tmp_path / "one_slice", "dicom", case_id="s")
    assert peek_spatial_dims(tmp_path / "one_slice") == 2
    assert read_scan(tmp_path / "one_slice").spatial_dims == 2
