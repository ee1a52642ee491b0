"""The privacy reports' figures: score histograms and flagged cases beside their nearest training scan.

Every figure is a matplotlib ``Figure`` (outside pyplot, so a notebook keeps its inline backend)
returned as an inline PNG data URI, so a report stays one self-contained HTML file.

A flagged case is drawn as three panels: the synthetic scan, its nearest training scan (each as
stored, in the display orientation of ``features.py``, CT in a named window; a volume's middle
axial slice) and their **difference after alignment**: both scans are made into fine
(``DETAIL_GRID``) body-standardised, pose-normalised maps with the detector's own recipe, the
synthetic one is warped by the transform the search matched, and the training map is subtracted,
so the difference is in body standard deviations and is what the score compared. Where only the
index's feature maps exist (a protocol run: the model's index holds no training images) the
panels say so and the difference is of the feature maps.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsynth.io.scan import Scan
from medsynth.privacy.calibration import POOLED
from medsynth.privacy.envelope import Warper, warp
from medsynth.privacy.features import FeatureConfig, _canonical, _feature, display_image
from medsynth.privacy.index import PrivacyIndex

# CT window of the case panels: the lung window shows the body outline, the lungs and lesions in
# them at once (a mediastinal W350/L40 window would hide nodules in the black lung).
CT_WINDOW = ("lung window W1500/L−600", -1350.0, 150.0)
MR_WINDOW = "window: 1st–99th percentile"
DETAIL_GRID = {2: 128, 3: 64}  # side of the fine maps the difference is computed on
DIFF_RANGE = 3.0  # the difference panel spans +-3 body standard deviations


def figure(**kw: Any) -> Any:
    # A Figure outside pyplot: no global backend switch, so a notebook keeps its inline plots.
    from matplotlib.figure import Figure

    return Figure(**kw)


def png(fig: Any, dpi: int = 90) -> str:
    """``fig`` as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- histograms -----------------------------------------------------------------------------


@dataclass
class HistPanel:
    """One histogram: its title, the score series (values, label) and the threshold drawn."""

    title: str
    series: list[tuple[np.ndarray, str]]
    tau: float
    tau_label: str


def histograms(panels: Sequence[HistPanel]) -> str:
    """``histogram_figure(panels)`` as a PNG data URI."""
    return png(histogram_figure(panels))


