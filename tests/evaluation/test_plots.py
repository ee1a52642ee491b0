"""Evaluation plots: metric panels titled in words with a better direction, error bars where a std
exists, sample counts, and sample grids that show scans pixel for pixel (read back from the PNG)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsynth.evaluation import plots
from medsynth.evaluation.names import METRICS, metric_name

FIGURES = {
    "fid": {"synthetic": 3.1, "real_baseline": 1.2},
    "kid": {"synthetic": 0.05, "real_baseline": 0.01},
    "kid_std": {"synthetic": 0.02, "real_baseline": 0.004},
    "precision": {"synthetic": 0.8, "real_baseline": 0.9},
    "diversity_ms_ssim": {"synthetic": 0.4, "real_baseline": None},
}
COUNTS = {
    k: {"synthetic": 24, "real_baseline": 24} if k != "diversity_ms_ssim" else {"synthetic": 48, "real_baseline": 30}
    for k in FIGURES
}


def _panels(fig) -> dict[str, object]:
    """Visible panels by their title."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.axison}


def test_every_named_metric_says_which_way_is_better():
    assert metric_name("kid_mean").label == "Kernel Inception Distance (lower is better)"
    for key, name in METRICS.items():
        assert name.title and name.title != key and "_" not in name.title  # words, not the key
        assert name.arrow in ("↑", "↓") and name.direction.startswith(("higher is better", "lower is better"))
    with pytest.raises(KeyError, match="no name"):
        metric_name("not_a_metric")


def test_metric_panels_are_titled_in_words_with_direction_error_bars_and_counts():
    fig = plots.metric_bars_figure(FIGURES, counts=COUNTS, title="fidelity")
    panels = _panels(fig)
    assert len(panels) == 4, "kid_std is drawn on the kid panel, not as a panel of its own"
    titles = " ".join(panels)
    for key in ("fid", "kid", "precision", "diversity_ms_ssim"):
        assert metric_name(key).title.split()[0] in titles
    for raw in ("kid", "fid", "diversity_ms_ssim"):
        assert raw not in titles.split()
    by_key = {
        key: next(ax for t, ax in panels.items() if t.startswith(metric_name(key).title.split()[0]))
        for key in ("fid", "kid", "precision", "diversity_ms_ssim")
    }
    assert "↓ lower is better" in by_key["fid"].get_title()
    assert "↑ higher is better" in by_key["precision"].get_title()

    # Error bars on KID only, one standard deviation long.
    kid_lines = [c for c in by_key["kid"].containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(kid_lines) == 1
    segments = kid_lines[0].lines[2][0].get_segments()
    assert np.allclose(sorted(abs(s[1][1] - s[0][1]) / 2 for s in segments), [0.004, 0.02])
    for key in ("fid", "precision"):
        assert not [c for c in by_key[key].containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert "error bars: one standard deviation" in fig.get_suptitle()

    # Counts under every bar; a missing value draws no bar and no count.
    ticks = {key: [t.get_text() for t in ax.get_xticklabels()] for key, ax in by_key.items()}
    assert ticks["kid"] == ["synthetic\nn = 24", "real baseline\nn = 24"]
    assert ticks["diversity_ms_ssim"] == ["synthetic\nn = 48"]


def test_metric_bars_reject_a_std_without_its_metric(tmp_path):
    with pytest.raises(ValueError, match="fid_std"):
        plots.metric_bars({"fid_std": {"synthetic": 1.0}}, tmp_path / "m.png")


def _find(png: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every position where ``tile`` occurs in ``png`` exactly."""
    h, w = tile.shape
    rows = np.lib.stride_tricks.sliding_window_view(png, (1, w))[:, :, 0, :]
    hits = np.argwhere((rows == tile[0]).all(axis=-1))
    return [(int(y), int(x)) for y, x in hits if y + h <= png.shape[0] and (png[y : y + h, x : x + w] == tile).all()]


@pytest.mark.parametrize(("side", "zoom", "expected"), [(40, 1, 1), (64, None, 2), (20, None, 7), (160, None, 1)])
def test_sample_grid_shows_scans_pixel_for_pixel(tmp_path, side, zoom, expected):
    rng = np.random.default_rng(side)
    real = [rng.random((1, side, side), dtype=np.float32) for _ in range(3)]
    syn = [rng.random((1, side, side), dtype=np.float32) for _ in range(2)]
    volume = rng.random((1, 5, side, side), dtype=np.float32)  # 3D: its middle slice is shown
    rows = {"nodule/CT": (real, syn), "normal/MR": ([volume], syn[:1])}
    path = plots.sample_grid(
        rows, tmp_path / "samples.png", per_row=3, counts={"nodule/CT": (40, 30), "normal/MR": (9, 8)}, zoom=zoom
    )
    assert plots.sample_grid_zoom(real, zoom) == expected
    texts = " ".join(
        t.get_text()
        for t in plots.sample_grid_figure(
            rows, per_row=3, counts={"nodule/CT": (40, 30), "normal/MR": (9, 8)}, zoom=zoom
        ).texts
    )
    assert "nodule/CT\nreal\n3 shown of 40" in texts and "normal/MR\nsynthetic\n1 shown of 8" in texts
    assert "n real = 49, n synthetic = 38" in texts

    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # no colour map, no blending
    png = rgb[..., 0]
    for image in [*real, *syn, volume[:, 2]]:
        gray = np.round(image[0] * 255).astype(np.uint8)
        tile = np.kron(gray, np.ones((expected, expected), np.uint8))
        # The scan, each pixel a whole expected x expected block, once per time it is shown.
        assert len(_find(png, tile)) >= 1, "tile not found pixel-exact in the PNG"
    # Nothing bigger: a tile one pixel larger than the scan does not occur (the next pixel is not the scan's).
    y, x = _find(png, np.kron(np.round(real[0][0] * 255).astype(np.uint8), np.ones((expected, expected), np.uint8)))[0]
    assert (png[y - 1, x : x + side * expected] == 255).all() or y == 0


def test_sample_grid_never_shrinks(tmp_path):
    with pytest.raises(ValueError, match="zoom 0"):
        plots.sample_grid({"a/CT": ([np.zeros((1, 8, 8))], [])}, tmp_path / "s.png", zoom=0)
