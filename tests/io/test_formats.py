"""The format registry: one entry per format, used by read_scan/write_scan; clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.errors import InputError
from medsynth.io import FORMATS as FORMAT_NAMES
from medsynth.io import detect_format, read_scan, write_scan
from medsynth.io.formats import FORMATS, PREFERENCE, format_names, get_format, preferred_format
from medsynth.io.scan import Scan


@pytest.fixture
def ct_slice() -> Scan:
    """A tiny axial CT slice with whole-HU values, which NIfTI and DICOM store exactly."""
    affine = np.diag([0.8, 0.6, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    array = np.arange(20, dtype=np.float32).reshape(1, 4, 5) * 37.0 - 400.0
    return Scan(array, affine, "CT")


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_round_trips_a_2d_scan_through_its_output_path(tmp_path, ct_slice, name):
    fmt = get_format(name)
    dest = fmt.output_file(tmp_path, "case-1")
    dest.parent.mkdir(parents=True)
    assert dest.parent.name == fmt.folder
    written = write_scan(ct_slice, dest, name, case_id="case-1")
    assert written == dest
    assert detect_format(written) == name
    back = read_scan(written, modality="CT")
    assert back.spatial_dims == 2 and back.array.size == ct_slice.array.size
    if fmt.holds_3d:  # NIfTI and DICOM keep values and geometry; PNG is a windowed preview
        np.testing.assert_array_equal(back.array, ct_slice.array)
        # The in-plane axes and the origin; the sign of a 2D slice normal is the format's to choose.
        np.testing.assert_allclose(back.affine[:3, [0, 1, 3]], ct_slice.affine[:3, [0, 1, 3]], atol=1e-5)


def test_registry_names_order_and_layout():
    assert format_names() == PREFERENCE == FORMAT_NAMES == ("nifti", "dicom", "png")
    assert {n: f.output_path for n, f in FORMATS.items()} == {
        "nifti": "nifti/{case_id}.nii.gz",
        "dicom": "dicom/{case_id}",
        "png": "png/{case_id}.png",
    }
    assert [n for n, f in FORMATS.items() if not f.holds_3d] == ["png"]
    assert preferred_format(["png", "dicom"]) == "dicom"
    assert preferred_format({"png", "nifti", "dicom"}) == "nifti"
    assert preferred_format([]) is None


def test_unknown_format_names_the_value_and_the_allowed_names():
    with pytest.raises(InputError, match=r"'jpeg2'.*nifti, dicom, png"):
        get_format("jpeg2")
