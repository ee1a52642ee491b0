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

from medsynth.errors import InputError
from medsynth.evaluation import metrics as M
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


def _train_encoder(real: LabelledScans, classes: list[str], cfg: FidelityConfig):  # noqa: ANN202
    from medsynth.evaluation.classifier import ClassifierConfig, ImageClassifier, prepare

    clf = ImageClassifier(
        classes,
        ClassifierConfig(
            spatial_dims=real.spatial_dims,
            in_size=cfg.in_size,
            channels=tuple(cfg.encoder_channels),
            steps=cfg.encoder_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            balanced=True,
            seed=cfg.seed,
        ),
    )
    return clf.fit(prepare(real.scans, cfg.in_size), real.labels)


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


def _two_set_figures(ref: np.ndarray, other: np.ndarray, ref_img: torch.Tensor, other_img: torch.Tensor,
                     cfg: FidelityConfig) -> dict[str, float | None]:
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


def _accuracy(pred: list[str], truth: list[str]) -> dict[str, float | None]:
    if not truth:
        return {"joint": None, "pathology": None, "modality": None}
    split = lambda s: s.rsplit("/", 1)  # noqa: E731 - local one-liner
    pairs = [(split(p), split(t)) for p, t in zip(pred, truth)]
    return {
        "joint": float(np.mean([p == t for p, t in pairs])),
        "pathology": float(np.mean([p[0] == t[0] for p, t in pairs])),
        "modality": float(np.mean([p[1] == t[1] for p, t in pairs])),
    }


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
    from medsynth.evaluation import plots
    from medsynth.evaluation.classifier import prepare

    cfg = config or FidelityConfig()
    out = Path(out_dir)
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
    in_compared = lambda s: [i for i, lab in enumerate(s.labels) if lab in compared]  # noqa: E731
    synth = synthetic.subset(in_compared(synthetic))
    held_out = real_a.concat(real_b)
    held_out = held_out.subset(in_compared(held_out))

    encoder = _train_encoder(enc, real.classes, cfg)
    # One fixed affine map for every set: z-scores with the encoder part's feature statistics,
    # so KID's kernel (x.y/D + 1)^3 and the k-NN radii see unit-scale features whatever the
    # network's activation scale.
    enc_feats = encoder.features(prepare(enc.scans, cfg.in_size))
    mu, sd = enc_feats.mean(0), enc_feats.std(0) + 1e-6

    def features(s: LabelledScans) -> np.ndarray:
        return (encoder.features(prepare(s.scans, cfg.in_size)) - mu) / sd

    # Class-matched sets for the two-set figures: B is the reference, A and the synthetic set are compared.
    (bi, ai, si), matched = _matched_indices([real_b, real_a, synth], compared, cfg.seed)
    ref, cmp_real, cmp_syn = real_b.subset(bi), real_a.subset(ai), synth.subset(si)
    windows = intensity_windows(real, cfg.percentiles)
    feats = {k: features(s) for k, s in
             (("ref", ref), ("real", cmp_real), ("syn", cmp_syn))}
    imgs = {k: unit_images(s, cfg.in_size, windows) for k, s in
            (("ref", ref), ("real", cmp_real), ("syn", cmp_syn))}
    overall = {
        "synthetic": _two_set_figures(feats["ref"], feats["syn"], imgs["ref"], imgs["syn"], cfg),
        "real_baseline": _two_set_figures(feats["ref"], feats["real"], imgs["ref"], imgs["real"], cfg),
    }

    syn_pred = encoder.predict(prepare(synth.scans, cfg.in_size))
    real_pred = encoder.predict(prepare(held_out.scans, cfg.in_size))
    syn_imgs = unit_images(synth, cfg.in_size, windows)
    real_imgs = unit_images(held_out, cfg.in_size, windows)

    per_class: dict[str, dict] = {}
    diversity = {"synthetic": [], "real_baseline": []}
    for c in compared:
        s_i = [i for i, lab in enumerate(synth.labels) if lab == c]
        r_i = [i for i, lab in enumerate(held_out.labels) if lab == c]
        ref_c = [i for i, lab in enumerate(ref.labels) if lab == c]
        cmp_c = [i for i, lab in enumerate(cmp_syn.labels) if lab == c]
        real_c = [i for i, lab in enumerate(cmp_real.labels) if lab == c]
        entry: dict = {
            "n_synthetic": len(s_i),
            "n_real_held_out": len(r_i),
            "n_matched": matched[c],
            "conditional_accuracy": {
                "synthetic": _accuracy([syn_pred[i] for i in s_i], [c] * len(s_i))["joint"],
                "real_baseline": _accuracy([real_pred[i] for i in r_i], [c] * len(r_i))["joint"],
            },
            "diversity_ms_ssim": {
                "synthetic": M.mean_pairwise_ms_ssim(syn_imgs[s_i], max_pairs=cfg.max_pairs, seed=cfg.seed)
                if len(s_i) >= 2 else None,
                "real_baseline": M.mean_pairwise_ms_ssim(real_imgs[r_i], max_pairs=cfg.max_pairs, seed=cfg.seed)
                if len(r_i) >= 2 else None,
            },
        }
        if matched[c] > max(cfg.k, 3):
            for key, feats_c in (("synthetic", feats["syn"][cmp_c]), ("real_baseline", feats["real"][real_c])):
                p, r = M.precision_recall(feats["ref"][ref_c], feats_c, k=cfg.k)
                k_mean, _ = M.kernel_inception_distance(
                    feats["ref"][ref_c], feats_c, subset_size=cfg.kid_subset_size, n_subsets=cfg.kid_subsets,
                    seed=cfg.seed,
                )
                entry.setdefault("precision", {})[key] = p
                entry.setdefault("recall", {})[key] = r
                entry.setdefault("kid", {})[key] = k_mean
        for key in diversity:
            if entry["diversity_ms_ssim"][key] is not None:
                diversity[key].append(entry["diversity_ms_ssim"][key])
        per_class[c] = entry

    syn_acc = _accuracy(syn_pred, synth.labels)
    real_acc = _accuracy(real_pred, held_out.labels)
    figures = {
        name: {k: overall[k][name] for k in overall} for name in ("fid", "kid", "mmd", "precision", "recall")
    }
    figures["kid_std"] = {k: overall[k]["kid_std"] for k in overall}
    for part, name in (("joint", "conditional_accuracy"), ("pathology", "pathology_accuracy"),
                       ("modality", "modality_accuracy")):
        figures[name] = {"synthetic": syn_acc[part], "real_baseline": real_acc[part]}
    figures["diversity_ms_ssim"] = {k: float(np.mean(v)) if v else None for k, v in diversity.items()}

    grid_rows = {}
    for c in compared:
        s_i = [i for i, lab in enumerate(synth.labels) if lab == c][:6]
        r_i = [i for i, lab in enumerate(held_out.labels) if lab == c][:6]
        grid_rows[c] = ([real_imgs[i].numpy() for i in r_i], [syn_imgs[i].numpy() for i in s_i])
    plot_files = [
        plots.sample_grid(grid_rows, out / "samples.png").name,
        plots.metric_bars(
            {k: v for k, v in figures.items() if k != "kid_std"}, out / "metrics.png",
            title="fidelity: synthetic vs real-vs-real baseline",
        ).name,
    ]

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
            "encoder": len(enc),
            "real_a": len(real_a),
            "real_b": len(real_b),
            "synthetic": len(synthetic),
            "matched_per_set": int(sum(matched.values())),
        },
        "classes": {"compared": compared, "excluded": excluded},
        "intensity_windows": windows,
        "metrics": figures,
        "per_class": per_class,
        "plots": plot_files,
    }
    atomic_write_text(out / "fidelity.json", json.dumps(report, indent=2) + "\n")
    return report
