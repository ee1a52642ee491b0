"""The privacy gate of a protocol run: every sample and inserted lesion checked, the run judged.

Per case: a sample whose similarity to its nearest training scan exceeds the threshold (an
inserted lesion: to its nearest training lesion, ``medsynth.privacy.lesions``) is flagged and, by ``privacy.on_flag``, resampled with the next attempt's seed, dropped, or
fails the run. Per run: the flagged rate is tested against the ``1 - quantile`` expected of
new scans (one-sided binomial), and a case flagged on every attempt fails the run too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth.io.scan import Scan
from medsynth.protocol.manifest import LESION, ManifestRecord, RejectedRecord
from medsynth.protocol.plan_privacy import IMAGE_INDEX, LESION_INDEX
from medsynth.protocol.schema import PrivacySpec

if TYPE_CHECKING:
    from medsynth.privacy.index import PrivacyIndex


def _finite(value: Any) -> Any:
    """``nan``/``inf`` -> ``None``: manifest lines are strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class Gate:
    """The model's privacy indexes behind the calls a run needs, each loaded when first used.

    The whole-image index (``MODEL_DIR/privacy``) checks sampled scans; the lesion index
    (``MODEL_DIR/lesion/privacy``) checks inserted lesions. A run that only inserts into dataset
    backgrounds never loads the first, one that inserts nothing never the second.
    """

    def __init__(self, model_dir: Path, settings: PrivacySpec, weak: frozenset[str] = frozenset()) -> None:
        """``weak``: the indexes (``plan_privacy.IMAGE_INDEX``/``LESION_INDEX``) accepted as weak; their verdicts say so."""
        from medsynth.privacy.calibration import flagged_rate_test

        self.model_dir = Path(model_dir)
        self.settings = settings
        self.weak = weak
        self._rate_test = flagged_rate_test
        self._index: PrivacyIndex | None = None
        self._lesion_index: PrivacyIndex | None = None
        self._extra: list[tuple[str, PrivacyIndex]] | None = None

    @property
    def index(self) -> PrivacyIndex:
        """The whole-image index (InputError when the model has none)."""
        if self._index is None:
            from medsynth.privacy.index import load_index_for_model

            self._index = load_index_for_model(self.model_dir)
        return self._index

    @property
    def lesion_index(self) -> PrivacyIndex:
        """The lesion index (InputError when the model has none)."""
        if self._lesion_index is None:
            from medsynth.privacy.lesions import load_lesion_index

            self._lesion_index = load_lesion_index(self.model_dir)
        return self._lesion_index

    @property
    def extra_indexes(self) -> list[tuple[str, PrivacyIndex]]:
        """A fine-tuned model's other indexes (its base's, or its fine-tuning scans'): ``medsynth.adapters.privacy``."""
        if self._extra is None:
            from medsynth.adapters.privacy import load_extra_indexes

            self._extra = load_extra_indexes(self.model_dir)
        return self._extra

    def check(self, scans: list[Scan], group: str) -> list[dict[str, Any]]:
        """One verdict per scan, as a JSON-ready dict (``gate: true``; non-finite numbers -> null).

        A fine-tuned model's scan is checked against each of its indexes and passes only if it
        passes all; the verdict kept is the one closest to (or furthest past) its threshold,
        named by ``index`` (``model``, ``base`` or ``finetune``).
        """
        verdicts = [
            [
                {**v.to_dict(), "index": "model"}
                for v in self.index.check(scans, [group] * len(scans), quantile=self.settings.quantile)
            ]
        ]
        for name, index in self.extra_indexes:
            found = index.check(scans, [group] * len(scans), quantile=self.settings.quantile)
            verdicts.append([{**v.to_dict(), "index": name} for v in found])
        if len(verdicts) == 1:
            return [self._record({k: v for k, v in d.items() if k != "index"}, IMAGE_INDEX) for d in verdicts[0]]
        return [self._record(max(per_scan, key=_margin), IMAGE_INDEX) for per_scan in zip(*verdicts)]

    def check_lesions(self, scans: list[Scan], masks: list[np.ndarray], group: str) -> list[dict[str, Any]]:
        """One verdict per inserted lesion (its mask on its scan's grid), against the training lesions."""
        from medsynth.privacy.lesions import check_lesions

        verdicts = check_lesions(self.lesion_index, scans, masks, [group] * len(scans), quantile=self.settings.quantile)
        return [self._record(v.to_dict(), LESION_INDEX) for v in verdicts]

    def _record(self, verdict: dict[str, Any], kind: str) -> dict[str, Any]:
        """A verdict as a manifest entry (``gate: true``; non-finite numbers -> null; a weak index marked)."""
        weak = {"weak_index": True} if kind in self.weak else {}
        return {"gate": True, **{k: _finite(v) for k, v in verdict.items()}, **weak}

    def rate_test(self, n_flagged: int, n: int) -> tuple[float, bool]:
        """(p-value, failed) of ``n_flagged`` flags in ``n`` checks against the expected rate."""
        pvalue, failed = self._rate_test(n_flagged, n, self.settings.quantile, alpha=self.settings.alpha)
        return float(pvalue), bool(failed)


