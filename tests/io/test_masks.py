"""Lesion masks: NIfTI, PNG and DICOM SEG label maps written and read back on their scan's grid."""

from __future__ import annotations

from datetime import datetime

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medsynth import __version__
from medsynth.errors import InputError
from medsynth.io import read_scan, write_scan
from medsynth.io.dicom import read_dicom, write_dicom
from medsynth.io.masks import (
    OUTLINE_RGB,
    check_mask_header,
    peek_shape,
    read_mask,
    write_mask_nifti,
    write_mask_outline_png,
    write_mask_png,
    write_seg,
)
from medsynth.io.scan import Scan

STAMP = datetime(2024, 5, 6, 7, 8, 9)


def _mask(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    """An asymmetric blob plus a lone voxel, so any flip or transpose shows."""
    m = np.zeros(shape, bool)
    m[(1,) * len(shape)] = True
    centre = tuple(s // 2 for s in shape)
    m[tuple(slice(c, c + 2) for c in centre)] = True
    return m


def _world_of_true(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS centres of the True voxels, sorted: equal for the same voxels in any index order."""
    idx = np.argwhere(mask)
    if mask.ndim == 2:
        idx = np.c_[idx, np.zeros(len(idx))]
    world = (affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    return world[np.lexsort(np.round(world, 3).T)]


# ------------------------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("which", ["ct_volume", "mr_slice"])
def test_nifti_mask_round_trip_keeps_the_scans_affine(tmp_path, request, which):
    scan: Scan = request.getfixturevalue(which)
    mask = _mask(scan.shape)
    path = write_mask_nifti(mask[None], scan, tmp_path / "m.nii.gz")
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8
    assert np.allclose(img.affine, scan.affine, atol=1e-5)
    assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 1
    assert set(np.unique(np.asarray(img.dataobj))) == {0, 1}
    back = read_mask(path, like=scan)
    assert back.shape == (1, *scan.shape) and back.dtype == bool
    assert np.array_equal(back[0], mask)
    assert peek_shape(path) == scan.shape


def test_nifti_mask_of_a_dicom_series_is_reordered_by_geometry(tmp_path, ct_volume):
    """A NIfTI mask runs in the scan's (x, y, z) order; the series read back runs (slice, row, col)."""
    write_dicom(ct_volume, tmp_path / "ct", case_id="m-1")
    series = read_dicom(tmp_path / "ct")
    mask = _mask(ct_volume.shape)
    path = write_mask_nifti(mask, ct_volume, tmp_path / "m.nii.gz")
    back = read_mask(path, like=series)[0]
    assert back.sum() == mask.sum()
    assert np.allclose(_world_of_true(back, series.affine), _world_of_true(mask, ct_volume.affine), atol=1e-3)
    check_mask_header(path, tmp_path / "ct")  # same sides, other order: no complaint


def _shifted(affine: np.ndarray, voxels: float) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] += affine[:3, 0] * voxels
    return out


def _scaled(affine: np.ndarray, factor: float) -> np.ndarray:
    out = affine.copy()
    out[:3, :3] *= factor
    return out


def _rotated(affine: np.ndarray) -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.eye(4)
    rot[:2, :2] = [[c, -s], [s, c]]
    return rot @ affine


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: _scaled(a, 1.05), "the voxel spacing differs"),
        (lambda a: _shifted(a, 0.5), "shifted by a fraction of a voxel"),
        (lambda a: _shifted(a, 1.0), "reaches voxels outside the scan"),
        (_rotated, "the axes point in other directions"),
    ],
    ids=["spacing", "half-voxel", "whole-voxel", "rotated"],
)
def test_a_mask_on_another_grid_is_a_one_line_error(tmp_path, ct_volume, change, reason):
    other = Scan(np.zeros_like(ct_volume.array), change(ct_volume.affine), "OT")
    path = write_mask_nifti(_mask(ct_volume.shape), other, tmp_path / "m.nii.gz")
    with pytest.raises(InputError, match=reason) as info:
        read_mask(path, like=ct_volume)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"shape {ct_volume.shape}" in message and "spacing (0.7, 0.9, 2.5) mm" in message
    assert "resample it onto the scan" in message


def test_a_mask_of_another_size_fails_the_header_check_and_the_grid_check(tmp_path, ct_volume):
    small = Scan(np.zeros((1, 6, 7, 4), np.float32), ct_volume.affine, "OT")
    path = write_mask_nifti(_mask(small.shape), small, tmp_path / "m.nii.gz")
    write_scan(ct_volume, tmp_path / "scan.nii.gz", "nifti")
    with pytest.raises(InputError, match=r"has shape \(6, 7, 4\), but its scan .* has shape \(6, 7, 5\)"):
        check_mask_header(path, tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="the shape differs"):
        read_mask(path, like=ct_volume)


# -------------------------------------------------------------------------------------- PNG


