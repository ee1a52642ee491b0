"""Fidelity, diversity and conditional accuracy of synthetic scans, each beside a real baseline.

``evaluate_fidelity(real, synthetic, out_dir)`` works offline with no downloaded weights: the
feature space is the penultimate layer of a classifier (``medsynth.evaluation.classifier``)
trained on part of the real data to tell the joint classes ``pathology/modality`` apart; the
same classifier then labels the synthetic scans (conditional accuracy).

How real data is used, so that every figure has a real-vs-real baseline of the same scale:

* the real set is split, stratified by class and disjoint by subject, into an *encoder* part
  (default 50%) and two held-out halves, *A* and *B*;
* two-set figures (FID, KID, image MMD, precision, recall) compare B with A (the baseline) and
  B with the synthetic set. A and the synthetic set are cut to the same per-class counts as
  each other and as B, so both figures see equal sample sizes and class mixes (FID in particular
  is biased by sample size);
* one-set figures (conditional accuracy, MS-SSIM diversity) are computed on the synthetic scans
  and on the held-out real scans (A and B).

Neither held-out half nor the synthetic set is seen by the encoder, so none is favoured by it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medsynth.conditions import GROUP_SEPARATOR
from medsynth.errors import InputError
from medsynth.evaluation import metrics as M
from medsynth.evaluation import plots
from medsynth.evaluation.classifier import ClassifierConfig, ImageClassifier, prepare
from medsynth.evaluation.sources import LabelledScans
from medsynth.io.atomic import atomic_write_text
from medsynth.seeding import numpy_rng


@dataclass
class FidelityConfig:
    """Settings of a fidelity evaluation (all recorded in fidelity.json).

    Args:
        in_size: side of the (square/cubic) grid scans are resized to for every figure.
        encoder_fraction: share of the real scans used to train the encoder/labeller; the rest
            is split evenly into the two held-out halves.
        encoder_steps, batch_size, lr: encoder training (class-balanced batches, so rare
            classes get features of their own).
        encoder_channels: widths of the encoder's stages (the feature vector has twice the last).
        k: neighbourhood size of the precision/recall manifolds.
        kid_subset_size, kid_subsets: KID subsets.
        max_pairs: at most this many image pairs per class for MS-SSIM diversity.
        percentiles: intensity window per modality, from the real scans, that maps to [0, 1]
            for MS-SSIM and image MMD (the same window for real and synthetic scans).
        seed: every split, subsample and the encoder's training derive from it.
    """

    in_size: int = 64
    encoder_fraction: float = 0.5
    encoder_steps: int = 400
    encoder_channels: tuple[int, ...] = (16, 32, 64)
    batch_size: int = 32
    lr: float = 2e-3
    k: int = 3
    kid_subset_size: int = 100
    kid_subsets: int = 50
    max_pairs: int = 300
    percentiles: tuple[float, float] = (0.5, 99.5)
    seed: int = 0


def stratified_split(data: LabelledScans, fractions: list[float], seed: int) -> list[list[int]]:
    """Split indices into parts of roughly ``fractions`` per class, never splitting a subject.

    Groups (one per subject; scans without subject are their own group) are shuffled per class
    (a group's class is that of its first scan) and dealt greedily to the part that is furthest
    below its share, so a class of 3 scans still puts one in each of 3 parts.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, subject in enumerate(data.subjects):
        groups[subject if subject is not None else f"\x00scan-{i}"].append(i)
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    labels = data.labels
    for members in groups.values():
        by_class[labels[members[0]]].append(members)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in sorted(by_class):
        rng = numpy_rng("split", seed, cls)
        order = rng.permutation(len(by_class[cls]))
        filled = [0] * len(fractions)
        for g in order:
            p = min(range(len(fractions)), key=lambda q: (filled[q] / fractions[q], q))
            parts[p].extend(by_class[cls][g])
            filled[p] += len(by_class[cls][g])
    return [sorted(p) for p in parts]


def intensity_windows(real: LabelledScans, percentiles: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """Per modality, the (low, high) percentiles of all real voxels: the [0, 1] window."""
    out = {}
    for mod in sorted(set(real.modalities)):
        voxels = np.concatenate([s.array.ravel() for s, m in zip(real.scans, real.modalities) if m == mod])
        lo, hi = np.percentile(voxels, percentiles)
        out[mod] = (float(lo), float(hi if hi > lo else lo + 1.0))
    return out


def unit_images(data: LabelledScans, in_size: int, windows: dict[str, tuple[float, float]]) -> torch.Tensor:
    """Scans resized to ``in_size`` per side and windowed to [0, 1]: ``(N, 1, *spatial)``.

    Resizing uses MONAI's ``Resize`` in "area" mode (averaging, so no aliasing when shrinking);
    scans with several channels keep the first (medsynth scans are single-channel).
    """
    from monai.transforms import Resize

    resize = Resize((in_size,) * data.spatial_dims, mode="area")
    out = []
    for scan, mod in zip(data.scans, data.modalities):
        lo, hi = windows[mod]
        x = torch.as_tensor(scan.array[:1])
        x = resize(x) if tuple(x.shape[1:]) != (in_size,) * data.spatial_dims else x
        out.append(((torch.as_tensor(x) - lo) / (hi - lo)).clamp(0.0, 1.0).float())
    return torch.stack(out)


@dataclass
class _Parts:
    """The real set's three parts, and the scans of the classes that can be compared."""

    encoder: LabelledScans  # trains the encoder; no figure is computed on it
    real_a: LabelledScans
    real_b: LabelledScans
    compared: list[str]
    excluded: dict[str, str]  # synthetic class -> why it is left out
    synthetic: LabelledScans  # the synthetic scans of the compared classes
    held_out: LabelledScans  # A + B, the compared classes only


def _check_inputs(real: LabelledScans, synthetic: LabelledScans, cfg: FidelityConfig) -> None:
    if real.spatial_dims != synthetic.spatial_dims:
        raise InputError(
            f"--real scans are {real.spatial_dims}D but --synthetic scans are {synthetic.spatial_dims}D; "
            "compare sets of the same dimensionality"
        )
    if len(real.classes) < 2:
        raise InputError(
            f"--real holds one class ({real.classes[0]}); the feature encoder learns to tell classes apart "
            "and needs at least two pathology/modality classes"
        )
    if not 0.0 < cfg.encoder_fraction < 1.0:
        raise InputError(f"encoder_fraction {cfg.encoder_fraction}: expected a value strictly between 0 and 1")


def _split_parts(real: LabelledScans, synthetic: LabelledScans, cfg: FidelityConfig) -> _Parts:
    """Split the real set into encoder/A/B and keep the synthetic classes that all three parts hold."""
    half = (1.0 - cfg.encoder_fraction) / 2
    enc_idx, a_idx, b_idx = stratified_split(real, [cfg.encoder_fraction, half, half], cfg.seed)
    enc, real_a, real_b = real.subset(enc_idx), real.subset(a_idx), real.subset(b_idx)

    excluded: dict[str, str] = {}
    compared = []
    for c in synthetic.classes:
        if c not in real.class_counts():
            excluded[c] = "not in the real set"
        elif c not in real_a.class_counts() or c not in real_b.class_counts() or c not in enc.class_counts():
            excluded[c] = f"only {real.class_counts()[c]} real scans: too few to split into encoder/A/B"
        else:
            compared.append(c)
    if not compared:
        raise InputError(
            f"no class of the synthetic set ({', '.join(synthetic.classes)}) can be compared with the real set "
            f"({', '.join(real.classes)}): {excluded}"
        )

    def in_compared(s: LabelledScans) -> LabelledScans:
        return s.subset([i for i, lab in enumerate(s.labels) if lab in compared])

    return _Parts(enc, real_a, real_b, compared, excluded, in_compared(synthetic), in_compared(real_a.concat(real_b)))


# The figures computed on two class-matched sets (reference B against A, or against the synthetic set).
_TWO_SET = ("fid", "kid", "mmd", "precision", "recall")


def _of_class(data: LabelledScans, c: str) -> list[int]:
    """Indices of ``data``'s scans of class ``c``, in order."""
    return [i for i, lab in enumerate(data.labels) if lab == c]


@dataclass
class _FeatureSpace:
    """The encoder trained on the encoder part, and its features z-scored with that part's statistics.

    One fixed affine map for every set, so KID's kernel (x.y/D + 1)^3 and the k-NN radii see
    unit-scale features whatever the network's activation scale.
    """

    encoder: ImageClassifier
    mean: np.ndarray
    std: np.ndarray
    in_size: int

    @classmethod
    def fit(cls, enc: LabelledScans, classes: list[str], cfg: FidelityConfig) -> _FeatureSpace:
        clf = ImageClassifier(
            classes,
            ClassifierConfig(
                spatial_dims=enc.spatial_dims,
                in_size=cfg.in_size,
                channels=tuple(cfg.encoder_channels),
                steps=cfg.encoder_steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                balanced=True,
                seed=cfg.seed,
            ),
        )
        encoder = clf.fit(prepare(enc.scans, cfg.in_size), enc.labels)
        enc_feats = encoder.features(prepare(enc.scans, cfg.in_size))
        return cls(encoder, enc_feats.mean(0), enc_feats.std(0) + 1e-6, cfg.in_size)

    def features(self, data: LabelledScans) -> np.ndarray:
        return (self.encoder.features(prepare(data.scans, self.in_size)) - self.mean) / self.std

    def predict(self, data: LabelledScans) -> list[str]:
        return self.encoder.predict(prepare(data.scans, self.in_size))


def _matched_indices(
    sets: list[LabelledScans], classes: list[str], seed: int
) -> tuple[list[list[int]], dict[str, int]]:
    """Per set, indices drawing the same number of scans per class: min over the sets."""
    counts = {c: min(s.class_counts().get(c, 0) for s in sets) for c in classes}
    picks: list[list[int]] = []
    for k, s in enumerate(sets):
        labels = np.asarray(s.labels)
        idx: list[int] = []
        for c in classes:
            members = np.flatnonzero(labels == c)
            idx.extend(int(i) for i in numpy_rng("match", seed, k, c).choice(members, counts[c], replace=False))
        picks.append(sorted(idx))
    return picks, counts


@dataclass
class _Matched:
    """Class-matched sets for the two-set figures, keyed ``ref`` (from B), ``real`` (from A), ``syn``.

    B is the reference; A (the real baseline) and the synthetic set are compared with it.
    """

    sets: dict[str, LabelledScans]
    features: dict[str, np.ndarray]
    counts: dict[str, int]  # class -> scans per set


def _match(parts: _Parts, space: _FeatureSpace, seed: int) -> _Matched:
    (bi, ai, si), counts = _matched_indices([parts.real_b, parts.real_a, parts.synthetic], parts.compared, seed)
    sets = {"ref": parts.real_b.subset(bi), "real": parts.real_a.subset(ai), "syn": parts.synthetic.subset(si)}
    return _Matched(sets, {k: space.features(s) for k, s in sets.items()}, counts)


def _two_set_figures(
    ref: np.ndarray, other: np.ndarray, ref_img: torch.Tensor, other_img: torch.Tensor, cfg: FidelityConfig
) -> dict[str, float | None]:
    """FID, KID, image MMD, precision, recall of ``other`` against the reference set."""
    n = min(len(ref), len(other))
    out: dict[str, float | None] = {"fid": M.frechet_distance(ref, other) if n >= 2 else None}
    if n >= 4:
        kid, kid_std = M.kernel_inception_distance(
            ref, other, subset_size=cfg.kid_subset_size, n_subsets=cfg.kid_subsets, seed=cfg.seed
        )
        out.update(kid=kid, kid_std=kid_std, mmd=M.image_mmd(ref_img, other_img))
    else:
        out.update(kid=None, kid_std=None, mmd=None)
    if n > cfg.k:
        out["precision"], out["recall"] = M.precision_recall(ref, other, k=cfg.k)
    else:
        out["precision"] = out["recall"] = None
    return out


def _overall_figures(
    matched: _Matched, windows: dict[str, tuple[float, float]], cfg: FidelityConfig
) -> dict[str, dict[str, float | None]]:
    """The two-set figures of the synthetic set and of the real baseline, over all compared classes."""
    f = matched.features
    imgs = {k: unit_images(s, cfg.in_size, windows) for k, s in matched.sets.items()}
    return {
        "synthetic": _two_set_figures(f["ref"], f["syn"], imgs["ref"], imgs["syn"], cfg),
        "real_baseline": _two_set_figures(f["ref"], f["real"], imgs["ref"], imgs["real"], cfg),
    }


@dataclass
class _Judged:
    """A set judged on its own (one-set figures): its scans, the encoder's labels, its [0, 1] images."""

    data: LabelledScans
    predicted: list[str]
    images: torch.Tensor

    @classmethod
    def of(
        cls, data: LabelledScans, space: _FeatureSpace, windows: dict[str, tuple[float, float]], in_size: int
    ) -> _Judged:
        return cls(data, space.predict(data), unit_images(data, in_size, windows))


def _accuracy(pred: list[str], truth: list[str]) -> dict[str, float | None]:
    if not truth:
        return {"joint": None, "pathology": None, "modality": None}
    pairs = [(p.rsplit(GROUP_SEPARATOR, 1), t.rsplit(GROUP_SEPARATOR, 1)) for p, t in zip(pred, truth, strict=True)]
    return {
        "joint": float(np.mean([p == t for p, t in pairs])),
        "pathology": float(np.mean([p[0] == t[0] for p, t in pairs])),
        "modality": float(np.mean([p[1] == t[1] for p, t in pairs])),
    }


def _class_figures(c: str, judged: dict[str, _Judged], matched: _Matched, cfg: FidelityConfig) -> dict:
    """The figures of class ``c``: accuracy and diversity per set, and two-set figures if enough scans match."""
    idx = {key: _of_class(j.data, c) for key, j in judged.items()}
    entry: dict = {
        "n_synthetic": len(idx["synthetic"]),
        "n_real_held_out": len(idx["real_baseline"]),
        "n_matched": matched.counts[c],
        "conditional_accuracy": {
            key: _accuracy([j.predicted[i] for i in idx[key]], [c] * len(idx[key]))["joint"]
            for key, j in judged.items()
        },
        "diversity_ms_ssim": {
            key: M.mean_pairwise_ms_ssim(j.images[idx[key]], max_pairs=cfg.max_pairs, seed=cfg.seed)
            if len(idx[key]) >= 2
            else None
            for key, j in judged.items()
        },
    }
    if matched.counts[c] > max(cfg.k, 3):
        f, s = matched.features, matched.sets
        ref_c = f["ref"][_of_class(s["ref"], c)]
        for key, name in (("synthetic", "syn"), ("real_baseline", "real")):
            feats_c = f[name][_of_class(s[name], c)]
            p, r = M.precision_recall(ref_c, feats_c, k=cfg.k)
            k_mean, _ = M.kernel_inception_distance(
                ref_c, feats_c, subset_size=cfg.kid_subset_size, n_subsets=cfg.kid_subsets, seed=cfg.seed
            )
            entry.setdefault("precision", {})[key] = p
            entry.setdefault("recall", {})[key] = r
            entry.setdefault("kid", {})[key] = k_mean
    return entry


def _summary_figures(
    overall: dict[str, dict[str, float | None]], judged: dict[str, _Judged], per_class: dict[str, dict]
) -> dict[str, dict[str, float | None]]:
    """The ``metrics`` of the report: each figure's synthetic value beside its real baseline."""
    figures = {name: {k: overall[k][name] for k in overall} for name in _TWO_SET}
    figures["kid_std"] = {k: overall[k]["kid_std"] for k in overall}
    accuracy = {key: _accuracy(j.predicted, j.data.labels) for key, j in judged.items()}
    for part, name in (
        ("joint", "conditional_accuracy"),
        ("pathology", "pathology_accuracy"),
        ("modality", "modality_accuracy"),
    ):
        figures[name] = {key: acc[part] for key, acc in accuracy.items()}
    # Diversity over classes: the mean of the per-class values (classes with under 2 scans have none).
    diversity = {
        key: [e["diversity_ms_ssim"][key] for e in per_class.values() if e["diversity_ms_ssim"][key] is not None]
        for key in judged
    }
    figures["diversity_ms_ssim"] = {k: float(np.mean(v)) if v else None for k, v in diversity.items()}
    return figures


def _full_resolution(data: LabelledScans, i: int, windows: dict[str, tuple[float, float]]) -> np.ndarray:
    """Scan ``i`` on its own grid (not resized to ``in_size``), windowed to [0, 1] for display."""
    lo, hi = windows[data.modalities[i]]
    return np.clip((np.asarray(data.scans[i].array[:1], dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _plots(parts: _Parts, matched: _Matched, figures: dict, windows: dict, out: Path) -> list[str]:
    """samples.png (up to 6 real and 6 synthetic scans per class) and metrics.png; their file names."""
    real, syn = parts.held_out, parts.synthetic
    grid_rows = {
        c: (
            [_full_resolution(real, i, windows) for i in _of_class(real, c)[:6]],
            [_full_resolution(syn, i, windows) for i in _of_class(syn, c)[:6]],
        )
        for c in parts.compared
    }
    grid_counts = {c: (len(_of_class(real, c)), len(_of_class(syn, c))) for c in parts.compared}
    # Two-set figures see the class-matched sets (each compared with reference B of the same
    # size); one-set figures all held-out real scans and all synthetic ones.
    n_matched = int(sum(matched.counts.values()))
    counts = {
        k: {"synthetic": n_matched, "real_baseline": n_matched}
        if k in _TWO_SET
        else {"synthetic": len(syn), "real_baseline": len(real)}
        for k in figures
    }
    return [
        plots.sample_grid(grid_rows, out / "samples.png", counts=grid_counts).name,
        plots.metric_bars(
            figures,
            out / "metrics.png",
            counts=counts,
            title="fidelity: synthetic vs real-vs-real baseline (features: medsynth classifier, not Inception)",
        ).name,
    ]


def evaluate_fidelity(
    real: LabelledScans,
    synthetic: LabelledScans,
    out_dir: str | Path,
    config: FidelityConfig | None = None,
) -> dict:
    """Compute every fidelity figure with its real baseline; write fidelity.json and PNG plots.

    Args:
        real: the real scans (e.g. the generative model's training data).
        synthetic: the scans to judge; only classes also present in ``real`` are compared (the
            others are listed under ``classes.excluded``).
        out_dir: folder for fidelity.json, samples.png and metrics.png.
        config: settings; defaults suit 64² slices.

    Returns:
        The dict written to ``out_dir/fidelity.json``.

    Example:
        >>> from medsynth.evaluation.sources import load_labelled
        >>> report = evaluate_fidelity(load_labelled("real.csv"), load_labelled("synthetic/"), "eval/")  # doctest: +SKIP
        >>> report["metrics"]["fid"]  # doctest: +SKIP
        {'synthetic': 3.1, 'real_baseline': 1.2}
    """
    cfg = config or FidelityConfig()
    out = Path(out_dir)
    _check_inputs(real, synthetic, cfg)
    parts = _split_parts(real, synthetic, cfg)
    space = _FeatureSpace.fit(parts.encoder, real.classes, cfg)
    windows = intensity_windows(real, cfg.percentiles)
    matched = _match(parts, space, cfg.seed)
    overall = _overall_figures(matched, windows, cfg)
    judged = {
        "synthetic": _Judged.of(parts.synthetic, space, windows, cfg.in_size),
        "real_baseline": _Judged.of(parts.held_out, space, windows, cfg.in_size),
    }
    per_class = {c: _class_figures(c, judged, matched, cfg) for c in parts.compared}
    figures = _summary_figures(overall, judged, per_class)
    plot_files = _plots(parts, matched, figures, windows, out)

    report = {
        "kind": "medsynth-fidelity",
        "feature_space": "penultimate layer of medsynth.evaluation.classifier trained on the encoder part of "
        "the real set (joint pathology/modality classes); no downloaded weights",
        "implementations": {
            "fid": "monai.metrics.FIDMetric",
            "kid": "medsynth (Binkowski et al. 2018, cubic polynomial kernel, unbiased)",
            "mmd": "monai.metrics.MMDMetric (linear kernel, on images windowed to [0,1], per voxel)",
            "precision_recall": f"medsynth (Kynkaanniemi et al. 2019, k={cfg.k})",
            "diversity_ms_ssim": "monai.metrics.MultiScaleSSIMMetric "
            + json.dumps(M.ms_ssim_settings(cfg.in_size, real.spatial_dims)),
        },
        "config": asdict(cfg),
        "spatial_dims": real.spatial_dims,
        "sizes": {
            "real": len(real),
            "encoder": len(parts.encoder),
            "real_a": len(parts.real_a),
            "real_b": len(parts.real_b),
            "synthetic": len(synthetic),
            "matched_per_set": int(sum(matched.counts.values())),
        },
        "classes": {"compared": parts.compared, "excluded": parts.excluded},
        "intensity_windows": windows,
        "metrics": figures,
        "per_class": per_class,
        "plots": plot_files,
    }
    atomic_write_text(out / "fidelity.json", json.dumps(report, indent=2) + "\n")
    return report
