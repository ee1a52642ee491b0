"""Lesion crops: one example per lesion, centred, at the model's spacing; augmentations drawn, then applied."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lesions.crops import (
    OUTSIDE,
    AugmentParams,
    augment,
    context_size,
    cut_box,
    draw_augment,
    examples_from_scan,
    lesion_examples,
)


def _scene(dims: int, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A flat -0.8 image with two cubic lesions of value 0.1: one inside, one touching the border."""
    image = np.full((1, *(size,) * dims), -0.8, np.float32)
    mask = np.zeros((size,) * dims, bool)
    mask[(slice(size // 2 - 2, size // 2 + 2),) * dims] = True
    mask[(slice(0, 3),) * dims] = True
    image[0][mask] = 0.1
    return image, mask


@pytest.mark.parametrize("dims", [2, 3])
def test_one_centred_example_per_lesion_padded_at_the_border(dims):
    image, mask = _scene(dims, 40 if dims == 2 else 24)
    crop = (16,) * dims if dims == 2 else (8,) * dims
    examples = lesion_examples(
        image,
        mask,
        (1.0,) * dims,
        pathology="nodule",
        modality="ct",
        target_spacing=(1.0,) * dims,
        crop_size=crop,
        margin=1,
    )
    assert len(examples) == 2
    ctx = context_size(crop)
    for ex in examples:
        assert ex.image.shape == (1, *ctx) and ex.mask.shape == ctx and ex.key == "nodule/CT"
        centre = np.argwhere(ex.mask).mean(0)
        assert np.all(np.abs(centre - (np.asarray(ctx) - 1) / 2) <= 1.0)
        assert np.all(ex.image[0][ex.mask] == np.float32(0.1))
    # labelled in raster order: the corner lesion first; its context reaches past the image and is padded
    assert (examples[0].image == OUTSIDE).any() and not (examples[1].image == OUTSIDE).any()


def test_examples_are_resampled_to_the_model_spacing():
    image, mask = _scene(2)
    [_, inner] = lesion_examples(
        image,
        mask,
        (1.0, 1.0),
        pathology="nodule",
        modality="CT",
        target_spacing=(0.5, 0.5),
        crop_size=(16, 16),
        margin=1,
    )
    assert inner.mask.sum() == pytest.approx(16 * 4, rel=0.2)  # 4x4 voxels of 1 mm -> 8x8 of 0.5 mm


def test_a_lesion_larger_than_the_crop_is_an_error_or_skipped():
    image, mask = _scene(2)
    kwargs = {"pathology": "mass", "modality": "CT", "target_spacing": (0.25, 0.25), "crop_size": (16, 16)}
    with pytest.raises(InputError, match="does not fit the lesion crop"):
        lesion_examples(image, mask, (1.0, 1.0), **kwargs)
    assert lesion_examples(image, mask, (1.0, 1.0), too_large="skip", **kwargs) == []


def test_a_lesion_smaller_than_a_model_voxel_keeps_its_best_covered_voxel():
    image = np.zeros((1, 40, 40), np.float32)
    mask = np.zeros((40, 40), bool)
    mask[20, 20] = True  # 1 mm^2 of a 25 mm^2 model voxel: linear resampling alone would lose it
    [ex] = lesion_examples(
        image, mask, (1.0, 1.0), pathology="nodule", modality="CT", target_spacing=(5.0, 5.0), crop_size=(16, 16)
    )
    assert 1 <= ex.mask.sum() <= 2


def test_examples_from_scan_normalise_with_the_preprocessing():
    image, mask = _scene(2)
    scan = Scan(image * 1000.0, np.diag([1.0, 1.0, 1.0, 1.0]), "CT", {"pathology": "nodule"})
    pre = Preprocessing(2, (40, 40), (1.0, 1.0), {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}})
    [_, ex] = examples_from_scan(scan, mask, pre, target_spacing=(1.0, 1.0), crop_size=(16, 16))
    assert ex.pathology == ("nodule",) and np.allclose(ex.image[0][ex.mask], 0.1, atol=1e-6)


def test_identity_augmentation_is_the_exact_centre_crop():
    image, mask = _scene(2)
    [_, ex] = lesion_examples(
        image, mask, (1.0, 1.0), pathology="nodule", modality="CT", target_spacing=(1.0, 1.0), crop_size=(16, 16)
    )
    crop, m = augment(ex, AugmentParams(), (16, 16))
    lo = (ex.mask.shape[0] - 16) // 2
    assert np.array_equal(m, ex.mask[lo : lo + 16, lo : lo + 16])
    assert np.allclose(crop, ex.image[:, lo : lo + 16, lo : lo + 16], atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_moves_image_and_mask_together_and_is_reproducible(dims):
    image, mask = _scene(dims, 40 if dims == 2 else 24)
    crop = (16,) * dims if dims == 2 else (8,) * dims
    [_, ex] = lesion_examples(
        image,
        mask,
        (1.0,) * dims,
        pathology="nodule",
        modality="CT",
        target_spacing=(1.0,) * dims,
        crop_size=crop,
        margin=1,
    )
    for seed in range(6):
        params = draw_augment(np.random.default_rng(seed), dims)
        assert params == draw_augment(np.random.default_rng(seed), dims)
        json.dumps(params.as_dict())  # recordable
        geometric = AugmentParams(params.flips, params.quarter_turns, params.turn_axes, params.angles, params.zoom)
        img, m = augment(ex, geometric, crop)
        # the image was 0.1 exactly on the lesion: after the same resample it is bright where the mask is
        bright = img[0] > (0.1 + -0.8) / 2
        assert (bright == m).mean() > 0.97
        again = augment(ex, params, crop)
        assert np.array_equal(again[0], augment(ex, params, crop)[0])


def test_zoom_enlarges_the_lesion_and_intensity_changes_only_the_image():
    image, mask = _scene(2)
    [_, ex] = lesion_examples(
        image, mask, (1.0, 1.0), pathology="nodule", modality="CT", target_spacing=(1.0, 1.0), crop_size=(16, 16)
    )
    small = augment(ex, AugmentParams(zoom=0.8), (16, 16))[1].sum()
    large = augment(ex, AugmentParams(zoom=1.25), (16, 16))[1].sum()
    assert small < ex.mask.sum() < large
    img, m = augment(ex, AugmentParams(scale=1.1, shift=0.02), (16, 16))
    assert np.array_equal(m, augment(ex, AugmentParams(), (16, 16))[1])
    assert np.allclose(img[0][m], 0.1 * 1.1 + 0.02, atol=1e-6)


def test_cut_box_pads_off_the_image():
    a = torch.arange(16.0).reshape(1, 4, 4).numpy()
    box, corner = cut_box(a, (0.0, 0.0), (3, 3), -5.0)
    assert corner == (-1, -1) and box[0, 0, 0] == -5.0 and box[0, 1, 1] == 0.0 and box[0, 2, 2] == 5.0
