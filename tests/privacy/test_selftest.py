"""The detector's self-test plants edited copies of training scans and counts those caught."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.phantoms import make_phantom
from medsynth.io.scan import Scan
from medsynth.privacy.envelope import Envelope
from medsynth.privacy.features import FeatureConfig, scan_features
from medsynth.privacy.search import FeatureSearch
from medsynth.privacy.selftest import detector_selftest, edits


@pytest.fixture(scope="module")
def training():
    cfg = FeatureConfig.default(2)
    scans = [make_phantom(dim=2, seed=s, size=32) for s in range(3)]
    blank = Scan(np.zeros_like(scans[0].array), scans[0].affine, "CT", {})  # no body: never planted
    scans.append(blank)
    maps = scan_features(scans, cfg).maps
    return scans, maps, cfg, FeatureSearch(maps, Envelope.default(2), ssim_range=2 * cfg.clip)


def _selftest(training, thresholds, groups=("g/CT",) * 4, n=12):
    scans, maps, cfg, search = training
    return detector_selftest(
        scans, train_maps=maps, train_groups=list(groups), thresholds=thresholds, feature_config=cfg, search=search, n=n
    )


def test_every_usable_training_scan_gets_every_edit(training):
    result = _selftest(training, {"pooled": 0.9})
    n_edits = len(edits(np.random.default_rng(0)))
    assert (result["sources"], result["planted"]) == (3, 3 * n_edits)
    assert set(result["per_edit"]) == set(edits(np.random.default_rng(0)))
    assert result["recall"] >= 0.9 and result["per_edit"]["exact"] == 1.0
    assert _selftest(training, {"pooled": 0.9}, n=2)["sources"] == 2


def test_a_copy_counts_only_above_the_tau_of_its_sources_group(training):
    # Nothing scores above 1: with that tau nothing is caught, whatever the search finds.
    assert _selftest(training, {"pooled": 1.0})["recall"] == 0.0
    # The group's own tau applies where the group has one; the pooled one elsewhere.
    assert _selftest(training, {"pooled": 1.0, "g/CT": 0.9})["recall"] >= 0.9
    assert _selftest(training, {"pooled": 1.0, "g/CT": 0.9}, groups=("h/CT",) * 4)["recall"] == 0.0


def test_no_usable_scan_means_nothing_planted(training):
    scans, maps, cfg, search = training
    result = detector_selftest(
        scans[3:],
        train_maps=maps[3:],
        train_groups=["g/CT"],
        thresholds={"pooled": 0.9},
        feature_config=cfg,
        search=search,
    )
    assert result["planted"] == 0 and result["sources"] == 0 and np.isnan(result["recall"])
