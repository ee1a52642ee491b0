"""Privacy indexes made from numbers: chosen holdout scores, groups and ids, smooth random maps.

The unit tests build an index with the constructor (no scans, no featurisation), so the
thresholds they expect follow from the scores they chose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy import ndimage

from medsynth.privacy.envelope import Envelope
from medsynth.privacy.features import FeatureConfig
from medsynth.privacy.index import PrivacyIndex


def body_maps(n: int, dims: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` feature-like maps of the default grid: smooth texture in a round body, zero-mean and
    unit-variance inside it, 0 (the body mean) outside, as ``features.py`` makes them."""
    grid = FeatureConfig.default(dims).grid
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.normal(size=(n,) + (grid,) * dims), sigma=(0,) + (1.5,) * dims)
    centre = (grid - 1) / 2
    body = sum((i - centre) ** 2 for i in np.indices((grid,) * dims)) <= (0.35 * grid) ** 2
    inside = tex[:, body]
    tex[:, body] = (inside - inside.mean(1, keepdims=True)) / inside.std(1, keepdims=True)
    tex[:, ~body] = 0.0
    return tex.astype(np.float32)


@pytest.fixture
def make_index() -> Callable[..., PrivacyIndex]:
    """``make_index(holdout_scores, holdout_groups, **kw)``: a 2D index with those holdout->train scores.

    Keywords: ``train_groups`` (default ``"a/CT"`` for each of ``n_train`` scans), ``train_ids``
    (default ``train-00000``...), ``holdout_empty``, ``train_self_scores`` (each training scan's
    best score against the next one), ``quantile`` (0.5), ``min_group_size`` (3), ``selftest``.
    """

    def make(
        holdout_scores: Sequence[float],
        holdout_groups: Sequence[str],
        *,
        n_train: int = 4,
        train_groups: Sequence[str] | None = None,
        train_ids: Sequence[str] | None = None,
        holdout_empty: Sequence[bool] | None = None,
        train_self_scores: Sequence[float] | None = None,
        quantile: float = 0.5,
        min_group_size: int = 3,
        selftest: dict | None = None,
    ) -> PrivacyIndex:
        maps = body_maps(n_train + len(holdout_scores))
        return PrivacyIndex(
            feature_config=FeatureConfig.default(2),
            envelope=Envelope.default(2),
            train_maps=maps[:n_train],
            train_groups=list(train_groups or ["a/CT"] * n_train),
            train_ids=list(train_ids or [f"train-{i:05d}" for i in range(n_train)]),
            holdout_maps=maps[n_train:],
            holdout_groups=list(holdout_groups),
            holdout_scores=np.asarray(holdout_scores, float),
            holdout_empty=None if holdout_empty is None else np.asarray(holdout_empty, bool),
            train_self_scores=np.asarray(train_self_scores if train_self_scores is not None else [0.0] * n_train),
            train_self_nearest=(np.arange(n_train) + 1) % n_train,
            quantile=quantile,
            min_group_size=min_group_size,
            selftest=selftest,
        )

    return make
