"""What each evaluation figure is called in words, and which way is better: the one place for both.

Plots title their panels from here, so a metric key of ``fidelity.json`` (``kid``, ``fid``...)
never reaches a figure raw, and every figure carries its better-direction mark.

Example:
    >>> METRICS["kid"].label
    'Kernel Inception Distance (lower is better)'
    >>> METRICS["recall"].arrow
    '↑'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricName:
    """A metric's name in words and its better direction.

    Args:
        title: the name in words, e.g. ``Kernel Inception Distance``.
        higher_is_better: True if a higher value is better, False if a lower one is.
        note: optional short reading aid shown with the direction, e.g. ``more varied``.
    """

    title: str
    higher_is_better: bool
    note: str = ""

    @property
    def arrow(self) -> str:
        """``↑`` (higher is better) or ``↓`` (lower is better)."""
        return "↑" if self.higher_is_better else "↓"

    @property
    def direction(self) -> str:
        """``higher is better`` or ``lower is better``, with the note if any."""
        words = "higher is better" if self.higher_is_better else "lower is better"
        return f"{words}: {self.note}" if self.note else words

    @property
    def label(self) -> str:
        """One line: ``Kernel Inception Distance (lower is better)``."""
        return f"{self.title} ({self.direction})"


METRICS: dict[str, MetricName] = {
    # The feature space is medsynth's own classifier, not Inception (docs/evaluation.md); the
    # names are the metrics' usual ones, as FID and KID are defined on any feature space.
    "fid": MetricName("Fréchet Inception Distance", higher_is_better=False),
    "kid": MetricName("Kernel Inception Distance", higher_is_better=False),
    "kid_mean": MetricName("Kernel Inception Distance", higher_is_better=False),
    "mmd": MetricName("Maximum mean discrepancy of images", higher_is_better=False),
    "precision": MetricName("Precision", higher_is_better=True, note="realism"),
    "recall": MetricName("Recall", higher_is_better=True, note="coverage"),
    "conditional_accuracy": MetricName("Conditional accuracy (pathology and modality)", higher_is_better=True),
    "pathology_accuracy": MetricName("Pathology accuracy", higher_is_better=True),
    "modality_accuracy": MetricName("Modality accuracy", higher_is_better=True),
    # Lower MS-SSIM between scans of one class means more varied scans; the real baseline is the
    # target, as a set of noise would be "more diverse" than real data.
    "diversity_ms_ssim": MetricName("Mean pairwise MS-SSIM", higher_is_better=False, note="more varied"),
    "balanced_accuracy": MetricName("Balanced accuracy", higher_is_better=True),
    "auroc": MetricName("Macro AUROC", higher_is_better=True),
}

# The series of a fidelity figure: what each bar was measured on.
SERIES: dict[str, str] = {
    "synthetic": "synthetic",
    "real_baseline": "real baseline",
}


def metric_name(key: str) -> MetricName:
    """The name of metric ``key``; a key without a name is a programming error, said plainly."""
    try:
        return METRICS[key]
    except KeyError:
        raise KeyError(
            f"metric {key!r} has no name in medsynth.evaluation.names.METRICS (known: {', '.join(METRICS)}); "
            "add one there"
        ) from None
