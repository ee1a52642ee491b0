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

3D volumes (sampling and decoding time and memory, seamless against whole and sliding-window
decoding): ``benchmarks/bench_decode.py``.

Usage:
    python benchmarks/bench_sampling.py throughput --model builtin:phantom-2d --batch 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medsynth.io.atomic import atomic_write_text
from medsynth.models.artifact import load_model
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling import Synthesizer
from medsynth.sampling.synthesizer import DEFAULT_STEPS
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--model", default="builtin:phantom-2d")
    tp.add_argument("--batch", type=int, default=64)
    tp.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    tp.add_argument("--guidance", type=float, default=None, help="default: the model's")
    tp.add_argument("--repeats", type=int, default=3)
    tp.add_argument("--threads", type=int, default=2)
    tp.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = ap.parse_args(argv)
    result = throughput(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
