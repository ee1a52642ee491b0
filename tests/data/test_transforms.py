"""Preprocessing: intensity normalisation, the model grid, and the direct resample onto it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.scan import Scan

INTENSITY = {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1200}}


def _pre(dims: int, size: int = 16, spacing: float = 4.0) -> Preprocessing:
    return Preprocessing(dims, (size,) * dims, (spacing,) * dims, INTENSITY, slice_thickness=5.0)


def test_intensity_round_trip_and_clipping():
    pre = _pre(2)
    hu = torch.tensor([-1000.0, -500.0, 0.0, 40.0, 1000.0, 3000.0, -2000.0])
    x = pre.normalise(hu, "CT")
    assert torch.allclose(x[:5], torch.tensor([-1.0, -0.5, 0.0, 0.04, 1.0]))
    assert x.max() == 1.0 and x.min() == -1.0  # out-of-window values clip
    back = pre.denormalise(x, "ct")
    assert torch.allclose(back[:5], hu[:5], atol=1e-3)
    assert back[5] == 1000.0 and back[6] == -1000.0
    assert torch.allclose(pre.normalise(torch.tensor([600.0]), "MR"), torch.tensor([0.0]))


@pytest.mark.parametrize("dims,codes", [(2, "PL"), (3, "SPL")])
def test_output_affine_is_canonical_and_centred(dims, codes):
    pre = Preprocessing(dims, (8,) * (dims - 1) + (12,), (2.0,) * (dims - 1) + (3.0,), INTENSITY, slice_thickness=5.0)
    aff = pre.output_affine()
    scan = Scan(np.zeros((1, *pre.size), np.float32), aff, "CT")
    assert scan.orientation == codes
    assert scan.spacing == pre.spacing
    centre = (np.asarray(pre.size) - 1) / 2
    idx = np.r_[centre, 0.0, 1.0] if dims == 2 else np.r_[centre, 1.0]
    assert np.allclose((aff @ idx)[:3], 0.0)
    if dims == 2:
        assert np.allclose(aff[:3, 2], [0, 0, 5.0])


@pytest.mark.parametrize("dims", [2, 3])
def test_scan_already_on_grid_is_unchanged(dims):
    pre = _pre(dims, size=8)
    rng = np.random.default_rng(0)
    arr = rng.uniform(-900, 900, (1,) + (8,) * dims).astype(np.float32)
    aff = pre.output_affine()
    aff[:3, 3] += [12.0, -30.0, 7.0]  # anywhere in space: the grid centres on the scan
    x = pre.to_model(Scan(arr, aff, "CT"))
    assert x.shape == (1,) + (8,) * dims and x.dtype == torch.float32
    assert torch.allclose(x, pre.normalise(torch.from_numpy(arr), "CT"), atol=1e-5)


def test_resample_follows_world_coordinates():
    # A 32x32 axial slice at 2 mm, stored RAS-ish (rows go anterior, columns go right) whose
    # value is its world x coordinate (mm). On the 16x16 grid at 4 mm every interior voxel must
    # hold the world x of its own centre.
    n, sp = 32, 2.0
    aff = np.array([[0, sp, 0, -31.0], [sp, 0, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1.0]])
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    world_x = aff[0, 0] * ii + aff[0, 1] * jj + aff[0, 3]
    scan = Scan(world_x[None].astype(np.float32), aff, "CT")
    pre = _pre(2, size=16, spacing=4.0)
    got = pre.denormalise(pre.to_model(scan), "CT")[0].numpy()
    centre_world = aff[:3, :2] @ np.array([(n - 1) / 2, (n - 1) / 2]) + aff[:3, 3]
    out_aff = pre.output_affine()
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    expected_x = out_aff[0, 0] * r + out_aff[0, 1] * c + out_aff[0, 3] + centre_world[0]
    assert np.allclose(got[1:-1, 1:-1], expected_x[1:-1, 1:-1], atol=1e-2)
    # model columns go to patient left (-x): x decreases along a row
    assert (np.diff(got[5, 1:-1]) < 0).all()


def test_orientation_of_storage_does_not_matter_3d():
    rng = np.random.default_rng(1)
    arr = rng.uniform(-800, 800, (1, 10, 12, 14)).astype(np.float32)
    aff = np.array([[0, 0, -2.0, 10.0], [0, -2.5, 0, 20.0], [3.0, 0, 0, -40.0], [0, 0, 0, 1.0]])  # SPL
    a = Scan(arr, aff, "CT")
    # Same physical image stored with axes reversed (LPS order) and the row axis flipped (-> LAS).
    arr_b = np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1))[:, :, ::-1, :])
    aff_b = aff[:, [2, 1, 0, 3]].copy()
    aff_b[:3, 3] += aff_b[:3, 1] * (arr_b.shape[2] - 1)
    aff_b[:3, 1] *= -1
    b = Scan(arr_b, aff_b, "CT")
    assert b.orientation == "LAS"
    pre = Preprocessing(3, (8, 8, 8), (3.0, 3.0, 3.0), INTENSITY)
    assert torch.allclose(pre.to_model(a), pre.to_model(b), atol=1e-5)


def test_outside_the_field_of_view_is_air():
    pre = _pre(2, size=16, spacing=4.0)  # 64 mm grid
    scan = Scan(np.zeros((1, 8, 8), np.float32), np.diag([-4.0, -4.0, 5.0, 1.0]), "CT")  # 32 mm of water
    x = pre.to_model(scan)[0]
    assert torch.all(x[:, :3] == -1.0) and torch.all(x[:3, :] == -1.0)
    assert torch.allclose(x[6:10, 6:10], torch.zeros(4, 4))


def test_from_model_gives_hu_on_the_model_grid():
    pre = _pre(3, size=8)
    x = torch.zeros(1, 8, 8, 8)
    x[0, 0] = 1.0
    scan = pre.from_model(x, "ct", pathology="nodule")
    assert scan.modality == "CT" and scan.metadata["pathology"] == "nodule"
    assert np.allclose(scan.affine, pre.output_affine())
    assert scan.array[0, 0].max() == 1000.0 and scan.array[0, 1].max() == 0.0


def test_bad_inputs_raise_input_errors():
    pre = _pre(2)
    with pytest.raises(InputError, match="'PET'.*known modalities"):
        pre.to_model(Scan(np.zeros((1, 4, 4), np.float32), np.eye(4), "PET"))
    coronal = np.array([[-1.0, 0, 0, 0], [0, 0, 5.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])
    with pytest.raises(InputError, match="not axial"):
        pre.to_model(Scan(np.zeros((1, 4, 4), np.float32), coronal, "CT"))
    with pytest.raises(InputError, match="3D but the model grid is 2D"):
        pre.to_model(Scan(np.zeros((1, 4, 4, 4), np.float32), np.eye(4), "CT"))
    with pytest.raises(InputError, match="kind"):
        Preprocessing(2, (8, 8), (1.0, 1.0), {"CT": {"kind": "log"}})
    with pytest.raises(InputError, match="hi > lo"):
        Preprocessing(2, (8, 8), (1.0, 1.0), {"CT": {"kind": "linear", "lo": 5, "hi": 5}})
    with pytest.raises(InputError, match="size"):
        Preprocessing(3, (8, 8), (1.0, 1.0, 1.0), INTENSITY)


def test_dict_round_trip():
    pre = _pre(3, size=12, spacing=2.5)
    again = Preprocessing.from_dict(pre.to_dict())
    assert again == pre
    with pytest.raises(InputError, match="unknown keys"):
        Preprocessing.from_dict({**pre.to_dict(), "flip": True})
