"""Prior preservation (DreamBooth, Ruiz et al. 2023): samples of the base for its own classes.

Generated once per (base digest, settings) into ``WORK_DIR/prior/`` and reused by a resumed or
repeated run: they are training material, like checkpoints, so they stay out of the model
directory, which holds only what the model needs. The samples are the base's scaled latents
(``training.diffusion.preview_samples``: deterministic DDIM or Euler with guidance), one
generator per class, so they do not depend on how many classes there are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medsynth.distributed import DistContext, barrier
from medsynth.io.atomic import atomic_path, write_json
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.seeding import derive_seed
from medsynth.training.diffusion import Denoiser, preview_samples

PRIOR_DIR = "prior"


def prior_latents(
    base: LatentDiffusionModel, settings: Any, base_sha256: str, work: Path, seed: int, dist: DistContext
) -> tuple[torch.Tensor, list[str], list[str]]:
    """``(z, pathologies, modalities)``: ``settings.samples_per_class`` scaled latents per base class.

    Rank 0 generates them (or finds them cached); every rank then reads the same file.
    """
    classes = [(p, m) for m in base.modalities for p in base.pathologies]
    guidance = settings.guidance if settings.guidance is not None else base.config.default_guidance_scale
    spec = {
        "base_sha256": base_sha256,
        "classes": [f"{p}/{m}" for p, m in classes],
        "samples_per_class": settings.samples_per_class,
        "sampling_steps": settings.sampling_steps,
        "guidance": guidance,
        "seed": seed,
    }
    folder = work / PRIOR_DIR
    tensors, meta = folder / "latents.safetensors", folder / "prior.json"
    if dist.is_main:
        cached = json.loads(meta.read_text()) if meta.is_file() and tensors.is_file() else None
        if cached != spec:
            denoiser = Denoiser(base.unet, base.conditioner).eval()
            zs = []
            for p, m in classes:
                n = settings.samples_per_class
                zs.append(
                    preview_samples(
                        base,
                        denoiser,
                        [p] * n,
                        [m] * n,
                        steps=settings.sampling_steps,
                        guidance=guidance,
                        seed=derive_seed(seed, "prior", p, m),
                        decode=False,
                    ).cpu()
                )
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(tensors) as tmp:
                save_file({"z": torch.cat(zs).contiguous()}, str(tmp))
            write_json(meta, spec)
    barrier(dist)
    z = load_file(str(tensors))["z"].to(base.device)
    n = settings.samples_per_class
    return z, [p for p, _ in classes for _ in range(n)], [m for _, m in classes for _ in range(n)]
