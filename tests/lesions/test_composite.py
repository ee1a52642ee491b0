"""Compositing: the background is untouched beyond the margin, bit for bit; the lesion fills the mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medsynth.errors import InputError
from medsynth.lesions import MAX_MARGIN, blend_weight, composite, resample_to

SHAPES = {2: (24, 26), 3: (12, 14, 13)}
SPACINGS = {2: [None, (0.7, 0.7), (2.0, 0.5)], 3: [None, (1.0, 1.0, 1.0), (2.5, 0.7, 0.8)]}


def _case(dims: int, channels: int, seed: int, blob):
    rng = np.random.default_rng(seed)
    shape = SHAPES[dims]
    background = (rng.standard_normal((channels, *shape)) * 300).astype(np.float32)
    lesion = (rng.standard_normal((channels, *shape)) * 300 + 50).astype(np.float32)
    return background, lesion, blob(shape, rng, fill=0.08)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("margin", [0, 1, 2, 3])
@pytest.mark.parametrize("channels", [1, 2])
def test_outside_the_margin_is_the_background_bit_for_bit(dims, margin, channels, blob, dilate_oracle):
    for seed, spacing in enumerate(SPACINGS[dims]):
        background, lesion, mask = _case(dims, channels, seed, blob)
        before = background.copy()
        out = composite(background, lesion, mask, margin=margin, spacing=spacing)
        outside = ~dilate_oracle(mask, margin)
        assert outside.sum() > 0.5 * mask.size
        # bit patterns, not values: -0.0 == 0.0 and a recomputed blend with weight 0 could pass ==
        assert np.array_equal(out[:, outside].view(np.uint32), background[:, outside].view(np.uint32))
        assert np.array_equal(out[:, mask].view(np.uint32), lesion[:, mask].view(np.uint32))
        assert out.dtype == background.dtype and out.shape == background.shape
        assert np.array_equal(background, before), "composite must not write into the background"
        band = ~outside & ~mask
        if margin > 0:
            # the band is a blend: between the two sources voxel by voxel, and not all background
            lo, hi = np.minimum(background, lesion)[:, band], np.maximum(background, lesion)[:, band]
            assert ((out[:, band] >= lo - 1e-3) & (out[:, band] <= hi + 1e-3)).all()
            assert (out[:, band] != background[:, band]).any()


def test_special_values_beyond_the_margin_survive(blob):
    # A blend computed everywhere (w * lesion + (1 - w) * background with w = 0) changes each of
    # these: -0.0 becomes 0.0, and an infinite lesion value turns the background into NaN.
    background, lesion, mask = _case(2, 1, 5, blob)
    far = ~ndi.binary_dilation(mask, iterations=6)
    background[0][far] = np.resize(np.array([-0.0, np.nan, np.inf, 1e-42], np.float32), int(far.sum()))
    lesion[0][far] = np.inf
    out = composite(background, lesion, mask, margin=3)
    assert np.array_equal(out[:, far].view(np.uint32), background[:, far].view(np.uint32))


def test_mask_with_a_channel_axis_is_accepted(blob):
    background, lesion, mask = _case(3, 1, 1, blob)
    assert np.array_equal(composite(background, lesion, mask[None]), composite(background, lesion, mask))


def test_shape_mismatches_are_refused(blob):
    background, lesion, mask = _case(2, 1, 0, blob)
    with pytest.raises(ValueError, match="lesion shape"):
        composite(background, lesion[:, :-1], mask)
    with pytest.raises(ValueError, match="mask shape"):
        composite(background, lesion, mask[:-1])


@pytest.mark.parametrize("margin", [4, -1, 2.5, True, "2"])
def test_margins_outside_0_to_3_are_refused(margin, blob):
    background, lesion, mask = _case(2, 1, 0, blob)
    with pytest.raises(InputError, match=rf"margin={margin!r}.*0 to {MAX_MARGIN}"):
        composite(background, lesion, mask, margin=margin)
    with pytest.raises(InputError, match="margin"):
        blend_weight(mask, margin)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("margin", [0, 1, 2, 3])
def test_blend_weight_is_one_in_the_mask_and_falls_monotonically_to_zero(dims, margin, blob):
    for seed, spacing in enumerate(SPACINGS[dims]):
        mask = blob(SHAPES[dims], np.random.default_rng(seed), fill=0.1)
        w = blend_weight(mask, margin, spacing)
        assert w.dtype == np.float32 and w.shape == mask.shape
        assert (w >= 0).all() and (w <= 1).all()
        assert (w[mask] == 1).all()
        d = ndi.distance_transform_edt(~mask, sampling=spacing)  # mm (or voxels)
        d_vox = ndi.distance_transform_edt(~mask)
        assert (w[d_vox > margin] == 0).all()
        # monotone: sorted by distance from the mask, the weight never rises
        order = np.argsort(d[~mask], kind="stable")
        assert (np.diff(w[~mask][order]) <= 1e-7).all()
        if margin > 0:
            # one voxel out along the finest axis is blended, neither lesion nor background
            finest = (d_vox == 1) & (d <= min(spacing or (1.0,)) + 1e-9)
            assert finest.any() and ((w[finest] > 0) & (w[finest] < 1)).all()
        else:
            assert not w[~mask].any()


def test_blend_weight_of_an_empty_mask_is_zero():
    assert not blend_weight(np.zeros((5, 6), bool), 3).any()


def test_resample_to_keeps_the_physical_extent():
    crop = np.random.default_rng(0).random((1, 6, 8, 10)).astype(np.float32)
    out = resample_to(crop, (1.0, 1.0, 1.0), (2.0, 0.5, 1.0))
    assert out.shape == (1, 3, 16, 10) and out.dtype == np.float32
    assert np.allclose(resample_to(crop, (1.0,) * 3, (1.0,) * 3), crop)


def test_resample_to_exact_shape_and_masks(ellipsoid):
    mask = ellipsoid((20, 20), (9.5, 9.5), (6.0, 4.0))
    half = resample_to(mask, (0.5, 0.5), (1.0, 1.0))
    assert half.dtype == bool and half.shape == (10, 10)
    assert abs(half.sum() * 4 - mask.sum()) <= 0.15 * mask.sum()  # same area in mm^2
    assert resample_to(mask, (0.5, 0.5), (1.0, 1.0), shape=(11, 9)).shape == (11, 9)
    doubled = resample_to(mask, (1.0, 1.0), (0.5, 0.5), order=0)
    assert np.array_equal(doubled, np.kron(mask, np.ones((2, 2), bool)))
    with pytest.raises(ValueError, match="spacings"):
        resample_to(mask, (1.0,), (1.0, 1.0))
