"""Evaluation plots (matplotlib, PNG): sample grids, metric bars, utility against mixing ratio.

Every function writes one PNG atomically and returns its path. Figures are kept small (low dpi,
grayscale thumbnails) so they can be committed under docs/img/ (target: under 200 KB each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medsynth.io.atomic import atomic_path


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    # A Figure outside pyplot: files only, and no global backend switch that would stop a
    # notebook from drawing inline afterwards.
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path, dpi: int) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """A 2D view of a channel-first image: 2D as is, 3D its middle slice (array axis 1)."""
    a = np.asarray(image)[0]
    return a if a.ndim == 2 else a[a.shape[0] // 2]


def sample_grid(
    rows: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    path: str | Path,
    *,
    per_row: int = 6,
    dpi: int = 72,
) -> Path:
    """Per class, a row of real scans next to a row of synthetic ones.

    Args:
        rows: class -> (real images, synthetic images), each channel-first and scaled to [0, 1]
            (the same window for both, so brightness can be compared). Arrays are shown as
            stored: for medsynth's axial slices that is the radiological display convention.
        path: PNG to write.
        per_row: images shown per set.
    """
    classes = list(rows)
    fig, axes = _figure(2 * len(classes), per_row, (1.1 * per_row, 2.3 * len(classes)))
    for r, cls in enumerate(classes):
        for k, (kind, images) in enumerate(zip(("real", "synthetic"), rows[cls])):
            for c in range(per_row):
                ax = axes[2 * r + k, c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c < len(images):
                    ax.imshow(_thumbnail(images[c]), cmap="gray", vmin=0.0, vmax=1.0)
                if c == 0:
                    ax.set_ylabel(f"{cls}\n{kind}", fontsize=7)
    fig.suptitle("real (top) vs synthetic (bottom) per class", fontsize=9)
    return _save(fig, Path(path), dpi)


def metric_bars(
    metrics: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    title: str = "synthetic vs real baseline",
    dpi: int = 80,
) -> Path:
    """One small panel per metric, one bar per series (e.g. ``synthetic`` and ``real_baseline``).

    Args:
        metrics: metric name -> {series name: value}; missing or non-finite values are left out.
    """
    names = list(metrics)
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = _figure(nrows, ncols, (2.4 * ncols, 2.0 * nrows))
    colours = ("#4c72b0", "#999999", "#dd8452", "#55a868")
    for i, name in enumerate(names):
        ax = axes[i // ncols, i % ncols]
        series = {k: v for k, v in metrics[name].items() if v is not None and np.isfinite(v)}
        ax.bar(range(len(series)), list(series.values()), color=colours[: len(series)])
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels(list(series), fontsize=7, rotation=15)
        ax.set_title(name, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols, j % ncols].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def arm_bars(
    arms: Mapping[str, Mapping[str, tuple[float, float, float]]],
    path: str | Path,
    *,
    title: str = "downstream utility on the real test set",
    dpi: int = 80,
) -> Path:
    """Grouped bars: per metric, one bar per arm with its confidence interval as error bar.

    Args:
        arms: arm -> metric -> (mean, ci_low, ci_high).
    """
    arm_names = list(arms)
    metric_names = list(next(iter(arms.values())))
    fig, axes = _figure(1, 1, (1.3 + 1.4 * len(metric_names), 2.6))
    ax = axes[0, 0]
    width = 0.8 / len(arm_names)
    for a, arm in enumerate(arm_names):
        xs = np.arange(len(metric_names)) + (a - (len(arm_names) - 1) / 2) * width
        means = np.array([arms[arm][m][0] for m in metric_names])
        lo = np.array([arms[arm][m][1] for m in metric_names])
        hi = np.array([arms[arm][m][2] for m in metric_names])
        # Rates live in [0, 1]: clip the error bars of few-seed t-intervals that overshoot.
        err = np.vstack([means - np.clip(lo, 0, 1), np.clip(hi, 0, 1) - means])
        ax.bar(xs, means, width, label=arm, yerr=err, capsize=2)
    ax.set_xticks(range(len(metric_names)))
    ax.set_xticklabels(metric_names, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return _save(fig, Path(path), dpi)


def metric_curves(
    x: Sequence[float],
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    baselines: Mapping[str, float] | None = None,
    title: str = "",
    dpi: int = 80,
) -> Path:
    """Metrics against a swept quantity (synthetic:real ratio, synthetic count, guidance...).

    Args:
        x: the swept values.
        curves: metric -> (means, ci_lows, ci_highs), one entry per ``x``.
        baselines: metric -> value drawn as a dashed line of the same colour (e.g. the real arm).
    """
    fig, axes = _figure(1, 1, (4.2, 2.8))
    ax = axes[0, 0]
    for i, (name, (mean, lo, hi)) in enumerate(curves.items()):
        colour = f"C{i}"
        ax.plot(x, mean, marker="o", color=colour, label=name)
        # The figures are rates in [0, 1]; a t-interval from few seeds can overshoot, so clip the band.
        ax.fill_between(x, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=colour, alpha=0.15)
        if baselines and name in baselines:
            ax.axhline(baselines[name], color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, Path(path), dpi)
