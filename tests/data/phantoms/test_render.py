"""Built-in chest phantoms, one at a time: geometry, tissue values, noise, lesions and bad arguments.

The anatomy (``phantoms.anatomy``), the lesions (``phantoms.lesions``) and the rendering
(``phantoms.render``) are tested together through ``make_phantom`` and ``phantom_labels``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsynth.data.phantoms import (
    FOV_MM,
    MODALITIES,
    PATHOLOGIES,
    TISSUE_NAMES,
    make_phantom,
    parse_pathologies,
    phantom_labels,
)
from medsynth.errors import InputError

T = {name: i for i, name in enumerate(TISSUE_NAMES)}


def _mask(labels: np.ndarray, *names: str) -> np.ndarray:
    return np.isin(labels, [T[n] for n in names])


def _centroid_ras(scan, mask: np.ndarray) -> np.ndarray:
    """Patient (RAS) position of a mask's centroid through the scan's affine."""
    idx = np.argwhere(mask[0]).mean(0)
    ijk = np.r_[idx, 0.0, 1.0] if scan.spatial_dims == 2 else np.r_[idx, 1.0]
    return (scan.affine @ ijk)[:3]


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("dim,size", [(2, 64), (2, 48), (3, 32)])
def test_shape_dtype_spacing_and_metadata(dim: int, size: int) -> None:
    scan = make_phantom(dim=dim, pathologies="nodule", modality="MR", seed=5, size=size)
    assert scan.array.shape == (1,) + (size,) * dim
    assert scan.array.dtype == np.float32
    assert scan.modality == "MR"
    sp = FOV_MM / size
    assert scan.spacing == pytest.approx((sp,) * dim)
    assert scan.slice_thickness == pytest.approx(sp)
    assert scan.orientation == ("SPL" if dim == 3 else "PL")
    assert scan.metadata["source_format"] == "phantom"
    assert scan.metadata["pathology"] == "nodule"
    assert scan.metadata["seed"] == 5


def test_affine_axes_follow_the_radiological_convention() -> None:
    sp = FOV_MM / 64
    s2 = make_phantom(dim=2, seed=1)
    # rows run posterior (-y), columns to the patient's left (-x), third column +z * thickness
    np.testing.assert_allclose(s2.affine[:3, :3], [[0, -sp, 0], [-sp, 0, 0], [0, 0, sp]])
    s3 = make_phantom(dim=3, seed=1, size=32)
    sp3 = FOV_MM / 32
    np.testing.assert_allclose(s3.affine[:3, :3], [[0, 0, -sp3], [0, -sp3, 0], [sp3, 0, 0]])
    # the field of view is centred in-plane on the origin
    centre = s3.affine @ np.r_[15.5, 15.5, 15.5, 1.0]
    np.testing.assert_allclose(centre[:2], [0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_anatomy_sits_where_the_affine_says(dim: int) -> None:
    """Heart to the patient's left and anterior of the spine; spine posterior; both in RAS."""
    for seed in range(3):
        scan = make_phantom(dim=dim, seed=seed, size=64 if dim == 2 else 32)
        lab = phantom_labels(dim=dim, seed=seed, size=64 if dim == 2 else 32)
        if dim == 2 and not _mask(lab, "myocardium").any():
            continue  # a slice above the heart
        heart = _centroid_ras(scan, _mask(lab, "myocardium"))
        spine = _centroid_ras(scan, _mask(lab, "marrow", "cortex", "disc"))
        assert heart[0] < -5.0, "heart centroid should be on the patient's left (x < 0 in RAS)"
        assert spine[1] < -40.0, "the spine is posterior (y < 0 in RAS)"
        assert heart[1] > spine[1] + 50.0
        assert abs(spine[0]) < 20.0
    if dim == 3:  # lungs above the liver: +z of the affine is superior
        liver = _centroid_ras(scan, _mask(lab, "liver"))
        lung = _centroid_ras(scan, _mask(lab, "lung"))
        assert lung[2] > liver[2] + 80.0
        assert liver[0] > 0.0, "the liver is on the patient's right"


# --------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("dim", [2, 3])
def test_ct_hounsfield_units_by_tissue(dim: int) -> None:
    size = 64 if dim == 2 else 32
    for seed in range(4):
        ct = make_phantom(dim=dim, modality="CT", seed=seed, size=size).array
        lab = phantom_labels(dim=dim, seed=seed, size=size)
        assert ct[_mask(lab, "lung")].mean() < -700
        assert ct[_mask(lab, "bone", "cortex", "marrow")].mean() > 300
        assert ct[_mask(lab, "air")].mean() < -950
        assert -140 < np.median(ct[_mask(lab, "fat")]) < -60
        assert 20 < np.median(ct[_mask(lab, "muscle")]) < 70
        assert ct.min() >= -1024 and ct.max() < 3072