def histogram_figure(panels: Sequence[HistPanel]) -> Any:
    """Panels stacked vertically, on the scores' own range, y as the share of each series per bin."""
    values = [np.asarray(s, float) for p in panels for s, _ in p.series if len(s)]
    lo = min([float(v.min()) for v in values] + [p.tau for p in panels])
    hi = max([float(v.max()) for v in values] + [p.tau for p in panels])
    pad = max(0.02 * (hi - lo), 0.002)
    bins = np.linspace(lo - pad, hi + pad, 51)
    # Constrained layout: it makes room for the legends below the axes, which keep the full width.
    fig = figure(figsize=(12.0, 4.4 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        for k, (scores, label) in enumerate(panel.series):
            scores = np.asarray(scores, float)
            if not len(scores):
                continue
            # Weights 1/n: each bar is the share of that series' scans, so sets of any size compare.
            weights = np.full(len(scores), 1.0 / len(scores))
            ax.hist(scores, bins=bins, weights=weights, alpha=0.55, color=f"C{k}", label=f"{label} (n = {len(scores)})")
        ax.axvline(panel.tau, color="k", ls="--", lw=1.5, label=f"{panel.tau_label} = {panel.tau:.3f}")
        ax.set_title(panel.title, fontsize=13)
        ax.set_xlabel("best similarity to a training scan (max NCC over the edit envelope)", fontsize=11)
        ax.set_ylabel("share of the series' scans per bin", fontsize=11)
        ax.set_xlim(bins[0], bins[-1])
        ax.tick_params(labelsize=10)
        # Below the axes: inside, it hid bars wherever the scores fell; beside them, it took half the width.
        ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return fig


# The series' names in the two reports' histograms: (held out, checked, units of the holdout count).
SERIES = {
    "scan": ("holdout → train", "synthetic → train", "holdout scans"),
    "lesion": ("held-out lesion → train", "inserted lesion → train", "held-out lesions"),
}


def distributions(index: PrivacyIndex, rows: Sequence[dict[str, Any]], kind: str = "scan") -> tuple[str, list[str]]:
    """Histograms of holdout, checked (with a body) and train->train scores: one panel per group with
    its own tau, one for the groups judged by the pooled tau. Returns the PNG and the panels' titles.

    ``kind``: ``"scan"`` (whole images) or ``"lesion"`` (the lesion index: no train->train search).
    """
    held, checked, units = SERIES[kind]
    thresholds = index.thresholds()
    keep = ~index.holdout_empty
    ho_scores, ho_groups = index.holdout_scores[keep], np.array(index.holdout_groups, dtype=object)[keep]
    self_groups = np.array([index.train_groups[int(q)] for q in index.train_self_query], dtype=object)
    own = [g for g in thresholds if g != POOLED]

    def scores(group: str) -> np.ndarray:
        return np.array([r["score"] for r in rows if r.get("nearest") and r.get("group_used") == group], float)

    panels = [
        HistPanel(
            f"{g} (own τ from {int(np.sum(ho_groups == g))} {units})",
            [
                (ho_scores[ho_groups == g], held),
                (scores(g), checked),
                (index.train_self_scores[self_groups == g], "train → train (nearest other)"),
            ],
            thresholds[g],
            f"τ for {g}",
        )
        for g in own
    ]
    pooled = scores(POOLED)
    rest = [g for g in index.group_sizes() if g not in thresholds]
    if not own or len(pooled) or rest:
        title = "all groups (pooled τ)" if not own else f"groups judged by the pooled τ: {', '.join(rest) or '—'}"
        others = ~np.isin(self_groups, own) if own else np.ones(len(self_groups), bool)
        panels.append(
            HistPanel(
                title,
                [
                    (ho_scores, f"{held} (all groups: the pooled τ's calibration)" if own else held),
                    (pooled, checked),
                    (index.train_self_scores[others], "train → train (nearest other)"),
                ],
                thresholds[POOLED],
                "pooled τ",
            )
        )
    return histograms(panels), [p.title for p in panels]


# -- flagged cases --------------------------------------------------------------------------


@dataclass
class Panel:
    """One image of a case figure."""

    title: str
    image: np.ndarray
    vmin: float
    vmax: float
    cmap: str = "gray"


def _axial(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """A 2D view: the array itself, or a volume's middle slice along axis 0 (axial in ``SPL``)."""
    if arr.ndim == 2:
        return arr, ""
    k = arr.shape[0] // 2
    return arr[k], f", axial slice {k + 1} of {arr.shape[0]}"


def scan_panel(scan: Scan, title: str) -> Panel:
    """The scan as stored, in the display orientation, CT in the lung window, MR by percentiles."""
    img, where = _axial(_canonical(scan)[0])
    if scan.modality == "CT":
        name, lo, hi = CT_WINDOW
    else:
        name = MR_WINDOW
        lo, hi = (float(v) for v in np.percentile(img, [1.0, 99.0]))
        hi = hi if hi > lo else lo + 1.0
    return Panel(f"{title}\n{scan.modality}, {name}{where}", img, lo, hi)


def map_panel(feature: np.ndarray, title: str) -> Panel:
    """A feature map (body-standardised, clipped to +-5 SD): shown over +-3 SD."""
    img = display_image(feature)
    return Panel(title, img, -DIFF_RANGE, DIFF_RANGE)


def _flip_index(warper: Warper, axes: Sequence[int]) -> int:
    return warper.flips.index(tuple(int(a) for a in axes))


def align(feature: np.ndarray, transform: dict[str, Any], index_grid: int) -> np.ndarray:
    """``feature`` (a map of any side) warped by a transform the search found on ``index_grid`` maps.

    Flips, zoom and rotation do not depend on the map's side; the shift is in pixels of the
    index's maps, so it is scaled to this map's side.
    """
    if not transform:
        return feature
    if transform.get("axes"):  # the lesion search's transpose comes first (``lesions.py``)
        feature = np.transpose(feature, [int(a) for a in transform["axes"]])
    dims, side = feature.ndim, feature.shape[0]
    warper = Warper(dims, side)
    shift = torch.tensor([[float(v) * side / index_grid for v in transform["shift_px"]]])
    theta = warper.thetas(
        torch.tensor([_flip_index(warper, transform["flip_axes"])]),
        torch.tensor([float(transform["zoom"])]),
        torch.tensor([float(transform["rotation_deg"])]),
        shift,
    )
    x = torch.from_numpy(np.ascontiguousarray(feature, np.float32))[None, None]
    return warp(x, theta[:, None])[0, 0, 0].numpy()


def detail_map(scan: Scan, cfg: FeatureConfig) -> np.ndarray | None:
    """The scan as a fine map with the index's recipe (``features._feature`` on a larger grid)."""
    side = DETAIL_GRID[cfg.spatial_dims]
    fine = FeatureConfig(cfg.spatial_dims, side, side, clip=cfg.clip, body_radius=cfg.body_radius, smooth=0.35)
    out = _feature(scan, fine)
    return None if out is None else out[0] * out[1]


def difference_panel(a: np.ndarray, b: np.ndarray, title: str) -> Panel:
    """``a - b`` of two aligned maps in body standard deviations, blue-white-red over +-3 SD."""
    img, _ = _axial(a - b)
    return Panel(title, img, -DIFF_RANGE, DIFF_RANGE, cmap="RdBu_r")


def case_panels(
    *,
    synthetic: Scan | None,
    synthetic_map: np.ndarray | None,
    training: Scan | None,
    training_map: np.ndarray | None,
    transform: dict[str, Any],
    cfg: FeatureConfig,
) -> list[Panel]:
    """The panels of one flagged case: the two scans (or maps where no scan is at hand) and their difference."""
    panels: list[Panel] = []
    if synthetic is not None:
        panels.append(scan_panel(synthetic, "synthetic scan"))
    elif synthetic_map is not None:
        panels.append(map_panel(synthetic_map, "synthetic (feature map,\naligned to the training scan)"))
    if training is not None:
        panels.append(scan_panel(training, "nearest training scan"))
    elif training_map is not None:
        panels.append(map_panel(training_map, "nearest training scan:\nfeature map (the index\nholds no images)"))
    if synthetic is not None and training is not None:
        fine_s, fine_t = detail_map(synthetic, cfg), detail_map(training, cfg)
        if fine_s is not None and fine_t is not None:
            aligned = align(fine_s, transform, cfg.grid)
            panels.append(difference_panel(aligned, fine_t, "difference after alignment\n(synthetic − training, SD)"))
            return panels
    if training_map is not None:
        aligned_map = synthetic_map
        if aligned_map is None and synthetic is not None:
            made = _feature(synthetic, cfg)
            aligned_map = None if made is None else align(made[0] * made[1], transform, cfg.grid)
        if aligned_map is not None:
            title = "difference of feature maps\n(synthetic − training, SD)"
            panels.append(difference_panel(aligned_map, training_map, title))
    return panels


def case_figure(panels: Sequence[Panel]) -> str:
    """The panels side by side, each at least as many pixels as its image (nearest-neighbour, so a
    64² scan shows its own pixels), with a colour bar on the difference."""
    # 4.2 inches a panel: with constrained layout each image keeps about 258 px at the reports' 90 dpi
    # (at least a 256² scan's own pixels), and three panels (1144 px) fit the page's width.
    side = 4.2
    fig = figure(figsize=(side * len(panels), side * 0.85 + 0.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        shown = ax.imshow(p.image, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation="nearest")
        ax.set_title(p.title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if p.cmap != "gray" or p.title.startswith(("synthetic (feature", "nearest training scan:")):
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=8)
    return png(fig)


_AXIS_NAMES = {2: ("up–down", "left–right"), 3: ("head–foot", "front–back", "left–right")}


def describe_transform(transform: dict[str, Any], dims: int) -> str:
    """The matched edit in words, e.g. ``flipped left–right; zoom ×1.05; rotated +5.0°; shifted (1.0, −2.0) px``."""
    if not transform:
        return "—"
    axes = [int(a) for a in transform.get("axes", [])]
    parts = ["axes transposed (" + ", ".join(map(str, axes)) + ")"] if axes and axes != sorted(axes) else []
    parts += [f"flipped {_AXIS_NAMES[dims][a]}" for a in transform.get("flip_axes", [])]
    zoom, rot = float(transform.get("zoom", 1.0)), float(transform.get("rotation_deg", 0.0))
    shift = [float(v) for v in transform.get("shift_px", [])]
    if abs(zoom - 1.0) > 1e-4:
        parts.append(f"zoom ×{zoom:.3f}")
    if abs(rot) > 1e-3:
        parts.append(f"rotated {rot:+.1f}°")
    if any(abs(v) > 1e-3 for v in shift):
        parts.append("shifted (" + ", ".join(f"{v:.1f}" for v in shift) + ") map px")
    return "; ".join(parts) or "none (as is)"
