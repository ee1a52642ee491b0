"""Privacy check speed (run by hand; results go to docs/performance.md).

The target of the privacy issue: 1,000 synthetic scans checked against 5,000 training scans of
64^2 in at most 60 s on 2 CPU cores. The timed part is ``PrivacyIndex.check``: featurising the
1,000 queries and searching them against the training and holdout sets (the whole envelope:
flips, zooms, rotations, FFT shifts, refinement, SSIM). Building the index (featurising 5,000
training scans, calibrating on the holdout, the near-duplicate search) is timed separately;
it runs once per model, at the end of training.

The "synthetic" scans are phantoms of new subjects plus planted copies of training scans, so
the run also reports how many copies were caught.

Usage:
    python benchmarks/bench_privacy.py --train 5000 --synthetic 1000 --holdout 500 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from medsynth.data.phantoms import BASE_PATHOLOGIES as PATHOLOGIES  # the classes of the recorded figures
from medsynth.data.phantoms import MODALITIES, make_phantom
from medsynth.privacy import PrivacyIndex
from medsynth.seeding import derive_seed


def phantoms(namespace: str, n: int, size: int) -> tuple[list, list[str]]:
    """``n`` 2D phantoms cycling through every (pathology, modality) class, and their groups."""
    classes = [(p, m) for p in PATHOLOGIES for m in MODALITIES]
    scans, groups = [], []
    for i in range(n):
        p, m = classes[i % len(classes)]
        scans.append(
            make_phantom(dim=2, pathologies=p, modality=m, seed=derive_seed("bench-privacy", namespace, i), size=size)
        )
        groups.append(f"{p}/{m}")
    return scans, groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--holdout", type=int, default=500)
    ap.add_argument("--synthetic", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=50, help="planted copies (flipped) among the synthetic scans")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    train, train_groups = phantoms("train", args.train, args.size)
    holdout, holdout_groups = phantoms("holdout", args.holdout, args.size)
    new, new_groups = phantoms("synthetic", args.synthetic - args.copies, args.size)
    step = max(1, args.train // max(1, args.copies))
    sources = list(range(0, args.train, step))[: args.copies]
    copies = [train[i].with_array(np.ascontiguousarray(train[i].array[..., ::-1])) for i in sources]
    synthetic, groups = new + copies, new_groups + [train_groups[i] for i in sources]
    t_data = time.perf_counter() - t

    t = time.perf_counter()
    index = PrivacyIndex.build(train, holdout, train_groups=train_groups, holdout_groups=holdout_groups)
    t_build = time.perf_counter() - t

    t = time.perf_counter()
    verdicts = index.check(synthetic, groups)
    t_check = time.perf_counter() - t

    flagged_new = sum(not v.passed for v in verdicts[: len(new)])
    caught = sum((not v.passed) and v.nearest == f"train-{i:05d}" for v, i in zip(verdicts[len(new) :], sources))
    result = {
        "train": args.train,
        "holdout": args.holdout,
        "synthetic": len(synthetic),
        "size": args.size,
        "threads": args.threads,
        "seconds_phantoms": round(t_data, 1),
        "seconds_build_index": round(t_build, 1),
        "seconds_check": round(t_check, 1),
        "scans_per_second_check": round(len(synthetic) / t_check, 1),
        "new_flagged": f"{flagged_new}/{len(new)}",
        "copies_caught": f"{caught}/{len(copies)}",
        "selftest_recall": index.selftest.get("recall"),
        "thresholds": index.thresholds(),
        "torch": torch.__version__,
        "cpu": f"{os.cpu_count()} logical CPUs, {platform.processor() or platform.machine()}",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
