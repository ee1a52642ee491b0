"""Shared fixtures for tests/io: oblique geometries and small scans."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.io.scan import Scan


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """An oblique, anisotropic index->RAS affine (rotated ~20/10/30 degrees, 0.7x0.9x2.5 mm)."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.35, 0.17, 0.52) @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-40.5, 12.25, 88.0]
    return affine


@pytest.fixture
def ct_volume(oblique_affine) -> Scan:
    """A small 3D CT scan in HU (integers), oblique geometry, asymmetric content."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1500, size=(1, 6, 7, 5)).astype(np.float32)
    return Scan(array, oblique_affine, "CT")


@pytest.fixture
def mr_slice() -> Scan:
    """A small 2D MR scan with non-integer values: an axial slice in RAS index order."""
    rng = np.random.default_rng(1)
    affine = np.diag([0.8, 0.6, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return Scan(rng.random((1, 9, 11)).astype(np.float32) * 700.0, affine, "MR")
