"""The transform envelope's bounds: copies edited inside it are caught, copies edited beyond it are not.

The edits act on feature maps, the search's own input, so pose normalisation (``features.py``,
which removes most rotation and zoom of a scan before the search) does not hide them. The
bounds come from ``Envelope.default``: rotations up to 10 degrees, zooms 0.8 to 1.25. A copy
counts as caught when its score exceeds tau (here the holdout's highest score to the training
set, as ``calibration.thresholds`` computes it) and its nearest training map is its source.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsynth.data.phantoms import make_phantom
from medsynth.privacy.calibration import POOLED, thresholds
from medsynth.privacy.envelope import Envelope
from medsynth.privacy.features import FeatureConfig, scan_features
from medsynth.privacy.search import FeatureSearch, SearchResult


def _rotate(a: np.ndarray, deg: float) -> np.ndarray:
    """In-plane rotation about the map centre (3D: about array axis 0, as the envelope's)."""
    return ndimage.rotate(a, deg, axes=(-2, -1), reshape=False, order=1, mode="constant")


def _zoom(a: np.ndarray, z: float) -> np.ndarray:
    """Magnify by ``z`` about the map centre, every axis."""
    centre = np.full(a.ndim, (a.shape[0] - 1) / 2)
    return ndimage.affine_transform(a, np.eye(a.ndim) / z, offset=centre - centre / z, order=1, mode="constant")


class Reference:
    """Feature maps of six phantom subjects, ready to be searched, and tau from six others."""

    def __init__(self, dims: int) -> None:
        cfg = FeatureConfig.default(dims)
        self.dims = dims
        self.envelope = Envelope.default(dims)
        self.maps = scan_features([make_phantom(dim=dims, seed=s, size=32) for s in range(6)], cfg).maps
        holdout = scan_features([make_phantom(dim=dims, seed=s, size=32) for s in range(100, 106)], cfg).maps
        self.search = FeatureSearch(self.maps, self.envelope, ssim_range=2 * cfg.clip)
        self.tau = thresholds(self.search.search(holdout).score, ["g"] * 6, 0.99, 50)[POOLED]

    def caught(self, res: SearchResult, source: int) -> np.ndarray:
        return (res.score > self.tau) & (res.nearest == source)


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def ref(request) -> Reference:
    return Reference(request.param)


def test_copies_rotated_inside_the_envelope_are_caught_and_beyond_it_are_not(ref):
    bound = max(ref.envelope.rotations)
    inside, beyond = [0.8 * bound, -0.8 * bound], [3 * bound, -3 * bound]
    res = ref.search.search(np.stack([_rotate(ref.maps[1], deg) for deg in inside + beyond]))
    assert ref.caught(res, 1).tolist() == [True, True, False, False], (res.score, ref.tau)
    # Beyond the envelope the search turns as far as it may and no further.
    assert [abs(t["rotation_deg"]) for t in res.transform[2:]] == [bound, bound]
    if ref.dims == 2:  # 2D: the turn found undoes the edit (3D maps are rounder in-plane)
        assert [t["rotation_deg"] for t in res.transform[:2]] == pytest.approx([-d for d in inside], abs=1.0)


def test_copies_zoomed_inside_the_envelope_are_caught_and_beyond_it_are_not(ref):
    lo, hi = min(ref.envelope.zooms), max(ref.envelope.zooms)
    inside, beyond = [hi**0.8, lo**0.8], [hi**2, lo**2]
    res = ref.search.search(np.stack([_zoom(ref.maps[2], z) for z in inside + beyond]))
    # Beyond the envelope the search zooms as far as it may and no further, and misses.
    assert not ref.caught(res, 2)[2:].any(), (res.score, ref.tau)
    assert [t["zoom"] for t in res.transform[2:]] == [lo, hi]
    if ref.dims == 2:
        # 2D: caught, at the inverse zoom. In 3D (16^3 maps) the zoom found is a few percent off
        # and in-envelope zooms score about tau (measured 0.93-0.98 against tau 0.974); there
        # pose normalisation, not the envelope, takes a scan's zoom away (test_features.py).
        assert ref.caught(res, 2)[:2].all(), (res.score, ref.tau)
        assert [t["zoom"] for t in res.transform[:2]] == pytest.approx([1 / z for z in inside], rel=0.02)
