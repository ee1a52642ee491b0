"""The detector's self-test: planted, edited copies of training scans must be caught.

Run when an index is built (the training scans are at hand only then); its recall is stored
in the index and shown in every report, so a reader sees how well the detector worked on this
very training set. A copy counts as caught when it is flagged (above the threshold of its
source's group) and matched to its source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medsynth.io.scan import Scan
from medsynth.privacy.calibration import group_for
from medsynth.privacy.features import FeatureConfig, scan_features
from medsynth.privacy.search import FeatureSearch
from medsynth.seeding import numpy_rng

# Edits act on the last two array axes (the slice plane of a 2D scan; rows and columns of each
# slice of a volume), with the image's minimum (air) filling what moves in.
_AXES = (-2, -1)


def _shift(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    off = [0.0] * (a.ndim - 2) + [float(v) for v in rng.choice([-5, -4, 4, 5], size=2)]
    return ndimage.shift(a, off, order=0, mode="constant", cval=float(a.min()))


def _rotate(a: np.ndarray, deg: float) -> np.ndarray:
    return ndimage.rotate(a, deg, axes=_AXES, reshape=False, order=1, mode="constant", cval=float(a.min()))


def _crop_resize(a: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Crop the slice plane to ``frac`` of its size at a random offset and resize back."""
    h, w = a.shape[-2:]
    ch, cw = max(2, round(h * frac)), max(2, round(w * frac))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = a[..., y0 : y0 + ch, x0 : x0 + cw]
    zoomed = ndimage.zoom(crop, [1.0] * (a.ndim - 2) + [h / ch, w / cw], order=1)
    return zoomed[..., :h, :w]


def edits(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The planted edits, by name: each maps a channel-free array to an edited copy."""

    def noise(a: np.ndarray) -> np.ndarray:
        return a + rng.normal(0.0, 0.05 * float(a.max() - a.min()), a.shape)

    return {
        "exact": lambda a: a,
        "flipped": lambda a: np.flip(a, axis=-1),
        "shifted-5px": lambda a: _shift(a, rng),
        "noise-5%": noise,
        "intensity-x1.3+offset": lambda a: 1.3 * a + 0.1 * float(a.max() - a.min()),
        "rotated-5deg": lambda a: _rotate(a, 5.0),
        "crop-88%-resized": lambda a: _crop_resize(a, 0.88, rng),
        "flip+shift+noise": lambda a: noise(_shift(np.flip(a, axis=-2), rng)),
        "rotate+crop+intensity": lambda a: (
            1.3 * _crop_resize(_rotate(a, -5.0), 0.9, rng) - 0.05 * float(a.max() - a.min())
        ),
    }


def detector_selftest(
    train: Sequence[Scan],
    *,
    train_maps: np.ndarray,
    train_groups: Sequence[str],
    thresholds: dict[str, float],
    feature_config: FeatureConfig,
    search: FeatureSearch,
    n: int = 48,
) -> dict[str, Any]:
    """Recall over edited copies of up to ``n`` training scans (flagged and matched to the source).

    Args:
        train: the training scans, in index order.
        train_maps: their feature maps (an all-zero map: no body, never planted).
        train_groups: their groups, which choose each copy's threshold in ``thresholds``.
        thresholds: tau per group and pooled (``calibration.thresholds``).
        feature_config: the settings ``train_maps`` were made with.
        search: the training maps, ready to be searched.
        n: most training scans planted.

    Returns:
        ``{"planted", "recall", "per_edit": {edit: recall}, "sources"}``.
    """
    rng = numpy_rng("privacy-selftest", len(train))
    usable = [i for i in range(len(train)) if train_maps[i].any()]
    pick: np.ndarray | list[int] = rng.choice(usable, size=min(n, len(usable)), replace=False) if usable else []
    queries, sources, kinds = [], [], []
    for i in pick:
        scan = train[int(i)]
        for kind, edit in edits(rng).items():
            arr = np.stack([edit(c) for c in scan.array]).astype(np.float32)
            queries.append(scan.with_array(arr))
            sources.append(int(i))
            kinds.append(kind)
    if not queries:
        return {"planted": 0, "recall": float("nan"), "per_edit": {}, "sources": 0}
    feats = scan_features(queries, feature_config)
    res = search.search(feats.maps, feats.fov)
    tau = np.array([thresholds[group_for(train_groups[s], thresholds)] for s in sources])
    hit = (res.score > tau) & (res.nearest == np.array(sources))
    per_edit = {k: float(np.mean([h for h, kk in zip(hit, kinds) if kk == k])) for k in dict.fromkeys(kinds)}
    return {"planted": len(queries), "recall": float(hit.mean()), "per_edit": per_edit, "sources": len(pick)}
