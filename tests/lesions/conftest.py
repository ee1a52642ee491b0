"""Shared fixtures for tests/lesions: independent oracles (scipy only), small blobs, cached phantoms.

Each fixture returns a function (tests here cannot import a helper module under
``--import-mode=importlib``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage as ndi


def ball(radius: int, dims: int) -> np.ndarray:
    """A Euclidean ball of ``radius`` voxels as a structuring element."""
    r = np.arange(-radius, radius + 1)
    grids = np.meshgrid(*([r] * dims), indexing="ij")
    return sum(g.astype(float) ** 2 for g in grids) <= radius**2


def _dilate_oracle(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` dilated by a Euclidean ball, with binary_dilation: independent of the code under test."""
    if radius == 0:
        return mask.copy()
    return ndi.binary_dilation(mask, structure=ball(radius, mask.ndim))


def _blob(shape: tuple[int, ...], rng: np.random.Generator, fill: float = 0.2) -> np.ndarray:
    """A random smooth non-empty blob (a thresholded smoothed noise field)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    return field > np.quantile(field, 1.0 - fill)


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    idx = np.indices(shape).astype(float)
    return sum(((i - c) / r) ** 2 for i, c, r in zip(idx, centre, radii, strict=True)) <= 1.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@functools.cache
def _phantom(dim: int, modality: str, seed: int, size: int):
    """A normal phantom scan and its tissue label map (spatial), rendered once per test session."""
    from medsynth.data.phantoms import make_phantom, phantom_labels

    scan = make_phantom(dim=dim, pathologies="normal", modality=modality, seed=seed, size=size)
    return scan, phantom_labels(dim=dim, pathologies="normal", seed=seed, size=size)[0]


@pytest.fixture
def dilate_oracle() -> Callable[[np.ndarray, int], np.ndarray]:
    return _dilate_oracle


@pytest.fixture
def blob() -> Callable[..., np.ndarray]:
    return _blob


@pytest.fixture
def ellipsoid() -> Callable[..., np.ndarray]:
    return _ellipsoid


@pytest.fixture
def dice() -> Callable[[np.ndarray, np.ndarray], float]:
    return _dice


@pytest.fixture
def phantom() -> Callable[..., tuple]:
    return _phantom
