"""Calibration: thresholds from a holdout, p-values, and the dataset-level tests.

The threshold ``tau`` is the ``q``-quantile of the holdout's best similarity to the training set
(holdout scans were never seen by the model and share no subject with training). A synthetic
scan more similar to its nearest training scan than ``tau`` is flagged; by construction a fresh
scan from the same population is flagged with probability about ``1 - q``.

Thresholds are per group (``"pathology/modality"``) where the holdout holds at least
``min_group_size`` scans of that group (look-alike rates differ between groups, e.g. MR phantoms
are more alike than CT ones), and pooled over the whole holdout otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest

from medsynth.errors import InputError

POOLED = "pooled"


def check_quantile(quantile: float, name: str = "privacy quantile") -> float:
    """The quantile as a float in [0.5, 1), or an InputError naming ``name``.

    Below 0.5 most genuinely new scans would be flagged: not a memorization gate.
    """
    try:
        q = float(quantile)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number in [0.5, 1), e.g. 0.99; got {quantile!r}") from None
    if not 0.5 <= q < 1.0:
        raise InputError(f"{name}: expected a number in [0.5, 1), e.g. 0.99; got {q}")
    return q


def quantile_of(scores: np.ndarray, q: float) -> float:
    """The ``q``-quantile as an observed score (``method="higher"``): at most ``1 - q`` of the
    holdout lies strictly above it, so the holdout's own flagged rate never exceeds ``1 - q``."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), q, method="higher"))


def thresholds(scores: np.ndarray, groups: Sequence[str], quantile: float, min_group_size: int) -> dict[str, float]:
    """``{"pooled": tau, group: tau_group, ...}``; a group appears only with enough holdout scans.

    Args:
        scores: holdout best similarities to train (scans with no body left out).
        groups: the holdout scans' groups, aligned with ``scores``.
        quantile: ``q``.
        min_group_size: least holdout scans for a group of its own.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise InputError("privacy calibration: the holdout has no scan with a body to compare; need at least one")
    q = check_quantile(quantile)
    out = {POOLED: quantile_of(scores, q)}
    labels = list(groups)
    label_array = np.asarray(labels, dtype=object)
    for group, count in sorted(Counter(labels).items()):
        if count >= min_group_size:
            out[group] = quantile_of(scores[label_array == group], q)
    return out


def group_for(group: str, table: dict[str, float]) -> str:
    """The key of ``table`` that applies to ``group``: itself if calibrated, else pooled."""
    return group if group in table else POOLED


def null_scores(scores: np.ndarray, groups: Sequence[str], used: str) -> np.ndarray:
    """The holdout scores behind the threshold ``used`` (one group's, or all for pooled)."""
    scores = np.asarray(scores, dtype=np.float64)
    if used == POOLED:
        return scores
    return scores[np.asarray(list(groups), dtype=object) == used]


def empirical_pvalue(score: float, null_scores: np.ndarray) -> float:
    """Share of holdout scores at least ``score``, with +1 smoothing: ``(1 + #{s >= score}) / (1 + n)``.

    Small when a synthetic scan is closer to training than almost every genuinely new scan.
    """
    null_scores = np.asarray(null_scores)
    return float((1 + np.count_nonzero(null_scores >= score)) / (1 + null_scores.size))


def flagged_rate_test(n_flagged: int, n: int, quantile: float, alpha: float = 0.01) -> tuple[float, bool]:
    """One-sided binomial test of the flagged rate against ``1 - quantile``.

    Args:
        n_flagged: cases flagged (score above threshold).
        n: cases checked.
        quantile: the calibration quantile ``q``; new scans are flagged with probability ``1 - q``.
        alpha: significance level.

    Returns:
        ``(pvalue, failed)``: ``failed`` when the rate is significantly above ``1 - q``.

    Example:
        >>> flagged_rate_test(1, 100, 0.99)[1], flagged_rate_test(9, 100, 0.99)[1]
        (False, True)
    """
    q = check_quantile(quantile)
    if not 0.0 < alpha < 1.0:
        raise InputError(f"flagged_rate_test: alpha must be in (0, 1), e.g. 0.01; got {alpha}")
    if not 0 <= n_flagged <= n:
        raise InputError(f"flagged_rate_test: need 0 <= n_flagged <= n; got n_flagged={n_flagged}, n={n}")
    if n == 0:
        return 1.0, False
    pvalue = float(binomtest(int(n_flagged), int(n), 1.0 - q, alternative="greater").pvalue)
    return pvalue, pvalue < alpha


def closer_to_train_test(n_closer: int, n: int, n_train: int, n_holdout: int) -> dict[str, float]:
    """Binomial test: are synthetic scans closer to train than to holdout more often than chance?

    A scan from the population (not a copy) has its nearest neighbour among the ``n_train +
    n_holdout`` real scans equally likely anywhere, so it is closer to train with probability
    ``p0 = n_train / (n_train + n_holdout)`` (0.5 for equal sets). A model that memorizes pushes
    the share above ``p0``; the p-value is one-sided.

    Returns:
        ``{"n_closer", "n", "share", "p0", "pvalue"}``.

    Example:
        >>> closer_to_train_test(50, 100, 1000, 1000)["pvalue"] > 0.4
        True
        >>> closer_to_train_test(90, 100, 500, 500)["pvalue"] < 1e-6
        True
    """
    if n_train < 1 or n_holdout < 1:
        raise InputError(f"closer_to_train_test: need training and holdout scans; got {n_train} and {n_holdout}")
    p0 = n_train / (n_train + n_holdout)
    pvalue = float(binomtest(int(n_closer), int(n), p0, alternative="greater").pvalue) if n else 1.0
    return {"n_closer": int(n_closer), "n": int(n), "share": n_closer / n if n else 0.0, "p0": p0, "pvalue": pvalue}
