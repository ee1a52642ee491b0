"""Inpainting a lesion into a crop, and inserting one into a whole scan.

``inpaint`` is the sampling loop of the lesion model, in the numbered style of
``sampling/synthesizer.py`` and with its samplers (``sampling.samplers.make_sampler``):

1. each crop's initial noise from its own seed, and one step-noise generator per crop, so a
   result does not depend on the batch it was made in;
2. the conditioning channels once: the surroundings with the hole zeroed and the mask;
   the context ``[null; condition]`` when guiding;
3. per step one batched UNet call, ``out = out_u + g (out_c - out_u)``, then the sampler's step;
4. the hole from the sample, everything else from the given crop.

``insert_lesion`` brings the background to the model and the lesion back: it cuts the box that
spans the lesion model's crop around the mask from the background *on the background's own
grid*, normalises it, resamples it to the model's spacing (``composite.resample_to``), inpaints,
resamples the result back to the box, returns to modality units and composites it
(``composite.composite``). The background keeps its grid, spacing, affine and units, and outside
the mask dilated by the compositing margin every voxel is the background's own, bit for bit.

Example:
    >>> crop = inpaint(model, surroundings, mask, "nodule", "CT", seed=0)          # doctest: +SKIP
    >>> case = insert_lesion(model, normal_ct, mask, "nodule", "CT", preprocessing, seed=7)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from medsynth.conditions import pathology_label, split_pathologies
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lesions.composite import composite, resample_to
from medsynth.lesions.crops import OUTSIDE, box_in_voxels, cut_box, fits_crop, resample_mask
from medsynth.lesions.model import LesionModel, holes_of, lesion_inputs
from medsynth.limits import check_guidance, check_seed, check_steps, positive_int
from medsynth.sampling.samplers import make_sampler
from medsynth.seeding import derive_seed, torch_generator

Labels = str | Sequence[str]


def _per_item(value: Labels | Sequence[Labels], n: int, name: str) -> list[Labels]:
    """One label per item: a single label (str) repeated, or a sequence of ``n``."""
    if isinstance(value, str):
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise InputError(f"inpaint: got {len(items)} {name} entries for {n} crops; give one, or one per crop")
    return items


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """Per-crop seeds: ``derive_seed(seed, i)`` for a request seed, or the given per-crop seeds."""
    if isinstance(seed, Sequence):
        if len(seed) != n:
            raise InputError(f"inpaint: got {len(seed)} seeds for {n} crops; give one request seed or one per crop")
        return [check_seed(s) for s in seed]
    return [derive_seed(check_seed(seed), i) for i in range(n)]


def inpaint(
    model: LesionModel,
    surroundings: torch.Tensor,
    mask: torch.Tensor,
    pathology: Labels | Sequence[Labels],
    modality: str | Sequence[str],
    *,
    seed: int | Sequence[int],
    steps: int = 20,
    sampler: str = "ddim",
    guidance_scale: float | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Fill the hole (the mask dilated by the model's margin) of each crop with a lesion.

    Args:
        model: a lesion model (eval mode).
        surroundings: normalised crops ``(B, C, *crop_size)`` or ``(C, *crop_size)`` at the model's
            spacing; what lies in the hole is ignored.
        mask: boolean lesion masks ``(B, *crop_size)`` (or ``(*crop_size)``), each non-empty.
        pathology: the lesion's label (or labels), one for all crops or one per crop.
        modality: one modality for all crops or one per crop.
        seed: a request seed (crop ``i`` gets ``derive_seed(seed, i)``) or one seed per crop.
        steps: sampler steps (UNet evaluations per crop, twice that when guiding).
        sampler: a ``medsynth.sampling.samplers`` name for the model's kind (``ddim``, ``ddpm``, ``dpm++``, ``rflow``).
        guidance_scale: classifier-free guidance; default ``config.default_guidance_scale``; 1 = none.
        batch_size: crops per UNet call (speed and memory only).

    Returns:
        ``(B, C, *crop_size)`` (or ``(C, *crop_size)`` for one crop) in normalised units: the
        sample inside the hole, ``surroundings`` outside it.

    Raises:
        InputError: shapes that do not fit the model, an empty mask, unknown labels or bad settings.
    """
    single = surroundings.ndim == model.spatial_dims + 1
    crops = surroundings[None] if single else surroundings
    masks = (mask[None] if single else mask).bool()
    if tuple(crops.shape[1:]) != model.crop_shape or tuple(masks.shape) != (crops.shape[0], *model.crop_shape[1:]):
        raise InputError(
            f"inpaint: crops {tuple(surroundings.shape)} and masks {tuple(mask.shape)} do not fit the lesion "
            f"model's crop {model.crop_shape}; cut them with insert_lesion or at the model's crop size"
        )
    n = crops.shape[0]
    empty = [i for i in range(n) if not bool(masks[i].any())]
    if empty:
        raise InputError(f"inpaint: the mask of crop {empty[0]} is empty; a lesion needs at least one voxel")
    paths = [list(split_pathologies(p)) for p in _per_item(pathology, n, "pathology")]
    mods = [str(m).upper() for m in _per_item(modality, n, "modality")]
    seeds = _seeds(seed, n)
    kind = model.config.scheduler["kind"]
    n_steps = check_steps(steps, int(model.config.scheduler["num_train_timesteps"]))
    g = check_guidance(
        model.config.default_guidance_scale if guidance_scale is None else guidance_scale,
        model.config.default_guidance_scale,
    )
    size = positive_int("batch_size", batch_size)
    make_sampler(sampler, model.make_scheduler(), kind, n_steps, model.crop_shape)  # checks the name and kind up front
    out = torch.cat(
        [
            _inpaint_batch(
                model,
                crops[lo : lo + size],
                masks[lo : lo + size],
                paths[lo : lo + size],
                mods[lo : lo + size],
                seeds[lo : lo + size],
                n_steps,
                sampler,
                g,
            )
            for lo in range(0, n, size)
        ]
    )
    return out[0] if single else out


