"""The lesion stage of ``medsynth train``: the lesion model beside the whole-image model.

After stage 2 (or alone, ``medsynth train CONFIG --lesion-only``, into an existing model
directory), when the training split has masks:

1. examples: one crop per connected lesion of every training mask (``lesions.crops``), the image
   normalised with the whole-image model's intensity window; validation crops from the val split;
2. ``lesions.train.train_lesion_model`` (checkpoints under ``WORK/checkpoints/lesion``, exact resume);
3. ``save_lesion_model`` into ``MODEL_DIR/lesion/`` with the training masks' shapes (``MaskBank``)
   and each pathology's size range (``sizes_mm``);
4. the lesion privacy index (``privacy.lesions.build_lesion_index``), from the holdout's masks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.conditions import NORMAL
from medsynth.data.catalog import Catalog
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.lesions.crops import LesionExample, lesion_examples
from medsynth.lesions.model import DEFAULT_UNET, LesionModelConfig, save_lesion_model
from medsynth.lesions.morphology import label_components
from medsynth.lesions.shapes import MaskBank, diameter_of
from medsynth.lesions.train import train_lesion_model
from medsynth.training.config import LesionConfig, TrainConfig

DEFAULT_CROP = {2: 32, 3: 16}


def wanted(cfg: LesionConfig, train: Catalog) -> bool:
    """Whether to train the lesion model, checked before any training.

    Raises:
        InputError: ``enabled: true`` without masks, or ``pathologies`` without masks.
    """
    if cfg.enabled is True and not train.has_masks:
        raise InputError(
            "lesion.enabled is true but the training data has no masks: add a 'mask' column to the dataset CSV "
            "(docs/data.md) or data.phantoms.masks: true"
        )
    if cfg.enabled is False or not train.has_masks:
        return False
    lesion_pathologies(cfg, train)
    return True


def lesion_pathologies(cfg: LesionConfig, train: Catalog) -> list[str]:
    """``cfg.pathologies``, or every pathology with a mask in the training split."""
    found = sorted({p for r in train.records if r.mask is not None for p in r.pathologies if p != NORMAL})
    unknown = sorted(set(cfg.pathologies or []) - set(found))
    if unknown:
        raise InputError(f"lesion.pathologies: {unknown} have no masks in the training split; found {found}")
    return sorted(cfg.pathologies) if cfg.pathologies else found


def model_config(
    cfg: LesionConfig, pre: Preprocessing, pathologies: list[str], modalities: list[str]
) -> LesionModelConfig:
    """The ``LesionModelConfig`` of the stage; one-line InputError for a crop the UNet cannot divide."""
    dims = pre.spatial_dims
    return LesionModelConfig(
        spatial_dims=dims,
        crop_size=list(cfg.crop_size or [DEFAULT_CROP[dims]] * dims),
        spacing=list(cfg.spacing or pre.spacing),
        pathologies=pathologies,
        modalities=modalities,
        intensity=dict(pre.intensity),
        unet={**DEFAULT_UNET, **cfg.unet},
        cond_dim=cfg.cond_dim,
        margin=cfg.margin,
        scheduler=cfg.scheduler.model_dump(),
        default_guidance_scale=cfg.default_guidance_scale,
    )


def examples_of(
    catalog: Catalog, pre: Preprocessing, lesion: LesionModelConfig, pathologies: list[str]
) -> tuple[list[LesionExample], list[np.ndarray], list[tuple[float, ...]], dict[str, list[float]], int]:
    """Crops of every lesion of ``pathologies`` in ``catalog``'s masks (too large for the crop: skipped and counted).

    Returns the examples, the masks that gave one and their spacings (the ``MaskBank``), each
    pathology label's lesion diameters, and the number of lesions skipped as too large.
    """
    examples: list[LesionExample] = []
    masks: list[np.ndarray] = []
    spacings: list[tuple[float, ...]] = []
    sizes: dict[str, list[float]] = {}
    skipped = 0
    for i, rec in enumerate(catalog.records):
        if rec.mask is None or not set(rec.pathologies) <= set(pathologies):
            continue
        scan = catalog.load(i)
        mask = catalog.load_mask(i, scan)
        if mask is None or not np.any(mask):
            continue
        mask = np.asarray(mask).reshape(scan.shape)
        label = "|".join(sorted(rec.pathologies))
        image = pre.normalise(torch.from_numpy(scan.array), scan.modality).numpy()
        found = lesion_examples(
            image,
            mask,
            scan.spacing,
            pathology=rec.pathologies,
            modality=scan.modality,
            target_spacing=lesion.spacing,
            crop_size=lesion.crop_size,
            margin=lesion.margin,
            too_large="skip",
        )
        skipped += _components(mask) - len(found)
        if found:
            examples += found
            masks.append(mask)
            spacings.append(scan.spacing)
            sizes.setdefault(label, []).append(diameter_of(mask, scan.spacing))
    return examples, masks, spacings, sizes, skipped


def _components(mask: np.ndarray) -> int:
    return int(label_components(mask)[1])


def train_lesion_stage(
    cfg: TrainConfig,
    model_dir: Path,
    pre: Preprocessing,
    train: Catalog,
    val: Catalog,
    holdout: Catalog,
    *,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train, save and index the lesion model of ``model_dir``; returns the stage's summary for the card."""
    lc = cfg.lesion
    pathologies = lesion_pathologies(lc, train)
    modalities = sorted({r.modality for r in train.records})
    lesion = model_config(lc, pre, pathologies, modalities)
    examples, masks, spacings, sizes, skipped = examples_of(train, pre, lesion, pathologies)
    val_examples = examples_of(val, pre, lesion, pathologies)[0] if len(val) and val.has_masks else []
    if not examples:
        raise InputError(
            f"lesion model: none of the training lesions fits the crop {lesion.crop_size} at {lesion.spacing} mm "
            f"with a {lesion.margin}-voxel margin ({skipped} skipped); set lesion.crop_size larger or lesion.spacing coarser"
        )
    # Only the pathologies that gave an example: a vocabulary entry with no example would be untrained.
    kept = sorted({p for ex in examples for p in ex.pathology})
    lesion.pathologies = kept
    lesion.sizes_mm = {p: [round(min(v), 2), round(max(v), 2)] for p, v in sizes.items() if "|" not in p and p in kept}
    val_examples = [ex for ex in val_examples if set(ex.pathology) <= set(kept)]
    counts = dict(sorted(Counter(ex.key for ex in examples).items()))
    log(
        f"lesion model: {len(examples)} training lesions {counts}, {len(val_examples)} validation, "
        f"{skipped} too large for the crop {lesion.crop_size} at {[round(s, 3) for s in lesion.spacing]} mm"
    )
    model, summary = train_lesion_model(
        examples,
        lesion,
        steps=lc.steps,
        batch_size=lc.batch_size,
        lr=lc.lr,
        seed=cfg.seed,
        work_dir=cfg.resolved_work_dir,
        val_examples=val_examples,
        warmup_steps=lc.warmup_steps,
        ema_decay=lc.ema_decay,
        cond_drop=lc.cond_drop,
        token_drop=lc.token_drop,
        outside_weight=lc.outside_weight,
        checkpoint_every=cfg.checkpoint_every,
        val_every=cfg.val_every,
        log_every=cfg.log_every,
        device=model_dir_device(cfg),
        resume=resume,
        progress=progress,
        log=log,
    )
    save_lesion_model(model, model_dir, MaskBank.from_masks(masks, spacings), weights_dtype=cfg.weights_dtype)
    log(f"lesion model saved to {model_dir / 'lesion'}")
    if cfg.build_privacy_index:
        from medsynth.privacy.lesions import build_lesion_index

        build_lesion_index(model_dir, train, holdout, log=log)
    return {
        **summary,
        "examples": counts,
        "validation": len(val_examples),
        "skipped": skipped,
        "crop_size": lesion.crop_size,
        "spacing": lesion.spacing,
        "sizes_mm": lesion.sizes_mm,
    }


def model_dir_device(cfg: TrainConfig) -> str:
    """The lesion stage runs in one process, on the config's device (``auto``: CUDA when present)."""
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def card_section(info: dict[str, Any]) -> str:
    """The model card's lesion-model lines."""
    losses = ", ".join(f"{k} {v:.4f}" for k, v in (info.get("last_losses") or {}).items())
    return (
        "\n## Lesion model\n\n"
        f"A pixel-space MONAI DiffusionModelUNet that inpaints a {info['crop_size']} crop at "
        f"{[round(s, 3) for s in info['spacing']]} mm around a lesion (`lesion/`; docs/training.md).\n\n"
        f"- Training lesions per class: {info['examples']}; validation lesions: {info['validation']}; "
        f"skipped as too large for the crop: {info['skipped']}\n"
        f"- Size range per pathology (equivalent diameter, mm): {info['sizes_mm']}\n"
        f"- {info.get('steps_done')} steps, last train losses: {losses or 'n/a'}, "
        f"{info.get('seconds_per_step', float('nan')):.3f} s/step\n"
    )
