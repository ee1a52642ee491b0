"""Conditional accuracy and diversity of a model, measured on held-out phantoms.

1. Real phantoms are drawn with seeds from their own namespace (``derive_seed("model-quality",
   ...)``), disjoint from the training subjects (``derive_seed(seed, "phantom-subject", i)``).
2. The classifier of ``medsynth.evaluation.classifier`` is trained on real phantoms to tell the
   joint classes ``pathology|modality`` apart; its accuracy on held-out real phantoms is the
   ceiling of what the measurement can show.
3. For each step count, the model generates ``--n`` samples per class; the conditional accuracy
   is the fraction the classifier labels with the requested pathology AND modality. With
   ``--insert``, the cases of every pathology the model's lesion model knows are made by
   insertion instead (``medsynth.lesions.case.insert_case``): a ``normal`` background of the
   modality sampled by the whole-image model, the lesion inpainted into it at a size drawn from
   the lesion model's training sizes (``sizes_mm``); the other classes are sampled whole.
4. Diversity: the mean pairwise MS-SSIM within each class (MONAI ``MultiScaleSSIMMetric`` with
   the settings of ``medsynth.evaluation.metrics.ms_ssim_settings``, recorded in the JSON), for
   generated and for real held-out phantoms, both on the model grid with the model's intensity
   window mapped to [0, 1]. Lower is more diverse; the target is generated <= real + 0.1.

Writes ``quality.json`` and ``quality.md`` (the table for the model card) to ``--out``.

Usage:
    python benchmarks/model_quality.py builtin:phantom-2d --n 32 --steps 5,10,15,20,25,50
    python benchmarks/model_quality.py builtin:phantom-3d --n 8 --steps 10,20 --in-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.data.phantoms import make_phantom
from medsynth.evaluation.classifier import ClassifierConfig, ImageClassifier, prepare
from medsynth.evaluation.metrics import mean_pairwise_ms_ssim, ms_ssim_settings
from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.lesions.case import insert_case
from medsynth.lesions.model import LesionModel, load_lesion_model, load_mask_bank
from medsynth.models.artifact import load_model, resolve_model_path
from medsynth.sampling import Synthesizer
from medsynth.seeding import derive_seed

TARGET_ACCURACY = {2: 0.90, 3: 0.80}
TARGET_DIVERSITY_GAP = 0.1


def _label(pathology: str, modality: str) -> str:
    return f"{pathology}|{modality}"


def real_phantoms(classes: list[tuple[str, str]], split: str, n: int, dim: int, size: int) -> list[Scan]:
    """``n`` phantoms per class, subjects seeded in the ``model-quality`` namespace."""
    return [
        make_phantom(dim=dim, pathologies=p, modality=m, seed=derive_seed("model-quality", split, i), size=size)
        for p, m in classes
        for i in range(n)
    ]


def unit_range(model: Any, scans: list[Scan]) -> torch.Tensor:
    """Scans on the model grid with the model's per-modality window mapped to [0, 1]."""
    return torch.stack([(model.preprocessing.to_model(s) + 1.0) / 2.0 for s in scans])


def train_classifier(
    classes: list[tuple[str, str]],
    dim: int,
    size: int,
    n_train: int,
    in_size: int,
    epochs: int,
    batch_size: int,
    seed: int,
) -> ImageClassifier:
    """The joint pathology|modality classifier, trained on ``n_train`` real phantoms per class."""
    scans = real_phantoms(classes, "train", n_train, dim, size)
    labels = [_label(p, m) for p, m in classes for _ in range(n_train)]
    config = ClassifierConfig(spatial_dims=dim, in_size=in_size, epochs=epochs, batch_size=batch_size, seed=seed)
    return ImageClassifier([_label(p, m) for p, m in classes], config).fit(prepare(scans, in_size), labels)


def accuracy(clf: ImageClassifier, scans: list[Scan], wanted: list[str], in_size: int) -> dict[str, float]:
    """Joint, pathology-only and modality-only accuracy of ``clf`` on ``scans``."""
    pred = clf.predict(prepare(scans, in_size))
    pairs = [(p.split("|"), w.split("|")) for p, w in zip(pred, wanted, strict=True)]
    return {
        "joint": float(np.mean([p == w for p, w in pairs])),
        "pathology": float(np.mean([p[0] == w[0] for p, w in pairs])),
        "modality": float(np.mean([p[1] == w[1] for p, w in pairs])),
    }


