"""The detector's self-test: planted, edited copies of training scans must be caught.

Run when an index is built (the training scans are at hand only then); its recall is stored
in the index and shown in every report, so a reader sees how well the detector worked on this
very training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth.io.scan import Scan
from medsynth.seeding import numpy_rng

if TYPE_CHECKING:
    from medsynth.privacy.index import PrivacyIndex


def _edits(scan: Scan, rng: np.random.Generator) -> dict[str, Scan]:
    a = scan.array
    span = float(a.max() - a.min()) or 1.0
    return {
        "exact": scan,
        "flipped": scan.with_array(np.flip(a, axis=-1)),
        "shifted-3px": scan.with_array(np.roll(a, 3, axis=-1)),
        "noise-5%": scan.with_array(a + rng.normal(0, 0.05 * span, a.shape).astype(np.float32)),
        "intensity-x1.3+offset": scan.with_array(1.3 * a + 0.1 * span),
    }


def detector_selftest(index: "PrivacyIndex", train: Sequence[Scan], n: int = 12) -> dict[str, Any]:
    """Recall over edited copies of up to ``n`` training scans (flagged and matched to the source)."""
    from medsynth.privacy.features import scan_features

    rng = numpy_rng("privacy-selftest", len(train))
    pick = rng.choice(len(train), size=min(n, len(train)), replace=False)
    queries, sources, kinds = [], [], []
    for i in pick:
        for kind, edited in _edits(train[int(i)], rng).items():
            queries.append(edited)
            sources.append(int(i))
            kinds.append(kind)
    feats = scan_features(queries, index.feature_config)
    search, _ = index._searches()
    res = search.search(feats.maps, feats.fov)
    tau = index.thresholds()["pooled"]
    hit = (res.score > tau) & (res.nearest == np.array(sources))
    per_kind = {k: float(np.mean([h for h, kk in zip(hit, kinds) if kk == k])) for k in dict.fromkeys(kinds)}
    return {"planted": len(queries), "recall": float(hit.mean()), "per_edit": per_kind, "threshold": tau}
