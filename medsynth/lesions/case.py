"""One case by insertion: draw a lesion's size, shape and place from a seed, then inpaint it.

The steps of ``medsynth.lesions`` in order (region, shape, placement, inpainting, compositing),
as the protocol runner, the benchmarks and a notebook use them. Everything random derives from
``seed``: the same background, seed and settings give the same case, bit for bit.

Example:
    >>> case = insert_case(lesion_model, normal_ct, "nodule", seed=7, size_mm=(6, 20))  # doctest: +SKIP
    >>> case.scan, case.mask.sum(), case.diameter_mm                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lesions.crops import box_in_voxels, cut_box, fits_crop, resample_mask
from medsynth.lesions.inpaint import insert_lesion
from medsynth.lesions.model import LesionModel
from medsynth.lesions.placement import paste_mask, place
from medsynth.lesions.regions import RegionSpec, resolve_region
from medsynth.lesions.shapes import MaskBank, diameter_of, propose_mask
from medsynth.seeding import derive_seed, numpy_rng

# Mask draws tried before a background is given up on: a lesion of the drawn size may not fit
# the region of one scan (small lungs at the apex), a smaller one of the range may.
MAX_DRAWS = 8


@dataclass(frozen=True, eq=False)
class InsertedCase:
    """A background with one inserted lesion, and what was drawn to make it.

    Args:
        scan: the case, on the background's grid (``insert_lesion``).
        mask: boolean lesion mask on that grid: the voxels that were inpainted.
        diameter_mm: the equivalent diameter of ``mask`` (the drawn size, up to voxel rounding).
        centre_voxel: the mask's centre of mass, rounded, in array index order.
        region: the region's name (``"lungs"``, ``"body"``, ``"intensity [lo, hi]"``, ...).
        draw: which of the ``MAX_DRAWS`` draws fitted (0 first).
    """

    scan: Scan
    mask: np.ndarray
    diameter_mm: float
    centre_voxel: tuple[int, ...]
    region: str
    draw: int

    def record(self) -> dict[str, Any]:
        """The JSON-ready description of the insertion (manifest ``insert``)."""
        return {
            "diameter_mm": round(self.diameter_mm, 3),
            "centre_voxel": list(self.centre_voxel),
            "region": self.region,
            "draw": self.draw,
        }


def fits_model(model: LesionModel, mask: np.ndarray, spacing: Sequence[float]) -> bool:
    """Whether a lesion mask, resampled to the lesion model's spacing, fits its crop with the margin."""
    cfg = model.config
    box = box_in_voxels(cfg.crop_size, cfg.spacing, spacing)
    centre = ndi.center_of_mass(mask)
    mask_box = cut_box(mask[None], centre, box, False)[0][0]
    if int(mask_box.sum()) != int(mask.sum()):
        return False
    return fits_crop(resample_mask(mask_box, spacing, cfg.spacing, cfg.crop_size), cfg.crop_size, cfg.margin)


def default_region(modality: str) -> str:
    """Chest CT and MR: inside the lungs; any other modality: inside the body."""
    return "lungs" if modality.upper() in ("CT", "MR") else "body"


def insert_case(
    model: LesionModel,
    background: Scan,
    pathology: str | Sequence[str],
    *,
    seed: int,
    size_mm: tuple[float, float],
    region: RegionSpec | None = None,
    bank: MaskBank | None = None,
    preprocessing: Preprocessing | None = None,
    steps: int = 20,
    sampler: str = "ddim",
    guidance_scale: float | None = None,
    margin: int = 2,
    what: str | None = None,
) -> InsertedCase:
    """Insert one lesion of ``pathology`` into ``background``, everything drawn from ``seed``.

    Args:
        model: the lesion model.
        background: the scan to insert into (its own grid, spacing, affine and units are kept).
        pathology: the lesion's label(s).
        seed: the case's seed; draw ``k`` uses ``derive_seed(seed, "insert", k)`` for its size,
            shape and place, and ``derive_seed(seed, "inpaint")`` seeds the inpainting.
        size_mm: ``(lo, hi)``: the diameter is drawn uniformly in it.
        region: where the lesion may lie (``resolve_region``); default ``default_region``.
        bank: training lesion shapes (``load_mask_bank``); None uses the mask generator.
        preprocessing: the whole-image model's (its intensity normalisation); default the lesion model's.
        steps, sampler, guidance_scale: the inpainting sampler.
        margin: the compositing band in background voxels (at most 3).
        what: how to name the background in messages (a dataset row, a case id).

    Raises:
        InputError: the region is empty, or no draw of the size range fits it.
    """
    what = what or repr(background)
    spec = default_region(background.modality) if region is None else region
    resolved = resolve_region(background, spec, what=what)
    lo, hi = (float(v) for v in size_mm)
    last: InputError | None = None
    for k in range(MAX_DRAWS):
        rng = numpy_rng(derive_seed(seed, "insert", k))
        diameter = float(rng.uniform(lo, hi)) if hi > lo else lo
        crop = propose_mask(
            rng, spacing=background.spacing, diameter_mm=diameter, spatial_dims=background.spatial_dims, bank=bank
        )
        try:
            offset = place(crop, resolved, rng, margin=max(margin, 1))
        except InputError as exc:
            last = exc
            continue
        mask = paste_mask(background.shape, crop, offset)
        if not fits_model(model, mask, background.spacing):
            last = InputError(f"a {diameter:.1f} mm lesion does not fit the lesion model's crop with its margin")
            continue
        scan = insert_lesion(
            model,
            background,
            mask,
            pathology,
            background.modality,
            preprocessing,
            seed=derive_seed(seed, "inpaint"),
            steps=steps,
            sampler=sampler,
            guidance_scale=guidance_scale,
            margin=margin,
        )
        centre = tuple(int(round(c)) for c in ndi.center_of_mass(mask))
        return InsertedCase(scan, mask, diameter_of(mask, background.spacing), centre, resolved.name, k)
    raise InputError(
        f"{what}: no lesion of {lo:g}-{hi:g} mm fits region {resolved.name!r} in {MAX_DRAWS} draws ({last})"
    )
