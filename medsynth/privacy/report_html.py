"""HTML pieces both privacy reports share: style, provenance block, sensitivity notice, flagged table.

The pages are read by an ethics board, printed and archived, so every table column has a
header, every figure a caption and every test one sentence saying what its outcome means.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from medsynth.privacy.calibration import POOLED

esc = html.escape

# Classes prefixed "msr-" and one wrapper: the page is standalone, but a report embedded
# elsewhere (a notebook's iframe) must not restyle its host.
STYLE = """<style>
body{font-family:sans-serif;font-size:15px;line-height:1.45;max-width:1180px;margin:2em auto;padding:0 1em;color:#111}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}
th{background:#eee;text-align:left}
.msr-prov td:first-child{font-weight:bold;white-space:nowrap}.msr-prov td{font-family:monospace;font-size:13px}
.msr-notice{border:2px solid #b36b00;background:#fff4e0;padding:.6em 1em;margin:1em 0}
.msr-why{font-style:italic;color:#333;margin-top:.3em}
.msr-img td{border-top:none;padding-bottom:1em}.msr-cases img{max-width:100%}.msr-num{text-align:right;font-family:monospace}
</style>"""


def provenance_block(prov: dict[str, Any]) -> str:
    """The provenance table (``ReportProvenance.to_dict()`` rendered row by row)."""
    from medsynth.privacy.provenance import ReportProvenance

    rows = ReportProvenance(**prov).rows()
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<h2>Provenance</h2><table class="msr-prov"><tr><th>what</th><th>value</th></tr>{body}</table>'


# What a report shows of the training data (``sensitivity_notice``).
SHOWS_SCANS = "scans"  # images of training scans (``medsynth privacy-check``: the caller holds them)
SHOWS_MAPS = "maps"  # the index's feature maps of training scans: coarse images of patient data
SHOWS_NONE_FLAGGED = "none: nothing flagged"  # thumbnails on, but no flagged case to show them beside
SHOWS_NONE_OFF = "none: thumbnails off"  # written with training_thumbnails=False


def sensitivity_notice(shows: str, what: str = "training scans") -> str:
    """The box under the title: whether, and how, the report holds images of the training data.

    Args:
        shows: one of ``SHOWS_SCANS``, ``SHOWS_MAPS``, ``SHOWS_NONE_FLAGGED``, ``SHOWS_NONE_OFF``.
        what: what the training data are, in words (``training scans``, ``training lesions``).
    """
    handle = (
        "Handle, store and share it as patient data, under the rules that govern the training set; do not "
        "release it with the synthetic data (write it with <code>training_thumbnails=False</code> for that).</div>"
    )
    if shows == SHOWS_SCANS:
        return (
            f'<div class="msr-notice"><b>Sensitive: this report contains images of {esc(what)}</b> (patient '
            f"data), shown beside the flagged cases. {handle}"
        )
    if shows == SHOWS_MAPS:
        return (
            f'<div class="msr-notice"><b>Sensitive: this report contains feature maps of {esc(what)}</b> '
            f"(coarse, normalised images of patient data) beside the flagged cases. {handle}"
        )
    if shows == SHOWS_NONE_FLAGGED:
        return (
            '<div class="msr-notice">No case was flagged, so this report holds no images of the training data; '
            f"it lists training ids and scores only. A report with flagged cases shows {esc(what)} beside them "
            "and is then as sensitive as the training data.</div>"
        )
    return (
        '<div class="msr-notice">This report holds no images of the training data (written with '
        "<code>training_thumbnails=False</code>); it lists training ids and scores only.</div>"
    )


def group_label(group: str, used: str) -> str:
    """``nodule/CT`` when the group has its own τ, ``nodule/CT (pooled τ)`` when the pooled one applied."""
    name = group or "?"
    return f"{name} (pooled τ)" if used == POOLED else name


def why(text: str) -> str:
    """One sentence of interpretation under a test."""
    return f'<p class="msr-why">{text}</p>'


def group_rows(summary: dict[str, Any], train_label: str = "train", holdout_label: str = "holdout") -> str:
    """The groups table: sizes and the τ that applies (its own, or the pooled one, named so)."""
    thresholds = summary["thresholds"]
    tau = thresholds[POOLED]
    cells = "".join(
        f"<tr><td>{esc(g)}</td><td class='msr-num'>{s['train']}</td><td class='msr-num'>{s['holdout']}</td>"
        f"<td class='msr-num'>{thresholds.get(g, tau):.4f}</td><td>{'own' if g in thresholds else 'pooled'}</td></tr>"
        for g, s in summary["group_sizes"].items()
    )
    return (
        f"<table><tr><th>group</th><th>{esc(train_label)}</th><th>{esc(holdout_label)}</th><th>τ</th>"
        f"<th>τ from</th></tr>{cells}</table>"
    )


CASE_COLUMNS = 8  # case, group, nearest, score, tau, SSIM, p-value, transform


def flagged_table(rows: Sequence[str], nearest: str = "nearest training scan", image_note: str = "") -> str:
    """The flagged cases: one row of figures each, every column headed, its images in the row below."""
    head = (
        "<tr><th>case</th><th>group (τ used)</th><th>" + esc(nearest) + "</th><th>score</th><th>τ</th>"
        "<th>SSIM</th><th>p-value</th><th>matched transform</th></tr>"
    )
    body = "".join(rows) or f"<tr><td colspan={CASE_COLUMNS}>none</td></tr>"
    note = f"<p>{image_note}</p>" if image_note else ""
    return f'{note}<table class="msr-cases">{head}{body}</table>'


def flagged_row(case: str, row: dict[str, Any], transform_text: str, image: str) -> str:
    """One flagged case's row of figures, and below it a full-width row with its images."""
    ssim = row.get("ssim")
    ssim_text = "—" if ssim is None else f"{float(ssim):.3f}"
    pvalue = row.get("pvalue")
    p_text = "—" if pvalue is None else f"{float(pvalue):.3g}"
    cells = (
        f"<tr><td>{esc(case)}</td><td>{esc(group_label(str(row.get('group', '')), str(row.get('group_used', ''))))}"
        f"</td><td>{esc(str(row.get('nearest', '')))}</td><td class='msr-num'>{row['score']:.4f}</td>"
        f"<td class='msr-num'>{row['threshold']:.4f}</td><td class='msr-num'>{ssim_text}</td>"
        f"<td class='msr-num'>{p_text}</td><td>{esc(transform_text)}</td></tr>"
    )
    if not image:
        return cells
    alt = f"{case} beside its nearest training match, and their difference"
    return cells + f'<tr class="msr-img"><td colspan={CASE_COLUMNS}><img src="{image}" alt="{esc(alt)}"></td></tr>'


# The self-test's planted edits (``selftest.edits``) in words, for the self-test table and docs/privacy.md.
EDIT_WORDS = {
    "exact": "an unchanged copy",
    "flipped": "mirrored left–right",
    "shifted-5px": "moved 4–5 pixels in both in-plane directions",
    "noise-5%": "Gaussian noise of 5% of the intensity range added",
    "intensity-x1.3+offset": "intensities ×1.3 plus 10% of the range",
    "rotated-5deg": "rotated 5° in plane",
    "crop-88%-resized": "cropped to 88% at a random offset and resized back",
    "flip+shift+noise": "mirrored up–down, moved 4–5 pixels and noised (three edits at once)",
    "rotate+crop+intensity": "rotated −5°, cropped to 90% and resized, intensities ×1.3 (three edits at once)",
    "rotated-90": "turned a quarter turn (the lesion self-test only)",
}


def selftest_rows(per_edit: dict[str, float]) -> str:
    """The self-test table: each edit, what it does, and the share of its copies caught."""
    cells = (
        "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(EDIT_WORDS.get(k, '—'))}</td><td class='msr-num'>{v:.0%}</td></tr>"
            for k, v in per_edit.items()
        )
        or "<tr><td colspan=3>no self-test stored in this index</td></tr>"
    )
    return f"<table><tr><th>edit</th><th>what it does to the copy</th><th>recall</th></tr>{cells}</table>"


def selftest_line(st: dict[str, Any], what: str) -> str:
    """The self-test's overall recall in words, or that the index holds none."""
    if not st.get("planted"):
        return (
            "<p>This index holds no self-test (it is run when an index is built from the training data, "
            "unless turned off), so how many copies this gate would miss is not known.</p>"
        )
    return (
        f"<p>Recall on {st['planted']} planted, edited copies of {st.get('sources', '?')} {esc(what)}, made when "
        f"the index was built: <b>{float(st['recall']):.1%}</b> (flagged and matched to the right source).</p>"
    )


def rate_sentence(n_flagged: int, n: int, quantile: float, rate: dict[str, Any], what: str) -> str:
    """What the flagged-rate test's outcome means."""
    expected = (1.0 - quantile) * n
    if rate["significantly_above_expected"]:
        return (
            f"Interpretation: {n_flagged} flagged where about {expected:.1f} of {n} new {what} would be; the excess "
            "is significant, so the model reproduces training data more often than chance allows: do not release "
            "this set."
        )
    return (
        f"Interpretation: {n_flagged} flagged where about {expected:.1f} of {n} new {what} would be; that is "
        "within chance, so this test finds no sign of copying (flagged cases are still withheld one by one)."
    )
