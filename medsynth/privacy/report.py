"""``privacy_report.json`` and ``privacy_report.html``: what an ethics board reads.

The HTML is one self-contained file (plots and thumbnails are inline PNG data URIs). Both
files carry the settings, tau and the group sizes; the flagged share against the ``1 - q``
expected of new scans and its binomial test; the share of training scans matched; the
closer-to-train test; near duplicates inside the training set; the detector's self-test; and
one entry per sample (``case_id``, ``flagged``, ``score``, ``nearest``, ...).

The thumbnails of flagged cases show the matched training scan's feature map (a blurred,
standardised 32x32 view): with ``training_thumbnails=True`` the report is as sensitive as the
privacy index. Pass False for a report that travels with a released data set.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.io.atomic import atomic_write_text
from medsynth.privacy.calibration import POOLED, closer_to_train_test, flagged_rate_test
from medsynth.privacy.features import display_image
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict
from medsynth.privacy.strength import strength_summary, weakness_banner

REPORT_JSON = "privacy_report.json"
REPORT_HTML = "privacy_report.html"
MAX_FLAGGED_SHOWN = 50


def _figure(**kw: Any) -> Any:
    # A Figure outside pyplot: no global backend switch, so a notebook keeps its inline plots.
    from matplotlib.figure import Figure

    return Figure(**kw)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(series: list[tuple[np.ndarray, str]], tau: float) -> str:
    fig = _figure(figsize=(7, 3.2))
    ax = fig.subplots()
    lo = min([0.5] + [float(np.min(s)) for s, _ in series if len(s)])
    bins = np.linspace(max(-1.0, lo - 0.02), 1.0, 61)
    for scores, label in series:
        if len(scores):
            ax.hist(
                np.clip(scores, bins[0], bins[-1]),
                bins=bins,
                alpha=0.5,
                density=True,
                label=f"{label} (n={len(scores)})",
            )
    ax.axvline(tau, color="k", ls="--", label=f"τ (pooled) = {tau:.3f}")
    ax.set_xlabel("best similarity (max NCC over the edit envelope)")
    ax.legend(fontsize=8)
    return _png(fig)


def _pair(a: np.ndarray | None, b: np.ndarray | None) -> str:
    panels = [(img, t) for img, t in ((a, "synthetic"), (b, "nearest training")) if img is not None]
    fig = _figure(figsize=(1.7 * len(panels), 1.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (img, title) in zip(axes[0], panels):
        ax.imshow(display_image(img), cmap="gray")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return _png(fig)


def write_report(
    out_dir: str | Path,
    *,
    index: PrivacyIndex,
    synthetic_ids: Sequence[str],
    verdicts: Sequence[PrivacyVerdict | dict[str, Any]],
    settings: dict[str, Any],
    synthetic_maps: np.ndarray | None = None,
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
        synthetic_maps: feature maps of the samples for the thumbnails of flagged cases, used
            when a verdict does not carry its aligned map (dict verdicts).
        near_duplicate_limit: most training near-duplicate pairs listed.
        training_thumbnails: show the matched training scan next to each flagged case.
        alpha: level of the flagged-rate test.
    """
    out = Path(out_dir)
    if len(synthetic_ids) != len(verdicts):
        raise ValueError(f"write_report: {len(synthetic_ids)} ids for {len(verdicts)} verdicts")
    rows = [v.to_dict() if isinstance(v, PrivacyVerdict) else dict(v) for v in verdicts]
    summary = _summary(index, synthetic_ids, rows, settings, near_duplicate_limit, alpha)
    json_path = out / REPORT_JSON
    atomic_write_text(json_path, json.dumps(summary, indent=1, default=float) + "\n")
    shown = {i: _sample_map(verdicts[i], i, synthetic_maps) for i in _flagged(rows)[:MAX_FLAGGED_SHOWN]}
    table = _flagged_table(index, rows, synthetic_ids, shown, training_thumbnails)
    html_path = out / REPORT_HTML
    atomic_write_text(
        html_path, _page(summary, index, table, _distributions(index, rows, summary["thresholds"][POOLED]))
    )
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
        "train_near_duplicates": _near_duplicates(index, thresholds[POOLED], near_duplicate_limit),
        "train_pairs_searched": len(index.train_self_scores),
        "selftest": index.selftest,
        "strength": strength_summary(index.strength(), (r.get("group", "") for r in rows), settings),
        "samples": [_sample(sid, r) for sid, r in zip(synthetic_ids, rows)],
    }


