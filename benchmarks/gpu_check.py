"""The GPU path, end to end, as one prepared check (``benchmarks/gpu_check.sh`` runs it).

Steps, each timed and recorded in one JSON file:

1. ``pytest -m gpu`` (the GPU tests; they skip without CUDA);
2. ``medsynth train`` of a tiny 3D model for a few steps, with mixed precision (``precision:
   auto``: bf16 on a GPU that has it);
3. ``medsynth generate`` of a small 3D protocol with that model;
4. one 256^3 and one 512 x 512 x 256 volume from ``builtin:phantom-3d`` (a few sampling steps,
   fields of view extrapolated on purpose: this measures cost, not image quality), with seconds
   and peak memory (``torch.cuda.max_memory_allocated`` on a GPU, ``ru_maxrss`` on CPU);
5. fp32 against bf16 autocast on the same 256^3 request: the mean and largest difference (HU).

``--device cpu --small`` runs the same steps at toy sizes, so the script itself is tested on a
machine without a GPU (tests/test_benchmarks.py).

Usage:
    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _step(results: dict[str, Any], name: str, fn: Any) -> Any:
    """Run one step; record its seconds and its result or its error (the others still run)."""
    start = time.perf_counter()
    try:
        value = fn()
        results[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2), **(value or {})}
    except Exception as exc:  # a failed step is a result too: the JSON says what broke
        results[name] = {"ok": False, "seconds": round(time.perf_counter() - start, 2), "error": f"{exc}"[-2000:]}
    print(json.dumps({name: results[name]}), flush=True)


def _run(cmd: list[str], timeout: int) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    if proc.returncode not in (0, 5):  # pytest: 5 = nothing collected
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
    return {"tail": tail}


def _train(work: Path, device: str, small: bool) -> dict[str, Any]:
    size = 32
    cfg = {
        "name": "gpu-check-3d",
        "data": {"phantoms": {"dim": 3, "count": 16 if small else 64, "seed": 0, "size": size}},
        "preprocessing": {"size": [size] * 3},
        "autoencoder": {"channels": [8, 16], "latent_channels": 4, "norm_num_groups": 4},
        "unet": {
            "channels": [16, 32],
            "attention_levels": [False, True],
            "num_head_channels": 16,
            "norm_num_groups": 8,
            "cond_dim": 16,
        },
        "stage1": {"steps": 4 if small else 40, "batch_size": 2, "warmup_steps": 1},
        "stage2": {"steps": 4 if small else 60, "batch_size": 4, "warmup_steps": 1, "preview_steps": 2},
        "output_dir": str(work / "model"),
        "work_dir": str(work / "train"),
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "precision": "auto",
        "checkpoint_every": 20,
        "val_every": 20,
        "sample_every": 1000,
        "log_every": 10,
        "build_privacy_index": False,
    }
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return _run([sys.executable, "-m", "medsynth.cli", "train", str(path), "--no-progress"], timeout=300)


def _generate(work: Path, device: str) -> dict[str, Any]:
    doc = {
        "protocol": 1,
        "name": "gpu-check",
        "model": str(work / "model"),
        "seed": 1,
        "output": {"dir": str(work / "out"), "formats": ["nifti"]},
        "sampler": {"steps": 5, "batch_size": 4},
        "quotas": [{"pathology": "nodule", "modality": "CT", "count": 4}],
        "privacy": {"gate": False},
    }
    path = work / "protocol.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = _run([sys.executable, "-m", "medsynth.cli", "generate", str(path), "--device", device], timeout=300)
    written = len((work / "out" / "manifest.jsonl").read_text().splitlines())
    return {**out, "cases": written}


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _volume(device: str, shape: tuple[int, ...], steps: int, precision: str = "fp32") -> tuple[Any, dict[str, Any]]:
    from medsynth.sampling import Synthesizer

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    synth = Synthesizer(
        "builtin:phantom-3d", device=dev, shape=shape, allow_fov_extrapolation=True, precision=precision
    )
    start = time.perf_counter()
    scan = synth("nodule", "CT", num_samples=1, num_inference_steps=steps, seed=0, batch_size=1)[0]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return scan, {
        "shape": list(shape),
        "steps": steps,
        "precision": precision,
        "sample_seconds": round(time.perf_counter() - start, 2),
        "peak_bytes": _peak(dev),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="toy sizes (a test on CPU)")
    args = ap.parse_args()
    small, device = args.small, args.device
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        },
        "device": device,
    }
    big = [(64,) * 3] if small else [(256,) * 3, (512, 512, 256)]
    steps = 2 if small else 5
    with tempfile.TemporaryDirectory(prefix="medsynth-gpu-check-") as tmp:
        work = Path(tmp)
        if not small:
            _step(results, "pytest_gpu", lambda: _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q"], timeout=300))
        _step(results, "train_tiny_3d", lambda: _train(work, device, small))
        _step(results, "generate_3d", lambda: _generate(work, device))
    for shape in big:
        _step(results, f"volume_{'x'.join(map(str, shape))}", lambda shape=shape: _volume(device, shape, steps)[1])

    def precision_effect() -> dict[str, Any]:
        shape = big[0]
        full, _ = _volume(device, shape, steps, "fp32")
        half, info = _volume(device, shape, steps, "bf16")
        diff = abs(full.array - half.array)
        return {"shape": list(shape), "bf16_seconds": info["sample_seconds"], "mean_abs_hu": float(diff.mean()),
                "max_abs_hu": float(diff.max())}  # fmt: skip

    _step(results, "bf16_vs_fp32", precision_effect)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
