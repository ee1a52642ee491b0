"""Pneumothorax, the phantoms' fifth class: pleural air, its mask, and what it leaves alone.

The air is told apart from the effusion (pleural fluid) in both modalities by the mean inside
each lesion's mask; the old classes are compared with statistics recorded from the code before
pneumothorax existed, and the shipped models must refuse it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsynth.cli import main
from medsynth.data.phantoms import (
    BASE_PATHOLOGIES,
    PATHOLOGIES,
    TISSUE_NAMES,
    make_phantom,
    phantom_labels,
    phantom_lesion_mask,
)

T = {name: i for i, name in enumerate(TISSUE_NAMES)}
SEEDS = (1, 2, 3, 4)


def _ptx(dim: int, seed: int, size: int, modality: str = "CT", pathologies: str = "pneumothorax") -> np.ndarray:
    return make_phantom(dim=dim, pathologies=pathologies, modality=modality, seed=seed, size=size).array


def test_pneumothorax_is_a_phantom_class_the_shipped_models_do_not_know() -> None:
    assert "pneumothorax" in PATHOLOGIES and "pneumothorax" not in BASE_PATHOLOGIES
    assert set(BASE_PATHOLOGIES) == set(PATHOLOGIES) - {"pneumothorax"}


def test_every_2d_pneumothorax_shows_its_air() -> None:
    counts = [int(phantom_lesion_mask(dim=2, pathologies="pneumothorax", seed=s).sum()) for s in range(40)]
    assert min(counts) >= 20, counts  # at 64^2: at least 20 pixels of air in every subject


@pytest.mark.parametrize("dim,size", [(2, 64), (3, 48)])
def test_the_mask_is_the_air_and_the_air_is_black(dim: int, size: int) -> None:
    for seed in SEEDS[:2]:
        mask = phantom_lesion_mask(dim=dim, pathologies="pneumothorax", seed=seed, size=size)
        labels = phantom_labels(dim=dim, pathologies="pneumothorax", seed=seed, size=size)
        assert mask.shape == _ptx(dim, seed, size).shape and mask.sum() > 20
        assert np.array_equal(mask, labels == T["pneumothorax"])
        ct, twin = _ptx(dim, seed, size), _ptx(dim, seed, size, pathologies="normal")
        assert ct[mask].mean() < -880  # air (-1000 HU) with partial-volume edges
        assert twin[mask].mean() - ct[mask].mean() > 60  # where the normal twin has lung
        # The difference from the normal twin (same noise) is the air, its pleural line and the
        # denser collapsed lung: one hemithorax only (the mid-line is within 15 mm of the centre
        # column: the subject lies up to 8 mm off centre, rotated up to 5 degrees).
        differs = np.abs(ct - twin) > 1.0
        assert mask[differs].mean() > 0.2
        margin = 15.0 / (350.0 / size)
        cols = np.argwhere(differs)[:, -1]
        right = np.argwhere(mask)[:, -1].mean() < size / 2  # columns run to the patient's left
        assert (cols < size / 2 + margin).all() if right else (cols > size / 2 - margin).all()


def test_in_ct_the_air_holds_no_lung_markings_and_ends_at_a_pleural_line() -> None:
    for seed in SEEDS:
        mask = phantom_lesion_mask(dim=2, pathologies="pneumothorax", seed=seed, size=128)[0]
        labels = phantom_labels(dim=2, pathologies="pneumothorax", seed=seed, size=128)[0]
        ct = _ptx(2, seed, 128)[0]
        core = ndimage.binary_erosion(mask)
        assert core.sum() > 20
        # no vessel (+40 HU) anywhere inside: only air and its noise
        assert ct[core].max() < -880 and ct[core].std() < 30
        # the visceral pleural line: the lung voxels bordering the air are brighter than the
        # collapsed lung a few voxels further in, although they hold some air
        lung = np.isin(labels, [T["lung"], T["pleura"]])
        edge = ndimage.binary_dilation(mask) & ~mask & lung
        deeper = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=3) & lung
        assert np.median(ct[edge]) > np.median(ct[deeper]) + 150


def test_the_collapsed_lung_is_denser_than_the_normal_twins() -> None:
    for seed in SEEDS:
        labels = phantom_labels(dim=2, pathologies="pneumothorax", seed=seed, size=64)[0]
        mask = labels == T["pneumothorax"]
        side = (np.arange(64) < 32) == (np.argwhere(mask)[:, 1].mean() < 32)
        lung = (labels == T["lung"]) & side[None, :]
        twin = _ptx(2, seed, 64, pathologies="normal")[0]
        ct = _ptx(2, seed, 64)[0]
        assert 40 < np.median(ct[lung] - twin[lung]) < 200


@pytest.mark.parametrize("dim,size", [(2, 64), (3, 32)])
def test_pneumothorax_and_effusion_are_air_and_fluid_in_both_modalities(dim: int, size: int) -> None:
    for seed in SEEDS[:2]:
        air = phantom_lesion_mask(dim=dim, pathologies="pneumothorax", seed=seed, size=size)
        fluid = phantom_lesion_mask(dim=dim, pathologies="effusion", seed=seed, size=size)
        ct_air, ct_fluid = _ptx(dim, seed, size)[air].mean(), _ptx(dim, seed, size, "CT", "effusion")[fluid].mean()
        assert ct_air < -850 and -60 < ct_fluid < 80  # air vs water density
        mr_air = _ptx(dim, seed, size, "MR")[air].mean()
        mr_fluid = _ptx(dim, seed, size, "MR", "effusion")[fluid].mean()
        assert mr_fluid > 500 and mr_air < 0.15 * mr_fluid  # a signal void vs bright T2 fluid


def test_in_mr_the_air_is_a_signal_void() -> None:
    for seed in SEEDS:
        labels = phantom_labels(dim=2, pathologies="pneumothorax", seed=seed, size=128)[0]
        core = ndimage.binary_erosion(labels == T["pneumothorax"])
        mr = _ptx(2, seed, 128, "MR")[0]
        twin = _ptx(2, seed, 128, "MR", "normal")[0]
        outside = labels == T["air"]  # the air around the body: Rician noise on zero signal
        assert mr[core].mean() < 1.3 * mr[outside].mean()
        assert twin[core].mean() > mr[core].mean() + 5  # where the twin has (dark, not void) lung


def test_pneumothorax_combines_with_other_pathologies() -> None:
    both = phantom_labels(dim=2, pathologies="pneumothorax|effusion", seed=6, size=64)
    ptx = phantom_labels(dim=2, pathologies="pneumothorax", seed=6, size=64)
    eff = phantom_labels(dim=2, pathologies="effusion", seed=6, size=64)
    assert (both == T["pneumothorax"]).sum() == (ptx == T["pneumothorax"]).sum()
    assert (both == T["effusion"]).sum() > 0.8 * (eff == T["effusion"]).sum()
    scan = make_phantom(dim=2, pathologies=["pneumothorax", "nodule"], seed=6)
    assert scan.metadata["pathology"] == "nodule|pneumothorax"
    mask = phantom_lesion_mask(dim=2, pathologies="nodule|pneumothorax", seed=6, size=64)
    assert np.array_equal(
        mask,
        np.isin(phantom_labels(dim=2, pathologies="nodule|pneumothorax", seed=6), [T["nodule"], T["pneumothorax"]]),
    )


# Recorded from the code before pneumothorax existed (git show HEAD~ of this change, run in a
# temporary folder): image mean, image std, mean inside the lesion mask, lesion voxels. A shifted
# random stream would move the noise and so the statistics by far more than the tolerance.
BEFORE = [
    (2, 64, "normal", "CT", 3, -620.961761, 468.195021, 0.000000, 0),
    (2, 64, "nodule", "MR", 3, 154.525882, 209.560479, 376.878838, 12),
    (2, 64, "mass", "CT", 11, -692.596608, 446.842052, 4.727473, 59),
    (2, 64, "effusion", "MR", 11, 151.793651, 238.369753, 889.485614, 182),
    (2, 48, "effusion|nodule", "CT", 5, -653.032517, 474.538599, 9.396805, 50),
    (3, 32, "effusion|mass", "MR", 7, 153.586844, 195.843844, 879.872800, 642),
    (3, 32, "nodule", "CT", 2, -640.058893, 463.485600, -224.180534, 4),
]


@pytest.mark.parametrize("dim,size,pathology,modality,seed,mean,std,lesion_mean,voxels", BEFORE)
def test_the_old_classes_are_the_images_they_were(dim, size, pathology, modality, seed, mean, std, lesion_mean, voxels):
    a = make_phantom(dim=dim, pathologies=pathology, modality=modality, seed=seed, size=size).array.astype(np.float64)
    m = phantom_lesion_mask(dim=dim, pathologies=pathology, seed=seed, size=size)
    assert int(m.sum()) == voxels
    got = [a.mean(), a.std(), a[m].mean() if voxels else 0.0]
    np.testing.assert_allclose(got, [mean, std, lesion_mean], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("model", ["builtin:phantom-2d", "builtin:phantom-3d"])
def test_a_protocol_naming_pneumothorax_fails_validation_for_the_shipped_models(model, tmp_path, capsys) -> None:
    protocol = tmp_path / "ptx.yaml"
    protocol.write_text(
        f"protocol: 1\nname: ptx\nmodel: {model}\nseed: 1\noutput: {{dir: out, formats: [nifti]}}\n"
        "quotas:\n  - {pathology: pneumothorax, modality: CT, count: 2}\n"
        "  - {pathology: normal, modality: MR, count: 2}\n"
    )
    assert main(["validate", str(protocol)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # (the 3D model's privacy index is weak, which is a line of its own; this one is about the label)
    expected = (
        f"medsynth: error: {protocol}: quotas[0].pathology: 'pneumothorax' is not a pathology of model {model}; "
        "allowed: effusion, mass, nodule, normal"
    )
    assert expected in lines and not any("quotas[1]" in line for line in lines), lines
    assert not (tmp_path / "out").exists()


def test_the_shipped_models_configs_name_the_four_old_pathologies() -> None:
    from pathlib import Path

    from medsynth.training.config import load_config

    configs = Path(__file__).resolve().parents[3] / "configs"
    for name in ("phantom-2d.yaml", "phantom-3d.yaml"):
        phantoms = load_config(configs / name).data.phantoms
        assert phantoms is not None and phantoms.pathologies == list(BASE_PATHOLOGIES) and phantoms.scanner == "A"


def test_a_training_config_naming_an_unknown_phantom_pathology_is_a_one_line_error(tmp_path) -> None:
    from medsynth.errors import InputError
    from medsynth.training.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "name: x\ndata: {phantoms: {dim: 2, count: 8, pathologies: [normal, pneumothorx]}}\n"
        "preprocessing: {size: [32, 32]}\noutput_dir: out\n"
        "stage1: {steps: 1, batch_size: 1}\nstage2: {steps: 1, batch_size: 1}\n"
    )
    with pytest.raises(InputError) as err:
        load_config(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and "data.phantoms" in lines[0] and "did you mean 'pneumothorax'?" in lines[0], lines