@torch.inference_mode()
def _inpaint_batch(
    model: LesionModel,
    crops: torch.Tensor,
    masks: torch.Tensor,
    pathologies: list[list[str]],
    modalities: list[str],
    seeds: list[int],
    steps: int,
    sampler_name: str,
    g: float,
) -> torch.Tensor:
    device, b = model.device, crops.shape[0]
    crops, masks = crops.to(device).float(), masks.to(device)
    sampler = make_sampler(
        sampler_name, model.make_scheduler(), model.config.scheduler["kind"], steps, model.crop_shape
    )

    # 1. Per-crop randomness: initial noise drawn on the CPU (the same on every device).
    x = torch.stack([torch.randn(model.crop_shape, generator=torch_generator(s, "lesion-noise")) for s in seeds])
    x = x.to(device)
    step_gens = [torch_generator(s, "lesion-step-noise", device=device) for s in seeds]

    # 2. Conditioning channels and context, once; doubled for the two guidance branches.
    holes = holes_of(masks, model.config.margin)
    surroundings, mask_channel = lesion_inputs(crops, masks, holes)
    context = model.context(pathologies, modalities)
    guided = g != 1.0
    if guided:
        context = torch.cat([model.conditioner.null(b).to(context), context])
        surroundings, mask_channel = (
            surroundings.repeat(2, *[1] * (crops.ndim - 1)),
            mask_channel.repeat(2, *[1] * (crops.ndim - 1)),
        )
    timesteps = sampler.timesteps.to(device)
    if timesteps.is_floating_point():  # rectified flow without discrete timesteps
        timesteps = timesteps.float()

    # 3. Denoise; the timestep goes in as (1,) and the UNet broadcasts it over the batch.
    for i in range(len(timesteps)):
        t = timesteps[i : i + 1]
        if guided:
            out_u, out_c = model(torch.cat([x, x]), t, surroundings, mask_channel, context).chunk(2)
            out = out_u + g * (out_c - out_u)
        else:
            out = model(x, t, surroundings, mask_channel, context)
        x = sampler.step(out, i, x, step_gens)

    # 4. The hole from the sample, the rest as given.
    return torch.where(holes.unsqueeze(1), x, crops).cpu()


