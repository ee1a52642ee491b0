"""Any output grid: shape and spacing checked against the downsampling and the trained fields of view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.models.fov import FieldOfView, check_fov
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling import Synthesizer
from medsynth.sampling.grid import nearest_valid, plan_grid


def _with_fov(model: LatentDiffusionModel, lo: list[float], hi: list[float]) -> LatentDiffusionModel:
    """The same networks with a recorded trained field of view (a shallow copy)."""
    other = LatentDiffusionModel.__new__(LatentDiffusionModel)
    other.__dict__.update(model.__dict__)
    other.config = dataclasses.replace(model.config, trained_fov={"min": lo, "max": hi})
    return other


def test_a_shape_the_downsampling_cannot_divide_names_the_nearest_valid_shapes(model2d):
    with pytest.raises(InputError) as err:
        plan_grid(model2d.config, (15, 16), allow_fov_extrapolation=True)
    msg = str(err.value)
    assert "downsampling factor 2" in msg and "[14, 16] or [16, 16]" in msg and "\n" not in msg
    assert nearest_valid((15, 16), 2) == [(14, 16), (16, 16)]
    assert nearest_valid((33, 8, 64), 8) == [(32, 8, 64), (40, 8, 64)]


@pytest.mark.parametrize(
    ("shape", "spacing", "expected"),
    [
        ((16, 16, 16, 16), None, "expected 3 values"),
        ((0, 16, 16), None, "positive integers"),
        (None, (2.5, -1.0, 2.5), "positive numbers"),
        ("16x16x16", None, "expected 3 values"),
    ],
)
def test_malformed_grids_are_one_line_errors(model3d, shape, spacing, expected):
    with pytest.raises(InputError, match=expected):
        plan_grid(model3d.config, shape, spacing)


def test_a_field_of_view_outside_the_trained_range_is_refused_unless_allowed(model2d):
    # The tiny model has no record: it knows its grid's field of view alone (16 x 2.5 = 40 mm).
    assert model2d.trained_fov == FieldOfView((40.0, 40.0), (40.0, 40.0))
    with pytest.raises(InputError) as err:
        Synthesizer(model2d, shape=(32, 32))
    msg = str(err.value)
    assert "80.0x80.0 mm is outside the 40.0x40.0 mm the model was trained on" in msg
    assert "allow_fov_extrapolation" in msg
    synth = Synthesizer(model2d, shape=(32, 32), allow_fov_extrapolation=True)
    assert synth.grid.fov_extrapolated
    scans = synth("nodule", "CT", num_samples=1, num_inference_steps=2, sampler="ddim")
    assert scans[0].shape == (32, 32) and scans[0].metadata["fov_extrapolated"] is True
    # Inside a recorded range: 24 x 2.5 = 60 mm lies within 30..60 mm.
    wide = _with_fov(model2d, [30.0, 30.0], [60.0, 60.0])
    inside = Synthesizer(wide, shape=(24, 24))
    assert not inside.grid.fov_extrapolated
    assert "fov_extrapolated" not in inside("normal", "MR", num_inference_steps=2, sampler="ddim")[0].metadata
    with pytest.raises(InputError, match="30.0x30.0 mm to 60.0x60.0 mm"):
        Synthesizer(wide, shape=(8, 8))


def test_check_fov_tolerates_rounding_only():
    trained = FieldOfView((350.0, 350.0), (350.0, 350.0))
    assert check_fov(trained, (349.0, 352.0), allow_extrapolation=False, where="x") is False
    with pytest.raises(InputError):
        check_fov(trained, (350.0, 360.0), allow_extrapolation=False, where="x")
    assert check_fov(trained, (350.0, 360.0), allow_extrapolation=True, where="x") is True


@pytest.mark.parametrize("dims", [2, 3])
def test_another_spacing_samples_the_same_field_of_view_at_the_model_spacing(dims, model2d, model3d):
    model = model2d if dims == 2 else model3d
    # 40 mm at 1.25 mm: the working grid is the model's (16 at 2.5 mm), resampled to 32 per axis.
    synth = Synthesizer(model, shape=(32,) * dims, spacing=(1.25,) * dims)
    assert synth.grid.work_shape == (16,) * dims and synth.grid.resampled
    assert synth.latent_shape == model.latent_shape
    fine = synth("nodule", "CT", num_samples=1, num_inference_steps=2, sampler="ddim", seed=3)[0]
    base = Synthesizer(model)("nodule", "CT", num_samples=1, num_inference_steps=2, sampler="ddim", seed=3)[0]
    assert fine.shape == (32,) * dims
    np.testing.assert_allclose(fine.spacing[:dims], (1.25,) * dims)
    # Both grids are centred at the origin and cover the same 40 mm.
    centre = lambda s: s.affine[:3, :3] @ ((np.asarray(s.shape + (1,) * (3 - dims), float) - 1) / 2) + s.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(fine)[:dims], centre(base)[:dims], atol=1e-6)
    # The fine scan is the base one linearly resampled: fine voxel i sits at base index
    # (i + 0.5) / 2 - 0.5 (checked with scipy, away from the border where air pads).
    idx = (np.arange(32) + 0.5) / 2 - 0.5
    points = np.stack(np.meshgrid(*([idx] * dims), indexing="ij"))
    expected = ndimage.map_coordinates(base.array[0].astype(np.float64), points, order=1)
    inner = (slice(0, 1),) + (slice(1, 31),) * dims
    np.testing.assert_allclose(fine.array[inner][0], expected[(slice(1, 31),) * dims], rtol=0, atol=1e-2)


def test_a_coarser_spacing_with_the_same_shape_of_array_still_needs_a_valid_working_grid(model2d):
    # 8 x 5 mm = 40 mm: sampled on 16 x 2.5 mm and resampled to 8 x 5 mm.
    synth = Synthesizer(model2d, shape=(8, 8), spacing=(5.0, 5.0))
    assert synth.grid.work_shape == (16, 16)
    scan = synth("normal", "CT", num_inference_steps=2, sampler="ddim")[0]
    assert scan.shape == (8, 8) and np.allclose(scan.spacing[:2], 5.0)
