"""Seamless decoding: time, peak memory and difference to a whole decode (results: docs/performance.md).

Each measurement runs in a fresh subprocess, so its ``ru_maxrss`` is that measurement's peak
resident memory; ``baseline_rss_mb`` is the process with torch, MONAI and the model loaded.
``seconds_*`` are wall-clock, ``cpu_seconds_*`` the process's CPU time over all threads (on a
shared machine the wall clock grows with the load; the CPU time much less).

``curve``: for each volume edge (a cube), one latent is sampled (``--steps`` dpm++ steps of
builtin:phantom-3d on the enlarged grid, so it looks like the model's latents), then decoded
- whole (``model.decode``, the reference),
- seamless: ``medsynth.sampling.tiling.decode_tiled`` within ``--max-memory`` (window chosen
  from the budget) and, where given, with a hand-set ``--window``,
- MONAI ``SlidingWindowInferer`` over ``model.decode`` on the same weights (latent windows of
  ``--sw-window`` rows (default half the latent), overlap 0.25, Gaussian blending): the per-window-GroupNorm baseline.
Differences are in HU (CT, the model's [-1000, 1000] window), max and mean absolute.

``sample``: the whole pipeline (``Synthesizer`` with ``max_memory``) for one volume of
``--shape``, ``--steps`` steps: seconds of sampling and decoding and the peak RSS.

``decode``: one seamless decode of a random latent for ``--shape`` (e.g. 512,512,256, where
a whole decode does not fit the machine), peak RSS and seconds.

The shipped model is trained on 48^3; larger grids are its networks run on a larger field of
view (``allow_fov_extrapolation``): cost is measured, image quality is not claimed.

Usage:
    python benchmarks/bench_decode.py curve --sizes 64,128,192,256 --max-memory 2GB --steps 2
    python benchmarks/bench_decode.py sample --shape 256,256,256 --max-memory 2.5GB --steps 2
    python benchmarks/bench_decode.py decode --shape 512,512,256 --max-memory 8GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medsynth.io.atomic import atomic_write_text
from medsynth.models.artifact import load_model
from medsynth.sampling import Synthesizer
from medsynth.sampling.tiling import decode_plan, decode_tiled


def machine(threads: int) -> dict[str, Any]:
    return {
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "gpu": "none (CPU only)",
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _synth(model: Any, shape: list[int], spec: dict[str, Any]) -> Synthesizer:
    return Synthesizer(
        model,
        shape=shape,
        allow_fov_extrapolation=True,
        max_memory=spec.get("max_memory"),
        decode_window=spec.get("window"),
    )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process; ``spec["what"]`` says which."""
    torch.set_num_threads(spec["threads"])
    model = load_model(spec["model"])
    out: dict[str, Any] = {k: spec[k] for k in ("what", "shape", "max_memory", "window") if k in spec}
    shape = list(spec["shape"])
    latent = (model.latent_shape[0], *(n // model.downsampling for n in shape))
    out["baseline_rss_mb"] = round(_maxrss_mb(), 1)
    if spec["what"] in ("sample", "latent"):
        synth = _synth(model, shape, spec)
        decode = synth._decode
        decode_s: list[tuple[float, float]] = []

        def timed(z: torch.Tensor) -> torch.Tensor:  # benchmark-only instrumentation
            if spec["what"] == "latent":
                np.save(spec["latent"], z.numpy())
                return torch.zeros(1, 1, *shape)  # the decode is measured by the other children
            t0, c0 = time.perf_counter(), time.process_time()
            x = decode(z)
            decode_s.append((time.perf_counter() - t0, time.process_time() - c0))
            return x

        synth._decode = timed  # type: ignore[method-assign]
        t, c = time.perf_counter(), time.process_time()
        synth("nodule", "CT", num_inference_steps=spec["steps"], seed=0)
        out["seconds_total"] = round(time.perf_counter() - t, 1)
        out["cpu_seconds_total"] = round(time.process_time() - c, 1)
        if decode_s:
            out["seconds_decode"] = round(decode_s[0][0], 1)
            out["cpu_seconds_decode"] = round(decode_s[0][1], 1)
            out["plan"] = decode_plan(
                model, latent, window=spec.get("window"), max_memory=spec.get("max_memory")
            ).describe()
    else:
        z = torch.from_numpy(np.load(spec["latent"])) if spec.get("latent") else torch.randn(1, *latent)
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            if spec["what"] == "whole":
                x = model.decode(z)
            elif spec["what"] == "seamless":
                plan = decode_plan(model, latent, window=spec.get("window"), max_memory=spec.get("max_memory"))
                out["plan"] = plan.describe()
                out["estimated_peak_mb"] = round(plan.peak_bytes / 2**20, 1)
                x = decode_tiled(model, z, window=spec.get("window"), max_memory=spec.get("max_memory"))
            else:  # MONAI's sliding window over the whole decoder
                from monai.inferers import SlidingWindowInferer

                roi = [min(spec["sw_window"] or n // 2, n) for n in latent[1:]]
                out["sw_roi"] = roi  # latent voxels per window
                inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.25, mode="gaussian")
                x = cast(torch.Tensor, inferer(z, model.decode))
            hu = model.preprocessing.denormalise(x, "CT")[0, 0].numpy()
        out["seconds_decode"] = round(time.perf_counter() - t, 1)
        out["cpu_seconds_decode"] = round(time.process_time() - c, 1)  # all threads: steadier under load
        if spec.get("image"):
            np.save(spec["image"], hu)
    out["peak_rss_mb"] = round(_maxrss_mb(), 1)
    return out


# ``--in-process`` (smoke tests): every measurement in this process, saving a torch import per
# measurement; peak_rss_mb is then the process's peak so far, not the measurement's.
_IN_PROCESS = False


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    if _IN_PROCESS:
        result = child(spec)
        print(json.dumps(result), flush=True)
        return result
    proc = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return cast(dict[str, Any], result)


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a.astype(np.float64) - b)
    return {"max_abs_hu": round(float(d.max()), 4), "mean_abs_hu": round(float(d.mean()), 5)}


def curve(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            shape = [size] * 3
            base = {"model": args.model, "threads": args.threads, "shape": shape, "latent": f"{tmp}/z{size}.npy"}
            _run_child({**base, "what": "latent", "steps": args.steps})
            whole = {**base, "what": "whole", "image": f"{tmp}/whole{size}.npy"}
            rows.append(_run_child(whole))
            ref = np.load(whole["image"])
            runs = [{"what": "seamless", "max_memory": args.max_memory}]
            runs += [{"what": "seamless", "window": w} for w in args.window]
            runs += [{"what": "sliding", "sw_window": args.sw_window}]
            for extra in runs:
                spec = {**base, **extra, "image": f"{tmp}/x{size}.npy"}
                r = _run_child(spec)
                r.update(_diff(np.load(spec["image"]), ref))
                rows.append(r)
    return {
        "model": args.model,
        "steps": args.steps,
        "rows": rows,
        "machine": machine(args.threads),
        "in_process": args.in_process,
    }


def single(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": args.model,
        "threads": args.threads,
        "shape": args.shape,
        "max_memory": args.max_memory,
        "window": args.window[0] if args.window else None,
    }
    if args.what == "sample":
        r = _run_child({**spec, "what": "sample", "steps": args.steps})
    else:
        r = _run_child({**spec, "what": "seamless"})
    return {
        "model": args.model,
        "steps": args.steps,
        "rows": [r],
        "machine": machine(args.threads),
        "in_process": args.in_process,
    }


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return 0
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    cp = sub.add_parser("curve")
    cp.add_argument("--sizes", type=_int_list, default=[64, 128, 192, 256])
    cp.add_argument(
        "--sw-window", type=int, default=0, help="latent window of MONAI's SlidingWindowInferer (0: half the latent)"
    )
    for name in ("sample", "decode"):
        sp = sub.add_parser(name)
        sp.add_argument("--shape", type=_int_list, default=[256, 256, 256])
    for p in sub.choices.values():
        p.add_argument("--model", default="builtin:phantom-3d")
        p.add_argument("--max-memory", default="2GB")
        p.add_argument("--window", type=_int_list, default=[], help="hand-set seamless windows (latent rows)")
        p.add_argument("--steps", type=int, default=2, help="sampling steps (the latent's, or the pipeline's)")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", type=Path, default=None, help="JSON result file")
        p.add_argument(
            "--in-process",
            action="store_true",
            help="measure in this process (fast smoke test; peak RSS is then not per measurement)",
        )
    args = ap.parse_args(argv)
    global _IN_PROCESS
    _IN_PROCESS = args.in_process
    result = curve(args) if args.what == "curve" else single(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
