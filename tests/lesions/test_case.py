"""One case by insertion (``lesions.case.insert_case``): seeded, inside the region, background kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.phantoms import make_phantom
from medsynth.errors import InputError
from medsynth.lesions.case import insert_case
from medsynth.lesions.model import LesionModel, LesionModelConfig
from medsynth.lesions.morphology import dilate
from medsynth.lesions.regions import lung_mask
from medsynth.lesions.shapes import diameter_of

INTENSITY = {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1100}}
UNET = {
    "channels": [8, 16],
    "attention_levels": [False, True],
    "num_head_channels": 8,
    "norm_num_groups": 4,
    "num_res_blocks": 1,
}


def _model(dims: int) -> LesionModel:
    torch.manual_seed(0)
    crop = [16, 16] if dims == 2 else [8, 8, 8]
    spacing = [6.0] * dims if dims == 2 else [12.0] * dims
    cfg = LesionModelConfig(
        spatial_dims=dims,
        crop_size=crop,
        spacing=spacing,
        pathologies=["nodule"],
        modalities=["CT", "MR"],
        intensity=INTENSITY,
        unet=UNET,
        cond_dim=8,
        margin=1,
    )
    return LesionModel(cfg).eval()


@pytest.mark.parametrize("dims, size", [(2, 64), (3, 32)])
def test_a_case_is_seeded_lies_in_the_lungs_and_keeps_the_background(dims, size):
    model = _model(dims)
    bg = make_phantom(dim=dims, pathologies="normal", modality="CT", seed=3, size=size)
    kw = {"seed": 11, "size_mm": (20.0, 28.0), "steps": 2}
    a, b = insert_case(model, bg, "nodule", **kw), insert_case(model, bg, "nodule", **kw)
    assert np.array_equal(a.scan.array, b.scan.array) and np.array_equal(a.mask, b.mask)
    assert a.region == "lungs" and a.mask.any()
    assert (a.mask <= lung_mask(bg)).all()  # inside the region the scan itself defines
    assert 12.0 <= a.diameter_mm == diameter_of(a.mask, bg.spacing) <= 40.0
    outside = ~dilate(a.mask, 2)
    assert np.array_equal(a.scan.array[0][outside], bg.array[0][outside])
    assert a.scan.shape == bg.shape and np.allclose(a.scan.affine, bg.affine)
    other = insert_case(model, bg, "nodule", **{**kw, "seed": 12})
    assert not np.array_equal(other.mask, a.mask)
    assert a.record()["centre_voxel"] == list(a.centre_voxel)


def test_a_size_that_fits_nowhere_is_a_one_line_error():
    bg = make_phantom(dim=2, pathologies="normal", modality="CT", seed=3, size=64)
    with pytest.raises(InputError, match="no lesion of 300-320 mm fits region 'lungs'") as err:
        insert_case(_model(2), bg, "nodule", seed=1, size_mm=(300, 320), steps=2, what="row 4")
    assert "\n" not in str(err.value) and str(err.value).startswith("row 4")
