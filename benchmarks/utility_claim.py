"""The utility claim, end to end: do synthetic cases of a rare pathology help a classifier?

Set-up (written up in docs/evaluation.md, "The utility claim"):

* real data: built-in 2D CT phantoms at 64², 300 cases each of normal, mass and effusion and
  only 10 of the rare pathology, nodule (the downstream training set); a real test set of 100
  per class; all from disjoint subjects;
* a medsynth model trained on that same imbalanced set (``medsynth train
  configs/utility-claim-2d.yaml``, CPU), which then generates nodule cases through a protocol
  (``medsynth generate``, privacy gate as the model allows);
* ``medsynth.evaluation.utility``: the same classifier, the same step budget, plain (unweighted)
  training, arms real / real+synthetic / synthetic, mean over seeds with 95% t-intervals;
* the claim: rare-class recall rises by >= 15 points and balanced accuracy by >= 5.

Then what moves it: the number of synthetic cases, the guidance scale, the privacy gate, an
*oracle* arm that adds real phantom nodules instead of generated ones (the ceiling that
perfect synthetic data would reach under this budget), the *autoencoder ceiling* (those real
nodules through the generator's autoencoder), and all of it again under a texture-augmented
classifier (flips, shifts and blur in every arm).

Usage (from the repository root; each stage reuses what earlier runs left in runs/utility-claim)::

    python benchmarks/utility_claim.py                   # data, train, generate, evaluate
    python benchmarks/utility_claim.py --stage evaluate  # only re-evaluate
    python benchmarks/utility_claim.py --docs            # also copy the plots to docs/img/

Training runs ``nice -n 10 medsynth train`` in a subprocess (log: runs/utility-claim/train.log).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "utility-claim-2d.yaml"
WORK = ROOT / "runs" / "utility-claim"  # configs/utility-claim-2d.yaml points here
DOCS_IMG = ROOT / "docs" / "img"

RARE = "nodule"
COMMON = ("normal", "mass", "effusion")
SIZE = 64
N_COMMON, N_RARE, N_TEST = 300, 10, 100
DATA = {  # name: (dataset seed, class counts); different seeds share no subject
    "train": (101, {**{(p, "CT"): N_COMMON for p in COMMON}, (RARE, "CT"): N_RARE}),
    # validation + privacy holdout for the generative model: real scans of the common classes only,
    # so the model sees no nodule beyond the 10 training cases
    "holdout": (202, {(p, "CT"): 20 for p in COMMON}),
    "test": (303, {(p, "CT"): N_TEST for p in (*COMMON, RARE)}),
    "reference": (404, {(p, "CT"): N_TEST for p in (*COMMON, RARE)}),  # fidelity's real side
    "oracle": (505, {(RARE, "CT"): 300}),  # real nodules from new subjects: the ceiling
}
PROTOCOL_SEED = 20261121
SAMPLER = {"method": "dpm++", "steps": 20}  # --sampler/--sampler-steps override it
N_SYNTHETIC = 300
GUIDANCES = (1.0, 3.0, 6.0)
MAIN_GUIDANCE = 3.0
COUNTS = (25, 50, 100, 200, 300)
# The texture-augmented classifier (every arm): flips, shifts and blur up to this sigma (pixels)
BLUR_SIGMA = 1.2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data -------------------------------------------------------------------------------------


def _rows(name: str) -> list[dict]:
    """labels.csv rows of one phantom set, paths made relative to WORK/data.

    Every set numbers its subjects from phantom-00000 (with different anatomy seeds), so the set's
    name is prefixed to keep subjects distinct when sets are combined.
    """
    with (WORK / "data" / name / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{**r, "path": f"{name}/{r['path']}", "subject": f"{name}-{r['subject']}"} for r in rows]


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    from medsynth.io.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def make_data() -> None:
    from medsynth.data.phantoms import phantom_dataset

    for name, (seed, counts) in DATA.items():
        out = WORK / "data" / name
        if not (out / "labels.csv").is_file():
            log(f"data: {name} ({sum(counts.values())} phantoms)")
            phantom_dataset(out, dim=2, count=sum(counts.values()), seed=seed, size=SIZE, class_counts=counts)
    fields = ["path", "pathology", "modality", "subject"]
    for name in ("train", "test", "reference", "oracle"):
        _write_csv(WORK / "data" / f"{name}.csv", _rows(name), fields)
    # The generative model's data: every downstream training case in `train`, the holdout split in
    # halves for validation and for the privacy index's holdout (`test`).
    holdout = _rows("holdout")
    gen = [{**r, "split": "train"} for r in _rows("train")]
    gen += [{**r, "split": "val" if i % 2 else "test"} for i, r in enumerate(holdout)]
    _write_csv(WORK / "data" / "gen_train.csv", gen, [*fields, "split"])


# --- model ------------------------------------------------------------------------------------


def medsynth(*args: str, log_file: Path, ok: tuple[int, ...] = (0,)) -> int:
    """Run the medsynth CLI niced, appending its output to ``log_file``; fail loudly unless the
    exit status is in ``ok``."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "medsynth.cli", *args]
    log("nice -n 10 medsynth " + " ".join(args) + f"  (log: {log_file})")
    # One intra-op thread: on a shared 2-core machine more threads than free cores made
    # `generate` 5x slower (measured: 240 s vs 60 s wall for 32 cases).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log_file.open("a") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    if code not in ok:
        raise SystemExit(f"utility_claim: {' '.join(args[:2])} failed with status {code}; see {log_file}")
    return code


