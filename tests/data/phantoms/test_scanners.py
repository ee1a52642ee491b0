"""The second scanner: scanner B differs measurably from A (CT noise texture and kernel, MR contrast and
bias field) on the same anatomy, and scanner A is the look the phantoms always had."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsynth.data.phantoms import SCANNERS, TISSUE_NAMES, make_phantom, phantom_dataset, phantom_labels
from medsynth.data.phantoms.scanners import acquire
from medsynth.errors import InputError

T = {name: i for i, name in enumerate(TISSUE_NAMES)}
SEEDS = range(5)


def _radial_nps(noise: np.ndarray) -> tuple[float, float]:
    """Noise power in the low (< 0.15 cycles/voxel) and high (0.3-0.5) radial frequency bands."""
    power = np.abs(np.fft.fft2(noise - noise.mean())) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(noise.shape[0]), np.fft.fftfreq(noise.shape[1]), indexing="ij"))
    return float(power[(f > 0) & (f < 0.15)].mean()), float(power[(f > 0.3) & (f < 0.5)].mean())


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(size) - (size - 1) / 2) * (350.0 / size)
    return c[None, None, :], c[None, :, None], np.zeros((1, 1, 1))


def test_scanner_b_ct_noise_is_high_frequency_and_a_low_frequency() -> None:
    # The noise alone: a uniform water image through each scanner (no edge for the kernel to sharpen).
    x, y, z = _grid(128)
    ratios = {}
    for scanner in SCANNERS:
        noisy = acquire(
            np.zeros((1, 128, 128), np.float32), modality="CT", scanner=scanner, seed=4, dim=2, size=128, x=x, y=y, z=z
        )
        low, high = _radial_nps(noisy[0])
        ratios[scanner] = high / low
    assert ratios["A"] < 0.5  # correlated: power falls with frequency (a smooth kernel)
    assert ratios["B"] > 2.0  # band-pass: power rises towards high frequencies (a sharp kernel)


def test_scanner_b_ct_is_sharper_on_the_same_anatomy() -> None:
    for seed in SEEDS:
        labels = phantom_labels(dim=2, seed=seed)[0]
        lung = ndimage.binary_erosion(labels == T["lung"])
        fine, mean = {}, {}
        for scanner in SCANNERS:
            ct = make_phantom(dim=2, modality="CT", seed=seed, scanner=scanner).array[0]
            fine[scanner] = float(np.std((ct - ndimage.gaussian_filter(ct, 1.0))[lung]))
            mean[scanner] = float(ct.mean())
        assert fine["B"] > 1.2 * fine["A"]
        # the same HU scale: a kernel moves no intensity overall (the clip at -1024 HU a little)
        assert abs(mean["B"] - mean["A"]) < 10.0
        a = ndimage.gaussian_filter(make_phantom(dim=2, modality="CT", seed=seed).array[0], 2.0)
        b = ndimage.gaussian_filter(make_phantom(dim=2, modality="CT", seed=seed, scanner="B").array[0], 2.0)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_scanner_b_mr_has_another_contrast_on_the_same_anatomy() -> None:
    for seed in SEEDS:
        labels = phantom_labels(dim=2, pathologies="effusion", seed=seed)[0]
        fat, fluid, muscle = (labels == T[t] for t in ("fat", "effusion", "muscle"))
        a = make_phantom(dim=2, pathologies="effusion", modality="MR", seed=seed).array[0]
        b = make_phantom(dim=2, pathologies="effusion", modality="MR", seed=seed, scanner="B").array[0]
        # T2 (A): fluid brighter than fat; T1 (B): fat far brighter than fluid, muscle above fluid
        assert np.median(a[fluid]) > 1.2 * np.median(a[fat])
        assert np.median(b[fat]) > 3.0 * np.median(b[fluid]) and np.median(b[muscle]) > np.median(b[fluid])


def test_scanner_b_mr_bias_field_brightens_the_periphery() -> None:
    # Fat at the body wall against fat in the mediastinum: one tissue, so the ratio is the bias field.
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 31.5, xx - 31.5)
    ratio = {s: [] for s in SCANNERS}
    for seed in SEEDS:
        fat = phantom_labels(dim=2, seed=seed)[0] == T["fat"]
        for scanner in SCANNERS:
            mr = make_phantom(dim=2, modality="MR", seed=seed, scanner=scanner).array[0]
            ratio[scanner].append(np.median(mr[fat & (r > 20)]) / np.median(mr[fat & (r < 10)]))
    assert all(0.85 < v < 1.18 for v in ratio["A"]), ratio
    assert all(v > 1.12 for v in ratio["B"]) and np.mean(ratio["B"]) > 1.25, ratio
    # and on a uniform object the field is smooth: its low frequencies hold nearly all its power
    x, y, z = _grid(64)
    flat = acquire(
        np.full((1, 64, 64), 500.0, np.float32), modality="MR", scanner="B", seed=1, dim=2, size=64, x=x, y=y, z=z
    )
    smooth = ndimage.gaussian_filter(flat[0], 4.0)
    assert smooth[32, 32] < 0.85 * np.mean([smooth[4, 32], smooth[59, 32], smooth[32, 4], smooth[32, 59]])


@pytest.mark.parametrize("dim,size", [(2, 64), (3, 32)])
def test_scanner_a_is_the_default_and_b_keeps_the_geometry(dim: int, size: int) -> None:
    for modality in ("CT", "MR"):
        default = make_phantom(dim=dim, pathologies="mass", modality=modality, seed=8, size=size)
        a = make_phantom(dim=dim, pathologies="mass", modality=modality, seed=8, size=size, scanner="a")
        b = make_phantom(dim=dim, pathologies="mass", modality=modality, seed=8, size=size, scanner="B")
        assert np.array_equal(default.array, a.array) and not np.allclose(a.array, b.array)
        assert np.array_equal(a.affine, b.affine) and a.spacing == b.spacing and b.array.dtype == np.float32
        assert a.metadata["manufacturer_model"].endswith("scanner A")
        assert b.metadata["manufacturer_model"].endswith("scanner B")
        assert b.metadata["pathology"] == "mass" and (b.array >= -1024).all()


def test_phantom_dataset_scanner_b_same_subjects_and_labels(tmp_path) -> None:
    a = phantom_dataset(tmp_path / "a", dim=2, count=6, size=32, seed=4)
    b = phantom_dataset(tmp_path / "b", dim=2, count=6, size=32, seed=4, scanner="B")
    assert a.read_text() == b.read_text()  # labels.csv: same cases, classes, splits and subjects
    assert (tmp_path / "a" / "case-00000.nii.gz").read_bytes() != (tmp_path / "b" / "case-00000.nii.gz").read_bytes()


@pytest.mark.parametrize("bad", ["C", "", "scanner-b"])
def test_an_unknown_scanner_is_an_input_error_before_anything_is_written(tmp_path, bad: str) -> None:
    with pytest.raises(InputError, match="expected one of A, B"):
        make_phantom(scanner=bad)
    with pytest.raises(InputError, match="is not a phantom scanner"):
        phantom_dataset(tmp_path / "ds", dim=2, count=2, size=32, scanner=bad)
    assert not (tmp_path / "ds").exists()
