"""``privacy_report.json`` and ``privacy_report.html``: what an ethics board reads.

The HTML is one self-contained file (plots and images are inline PNG data URIs). It opens with
the provenance (date, medsynth version, model and index digests, protocol, training-set
fingerprint: ``provenance.py``) and a notice of what it holds, then the settings, tau and the
group sizes; the flagged share against the ``1 - q`` expected of new scans and its binomial test;
the score histograms, per group where a group has its own tau; the closer-to-train test; every
flagged case as the synthetic scan, its nearest training scan and their difference, with the
matched transform, score, tau, SSIM and p-value; near duplicates inside the training set, each
pair once, with the count expected by chance; and the detector's self-test. Each test has one
sentence saying what its outcome means. The JSON holds the same figures and one entry per sample
(``case_id``, ``flagged``, ``score``, ``nearest``, ...).

Images of training scans appear only where the caller holds them (``training_scans``:
``medsynth privacy-check``); a protocol run has only the model's index, whose feature maps are
then shown (and named so). With ``training_thumbnails=True`` the report is as sensitive as the
training data; pass False for a report that travels with a released data set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.privacy import report_figures as figs
from medsynth.privacy import report_html as H
from medsynth.privacy.calibration import closer_to_train_test, flagged_rate_test, group_for
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict
from medsynth.privacy.provenance import ReportProvenance
from medsynth.privacy.strength import strength_summary, weakness_banner

REPORT_JSON = "privacy_report.json"
REPORT_HTML = "privacy_report.html"
MAX_FLAGGED_SHOWN = 50

# Training scans by their position in the index (a sequence, e.g. a lazy catalog, or a function).
TrainingScans = Sequence[Scan] | Callable[[int], Scan]


def write_report(
    out_dir: str | Path,
    *,
    index: PrivacyIndex,
    synthetic_ids: Sequence[str],
    verdicts: Sequence[PrivacyVerdict | dict[str, Any]],
    settings: dict[str, Any],
    synthetic_maps: np.ndarray | None = None,
    synthetic_scans: Sequence[Scan | None] | None = None,
    training_scans: TrainingScans | None = None,
    provenance: ReportProvenance | None = None,
    near_duplicate_limit: int = 20,
    training_thumbnails: bool = True,
    alpha: float = 0.01,
) -> tuple[Path, Path]:
    """Write the JSON and HTML reports into ``out_dir``; return both paths (atomic writes).

    Args:
        out_dir: the folder (created if needed).
        index: the privacy index the verdicts came from.
        synthetic_ids: case ids (or paths) of the checked samples, in ``verdicts`` order.
        verdicts: ``PrivacyVerdict`` objects or their ``to_dict()`` forms (e.g. manifest lines).
        settings: the gate's settings (quantile, on_flag, ...), shown as given.
        synthetic_maps: feature maps of the samples (not aligned), used for flagged cases whose
            verdict carries no aligned map and that have no scan in ``synthetic_scans``.
        synthetic_scans: the samples themselves, in ``verdicts`` order (None where absent); only
            flagged positions are read, so a lazy sequence costs nothing for the rest.
        training_scans: the training scans in index order, where the caller holds them; each
            flagged case is then drawn beside its nearest training scan and their difference.
        provenance: the provenance block (default: date and version only, the rest "not recorded").
        near_duplicate_limit: most training near-duplicate pairs listed.
        training_thumbnails: show the nearest training scan (or its map) beside each flagged case.
        alpha: level of the flagged-rate test.
    """
    out = Path(out_dir)
    if len(synthetic_ids) != len(verdicts):
        raise ValueError(f"write_report: {len(synthetic_ids)} ids for {len(verdicts)} verdicts")
    prov = provenance or ReportProvenance()
    rows = [v.to_dict() if isinstance(v, PrivacyVerdict) else dict(v) for v in verdicts]
    summary = _summary(index, synthetic_ids, rows, settings, near_duplicate_limit, alpha)
    summary = {"provenance": prov.to_dict(), **summary}
    json_path = out / REPORT_JSON
    atomic_write_text(json_path, json.dumps(summary, indent=1, default=float) + "\n")
    shown = _flagged(rows)[:MAX_FLAGGED_SHOWN]
    table = flagged_rows(
        index,
        rows,
        synthetic_ids,
        shown,
        aligned=[_aligned(verdicts[i], rows[i], i, synthetic_maps, index) for i in shown],
        synthetic_scans=[synthetic_scans[i] if synthetic_scans is not None else None for i in shown],
        training_scans=training_scans if training_thumbnails else None,
        training_thumbnails=training_thumbnails,
    )
    if not training_thumbnails:
        shows = H.SHOWS_NONE_OFF
    elif not shown:
        shows = H.SHOWS_NONE_FLAGGED
    else:
        shows = H.SHOWS_SCANS if training_scans is not None else H.SHOWS_MAPS
    html_path = out / REPORT_HTML
    atomic_write_text(html_path, _page(summary, index, table, figs.distributions(index, rows), shows))
    return json_path, html_path


def _flagged(rows: list[dict[str, Any]]) -> list[int]:
    """Positions of the flagged cases."""
    return [i for i, r in enumerate(rows) if not r["passed"]]


# -- the JSON summary -----------------------------------------------------------------------


def _summary(
    index: PrivacyIndex,
    synthetic_ids: Sequence[str],
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    near_duplicate_limit: int,
    alpha: float,
) -> dict[str, Any]:
    """Everything the JSON report holds (the HTML shows it too)."""
    flagged = _flagged(rows)
    nearest_all = {r["nearest"] for r in rows if r.get("nearest")}
    nearest_flagged = {rows[i]["nearest"] for i in flagged if rows[i].get("nearest")}
    thresholds = index.thresholds()
    rate_p, rate_failed = flagged_rate_test(len(flagged), len(rows), index.quantile, alpha)
    with_body = [r for r in rows if r.get("nearest") and r.get("closer_to_train") is not None]
    closer = closer_to_train_test(
        sum(bool(r["closer_to_train"]) for r in with_body),
        len(with_body),
        len(index.train_ids),
        len(index.holdout_groups),
    )
    searched = len(index.train_self_scores)
    above = _self_taus(index) < index.train_self_scores
    pairs = _near_duplicates(index)
    return {
        "settings": settings,
        "quantile": index.quantile,
        "thresholds": thresholds,
        "group_sizes": index.group_sizes(),
        "n_checked": len(rows),
        "n_flagged": len(flagged),
        "share_flagged": len(flagged) / len(rows) if rows else 0.0,
        "expected_share_for_new_scans": 1.0 - index.quantile,
        "flagged_rate_test": {"pvalue": rate_p, "alpha": alpha, "significantly_above_expected": rate_failed},
        "n_without_body": sum(1 for r in rows if not r.get("nearest")),
        "unique_training_matched": len(nearest_all),
        "share_training_matched": len(nearest_all) / max(1, len(index.train_ids)),
        "unique_training_matched_by_flagged": len(nearest_flagged),
        "share_training_matched_by_flagged": len(nearest_flagged) / max(1, len(index.train_ids)),
        "closer_to_train_test": closer,
        "train_near_duplicates": pairs[:near_duplicate_limit],
        "train_near_duplicate_pairs": len(pairs),
        "train_pairs_searched": searched,
        "train_scans_above_tau": int(np.count_nonzero(above)),
        # Without duplicates a training scan's nearest other scan is as alike as a new scan's
        # nearest training scan, so about 1 - q of the searched scans exceed tau by chance.
        "train_scans_above_tau_expected": (1.0 - index.quantile) * searched,
        "train_duplicates_test": dict(
            zip(
                ("pvalue", "significantly_above_expected"),
                flagged_rate_test(int(np.count_nonzero(above)), searched, index.quantile, alpha),
            )
        ),
        "selftest": index.selftest,
        "strength": strength_summary(index.strength(), (r.get("group", "") for r in rows), settings),
        "samples": [_sample(sid, r) for sid, r in zip(synthetic_ids, rows)],
    }


def _self_taus(index: PrivacyIndex) -> np.ndarray:
    """The tau of each searched training scan's group (its own, or the pooled one)."""
    table = index.thresholds()
    return np.array([table[group_for(index.train_groups[int(q)], table)] for q in index.train_self_query], float)


