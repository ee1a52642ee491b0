"""Lesion masks: label maps on a scan's grid, read from NIfTI, PNG or DICOM SEG and written back.

A mask is a bool array shaped like its scan's array, ``(1, H, W)`` or ``(1, D, H, W)``, True
where the lesion is. On disk it is a label map, nonzero where the lesion is:

* NIfTI (``.nii``, ``.nii.gz``) or any other format ``medsynth.io.read_scan`` reads with
  geometry (a DICOM image series): its affine must describe the scan's voxels, in any axis
  order (``medsynth.io.grids.map_to_grid``);
* DICOM SEG: read with highdicom; its segments are combined, and its frames (possibly only the
  non-empty ones) are placed by their plane positions;
* PNG (or TIFF): an image stores no geometry, so a PNG mask is the scan *as displayed*, pixel
  for pixel: the rows and columns ``medsynth.io.png.write_png`` draws the scan with (for a
  scan read from a PNG, simply the same pixels). 2D scans only.

Any other grid (spacing, orientation, size, a sub-voxel shift) is a one-line ``InputError``
naming the mask, both grids and what to do. Writers: ``write_mask_nifti`` (uint8 label map on
the scan's affine), ``write_mask_png``, ``write_seg`` (``medsynth.io.dicom.seg``) and
``write_mask_outline_png`` (the scan with the mask's outline, for looking at).

Example:
    >>> write_mask_nifti(mask, scan, "out/case-1-mask.nii.gz")  # doctest: +SKIP
    >>> bool((read_mask("out/case-1-mask.nii.gz", like=scan) == mask).all())  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from medsynth.errors import InputError
from medsynth.io import detect_format, read_scan
from medsynth.io.dicom.seg import is_seg_file, peek_seg_shape, read_seg, write_seg
from medsynth.io.formats import get_format
from medsynth.io.grids import describe_grid, map_to_grid
from medsynth.io.nifti import write_nifti_array
from medsynth.io.png import display_array, preview_window, write_png
from medsynth.io.scan import Scan

# Outline colour of ``write_mask_outline_png`` (RGB): yellow stands out on grey in any window.
OUTLINE_RGB = (255, 220, 0)


def peek_shape(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The spatial shape of a scan or mask file from its header (no pixel data).

    A DICOM SEG gives ``(rows, columns)``, led by its number of referenced images when it
    references several. None when the headers cannot tell (a DICOM folder holding several
    series: reading it reports why).

    Raises:
        InputError: the file cannot be read as any format.
    """
    path = Path(path)
    if is_seg_file(path):
        return peek_seg_shape(path)
    return get_format(detect_format(path)).peek_shape(path)


