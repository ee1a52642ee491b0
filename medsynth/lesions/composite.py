"""Compositing an inpainted lesion into its background, and resampling crops between grids.

The guarantee that makes inserted cases useful for training: outside the lesion mask dilated by
``margin`` voxels (a Euclidean ball, at most ``MAX_MARGIN``), every voxel of the result is the
background's own value, bit for bit; inside the mask it is the lesion's; in between the two are
blended with a weight that falls smoothly from 1 at the mask to 0 at the margin (``blend_weight``).

Example:
    >>> bg = np.zeros((1, 8, 8), np.float32); fg = np.ones_like(bg)
    >>> mask = np.zeros((8, 8), bool); mask[3:5, 3:5] = True
    >>> out = composite(bg, fg, mask, margin=2)
    >>> float(out[0, 3, 3]), 0.0 < float(out[0, 3, 2]) < 1.0, float(out[0, 0, 0])
    (1.0, True, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from medsynth.errors import InputError
from medsynth.lesions.morphology import distance_outside

MAX_MARGIN = 3  # voxels; a wider blend would let the generator's texture reach the background


def _check_margin(margin: int) -> int:
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or not 0 <= margin <= MAX_MARGIN:
        raise InputError(f"margin={margin!r}: expected a whole number of voxels from 0 to {MAX_MARGIN}")
    return int(margin)


def blend_weight(mask: np.ndarray, margin: int, spacing: Sequence[float] | None = None) -> np.ndarray:
    """The lesion's weight per voxel: 1 in ``mask``, a cosine taper of the distance outside it, 0 beyond.

    ``w = 0.5 * (1 + cos(pi * d / R))`` for the distance ``d`` (mm) to the mask, zero from
    ``R = sqrt(margin**2 + 1) * min(spacing)`` on. ``R`` is the smallest distance a voxel more
    than ``margin`` voxels from the mask can have (``d >= min(spacing) * voxel distance``, and
    voxel distances are square roots of integers), so the weight is a function of the physical
    distance alone, isotropic in the patient even on anisotropic voxels, and still zero on every
    voxel beyond the band of ``margin`` voxels.

    Args:
        mask: boolean lesion mask on the spatial grid.
        margin: band width in voxels, 0..3 (0: a hard edge).
        spacing: voxel size in mm; None for isotropic voxels.

    Returns:
        float32 weights in [0, 1], the mask's shape, non-increasing with distance from the mask.
    """
    margin = _check_margin(margin)
    mask = np.asarray(mask, bool)
    sp = None if spacing is None else tuple(float(s) for s in spacing)
    d = distance_outside(mask, sp)
    reach = math.sqrt(margin**2 + 1) * (1.0 if sp is None else min(sp))
    x = d / reach
    # ``x < 1 - 1e-9``: an EDT rounded a hair below R must not leave a 1e-16 weight beyond the band
    w = np.where(x < 1.0 - 1e-9, 0.5 * (1.0 + np.cos(np.pi * np.minimum(x, 1.0))), 0.0)
    w[mask] = 1.0
    return w.astype(np.float32)


def composite(
    background: np.ndarray,
    lesion: np.ndarray,
    mask: np.ndarray,
    *,
    margin: int = 2,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """``lesion`` inside ``mask``, ``background`` beyond the margin (exactly), a soft blend between.

    Args:
        background: the scan's array, channel-first ``(C, H, W)`` or ``(C, D, H, W)``, float.
        lesion: the inpainted content on the same grid and shape as ``background``.
        mask: the full-size boolean lesion mask, spatial (or with one leading channel).
        margin: blend band in voxels, 0..3.
        spacing: voxel size in mm, for an isotropic taper (``blend_weight``).

    Returns:
        A new array of the background's shape and dtype.
    """
    background = np.asarray(background)
    lesion = np.asarray(lesion)
    mask = np.asarray(mask, bool)
    if lesion.shape != background.shape:
        raise ValueError(f"composite: lesion shape {lesion.shape} != background shape {background.shape}")
    if mask.shape == (1, *background.shape[1:]):
        mask = mask[0]
    if mask.shape != background.shape[1:]:
        raise ValueError(
            f"composite: mask shape {mask.shape} is not the grid of the (C, ...) background {background.shape}"
        )
    w = blend_weight(mask, margin, spacing)
    out = background.copy()
    band = (w > 0) & ~mask
    # only the band is computed; the mask is copied (weight 1 would round-trip through floats)
    out[..., band] = (w[band] * lesion[..., band] + (1.0 - w[band]) * background[..., band]).astype(out.dtype)
    out[..., mask] = lesion[..., mask]
    return out


def resample_to(
    crop: np.ndarray,
    from_spacing: Sequence[float],
    to_spacing: Sequence[float],
    order: int = 1,
    *,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Bring a crop from one voxel size to another, keeping its physical extent.

    Used to take a lesion crop made at the lesion model's spacing to a background's spacing, so
    a dataset background keeps its own grid. A boolean crop is a mask: with ``order`` 0 it
    takes the nearest voxel, otherwise it is interpolated linearly and thresholded at 0.5.

    Why ``scipy.ndimage.zoom`` rather than MONAI's ``Spacing``: a crop has no affine of its own,
    and ``zoom(grid_mode=True)`` maps voxel edges to voxel edges, which is exactly "same extent".

    Args:
        crop: spatial ``(H, W)``/``(D, H, W)`` or channel-first ``(C, ...)``; channels are
            resampled alike.
        from_spacing: the crop's voxel size in mm, one per spatial axis.
        to_spacing: the wanted voxel size in mm.
        order: spline order (0 nearest, 1 linear, 3 cubic); for a mask 0 or linear.
        shape: the exact spatial output shape (to match a background crop); default
            ``round(shape * from_spacing / to_spacing)``.

    Example:
        >>> resample_to(np.ones((4, 4), np.float32), (1.0, 1.0), (0.5, 0.5)).shape
        (8, 8)
    """
    src = np.asarray(from_spacing, float)
    dst = np.asarray(to_spacing, float)
    dims = len(src)
    if len(dst) != dims or crop.ndim not in (dims, dims + 1) or (src <= 0).any() or (dst <= 0).any():
        raise ValueError(f"resample_to: crop {crop.shape} with spacings {tuple(src)} -> {tuple(dst)}")
    in_shape = np.asarray(crop.shape[-dims:])
    out_shape = np.maximum(np.round(in_shape * src / dst), 1) if shape is None else np.asarray(shape)
    if out_shape.shape != (dims,):
        raise ValueError(f"resample_to: shape {shape!r} must have {dims} entries")
    zoom = out_shape / in_shape
    is_mask = crop.dtype == bool
    # A mask is interpolated linearly and cut at 0.5 (smoother than nearest neighbour), unless order 0 is asked for.
    spline = (1 if order else 0) if is_mask else order
    data = crop.astype(np.float32) if is_mask else crop

    def one(a: np.ndarray) -> np.ndarray:
        return ndi.zoom(a, zoom, order=spline, mode="nearest", grid_mode=True)

    out = one(data) if crop.ndim == dims else np.stack([one(c) for c in data])
    return out >= 0.5 if is_mask else out.astype(crop.dtype, copy=False)
