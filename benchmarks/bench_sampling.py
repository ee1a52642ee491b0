"""Sampling speed and memory (run by hand; results go to docs/performance.md).

``throughput``: images per second of ``Synthesizer`` (default sampler and step count, CFG 3,
batch 64) against the same weights through MONAI's ``LatentDiffusionInferer.sample`` with
MONAI's ``DDIMScheduler`` at the same step count. Both do classifier-free guidance with one
batched UNet call per step on ``[uncond; cond]`` (MONAI's ``cfg=``); MONAI's unconditional
context is a tensor filled with ``cfg_fill_value`` (-1) where ours is the model's learned null
tokens: the compute is the same, the unconditional branch is not (MONAI cannot take our null
context), so the baseline is a speed reference, not a quality one. The baseline's UNet holds
the same weights in a ``DiffusionModelUNet`` with MONAI's defaults; medsynth's is built with
``use_flash_attention=True`` (torch SDPA). Runs are interleaved and repeated; medians of wall
time and of process CPU time are reported.

``volume``: seconds and peak memory (``ru_maxrss`` of a fresh subprocess per measurement) for one
3D volume at 64^3 and 128^3, whole and tile-wise decoding. The shipped 3D model's grid is
48^3; the networks are convolutional, so the benchmark enlarges the grid (same spacing, larger
field of view) to measure cost. Image quality at the enlarged size is not claimed.

Usage:
    python benchmarks/bench_sampling.py throughput --model builtin:phantom-2d --batch 64 --repeats 3
    python benchmarks/bench_sampling.py volume --model builtin:phantom-3d --sizes 64,128 --windows 8,16,24
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.data.transforms import Preprocessing
from medsynth.io.atomic import atomic_write_text
from medsynth.models.artifact import load_model
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling import Synthesizer
from medsynth.sampling.synthesizer import DEFAULT_STEPS
from medsynth.sampling.tiling import decode_tiled
from medsynth.seeding import torch_generator


def machine(threads: int) -> dict[str, Any]:
    return {
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "gpu": "none (CPU only)",
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


# --- throughput -------------------------------------------------------------------------------


def monai_unet(model: LatentDiffusionModel) -> torch.nn.Module:
    """The model's UNet weights in a ``DiffusionModelUNet`` with MONAI's default settings (medsynth
    builds its own with ``use_flash_attention=True``): the baseline a plain MONAI user would run."""
    from monai.networks.nets import DiffusionModelUNet

    latent = int(model.config.autoencoder.get("latent_channels", 3))
    unet = DiffusionModelUNet(
        spatial_dims=model.spatial_dims,
        in_channels=latent,
        out_channels=latent,
        with_conditioning=True,
        cross_attention_dim=model.config.cond_dim,
        **model.config.unet,
    )
    unet.load_state_dict(model.unet.state_dict())
    return unet.eval()


def monai_baseline(
    model: LatentDiffusionModel, unet: torch.nn.Module, batch: int, steps: int, guidance: float, seed: int
) -> torch.Tensor:
    """The same weights through MONAI's LatentDiffusionInferer.sample with its DDIMScheduler."""
    from monai.inferers import LatentDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    cfg = model.config.scheduler
    beta = {} if cfg["schedule"] == "cosine" else {"beta_start": cfg["beta_start"], "beta_end": cfg["beta_end"]}
    sched = DDIMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"],
        schedule=cfg["schedule"],
        prediction_type=cfg["prediction_type"],
        clip_sample=False,
        **beta,
    )
    sched.set_timesteps(steps)
    inferer = LatentDiffusionInferer(sched, scale_factor=model.scale_factor)
    noise = torch.randn((batch, *model.latent_shape), generator=torch_generator(seed, "monai-baseline"))
    with torch.no_grad():
        cond = model.context(["nodule"] * batch, ["CT"] * batch)
        image = inferer.sample(
            noise,
            model.autoencoder,
            unet,
            sched,
            conditioning=cond,
            mode="crossattn",
            verbose=False,
            cfg=guidance,
        )
        return model.preprocessing.denormalise(image, "CT")  # HU, as our Scans are


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    synth = Synthesizer(model)
    baseline_unet = monai_unet(model)
    steps, b = args.steps, args.batch
    g = synth.default_guidance_scale if args.guidance is None else args.guidance

    def ours(sampler: str) -> Callable[[], object]:
        return lambda: synth(
            "nodule", "CT", num_samples=b, batch_size=b, num_inference_steps=steps, guidance_scale=g, sampler=sampler
        )

    runs = {
        f"medsynth {synth.default_sampler}": ours(synth.default_sampler),
        "medsynth ddim": ours("ddim"),
        "MONAI LatentDiffusionInferer + DDIMScheduler": lambda: monai_baseline(model, baseline_unet, b, steps, g, 0),
    }
    # Warm-up (allocator, oneDNN primitive caches) on a small batch.
    synth("nodule", "CT", num_samples=2, batch_size=2, num_inference_steps=2, sampler="ddim")
    monai_baseline(model, baseline_unet, 2, 2, g, 0)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order
            w0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
            print(f"rep {rep} {name}: {wall[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU", flush=True)
    result: dict[str, Any] = {
        "model": args.model,
        "batch": b,
        "steps": steps,
        "guidance_scale": g,
        "repeats": args.repeats,
        "runs": {},
    }
    for name in runs:
        mw, mc = statistics.median(wall[name]), statistics.median(cpu[name])
        result["runs"][name] = {
            "images_per_s": round(b / mw, 3),
            "median_wall_s": round(mw, 2),
            "median_cpu_s": round(mc, 2),
            "wall_s": [round(v, 2) for v in wall[name]],
            "cpu_s": [round(v, 2) for v in cpu[name]],
        }
    base = result["runs"][names[2]]
    for name in names[:2]:
        r = result["runs"][name]
        r["ratio_vs_monai_wall"] = round(base["median_wall_s"] / r["median_wall_s"], 3)
        r["ratio_vs_monai_cpu"] = round(base["median_cpu_s"] / r["median_cpu_s"], 3)
    result["machine"] = machine(args.threads)
    return result


