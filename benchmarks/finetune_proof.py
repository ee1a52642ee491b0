"""Few-shot fine-tuning, measured: a new pathology taught to a trained model from N phantom scans.

Issue #16 part 3. One command does it all:

1. Data: ``N`` pneumothorax phantoms (``medsynth.data.phantoms.phantom_dataset``, the library
   behind ``medsynth phantoms --pathologies pneumothorax``), N/2 CT and N/2 MR, seed ``--data-seed``
   (default 11: disjoint from the shipped models' training seeds 0 and 7). The split column is
   dropped, so ``medsynth finetune`` splits patient-disjoint by ``data.test_fraction`` (0.2): the
   test part is the fine-tuning privacy index's holdout, the rest is trained on.
2. Arms: each runs ``medsynth finetune CONFIG.yaml`` in a child process (the command a user runs)
   with the same steps, batch, learning rate and seed; recorded per arm: wall time, seconds per step
   (from the run's ``summary.json``), peak RSS of the child, adapter bytes. The arms:
   ``lora-prior`` (LoRA + prior preservation), ``embedding`` (new token only), ``lora`` (LoRA
   without prior), ``full-prior`` and ``full`` (every UNet weight).
3. Conditional accuracy: one classifier (``benchmarks/model_quality.py``'s ``train_classifier``:
   real phantoms, seeds in their own namespace, of every class of the adapted vocabulary, the new
   one included) judges ``--n`` samples per class of each adapted model (the new class and every
   old one) and of the base (its old classes), at ``--sampling-steps`` steps, the model's default
   sampler and guidance, the same per-class seeds for every model. The base's figure uses the same
   classifier, so an old class's change is the arm's alone.
4. Memorization: the generated pneumothorax samples go through the generation gate
   (``medsynth.protocol.gate.Gate``: the fine-tuning scans' index and the base's) at quantile 0.99:
   the flagged rate, and the share of the fine-tuning training scans that are the nearest match of a
   flagged sample on the fine-tuning index.

Results: ``OUT/finetune_proof.json`` and ``OUT/finetune_proof.md``, rewritten after every stage so
that a run cut short leaves what it measured. Timings are of this machine and its load at the time.

Usage:
    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/finetune_proof.py --n-scans 20 \\
        --arms lora-prior,embedding,lora --steps 200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_quality import _label, accuracy, real_phantoms, train_classifier

from medsynth.data.phantoms import phantom_dataset
from medsynth.evaluation.classifier import ImageClassifier
from medsynth.io.atomic import atomic_write_text
from medsynth.models.artifact import load_model
from medsynth.protocol.gate import Gate
from medsynth.protocol.schema import PrivacySpec
from medsynth.sampling import Synthesizer
from medsynth.seeding import derive_seed

NEW = "pneumothorax"
MODALITIES = ("CT", "MR")
# Issue #16 part 3's targets.
TARGETS = {"new_class_accuracy": 0.85, "old_class_drop_points": 3.0, "adapter_mb": 2.0, "wall_minutes": 20.0}
ARMS: dict[str, dict[str, Any]] = {
    "lora-prior": {"method": "lora", "prior": True},
    "embedding": {"method": "embedding", "prior": False},
    "lora": {"method": "lora", "prior": False},
    "lora-gated": {"method": "lora", "prior": False, "gate": True},
    "full-prior": {"method": "full", "prior": True},
    "full": {"method": "full", "prior": False},
}


def make_data(out: Path, n_scans: int, seed: int, size: int) -> Path:
    """``n_scans`` pneumothorax phantoms, half CT, half MR; labels.csv without a split column."""
    if n_scans < 4 or n_scans % 2:
        raise SystemExit(f"--n-scans {n_scans}: expected an even number >= 4 (N/2 per modality)")
    labels = phantom_dataset(out, dim=2, count=n_scans, seed=seed, size=size, pathologies=[NEW], modalities=MODALITIES)
    rows = list(csv.DictReader(labels.open()))
    for r in rows:
        r.pop("split", None)  # finetune then splits by data.test_fraction: its holdout is the privacy index's
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return labels


def arm_config(args: argparse.Namespace, arm: str, labels: Path, out: Path) -> Path:
    """The arm's fine-tuning YAML (under ``OUT/arms/ARM``)."""
    spec = ARMS[arm]
    cfg: dict[str, Any] = {
        "base": args.base,
        "data": {"labels": str(labels.resolve())},
        "method": spec["method"],
        "new_pathologies": {NEW: {"init_from": args.init_from}},
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": min(20, max(1, args.steps // 10)),
        "seed": args.seed,
        "threads": args.threads,
        "output_dir": str((out / "adapter").resolve()),
        "checkpoint_every": max(args.steps, 1),
        "val_every": max(args.steps, 1),
        "sample_every": 10 * max(args.steps, 1),  # no previews: they cost sampling time
        "log_every": max(1, args.steps // 10),
    }
    if args.ema_decay is not None:
        cfg["ema_decay"] = args.ema_decay
    if args.embedding_lr is not None:
        cfg["embedding_lr"] = args.embedding_lr
    if spec["method"] == "lora":
        cfg["lora"] = {"rank": args.rank, "alpha": args.rank}
        if args.lora_targets:
            cfg["lora"]["target_modules"] = args.lora_targets.split(",")
        if spec.get("gate"):
            cfg["lora"]["gate"] = True
    if spec["prior"]:
        cfg["prior_preservation"] = {
            "weight": args.prior_weight,
            "samples_per_class": args.prior_samples,
            "sampling_steps": args.sampling_steps,
        }
    path = out / "finetune.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_finetune(config: Path, log: Path) -> dict[str, Any]:
    """``medsynth finetune CONFIG --no-resume`` in a child; its wall time and peak RSS (os.wait4)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medsynth.cli", "finetune", str(config), "--no-progress", "--no-resume"],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"medsynth finetune {config} failed (exit {proc.returncode}); see {log}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def samples(model: Any, classes: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, list[Any]]:
    """``--n`` samples per class, the seeds of ``model_quality.py`` (the same for every model)."""
    synth = Synthesizer(model)
    return {
        _label(p, m): synth(
            p,
            m,
            num_samples=args.n,
            num_inference_steps=args.sampling_steps,
            seed=derive_seed(args.seed, "model-quality-samples", p, m),
            batch_size=args.sample_batch_size,
        )
        for p, m in classes
    }


def classifier(cache: Path, classes: list[tuple[str, str]], args: argparse.Namespace) -> ImageClassifier:
    """``model_quality.train_classifier`` once: saved to ``cache`` and loaded from there by a rerun."""
    labels = [_label(p, m) for p, m in classes]
    settings = {"n_train_per_class": args.n_train, "epochs": args.epochs, "size": args.size, "seed": args.seed}
    stamp = cache / "trained_on.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {**settings, "classes": labels}:
        clf = ImageClassifier.load(cache)
        if list(clf.classes) == labels and clf.config.in_size == args.in_size:
            return clf
    clf = train_classifier(classes, 2, args.size, args.n_train, args.in_size, args.epochs, 16, args.seed)
    clf.save(cache)
    atomic_write_text(stamp, json.dumps({**settings, "classes": labels}) + "\n")
    return clf


def class_accuracy(clf: Any, made: dict[str, list[Any]], in_size: int) -> dict[str, float]:
    """Per class: the share the classifier labels with the requested pathology AND modality."""
    return {lab: accuracy(clf, scans, [lab] * len(scans), in_size)["joint"] for lab, scans in made.items()}


def memorization(model_dir: Path, made: dict[str, list[Any]], n_train: int) -> dict[str, Any]:
    """The gate on the new class's samples: flagged rate, and fine-tuning scans matched by a flag."""
    gate = Gate(model_dir, PrivacySpec(accept_weak_index=True))
    verdicts = []
    for m in MODALITIES:
        verdicts += gate.check(made[_label(NEW, m)], f"{NEW}/{m}")
    flagged = [v for v in verdicts if not v["passed"]]
    # The adapter's own index ("model") is the fine-tuning scans'; "base" is the base's.
    matched = {v["nearest"] for v in flagged if v.get("index", "model") == "model" and v["nearest"]}
    return {
        "checked": len(verdicts),
        "flagged": len(flagged),
        "flagged_rate": round(len(flagged) / len(verdicts), 4) if verdicts else None,
        "flagged_by_index": {k: sum(v.get("index", "model") == k for v in flagged) for k in ("model", "base")},
        "finetune_scans_matched": len(matched),
        "finetune_scans_matched_share": round(len(matched) / n_train, 4) if n_train else None,
        "expected_rate": round(1 - gate.settings.quantile, 4),
    }


def evaluate_model(name: str, model_dir: str, clf: Any, args: argparse.Namespace, old: list[str]) -> dict[str, Any]:
    """Accuracy per class (and, for an adapter, the gate on its new class)."""
    t = time.perf_counter()
    torch.set_num_threads(args.threads)
    model = load_model(model_dir)
    classes = [(p, m) for p in model.pathologies for m in model.modalities]
    made = samples(model, classes, args)
    per_class = class_accuracy(clf, made, args.in_size)
    row: dict[str, Any] = {"per_class": per_class}
    old_acc = [per_class[c] for c in old if c in per_class]
    row["old_mean"] = round(sum(old_acc) / len(old_acc), 4)
    new = [per_class[_label(NEW, m)] for m in MODALITIES if _label(NEW, m) in per_class]
    if new:
        row["new_mean"] = round(sum(new) / len(new), 4)
        summary = json.loads((Path(model_dir).parent / "adapter.work" / "summary.json").read_text())
        row["memorization"] = memorization(Path(model_dir), made, int(summary["n_train"]))
    row["eval_s"] = round(time.perf_counter() - t, 1)
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def _mb(n: int) -> float:
    return n / 1e6


def markdown(r: dict[str, Any]) -> str:
    """The tables of docs/finetuning.md's Measured section."""
    base = r.get("base_eval", {}).get("per_class", {})
    t = r["targets"]
    lines = [
        f"{r['n_scans']} pneumothorax scans ({r['n_scans'] // 2} CT, {r['n_scans'] // 2} MR), base `{r['base']}`, "
        f"{r['steps']} steps at batch {r['batch_size']}, lr {r['lr']} (token rows {r.get('embedding_lr') or 'default'}); accuracy: {r['n']} samples per class at "
        f"{r['sampling_steps']} steps, classifier held-out real accuracy "
        f"{r['classifier']['real_heldout_accuracy']['joint']:.3f}.",
        "",
        f"| arm | new class (CT / MR) >= {t['new_class_accuracy']} | old classes, mean (base) | worst old-class "
        f"drop, points (<= {t['old_class_drop_points']:g}) | adapter MB (<= {t['adapter_mb']:g}) | wall min "
        f"(<= {t['wall_minutes']:g}) | s/step | peak RSS MB | gate flagged | fine-tuning scans matched |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for arm, a in r["arms"].items():
        ev = a.get("eval")
        if ev is None:
            lines.append(
                f"| {arm} | not measured | | | {_mb(a['adapter_bytes']):.2f} | {a['wall_s'] / 60:.1f} | | | | |"
            )
            continue
        pc = ev["per_class"]
        drops = [100 * (base[c] - pc[c]) for c in base if c in pc]
        mem = ev.get("memorization", {})
        cells = [
            arm,
            f"{pc[_label(NEW, 'CT')]:.3f} / {pc[_label(NEW, 'MR')]:.3f}",
            f"{ev['old_mean']:.3f} ({r['base_eval']['old_mean']:.3f})" if base else f"{ev['old_mean']:.3f}",
            f"{max(drops):.1f}" if drops else "n/a",  # positive: lower than the base
            f"{_mb(a['adapter_bytes']):.2f}",
            f"{a['wall_s'] / 60:.1f}",
            f"{a['seconds_per_step']:.2f}",
            f"{a['peak_rss_mb']:.0f}",
            f"{mem.get('flagged')}/{mem.get('checked')}",
            f"{mem.get('finetune_scans_matched')}/{a['n_train']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if base:
        lines += ["", "Per class (joint accuracy):", ""]
        arms = [a for a in r["arms"] if "eval" in r["arms"][a]]
        lines += ["| class | base | " + " | ".join(arms) + " |", "|---|---:|" + "---:|" * len(arms)]
        labels = list(r["arms"][arms[0]]["eval"]["per_class"]) if arms else list(base)
        for lab in labels:
            cells = [lab.replace("|", " / "), f"{base[lab]:.3f}" if lab in base else "-"]
            cells += [f"{r['arms'][a]['eval']['per_class'][lab]:.3f}" for a in arms]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict[str, Any]) -> None:
    atomic_write_text(out / "finetune_proof.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "finetune_proof.md", markdown(result))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="builtin:phantom-2d", help="base model (builtin:<name> or a directory)")
    ap.add_argument("--n-scans", type=int, default=20, help="pneumothorax scans, half CT half MR")
    ap.add_argument("--size", type=int, default=64, help="phantom size (pixels)")
    ap.add_argument("--data-seed", type=int, default=11, help="phantom dataset seed (not 0 or 7: the shipped data)")
    ap.add_argument("--arms", default="lora-prior,embedding,lora", help=f"comma-separated, of {list(ARMS)}")
    # 200 steps: ~11 min for lora-prior at the 3.3 s/step measured on the shared 2-core machine.
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per arm")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (all arms)")
    ap.add_argument("--embedding-lr", type=float, default=None, help="new token rows' rate; default: finetune's")
    ap.add_argument("--ema-decay", type=float, default=None, help="default: medsynth finetune's")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank)")
    ap.add_argument("--init-from", default="normal", help="the base token the new row starts from, or 'mean'")
    ap.add_argument("--prior-weight", type=float, default=1.0, help="prior preservation weight")
    ap.add_argument("--lora-targets", default=None, help="comma-separated module suffixes; default: finetune's")
    ap.add_argument("--prior-samples", type=int, default=8, help="prior samples per base class")
    ap.add_argument("--n", type=int, default=16, help="samples per class for accuracy")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--sample-batch-size", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=200, help="real phantoms per class for the classifier")
    ap.add_argument("--epochs", type=int, default=6, help="classifier epochs")
    ap.add_argument("--in-size", type=int, default=None, help="classifier input size (default: the base grid)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "finetune")
    args = ap.parse_args(argv)
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        ap.error(f"--arms: {unknown} unknown; expected some of {list(ARMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    labels = make_data(out / "data", args.n_scans, args.data_seed, args.size)
    base = load_model(args.base)
    grid = base.preprocessing.size[0]
    args.in_size = args.in_size or grid
    old = [_label(p, m) for p in base.pathologies for m in base.modalities]
    classes = [(p, m) for p in [*base.pathologies, NEW] for m in base.modalities]
    del base
    t = time.perf_counter()
    clf = classifier(out / "classifier", classes, args)
    real = real_phantoms(classes, "test", args.n, 2, args.size)
    real_acc = accuracy(clf, real, [_label(p, m) for p, m in classes for _ in range(args.n)], args.in_size)
    # Per class on real held-out phantoms: the ceiling of what each class's figure can show.
    real_per_class = class_accuracy(
        clf, {_label(p, m): real[k * args.n : (k + 1) * args.n] for k, (p, m) in enumerate(classes)}, args.in_size
    )
    print(
        f"classifier: {real_acc} on held-out real, per class {real_per_class} ({time.perf_counter() - t:.0f} s)",
        flush=True,
    )
    load = os.getloadavg()
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **{k: getattr(args, k) for k in ("base", "n_scans", "data_seed", "steps", "batch_size", "lr", "rank")},
        **{k: getattr(args, k) for k in ("embedding_lr", "prior_weight", "lora_targets")},
        **{k: getattr(args, k) for k in ("n", "sampling_steps", "prior_samples", "init_from", "seed")},
        "classifier": {
            "n_train_per_class": args.n_train,
            "epochs": args.epochs,
            "in_size": args.in_size,
            "classes": [_label(p, m) for p, m in classes],
            "real_heldout_accuracy": real_acc,
            "real_heldout_per_class": real_per_class,
            "seconds": round(time.perf_counter() - t, 1),
        },
        "targets": TARGETS,
        "arms": {},
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_at_start": [round(v, 2) for v in load],
        },
    }
    write(out, result)
    for k, arm in enumerate(args.arms):
        where = out / "arms" / arm
        where.mkdir(parents=True, exist_ok=True)
        print(f"arm {arm}: medsynth finetune ({args.steps} steps)", flush=True)
        ran = run_finetune(arm_config(args, arm, labels, where), where / "finetune.log")
        summary = json.loads((where / "adapter.work" / "summary.json").read_text())
        result["arms"][arm] = {
            **ARMS[arm],
            **ran,
            "seconds_per_step": round(float(summary["summary"]["seconds_per_step"]), 3),
            "adapter_bytes": int(summary["adapter_bytes"]),
            "n_train": summary["n_train"],
            "n_holdout": summary["n_test"],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        }
        write(out, result)
        result["arms"][arm]["eval"] = evaluate_model(arm, str(where / "adapter"), clf, args, old)
        if k == 0:  # the base once, after the first arm's figures are safe on disk
            result["base_eval"] = evaluate_model("base", args.base, clf, args, old)
        write(out, result)
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write(out, result)
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