def _margin(verdict: dict[str, Any]) -> tuple[bool, float]:
    """Failed verdicts first, then the highest score above its threshold (NaN: a scan without a body)."""
    margin = float(verdict["score"]) - float(verdict["threshold"])
    return (not verdict["passed"], margin if math.isfinite(margin) else -math.inf)


def _checked(verdict: dict[str, Any] | None) -> bool:
    return bool(verdict and verdict.get("gate"))


def _rate(gate: Gate, n_flagged: int, n_checked: int) -> dict[str, Any]:
    pvalue, failed = gate.rate_test(n_flagged, n_checked) if n_checked else (1.0, False)
    return {
        "checked": n_checked,
        "flagged": n_flagged,
        "flagged_rate": round(n_flagged / n_checked, 6) if n_checked else 0.0,
        "expected_rate": round(1 - gate.settings.quantile, 6),
        "pvalue": pvalue,
        "rate_failed": failed,
    }


def judge(
    settings: PrivacySpec,
    gate: Gate,
    records: list[ManifestRecord],
    rejected: list[RejectedRecord],
    gate_failure: str | None,
) -> dict[str, Any]:
    """The privacy part of a run's summary (without its reports): counts, the rate tests, the reasons it failed.

    Whole images and inserted lesions are counted and rate-tested separately (each against
    ``1 - quantile``): a written case counts for each check it passed (a dataset background
    was not checked whole; a sampled case has no lesion), a rejected attempt for the check that
    flagged it.

    Args:
        settings: the protocol's privacy settings (the gate is on).
        gate: the gate the run used.
        records: the written cases.
        rejected: every flagged attempt.
        gate_failure: why the run stopped early (``on_flag: fail``), or None.
    """
    lesion_flags = sum(r.kind == LESION for r in rejected)
    image = _rate(
        gate, len(rejected) - lesion_flags, sum(_checked(r.privacy) for r in records) + len(rejected) - lesion_flags
    )
    lesion = _rate(gate, lesion_flags, sum(_checked(r.lesion_privacy) for r in records) + lesion_flags)
    out_of_attempts = [r.case_id for r in rejected if r.final and r.action == "resample"]
    reasons = []
    if gate_failure:
        reasons.append(gate_failure)
    for what, rate in (("samples", image), ("inserted lesions", lesion)):
        if rate["rate_failed"]:
            reasons.append(
                f"{rate['flagged']} of {rate['checked']} {what} were flagged, significantly more than the "
                f"{1 - settings.quantile:.1%} expected by chance (binomial p={rate['pvalue']:.3g} < alpha={settings.alpha})"
            )
    if out_of_attempts:
        reasons.append(
            f"{len(out_of_attempts)} case(s) were flagged on every attempt (max_attempts {settings.max_attempts}) "
            f"({', '.join(out_of_attempts[:3])}{', ...' if len(out_of_attempts) > 3 else ''})"
        )
    image.pop("rate_failed")
    failed_lesions = lesion.pop("rate_failed")
    return {
        "gate": True,
        "quantile": settings.quantile,
        "on_flag": settings.on_flag,
        **image,
        "alpha": settings.alpha,
        "failed": bool(reasons),
        "reasons": reasons,
        **({"lesions": {**lesion, "rate_failed": failed_lesions}} if lesion["checked"] else {}),
    }
