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

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.privacy import report_figures as figs
from medsynth.privacy import report_html as H
from medsynth.privacy.calibration import flagged_rate_test
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict
from medsynth.privacy.lesions import lesion_maps
from medsynth.privacy.provenance import ReportProvenance
from medsynth.privacy.report import MAX_FLAGGED_SHOWN, _flagged, _sample
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
    provenance: ReportProvenance | None = None,
) -> tuple[Path, Path]:
    """Write the JSON and HTML reports into ``out_dir``; return both paths (atomic writes).

    Args:
        out_dir: the folder (created if needed).
        index: the lesion index the verdicts came from (``load_lesion_index``).
        case_ids: opaque case ids, in ``verdicts`` order.
        verdicts: ``PrivacyVerdict`` objects or their ``to_dict()`` forms (manifest lines).
        crops: the checked lesion crops (``lesion_crop``), shown beside each flagged lesion and
            used for the difference where the verdict carries no aligned map; None: such lesions
            have only the training lesion's map.
        backgrounds: per case, where its background came from (``"dataset"`` or ``"synthetic"``).
        settings: the gate's settings, shown as given.
        alpha: level of the flagged-rate test.
        provenance: the provenance block (default: date and version only).
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
        "provenance": (provenance or ReportProvenance()).to_dict(),
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
    maps: dict[int, np.ndarray] = {}
    if crops is not None and shown_at:
        picked = lesion_maps([crops[i] for i in shown_at], index.feature_config).maps
        maps = {i: picked[k] for k, i in enumerate(shown_at) if np.any(picked[k])}
    table = [_row(index, rows, case_ids, i, verdicts[i], maps.get(i), crops) for i in shown_at]
    hist = figs.distributions(index, rows, "lesion")
    html_path = out / REPORT_HTML
    atomic_write_text(html_path, _page(summary, index, table, hist))
    return json_path, html_path


def _row(
    index: PrivacyIndex,
    rows: list[dict[str, Any]],
    case_ids: Sequence[str],
    i: int,
    verdict: PrivacyVerdict | dict[str, Any],
    crop_map: np.ndarray | None,
    crops: Sequence[Scan] | None,
) -> str:
    """One flagged lesion's table row: its crop, the training lesion's stored map and their difference."""
    r = rows[i]
    transform = r.get("transform") or {}
    j = r.get("nearest_index", -1)
    j = j if isinstance(j, int) and 0 <= j < len(index.train_maps) else -1
    aligned = verdict.aligned if isinstance(verdict, PrivacyVerdict) else None
    if aligned is None and crop_map is not None:
        aligned = figs.align(crop_map, transform, index.feature_config.grid)
    panels = figs.case_panels(
        synthetic=crops[i] if crops is not None else None,
        synthetic_map=aligned,
        training=None,
        training_map=index.train_maps[j] if j >= 0 else None,
        transform=transform,
        cfg=index.feature_config,
    )
    image = figs.case_figure(panels) if panels else ""
    return H.flagged_row(str(case_ids[i]), r, figs.describe_transform(transform, index.spatial_dims), image)


def _page(summary: dict[str, Any], index: PrivacyIndex, flagged_rows: list[str], hist: tuple[str, list[str]]) -> str:
    esc = H.esc
    hist_png, titles = hist
    panels = "; ".join(f"({k + 1}) {esc(t)}" for k, t in enumerate(titles))
    rate = summary["flagged_rate_test"]
    st = index.selftest or {}
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
    images_note = (
        "Each lesion: its crop as inserted (where the run kept it), the stored map of its nearest training lesion "
        "(the lesion index holds maps, not images) and the difference of the two maps after the matched transform, "
        "in standard deviations (white: equal)."
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medsynth lesion privacy report</title>
{H.STYLE}</head><body>
<h1>Lesion privacy report: inserted lesions against the training lesions</h1>
{H.sensitivity_notice(H.SHOWS_MAPS if flagged_rows else H.SHOWS_NONE_FLAGGED, "training lesions")}
{weakness_banner(summary["strength"])}
{H.provenance_block(summary["provenance"])}
<h2>Result</h2>
<p>{summary["n_checked"]} inserted lesions checked; <b>{summary["n_flagged"]} flagged</b> ({
        summary["share_flagged"]:.1%}),
{verdict} the {1 - index.quantile:.1%} expected of new lesions (one-sided binomial p = {rate["pvalue"]:.3g},
α = {rate["alpha"]}).</p>{note}
{H.why(H.rate_sentence(summary["n_flagged"], summary["n_checked"], index.quantile, rate, "lesions"))}
<p>Each lesion is compared by itself: everything outside its mask is set to the lesion's mean before its
map is made, so its surroundings cannot decide. τ is the {index.quantile} quantile of the best similarity of
held-out lesions (from scans the model never saw) to the training lesions, per group with at least
{index.min_group_size} held-out lesions, pooled otherwise.</p>
<h2>Settings and thresholds</h2><pre>{esc(json.dumps(summary["settings"], indent=1, default=str))}</pre>
{H.group_rows(summary, "training lesions", "held-out lesions")}
<h2>Scores against τ</h2>
<p>One panel per group with its own τ, and one for the groups judged by the pooled τ, top to bottom: {panels}.
Each series is drawn as the share of its own lesions per bin; the dashed line is the τ that applies.</p>
<img src="{hist_png}" alt="histograms of lesion similarity scores with τ: {panels}">
{
        H.why(
            "Interpretation: inserted lesions of a model that does not copy score like the held-out lesions; "
            "inserted-lesion mass right of τ beyond the held-out share means copied training lesions."
        )
    }
<h2>Flagged lesions, beside their nearest training lesion</h2>
{H.flagged_table(flagged_rows, "nearest training lesion", images_note)}{more}
{
        H.why(
            "Interpretation: a flagged lesion is withheld (its case resampled, dropped or the run fails, per the "
            "settings); a near-blank difference means a copied training lesion."
        )
    }
<h2>Detector self-test</h2>{H.selftest_line(st, "training lesions")}
{H.selftest_rows(st.get("per_edit", {}))}
{
        H.why(
            "Interpretation: the share of known copies the lesion gate caught; under 90% on an edit means copies "
            "edited that way can pass (the index is weak)."
        )
    }
</body></html>"""
