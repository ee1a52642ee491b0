"""Scanner adaptation, measured: a trained model taught a second scanner's look from N scans.

Issue #16 part 3 (scanner adaptation). One command:

1. Data: ``--n-scans`` phantoms of scanner B (``medsynth phantoms --scanner B``: T1-weighted MR
   with a bias field, another CT noise texture and kernel) of the base's own classes, seed
   ``--data-seed``; the split column is dropped, so ``medsynth finetune`` splits them
   patient-disjoint (its test part is the fine-tuning privacy index's holdout). Held-out real
   scans of scanner B, ``--n-heldout`` of other subjects (seed ``--heldout-seed``), are what both
   models are judged against.
2. ``medsynth finetune`` (a child process, the command a user runs): method ``lora`` (or
   ``--method``), no new token, no prior preservation: the prior would hold the same tokens to
   scanner A's look, the opposite of the goal.
3. KID and FID (``medsynth.evaluation.fidelity.evaluate_fidelity``, its classifier-feature space
   trained on part of the held-out scanner-B set, never on samples) of the adapted model's samples
   and of the base's, both against the same held-out half, beside its real-vs-real baseline (the
   two held-out halves of scanner B). The same seed gives both evaluations the same split and the
   same encoder, so the three figures are on one scale.

Results: ``OUT/scanner_adapt.json`` and ``.md``. Timings are of this machine and its load.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/scanner_adapt.py --n-scans 50 --steps 200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_proof import run_finetune

from medsynth.data.phantoms import BASE_PATHOLOGIES, MODALITIES, phantom_dataset
from medsynth.evaluation.fidelity import FidelityConfig, evaluate_fidelity
from medsynth.evaluation.sources import LabelledScans, load_labelled
from medsynth.io.atomic import atomic_write_text, write_json
from medsynth.models.artifact import load_model
from medsynth.sampling import Synthesizer
from medsynth.seeding import derive_seed


def make_data(out: Path, n: int, seed: int, size: int, split_column: bool) -> Path:
    """``n`` scanner-B phantoms of the base classes; labels.csv (without a split column unless asked)."""
    labels = phantom_dataset(
        out, dim=2, count=n, seed=seed, size=size, pathologies=BASE_PATHOLOGIES, modalities=MODALITIES, scanner="B"
    )
    if not split_column:
        rows = list(csv.DictReader(labels.open()))
        for r in rows:
            r.pop("split", None)
        with labels.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return labels


def finetune_config(args: argparse.Namespace, labels: Path, out: Path) -> Path:
    cfg: dict[str, Any] = {
        "base": args.base,
        "data": {"labels": str(labels.resolve())},
        "method": args.method,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": min(20, max(1, args.steps // 10)),
        "seed": args.seed,
        "threads": args.threads,
        "output_dir": str((out / "adapter").resolve()),
        "checkpoint_every": args.steps,
        "val_every": args.steps,
        "sample_every": 10 * args.steps,
        "log_every": max(1, args.steps // 10),
    }
    path = out / "finetune.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def samples(model_dir: str, args: argparse.Namespace) -> LabelledScans:
    """``--n`` samples per base class, the same seeds for every model."""
    synth = Synthesizer(load_model(model_dir))
    scans, paths, mods = [], [], []
    for p in BASE_PATHOLOGIES:
        for m in MODALITIES:
            seed = derive_seed(args.seed, "scanner-adapt-samples", p, m)
            made = synth(p, m, num_samples=args.n, num_inference_steps=args.sampling_steps, seed=seed)
            scans += made
            paths += [p] * len(made)
            mods += [m] * len(made)
    return LabelledScans(scans, paths, mods)


def fidelity(real: LabelledScans, synthetic: LabelledScans, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cfg = FidelityConfig(in_size=args.size, seed=args.seed, encoder_steps=args.encoder_steps)
    m = evaluate_fidelity(real, synthetic, out, cfg)["metrics"]
    return {k: m[k] for k in ("kid", "kid_std", "fid", "conditional_accuracy")}


def markdown(r: dict[str, Any]) -> str:
    base, adapted = r["models"]["base"], r["models"]["adapted"]

    def row(name: str, m: dict[str, Any], key: str) -> str:
        return (
            f"| {name} | {m['kid'][key]:.4f} ± {m['kid_std'][key]:.4f} | {m['fid'][key]:.2f} | "
            f"{m['conditional_accuracy'][key]:.3f} |"
        )

    lines = [
        f"{r['n_scans']} scanner-B scans, base `{r['base']}`, method {r['method']}, {r['steps']} steps at batch "
        f"{r['batch_size']}, lr {r['lr']}; {r['n']} samples per class at {r['sampling_steps']} steps; "
        f"{r['n_heldout']} held-out scanner-B scans (half train the feature encoder).",
        "",
        "| against held-out scanner B | KID (± std over subsets) | FID | conditional accuracy |",
        "|---|---|---:|---:|",
        row("real scanner B (the other held-out half)", base, "real_baseline"),
        row("base model's samples", base, "synthetic"),
        row("adapted model's samples", adapted, "synthetic"),
        "",
        f"Fine-tuning: {r['finetune']['wall_s']} s wall, peak RSS {r['finetune']['peak_rss_mb']} MB, "
        f"adapter {r['adapter_bytes']:,} bytes; whole run {r.get('seconds_total', float('nan'))} s.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="builtin:phantom-2d")
    ap.add_argument("--n-scans", type=int, default=50, help="scanner-B fine-tuning scans (all base classes)")
    ap.add_argument("--n-heldout", type=int, default=320, help="held-out scanner-B scans the models are judged on")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=21)
    ap.add_argument("--heldout-seed", type=int, default=23)
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=12, help="samples per class and model")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--encoder-steps", type=int, default=400, help="fidelity feature encoder's training steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scanner-adapt")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    labels = make_data(out / "data", args.n_scans, args.data_seed, args.size, split_column=False)
    real = load_labelled(make_data(out / "heldout", args.n_heldout, args.heldout_seed, args.size, split_column=True))
    ran = run_finetune(finetune_config(args, labels, out), out / "finetune.log")
    summary = json.loads((out / "adapter.work" / "summary.json").read_text())
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **{k: getattr(args, k) for k in ("base", "n_scans", "n_heldout", "method", "steps", "batch_size", "lr")},
        **{k: getattr(args, k) for k in ("n", "sampling_steps", "seed")},
        "finetune": ran,
        "adapter_bytes": int(summary["adapter_bytes"]),
        "models": {},
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    for name, model_dir in (("base", args.base), ("adapted", str(out / "adapter"))):
        result["models"][name] = fidelity(real, samples(model_dir, args), out / f"fidelity-{name}", args)
        write_json(out / "scanner_adapt.json", result, allow_nan=True)
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    write_json(out / "scanner_adapt.json", result, allow_nan=True)
    atomic_write_text(out / "scanner_adapt.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
