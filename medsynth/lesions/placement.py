"""Where a lesion crop goes: a uniformly random position inside a region, its margin inside the body.

A position is the corner offset of the lesion crop in the scan's spatial array (index of the
crop's first voxel along each axis). It is valid when every lesion voxel lies in the region's
mask, the crop lies on the image, and the lesion dilated by ``margin`` voxels (the band that
``composite`` blends over) lies in the body and on the image, so a lesion never crosses the body
outline.

Example:
    >>> import numpy as np
    >>> from medsynth.lesions.regions import Region
    >>> area = np.zeros((20, 20), bool); area[4:16, 4:16] = True
    >>> lesion = np.pad(np.ones((3, 3), bool), 1)
    >>> offset = place(lesion, Region("square", area, area), np.random.default_rng(0), margin=1)
    >>> bool(paste_mask(area.shape, lesion, offset)[area].sum() == 9)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from medsynth.errors import InputError
from medsynth.lesions.morphology import dilate
from medsynth.lesions.regions import Region


def _fits(allowed: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``fits[o]``: the footprint, its corner at ``o``, covers only allowed voxels; shape ``allowed - footprint + 1``.

    Why a correlation by FFT and not ``binary_erosion(allowed, footprint)``: an erosion costs the
    image size times the footprint size (a 28 mm lesion in a 512x512x300 CT is 10^11 steps),
    the FFT only the image size times a logarithm; and ``mode="valid"`` indexes the result by
    the corner, with no structuring-element origin to get wrong.
    """
    if any(a < f for a, f in zip(allowed.shape, footprint.shape, strict=True)):
        return np.zeros((0,) * allowed.ndim, bool)
    flipped = footprint[(slice(None, None, -1),) * footprint.ndim]  # convolving with it correlates
    blocked = fftconvolve((~allowed).astype(np.float64), flipped.astype(np.float64), mode="valid")
    return blocked < 0.5  # a count of blocked voxels, exact up to FFT round-off


def valid_offsets(lesion_mask: np.ndarray, region: Region, *, margin: int = 3) -> np.ndarray:
    """True at each corner offset where the lesion fits; shape ``region.mask.shape - lesion_mask.shape + 1``."""
    lesion = np.asarray(lesion_mask, bool)
    shape = np.asarray(region.mask.shape)
    if lesion.ndim != region.mask.ndim or not lesion.any():
        raise ValueError(f"the lesion mask must be a non-empty {region.mask.ndim}D crop; got shape {lesion.shape}")
    if margin < 0:
        raise InputError(f"margin={margin!r}: expected a number of voxels >= 0")
    size = np.asarray(lesion.shape)
    valid = np.zeros(tuple(np.maximum(shape - size + 1, 0)), bool)
    box = ndi.find_objects(region.mask.astype(np.int8))
    if not box or box[0] is None or valid.size == 0:
        return valid
    # Only crops near the region can fit: work in its bounding box grown by the crop and the margin.
    lo = np.maximum([s.start for s in box[0]] - size - margin, 0)
    hi = np.minimum([s.stop for s in box[0]] + size + margin, shape)
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    in_region = _fits(region.mask[window], lesion)
    # The body padded with margin False voxels (off the image is outside the body), against the
    # crop padded by the margin and dilated: both are then indexed by the same corner.
    in_body = _fits(np.pad(region.body[window], margin), dilate(np.pad(lesion, margin), margin))
    if in_region.size:
        valid[tuple(slice(a, a + n) for a, n in zip(lo, in_region.shape, strict=True))] = in_region & in_body
    return valid


def place(lesion_mask: np.ndarray, region: Region, rng: np.random.Generator, *, margin: int = 3) -> tuple[int, ...]:
    """A corner offset, uniform over all valid ones, at which ``lesion_mask`` lies inside ``region``.

    Args:
        lesion_mask: the lesion crop (``propose_mask``), on the region's grid.
        region: where the lesion may lie, with the body its margin must stay in (``resolve_region``).
        rng: the only source of randomness (one integer draw).
        margin: voxels around the lesion that must also be inside the body (the blend band).

    Raises:
        InputError: no position fits; the message names the lesion's and the region's sizes.
    """
    valid = valid_offsets(lesion_mask, region, margin=margin)
    choices = np.flatnonzero(valid)
    if choices.size == 0:
        size = "x".join(str(n) for n in lesion_mask.shape)
        mm = ""
        if region.spacing is not None:
            mm = " (" + "x".join(f"{n * s:g}" for n, s in zip(lesion_mask.shape, region.spacing, strict=True)) + " mm)"
        box = ndi.find_objects(region.mask.astype(np.int8))
        extent = "x".join(str(s.stop - s.start) for s in box[0]) if box and box[0] is not None else "0"
        raise InputError(
            f"no position fits a lesion crop of {size} voxels{mm} with a {margin}-voxel margin inside region "
            f"{region.name!r} ({int(region.mask.sum())} voxels, extent {extent} voxels) and the body: "
            "ask for a smaller lesion size or name a larger region"
        )
    return tuple(int(v) for v in np.unravel_index(int(choices[rng.integers(choices.size)]), valid.shape))


def paste_mask(shape: Sequence[int], lesion_mask: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """A full-size boolean mask of ``shape`` holding ``lesion_mask`` with its corner at ``offset``."""
    shape = tuple(int(n) for n in shape)
    if len(offset) != len(shape) or lesion_mask.ndim != len(shape):
        raise ValueError(
            f"paste_mask: shape {shape}, crop {lesion_mask.shape} and offset {tuple(offset)} differ in dimension"
        )
    if any(o < 0 or o + s > n for o, s, n in zip(offset, lesion_mask.shape, shape, strict=True)):
        raise ValueError(f"paste_mask: a crop of {lesion_mask.shape} at {tuple(offset)} does not fit in {shape}")
    out = np.zeros(shape, bool)
    out[tuple(slice(int(o), int(o) + s) for o, s in zip(offset, lesion_mask.shape, strict=True))] = lesion_mask
    return out
