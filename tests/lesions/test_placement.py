"""Placement: inside the named region, the blend margin inside the body, uniform, deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medsynth.errors import InputError
from medsynth.lesions import Region, paste_mask, place, propose_mask, valid_offsets

GRIDS = {2: (48, 52), 3: (22, 24, 23)}


def _chest(dims: int, ellipsoid) -> Region:
    """A body ellipse and two 'lungs'; the right one is cut flat against the body outline."""
    shape = GRIDS[dims]
    c = [(n - 1) / 2 for n in shape]
    body = ellipsoid(shape, c, [0.45 * n for n in shape])
    offset = 0.22 * shape[-1]
    left = ellipsoid(shape, [*c[:-1], c[-1] - offset], [0.3 * n for n in shape[:-1]] + [0.15 * shape[-1]])
    right = ellipsoid(shape, [*c[:-1], c[-1] + offset], [0.3 * n for n in shape[:-1]] + [0.3 * shape[-1]])
    return Region("lungs", (left | right) & body, body, (1.0,) * dims)


@pytest.mark.parametrize("dims", [2, 3])
def test_two_hundred_placements_stay_inside_the_region_and_their_margin_inside_the_body(dims, ellipsoid, dilate_oracle):
    region = _chest(dims, ellipsoid)
    # the region reaches the body outline, so the margin rule is exercised, not vacuous
    assert (region.mask & dilate_oracle(~region.body, 1)).any()
    rng = np.random.default_rng(11)
    sizes = (3.0, 5.0, 8.0) if dims == 3 else (4.0, 8.0, 14.0)
    lesions = [
        propose_mask(rng, spacing=(1.0,) * dims, diameter_mm=d, spatial_dims=dims) for d in sizes for _ in range(3)
    ]
    seen = set()
    for i in range(200):
        lesion, margin = lesions[i % len(lesions)], i % 4
        offset = place(lesion, region, rng, margin=margin)
        full = paste_mask(region.mask.shape, lesion, offset)
        assert full.sum() == lesion.sum()  # all of it on the image
        assert (full <= region.mask).all()
        assert (dilate_oracle(np.pad(full, margin), margin) <= np.pad(region.body, margin)).all()
        seen.add(offset)
    assert len(seen) > 100  # spread over the region, not a fixed spot


@pytest.mark.parametrize("dims", [2, 3])
def test_valid_offsets_equal_a_brute_force_search(dims, blob, dilate_oracle):
    rng = np.random.default_rng(dims)
    for trial in range(12):
        shape = (14, 13) if dims == 2 else (9, 10, 8)
        body = blob(shape, rng, fill=0.8) | blob(shape, rng, fill=0.5)
        region = Region("r", blob(shape, rng, fill=0.5) & body, body)
        lesion = np.pad(rng.random((int(rng.integers(1, 4)),) * dims) < 0.7, 1)
        lesion[(1,) * dims] = True
        margin = trial % 3
        got = valid_offsets(lesion, region, margin=margin)
        expected = np.zeros(got.shape, bool)
        padded_body = np.pad(region.body, margin)  # off the image counts as outside the body
        for corner in itertools.product(*(range(n) for n in got.shape)):
            full = paste_mask(shape, lesion, corner)
            ring = dilate_oracle(np.pad(full, margin), margin)
            expected[corner] = (full <= region.mask).all() and (ring <= padded_body).all()
        assert np.array_equal(got, expected), f"trial {trial}: {got.sum()} fits found, {expected.sum()} expected"


def test_the_choice_is_uniform_over_valid_positions():
    area = np.zeros((12, 12), bool)
    area[3:6, 4:6] = True  # a 1-voxel lesion (crop 3x3) fits at exactly 3 x 2 corners
    lesion = np.pad(np.ones((1, 1), bool), 1)
    region = Region("small", area, np.ones_like(area))
    rng = np.random.default_rng(0)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(600):
        offset = place(lesion, region, rng, margin=1)
        counts[offset] = counts.get(offset, 0) + 1
    assert sorted(counts) == [(r, c) for r in (2, 3, 4) for c in (3, 4)]
    assert all(60 <= n <= 140 for n in counts.values()), counts  # 100 expected each


@pytest.mark.parametrize("dims", [2, 3])
def test_placement_is_deterministic_for_a_seed(dims, ellipsoid):
    region = _chest(dims, ellipsoid)
    lesion = propose_mask(np.random.default_rng(0), spacing=(1.0,) * dims, diameter_mm=5.0, spatial_dims=dims)

    def draws(seed: int) -> list[tuple[int, ...]]:
        rng = np.random.default_rng(seed)
        return [place(lesion, region, rng) for _ in range(10)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_an_impossible_placement_names_the_lesion_and_the_region(ellipsoid):
    region = _chest(2, ellipsoid)
    lesion = np.pad(np.ones((30, 30), bool), 1)
    with pytest.raises(
        InputError, match=r"32x32 voxels \(32x32 mm\).*3-voxel margin.*'lungs' \(\d+ voxels, extent \d+x\d+"
    ):
        place(lesion, region, np.random.default_rng(0))
    bigger_than_image = np.pad(np.ones((60, 60), bool), 1)
    with pytest.raises(InputError, match="no position fits"):
        place(bigger_than_image, region, np.random.default_rng(0))


def test_the_margin_alone_can_make_a_placement_impossible():
    body = np.zeros((20, 20), bool)
    body[5:12, 5:12] = True
    region = Region("body", body, body)
    lesion = np.pad(np.ones((3, 3), bool), 1)
    place(lesion, region, np.random.default_rng(0), margin=2)  # 7 = 3 + 2 * 2: fits, in the centre only
    with pytest.raises(InputError, match="no position fits"):
        place(lesion, region, np.random.default_rng(0), margin=3)


def test_paste_mask_refuses_crops_off_the_image():
    lesion = np.ones((3, 3), bool)
    assert paste_mask((5, 5), lesion, (2, 2))[2:, 2:].all()
    with pytest.raises(ValueError, match="does not fit"):
        paste_mask((5, 5), lesion, (3, 0))
    with pytest.raises(ValueError, match="does not fit"):
        paste_mask((5, 5), lesion, (-1, 0))
    with pytest.raises(ValueError, match="dimension"):
        paste_mask((5, 5, 5), lesion, (0, 0))