def test_png_mask_matches_the_scan_as_displayed(tmp_path, mr_slice):
    # mr_slice runs in RAS index order, which write_png flips and transposes for display.
    mask = _mask(mr_slice.shape)
    path = write_mask_png(mask, mr_slice, tmp_path / "m.png")
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (11, 9) and set(np.unique(pixels)) == {0, 255}  # displayed: transposed
    assert np.array_equal(read_mask(path, like=mr_slice)[0], mask)
    # A scan read from a PNG has the display geometry: its PNG mask is the same pixels.
    write_scan(mr_slice, tmp_path / "scan.png", "png")
    as_png = read_scan(tmp_path / "scan.png")
    assert np.array_equal(read_mask(path, like=as_png)[0], pixels > 0)
    check_mask_header(path, tmp_path / "scan.png")


def test_png_mask_of_the_wrong_size_or_on_a_volume_is_an_error(tmp_path, mr_slice, ct_volume):
    Image.fromarray(np.zeros((9, 12), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(InputError, match=r"PNG mask is 9x12 pixels, but the scan .* shows as 11x9"):
        read_mask(tmp_path / "m.png", like=mr_slice)
    with pytest.raises(InputError, match="a PNG mask holds a 2D image, but the scan is 3D"):
        read_mask(tmp_path / "m.png", like=ct_volume)


@pytest.mark.parametrize("which", ["mr_slice", "ct_volume"])
def test_outline_png_draws_the_mask_boundary_over_the_scan(tmp_path, request, which):
    scan: Scan = request.getfixturevalue(which)
    mask = np.zeros(scan.shape, bool)
    mask[(slice(1, 4),) * scan.spatial_dims] = True  # a 3x3(x3) block: border 8 (x 8) pixels, centre 1
    path = write_mask_outline_png(scan, mask, tmp_path / "outline.png")
    rgb = np.asarray(Image.open(path))
    assert rgb.ndim == 3 and rgb.shape[-1] == 3
    coloured = np.all(rgb == OUTLINE_RGB, axis=-1)
    assert coloured.sum() == 8  # the inner boundary of the block (of its fullest slice, in 3D)


# ---------------------------------------------------------------------------------- DICOM SEG


def _seg_case(tmp_path, scan: Scan, mask: np.ndarray):
    write_dicom(scan, tmp_path / "dicom", case_id="seg-1")
    path = write_seg(
        mask, tmp_path / "dicom", tmp_path / "seg.dcm", pathology="nodule", like=scan, content_datetime=STAMP
    )
    return path, pydicom.dcmread(path), pydicom.dcmread(sorted((tmp_path / "dicom").iterdir())[0])


@pytest.mark.parametrize("which", ["ct_volume", "mr_slice"])
def test_seg_round_trip_passes_dciodvfy_and_references_its_series(tmp_path, request, which, dciodvfy_errors):
    scan: Scan = request.getfixturevalue(which)
    mask = _mask(scan.shape)
    path, seg, image = _seg_case(tmp_path, scan, mask)
    assert dciodvfy_errors(path) == []
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == image.FrameOfReferenceUID
    assert seg.StudyInstanceUID == image.StudyInstanceUID and seg.PatientID == image.PatientID
    assert seg.SeriesInstanceUID != image.SeriesInstanceUID and seg.SOPInstanceUID != image.SOPInstanceUID
    assert seg.SyntheticData == "YES"
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "nodule"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # SNOMED CT: Nodule
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # morphologically abnormal
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medsynth" and algorithm.AlgorithmVersion == __version__
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert image.SOPInstanceUID in referenced
    # Back on the scan it was written from, and on the series as medsynth reads it.
    assert np.array_equal(read_mask(path, like=scan)[0], mask)
    series = read_dicom(tmp_path / "dicom")
    back = read_mask(path, like=series)[0]
    assert np.allclose(_world_of_true(back, series.affine), _world_of_true(mask, scan.affine), atol=1e-3)
    check_mask_header(path, tmp_path / "dicom")


def test_seg_stores_only_lesion_frames_and_is_reproducible(tmp_path, ct_volume):
    mask = np.zeros(ct_volume.shape, bool)
    mask[2, 3:5, 1:3] = True  # axis 0 is the series' slice axis (write_dicom slices along it)
    path, seg, _ = _seg_case(tmp_path, ct_volume, mask)
    assert int(seg.NumberOfFrames) == 1
    assert np.array_equal(read_mask(path, like=ct_volume)[0], mask)
    again = write_seg(
        mask, tmp_path / "dicom", tmp_path / "again.dcm", pathology="nodule", like=ct_volume, content_datetime=STAMP
    )
    assert again.read_bytes() == path.read_bytes()


def test_seg_on_another_grid_is_refused(tmp_path, ct_volume):
    write_dicom(ct_volume, tmp_path / "dicom", case_id="seg-1")
    elsewhere = Scan(ct_volume.array, _shifted(ct_volume.affine, 0.5), "CT")
    with pytest.raises(InputError, match="not the DICOM series's"):
        write_seg(_mask(ct_volume.shape), tmp_path / "dicom", tmp_path / "seg.dcm", pathology="nodule", like=elsewhere)
    assert not (tmp_path / "seg.dcm").exists()