def _near_duplicates(index: PrivacyIndex, tau: float, limit: int) -> list[dict[str, Any]]:
    """Training pairs more alike than the pooled tau, most alike first (at most ``limit``)."""
    return [
        {
            "a": index.train_ids[int(index.train_self_query[i])],
            "b": index.train_ids[int(index.train_self_nearest[i])],
            "score": float(index.train_self_scores[i]),
        }
        for i in np.argsort(-index.train_self_scores)
        if index.train_self_scores[i] > tau
    ][:limit]


def _sample(case_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """One checked case as the JSON lists it."""
    extra = ("threshold", "pvalue", "ratio", "ssim", "group", "group_used", "closer_to_train")
    return {
        "case_id": str(case_id),
        "flagged": not row["passed"],
        "score": row["score"],
        "nearest": row.get("nearest", ""),
        **{k: row[k] for k in extra if k in row},
    }


# -- the HTML page --------------------------------------------------------------------------


def _sample_map(
    verdict: PrivacyVerdict | dict[str, Any], i: int, synthetic_maps: np.ndarray | None
) -> np.ndarray | None:
    """The map shown for case ``i``: its aligned map, else its row of ``synthetic_maps``."""
    aligned = verdict.aligned if isinstance(verdict, PrivacyVerdict) else None
    shown = aligned if aligned is not None else (synthetic_maps[i] if synthetic_maps is not None else None)
    # The runner passes zeros for cases it has no map of.
    return shown if shown is not None and np.any(shown) else None


def _flagged_table(
    index: PrivacyIndex,
    rows: list[dict[str, Any]],
    synthetic_ids: Sequence[str],
    shown: dict[int, np.ndarray | None],
    training_thumbnails: bool,
) -> str:
    """Table rows of the cases at the positions ``shown``, each with its map (None: no thumbnail)."""
    esc = html.escape
    id_to_index = {tid: i for i, tid in enumerate(index.train_ids)}
    cells = []
    for i, left in shown.items():
        r = rows[i]
        j = id_to_index.get(r.get("nearest", ""), -1)
        right = index.train_maps[j] if (training_thumbnails and j >= 0) else None
        img = f'<img src="{_pair(left, right)}">' if (left is not None or right is not None) else ""
        cells.append(
            f"<tr><td>{esc(str(synthetic_ids[i]))}</td><td>{r['score']:.4f}</td><td>{r['threshold']:.4f}</td>"
            f"<td>{esc(str(r.get('group_used', '')))}</td><td>{esc(str(r.get('nearest', '')))}</td><td>{img}</td></tr>"
        )
    return "".join(cells)


def _distributions(index: PrivacyIndex, rows: list[dict[str, Any]], tau: float) -> str:
    """The histogram of holdout, synthetic (with a body) and train->train similarities."""
    scores = np.array([r["score"] for r in rows], float)
    return _histogram(
        [
            (index.holdout_scores[~index.holdout_empty], "holdout → train"),
            (scores[[bool(r.get("nearest")) for r in rows]] if rows else scores, "synthetic → train"),
            (index.train_self_scores, "train → train (nearest other)"),
        ],
        tau,
    )


def _page(summary: dict[str, Any], index: PrivacyIndex, flagged_rows: str, hist: str) -> str:
    """The self-contained HTML report: ``summary`` in words, tables and plots."""
    esc = html.escape
    thresholds, tau = summary["thresholds"], summary["thresholds"][POOLED]
    rate, closer = summary["flagged_rate_test"], summary["closer_to_train_test"]
    st = index.selftest or {}
    group_rows = "".join(
        f"<tr><td>{esc(g)}</td><td>{s['train']}</td><td>{s['holdout']}</td>"
        f"<td>{thresholds.get(g, tau):.4f}{'' if g in thresholds else ' (pooled)'}</td></tr>"
        for g, s in summary["group_sizes"].items()
    )
    dups = (
        "".join(f"<li>{esc(d['a'])} ~ {esc(d['b'])} ({d['score']:.3f})</li>" for d in summary["train_near_duplicates"])
        or "<li>none</li>"
    )
    per_edit = "".join(f"<tr><td>{esc(k)}</td><td>{v:.0%}</td></tr>" for k, v in st.get("per_edit", {}).items())
    verdict_line = (
        f"<b style='color:#a00'>significantly above</b> the {1 - index.quantile:.1%} expected of new scans"
        if rate["significantly_above_expected"]
        else f"consistent with the {1 - index.quantile:.1%} expected of new scans"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>medsynth privacy report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 6px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Privacy report: memorization check</h1>
{weakness_banner(summary["strength"])}
<p>{summary["n_checked"]} synthetic cases checked; <b>{summary["n_flagged"]} flagged</b> ({summary["share_flagged"]:.1%}),
{verdict_line} (one-sided binomial p = {rate["pvalue"]:.3g}, α = {rate["alpha"]}). Unique training scans that are some case's
nearest: {summary["unique_training_matched"]} of {len(index.train_ids)} ({summary["share_training_matched"]:.1%}); matched by flagged
cases: {summary["unique_training_matched_by_flagged"]} ({summary["share_training_matched_by_flagged"]:.1%}).
{summary["n_without_body"]} cases had no body to compare (constant images; never flagged).</p>
<h2>Settings and thresholds</h2><pre>{esc(json.dumps(summary["settings"], indent=1, default=str))}</pre>
<p>τ is the {index.quantile} quantile of the best similarity of holdout scans (never seen by the model) to
the training set, per group with at least {index.min_group_size} holdout scans, pooled otherwise. A case is
flagged when its best similarity to a training scan exceeds τ.</p>
<table><tr><th>group</th><th>train</th><th>holdout</th><th>τ</th></tr>{group_rows}</table>
<h2>Similarity distributions</h2><img src="{hist}">
<h2>Closer to train than to holdout</h2><p>{closer["n_closer"]} of {closer["n"]} cases are more similar to
their nearest training scan than to their nearest holdout scan (share {closer["share"]:.3f}; expected for a
model that does not memorize: {closer["p0"]:.3f}, the training set's share of all real scans); one-sided
binomial p-value {closer["pvalue"]:.3g}.</p>
<h2>Flagged cases</h2><table><tr><th>case</th><th>score</th><th>τ</th><th>group</th><th>nearest training scan</th><th></th></tr>
{flagged_rows or "<tr><td colspan=6>none</td></tr>"}</table>
{"<p>(first " + str(MAX_FLAGGED_SHOWN) + " shown; all are in the JSON)</p>" if summary["n_flagged"] > MAX_FLAGGED_SHOWN else ""}
<h2>Near duplicates inside the training set</h2><p>Pairs above τ among {summary["train_pairs_searched"]} training
scans searched against the rest:</p><ul>{dups}</ul>
<h2>Detector self-test</h2><p>Recall on {st.get("planted", 0)} planted, edited copies of {st.get("sources", "?")}
training scans: <b>{st.get("recall", float("nan")):.1%}</b> (flagged and matched to the right source).</p>
<table><tr><th>edit</th><th>recall</th></tr>{per_edit}</table>
</body></html>"""
