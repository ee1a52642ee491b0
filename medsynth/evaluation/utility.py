"""Downstream utility: does adding synthetic scans help a classifier on real test data?

``evaluate_utility(train, test, synthetic, out_dir)`` trains the same small classifier
(``medsynth.evaluation.classifier.ImageClassifier``) to tell pathologies apart in three arms,
each under the same budget (the same number of optimisation steps of the same batch size):

* ``real``: the real training set;
* ``real+synthetic``: the real training set plus the synthetic scans;
* ``synthetic``: the synthetic scans only (train on synthetic, test on real).

Each arm is trained once per seed (seed ``s`` gives every arm the same initial weights and
batch-order stream, so arms are compared pairwise per seed) and scored on the real test set: recall per pathology,
balanced accuracy (mean recall over the pathologies in the test set) and macro one-vs-rest
AUROC (MONAI's ``compute_roc_auc``). Means over seeds come with a two-sided 95% Student-t
confidence interval over the per-seed values (``t_{0.975, n-1} * sd / sqrt(n)``); it says how much
the figure moves with the training seed (and with the drawn synthetic subset), not how it would
move with another test set. Training is plain (no class reweighting): a rare class stays rare,
which is the realistic baseline the synthetic scans should improve on.

With ``ratios``, the real+synthetic arm is also trained with ``round(ratio * len(train))``
synthetic scans drawn at random (per seed) from the synthetic set, for each ratio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import torch

from medsynth.errors import InputError
from medsynth.evaluation import plots
from medsynth.evaluation.classifier import ClassifierConfig, ImageClassifier, prepare
from medsynth.evaluation.sources import LabelledScans
from medsynth.io.atomic import atomic_write_text
from medsynth.seeding import derive_seed, numpy_rng

ARMS = ("real", "real+synthetic", "synthetic")


@dataclass
class UtilityConfig:
    """Settings of a utility evaluation (all recorded in utility.json).

    Args:
        in_size: side scans are resized to for the classifier.
        steps: optimisation steps per training run, the same in every arm; ``None`` means the
            steps of ``epochs`` passes over the real training set.
        epochs: used only to derive ``steps`` when it is ``None``.
        batch_size, lr, channels: the classifier's training and width.
        balanced: class-balanced batches. Off by default: the realistic baseline trains on the
            data as it comes, so a rare class stays rare.
        augment, blur_sigma: the classifier's flip/shift and blur (texture) augmentation, the
            same in every arm (``ClassifierConfig``).
        seeds: training runs per arm; the seed list is ``seed, seed+1, ...``.
        seed: base seed.
    """

    in_size: int = 64
    steps: int | None = None
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    channels: tuple[int, ...] = (16, 32, 64)
    balanced: bool = False
    augment: bool = False
    blur_sigma: float = 0.0
    seeds: int = 3
    seed: int = 0

    def budget(self, n_real: int) -> int:
        """The number of optimisation steps of every run."""
        return self.steps if self.steps is not None else self.epochs * math.ceil(n_real / self.batch_size)


# --- scores ---------------------------------------------------------------------------------


def per_class_recall(truth: list[str], pred: list[str], classes: list[str]) -> dict[str, float]:
    """Recall of each class present in ``truth`` (classes absent from it are left out)."""
    t, p = np.asarray(truth), np.asarray(pred)
    return {c: float(np.mean(p[t == c] == c)) for c in classes if np.any(t == c)}


def balanced_accuracy(truth: list[str], pred: list[str], classes: list[str]) -> float:
    """Mean recall over the classes present in ``truth``."""
    return float(np.mean(list(per_class_recall(truth, pred, classes).values())))


def macro_auroc(truth: list[str], proba: np.ndarray, classes: list[str]) -> float:
    """Unweighted mean of one-vs-rest AUROCs over the classes present in ``truth`` (MONAI).

    Args:
        proba: ``(N, len(classes))`` scores, columns in ``classes`` order.
    """
    from monai.metrics import compute_roc_auc

    present = [k for k, c in enumerate(classes) if c in set(truth)]
    if len(present) < 2:
        raise ValueError(f"AUROC needs at least two classes in the test set; got {sorted(set(truth))}")
    onehot = torch.tensor([[float(t == classes[k]) for k in present] for t in truth])
    auc = compute_roc_auc(torch.as_tensor(proba[:, present], dtype=torch.float64), onehot, average="macro")
    return float(cast(float, auc))  # average="macro" gives one number


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t interval for the mean of ``values``; a single value gives (v, v)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float(v.mean())
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def summarise(runs: list[dict], classes: list[str]) -> dict:
    """Mean, 95% t-interval and per-seed values of each score over ``runs``."""
    out: dict = {"n_train": runs[0]["n_train"], "n_synthetic": runs[0]["n_synthetic"]}
    recall_classes = [c for c in classes if c in runs[0]["per_class_recall"]]
    out["per_class_recall"] = {c: float(np.mean([r["per_class_recall"][c] for r in runs])) for c in recall_classes}
    out["balanced_accuracy"] = float(np.mean([r["balanced_accuracy"] for r in runs]))
    out["auroc"] = float(np.mean([r["auroc"] for r in runs]))
    out["ci95"] = {
        "per_class_recall": {c: t_interval([r["per_class_recall"][c] for r in runs]) for c in recall_classes},
        "balanced_accuracy": t_interval([r["balanced_accuracy"] for r in runs]),
        "auroc": t_interval([r["auroc"] for r in runs]),
    }
    out["per_seed"] = runs
    return out


# --- training -------------------------------------------------------------------------------


def _fit_and_score(
    x: torch.Tensor,
    y: list[str],
    x_test: torch.Tensor,
    y_test: list[str],
    classes: list[str],
    cfg: UtilityConfig,
    steps: int,
    seed: int,
) -> dict:
    """Train one classifier for exactly ``steps`` steps of ``cfg.batch_size`` and score it."""
    clf = ImageClassifier(
        classes,
        ClassifierConfig(
            spatial_dims=x.ndim - 2,
            in_size=cfg.in_size,
            channels=tuple(cfg.channels),
            steps=steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            balanced=cfg.balanced,
            augment=cfg.augment,
            blur_sigma=cfg.blur_sigma,
            seed=seed,
        ),
    )
    clf.fit(x, y)
    proba = clf.predict_proba(x_test)
    pred = [classes[k] for k in proba.argmax(axis=1)]
    return {
        "seed": seed,
        "per_class_recall": per_class_recall(y_test, pred, classes),
        "balanced_accuracy": balanced_accuracy(y_test, pred, classes),
        "auroc": macro_auroc(y_test, proba, classes),
    }


class _TrainingSet(NamedTuple):
    """What one run trains on: inputs, labels, and how many of them are synthetic."""

    x: torch.Tensor
    y: list[str]
    n_synthetic: int


@dataclass
class _Runs:
    """Trains and scores one classifier per seed, every run with the same budget and real test set.

    Seed s gives every arm the same initial weights and batch-order stream (common random
    numbers), so per-seed differences between arms are paired and less noisy.
    """

    x_test: torch.Tensor
    y_test: list[str]
    classes: list[str]
    cfg: UtilityConfig
    steps: int
    seeds: list[int]

    def summary(self, training: _TrainingSet | Callable[[int], _TrainingSet]) -> dict:
        """``summarise`` of one run per seed, on ``training`` or, when it is a function, on ``training(seed)``."""
        runs = []
        for s in self.seeds:
            x, y, n_syn = training(s) if callable(training) else training
            res = _fit_and_score(
                x, y, self.x_test, self.y_test, self.classes, self.cfg, self.steps, derive_seed("utility", s)
            )
            runs.append({"n_train": len(y), "n_synthetic": n_syn, **res, "seed": s})
        return summarise(runs, self.classes)


@dataclass
class _Pool:
    """The real training scans and the synthetic scans as classifier inputs, with their labels."""

    x_real: torch.Tensor
    y_real: list[str]
    x_syn: torch.Tensor
    y_syn: list[str]

    def real(self) -> _TrainingSet:
        return _TrainingSet(self.x_real, self.y_real, 0)

    def synthetic(self) -> _TrainingSet:
        return _TrainingSet(self.x_syn, self.y_syn, len(self.y_syn))

    def mixed(self, pick: np.ndarray | None = None) -> _TrainingSet:
        """The real scans plus the synthetic scans at ``pick`` (every one when ``None``)."""
        if pick is None:
            return _TrainingSet(torch.cat([self.x_real, self.x_syn]), self.y_real + self.y_syn, len(self.y_syn))
        x = torch.cat([self.x_real, self.x_syn[torch.from_numpy(pick)]])
        return _TrainingSet(x, self.y_real + [self.y_syn[i] for i in pick], len(pick))


def _check_inputs(
    train: LabelledScans,
    test: LabelledScans,
    synthetic: LabelledScans,
    cfg: UtilityConfig,
    ratios: list[float],
    arms: tuple[str, ...],
) -> list[str]:
    """The classes (the real training set's pathologies), once the request is known to be valid."""
    unknown_arms = sorted(set(arms) - set(ARMS))
    if unknown_arms:
        raise InputError(f"arms {unknown_arms}: unknown; expected some of {list(ARMS)}")
    dims = {train.spatial_dims, test.spatial_dims, synthetic.spatial_dims}
    if len(dims) > 1:
        raise InputError("--train, --test and --synthetic mix 2D and 3D scans; use one dimensionality")
    classes = sorted(set(train.pathologies))
    for role, s in (("--test", test), ("--synthetic", synthetic)):
        extra = sorted(set(s.pathologies) - set(classes))
        if extra:
            raise InputError(
                f"{role} has pathologies {extra} that the real training set lacks (it has {classes}); "
                "the classifier can only learn classes with real training scans"
            )
    shared = {v for v in train.subjects if v} & {v for v in test.subjects if v}
    if shared:
        raise InputError(
            f"--train and --test share {len(shared)} subject(s) (CSV column 'subject'); a test set must be "
            "subject-disjoint from training, or the scores are optimistic: split by subject"
        )
    if len(set(test.pathologies)) < 2:
        raise InputError(f"--test holds only {sorted(set(test.pathologies))}: need at least two pathologies")
    if cfg.seeds < 1:
        raise InputError(f"seeds {cfg.seeds}: expected at least 1")
    for r in ratios:
        need = round(r * len(train))
        if r <= 0 or need > len(synthetic):
            raise InputError(
                f"ratio {r}: needs {need} synthetic scans ({r} x {len(train)} real) but --synthetic has "
                f"{len(synthetic)}; use ratios in (0, {len(synthetic) / len(train):.3g}] or generate more"
            )
    return classes


def _train_arms(runs: _Runs, pool: _Pool, arms: tuple[str, ...]) -> dict[str, dict]:
    """The summary of each requested arm, in ``ARMS`` order."""
    training = {"real": pool.real, "real+synthetic": pool.mixed, "synthetic": pool.synthetic}
    report_arms = {arm: runs.summary(training[arm]()) for arm in ARMS if arm in arms}
    if "synthetic" in report_arms:
        missing = sorted(set(runs.y_test) - set(pool.y_syn))
        if missing:
            report_arms["synthetic"]["note"] = f"synthetic set has no {missing}: their recall can only be 0"
    return report_arms


def _ratio_sweep(runs: _Runs, pool: _Pool, ratios: list[float]) -> dict[str, dict]:
    """Per ratio, the real+synthetic arm with ``round(ratio * n_real)`` synthetic scans drawn anew per seed."""
    sweep: dict[str, dict] = {}
    for r in ratios:
        n = round(r * len(pool.y_real))

        def training(s: int, r: float = r, n: int = n) -> _TrainingSet:
            return pool.mixed(np.sort(numpy_rng("utility-ratio", r, s).choice(len(pool.y_syn), n, replace=False)))

        sweep[f"{r:g}"] = runs.summary(training)
    return sweep


def _arms_plot(report_arms: dict[str, dict], out: Path) -> list[str]:
    """utility_arms.png: each arm's scores with their intervals (no file without arms)."""
    if not report_arms:
        return []
    bars = {
        arm: {
            "balanced acc.": (a["balanced_accuracy"], *a["ci95"]["balanced_accuracy"]),
            "macro AUROC": (a["auroc"], *a["ci95"]["auroc"]),
            **{
                f"recall {c}": (a["per_class_recall"][c], *a["ci95"]["per_class_recall"][c])
                for c in a["per_class_recall"]
            },
        }
        for arm, a in report_arms.items()
    }
    return [plots.arm_bars(bars, out / "utility_arms.png").name]


def _ratio_plot(sweep: dict[str, dict], report_arms: dict[str, dict], out: Path) -> list[str]:
    """utility_ratio.png: the scores against the ratio, the real arm dashed (no file without a sweep)."""
    if not sweep:
        return []
    xs = [float(k) for k in sweep]
    curves = {"balanced accuracy": "balanced_accuracy", "macro AUROC": "auroc"}
    lines = {
        label: (
            [sweep[k][key] for k in sweep],
            [sweep[k]["ci95"][key][0] for k in sweep],
            [sweep[k]["ci95"][key][1] for k in sweep],
        )
        for label, key in curves.items()
    }
    base = {label: report_arms["real"][key] for label, key in curves.items()} if "real" in report_arms else None
    return [
        plots.metric_curves(
            xs,
            lines,
            out / "utility_ratio.png",
            xlabel="synthetic : real ratio",
            baselines=base,
            title="real+synthetic against mixing ratio (dashed: real only)",
        ).name
    ]


def evaluate_utility(
    train: LabelledScans,
    test: LabelledScans,
    synthetic: LabelledScans,
    out_dir: str | Path,
    config: UtilityConfig | None = None,
    *,
    ratios: list[float] | None = None,
    arms: tuple[str, ...] = ARMS,
) -> dict:
    """Train and score every arm (and ratio), write utility.json and its plots.

    Args:
        train: real training scans; their pathologies define the classes.
        test: real held-out scans (subject-disjoint from ``train``: the caller's job).
        synthetic: synthetic scans; their pathologies must be among ``train``'s.
        out_dir: folder for utility.json and PNG plots.
        config: budget and classifier settings.
        ratios: synthetic:real ratios for the real+synthetic sweep (plotted), or None.
        arms: which arms to run (all three by default).

    Returns:
        The dict written to ``out_dir/utility.json``.

    Example:
        >>> from medsynth.evaluation.sources import load_labelled
        >>> r = evaluate_utility(load_labelled("train.csv"), load_labelled("test.csv"),
        ...                      load_labelled("synthetic/"), "eval/", ratios=[0.5, 1])  # doctest: +SKIP
        >>> r["arms"]["real+synthetic"]["balanced_accuracy"]  # doctest: +SKIP
    """
    cfg = config or UtilityConfig()
    out = Path(out_dir)
    ratios = ratios or []
    classes = _check_inputs(train, test, synthetic, cfg, ratios, arms)

    steps = cfg.budget(len(train))
    pool = _Pool(
        prepare(train.scans, cfg.in_size),
        train.pathologies,
        prepare(synthetic.scans, cfg.in_size),
        synthetic.pathologies,
    )
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    runs = _Runs(prepare(test.scans, cfg.in_size), test.pathologies, classes, cfg, steps, seeds)
    report_arms = _train_arms(runs, pool, arms)
    sweep = _ratio_sweep(runs, pool, ratios)
    plot_files = _arms_plot(report_arms, out) + _ratio_plot(sweep, report_arms, out)

    report = {
        "kind": "medsynth-utility",
        "task": "pathology classification (one label per scan; several pathologies count as one joint label)",
        "classes": classes,
        "config": asdict(cfg),
        "budget": {"steps": steps, "batch_size": cfg.batch_size, "same_for_every_arm": True},
        "seeds": seeds,
        "confidence_interval": "95% two-sided Student-t interval of the mean over seeds",
        "sizes": {"train": len(train), "test": len(test), "synthetic": len(synthetic)},
        "test_counts": {c: test.pathologies.count(c) for c in classes if c in test.pathologies},
        "arms": report_arms,
        "ratios": sweep,
        "plots": plot_files,
    }
    atomic_write_text(out / "utility.json", json.dumps(report, indent=2) + "\n")
    return report
