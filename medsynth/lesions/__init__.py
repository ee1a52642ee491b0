"""Lesion insertion, the geometry: mask proposals, placement regions, placement and compositing.

One case by insertion, in the order the modules are used (2D and 3D alike; masks are boolean
on the scan's spatial grid, arrays channel-first as everywhere in medsynth):

1. ``regions.resolve_region(scan, "lungs")``: where the lesion may go, found from the scan;
2. ``shapes.propose_mask(rng, spacing=scan.spacing, diameter_mm=..., spatial_dims=...)``: its
   shape, from training masks (``MaskBank``) or a small generator;
3. ``placement.place(mask, region, rng)``: a uniformly random position inside the region, its
   blend margin inside the body; ``paste_mask`` makes the full-size mask;
4. (the lesion model inpaints inside the mask; ``resample_to`` moves crops between its spacing
   and the background's);
5. ``composite.composite(background, inpainted, mask)``: the background untouched, bit for bit,
   beyond the margin.

Example:
    >>> import numpy as np
    >>> from medsynth.data.phantoms import make_phantom
    >>> scan = make_phantom(dim=2, modality="CT", seed=1)
    >>> rng = np.random.default_rng(7)
    >>> region = resolve_region(scan, "lungs")
    >>> crop = propose_mask(rng, spacing=scan.spacing, diameter_mm=20.0, spatial_dims=2)
    >>> mask = paste_mask(scan.shape, crop, place(crop, region, rng))
    >>> out = composite(scan.array, np.full_like(scan.array, 40.0), mask)
    >>> bool((out[0][mask] == 40.0).all()), bool((mask <= region.mask).all())
    (True, True)
"""

from __future__ import annotations

from medsynth.lesions.composite import MAX_MARGIN, blend_weight, composite, resample_to
from medsynth.lesions.placement import paste_mask, place, valid_offsets
from medsynth.lesions.regions import (
    Region,
    RegionSpec,
    body_mask,
    intensity_region,
    lung_mask,
    resolve_region,
)
from medsynth.lesions.shapes import MaskBank, MaskParams, diameter_of, draw_mask_params, propose_mask, render_mask

__all__ = [
    "MAX_MARGIN",
    "MaskBank",
    "MaskParams",
    "Region",
    "RegionSpec",
    "blend_weight",
    "body_mask",
    "composite",
    "diameter_of",
    "draw_mask_params",
    "intensity_region",
    "lung_mask",
    "paste_mask",
    "place",
    "propose_mask",
    "render_mask",
    "resample_to",
    "resolve_region",
    "valid_offsets",
]