def inserted_cases(
    synth: Synthesizer, lesion: LesionModel, bank: Any, pathology: str, modality: str, n: int, steps: int, **kw: Any
) -> list[Scan]:
    """``n`` cases of ``pathology`` by insertion into sampled ``normal`` backgrounds of ``modality``."""
    seed = derive_seed(kw.pop("seed"), "model-quality-samples", pathology, modality)
    backgrounds = synth("normal", modality, num_samples=n, num_inference_steps=steps, seed=seed, **kw)
    lo, hi = lesion.config.sizes_mm.get(pathology) or (10.0, 30.0)
    return [
        insert_case(
            lesion,
            bg,
            pathology,
            seed=derive_seed(seed, "insert", i),
            size_mm=(lo, hi),
            bank=bank,
            preprocessing=synth.model.preprocessing,
            steps=steps,
        ).scan
        for i, bg in enumerate(backgrounds)
    ]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_model(args.model)
    dim, size = model.spatial_dims, model.preprocessing.size[0]
    in_size = args.in_size or size
    classes = [(p, m) for p in model.pathologies for m in model.modalities]
    synth = Synthesizer(model)
    sampler = args.sampler or synth.default_sampler
    guidance = synth.default_guidance_scale if args.guidance is None else args.guidance
    print(f"{args.model}: {dim}D {size}, classes {[_label(*c) for c in classes]}", flush=True)
    lesion = load_lesion_model(resolve_model_path(args.model)) if args.insert else None
    if args.insert and lesion is None:
        raise SystemExit(f"{args.model}: --insert needs a model with a lesion model (MODEL/lesion/)")
    bank = load_mask_bank(resolve_model_path(args.model)) if lesion is not None else None
    inserted = sorted(set(lesion.config.pathologies) & set(model.pathologies)) if lesion is not None else []

    cache, n_train = args.classifier_dir, args.n_train
    loaded = cache is not None and (cache / "config.json").is_file()
    if loaded:
        clf = ImageClassifier.load(cache)  # trained on the same real phantoms by an earlier run
        n_train = json.loads((cache / "trained_on.json").read_text())["n_train_per_class"]
        if list(clf.classes) != [_label(p, m) for p, m in classes] or clf.config.in_size != in_size:
            raise SystemExit(f"{cache}: classifier classes/in_size do not match this model; remove it to retrain")
    else:
        clf = train_classifier(classes, dim, size, n_train, in_size, args.epochs, args.clf_batch_size, args.seed)
        if cache is not None:
            clf.save(cache)
            atomic_write_text(cache / "trained_on.json", json.dumps({"n_train_per_class": n_train}) + "\n")
    real_test = real_phantoms(classes, "test", args.n, dim, size)
    wanted = [_label(p, m) for p, m in classes for _ in range(args.n)]
    real_acc = accuracy(clf, real_test, wanted, in_size)
    print(f"classifier on held-out real phantoms: {real_acc} ({time.perf_counter() - t0:.0f} s)", flush=True)

    by_steps: list[dict[str, Any]] = []
    diversity_scans: dict[str, list[Scan]] = {}
    for steps in args.steps:
        t = time.perf_counter()
        scans: list[Scan] = []
        for p, m in classes:
            if p in inserted and lesion is not None:
                scans += inserted_cases(
                    synth,
                    lesion,
                    bank,
                    p,
                    m,
                    args.n,
                    steps,
                    guidance_scale=guidance,
                    sampler=sampler,
                    seed=args.seed,
                    batch_size=args.batch_size,
                )
                continue
            scans += synth(
                p,
                m,
                num_samples=args.n,
                num_inference_steps=steps,
                guidance_scale=guidance,
                sampler=sampler,
                seed=derive_seed(args.seed, "model-quality-samples", p, m),
                batch_size=args.batch_size,
            )
        acc = accuracy(clf, scans, wanted, in_size)
        per_class = {
            _label(p, m): accuracy(
                clf, scans[k * args.n : (k + 1) * args.n], wanted[k * args.n : (k + 1) * args.n], in_size
            )["joint"]
            for k, (p, m) in enumerate(classes)
        }
        seconds = time.perf_counter() - t
        by_steps.append({"steps": steps, "accuracy": acc, "per_class": per_class, "seconds": round(seconds, 1)})
        print(f"steps {steps}: {acc} in {seconds:.0f} s; per class {per_class}", flush=True)
        if steps == args.diversity_steps:
            diversity_scans = {_label(p, m): scans[k * args.n : (k + 1) * args.n] for k, (p, m) in enumerate(classes)}

    diversity: dict[str, dict[str, float]] = {}
    if diversity_scans:
        for k, (p, m) in enumerate(classes):
            lab = _label(p, m)
            gen = mean_pairwise_ms_ssim(unit_range(model, diversity_scans[lab]), seed=args.seed)
            real = mean_pairwise_ms_ssim(unit_range(model, real_test[k * args.n : (k + 1) * args.n]), seed=args.seed)
            diversity[lab] = {"generated": round(gen, 4), "real": round(real, 4), "gap": round(gen - real, 4)}
        print(f"diversity (mean pairwise MS-SSIM): {diversity}", flush=True)

    return {
        "model": args.model,
        "spatial_dims": dim,
        "grid": list(model.preprocessing.size),
        "sampler": sampler,
        "guidance_scale": guidance,
        "n_per_class": args.n,
        "inserted_pathologies": inserted,
        "classifier": {
            "n_train_per_class": n_train,
            "in_size": in_size,
            "epochs": clf.config.epochs,
            "batch_size": clf.config.batch_size,
            "seed": clf.config.seed,
            "loaded_from": str(cache) if loaded else None,
            "real_heldout_accuracy": real_acc,
        },
        "by_steps": by_steps,
        "diversity_steps": args.diversity_steps if diversity else None,
        "diversity": diversity,
        "ms_ssim_settings": ms_ssim_settings(tuple(model.preprocessing.size), dim),
        "targets": {"accuracy": TARGET_ACCURACY[dim], "diversity_gap": TARGET_DIVERSITY_GAP},
        "machine": {
            "cpu_threads": args.threads,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": "cpu (no GPU)",
        },
        "seconds_total": round(time.perf_counter() - t0, 1),
    }