def train_model() -> Path:
    model = WORK / "model"
    if (model / "config.json").is_file():
        log(f"model: reusing {model}")
        return model
    t0 = time.time()
    medsynth("train", str(CONFIG), "--no-progress", log_file=WORK / "train.log")
    (WORK / "train_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    return model


def ensure_privacy_index(model: Path) -> bool:
    """True when the model has a privacy index, building it now if it has none (same
    catalogs as training: train split vs holdout split)."""
    if (model / "privacy").is_dir() and any((model / "privacy").iterdir()):
        return True
    from medsynth.data.catalog import Catalog
    from medsynth.privacy import build_index_for_model

    parts = Catalog.from_csv(WORK / "data" / "gen_train.csv").split()
    log("privacy index: building it for the model")
    build_index_for_model(model, parts["train"], parts["test"])
    return True


def run_protocol(
    model: Path, name: str, description: str, guidance: float, quota: str, privacy: str
) -> tuple[Path, int]:
    """Write ``protocols/NAME.yaml`` for ``N_SYNTHETIC`` rare-class cases and run it, unless an earlier
    run finished it; resumes if interrupted. Returns the output folder and the exit status.

    Exit 3 (the gate's flagged rate was significantly above 1 - q) is accepted: every written
    case passed the gate; the write-up reports the rate."""
    out = WORK / "synthetic" / name
    proto = WORK / "protocols" / f"{name}.yaml"
    proto.parent.mkdir(parents=True, exist_ok=True)
    proto.write_text(
        f"""protocol: 1
name: utility-claim-{name}
description: {description}
model: {model}
seed: {PROTOCOL_SEED}
output: {{dir: {out}, formats: [nifti]}}
sampler: {{method: {SAMPLER["method"]}, steps: {SAMPLER["steps"]}, guidance_scale: {guidance}, batch_size: 32}}
quotas:
  - {{pathology: {RARE}, modality: CT, count: {N_SYNTHETIC}{quota}}}
privacy: {{{privacy}}}
"""
    )
    status = out / "exit_status.txt"
    if status.is_file():
        log(f"generate: reusing {out}")
        return out, int(status.read_text())
    t0 = time.time()
    code = medsynth("generate", str(proto), log_file=WORK / "generate.log", ok=(0, 3))
    (out / "seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    status.write_text(f"{code}\n")
    return out, code


def generate(model: Path, guidance: float, gate: bool) -> Path:
    """``N_SYNTHETIC`` nodule cases sampled from noise; a flagged case is resampled."""
    name = f"g{guidance:g}" + ("" if gate else "-nogate")
    privacy = f"gate: {str(gate).lower()}, quantile: 0.99, on_flag: resample, max_attempts: 3"
    description = f"synthetic {RARE} cases for the utility claim (benchmarks/utility_claim.py)"
    return run_protocol(model, name, description, guidance, "", privacy)[0]


# --- evaluation -------------------------------------------------------------------------------


def paired_gain(a: dict, b: dict, key: str, cls: str | None = None) -> dict:
    """Mean per-seed difference b - a (points) with its 95% t-interval; seeds are paired."""
    from medsynth.evaluation.utility import t_interval

    def val(run: dict) -> float:
        return run["per_class_recall"][cls] if cls else run[key]

    diffs = [100 * (val(y) - val(x)) for x, y in zip(a["per_seed"], b["per_seed"])]
    lo, hi = t_interval(diffs)
    return {"mean": sum(diffs) / len(diffs), "ci95": [lo, hi], "per_seed": diffs}


def autoencoder_roundtrip(model_dir: Path, data):
    """``data`` passed through the model's autoencoder (to_model -> encode -> decode -> from_model)."""
    import torch

    from medsynth.evaluation.sources import LabelledScans
    from medsynth.models.artifact import load_model

    model = load_model(model_dir)
    out = []
    with torch.inference_mode():
        for i in range(0, len(data), 50):
            x = torch.stack([model.preprocessing.to_model(s) for s in data.scans[i : i + 50]])
            for z, mod in zip(model.decode(model.encode(x)), data.modalities[i : i + 50]):
                out.append(model.preprocessing.from_model(z, mod))
    return LabelledScans(out, list(data.pathologies), list(data.modalities))


def evaluate(synthetic: dict[str, Path], seeds: int, steps: int, threads: int) -> dict:
    import torch

    from medsynth.evaluation import plots
    from medsynth.evaluation.fidelity import FidelityConfig, evaluate_fidelity
    from medsynth.evaluation.sources import load_labelled
    from medsynth.evaluation.utility import UtilityConfig, evaluate_utility

    torch.set_num_threads(threads)  # small CNNs: more threads than free cores only slows them
    d, ev = WORK / "data", WORK / "eval"
    train = load_labelled(d / "train.csv", role="train")
    test = load_labelled(d / "test.csv", role="test")
    cfg = UtilityConfig(in_size=SIZE, steps=steps, seeds=seeds)
    main_name = f"g{MAIN_GUIDANCE:g}"
    syn = {name: load_labelled(path, role=name) for name, path in synthetic.items()}

    timings = {}
    t0 = time.time()
    main = evaluate_utility(
        train,
        test,
        syn[main_name],
        ev / "main",
        cfg,
        ratios=[n / len(train) for n in COUNTS if n <= len(syn[main_name])],
    )
    timings["main"] = time.time() - t0
    real, mixed = main["arms"]["real"], main["arms"]["real+synthetic"]
    gains = {
        "rare_recall_points": paired_gain(real, mixed, "", RARE),
        "balanced_accuracy_points": paired_gain(real, mixed, "balanced_accuracy"),
        "auroc_points": paired_gain(real, mixed, "auroc"),
    }

    def summary(arm: dict, base: dict | None = None) -> dict:
        """An arm's headline figures, with its paired gains over ``base`` when given."""
        out = {
            "n_synthetic": arm["n_synthetic"],
            "rare_recall": arm["per_class_recall"][RARE],
            "balanced_accuracy": arm["balanced_accuracy"],
            "auroc": arm["auroc"],
            "per_class_recall": arm["per_class_recall"],
        }
        if base is not None:
            out["rare_recall_gain_points"] = paired_gain(base, arm, "", RARE)
            out["balanced_accuracy_gain_points"] = paired_gain(base, arm, "balanced_accuracy")
        return out

    def extra(name: str, data, config: UtilityConfig = cfg, base: dict = real) -> dict:
        t = time.time()
        r = evaluate_utility(train, test, data, ev / name, config, arms=("real+synthetic",))
        timings[name] = time.time() - t
        return summary(r["arms"]["real+synthetic"], base)

    by_guidance = {name: extra(name, s) for name, s in syn.items() if name != main_name}
    oracle_set = load_labelled(d / "oracle.csv", role="oracle")
    oracle = extra("oracle", oracle_set)
    # The autoencoder's ceiling: the oracle nodules after encode -> decode through the model. No
    # sample of the diffusion model can show more of a nodule than its decoder can draw.
    ae_set = autoencoder_roundtrip(WORK / "model", oracle_set)
    ae_ceiling = extra("autoencoder_ceiling", ae_set)

    # The same sets under a texture-augmented classifier (flips, shifts, blur in every arm, the
    # real arm included): generated scans are smoother than real ones, and a plain classifier
    # can learn "smooth" as the rare class's cue, which real test nodules do not show.
    tcfg = UtilityConfig(in_size=SIZE, steps=steps, seeds=seeds, augment=True, blur_sigma=BLUR_SIGMA)
    t0 = time.time()
    tex = evaluate_utility(
        train,
        test,
        syn[main_name],
        ev / "texture",
        tcfg,
        arms=("real", "real+synthetic"),
        ratios=[n / len(train) for n in COUNTS if n <= len(syn[main_name])],
    )
    timings["texture"] = time.time() - t0
    tex_real, tex_mixed = tex["arms"]["real"], tex["arms"]["real+synthetic"]
    texture = {
        "classifier": {"augment": True, "blur_sigma": BLUR_SIGMA},
        "real": summary(tex_real),
        "real+synthetic": {
            **summary(tex_mixed, tex_real),
            # against the plain classifier's real arm: is it better than the best real-only model?
            "balanced_accuracy_gain_over_plain_real_points": paired_gain(real, tex_mixed, "balanced_accuracy"),
        },
        "by_count": {
            str(r["n_synthetic"]): {
                "rare_recall": r["per_class_recall"][RARE],
                "balanced_accuracy": r["balanced_accuracy"],
            }
            for r in tex["ratios"].values()
        },
        "oracle_real_nodules": extra("texture_oracle", oracle_set, tcfg, tex_real),
        "autoencoder_ceiling": extra("texture_autoencoder_ceiling", ae_set, tcfg, tex_real),
    }

    by_count = {}
    for r in main["ratios"].values():
        by_count[str(r["n_synthetic"])] = {
            "rare_recall": r["per_class_recall"][RARE],
            "balanced_accuracy": r["balanced_accuracy"],
            "rare_recall_gain_points": paired_gain(real, r, "", RARE),
            "balanced_accuracy_gain_points": paired_gain(real, r, "balanced_accuracy"),
        }

    t = time.time()
    reference = load_labelled(d / "reference.csv", role="reference")
    fid = evaluate_fidelity(reference, syn[main_name], ev / "fidelity", FidelityConfig(in_size=SIZE))
    timings["fidelity"] = time.time() - t

    counts = [int(k) for k in by_count]
    plot_files = [
        plots.metric_curves(
            counts,
            {
                f"{RARE} recall": (
                    [by_count[str(c)]["rare_recall"] for c in counts],
                    *zip(*[main["ratios"][k]["ci95"]["per_class_recall"][RARE] for k in main["ratios"]]),
                ),
                "balanced accuracy": (
                    [by_count[str(c)]["balanced_accuracy"] for c in counts],
                    *zip(*[main["ratios"][k]["ci95"]["balanced_accuracy"] for k in main["ratios"]]),
                ),
                f"{RARE} recall, texture-augmented classifier": (
                    [texture["by_count"][str(c)]["rare_recall"] for c in counts],
                    *zip(*[tex["ratios"][k]["ci95"]["per_class_recall"][RARE] for k in tex["ratios"]]),
                ),
                "balanced accuracy, texture-augmented classifier": (
                    [texture["by_count"][str(c)]["balanced_accuracy"] for c in counts],
                    *zip(*[tex["ratios"][k]["ci95"]["balanced_accuracy"] for k in tex["ratios"]]),
                ),
            },
            ev / "claim_count.png",
            xlabel=f"synthetic {RARE} cases added to the {len(train)} real ones",
            baselines={
                f"{RARE} recall": real["per_class_recall"][RARE],
                "balanced accuracy": real["balanced_accuracy"],
                f"{RARE} recall, texture-augmented classifier": tex_real["per_class_recall"][RARE],
                "balanced accuracy, texture-augmented classifier": tex_real["balanced_accuracy"],
            },
            title="gain against the number of synthetic cases (dashed: real only)",
        ),
    ]
    report = {
        "kind": "medsynth-utility-claim",
        "setup": {
            "dim": 2,
            "size": SIZE,
            "modality": "CT",
            "rare": RARE,
            "train_counts": {k[0]: v for k, v in DATA["train"][1].items()},
            "test_counts": {k[0]: v for k, v in DATA["test"][1].items()},
            "generator_config": str(CONFIG.relative_to(ROOT)),
            "synthetic_per_set": N_SYNTHETIC,
            "main_guidance": MAIN_GUIDANCE,
            "privacy_gate": {name: not name.endswith("-nogate") for name in synthetic},
        },
        "budget": main["budget"],
        "seeds": main["seeds"],
        "arms": {
            k: {m: v[m] for m in ("per_class_recall", "balanced_accuracy", "auroc", "ci95")}
            for k, v in main["arms"].items()
        },
        "gains_real_plus_synthetic_vs_real": gains,
        "target": {"rare_recall_points": 15, "balanced_accuracy_points": 5},
        "met": {
            "rare_recall": gains["rare_recall_points"]["mean"] >= 15,
            "balanced_accuracy": gains["balanced_accuracy_points"]["mean"] >= 5,
        },
        "by_count": by_count,
        "by_guidance_or_gate": by_guidance,
        "oracle_real_nodules": oracle,
        "autoencoder_ceiling": ae_ceiling,
        "texture_augmented_classifier": texture,
        "fidelity": {"metrics": fid["metrics"], "per_class": fid["per_class"]},
        "seconds": {k: round(v) for k, v in timings.items()},
        "plots": [p.name for p in plot_files]
        + [f"main/{p}" for p in main["plots"]]
        + [f"fidelity/{p}" for p in fid["plots"]],
    }
    (ev / "claim.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {ev / 'claim.json'}")
    return report


# --- extend mode: variations of the 10 real nodules ------------------------------------------


EXTEND_STRENGTHS = (0.5, 0.8)


def generate_extend(model: Path, strength: float, gate: bool) -> tuple[Path, int]:
    """``N_SYNTHETIC`` SDEdit variations of the 10 real training nodules (protocol extend mode).

    Variations of training scans are close to them by construction, so the gate runs with
    ``on_flag: drop``; a run whose flagged rate is significantly high exits 3 but keeps the
    cases that passed. Returns the output folder and the exit status."""
    name = f"extend-s{strength:g}" + ("" if gate else "-nogate")
    quota = f", extend: {{sources: {WORK / 'data' / 'train.csv'}, strength: {strength}}}"
    description = f"SDEdit variations of the real {RARE} training cases (benchmarks/utility_claim.py)"
    privacy = f"gate: {str(gate).lower()}, quantile: 0.99, on_flag: drop"
    return run_protocol(model, name, description, MAIN_GUIDANCE, quota, privacy)


def evaluate_extend(model: Path, seeds: int, steps: int, threads: int) -> dict:
    """Extend-mode sets against the same real arm, plus plain oversampling of the 10 real
    nodules (each repeated to ``N_SYNTHETIC``): the baseline any augmentation must beat."""
    import torch

    from medsynth.evaluation.sources import LabelledScans, load_labelled
    from medsynth.evaluation.utility import UtilityConfig, evaluate_utility

    torch.set_num_threads(threads)
    d, ev = WORK / "data", WORK / "eval" / "extend"
    train = load_labelled(d / "train.csv", role="train")
    test = load_labelled(d / "test.csv", role="test")
    cfg = UtilityConfig(in_size=SIZE, steps=steps, seeds=seeds)
    rare = [s for s, p in zip(train.scans, train.pathologies) if p == RARE]
    repeats = -(-N_SYNTHETIC // len(rare))
    oversampled = LabelledScans((rare * repeats)[:N_SYNTHETIC], [RARE] * N_SYNTHETIC, ["CT"] * N_SYNTHETIC)
    sets: dict[str, object] = {"oversampled_real": oversampled}
    exit_codes = {}
    for strength in EXTEND_STRENGTHS:
        for gate in (True, False):
            out, code = generate_extend(model, strength, gate)
            name = out.name
            exit_codes[name] = code
            sets[name] = load_labelled(out, role=name)
    base = evaluate_utility(train, test, oversampled, ev / "real", cfg, arms=("real",))
    real = base["arms"]["real"]
    results = {}
    for name, data in sets.items():
        arm = evaluate_utility(train, test, data, ev / name, cfg, arms=("real+synthetic",))["arms"]["real+synthetic"]
        results[name] = {
            "n_added": len(data),
            "rare_recall": arm["per_class_recall"][RARE],
            "balanced_accuracy": arm["balanced_accuracy"],
            "rare_recall_gain_points": paired_gain(real, arm, "", RARE),
            "balanced_accuracy_gain_points": paired_gain(real, arm, "balanced_accuracy"),
        }
        log(
            f"extend: {name}: +{len(data)} {RARE}: rare recall {arm['per_class_recall'][RARE]:.3f}, "
            f"balanced accuracy {arm['balanced_accuracy']:.3f}"
        )
    report = {
        "real": {"rare_recall": real["per_class_recall"][RARE], "balanced_accuracy": real["balanced_accuracy"]},
        "strengths": list(EXTEND_STRENGTHS),
        "generate_exit_status": exit_codes,
        "arms": results,
    }
    (ev / "extend.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {ev / 'extend.json'}")
    return report


def copy_plots() -> None:
    """Small copies of the claim's plots for docs/evaluation.md (each must stay under 200 KB)."""
    ev = WORK / "eval"
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    for src, dst in (
        ("claim_count.png", "claim_count.png"),
        ("main/utility_arms.png", "claim_arms.png"),
        ("main/utility_ratio.png", "claim_ratio.png"),
        ("fidelity/samples.png", "claim_samples.png"),
        ("fidelity/metrics.png", "claim_fidelity.png"),
    ):
        if (ev / src).is_file():
            if (ev / src).stat().st_size > 200_000:
                raise SystemExit(f"{ev / src} is over 200 KB; shrink it before copying to docs/img")
            shutil.copyfile(ev / src, DOCS_IMG / dst)
            log(f"copied {dst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("all", "data", "train", "generate", "evaluate", "extend"), default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="classifier steps per run (every arm)")
    ap.add_argument("--sampler", default=SAMPLER["method"], help="protocol sampler.method")
    ap.add_argument("--sampler-steps", type=int, default=SAMPLER["steps"], help="protocol sampler.steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--docs", action="store_true", help="copy the plots to docs/img/")
    args = ap.parse_args()
    SAMPLER.update(method=args.sampler, steps=args.sampler_steps)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "data"):
        make_data()
    if args.stage in ("all", "train"):
        train_model()
    model = WORK / "model"
    synthetic: dict[str, Path] = {}
    if args.stage in ("all", "generate", "evaluate"):
        if not (model / "config.json").is_file():
            raise SystemExit(f"no model at {model}: run the train stage first")
        gate = ensure_privacy_index(model)
        if not gate:
            log("model has no privacy index: generating with the gate off (say so in the write-up)")
        for g in GUIDANCES:
            synthetic[f"g{g:g}" + ("" if gate else "-nogate")] = generate(model, g, gate)
        if gate:
            synthetic[f"g{MAIN_GUIDANCE:g}-nogate"] = generate(model, MAIN_GUIDANCE, False)
    if args.stage in ("all", "evaluate"):
        if not gate:  # evaluate() looks the main set up by its gated name
            synthetic = {k.removesuffix("-nogate"): v for k, v in synthetic.items()}
        evaluate(synthetic, args.seeds, args.steps, args.threads)
    if args.stage == "extend":
        evaluate_extend(model, args.seeds, args.steps, args.threads)
    if args.docs:
        copy_plots()


if __name__ == "__main__":
    main()