# --- 3D volumes: one subprocess per measurement, so ru_maxrss is that measurement's peak ---------


def _enlarge(model: LatentDiffusionModel, size: int) -> None:
    """Put the model on a ``size``^3 grid with its own spacing (benchmark only: a larger field of view)."""
    pre = model.preprocessing
    model.preprocessing = Preprocessing(
        pre.spatial_dims, (size,) * pre.spatial_dims, pre.spacing, pre.intensity, pre.slice_thickness
    )


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement: ``phase`` "sample" (sample + whole decode) or "decode" (a saved latent)."""
    torch.set_num_threads(spec["threads"])
    model = load_model(spec["model"])
    _enlarge(model, spec["size"])
    out: dict[str, Any] = {**spec}
    if spec["phase"] == "sample":
        synth = Synthesizer(model, decode_window=spec["window"])
        decode_times: list[float] = []
        decode = synth._decode

        def timed_decode(z: torch.Tensor) -> torch.Tensor:  # benchmark-only instrumentation
            np.savez(spec["latent_out"], z=z.numpy())
            t = time.perf_counter()
            x = decode(z)
            decode_times.append(time.perf_counter() - t)
            return x

        synth._decode = timed_decode  # type: ignore[method-assign]
        out["baseline_rss_mb"] = round(_maxrss_mb(), 1)
        t = time.perf_counter()
        scan = synth("nodule", "CT", num_inference_steps=spec["steps"], seed=0)[0]
        out["seconds_total"] = round(time.perf_counter() - t, 2)
        out["seconds_decode"] = round(decode_times[0], 2)
        np.savez(spec["image_out"], x=scan.array)
    else:
        z = torch.from_numpy(np.load(spec["latent_in"])["z"])
        out["baseline_rss_mb"] = round(_maxrss_mb(), 1)
        t = time.perf_counter()
        with torch.inference_mode():
            x = model.decode(z) if spec["window"] is None else decode_tiled(model, z, window=spec["window"])
            hu = model.preprocessing.denormalise(x, "CT")[0].numpy()
        out["seconds_decode"] = round(time.perf_counter() - t, 2)
        np.savez(spec["image_out"], x=hu)
    out["peak_rss_mb"] = round(_maxrss_mb(), 1)
    return out


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def volume(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            _enlarge(model, size)
            latent_edge = model.latent_shape[1]
            base = {
                "model": args.model,
                "size": size,
                "threads": args.threads,
                "steps": args.steps,
                "latent_out": f"{tmp}/z{size}.npz",
                "latent_in": f"{tmp}/z{size}.npz",
                "overlap": args.overlap,
            }
            for window in (None, args.sample_window):  # the whole pipeline, whole and tiled decoding
                if window is not None and window >= latent_edge:
                    continue
                r = _run_child({**base, "phase": "sample", "window": window, "image_out": f"{tmp}/s{size}.npz"})
                print(json.dumps(r), flush=True)
                rows.append(r)
            full = None
            for window in [None, *args.windows]:
                if window is not None and window >= latent_edge:
                    continue  # one tile: the same as a whole decode
                image_out = f"{tmp}/d{size}-{window}.npz"
                r = _run_child({**base, "phase": "decode", "window": window, "image_out": image_out})
                x = np.load(r["image_out"])["x"]
                if window is None:
                    full = x
                else:
                    assert full is not None
                    diff = np.abs(x - full)
                    r["vs_whole_decode_hu"] = {
                        "mean_abs": round(float(diff.mean()), 2),
                        "max_abs": round(float(diff.max()), 1),
                    }
                print(json.dumps(r), flush=True)
                rows.append(r)
    keep = (
        "phase",
        "size",
        "window",
        "overlap",
        "steps",
        "seconds_total",
        "seconds_decode",
        "baseline_rss_mb",
        "peak_rss_mb",
        "vs_whole_decode_hu",
    )
    return {
        "model": args.model,
        "rows": [{k: r[k] for k in keep if k in r} for r in rows],
        "machine": machine(args.threads),
    }


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--model", default="builtin:phantom-2d")
    tp.add_argument("--batch", type=int, default=64)
    tp.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    tp.add_argument("--guidance", type=float, default=None, help="default: the model's")
    tp.add_argument("--repeats", type=int, default=3)
    vp = sub.add_parser("volume")
    vp.add_argument("--model", default="builtin:phantom-3d")
    vp.add_argument("--sizes", type=_int_list, default=[64, 128])
    vp.add_argument("--windows", type=_int_list, default=[8, 16, 24], help="latent window edges for tiled decoding")
    vp.add_argument("--overlap", type=float, default=0.25)
    vp.add_argument("--sample-window", type=int, default=16, help="window of the tiled full-pipeline run")
    vp.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    for p in (tp, vp):
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = ap.parse_args(argv)
    result = throughput(args) if args.what == "throughput" else volume(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
