"""Utility: the scores against independent formulas, and the three arms end to end on phantoms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsynth.errors import InputError
from medsynth.evaluation import utility as U
from medsynth.evaluation.sources import LabelledScans


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy 2-core machine, 2 threads run these small CNNs 4x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- scores ------------------------------------------------------------------------------------


def test_recall_and_balanced_accuracy_by_hand():
    truth = ["a", "a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "a", "b", "b", "a", "a"]
    assert U.per_class_recall(truth, pred, ["a", "b", "c", "d"]) == {"a": 0.75, "b": 0.5, "c": 0.0}
    assert U.balanced_accuracy(truth, pred, ["a", "b", "c", "d"]) == pytest.approx((0.75 + 0.5 + 0) / 3)


def _rank_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC as the Mann-Whitney probability P(pos > neg) + 0.5 P(pos == neg)."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_macro_auroc_equals_the_mean_of_one_vs_rest_rank_aucs():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "unused"]
    truth = list(rng.choice(["a", "b", "c"], size=60))
    proba = np.round(rng.random((60, 4)), 1)  # rounding makes ties, which count one half
    idx = {"a": 0, "b": 1, "c": 2}
    proba[:, 0] += 0.3 * (np.asarray(truth) == "a")
    expected = np.mean(
        [_rank_auc(proba[np.asarray(truth) == c, k], proba[np.asarray(truth) != c, k]) for c, k in idx.items()]
    )
    assert U.macro_auroc(truth, proba, classes) == pytest.approx(expected, abs=1e-6)  # MONAI sums in fp32
    with pytest.raises(ValueError, match="at least two classes"):
        U.macro_auroc(["a"] * 5, proba[:5], classes)


def test_t_interval_by_hand():
    lo, hi = U.t_interval([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (lo, hi) == pytest.approx((0.6 - half, 0.6 + half))
    assert U.t_interval([0.4]) == (0.4, 0.4)


def test_budget_is_steps_or_epochs_of_the_real_set():
    assert U.UtilityConfig(steps=77).budget(1000) == 77
    assert U.UtilityConfig(epochs=2, batch_size=32).budget(100) == 8  # 2 * ceil(100 / 32)


# --- the arms end to end -------------------------------------------------------------------------


def _phantoms(counts: dict[str, int], seed: int) -> LabelledScans:
    from medsynth.data.phantoms import make_phantom
    from medsynth.seeding import derive_seed

    scans, paths = [], []
    for p, n in counts.items():
        for i in range(n):
            scans.append(make_phantom(dim=2, pathologies=p, modality="CT", seed=derive_seed(seed, p, i), size=32))
            paths.append(p)
    return LabelledScans(scans, paths, ["CT"] * len(scans))


@pytest.fixture(scope="module")
def sets() -> tuple[LabelledScans, LabelledScans, LabelledScans]:
    train = _phantoms({"normal": 30, "effusion": 30, "mass": 2}, seed=1)  # mass is rare
    test = _phantoms({"normal": 12, "effusion": 12, "mass": 12}, seed=2)
    synthetic = _phantoms({"mass": 30}, seed=3)  # stands in for generated cases of the rare class
    return train, test, synthetic


def test_three_arms_same_budget_rare_class_gain_and_ratio_sweep(sets, tmp_path, monkeypatch):
    from medsynth.evaluation.classifier import ImageClassifier

    train, test, synthetic = sets
    calls: list[tuple[int, int, bool]] = []
    fit = ImageClassifier.fit

    def spy(self, x, y, **kw):
        calls.append((self.config.steps, len(x), self.config.balanced))
        return fit(self, x, y, **kw)

    monkeypatch.setattr(ImageClassifier, "fit", spy)
    cfg = U.UtilityConfig(in_size=32, steps=60, seeds=2, seed=0, channels=(8, 16))
    report = U.evaluate_utility(train, test, synthetic, tmp_path, cfg, ratios=[0.25, 0.45])

    assert json.loads((tmp_path / "utility.json").read_text()) == json.loads(json.dumps(report))
    assert list(report["arms"]) == ["real", "real+synthetic", "synthetic"]
    # one budget for every run: 3 arms x 2 seeds + 2 ratios x 2 seeds, all 60 steps, no reweighting
    assert [c[0] for c in calls] == [60] * 10 and not any(c[2] for c in calls)
    assert [c[1] for c in calls] == [62, 62, 92, 92, 30, 30, 62 + 16, 62 + 16, 62 + 28, 62 + 28]
    real, mixed, syn = (report["arms"][a] for a in ("real", "real+synthetic", "synthetic"))
    for arm in (real, mixed, syn):
        assert set(arm["per_class_recall"]) == {"effusion", "mass", "normal"}
        assert len(arm["per_seed"]) == 2
        lo, hi = arm["ci95"]["balanced_accuracy"]
        assert lo <= arm["balanced_accuracy"] <= hi
        assert arm["balanced_accuracy"] == pytest.approx(np.mean([r["balanced_accuracy"] for r in arm["per_seed"]]))
    # a classifier that never saw normal or effusion scans calls everything mass
    assert syn["per_class_recall"] == {"effusion": 0.0, "mass": 1.0, "normal": 0.0}
    assert syn["balanced_accuracy"] == pytest.approx(1 / 3)
    assert "no ['effusion', 'normal']" in syn["note"]
    # the rare class is under-learned from 2 real cases, and the synthetic ones lift it
    assert real["per_class_recall"]["mass"] <= 0.5
    assert mixed["per_class_recall"]["mass"] >= real["per_class_recall"]["mass"] + 0.3
    assert mixed["balanced_accuracy"] > real["balanced_accuracy"]
    assert {k: v["n_synthetic"] for k, v in report["ratios"].items()} == {"0.25": 16, "0.45": 28}
    assert report["plots"] == ["utility_arms.png", "utility_ratio.png"]
    assert all((tmp_path / p).stat().st_size > 1000 for p in report["plots"])


def test_utility_refuses_bad_requests_before_training(sets, tmp_path):
    train, test, synthetic = sets
    with pytest.raises(InputError, match=r"ratio 2: needs 124 synthetic scans .* has 30"):
        U.evaluate_utility(train, test, synthetic, tmp_path, ratios=[2])
    unknown = _phantoms({"nodule": 2}, seed=4)
    with pytest.raises(InputError, match=r"--synthetic has pathologies \['nodule'\] that the real training set lacks"):
        U.evaluate_utility(train, test, unknown, tmp_path)
    with pytest.raises(InputError, match="unknown"):
        U.evaluate_utility(train, test, synthetic, tmp_path, arms=("real", "fake"))
    leaky = LabelledScans(test.scans, test.pathologies, test.modalities, ["s1"] + [None] * (len(test) - 1))
    with pytest.raises(InputError, match=r"--train and --test share 1 subject"):
        U.evaluate_utility(
            LabelledScans(train.scans, train.pathologies, train.modalities, ["s1"] + [None] * (len(train) - 1)),
            leaky,
            synthetic,
            tmp_path,
        )
    assert not (tmp_path / "utility.json").exists()


def test_cli_utility_bad_ratios_is_a_one_line_error(tmp_path, capsys):
    from medsynth.cli import main
    from medsynth.data.phantoms import phantom_dataset

    csv = phantom_dataset(
        tmp_path / "d", dim=2, count=8, seed=5, size=32, pathologies=("normal", "mass"), modalities=("CT",)
    )
    code = main(
        [
            "evaluate",
            "utility",
            "--train",
            str(csv),
            "--test",
            str(csv),
            "--synthetic",
            str(csv),
            "--out",
            str(tmp_path / "u"),
            "--ratios",
            "0.5,lots",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == "medsynth: error: --ratios '0.5,lots': expected comma-separated numbers, e.g. 0.5,1,2\n"
    assert not (tmp_path / "u").exists()
