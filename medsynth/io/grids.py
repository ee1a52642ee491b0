"""Voxel grids: whether two index -> RAS affines describe the same voxels, and moving a label map between them.

A label map made for a scan may index the scan's voxels in another order: a NIfTI mask of
a DICOM series runs (x, y, z) where the series runs (slice, row, column); a DICOM SEG that
omits empty frames covers only some slices. Those are the same grid, and ``map_to_grid``
reorders the map without interpolation. Anything else (other spacing, other orientation, a
shift by a fraction of a voxel, voxels outside the scan) is a different grid, and an
``InputError`` says which, with both shapes and spacings: a mask is never resampled silently.

Conventions are ``medsynth.io.scan``'s: a 2D array ``(H, W)`` with its 4x4 affine is the 3D
array ``(H, W, 1)`` with the same affine (``xyz = affine @ [i, j, 0, 1]``), which is how 2D
and 3D grids are compared.

Example:
    >>> import numpy as np
    >>> scan_affine = np.diag([0.5, 0.5, 2.0, 1.0])
    >>> flipped = scan_affine @ np.array([[1, 0, 0, 0], [0, -1, 0, 3], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    >>> m = np.zeros((2, 4), bool); m[0, 0] = True
    >>> np.argwhere(map_to_grid(m, flipped, (2, 4), scan_affine, where="m"))
    array([[0, 3]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsynth.errors import InputError

# Two grids are the same when every voxel centre of one lies within this fraction of a voxel
# of a voxel centre of the other: it absorbs float32 NIfTI affines and 16-character DICOM
# decimal strings (errors ~1e-6 voxel), while a real spacing or origin mismatch, which
# drifts by whole voxels across a scan, is refused.
VOXEL_TOLERANCE = 0.1

_HINT = (
    "a mask must be a label map on the scan's own voxel grid: resample it onto the scan "
    "(nearest neighbour) or give the mask that was made for this scan"
)


def _as_3d(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    return (*shape, 1) if len(shape) == 2 else shape


def _spacing(affine: np.ndarray, shape: Sequence[int]) -> tuple[float, ...]:
    norms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return tuple(round(float(v), 4) for v in norms[: len(shape)])


def describe_grid(shape: Sequence[int], affine: np.ndarray) -> str:
    """``"shape (4, 5), spacing (0.7, 0.7) mm"`` for messages."""
    return f"shape {tuple(int(s) for s in shape)}, spacing {_spacing(affine, shape)} mm"


def map_to_grid(
    values: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    *,
    where: str,
    partial: bool = False,
    target: str = "scan",
) -> np.ndarray:
    """A label map moved onto another grid of the same voxels: a bool array of ``shape``.

    Args:
        values: the label map, 2D or 3D spatial array; nonzero counts as True.
        affine: its index -> RAS affine.
        shape: the target's spatial shape (2D or 3D).
        target_affine: the target's index -> RAS affine.
        where: names the label map in messages (its file).
        partial: allow the map to cover only part of the target (a DICOM SEG whose empty
            frames are omitted); the rest is False. Otherwise it must cover it exactly.
        target: names the target in messages.

    Raises:
        InputError: the grids differ (orientation, spacing, a sub-voxel shift, extent); the
            message gives both shapes and spacings and what to do.
    """
    src_shape, dst_shape = _as_3d(values.shape), _as_3d(shape)
    src = np.asarray(values).reshape(src_shape) != 0

    def fail(reason: str) -> InputError:
        return InputError(
            f"{where}: the mask's grid is not the {target}'s ({reason}): mask "
            f"{describe_grid(values.shape, affine)}; {target} {describe_grid(shape, target_affine)}; {_HINT}"
        )

    transform = np.linalg.inv(np.asarray(target_affine, np.float64)) @ np.asarray(affine, np.float64)
    axis_of = [-1, -1, -1]  # target axis of each source axis
    sign = [1, 1, 1]
    for a in range(3):
        if src_shape[a] == 1:
            continue  # one voxel thick: only its position matters, not the step along it
        column = transform[:3, a]
        b = int(np.argmax(np.abs(column)))
        off_axis = float(np.linalg.norm(np.delete(column, b)))
        if off_axis * (src_shape[a] - 1) > VOXEL_TOLERANCE or b in axis_of:
            raise fail("the axes point in other directions")
        if abs(abs(column[b]) - 1.0) * (src_shape[a] - 1) > VOXEL_TOLERANCE:
            raise fail("the voxel spacing differs")
        axis_of[a], sign[a] = b, 1 if column[b] > 0 else -1
    free = [b for b in range(3) if b not in axis_of]
    for a in range(3):
        if axis_of[a] < 0:
            axis_of[a] = free.pop(0)
    start = transform[:3, 3]
    if np.max(np.abs(start - np.round(start))) > VOXEL_TOLERANCE:
        raise fail("the voxel centres are shifted by a fraction of a voxel")
    origin = np.round(start).astype(int)
    # Reorder the source to the target's axis order, flipped where the steps run backwards;
    # then it is a box of the target starting at the lowest target index it reaches.
    order = [axis_of.index(b) for b in range(3)]
    box = np.transpose(src, order)
    lo = []
    for b in range(3):
        a = order[b]
        if sign[a] < 0:
            box = np.flip(box, axis=b)
        lo.append(int(origin[b]) - (src_shape[a] - 1 if sign[a] < 0 else 0))
    hi = [lo[b] + box.shape[b] for b in range(3)]
    inside = all(lo[b] >= 0 and hi[b] <= dst_shape[b] for b in range(3))
    exact = all(lo[b] == 0 and hi[b] == dst_shape[b] for b in range(3))
    if not inside:
        raise fail(f"it reaches voxels outside the {target}")
    if not (exact or partial):
        raise fail("the shape differs" if box.shape != dst_shape else "it is shifted by whole voxels")
    out = np.zeros(dst_shape, bool)
    out[tuple(slice(lo[b], hi[b]) for b in range(3))] = box
    return out.reshape(tuple(int(s) for s in shape))


__all__ = ["VOXEL_TOLERANCE", "describe_grid", "map_to_grid"]
