"""``privacy_report.json`` and ``privacy_report.html``: what an ethics board reads.

The HTML is one self-contained file (plots and thumbnails are inline PNG data URIs).
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
from medsynth.privacy.features import display_image
from medsynth.privacy.index import PrivacyIndex, PrivacyVerdict, closer_to_train_test


def _figure(**kw: Any) -> Any:
    """A Figure outside pyplot: no global backend switch, so notebooks keep drawing inline."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(index: PrivacyIndex, synthetic: np.ndarray, tau: float) -> str:
    fig = _figure(figsize=(7, 3.2))
    ax = fig.subplots()
    bins = np.linspace(-0.2, 1.0, 61)
    for scores, label in (
        (index.holdout_scores, "holdout → train"),
        (synthetic, "synthetic → train"),
        (index.train_self_scores, "train → train (nearest other)"),
    ):
        if len(scores):
            ax.hist(np.clip(scores, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True, label=label)
    ax.axvline(tau, color="k", ls="--", label=f"τ (pooled) = {tau:.3f}")
    ax.set_xlabel("best similarity to the training set (max NCC over the edit envelope)")
    ax.legend(fontsize=8)
    return _png(fig)


def _pair(a: np.ndarray, b: np.ndarray) -> str:
    fig = _figure(figsize=(3.2, 1.7))
    axes = fig.subplots(1, 2)
    for ax, img, title in zip(axes, (a, b), ("synthetic", "nearest training")):
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
) -> tuple[Path, Path]:
    """Write the JSON and HTML reports into ``out_dir``; return both paths.

    Args:
        synthetic_ids: case ids (or paths) of the checked samples, in ``verdicts`` order.
        verdicts: ``PrivacyVerdict`` objects or their ``to_dict()`` forms.
        settings: the gate's settings (quantile, on_flag, ...), shown as given.
        synthetic_maps: optional feature maps of the samples, for side-by-side thumbnails
            of flagged cases (without them only the training side is shown).
    """
    out = Path(out_dir)
    rows = [v.to_dict() if isinstance(v, PrivacyVerdict) else dict(v) for v in verdicts]
    scores = np.array([r["score"] for r in rows], float)
    flagged = [i for i, r in enumerate(rows) if not r["passed"]]
    matched = {r["nearest"] for r in rows if r.get("nearest")}
    thresholds = index.thresholds()
    tau = thresholds["pooled"]
    dup_idx = np.nonzero(index.train_self_scores > tau)[0][:near_duplicate_limit]
    near_duplicates = [
        {"a": index.train_ids[i], "b": index.train_ids[int(index.train_self_nearest[i])],
         "score": float(index.train_self_scores[i])}
        for i in dup_idx
    ]
    summary = {
        "settings": settings,
        "quantile": index.quantile,
        "thresholds": thresholds,
        "group_sizes": index.group_sizes(),
        "n_checked": len(rows),
        "n_flagged": len(flagged),
        "share_flagged": len(flagged) / len(rows) if rows else 0.0,
        "unique_training_matched": len(matched),
        "share_training_matched": len(matched) / max(1, len(index.train_ids)),
        "closer_to_train_test": closer_to_train_test(rows),
        "train_near_duplicates": near_duplicates,
        "selftest": index.selftest,
        "samples": [
            {"case_id": sid, "flagged": not r["passed"], "score": r["score"], "nearest": r.get("nearest", ""),
             **{k: r[k] for k in ("threshold", "pvalue", "ratio", "ssim", "group_used") if k in r}}
            for sid, r in zip(synthetic_ids, rows)
        ],
    }
    json_path = out / "privacy_report.json"
    atomic_write_text(json_path, json.dumps(summary, indent=1, default=float))

    esc = html.escape
    id_to_index = {tid: i for i, tid in enumerate(index.train_ids)}
    flagged_html = []
    for i in flagged[:50]:
        r = rows[i]
        j = id_to_index.get(r.get("nearest", ""), -1)
        img = ""
        if j >= 0:
            left = synthetic_maps[i] if synthetic_maps is not None else np.zeros_like(index.train_maps[j])
            img = f'<img src="{_pair(left, index.train_maps[j])}">'
        flagged_html.append(
            f"<tr><td>{esc(str(synthetic_ids[i]))}</td><td>{r['score']:.4f}</td><td>{r['threshold']:.4f}</td>"
            f"<td>{esc(str(r.get('nearest', '')))}</td><td>{img}</td></tr>"
        )
    ct = summary["closer_to_train_test"]
    st = index.selftest or {}
    groups = "".join(
        f"<tr><td>{esc(g)}</td><td>{s['train']}</td><td>{s['holdout']}</td>"
        f"<td>{thresholds.get(g, tau):.4f}{'' if g in thresholds else ' (pooled)'}</td></tr>"
        for g, s in summary["group_sizes"].items()
    )
    dups = "".join(f"<li>{esc(d['a'])} ~ {esc(d['b'])} ({d['score']:.3f})</li>" for d in near_duplicates) or "<li>none</li>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medsynth privacy report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 6px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Privacy report: memorization check</h1>
<p>{len(rows)} synthetic cases checked; <b>{len(flagged)} flagged</b> ({summary['share_flagged']:.1%}); expected for
genuinely new scans: {1 - index.quantile:.1%}. Unique training scans matched as nearest:
{len(matched)} of {len(index.train_ids)} ({summary['share_training_matched']:.1%}).</p>
<h2>Settings and thresholds</h2><pre>{esc(json.dumps(settings, indent=1, default=str))}</pre>
<p>τ is the {index.quantile} quantile of the best similarity of holdout scans (never seen by the model) to
the training set, per group with at least {index.min_group_size} holdout scans, pooled otherwise.</p>
<table><tr><th>group</th><th>train</th><th>holdout</th><th>τ</th></tr>{groups}</table>
<h2>Similarity distributions</h2><img src="{_histogram(index, scores, tau)}">
<h2>Closer to train than to holdout</h2><p>{ct['closer_to_train']} of {ct['n']} samples
(fraction {ct['fraction']:.3f}; about 0.5 expected for a model that does not memorize); two-sided binomial
p-value {ct['pvalue']:.3g}.</p>
<h2>Flagged cases</h2><table><tr><th>case</th><th>score</th><th>τ</th><th>nearest training scan</th><th></th></tr>
{''.join(flagged_html) or '<tr><td colspan=5>none</td></tr>'}</table>
<h2>Near duplicates inside the training set</h2><ul>{dups}</ul>
<h2>Detector self-test</h2><p>Recall on {st.get('planted', 0)} planted edited copies of training scans:
<b>{st.get('recall', float('nan')):.1%}</b> (flagged and matched to the right source). Per edit:
{esc(json.dumps(st.get('per_edit', {})))}</p>
</body></html>"""
    html_path = out / "privacy_report.html"
    atomic_write_text(html_path, page)
    return json_path, html_path