def _near_duplicates(index: PrivacyIndex) -> list[dict[str, Any]]:
    """Training pairs more alike than the tau of the searched scan's group, most alike first, each pair once.

    A pair that are each other's nearest is found from both ends: it is listed once.
    """
    seen: set[frozenset[int]] = set()
    out = []
    taus = _self_taus(index)
    for i in np.argsort(-index.train_self_scores, kind="stable"):
        if index.train_self_scores[i] <= taus[i]:
            continue
        a, b = int(index.train_self_query[i]), int(index.train_self_nearest[i])
        if frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        out.append({"a": index.train_ids[a], "b": index.train_ids[b], "score": float(index.train_self_scores[i])})
    return out


def _sample(case_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """One checked case as the JSON lists it."""
    extra = ("threshold", "pvalue", "ratio", "ssim", "group", "group_used", "closer_to_train", "transform")
    return {
        "case_id": str(case_id),
        "flagged": not row["passed"],
        "score": row["score"],
        "nearest": row.get("nearest", ""),
        **{k: row[k] for k in extra if k in row},
    }


# -- flagged cases --------------------------------------------------------------------------


def _aligned(
    verdict: PrivacyVerdict | dict[str, Any],
    row: dict[str, Any],
    i: int,
    synthetic_maps: np.ndarray | None,
    index: PrivacyIndex,
) -> np.ndarray | None:
    """Case ``i``'s map in its nearest training scan's frame: the verdict's, else its row of
    ``synthetic_maps`` warped by the matched transform."""
    if isinstance(verdict, PrivacyVerdict) and verdict.aligned is not None and np.any(verdict.aligned):
        return verdict.aligned
    if synthetic_maps is None or not np.any(synthetic_maps[i]):  # the runner passes zeros for cases it has no map of
        return None
    return figs.align(synthetic_maps[i], row.get("transform") or {}, index.feature_config.grid)


def _training_scan(training_scans: TrainingScans | None, j: int) -> Scan | None:
    if training_scans is None or j < 0:
        return None
    return training_scans(j) if callable(training_scans) else training_scans[j]


def flagged_rows(
    index: PrivacyIndex,
    rows: list[dict[str, Any]],
    ids: Sequence[str],
    shown: Sequence[int],
    *,
    aligned: Sequence[np.ndarray | None],
    synthetic_scans: Sequence[Scan | None],
    training_scans: TrainingScans | None,
    training_thumbnails: bool,
) -> list[str]:
    """The table rows of the cases at positions ``shown``, each with its side-by-side figure."""
    id_to_index = {tid: k for k, tid in enumerate(index.train_ids)}
    out = []
    for i, amap, scan in zip(shown, aligned, synthetic_scans, strict=True):
        r = rows[i]
        j = id_to_index.get(r.get("nearest", ""), -1)
        train_scan = _training_scan(training_scans, j)
        train_map = index.train_maps[j] if (training_thumbnails and j >= 0) else None
        panels = figs.case_panels(
            synthetic=scan,
            synthetic_map=amap,
            training=train_scan,
            training_map=train_map,
            transform=r.get("transform") or {},
            cfg=index.feature_config,
        )
        image = figs.case_figure(panels) if panels else ""
        text = figs.describe_transform(r.get("transform") or {}, index.spatial_dims)
        out.append(H.flagged_row(str(ids[i]), r, text, image))
    return out


# -- the HTML page --------------------------------------------------------------------------


def _page(
    summary: dict[str, Any],
    index: PrivacyIndex,
    flagged_rows_html: list[str],
    hist: tuple[str, list[str]],
    shows: str,
) -> str:
    """The self-contained HTML report: ``summary`` in words, tables and plots."""
    esc = H.esc
    rate, closer = summary["flagged_rate_test"], summary["closer_to_train_test"]
    st = index.selftest or {}
    q = index.quantile
    dups = summary["train_near_duplicates"]
    dup_items = (
        "".join(
            f"<tr><td>{esc(d['a'])}</td><td>{esc(d['b'])}</td><td class='msr-num'>{d['score']:.4f}</td></tr>"
            for d in dups
        )
        or "<tr><td colspan=3>none</td></tr>"
    )
    above, expected = summary["train_scans_above_tau"], summary["train_scans_above_tau_expected"]
    verdict_line = (
        f"<b style='color:#a00'>significantly above</b> the {1 - q:.1%} expected of new scans"
        if rate["significantly_above_expected"]
        else f"consistent with the {1 - q:.1%} expected of new scans"
    )
    closer_why = (
        "Interpretation: synthetic scans sit nearer the training scans than new real scans do, more often than "
        "chance allows: a sign of memorization even where no single case exceeds τ."
        if closer["pvalue"] < rate["alpha"]
        else "Interpretation: synthetic scans are no nearer the training set than new real scans would be: no sign "
        "of memorization by this test."
    )
    images_note = {
        H.SHOWS_SCANS: "Each case: the synthetic scan and its nearest training scan as stored (CT in the "
        f"{figs.CT_WINDOW[0]}, MR from the 1st to the 99th percentile; a volume's middle axial slice), and their "
        "difference after the matched transform, in body standard deviations (white: equal; red: synthetic "
        "brighter; blue: darker). A near-white difference means the synthetic scan is a copy of that training scan.",
        H.SHOWS_MAPS: "Each case: the synthetic scan as generated and, for its nearest training scan, the feature "
        "map that the model's privacy index stores (it holds no training images); the difference is of the two "
        "feature maps after the matched transform, in body standard deviations (white: equal). To see the training "
        "scans themselves, run <code>medsynth privacy-check</code> where the training data is at hand.",
        H.SHOWS_NONE_OFF: "Training scans are not shown (written with <code>training_thumbnails=False</code>); "
        "each case is listed with its nearest training scan's id.",
    }.get(shows, "")
    hist_png, hist_titles = hist
    dup_test = summary["train_duplicates_test"]
    dup_why = (
        f"Interpretation: {above} training scans above τ where about {expected:.1f} are expected is significantly "
        f"more than chance (binomial p = {dup_test['pvalue']:.3g}): the training set holds duplicated files or "
        "several scans of one patient (neighbouring slices); de-duplicate it and split by patient before training. "
        "These are real training scans, not synthetic output."
        if dup_test["significantly_above_expected"]
        else f"Interpretation: {above} training scans above τ where about {expected:.1f} are expected is within "
        f"chance (binomial p = {dup_test['pvalue']:.3g}): no sign of duplicated training scans. These are real "
        "training scans, not synthetic output."
    )
    panels = "; ".join(f"({k + 1}) {esc(t)}" for k, t in enumerate(hist_titles))
    more = (
        f"<p>(first {MAX_FLAGGED_SHOWN} shown; all are in the JSON)</p>"
        if summary["n_flagged"] > MAX_FLAGGED_SHOWN
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medsynth privacy report</title>
{H.STYLE}</head><body>
<h1>Privacy report: memorization check</h1>
{H.sensitivity_notice(shows)}
{weakness_banner(summary["strength"])}
{H.provenance_block(summary["provenance"])}
<h2>Result</h2>
<p>{summary["n_checked"]} synthetic cases checked; <b>{summary["n_flagged"]} flagged</b> ({
        summary["share_flagged"]:.1%}),
{verdict_line} (one-sided binomial p = {rate["pvalue"]:.3g}, α = {
        rate["alpha"]
    }). Unique training scans that are some case's
nearest: {summary["unique_training_matched"]} of {len(index.train_ids)} ({
        summary["share_training_matched"]:.1%}); matched by flagged
cases: {summary["unique_training_matched_by_flagged"]} ({summary["share_training_matched_by_flagged"]:.1%}).
{summary["n_without_body"]} cases had no body to compare (constant images; never flagged).</p>
{H.why(H.rate_sentence(summary["n_flagged"], summary["n_checked"], q, rate, "scans"))}
<h2>Settings and thresholds</h2><pre>{esc(json.dumps(summary["settings"], indent=1, default=str))}</pre>
<p>τ is the {q} quantile of the best similarity of holdout scans (never seen by the model, other patients) to
the training set, per group (pathology/modality) with at least {index.min_group_size} holdout scans with a body,
pooled over all holdout scans otherwise. A case is flagged when its best similarity to a training scan exceeds
the τ of its group; a new scan is flagged with probability about {1 - q:.1%}.</p>
{H.group_rows(summary)}
<h2>Similarity distributions</h2>
<p>One panel per group with its own τ, and one for the groups judged by the pooled τ, top to bottom: {panels}.
Each series is drawn as the share of its own scans per bin, so sets of different sizes compare; the dashed line is
the τ that applies.</p>
<img src="{hist_png}" alt="histograms of holdout, synthetic and training similarity scores with τ: {panels}">
{
        H.why(
            "Interpretation: a model that does not copy gives a synthetic curve that lies within or left of the "
            "holdout curve; synthetic mass right of τ beyond the holdout's own share means near copies."
        )
    }
<h2>Closer to train than to holdout</h2><p>{closer["n_closer"]} of {closer["n"]} cases are more similar to
their nearest training scan than to their nearest holdout scan (share {closer["share"]:.3f}). A scan from the
population is nearest to a training scan with probability p0 = {closer["p0"]:.3f}, the training set's share of all
real scans ({len(index.train_ids)} of {len(index.train_ids) + len(index.holdout_groups)}); one-sided binomial
p-value {closer["pvalue"]:.3g}.</p>
{H.why(closer_why)}
<h2>Flagged cases</h2>
{H.flagged_table(flagged_rows_html, image_note=images_note)}{more}
{
        H.why(
            "Interpretation: a flagged case is withheld from the output (resampled, dropped or the run fails, per "
            "the settings); a score far above τ with a high SSIM and a near-blank difference is a copy."
        )
    }
<h2>Near duplicates inside the training set</h2><p>{summary["train_pairs_searched"]} training scans were searched
against the rest of the training set; {above} of them have a nearest other training scan above the τ of their
group (the table above). They make {summary["train_near_duplicate_pairs"]} distinct pairs{
        f" (the {len(dups)} most alike listed)" if len(dups) < summary["train_near_duplicate_pairs"] else ""
    }; a pair whose scans are each other's nearest is found from both ends and listed once. Expected by chance for a
set without duplicates: about {expected:.1f} of the {summary["train_pairs_searched"]} searched scans above τ (a
training scan's nearest other scan is as alike as a new scan's nearest training scan, so 1 − q = {1 - q:.1%} of them
exceed τ by chance).</p>
<table><tr><th>training scan</th><th>its near duplicate</th><th>score</th></tr>{dup_items}</table>
{H.why(dup_why)}
<h2>Detector self-test</h2>{H.selftest_line(st, "training scans")}
{H.selftest_rows(st.get("per_edit", {}))}
{
        H.why(
            "Interpretation: the share of known copies the gate caught, per kind of edit; under 90% on an edit means "
            "copies edited that way can pass this gate (the index is weak)."
        )
    }
</body></html>"""