def test_ct_noise_is_realistic_and_slightly_correlated() -> None:
    ct = make_phantom(dim=2, modality="CT", seed=3, size=128).array[0]
    inner = ndimage.binary_erosion(phantom_labels(dim=2, seed=3, size=128)[0] == T["muscle"], iterations=2)
    values = ct[inner] - np.median(ct[inner])
    sigma = 1.4826 * np.median(np.abs(values))  # robust to the odd partial-volume rib pixel
    assert 8.0 < sigma < 25.0
    right = np.roll(inner, -1, axis=1) & inner  # pixels whose right neighbour is also inside
    a, b = ct[right], ct[np.roll(right, 1, axis=1)]
    corr = np.corrcoef(a - a.mean(), b - b.mean())[0, 1]
    assert 0.1 < corr < 0.9


def test_mr_range_rician_background_and_t2_contrast() -> None:
    mr = make_phantom(dim=2, pathologies="effusion", modality="MR", seed=2, size=128).array
    lab = phantom_labels(dim=2, pathologies="effusion", seed=2, size=128)
    assert mr.min() >= 0.0 and mr.max() < 1300.0
    bg = mr[0][ndimage.binary_erosion(lab[0] == T["air"], iterations=3)]
    # magnitude of complex Gaussian noise on zero signal is Rayleigh: mean/std = 1.91
    assert 10.0 < bg.mean() < 40.0
    assert 1.6 < bg.mean() / bg.std() < 2.2
    # T2-like: fluid bright, fat bright, muscle dark, lung black
    effusion, fat = np.median(mr[lab == T["effusion"]]), np.median(mr[lab == T["fat"]])
    muscle, lung = np.median(mr[lab == T["muscle"]]), np.median(mr[lab == T["lung"]])
    assert effusion > fat > muscle > lung
    assert effusion > 700 and lung < 120


def test_mr_has_a_smooth_bias_field() -> None:
    """Fat of one subject varies slowly across the body (multiplicative bias), more than noise."""
    mr = make_phantom(dim=2, modality="MR", seed=4, size=128).array[0]
    fat = ndimage.binary_erosion(phantom_labels(dim=2, seed=4, size=128)[0] == T["fat"], iterations=1)
    rows, cols = np.nonzero(fat)
    left, right = mr[rows[cols < 64], cols[cols < 64]], mr[rows[cols >= 64], cols[cols >= 64]]
    assert abs(np.median(left) - np.median(right)) > 5.0
    assert 450 < np.median(mr[fat]) < 800


# --------------------------------------------------------------------------- determinism


def test_deterministic_given_seed_and_different_across_seeds() -> None:
    a = make_phantom(dim=2, pathologies="mass", modality="CT", seed=11)
    b = make_phantom(dim=2, pathologies="mass", modality="CT", seed=11)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)
    la, lb = phantom_labels(dim=2, seed=11), phantom_labels(dim=2, seed=12)
    assert (la != lb).mean() > 0.05, "different subjects should have different anatomy"
    lung_a, lung_b = (la == T["lung"]).sum(), (lb == T["lung"]).sum()
    assert lung_a != lung_b


def test_same_subject_in_ct_and_mr_has_the_same_anatomy() -> None:
    ct = make_phantom(dim=2, modality="CT", seed=8).array
    mr = make_phantom(dim=2, modality="MR", seed=8).array
    lab = phantom_labels(dim=2, seed=8)
    lung = lab == T["lung"]
    assert ct[lung].mean() < -700 and mr[lung].mean() < 120  # the same voxels are lung in both


# --------------------------------------------------------------------------- lesions


def test_nodule_is_local_and_inside_the_lungs() -> None:
    for seed in range(6):
        normal = make_phantom(dim=2, pathologies="normal", seed=seed).array
        nodule = make_phantom(dim=2, pathologies="nodule", seed=seed).array
        lab = phantom_labels(dim=2, seed=seed)
        diff = np.abs(nodule - normal) > 1e-3
        assert 2 <= diff.sum() < 60
        rows, cols = np.nonzero(diff[0])
        assert (np.ptp(rows) + 1) * FOV_MM / 64 < 40 and (np.ptp(cols) + 1) * FOV_MM / 64 < 40
        # every changed pixel was lung (or a pulmonary vessel within the lung) in the normal twin
        assert _mask(lab, "lung", "blood")[diff].all()
        assert (lab[diff] == T["lung"]).mean() > 0.6
        assert nodule[diff].max() > -300  # solid: soft-tissue density in its core


