"""The effect of reduced-precision sampling (``Synthesizer(precision=...)``) on the output.

For each shipped model, the same request (seeds 0..n-1, the default sampler and step count) is
sampled in fp32 and under bf16/fp16 autocast; reported: the mean and largest absolute
difference in modality units (HU for CT), the share of voxels more than 10 HU apart, and the
seconds of each. Results go to docs/performance.md ("Reduced precision").

Usage:
    python benchmarks/bench_precision.py --device cpu --samples 4 --out precision.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medsynth.models.artifact import load_model
from medsynth.sampling import Synthesizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--models", default="phantom-2d,phantom-3d")
    ap.add_argument("--precisions", default="bf16,fp16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"device": args.device, "torch": torch.__version__, "threads": args.threads, "models": {}}
    for name in args.models.split(","):
        model = load_model(f"builtin:{name}")
        runs = {}
        for precision in ["fp32", *args.precisions.split(",")]:
            synth = Synthesizer(model, device=args.device, precision=precision)
            start = time.perf_counter()
            scans = synth("nodule", "CT", num_samples=args.samples, seed=0, batch_size=args.samples)
            runs[precision] = (np.stack([s.array for s in scans]), time.perf_counter() - start)
        ref, ref_s = runs.pop("fp32")
        entry = {"fp32_seconds": round(ref_s, 2)}
        for precision, (arr, secs) in runs.items():
            diff = np.abs(arr - ref)
            entry[precision] = {
                "seconds": round(secs, 2),
                "mean_abs": round(float(diff.mean()), 3),
                "max_abs": round(float(diff.max()), 1),
                "share_over_10": round(float((diff > 10).mean()), 4),
            }
        results["models"][name] = entry
        print(json.dumps({name: entry}), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
