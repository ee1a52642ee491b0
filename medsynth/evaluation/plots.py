"""Evaluation plots (matplotlib, PNG): sample grids, metric bars, utility against mixing ratio.

Every function writes one PNG atomically and returns its path. Metric panels are titled in words
with their better direction (``medsynth.evaluation.names``, the one place for metric names);
sample grids show scans at full resolution, one scan pixel to a whole number of PNG pixels.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def _gray8(image: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 0..255, rounded: the exact grey levels the PNG holds."""
    return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)


# Pixel layout of sample_grid, in PNG pixels (the figure is drawn at 100 dpi, 1 px = 0.72 pt).
_GRID_DPI = 100
_LABEL_PX, _TITLE_PX, _MARGIN_PX, _GAP_PX, _CLASS_GAP_PX = 170, 46, 8, 4, 18
_MIN_WIDTH_PX = 640
_MIN_TILE_PX = 128  # small scans (64²) are enlarged by a whole factor so they can be read


def sample_grid_zoom(images: Sequence[np.ndarray], zoom: int | None = None) -> int:
    """The whole-number enlargement ``sample_grid`` uses: ``zoom``, else the least one that makes
    the largest scan at least 128 pixels a side (1 for scans of 128 pixels or more)."""
    if zoom is not None:
        if zoom < 1:
            raise ValueError(f"zoom {zoom}: expected a whole number >= 1 (tiles are never shrunk)")
        return int(zoom)
    side = max((max(_thumbnail(im).shape) for im in images), default=_MIN_TILE_PX)
    return max(1, -(-_MIN_TILE_PX // side))


def sample_grid(
    rows: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    path: str | Path,
    *,
    per_row: int = 6,
    counts: Mapping[str, tuple[int, int]] | None = None,
    zoom: int | None = None,
) -> Path:
    """Per class, real scans above synthetic ones, pixel for pixel: ``sample_grid_figure`` as a PNG."""
    fig = sample_grid_figure(rows, per_row=per_row, counts=counts, zoom=zoom)
    with atomic_path(Path(path)) as tmp:
        # No bbox_inches="tight": it would crop and shift the pixel grid of the figure.
        fig.savefig(tmp, format="png", dpi=_GRID_DPI)
    return Path(path)


def sample_grid_figure(
    rows: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    *,
    per_row: int = 6,
    counts: Mapping[str, tuple[int, int]] | None = None,
    zoom: int | None = None,
) -> Figure:
    """Per class, a row of real scans above a row of synthetic ones, pixel for pixel.

    Each scan pixel becomes ``zoom`` x ``zoom`` PNG pixels (nearest neighbour, never shrunk):
    the figure's size is computed from the scans' size and the tiles are placed as pixels,
    not resampled by matplotlib, so what the PNG shows is what the scans hold.

    Args:
        rows: class -> (real images, synthetic images), each channel-first and scaled to [0, 1]
            (the same window for both, so brightness can be compared). Arrays are shown as
            stored: for medsynth's axial slices that is the radiological display convention.
            3D images show their middle slice along array axis 1.
        per_row: images shown per set.
        counts: class -> (n real, n synthetic) in the sets the images were drawn from; shown
            beside each row as "6 shown of 40".
        zoom: enlargement per scan pixel (whole number >= 1); default: ``sample_grid_zoom``.
    """
    from matplotlib.figure import Figure

    classes = list(rows)
    shown = {(c, k): [_gray8(_thumbnail(im)) for im in rows[c][k][:per_row]] for c in classes for k in (0, 1)}
    z = sample_grid_zoom([im[None] for ims in shown.values() for im in ims], zoom)
    cell_h = max((im.shape[0] for ims in shown.values() for im in ims), default=1) * z
    cell_w = max((im.shape[1] for ims in shown.values() for im in ims), default=1) * z
    # At least as wide as the two title lines need, for grids of few or small scans.
    width = max(_MIN_WIDTH_PX, _LABEL_PX + per_row * cell_w + (per_row - 1) * _GAP_PX + _MARGIN_PX)
    height = _TITLE_PX + len(classes) * (2 * cell_h + _GAP_PX) + (len(classes) - 1) * _CLASS_GAP_PX + _MARGIN_PX
    canvas = np.full((height, width), 255, np.uint8)
    fig = Figure(figsize=(width / _GRID_DPI, height / _GRID_DPI), dpi=_GRID_DPI)
    for r, cls in enumerate(classes):
        for k, kind in enumerate(("real", "synthetic")):
            top = _TITLE_PX + r * (2 * cell_h + _GAP_PX + _CLASS_GAP_PX) + k * (cell_h + _GAP_PX)
            for c, im in enumerate(shown[cls, k]):
                tile = np.kron(im, np.ones((z, z), np.uint8))  # nearest neighbour, whole pixels
                y = top + (cell_h - tile.shape[0]) // 2
                x = _LABEL_PX + c * (cell_w + _GAP_PX) + (cell_w - tile.shape[1]) // 2
                canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
            n = f"{len(shown[cls, k])} shown of {counts[cls][k]}" if counts else f"{len(shown[cls, k])} shown"
            fig.text(
                (_LABEL_PX - 8) / width,
                1 - (top + cell_h / 2) / height,
                f"{cls}\n{kind}\n{n}",
                ha="right",
                va="center",
                fontsize=9,
            )
    # figimage puts array pixels on figure pixels one to one (no interpolation, no resampling).
    fig.figimage(np.repeat(canvas[:, :, None], 3, axis=2), xo=0, yo=0, origin="upper")
    totals = ""
    if counts:
        totals = f"; n real = {sum(v[0] for v in counts.values())}, n synthetic = {sum(v[1] for v in counts.values())}"
    scale = "1 scan pixel = 1 image pixel" if z == 1 else f"1 scan pixel = {z}x{z} image pixels"
    fig.text(
        _MARGIN_PX / width,
        1 - 6 / height,
        f"real (upper row) and synthetic (lower row) scans per class, same window{totals}\n"
        f"full resolution, {scale} (nearest neighbour)",
        ha="left",
        va="top",
        fontsize=9,
    )
    return fig


def _finite(values: Mapping[str, float | None]) -> dict[str, float]:
    """The finite values of a series mapping; missing (None) and NaN values are left out."""
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def metric_bars_figure(
    metrics: Mapping[str, Mapping[str, float | None]],
    *,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    title: str = "synthetic vs real baseline",
) -> Figure:
    """The Figure of ``metric_bars`` (for a notebook to show, or a test to read)."""
    from medsynth.evaluation.names import SERIES, metric_name

    names = [k for k in metrics if not k.endswith("_std")]
    for k in metrics:
        if k.endswith("_std") and k[: -len("_std")] not in metrics:
            raise ValueError(f"{k}: a standard deviation without its metric {k[: -len('_std')]!r}")
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = _figure(nrows, ncols, (2.7 * ncols, 2.6 * nrows + 0.5))
    colours = ("#4c72b0", "#999999", "#dd8452", "#55a868")
    has_errors = False
    for i, key in enumerate(names):
        ax = axes[i // ncols, i % ncols]
        name = metric_name(key)
        series = _finite(metrics[key])
        std = _finite(metrics.get(f"{key}_std", {}))
        err = [std.get(k, 0.0) for k in series]
        has_errors |= any(e > 0 for e in err)
        ax.bar(
            range(len(series)),
            list(series.values()),
            color=colours[: len(series)],
            yerr=err if any(e > 0 for e in err) else None,
            capsize=4,
        )
        for x, (v, e) in enumerate(zip(series.values(), err)):
            # Beyond the bar's end and its error bar, so the value is never drawn over the whisker.
            up = v >= 0
            ax.annotate(
                f"{v:.3g}",
                (x, v + e if up else v - e),
                xytext=(0, 3 if up else -3),
                textcoords="offset points",
                ha="center",
                va="bottom" if up else "top",
                fontsize=7,
            )
        if any(v < 0 for v in series.values()):
            # Unbiased estimates (KID, MMD) can fall below 0 when two sets match: show where 0 is,
            # and let the margins pad above 0 too (bars pin their base to the axis otherwise).
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.use_sticky_edges = False
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels(
            [
                SERIES.get(k, k) + (f"\nn = {counts[key][k]}" if counts and k in counts.get(key, {}) else "")
                for k in series
            ],
            fontsize=7,
        )
        ax.set_title(f"{textwrap.fill(name.title, 30)}\n{name.arrow} {name.direction}", fontsize=8)
        ax.margins(y=0.18)  # room for the value labels above the bars
        ax.tick_params(axis="y", labelsize=7)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols, j % ncols].axis("off")
    note = "; error bars: one standard deviation" if has_errors else ""
    fig.suptitle(f"{title}\nn = scans in each set{note}", fontsize=9)
    fig.tight_layout()
    return fig


def metric_bars(
    metrics: Mapping[str, Mapping[str, float | None]],
    path: str | Path,
    *,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    title: str = "synthetic vs real baseline",
    dpi: int = 100,
) -> Path:
    """One panel per metric, one bar per series (e.g. ``synthetic`` and ``real_baseline``).

    Panels are titled in words with the better direction (``medsynth.evaluation.names``).

    Args:
        metrics: metric key -> {series: value}; missing or non-finite values are left out. A key
            ``<metric>_std`` (e.g. ``kid_std``) is drawn as error bars on ``<metric>``.
        counts: metric key -> {series: number of scans the value was computed on}, shown under
            each bar.
    """
    return _save(metric_bars_figure(metrics, counts=counts, title=title), Path(path), dpi)


def arm_bars(
    arms: Mapping[str, Mapping[str, tuple[float, float, float]]],
    path: str | Path,
    *,
    title: str = "downstream utility on the real test set",
    ylabel: str = "score (↑ higher is better)",
    dpi: int = 80,
) -> Path:
    """Grouped bars: per metric, one bar per arm with its confidence interval as error bar.

    Args:
        arms: arm -> metric -> (mean, ci_low, ci_high).
        ylabel: the axis label, with the better direction of the metrics (all of one direction).
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
    ax.set_ylabel(ylabel, fontsize=7)
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
    ylabel: str = "score (↑ higher is better)",
    dpi: int = 80,
) -> Path:
    """Metrics against a swept quantity (synthetic:real ratio, synthetic count, guidance...).

    Args:
        x: the swept values.
        curves: metric -> (means, ci_lows, ci_highs), one entry per ``x``.
        baselines: metric -> value drawn as a dashed line of the same colour (e.g. the real arm).
        ylabel: the axis label, with the better direction of the metrics (all of one direction).
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
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, Path(path), dpi)