def markdown(r: dict[str, Any]) -> str:
    """The tables for the model card."""
    target = r["targets"]["accuracy"]
    lines = [
        f"Conditional accuracy of `{r['model']}` ({r['sampler']}, guidance {r['guidance_scale']}, "
        f"{r['n_per_class']} samples per class; classifier accuracy on held-out real phantoms: "
        f"{r['classifier']['real_heldout_accuracy']['joint']:.3f}; target >= {target:.2f}"
        + (
            f"; {', '.join(r['inserted_pathologies'])} made by lesion insertion into sampled normals):"
            if r.get("inserted_pathologies")
            else "):"
        ),
        "",
        "| steps | pathology AND modality | pathology | modality | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in r["by_steps"]:
        a = row["accuracy"]
        cells = [str(row["steps"]), *(f"{a[k]:.3f}" for k in ("joint", "pathology", "modality")), str(row["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    if r["diversity"]:
        s = r["ms_ssim_settings"]
        lines += [
            "",
            f"Diversity at {r['diversity_steps']} steps: mean pairwise MS-SSIM within each class (lower = more "
            f"diverse; {len(s['weights'])} scales, {s['kernel_size']}-voxel Gaussian kernel, sigma "
            f"{s['kernel_sigma']}; target: generated <= real + {r['targets']['diversity_gap']}):",
            "",
            "| class | generated | real | gap |",
            "|---|---:|---:|---:|",
        ]
        for lab, d in r["diversity"].items():
            cell = lab.replace("|", r" \| ")  # a bare | would split the markdown cell
            lines.append(f"| {cell} | {d['generated']:.3f} | {d['real']:.3f} | {d['gap']:+.3f} |")
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model directory or builtin:<name>")
    ap.add_argument("--n", type=int, default=32, help="generated and held-out real samples per class")
    # Classifier defaults: the recipe of tests/evaluation/test_classifier.py (>= 95% on held-out phantoms).
    ap.add_argument("--n-train", type=int, default=200, help="real training phantoms per class for the classifier")
    ap.add_argument("--epochs", type=int, default=6, help="classifier epochs")
    ap.add_argument("--clf-batch-size", type=int, default=16, help="classifier batch size")
    ap.add_argument(
        "--classifier-dir",
        type=Path,
        default=None,
        help="load the classifier from here if present, else train it and save it here",
    )
    ap.add_argument("--in-size", type=int, default=None, help="classifier input size (default: the model grid)")
    ap.add_argument("--steps", type=_int_list, default=[5, 10, 15, 20, 25, 50], help="comma-separated step counts")
    ap.add_argument("--diversity-steps", type=int, default=20, help="step count whose samples get the diversity figure")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's default_guidance_scale")
    ap.add_argument("--sampler", default=None, help="default: the model's default sampler")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--insert", action="store_true", help="make the lesion model's pathologies by insertion into sampled normals"
    )
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/<model name>)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / Path(str(args.model).removeprefix("builtin:")).name
    result = evaluate(args)
    atomic_write_text(out / "quality.json", json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    atomic_write_text(out / "quality.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
