"""``lesion_privacy_report.json`` and ``lesion_privacy_report.html``: the lesion gate's report.

What the lesion gate (``lesions.py``) found for a run's inserted lesions: how many were checked
and flagged, tau per group, the scores against tau beside the held-out lesions' scores, every
flagged lesion beside its nearest training lesion (thumbnails of the index's stored maps, drawn
by the whole-image report's helpers), and, when some backgrounds came from the user's dataset,
the sentence that those backgrounds were not gated by the whole-image check. Ids are the
caller's opaque case ids and the index's ``lesion-00017``; no path or subject appears. The
thumbnails show training lesion maps: the report is as sensitive as the lesion index.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.privacy.calibration import POOLED, flagged_rate_test
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict
from medsynth.privacy.lesions import lesion_maps
from medsynth.privacy.report import MAX_FLAGGED_SHOWN, _flagged, _flagged_table, _histogram, _sample, _sample_map
from medsynth.privacy.strength import strength_summary, weakness_banner

REPORT_JSON = "lesion_privacy_report.json"
REPORT_HTML = "lesion_privacy_report.html"
DATASET_BACKGROUND = "dataset"
DATASET_SENTENCE = (
    "The backgrounds of {n} case(s) are real scans from the user's dataset; they were not gated by "
    "the whole-image check (only their inserted lesions were)."
)


def write_lesion_report(
    out_dir: str | Path,
    *,
    index: PrivacyIndex,
    case_ids: Sequence[str],
    verdicts: Sequence[PrivacyVerdict | dict[str, Any]],
    crops: Sequence[Scan] | None,
    backgrounds: Sequence[str],
    settings: dict[str, Any],
    alpha: float = 0.01,
) -> tuple[Path, Path]:
    """Write the JSON and HTML reports into ``out_dir``; return both paths (atomic writes).

    Args:
        out_dir: the folder (created if needed).
        index: the lesion index the verdicts came from (``load_lesion_index``).
        case_ids: opaque case ids, in ``verdicts`` order.
        verdicts: ``PrivacyVerdict`` objects or their ``to_dict()`` forms (manifest lines).
        crops: the checked lesion crops (``lesion_crop``), for the thumbnails of flagged lesions
            whose verdict carries no aligned map; None: such lesions have only the training one.
        backgrounds: per case, where its background came from (``"dataset"`` or ``"synthetic"``).
        settings: the gate's settings, shown as given.
        alpha: level of the flagged-rate test.
    """
    n = len(verdicts)
    if len(case_ids) != n or len(backgrounds) != n or (crops is not None and len(crops) != n):
        raise ValueError(
            f"write_lesion_report: {len(case_ids)} ids, {len(backgrounds)} backgrounds and "
            f"{'no' if crops is None else len(crops)} crops for {n} verdicts"
        )
    rows = [v.to_dict() if isinstance(v, PrivacyVerdict) else dict(v) for v in verdicts]
    flagged = _flagged(rows)
    thresholds = index.thresholds()
    rate_p, rate_failed = flagged_rate_test(len(flagged), n, index.quantile, alpha)
    n_dataset = sum(1 for b in backgrounds if str(b) == DATASET_BACKGROUND)
    summary = {
        "settings": settings,
        "quantile": index.quantile,
        "thresholds": thresholds,
        "group_sizes": index.group_sizes(),
        "n_checked": n,
        "n_flagged": len(flagged),
        "share_flagged": len(flagged) / n if n else 0.0,
        "expected_share_for_new_lesions": 1.0 - index.quantile,
        "flagged_rate_test": {"pvalue": rate_p, "alpha": alpha, "significantly_above_expected": rate_failed},
        "n_dataset_backgrounds": n_dataset,
        "dataset_backgrounds_note": DATASET_SENTENCE.format(n=n_dataset) if n_dataset else "",
        "selftest": index.selftest,
        "strength": strength_summary(index.strength(), (r.get("group", "") for r in rows), settings),
        "samples": [
            {**_sample(cid, r), "background": str(b)} for cid, r, b in zip(case_ids, rows, backgrounds, strict=True)
        ],
    }
    out = Path(out_dir)
    json_path = out / REPORT_JSON
    atomic_write_text(json_path, json.dumps(summary, indent=1, default=float) + "\n")
    shown_at = flagged[:MAX_FLAGGED_SHOWN]
    maps = None
    if crops is not None and shown_at:
        picked = lesion_maps([crops[i] for i in shown_at], index.feature_config).maps
        maps = np.zeros((n, *picked.shape[1:]), np.float32)
        maps[shown_at] = picked
    shown = {i: _sample_map(verdicts[i], i, maps) for i in shown_at}
    table = _flagged_table(index, rows, case_ids, shown, True)
    scores = np.array([r["score"] for r in rows if r.get("nearest")], float)
    hist = _histogram(
        [(index.holdout_scores[~index.holdout_empty], "held-out lesion → train"), (scores, "inserted lesion → train")],
        thresholds[POOLED],
    )
    html_path = out / REPORT_HTML
    atomic_write_text(html_path, _page(summary, index, table, hist))
    return json_path, html_path


def _page(summary: dict[str, Any], index: PrivacyIndex, flagged_rows: str, hist: str) -> str:
    esc = html.escape
    thresholds, tau = summary["thresholds"], summary["thresholds"][POOLED]
    rate = summary["flagged_rate_test"]
    st = index.selftest or {}
    groups = "".join(
        f"<tr><td>{esc(g)}</td><td>{s['train']}</td><td>{s['holdout']}</td>"
        f"<td>{thresholds.get(g, tau):.4f}{'' if g in thresholds else ' (pooled)'}</td></tr>"
        for g, s in summary["group_sizes"].items()
    )
    verdict = "significantly above" if rate["significantly_above_expected"] else "consistent with"
    note = (
        f"<p><b>{esc(summary['dataset_backgrounds_note'], quote=False)}</b></p>"
        if summary["dataset_backgrounds_note"]
        else ""
    )
    more = (
        f"<p>(first {MAX_FLAGGED_SHOWN} shown; all are in the JSON)</p>"
        if summary["n_flagged"] > MAX_FLAGGED_SHOWN
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medsynth lesion privacy report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 6px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Lesion privacy report: inserted lesions against the training lesions</h1>
{weakness_banner(summary["strength"])}
<p>{summary["n_checked"]} inserted lesions checked; <b>{summary["n_flagged"]} flagged</b> ({summary["share_flagged"]:.1%}),
{verdict} the {1 - index.quantile:.1%} expected of new lesions (one-sided binomial p = {rate["pvalue"]:.3g},
α = {rate["alpha"]}).</p>{note}
<p>Each lesion is compared by itself: everything outside its mask is set to the lesion's mean before its
map is made, so its surroundings cannot decide. τ is the {index.quantile} quantile of the best similarity of
held-out lesions (from scans the model never saw) to the training lesions, per group with at least
{index.min_group_size} held-out lesions, pooled otherwise.</p>
<h2>Settings and thresholds</h2><pre>{esc(json.dumps(summary["settings"], indent=1, default=str))}</pre>
<table><tr><th>group</th><th>training lesions</th><th>held-out lesions</th><th>τ</th></tr>{groups}</table>
<h2>Scores against τ</h2><img src="{hist}">
<h2>Flagged lesions, beside their nearest training lesion</h2>
<table><tr><th>case</th><th>score</th><th>τ</th><th>group</th><th>nearest training lesion</th><th></th></tr>
{flagged_rows or "<tr><td colspan=6>none</td></tr>"}</table>{more}
<h2>Detector self-test</h2><p>Recall on {st.get("planted", 0)} planted copies (exact, flipped, turned, noisy) of
{st.get("sources", "?")} training lesions: <b>{st.get("recall", float("nan")):.1%}</b>.</p>
</body></html>"""
