"""DICOM geometry: slice sorting and validation, and the Scan affine <-> DICOM plane attributes.

Everything here works in DICOM's LPS+ patient frame and converts to RAS+ (the ``Scan``
frame, see ``medsynth.io.scan``) only in ``volume_affine``/``plane_affine``, and back in
``decompose_affine``. No pydicom here: these are plain NumPy functions, tested on their own.

Sorting rule: slices are ordered by the projection of ImagePositionPatient on the slice
normal ``cross(IOP[0:3], IOP[3:6])``, never by InstanceNumber. A series whose steps are not
all equal is refused (``InputError``) rather than averaged:

* duplicate position: a step below ``DUPLICATE_MM``;
* missing slice(s): a step of at least ``GAP_FACTOR`` times the median step;
* uneven spacing: a step that differs from the median by more than ``UNEVEN_REL`` of it
  (and by more than ``UNEVEN_ABS_MM``, the rounding of positions written as decimal strings);
* shear (gantry tilt): slice origins that drift in-plane from the line along the normal by
  more than a tenth of a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsynth.errors import InputError
from medsynth.io.scan import lps_to_ras, ras_to_lps

DUPLICATE_MM = 1e-3
GAP_FACTOR = 1.5
UNEVEN_REL = 0.01
UNEVEN_ABS_MM = 2e-3
# Tolerance on the direction cosines of a DICOM header (vendors write 5-6 decimals).
IOP_TOL = 1e-3
# Tolerance (cosine or sine of the angle error, ~0.006 degrees) on the orthogonality of a
# Scan's affine columns when writing: float32 NIfTI headers carry ~1e-7 error; anything
# above this is a real shear, refused rather than projected away.
SHEAR_TOL = 1e-4

# LPS unit vectors of the anatomical letters used by PatientOrientation (0020,0020).
_LETTER_LPS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}
# Default plane of a projection image without orientation: rows run to the patient's left,
# columns to the feet, i.e. the coronal view of a PA radiograph as it is normally displayed.
DEFAULT_ROW_COS = np.array(_LETTER_LPS["L"])
DEFAULT_COL_COS = np.array(_LETTER_LPS["F"])

# How written files say that their plane attributes were assumed (``Scan.geometry_guessed``):
# ImageComments "<note>: <reason>". The writer puts it there; the reader takes it back, so a
# guess stays a guess through a DICOM round trip.
GEOMETRY_ASSUMED_NOTE = "geometry assumed by medsynth, not measured"


@dataclass(frozen=True)
class Plane:
    """In-plane geometry shared by the slices of one series (LPS frame).

    Args:
        row_cos: unit vector along a row (direction of increasing column index), IOP[0:3].
        col_cos: unit vector along a column (direction of increasing row index), IOP[3:6].
        row_spacing: distance between rows in mm, PixelSpacing[0].
        col_spacing: distance between columns in mm, PixelSpacing[1].
    """

    row_cos: np.ndarray
    col_cos: np.ndarray
    row_spacing: float
    col_spacing: float

    @property
    def normal(self) -> np.ndarray:
        """The slice normal, ``cross(row_cos, col_cos)``."""
        return np.cross(self.row_cos, self.col_cos)


def parse_orientation(iop: Sequence[float] | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate ImageOrientationPatient and return (row_cos, col_cos) as unit vectors.

    Raises ``InputError`` naming ``where`` if the six values are missing, not unit length
    or not orthogonal (beyond the rounding vendors use when writing them).
    """
    try:
        values = np.asarray([float(v) for v in iop], dtype=np.float64) if iop is not None else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (6,) or not np.all(np.isfinite(values)):
        raise InputError(
            f"{where}: ImageOrientationPatient is {list(iop) if iop is not None else 'missing'}; "
            "expected six finite direction cosines"
        )
    row, col = values[:3], values[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > IOP_TOL or abs(nc - 1) > IOP_TOL or abs(float(row @ col)) > IOP_TOL:
        raise InputError(
            f"{where}: ImageOrientationPatient {values.tolist()} is not two orthogonal unit "
            "vectors; the header is damaged"
        )
    return row / nr, col / nc


def parse_spacing(values: Sequence[float] | None, where: str, name: str = "PixelSpacing") -> tuple[float, float]:
    """Validate a (row, column) spacing pair in mm."""
    try:
        pair = tuple(float(v) for v in values) if values is not None else ()
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise InputError(
            f"{where}: {name} is {list(values) if values is not None else 'missing'}; "
            "expected two positive numbers (mm)"
        )
    return pair[0], pair[1]


def orientation_from_letters(codes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(row_cos, col_cos) from PatientOrientation, e.g. ``["L", "F"]``; None if absent or unusable.

    Combined letters ("LF") give the normalised sum of their directions; a pair that is not
    orthogonal (e.g. "L" and "LF") is unusable and gives None.
    """
    if codes is None or len(codes) != 2:
        return None
    vectors = []
    for code in codes:
        code = str(code).strip().upper()
        if not code or any(c not in _LETTER_LPS for c in code):
            return None
        v = np.sum([_LETTER_LPS[c] for c in code], axis=0)
        vectors.append(v / np.linalg.norm(v))
    row, col = vectors
    if abs(float(row @ col)) > IOP_TOL:
        return None
    return row, col


def sort_slices(positions: np.ndarray, plane: Plane, where: str) -> tuple[np.ndarray, float]:
    """Order slices along the normal and check that they form one evenly spaced stack.

    Args:
        positions: ``(n, 3)`` ImagePositionPatient of each slice (LPS, mm), ``n >= 2``.
        plane: the shared in-plane geometry.
        where: series label used in error messages.

    Returns:
        ``(order, spacing)``: indices that sort the slices by increasing position along the
        normal, and the slice spacing in mm (mean step, all steps being equal within 1%).

    Raises:
        InputError: duplicate positions, missing slices, uneven spacing or sheared stacks.
    """
    positions = np.asarray(positions, dtype=np.float64)
    normal = plane.normal
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    # Positions are reported with two decimals: enough to find them in a viewer.
    pos = lambda k: f"{along[k]:.2f}"  # noqa: E731

    dup = np.flatnonzero(steps < DUPLICATE_MM)
    if dup.size:
        k = int(dup[0])
        raise InputError(
            f"{where}: slices share a position ({dup.size} duplicate(s), the first at {pos(k)} mm "
            f"along the slice normal: sorted slices {k + 1} and {k + 2}); "
            "expected one slice per position. The folder may mix echoes, time points or "
            "repeated acquisitions: put each in its own folder"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps >= GAP_FACTOR * median)
    if gaps.size:
        k = int(gaps[0])
        missing = round(steps[k] / median) - 1
        raise InputError(
            f"{where}: missing slice(s): a gap of {steps[k]:.3f} mm between positions {pos(k)} "
            f"and {pos(k + 1)} mm along the slice normal, where the other steps are "
            f"{median:.3f} mm (about {max(missing, 1)} slice(s) missing, {gaps.size} gap(s) in all); "
            "expected a complete series: export it again with all its files"
        )
    deviation = np.abs(steps - median)
    uneven = np.flatnonzero((deviation > UNEVEN_REL * median) & (deviation > UNEVEN_ABS_MM))
    if uneven.size:
        k = int(uneven[0])
        raise InputError(
            f"{where}: uneven slice spacing: the step between positions {pos(k)} and {pos(k + 1)} mm "
            f"is {steps[k]:.4f} mm, the median step is {median:.4f} mm ({uneven.size} step(s) "
            f"differ by more than {UNEVEN_REL:.0%}); expected evenly spaced slices: "
            "resample the series to a regular grid first"
        )
    sorted_pos = positions[order]
    offsets = sorted_pos - sorted_pos[0]
    drift = offsets - np.outer(offsets @ normal, normal)
    max_drift = float(np.linalg.norm(drift, axis=1).max())
    if max_drift > 0.1 * min(plane.row_spacing, plane.col_spacing):
        extent = float(along[-1] - along[0])
        tilt = float(np.degrees(np.arctan2(max_drift, extent)))
        raise InputError(
            f"{where}: the slices are sheared: their origins drift {max_drift:.3f} mm in-plane over "
            f"{extent:.1f} mm (a gantry tilt of about {tilt:.2f} degrees); expected slices stacked "
            "along their normal: correct the tilt first (e.g. dcm2niix, which resamples tilted CT)"
        )
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    return order, spacing


def volume_affine(plane: Plane, slice_spacing: float, origin: Sequence[float] | np.ndarray) -> np.ndarray:
    """RAS affine of a volume with array axes (slice, row, column).

    Column 0: normal * slice spacing (direction of increasing sorted index); column 1:
    ``col_cos * PixelSpacing[0]``; column 2: ``row_cos * PixelSpacing[1]``; translation: the
    ImagePositionPatient of the first sorted slice. Built in LPS, returned in RAS.
    """
    lps = np.eye(4)
    lps[:3, 0] = plane.normal * slice_spacing
    lps[:3, 1] = plane.col_cos * plane.row_spacing
    lps[:3, 2] = plane.row_cos * plane.col_spacing
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return lps_to_ras(lps)


def plane_affine(plane: Plane, thickness: float, origin: Sequence[float] | np.ndarray) -> np.ndarray:
    """RAS affine of a 2D image with array axes (row, column).

    Column 0: ``col_cos * PixelSpacing[0]``; column 1: ``row_cos * PixelSpacing[1]``;
    column 2: normal * slice thickness; translation: ImagePositionPatient.
    """
    lps = np.eye(4)
    lps[:3, 0] = plane.col_cos * plane.row_spacing
    lps[:3, 1] = plane.row_cos * plane.col_spacing
    lps[:3, 2] = plane.normal * thickness
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return lps_to_ras(lps)


@dataclass(frozen=True)
class SliceGeometry:
    """What a writer needs to place each slice of a Scan (LPS frame).

    ``positions[i]`` is the ImagePositionPatient of slice ``i`` (array index order);
    ``thickness`` is the slice spacing for a volume and the slice thickness for a 2D image.
    """

    plane: Plane
    positions: np.ndarray
    thickness: float


def decompose_affine(affine: np.ndarray, shape: Sequence[int], where: str = "scan") -> SliceGeometry:
    """Split a Scan's RAS affine into DICOM plane attributes, the inverse of the two builders.

    Args:
        affine: the Scan's 4x4 index -> RAS matrix.
        shape: spatial shape, ``(rows, cols)`` or ``(slices, rows, cols)``.
        where: name used in error messages.

    Raises:
        InputError: if the in-plane axes are not orthogonal or the slice axis is not along
        their normal (a sheared grid, which DICOM slices cannot describe).
    """
    lps = ras_to_lps(affine)
    cols = lps[:3, :3]
    if len(shape) == 3:
        slice_vec, row_step, col_step = cols[:, 0], cols[:, 1], cols[:, 2]
    else:
        row_step, col_step, slice_vec = cols[:, 0], cols[:, 1], cols[:, 2]
    row_spacing, col_spacing = float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))
    row_cos = col_step / col_spacing  # along a row = direction of increasing column index
    col_cos = row_step / row_spacing
    thickness = float(np.linalg.norm(slice_vec))
    slice_dir = slice_vec / thickness
    if abs(float(row_cos @ col_cos)) > SHEAR_TOL:
        angle = float(np.degrees(np.arccos(np.clip(row_cos @ col_cos, -1, 1))))
        raise InputError(
            f"{where}: the in-plane axes of the affine meet at {angle:.3f} degrees; DICOM needs "
            "orthogonal rows and columns: resample the scan to an orthogonal grid first"
        )
    # Remove the (sub-SHEAR_TOL) float rounding so that the written IOP is exactly orthonormal.
    col_cos = col_cos - (col_cos @ row_cos) * row_cos
    col_cos /= np.linalg.norm(col_cos)
    plane = Plane(row_cos, col_cos, row_spacing, col_spacing)
    off_normal = float(np.linalg.norm(np.cross(slice_dir, plane.normal)))  # sine of the angle
    if off_normal > SHEAR_TOL:
        angle = float(np.degrees(np.arcsin(min(off_normal, 1.0))))
        raise InputError(
            f"{where}: the slice axis of the affine is {angle:.3f} degrees off the slice normal "
            "(a sheared grid); DICOM slices must stack along their normal: resample first"
        )
    origin = lps[:3, 3]
    if len(shape) == 3:
        step = plane.normal * float(slice_dir @ plane.normal) * thickness
        positions = origin[None, :] + np.arange(shape[0])[:, None] * step[None, :]
    else:
        positions = origin[None, :]
    return SliceGeometry(plane, positions, thickness)
