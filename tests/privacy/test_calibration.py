"""Thresholds: a group's own tau once its holdout holds ``min_group_size`` scans with a body, else pooled."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.privacy.calibration import POOLED, thresholds
from medsynth.privacy.features import Features

# Holdout->train scores: five of a/CT, two of b/MR (b/MR's look-alikes are closer, as MR phantoms' are).
A_SCORES = [0.10, 0.20, 0.30, 0.40, 0.50]
B_SCORES = [0.90, 0.95]
SCORES = A_SCORES + B_SCORES
GROUPS = ["a/CT"] * 5 + ["b/MR"] * 2
# The 0.5 quantile as an observed score (method "higher"): of a/CT alone 0.30, of all seven 0.40.
TAU_A, TAU_B, TAU_POOLED = 0.30, 0.95, 0.40


def _features(maps: np.ndarray) -> Features:
    """Maps as queries that see everything and all have a body."""
    return Features(maps=maps, fov=np.ones_like(maps), empty=np.zeros(len(maps), bool))


@pytest.mark.parametrize(
    ("min_group_size", "expected"),
    [
        (2, {POOLED: TAU_POOLED, "a/CT": TAU_A, "b/MR": TAU_B}),
        (3, {POOLED: TAU_POOLED, "a/CT": TAU_A}),
        (5, {POOLED: TAU_POOLED, "a/CT": TAU_A}),  # exactly min_group_size scans: a tau of its own
        (6, {POOLED: TAU_POOLED}),
    ],
)
def test_groups_below_min_group_size_have_no_tau_of_their_own(min_group_size, expected):
    assert thresholds(SCORES, GROUPS, 0.5, min_group_size) == expected


def test_a_higher_quantile_raises_every_tau():
    assert thresholds(SCORES, GROUPS, 0.9, 2) == {POOLED: 0.95, "a/CT": 0.50, "b/MR": 0.95}


def test_holdout_scans_without_a_body_do_not_count_toward_a_group(make_index):
    # A sixth a/CT holdout scan, constant (no body): its score takes no part, so with
    # min_group_size 6 a/CT has 5 scans that count and falls back to the pooled tau.
    index = make_index(
        [*A_SCORES, 0.99, *B_SCORES],
        ["a/CT"] * 6 + ["b/MR"] * 2,
        holdout_empty=[False] * 5 + [True] + [False] * 2,
        min_group_size=6,
    )
    assert index.thresholds() == {POOLED: TAU_POOLED}
    index.min_group_size = 5
    assert index.thresholds() == {POOLED: TAU_POOLED, "a/CT": TAU_A}


def test_each_case_is_judged_by_its_groups_tau_or_the_pooled_one(make_index):
    index = make_index(SCORES, GROUPS, min_group_size=3)
    # Exact copies of training maps: their score is 1, above every tau, so what differs is
    # which tau and which holdout scores (the p-value's null) judged them.
    a, b, unknown = index.check_features(_features(index.train_maps[:3]), ["a/CT", "b/MR", "c/CT"])
    assert (a.group_used, a.threshold) == ("a/CT", TAU_A)
    assert (b.group_used, b.threshold) == (POOLED, TAU_POOLED)  # 2 holdout scans < min_group_size 3
    assert (unknown.group_used, unknown.threshold) == (POOLED, TAU_POOLED)  # no holdout scan at all
    assert [v.score for v in (a, b, unknown)] == pytest.approx([1.0] * 3, abs=1e-4)
    assert not any(v.passed for v in (a, b, unknown))
    # p-value: (1 + holdout scores >= score) / (1 + holdout scans behind the tau used)
    assert a.pvalue == pytest.approx(1 / (1 + len(A_SCORES)))
    assert b.pvalue == unknown.pvalue == pytest.approx(1 / (1 + len(SCORES)))
    # The same case with the group's scans counted as enough for a tau of its own.
    index.min_group_size = 2
    (b_own,) = index.check_features(_features(index.train_maps[1:2]), ["b/MR"])
    assert (b_own.group_used, b_own.threshold) == ("b/MR", TAU_B)
    assert b_own.pvalue == pytest.approx(1 / (1 + len(B_SCORES)))


def test_quantile_given_to_check_overrides_the_index_quantile(make_index):
    index = make_index(SCORES, GROUPS, min_group_size=3)
    (v,) = index.check_features(_features(index.train_maps[:1]), ["a/CT"], quantile=0.9)
    assert v.threshold == 0.50
