"""How much a privacy index can be trusted: its holdout per group and its self-test recall.

An index is only as good as its calibration and its detector. A group's threshold rests on
that group's holdout scans when it has ``min_group_size`` of them, else on the pooled holdout;
a threshold from a few dozen scans is a noisy quantile. The self-test plants edited copies of
training scans; a recall under ``MIN_SELFTEST_RECALL`` on any edit means such copies pass.

Every saved index stores its strength (``index.json``, key ``"strength"``); ``validate`` prints
it and ``generate`` refuses a weak index unless the protocol sets
``privacy: {accept_weak_index: true}`` (``medsynth.protocol.plan_privacy``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# The bars of a strong index (issue #14 part 4). A threshold rests on at least this many holdout
# scans: the 0.99 quantile of 50 scores is their maximum but one, the least a quantile can mean.
MIN_THRESHOLD_SCANS = 50
# Every edit kind of the self-test must be caught this often.
MIN_SELFTEST_RECALL = 0.9


@dataclass(frozen=True)
class IndexStrength:
    """The evidence behind an index's verdicts.

    Args:
        holdout: holdout scans (with a body) per group; their total is the pooled threshold's.
        min_group_size: least holdout scans for a group to get a threshold of its own.
        recall: the self-test's overall recall (None: no self-test was run).
        per_edit: recall per edit kind of the self-test.
        planted: edited copies planted by the self-test.
    """

    holdout: dict[str, int]
    min_group_size: int
    recall: float | None = None
    per_edit: dict[str, float] = field(default_factory=dict)
    planted: int = 0

    @classmethod
    def of(
        cls, holdout_groups: Iterable[str], min_group_size: int, selftest: Mapping[str, Any] | None
    ) -> IndexStrength:
        """From the usable holdout scans' groups and the stored self-test result."""
        st = selftest or {}
        raw = st.get("recall")
        recall = None if raw is None or not np.isfinite(raw) else float(raw)
        return cls(
            holdout=dict(sorted(Counter(holdout_groups).items())),
            min_group_size=int(min_group_size),
            recall=recall,
            per_edit={str(k): float(v) for k, v in (st.get("per_edit") or {}).items()},
            planted=int(st.get("planted") or 0),
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> IndexStrength:
        return cls(
            holdout={str(k): int(v) for k, v in raw["holdout"].items()},
            min_group_size=int(raw["min_group_size"]),
            recall=None if raw.get("recall") is None else float(raw["recall"]),
            per_edit={str(k): float(v) for k, v in (raw.get("per_edit") or {}).items()},
            planted=int(raw.get("planted") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pooled(self) -> int:
        return sum(self.holdout.values())

    def threshold_scans(self, group: str) -> tuple[int, str]:
        """(holdout scans, ``"own"`` or ``"pooled"``) behind the threshold that ``group`` uses."""
        own = self.holdout.get(group, 0)
        return (own, "own") if own >= self.min_group_size else (self.pooled, "pooled")

    def weaknesses(self, groups: Iterable[str]) -> list[str]:
        """One phrase per way the index is weak for the requested ``groups``; empty when strong."""
        out = []
        if self.recall is None:
            out.append("it has no self-test result (it was built without one)")
        else:
            weak = {k: v for k, v in self.per_edit.items() if v < MIN_SELFTEST_RECALL}
            if self.recall < MIN_SELFTEST_RECALL or weak:
                edits = ", ".join(f"{k} {v:.2f}" for k, v in weak.items())
                out.append(
                    f"its self-test recall is {self.recall:.2f} (needs >= {MIN_SELFTEST_RECALL} on every edit"
                    + (f"; {edits}" if edits else "")
                    + ")"
                )
        pooled = []
        for group in dict.fromkeys(groups):
            n, kind = self.threshold_scans(group)
            if n < MIN_THRESHOLD_SCANS and kind == "own":
                out.append(f"{group}'s own threshold rests on {n} holdout scans (needs >= {MIN_THRESHOLD_SCANS})")
            elif n < MIN_THRESHOLD_SCANS:
                pooled.append(group)
        if pooled:
            out.append(
                f"the pooled threshold used by {', '.join(pooled)} rests on {self.pooled} holdout scans "
                f"(needs >= {MIN_THRESHOLD_SCANS})"
            )
        return out

    def lines(self) -> list[str]:
        """A human summary, one line per fact (``validate`` prints it)."""
        groups = ", ".join(f"{g} {n}" for g, n in self.holdout.items())
        own = [g for g, n in self.holdout.items() if n >= self.min_group_size]
        tau = f"own thresholds for {', '.join(own)}; pooled for the rest" if own else "one pooled threshold"
        out = [f"holdout scans: {self.pooled} ({groups}); {tau} (a group needs {self.min_group_size} of its own)"]
        if self.recall is None:
            out.append("self-test: none")
        else:
            edits = ", ".join(f"{k} {v:.2f}" for k, v in self.per_edit.items())
            out.append(f"self-test recall {self.recall:.3f} over {self.planted} planted copies ({edits})")
        return out


def strength_summary(strength: IndexStrength, groups: Iterable[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The strength section of a privacy report's JSON: the facts, the weaknesses for ``groups``
    and whether the protocol accepted them (``privacy.accept_weak_index``)."""
    return {
        **strength.to_dict(),
        "weaknesses": strength.weaknesses(g for g in groups if g),
        "accepted": bool(settings.get("accept_weak_index", False)),
    }


def weakness_banner(section: Mapping[str, Any]) -> str:
    """A red HTML paragraph naming the index's weaknesses; empty when it has none."""
    import html

    if not section.get("weaknesses"):
        return ""
    how = (
        "accepted by the protocol (<code>privacy: {accept_weak_index: true}</code>)"
        if section.get("accepted")
        else "not accepted by any protocol setting"
    )
    items = "".join(f"<li>{html.escape(w)}</li>" for w in section["weaknesses"])
    return (
        f"<div style='color:#a00;border:2px solid #a00;padding:0.5em 1em'><b>Weak privacy index, {how}.</b> "
        f"Its verdicts are less certain than its threshold suggests:<ul>{items}</ul></div>"
    )