def check_mask_header(mask: str | os.PathLike[str], scan: str | os.PathLike[str]) -> None:
    """Check, from headers only, that a mask file has its scan's shape (axes in any order).

    The axis order is left to ``read_mask``, which knows the geometry: a NIfTI mask of a
    DICOM series runs (x, y, z) where the series runs (slice, row, column). A DICOM SEG that
    references a single image states only its rows and columns, which must be two of the
    scan's sides. Nothing is checked when a header cannot tell (``peek_shape`` gives None).

    Raises:
        InputError: naming both files and shapes.
    """
    mask_shape, scan_shape = peek_shape(mask), peek_shape(scan)
    if mask_shape is None or scan_shape is None:
        return
    have, want = Counter(mask_shape), Counter(scan_shape)
    in_plane_only = len(mask_shape) == 2 and len(scan_shape) == 3 and is_seg_file(mask)
    if have == want or (in_plane_only and not have - want):
        return
    raise InputError(
        f"mask {mask} has shape {mask_shape}, but its scan {scan} has shape {scan_shape} (from the "
        "file headers); a mask is a label map on its scan's grid: give the mask made for this "
        "scan, or resample it onto the scan (nearest neighbour)"
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and detect_format(path) == "png"


def _display_indices(like: Scan) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of ``like`` as displayed (``display_array``), its row and column in ``like``."""
    rows, cols = np.indices(like.shape, dtype=np.float32)  # exact: image sides are far below 2**24
    shown = [display_array(like.with_array(grid[None]))[0].astype(np.int64) for grid in (rows, cols)]
    return shown[0], shown[1]


def _from_display(mask: np.ndarray, like: Scan, path: Path) -> np.ndarray:
    if like.spatial_dims != 2:
        raise InputError(
            f"{path}: a PNG mask holds a 2D image, but the scan is 3D with shape {like.shape}; "
            "give a NIfTI or DICOM SEG mask for a volume"
        )
    rows, cols = _display_indices(like)
    if mask.shape != rows.shape:
        raise InputError(
            f"{path}: the PNG mask is {mask.shape[0]}x{mask.shape[1]} pixels, but the scan "
            f"({describe_grid(like.shape, like.affine)}) shows as {rows.shape[0]}x{rows.shape[1]} "
            "(rows x columns); a PNG mask must match the scan pixel for pixel, as write_png draws it"
        )
    out = np.zeros(like.shape, bool)
    out[rows, cols] = mask != 0
    return out


def read_mask(path: str | os.PathLike[str], like: Scan) -> np.ndarray:
    """Read a lesion mask on the grid of ``like``: a bool array ``(1, *like.shape)``.

    Args:
        path: a NIfTI, PNG/TIFF or DICOM SEG label map (see the module docstring).
        like: the scan the mask belongs to (only its shape and affine are used).

    Raises:
        InputError: unreadable file, or a grid other than the scan's; the message names the
            file, both grids and what to do.

    Example:
        >>> mask = read_mask("labels/case-1-seg.dcm", like=read_scan("dicom/case-1"))  # doctest: +SKIP
    """
    path = Path(path)
    if is_seg_file(path):
        values, affine = read_seg(path)
        # A SEG may store only its non-empty frames: it covers part of the scan.
        return map_to_grid(values, affine, like.shape, like.affine, where=str(path), partial=True)[None]
    label_map = read_scan(path)
    if label_map.array.shape[0] != 1:
        raise InputError(f"{path}: mask has {label_map.array.shape[0]} channels; a label map has one")
    if _is_image(path):
        return _from_display(label_map.array[0], like, path)[None]
    try:
        return map_to_grid(label_map.array[0], label_map.affine, like.shape, like.affine, where=str(path))[None]
    except InputError as exc:
        if like.metadata.get("source_format") in ("png", "tiff", "jpeg"):
            raise InputError(f"{exc}; the scan is an image without geometry: give a PNG mask of its size") from exc
        raise


def _spatial(mask: np.ndarray, like: Scan, path: Path) -> np.ndarray:
    """``mask`` as a bool spatial array of ``like.shape``; InputError for any other shape."""
    mask = np.asarray(mask)
    if mask.shape == (1, *like.shape):
        mask = mask[0]
    if mask.shape != like.shape:
        raise InputError(
            f"{path}: mask has shape {mask.shape}, but its scan has {like.shape}; expected "
            f"{like.shape} or (1, *{like.shape})"
        )
    return mask.astype(bool)


def write_mask_nifti(mask: np.ndarray, like: Scan, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` as a uint8 NIfTI label map (1 = lesion) on ``like``'s affine (atomic).

    Args:
        mask: bool array ``like.shape`` or ``(1, *like.shape)``.
        like: the scan; its affine is the label map's, so viewers overlay the two.
        path: destination ending in ``.nii.gz`` or ``.nii``.
    """
    path = Path(path)
    return write_nifti_array(_spatial(mask, like, path).astype(np.uint8), like.affine, path)


def write_mask_png(mask: np.ndarray, like: Scan, path: str | os.PathLike[str]) -> Path:
    """Write a 2D ``mask`` as an 8-bit PNG (0 / 255) drawn like ``write_png`` draws ``like`` (atomic).

    ``read_mask`` reads it back onto ``like``'s grid (the display convention is undone).
    """
    path = Path(path)
    values = _spatial(mask, like, path).astype(np.float32)[None]
    # Window centre 0.5, width 1: 0 -> 0 and 1 -> 255 exactly.
    return write_png(like.with_array(values), path, window=(0.5, 1.0))


def _outline_plane(scan: Scan, mask: np.ndarray) -> tuple[Scan, np.ndarray]:
    """A 2D scan and mask as they are; a 3D one as its slice (axis 0) with the most mask voxels."""
    if scan.spatial_dims == 2:
        return scan, mask
    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    a = scan.affine
    # The slice's own 2D affine: in-plane axes 1 and 2, the slice step as its normal column.
    plane = np.column_stack([a[:, 1], a[:, 2], a[:, 0], a @ np.array([k, 0.0, 0.0, 1.0])])
    return Scan(scan.array[:, k], plane, scan.modality, scan.metadata), mask[k]


def write_mask_outline_png(
    scan: Scan, mask: np.ndarray, path: str | os.PathLike[str], *, window: tuple[float, float] | None = None
) -> Path:
    """Write an RGB PNG of ``scan`` with the mask's outline drawn in ``OUTLINE_RGB`` (atomic).

    The scan is windowed as ``write_png`` windows it (``preview_window``) and shown in the
    display convention. A 3D scan is shown by its slice along the first axis that holds most
    of the mask. For looking at, not for reading back (use ``write_mask_png``).

    Args:
        scan: a one-channel 2D or 3D scan.
        mask: bool array ``scan.shape`` or ``(1, *scan.shape)``.
        path: destination ending in ``.png``.
        window: ``(center, width)`` in the scan's units; default as ``write_png``.
    """
    from skimage.segmentation import find_boundaries

    path = Path(path)
    if scan.array.shape[0] != 1:
        raise InputError(f"{path}: scan has {scan.array.shape[0]} channels; the outline is drawn on a grey scan")
    plane_scan, plane_mask = _outline_plane(scan, _spatial(mask, scan, path))
    center, width = preview_window(plane_scan, window)
    grey = np.clip((plane_scan.array[0] - (center - width / 2)) / width, 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[None], 3, axis=0)
    edge = find_boundaries(plane_mask, mode="inner")  # inside the lesion, so the outline covers no background
    rgb[:, edge] = np.asarray(OUTLINE_RGB, np.float32)[:, None]
    return write_png(plane_scan.with_array(rgb), path)


__all__ = [
    "OUTLINE_RGB",
    "check_mask_header",
    "peek_shape",
    "read_mask",
    "write_mask_nifti",
    "write_mask_outline_png",
    "write_mask_png",
    "write_seg",
]