def test_mass_is_larger_and_replaces_lung() -> None:
    for seed in range(6):
        normal = make_phantom(dim=2, seed=seed).array
        mass = make_phantom(dim=2, pathologies="mass", seed=seed).array
        lab_n = phantom_labels(dim=2, seed=seed)
        lab_m = phantom_labels(dim=2, pathologies="mass", seed=seed)
        diff = np.abs(mass - normal) > 1e-3
        region = _mask(lab_m, "mass", "necrosis")
        assert region.sum() > 15  # > ~450 mm^2 at 5.5 mm pixels, larger than any nodule
        # hilar masses also fill mediastinum; at least ~300 mm^2 of each mass replaces lung
        assert (lab_n[region] == T["lung"]).sum() >= 10
        rows, cols = np.nonzero(diff[0])
        assert (np.ptp(rows) + 1) * FOV_MM / 64 < 140 and (np.ptp(cols) + 1) * FOV_MM / 64 < 140


def test_effusion_is_a_dependent_fluid_layer() -> None:
    for seed in range(6):
        ct = make_phantom(dim=2, pathologies="effusion", seed=seed)
        lab = phantom_labels(dim=2, pathologies="effusion", seed=seed)
        fluid = lab == T["effusion"]
        lung = phantom_labels(dim=2, seed=seed) == T["lung"]
        assert fluid.sum() > 20
        assert lung[fluid].mean() > 0.9  # it fills lung space
        # dependent: the fluid is in the posterior part of the lung fields (higher row index)
        fluid_y, lung_y = _centroid_ras(ct, fluid)[1], _centroid_ras(ct, lung)[1]
        assert fluid_y < lung_y - 20.0
        assert 0.0 < np.median(ct.array[fluid]) < 35.0  # CT ~10-20 HU (plus noise)


@pytest.mark.parametrize("pathology,min_pixels", [("nodule", 3), ("mass", 20), ("effusion", 20)])
def test_every_2d_phantom_shows_its_lesion(pathology: str, min_pixels: int) -> None:
    counts = [int((phantom_labels(dim=2, pathologies=pathology, seed=s) == T[pathology]).sum()) for s in range(40)]
    assert min(counts) >= min_pixels, counts


def test_lesions_are_3d_blobs() -> None:
    normal = make_phantom(dim=3, seed=2, size=48).array
    nodule = make_phantom(dim=3, pathologies="nodule", seed=2, size=48).array
    diff = np.abs(nodule - normal)[0] > 1e-3
    slices = np.nonzero(diff.any(axis=(1, 2)))[0]
    assert 2 <= len(slices) <= 8  # 12-24 mm across at 7.3 mm slices
    lab = phantom_labels(dim=3, pathologies="effusion", seed=2, size=48)[0]
    fluid_slices = np.nonzero((lab == T["effusion"]).any(axis=(1, 2)))[0]
    assert len(fluid_slices) >= 5
    # deeper at the base: more fluid in the lowest fluid slices than in the highest ones
    per_slice = (lab == T["effusion"]).sum(axis=(1, 2))[fluid_slices]
    assert per_slice[:2].sum() > per_slice[-2:].sum()


def test_several_pathologies_combine_and_keep_their_lesions() -> None:
    both = phantom_labels(dim=2, pathologies=["effusion", "nodule"], seed=9)
    nod = phantom_labels(dim=2, pathologies="nodule", seed=9)
    eff = phantom_labels(dim=2, pathologies="effusion", seed=9)
    assert ((both == T["nodule"]) == (nod == T["nodule"])).mean() > 0.999
    # the fluid is still all there, except where the nodule sits in it
    fluid = eff == T["effusion"]
    assert (_mask(both, "effusion", "nodule")[fluid]).all()
    scan = make_phantom(dim=2, pathologies="nodule|effusion", seed=9)
    assert scan.metadata["pathology"] == "effusion|nodule"  # sorted, as the catalog stores it


def test_parse_pathologies() -> None:
    assert parse_pathologies("normal") == ("normal",)
    assert parse_pathologies(["nodule", "mass"]) == ("mass", "nodule")
    assert set(PATHOLOGIES) == {"normal", "nodule", "mass", "effusion", "pneumothorax"} and MODALITIES == ("CT", "MR")
    assert parse_pathologies("pneumothorax|effusion") == ("effusion", "pneumothorax")


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"pathologies": "pneumonia"}, "pneumonia"),
        ({"pathologies": "normal|nodule"}, "normal"),
        ({"pathologies": ["mass", "mass"]}, "repeats"),
        ({"pathologies": []}, "empty"),
        ({"modality": "PET"}, "PET"),
        ({"dim": 4}, "dim=4"),
        ({"size": 16}, "size=16"),
        ({"size": 300}, "size=300"),
        ({"seed": "one"}, "seed='one'"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        make_phantom(**kwargs)
