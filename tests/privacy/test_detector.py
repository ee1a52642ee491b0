"""Planted copies of training scans are caught and matched; genuinely new scans pass.

Phantoms are the hard case: every subject has the same anatomy plan, so look-alikes abound.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medsynth.cli import main
from medsynth.data.phantoms import make_phantom
from medsynth.io.scan import Scan
from medsynth.privacy import PrivacyIndex, flagged_rate_test, load_index_for_model
from medsynth.seeding import numpy_rng


def _phantoms(seeds, dim=2, size=64):
    return [make_phantom(dim=dim, pathologies=p, modality="CT", seed=s, size=size) for s in seeds for p in ("normal",)]


def _crop_resize(a: np.ndarray, frac: float) -> np.ndarray:
    h, w = a.shape
    ch, cw = round(h * frac), round(w * frac)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return ndimage.zoom(a[y0 : y0 + ch, x0 : x0 + cw], (h / ch, w / cw), order=1)[:h, :w]


def _edits(scan: Scan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    a = scan.array[0]
    span = float(a.max() - a.min())
    noise = lambda x: x + rng.normal(0, 0.05 * span, x.shape)  # noqa: E731
    return {
        "exact": a,
        "flipped": a[:, ::-1],
        "shifted-5px": np.roll(a, (5, -4), axis=(0, 1)),
        "noise-5%": noise(a),
        "intensity": 1.3 * a + 200.0,
        "rotated-5deg": ndimage.rotate(a, 5, reshape=False, order=1, mode="nearest"),
        "crop-88%": _crop_resize(a, 0.88),
        "flip+shift+noise": noise(np.roll(a[::-1, :], 3, axis=1)),
        "rotate+crop+intensity": (
            1.3 * _crop_resize(ndimage.rotate(a, -5, reshape=False, order=1, mode="nearest"), 0.9) - 50
        ),
    }


@pytest.fixture(scope="module")
def index2d() -> tuple[PrivacyIndex, list[Scan]]:
    train = _phantoms(range(40))
    holdout = _phantoms(range(1000, 1050))
    index = PrivacyIndex.build(
        train, holdout, train_groups=["normal/CT"] * len(train), holdout_groups=["normal/CT"] * len(holdout)
    )
    return index, train


def test_planted_copies_are_flagged_and_matched_to_their_source(index2d):
    index, train = index2d
    rng = numpy_rng("planted")
    queries, sources, kinds = [], [], []
    for i in range(0, 40, 5):
        for kind, arr in _edits(train[i], rng).items():
            queries.append(train[i].with_array(np.asarray(arr, np.float32)[None]))
            sources.append(f"train-{i:05d}")
            kinds.append(kind)
    verdicts = index.check(queries, ["normal/CT"] * len(queries))
    caught = [(not v.passed) and v.nearest == s for v, s in zip(verdicts, sources)]
    missed = [k for k, c in zip(kinds, caught) if not c]
    assert np.mean(caught) >= 0.99, f"missed edits: {missed}"


def test_genuinely_new_scans_are_rarely_flagged(index2d):
    index, _ = index2d
    new = _phantoms(range(5000, 5050))
    verdicts = index.check(new, ["normal/CT"] * len(new))
    rate = np.mean([not v.passed for v in verdicts])
    assert rate <= 0.02
    assert all(0 < v.pvalue <= 1 for v in verdicts)


def test_index_round_trip_and_selftest(index2d, tmp_path):
    index, train = index2d
    assert index.selftest["recall"] >= 0.99
    (tmp_path / "model").mkdir()
    index.save(tmp_path / "model" / "privacy")
    loaded = load_index_for_model(tmp_path / "model")
    a, b = index.check(train[:2], ["normal/CT"] * 2), loaded.check(train[:2], ["normal/CT"] * 2)
    assert [v.score for v in a] == pytest.approx([v.score for v in b], abs=1e-6)
    stored = json.loads((tmp_path / "model" / "privacy" / "index.json").read_text())
    assert not any("phantom" in str(x) for x in stored["train_ids"])  # opaque ids only


def test_missing_index_is_a_clear_error(tmp_path):
    from medsynth.errors import InputError

    with pytest.raises(InputError, match="privacy-index"):
        load_index_for_model(tmp_path)


def test_flagged_rate_test():
    assert flagged_rate_test(1, 100, 0.99)[1] is False
    assert flagged_rate_test(10, 100, 0.99)[1] is True


def _edits_3d(scan: Scan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """3D edits; shifts are in-plane, as in 2D (a shift along the slice axis brings new anatomy
    into the volume: a known limit, see docs/privacy.md)."""
    a = scan.array[0]
    span = float(a.max() - a.min())
    noise = lambda x: x + rng.normal(0, 0.05 * span, x.shape)  # noqa: E731
    return {
        "exact": a,
        "flipped": a[:, :, ::-1],
        "shifted-3px": np.roll(a, (3, -2), axis=(1, 2)),
        "noise-5%": noise(a),
        "intensity": 1.3 * a + 200.0,
        "rotated-5deg": ndimage.rotate(a, 5, axes=(1, 2), reshape=False, order=1, mode="nearest"),
        "flip+shift+noise": noise(np.roll(a[:, ::-1], 2, axis=2)),
    }


def test_3d_planted_copies_are_caught_and_new_volumes_pass():
    train = _phantoms(range(16), dim=3, size=32)
    holdout = _phantoms(range(100, 130), dim=3, size=32)
    index = PrivacyIndex.build(train, holdout, train_groups=["n"] * 16, holdout_groups=["n"] * 30, run_selftest=False)
    assert index.thresholds()["pooled"] < 0.999  # tau must leave room above new subjects
    rng = numpy_rng("planted-3d")
    queries, sources, kinds = [], [], []
    for i in (0, 5, 10, 15):
        for kind, arr in _edits_3d(train[i], rng).items():
            queries.append(train[i].with_array(np.asarray(arr, np.float32)[None]))
            sources.append(f"train-{i:05d}")
            kinds.append(kind)
    verdicts = index.check(queries, ["n"] * len(queries))
    missed = [
        (k, round(v.score, 4), v.nearest) for k, v, s in zip(kinds, verdicts, sources) if v.passed or v.nearest != s
    ]
    # 3D margins are thinner than 2D (16^3 maps; tau ~0.986): the combined edit can fall just
    # under tau (measured 27/28 caught, docs/privacy.md), so the bar is 90%, not 2D's 99%.
    assert len(missed) <= 0.1 * len(queries), f"missed 3D edits (tau {verdicts[0].threshold:.4f}): {missed}"
    new = _phantoms(range(900, 930), dim=3, size=32)
    flagged = [not v.passed for v in index.check(new, ["n"] * len(new))]
    assert sum(flagged) <= 3  # about 1/31 expected with tau at the holdout's maximum


def test_privacy_check_cli_passes_new_fails_copies_and_reports(tmp_path):
    from medsynth.data.phantoms import phantom_dataset

    def csv(name, seed, count):
        return phantom_dataset(
            tmp_path / name,
            dim=2,
            count=count,
            fmt="nifti",
            seed=seed,
            size=64,
            pathologies=("normal",),
            modalities=("CT",),
        )

    def privacy_check(train, holdout, synthetic, out) -> int:
        args = ["--train", train, "--holdout", holdout, "--synthetic", synthetic, "--out", out]
        return main(["privacy-check", *map(str, args)])

    train, holdout, new = csv("train", 0, 30), csv("holdout", 500, 30), csv("new", 900, 10)
    assert privacy_check(train, holdout, new, tmp_path / "r1") == 0
    report = json.loads((tmp_path / "r1" / "privacy_report.json").read_text())
    assert {"case_id", "flagged", "score", "nearest"} <= set(report["samples"][0])
    assert (tmp_path / "r1" / "privacy_report.html").read_text().count("data:image/png;base64") >= 1
    # the training set itself, checked as "synthetic": everything is a copy -> exit 3
    assert privacy_check(train, holdout, train, tmp_path / "r2") == 3
    assert privacy_check(tmp_path / "nope.csv", holdout, new, tmp_path / "r3") == 2
