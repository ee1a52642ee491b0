"""NIfTI reading and writing: geometry, affine choice, dtypes, 2D/4D handling, bad files."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medsynth.errors import InputError
from medsynth.io.nifti import read_nifti, write_nifti
from medsynth.io.scan import Scan, lps_to_ras


def test_3d_ct_round_trip_is_exact_and_int16(tmp_path, ct_volume):
    path = write_nifti(ct_volume, tmp_path / "ct.nii.gz")
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16  # integer HU: stored losslessly as int16
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(img.header.get_sform(), ct_volume.affine, atol=1e-5)
    # the qform (quaternion) represents the same oblique rotation
    np.testing.assert_allclose(img.header.get_qform(), ct_volume.affine, atol=1e-4)

    back = read_nifti(path, modality="CT")
    np.testing.assert_array_equal(back.array, ct_volume.array)
    np.testing.assert_allclose(back.affine, ct_volume.affine, atol=1e-5)
    assert back.spacing == ct_volume.spacing == (0.7, 0.9, 2.5)
    assert back.orientation == ct_volume.orientation
    assert back.modality == "CT" and back.metadata["source_format"] == "nifti"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]  # no temporaries left


def test_non_integer_ct_and_mr_are_float32(tmp_path, ct_volume, mr_slice):
    ct = ct_volume.with_array(ct_volume.array + 0.25)
    assert nib.load(write_nifti(ct, tmp_path / "ct.nii")).get_data_dtype() == np.float32
    mr3d = Scan(np.full((1, 3, 3, 3), 7.0, np.float32), np.eye(4), "MR")
    assert nib.load(write_nifti(mr3d, tmp_path / "mr.nii.gz")).get_data_dtype() == np.float32
    back = read_nifti(tmp_path / "ct.nii")
    np.testing.assert_array_equal(back.array, ct.array)
    assert back.modality == "OT"  # NIfTI stores no modality


def test_geometry_agrees_with_simpleitk(tmp_path, ct_volume):
    """An independent reader (SimpleITK, LPS) maps the same voxel to the same point."""
    sitk = pytest.importorskip("SimpleITK")
    path = write_nifti(ct_volume, tmp_path / "oblique.nii.gz")
    scan = read_nifti(path)
    image = sitk.ReadImage(str(path))
    for ijk in [(0, 0, 0), (5, 0, 0), (0, 6, 0), (0, 0, 4), (3, 2, 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = lps_to_ras(np.eye(4))[:3, :3] @ lps
        np.testing.assert_allclose(scan.affine @ [*ijk, 1], [*ras, 1], atol=1e-3)
        # SimpleITK indexes (x, y, z) = nibabel's (i, j, k): the same voxel value
        assert image[ijk] == scan.array[(0, *ijk)]


def test_2d_scan_round_trip_keeps_plane_and_thickness(tmp_path, mr_slice):
    path = write_nifti(mr_slice, tmp_path / "slice.nii.gz")
    assert nib.load(path).shape == (9, 11, 1)
    back = read_nifti(path, modality="MR")
    assert back.spatial_dims == 2 and back.shape == (9, 11)
    np.testing.assert_allclose(back.affine, mr_slice.affine, atol=1e-5)
    assert back.slice_thickness == pytest.approx(3.0)
    np.testing.assert_allclose(back.array, mr_slice.array, rtol=1e-6)


def test_true_2d_file_reads_as_2d(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "flat.nii")
    scan = read_nifti(tmp_path / "flat.nii")
    assert scan.array.shape == (1, 3, 4)
    assert scan.spacing == (0.5, 0.5) and scan.slice_thickness == pytest.approx(2.0)
    np.testing.assert_array_equal(scan.array[0], data)


def _image_with_codes(sform, sform_code, qform, qform_code):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None)
    img.set_sform(sform, code=sform_code)
    img.set_qform(qform, code=qform_code)
    return img


def test_affine_choice_sform_then_qform_then_fallback(tmp_path):
    sform = np.diag([2.0, 2.0, 2.0, 1.0])
    qform = np.diag([-1.0, 1.0, 3.0, 1.0])
    nib.save(_image_with_codes(sform, 2, qform, 1), tmp_path / "both.nii")
    np.testing.assert_allclose(read_nifti(tmp_path / "both.nii").affine, sform)

    nib.save(_image_with_codes(sform, 0, qform, 1), tmp_path / "qonly.nii")
    np.testing.assert_allclose(read_nifti(tmp_path / "qonly.nii").affine, qform)

    header = nib.Nifti1Header()  # built from a bare header so nibabel stores no affine at all
    header.set_data_shape((4, 5, 6))
    header.set_zooms((1.5, 1.5, 4.0))
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None, header=header), tmp_path / "none.nii")
    assert int(nib.load(tmp_path / "none.nii").header["sform_code"]) == 0
    with pytest.warns(UserWarning, match="no orientation stored"):
        scan = read_nifti(tmp_path / "none.nii")
    # Analyze fallback: pixdim sizes, x flipped, origin at the centre
    assert scan.spacing == (1.5, 1.5, 4.0)
    assert scan.affine[0, 0] == -1.5 and scan.orientation == "LAS"
    np.testing.assert_allclose(scan.affine @ [1.5, 2.0, 2.5, 1], [0, 0, 0, 1], atol=1e-9)


def test_scl_slope_and_inter_are_applied(tmp_path):
    raw = np.array([[[0, 1], [2, 3]]], dtype=np.int16)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii")
    scan = read_nifti(tmp_path / "scaled.nii")
    np.testing.assert_array_equal(scan.array[0], raw * 2.0 - 1024.0)


def test_4d_with_one_volume_is_3d_and_many_volumes_is_an_error(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.float32), np.eye(4)), tmp_path / "one.nii")
    assert read_nifti(tmp_path / "one.nii").shape == (3, 4, 5)
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 7), np.float32), np.eye(4)), tmp_path / "fmri.nii")
    with pytest.raises(InputError, match=r"fmri\.nii: image has shape \(3, 4, 5, 7\).*split it"):
        read_nifti(tmp_path / "fmri.nii")


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, ct_volume):
    (tmp_path / "text.nii.gz").write_text("this is not an image\n")
    (tmp_path / "empty.nii").write_bytes(b"")
    good = write_nifti(ct_volume, tmp_path / "good.nii.gz")
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "trunc.nii").write_bytes(raw[: len(raw) - 50])
    cases = {
        "text.nii.gz": "not a readable NIfTI",
        "empty.nii": "empty file",
        "trunc.nii": "truncated",
        "missing.nii": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError) as info:
            read_nifti(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and reason in message
        assert "\n" not in message


def test_singular_header_affine_is_an_input_error(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((3, 3, 3))
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # a zero column: no third axis
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None, header=header), tmp_path / "flat.nii")
    with pytest.raises(InputError, match="unusable geometry"):
        read_nifti(tmp_path / "flat.nii")


def test_write_rejects_bad_names_and_channels(tmp_path, ct_volume):
    with pytest.raises(InputError, match=r"must end in \.nii or \.nii\.gz"):
        write_nifti(ct_volume, tmp_path / "x.png")
    two = Scan(np.zeros((2, 3, 3, 3), np.float32), np.eye(4), "MR")
    with pytest.raises(InputError, match="2 channels"):
        write_nifti(two, tmp_path / "two.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_2d_file_without_slice_step_gets_a_1mm_normal(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((3, 4))
    header.set_sform(np.diag([0.5, 0.5, 0.0, 1.0]), code=1)  # nothing said about thickness
    nib.save(nib.Nifti1Image(np.zeros((3, 4), np.float32), None, header=header), tmp_path / "thin.nii")
    scan = read_nifti(tmp_path / "thin.nii")
    np.testing.assert_allclose(scan.affine[:3, 2], [0.0, 0.0, 1.0])
    assert scan.spacing == (0.5, 0.5) and scan.slice_thickness == 1.0
