"""The privacy gate of a protocol run: every sample checked against the model's privacy index, the run judged.

Per case: a sample whose similarity to its nearest training scan exceeds the threshold is
flagged and, by ``privacy.on_flag``, resampled with the next attempt's seed, dropped, or
fails the run. Per run: the flagged rate is tested against the ``1 - quantile`` expected of
new scans (one-sided binomial), and a case flagged on every attempt fails the run too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.io.scan import Scan
from medsynth.protocol.manifest import RejectedRecord
from medsynth.protocol.schema import PrivacySpec

if TYPE_CHECKING:
    from medsynth.privacy.index import PrivacyIndex


def _finite(value: Any) -> Any:
    """``nan``/``inf`` -> ``None``: manifest lines are strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class Gate:
    """The model's privacy index behind the two calls a run needs."""

    def __init__(self, model_dir: Path, settings: PrivacySpec) -> None:
        from medsynth.privacy.calibration import flagged_rate_test
        from medsynth.privacy.index import load_index_for_model

        self.index: PrivacyIndex = load_index_for_model(model_dir)
        self.settings = settings
        self._rate_test = flagged_rate_test

    def check(self, scans: list[Scan], group: str) -> list[dict[str, Any]]:
        """One verdict per scan, as a JSON-ready dict (``gate: true``; non-finite numbers -> null)."""
        verdicts = self.index.check(scans, [group] * len(scans), quantile=self.settings.quantile)
        return [{"gate": True, **{k: _finite(v) for k, v in v.to_dict().items()}} for v in verdicts]

    def rate_test(self, n_flagged: int, n: int) -> tuple[float, bool]:
        """(p-value, failed) of ``n_flagged`` flags in ``n`` checks against the expected rate."""
        pvalue, failed = self._rate_test(n_flagged, n, self.settings.quantile, alpha=self.settings.alpha)
        return float(pvalue), bool(failed)


def judge(
    settings: PrivacySpec, gate: Gate, n_written: int, rejected: list[RejectedRecord], gate_failure: str | None
) -> dict[str, Any]:
    """The privacy part of a run's summary (without its report): counts, the rate test, the reasons it failed.

    Args:
        settings: the protocol's privacy settings (the gate is on).
        gate: the gate the run used.
        n_written: cases written (each passed the check).
        rejected: every flagged attempt.
        gate_failure: why the run stopped early (``on_flag: fail``), or None.
    """
    n_checked = n_written + len(rejected)
    n_flagged = len(rejected)
    pvalue, rate_failed = gate.rate_test(n_flagged, n_checked) if n_checked else (1.0, False)
    out_of_attempts = [r.case_id for r in rejected if r.final and r.action == "resample"]
    reasons = []
    if gate_failure:
        reasons.append(gate_failure)
    if rate_failed:
        reasons.append(
            f"{n_flagged} of {n_checked} samples were flagged, significantly more than the "
            f"{1 - settings.quantile:.1%} expected by chance (binomial p={pvalue:.3g} < alpha={settings.alpha})"
        )
    if out_of_attempts:
        reasons.append(
            f"{len(out_of_attempts)} case(s) were flagged on every attempt (max_attempts {settings.max_attempts}) "
            f"({', '.join(out_of_attempts[:3])}{', ...' if len(out_of_attempts) > 3 else ''})"
        )
    return {
        "gate": True,
        "quantile": settings.quantile,
        "on_flag": settings.on_flag,
        "checked": n_checked,
        "flagged": n_flagged,
        "flagged_rate": round(n_flagged / n_checked, 6) if n_checked else 0.0,
        "expected_rate": round(1 - settings.quantile, 6),
        "pvalue": pvalue,
        "alpha": settings.alpha,
        "failed": bool(reasons),
        "reasons": reasons,
    }
