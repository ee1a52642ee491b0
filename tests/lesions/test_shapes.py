"""Mask proposals: requested size, one component, tight crop, seeded, varied; the mask bank."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from medsynth.errors import InputError
from medsynth.lesions import MaskBank, diameter_of, draw_mask_params, propose_mask, render_mask


def _components(mask: np.ndarray) -> int:
    return int(ndi.label(mask)[1])  # face connectivity, the strictest


def _assert_tight_single(mask: np.ndarray) -> None:
    assert mask.dtype == bool and mask.any()
    assert _components(mask) == 1
    for axis in range(mask.ndim):
        m = np.moveaxis(mask, axis, 0)
        assert not m[0].any() and not m[-1].any(), "a 1-voxel empty border"
        assert m[1].any() and m[-2].any(), "cropped tight inside the border"


def _bank(dims: int, ellipsoid) -> MaskBank:
    """Awkward training lesions: an elongated ellipse/ellipsoid, an L, a C-shaped ring, a thin diagonal."""
    if dims == 2:
        ring = ellipsoid((21, 21), (10, 10), (9, 9)) & ~ellipsoid((21, 21), (10, 10), (5, 5))
        ring[8:13, 10:] = False  # open it: a C
        l_shape = np.zeros((12, 12), bool)
        l_shape[1:11, 1:4] = True
        l_shape[8:11, 1:11] = True
        diagonal = np.eye(12, dtype=bool) | np.eye(12, k=1, dtype=bool)
        ell = ellipsoid((30, 14), (14.5, 6.5), (13, 4))
        return MaskBank.from_masks([ring, l_shape, diagonal, ell], [(0.8, 0.8), (1.0, 1.0), (0.6, 0.6), (1.0, 2.0)])
    c_shape = np.zeros((11, 11, 11), bool)
    c_shape[2:9, 2:9, 2:4] = True
    c_shape[2:9, 2:4, 2:9] = True
    c_shape[2:9, 7:9, 2:9] = True
    rod = ellipsoid((15, 9, 9), (7, 4, 4), (6.5, 2.0, 1.5))
    return MaskBank.from_masks([c_shape, rod], [(1.0, 1.0, 1.0), (2.0, 0.8, 0.8)])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("spacing", [1.0, 2.5])
@pytest.mark.parametrize("source", ["generator", "bank"])
def test_requested_diameter_within_15_percent_connected_and_tight(dims, spacing, source, ellipsoid):
    bank = _bank(dims, ellipsoid) if source == "bank" else None
    sp = (spacing,) * dims
    rng = np.random.default_rng(100 * dims + int(spacing * 10))
    for diameter in (6.0, 9.0, 14.0, 20.0, 28.0):
        for _ in range(2 if dims == 3 and diameter > 20 else 3):
            mask = propose_mask(rng, spacing=sp, diameter_mm=diameter, spatial_dims=dims, bank=bank)
            _assert_tight_single(mask)
            got = diameter_of(mask, sp)
            assert abs(got / diameter - 1) <= 0.15, f"asked {diameter} mm, got {got:.2f} mm"


def test_anisotropic_target_spacing_keeps_the_size_in_mm():
    sp = (2.5, 0.7, 0.7)
    mask = propose_mask(np.random.default_rng(1), spacing=sp, diameter_mm=15.0, spatial_dims=3)
    _assert_tight_single(mask)
    assert abs(diameter_of(mask, sp) / 15.0 - 1) <= 0.15
    extent_mm = np.array(mask.shape) * sp  # roughly as deep as it is wide, not 3.6x deeper
    assert extent_mm.max() / extent_mm.min() < 2.5


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("source", ["generator", "bank"])
def test_deterministic_per_seed_and_different_across_seeds(dims, source, ellipsoid):
    bank = _bank(dims, ellipsoid) if source == "bank" else None
    kwargs = {"spacing": (1.0,) * dims, "diameter_mm": 10.0, "spatial_dims": dims, "bank": bank}
    a = propose_mask(np.random.default_rng(7), **kwargs)
    np.random.seed(0)  # the global generator must play no part
    b = propose_mask(np.random.default_rng(7), **kwargs)
    np.random.seed(1)
    assert np.array_equal(a, b)
    masks = [propose_mask(np.random.default_rng(seed), **kwargs) for seed in range(5)]
    distinct = {(m.shape, m.tobytes()) for m in masks}
    assert len(distinct) == 5


@pytest.mark.parametrize("dims", [2, 3])
def test_params_record_the_draw_and_render_reproduces_it(dims, ellipsoid):
    bank = _bank(dims, ellipsoid)
    for b in (None, bank):
        params = draw_mask_params(np.random.default_rng(3), spatial_dims=dims, bank=b)
        record = json.loads(json.dumps(params.as_dict()))
        assert record["spatial_dims"] == dims
        assert (record["bank_index"] is None) == (b is None)
        rotation = np.array(record["rotation"])
        assert np.allclose(rotation @ rotation.T, np.eye(dims)) and np.isclose(np.linalg.det(rotation), 1.0)
        direct = propose_mask(
            np.random.default_rng(3), spacing=(1.5,) * dims, diameter_mm=12.0, spatial_dims=dims, bank=b
        )
        rendered = render_mask(params, spacing=(1.5,) * dims, diameter_mm=12.0, bank=b)
        assert np.array_equal(direct, rendered)
        # params are independent of the spacing and the size: a rendering of the same draw elsewhere
        assert render_mask(params, spacing=(0.5,) * dims, diameter_mm=12.0, bank=b).sum() > rendered.sum()
        no_elastic = draw_mask_params(np.random.default_rng(3), spatial_dims=dims, bank=b, elastic=False)
        assert no_elastic.elastic == () and len(params.elastic) == dims * 5**dims


@pytest.mark.parametrize("dims", [2, 3])
def test_bank_masks_rotated_and_scaled_stay_one_component(dims, ellipsoid):
    bank = _bank(dims, ellipsoid)
    rng = np.random.default_rng(5)
    for i in range(24 if dims == 2 else 10):
        diameter = float(rng.uniform(5.0, 28.0 if dims == 2 else 16.0))
        sp = (float(rng.choice([0.6, 1.0, 2.5])),) * dims
        mask = propose_mask(rng, spacing=sp, diameter_mm=diameter, spatial_dims=dims, bank=bank)
        _assert_tight_single(mask)
        assert abs(diameter_of(mask, sp) / diameter - 1) <= 0.15, (i, diameter, sp)


def test_rotation_takes_any_angle_in_2d(ellipsoid):
    """An elongated bank lesion comes out with its long axis in every direction."""
    bank = MaskBank.from_masks([ellipsoid((31, 11), (15, 5), (14, 4))], [(1.0, 1.0)])
    angles = []
    for seed in range(40):
        mask = propose_mask(
            np.random.default_rng(seed), spacing=(1.0, 1.0), diameter_mm=20.0, spatial_dims=2, bank=bank, elastic=False
        )
        pts = np.argwhere(mask) - np.argwhere(mask).mean(axis=0)
        _, vecs = np.linalg.eigh(pts.T @ pts)
        angles.append(np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1])) % 180)
    counts, _ = np.histogram(angles, bins=6, range=(0, 180))
    assert (counts > 0).all(), counts


def test_rotation_is_random_in_3d(ellipsoid):
    bank = MaskBank.from_masks([ellipsoid((21, 9, 9), (10, 4, 4), (9.5, 3, 3))], [(1.0,) * 3])
    axes = []
    for seed in range(20):
        mask = propose_mask(
            np.random.default_rng(seed), spacing=(1.0,) * 3, diameter_mm=12.0, spatial_dims=3, bank=bank, elastic=False
        )
        pts = np.argwhere(mask) - np.argwhere(mask).mean(axis=0)
        axes.append(np.abs(np.linalg.eigh(pts.T @ pts)[1][:, -1]))
    axes = np.array(axes)
    # the long axis leans towards each array axis in some draws
    assert (axes.max(axis=0) > 0.8).all(), axes.max(axis=0)


def test_elastic_deformation_is_mild_and_changes_the_shape():
    kwargs = {"spacing": (1.0, 1.0), "diameter_mm": 20.0, "spatial_dims": 2}
    rigid = draw_mask_params(np.random.default_rng(2), spatial_dims=2, elastic=False)
    with_elastic = draw_mask_params(np.random.default_rng(2), spatial_dims=2)
    assert with_elastic.rotation == rigid.rotation and with_elastic.axes == rigid.axes
    a = render_mask(rigid, spacing=kwargs["spacing"], diameter_mm=20.0)
    b = render_mask(with_elastic, spacing=kwargs["spacing"], diameter_mm=20.0)
    shape = np.maximum(a.shape, b.shape)
    pa = np.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)])
    pb = np.pad(b, [(0, s - n) for s, n in zip(shape, b.shape)])
    # centre both by their centroids before comparing
    shift = np.round(ndi.center_of_mass(pa)).astype(int) - np.round(ndi.center_of_mass(pb)).astype(int)
    pb = np.roll(pb, tuple(shift), axis=(0, 1))
    overlap = 2 * (pa & pb).sum() / (pa.sum() + pb.sum())
    assert 0.8 < overlap < 1.0


def test_mask_bank_splits_label_maps_into_connected_lesions():
    label_map = np.zeros((1, 20, 20), np.uint8)  # with a channel axis
    label_map[0, 2:5, 2:6] = 1
    label_map[0, 10:15, 12:14] = 2
    label_map[0, 16, 16] = 1
    label_map[0, 17, 17] = 1  # touches the one above only at a corner: a separate lesion by faces
    volume = np.zeros((6, 7, 8), np.int16)
    bank = MaskBank.from_masks([label_map], [(0.7, 0.7)])
    assert len(bank) == 4 and bank.spatial_dims == 2
    assert sorted(int(m.sum()) for m in bank.masks) == [1, 1, 10, 12]
    for m in bank.masks:
        _assert_tight_single(m)
    assert bank.spacings == ((0.7, 0.7),) * 4
    volume[1:3, 1:4, 2:6] = 5
    assert MaskBank.from_masks([volume], [(2.0, 1.0, 1.0)]).masks[0].shape == (4, 5, 6)


def test_mask_bank_errors():
    with pytest.raises(InputError, match="no lesion"):
        MaskBank.from_masks([np.zeros((5, 5))], [(1.0, 1.0)])
    with pytest.raises(InputError, match="spacing"):
        MaskBank.from_masks([np.ones((5, 5))], [(1.0,)])
    with pytest.raises(InputError, match="all be 2D or all 3D"):
        MaskBank.from_masks([np.ones((3, 3)), np.ones((3, 3, 3))], [(1.0, 1.0), (1.0, 1.0, 1.0)])
    with pytest.raises(InputError, match="3D"):
        propose_mask(
            np.random.default_rng(0),
            spacing=(1.0, 1.0),
            diameter_mm=5.0,
            spatial_dims=2,
            bank=MaskBank.from_masks([np.ones((3, 3, 3))], [(1.0, 1.0, 1.0)]),
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims=4"),
        ({"diameter_mm": 0.0}, "diameter_mm=0.0"),
        ({"diameter_mm": float("nan")}, "diameter_mm=nan"),
        ({"spacing": (1.0,)}, "spacing"),
        ({"spacing": (1.0, -1.0)}, "spacing"),
    ],
)
def test_propose_mask_argument_errors(kwargs, match):
    args = {"spacing": (1.0, 1.0), "diameter_mm": 8.0, "spatial_dims": 2, **kwargs}
    with pytest.raises(InputError, match=match):
        propose_mask(np.random.default_rng(0), **args)


def test_diameter_of():
    assert diameter_of(np.ones((2, 2), bool), (1.0, 1.0)) == pytest.approx(np.sqrt(16 / np.pi))
    assert diameter_of(np.ones((1, 1, 1), bool), (2.0, 2.0, 2.0)) == pytest.approx((6 * 8 / np.pi) ** (1 / 3))
