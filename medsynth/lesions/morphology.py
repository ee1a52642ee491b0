"""Small binary-mask helpers shared by mask proposals and region finding.

Connectivity is the face connectivity of ``scipy.ndimage.label``'s default structure
everywhere: a mask that is one component by faces is one component by any looser rule too,
so "connected" means the same thing in every module.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Face-connected components of ``mask``.

    Returns:
        ``(labels, count, sizes)``: the label image (0 outside), the number of components and
        the voxel count of each, ``sizes[i]`` for label ``i + 1``.
    """
    labels, count = ndi.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, int(count), sizes


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (all False when ``mask`` is empty)."""
    labels, count, sizes = label_components(mask)
    if count == 0:
        return np.zeros(mask.shape, bool)
    return labels == int(np.argmax(sizes)) + 1


def tight_crop(mask: np.ndarray, border: int = 1) -> np.ndarray:
    """``mask`` cropped to its bounding box, with ``border`` False voxels on every side.

    Example:
        >>> m = np.zeros((5, 6), bool); m[2, 3] = True
        >>> tight_crop(m).shape
        (3, 3)
    """
    box = ndi.find_objects(mask.astype(np.int8))
    if not box or box[0] is None:
        raise ValueError("tight_crop: the mask is empty")
    return np.pad(mask[box[0]], border)


def equivalent_diameter(count: float, spacing: tuple[float, ...]) -> float:
    """Diameter in mm of the sphere (3D) or circle (2D) with the volume of ``count`` voxels."""
    size = float(count) * float(np.prod(spacing))
    if len(spacing) == 3:
        return float((6.0 * size / np.pi) ** (1.0 / 3.0))
    return float(np.sqrt(4.0 * size / np.pi))


def equivalent_count(diameter_mm: float, spacing: tuple[float, ...]) -> float:
    """Voxel count (not rounded) of a sphere (3D) or circle (2D) of ``diameter_mm``; ``equivalent_diameter``'s inverse."""
    r = diameter_mm / 2.0
    size = 4.0 / 3.0 * np.pi * r**3 if len(spacing) == 3 else np.pi * r**2
    return float(size / np.prod(spacing))


def distance_outside(mask: np.ndarray, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Euclidean distance of every voxel to the nearest ``mask`` voxel (0 inside), in voxels or, with ``spacing``, mm.

    An empty mask is infinitely far from everywhere.
    """
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(~mask, sampling=spacing)


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` grown by a Euclidean ball of ``radius`` voxels: every voxel within ``radius`` of it.

    This is the band that compositing blends over, so placement and compositing agree on what
    "the mask dilated by the margin" is. Pad the mask first if the band must not be cut off.
    """
    return distance_outside(mask) <= radius