def insert_lesion(
    model: LesionModel,
    background: Scan,
    mask_full: np.ndarray,
    pathology: Labels,
    modality: str | None = None,
    preprocessing: Preprocessing | None = None,
    *,
    seed: int,
    steps: int = 20,
    sampler: str = "ddim",
    guidance_scale: float | None = None,
    margin: int = 2,
) -> Scan:
    """Inpaint a lesion of ``pathology`` inside ``mask_full`` and composite it into ``background``.

    Args:
        model: the lesion model.
        background: the scan to insert into, on its own grid (any spacing, any affine).
        mask_full: boolean lesion mask on the background's spatial grid (or with one leading
            channel), e.g. ``placement.paste_mask(...)``; one lesion, small enough for the crop.
        pathology: the lesion's label(s); modality: must be the background's (default: it).
        preprocessing: the intensity normalisation the model was trained with (the whole-image
            model's); default the lesion model's own ``config.intensity``.
        seed: the inpainting seed (used as is: one crop, one seed).
        steps, sampler, guidance_scale: as ``inpaint``.
        margin: the compositing band in background voxels, 0..3 (``composite.MAX_MARGIN``).

    Returns:
        A new ``Scan`` with the background's grid, affine, modality and metadata, the lesion
        composited in, ``metadata["pathology"]`` set to the lesion's label and ``seed`` to ``seed``.

    Raises:
        InputError: a mask that does not fit the background, is empty or larger than the crop, a
            modality or normalisation that differs from the model's, or bad sampling settings.
    """
    cfg = model.config
    modality = str(background.modality if modality is None else modality).upper()
    if modality != background.modality:
        raise InputError(f"insert_lesion: modality {modality!r} differs from the background's {background.modality!r}")
    pre = preprocessing if preprocessing is not None else cfg.preprocessing()
    if pre.intensity.get(modality) != cfg.intensity.get(modality):
        raise InputError(
            f"insert_lesion: the preprocessing normalises {modality} as {pre.intensity.get(modality)}, but the lesion "
            f"model was trained with {cfg.intensity.get(modality)}; pass the model's own preprocessing"
        )
    mask = np.asarray(mask_full) != 0
    if mask.ndim == background.spatial_dims + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != background.shape:
        raise InputError(
            f"insert_lesion: mask of shape {mask.shape} is not on the background's grid {background.shape}"
        )
    if not mask.any():
        raise InputError("insert_lesion: the mask is empty; give a lesion mask with at least one voxel")

    # The box of background voxels that spans the model's crop, centred on the lesion.
    spacing = background.spacing
    box_shape = box_in_voxels(cfg.crop_size, cfg.spacing, spacing)
    centre = ndi.center_of_mass(mask)
    image = pre.normalise(torch.from_numpy(background.array), modality).numpy()
    box, corner = cut_box(image, centre, box_shape, OUTSIDE)
    mask_box = cut_box(mask[None], centre, box_shape, False)[0][0]
    crop = resample_to(box, spacing, cfg.spacing, shape=cfg.crop_size)
    crop_mask = resample_mask(mask_box, spacing, cfg.spacing, cfg.crop_size)
    if int(mask_box.sum()) != int(mask.sum()) or not fits_crop(crop_mask, cfg.crop_size, cfg.margin):
        raise InputError(
            f"insert_lesion: a lesion of {int(mask.sum())} voxels at {spacing} mm does not fit the lesion model's "
            f"crop {cfg.crop_size} at {cfg.spacing} mm with its {cfg.margin}-voxel margin; ask for a smaller size"
        )

    filled = inpaint(
        model,
        torch.from_numpy(crop),
        torch.from_numpy(crop_mask),
        [pathology],
        [modality],
        seed=[seed],
        steps=steps,
        sampler=sampler,
        guidance_scale=guidance_scale,
    )
    back = resample_to(filled.numpy(), cfg.spacing, spacing, shape=box_shape)
    values = pre.denormalise(torch.from_numpy(back), modality).numpy()

    # The lesion layer: the background with the box's in-image part replaced; composite keeps
    # the background wherever the blend weight is 0, so only the mask and its band change.
    layer = background.array.copy()
    lo = [max(c, 0) for c in corner]
    hi = [min(c + s, n) for c, s, n in zip(corner, box_shape, background.shape)]
    inside = tuple(slice(a - c, h - c) for a, h, c in zip(lo, hi, corner))
    layer[(slice(None), *(slice(a, h) for a, h in zip(lo, hi)))] = values[(slice(None), *inside)]
    out = composite(background.array, layer, mask, margin=margin, spacing=spacing)
    return background.with_array(out, pathology=pathology_label(pathology), seed=int(seed))
