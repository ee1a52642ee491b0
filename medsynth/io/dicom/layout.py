"""The layout of a DICOM series from its headers alone: geometry, shape, channels, slice order.

``group_layout`` answers everything about a series (``SeriesGroup`` from ``headers.discover``)
that does not need its pixels: the affine, the spatial shape, the number of channels, the
order in which files or frames are stacked, the modality and metadata, and whether the
geometry was assumed. ``medsynth.io.dicom.read`` decodes the pixels into that layout;
``medsynth inspect`` (``describe_dicom``) prints it without decoding anything. Both use this
one function, so what inspect prints is what reading gives.

The geometry rules are those of the package docstring (``medsynth.io.dicom``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from medsynth.errors import InputError
from medsynth.io.dicom.geometry import (
    DEFAULT_COL_COS,
    DEFAULT_ROW_COS,
    GEOMETRY_ASSUMED_NOTE,
    Plane,
    orientation_from_letters,
    parse_orientation,
    parse_spacing,
    plane_affine,
    sort_slices,
    volume_affine,
)
from medsynth.io.dicom.headers import SeriesGroup, first_item, frame_group, n_frames, orientation_value
from medsynth.io.scan import ScanInfo


@dataclass(frozen=True)
class Layout:
    """Where a series' pixels go, from its headers.

    Args:
        affine: the ``Scan`` affine (index -> RAS+ mm).
        shape: the spatial shape, ``(rows, cols)`` or ``(slices, rows, cols)``.
        channels: 3 for colour (RGB, YBR_*, PALETTE COLOR), else 1.
        order: the file (single-frame series) or frame (multi-frame file) indices in array
            order along the slice axis; ``[0]`` for a 2D image.
        header: the header whose modality and metadata the scan takes (the first slice's).
        kind: ``series_kind`` metadata: volume, multi-frame, frame-stack, slice, projection.
        guessed: None, or what was assumed about the geometry (``Scan.geometry_guessed``).
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    channels: int
    order: list[int]
    header: Dataset
    kind: str
    guessed: str | None

    def info(self, modality: str | None = None) -> ScanInfo:
        """The ``ScanInfo`` of the series; ``modality`` is used when the header has none."""
        return ScanInfo(
            self.shape,
            self.channels,
            self.affine,
            scan_modality(self.header, modality),
            scan_metadata(self.header, self.kind),
            self.guessed,
        )


def scan_modality(ds: Dataset, fallback: str | None = None) -> str:
    """The Modality attribute, else ``fallback`` (e.g. ``--modality``), else ``"OT"``."""
    return str(ds.get("Modality") or "").strip().upper() or (fallback or "OT").strip().upper() or "OT"


def scan_metadata(ds: Dataset, kind: str) -> dict[str, Any]:
    """Only non-identifying keys (``scan.SAFE_METADATA_KEYS``)."""
    meta: dict[str, Any] = {"source_format": "dicom", "series_kind": kind}
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts:
        meta["transfer_syntax"] = UID(str(ts)).name
    for key, kw in (
        ("photometric", "PhotometricInterpretation"),
        ("body_part", "BodyPartExamined"),
        ("manufacturer_model", "ManufacturerModelName"),
    ):
        if ds.get(kw):
            meta[key] = str(ds.get(kw))
    if ds.get("BitsStored"):
        meta["bits_stored"] = int(ds.BitsStored)
    voi = frame_group(ds, 0, "FrameVOILUTSequence") or ds
    for key, kw in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        value = voi.get(kw)
        if value is not None and value != "":
            first = value[0] if isinstance(value, (list, tuple, MultiValue)) else value
            # An unusable display hint is simply not carried over.
            with contextlib.suppress(TypeError, ValueError):
                meta[key] = float(first)
    return meta


def channels_of(ds: Dataset) -> int:
    """3 for colour images (kept as RGB channels), else 1: as the pixel decoder returns them."""
    color = int(ds.get("SamplesPerPixel", 1) or 1) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    return 3 if color else 1


def _float(ds: Dataset | None, kw: str) -> float | None:
    if ds is None:
        return None
    value = ds.get(kw)
    try:
        v = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return v if v is not None and np.isfinite(v) and v > 0 else None


def _slice_plane(ds: Dataset, where: str, frame: int = 0) -> Plane:
    """In-plane geometry of an image that has ImageOrientationPatient (top level or per frame)."""
    orient = frame_group(ds, frame, "PlaneOrientationSequence")
    if orient is not None and "ImageOrientationPatient" in orient:
        iop = orient.ImageOrientationPatient
    else:
        iop = orientation_value(ds)
    row, col = parse_orientation(iop, where)
    measures = frame_group(ds, frame, "PixelMeasuresSequence")
    src = measures if measures is not None and "PixelSpacing" in measures else ds
    if "PixelSpacing" not in src:
        raise InputError(
            f"{where}: PixelSpacing is missing; expected it with ImageOrientationPatient (Image Plane module)"
        )
    ps = parse_spacing(src.PixelSpacing, where)
    return Plane(row, col, ps[0], ps[1])


def _thickness(ds: Dataset, frame: int = 0) -> float | None:
    measures = frame_group(ds, frame, "PixelMeasuresSequence")
    return _float(measures, "SliceThickness") or _float(ds, "SliceThickness")


def _projection_plane(ds: Dataset, where: str) -> tuple[Plane, str]:
    """Default geometry of an image without ImageOrientationPatient, and what was assumed."""
    spacing, spacing_from = (1.0, 1.0), "1 mm pixels"
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if ds.get(kw):
            spacing, spacing_from = parse_spacing(ds.get(kw), where, kw), f"spacing from {kw}"
            break
    letters = orientation_from_letters(ds.get("PatientOrientation"))
    if letters is not None:
        (row, col), orientation_from = letters, "orientation from PatientOrientation"
    else:
        row, col = DEFAULT_ROW_COS, DEFAULT_COL_COS
        orientation_from = "rows to the patient's left, columns to the feet"
    guess = f"no ImagePositionPatient/ImageOrientationPatient: {orientation_from}, {spacing_from}, origin 0"
    return Plane(row, col, spacing[0], spacing[1]), guess


def _position(value: Any, where: str) -> np.ndarray:
    try:
        pos = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        pos = np.zeros(0)
    if pos.shape != (3,) or not np.all(np.isfinite(pos)):
        raise InputError(f"{where}: ImagePositionPatient is {value!r}; expected three finite numbers (mm)")
    return pos


def _plane_and_origin(ds: Dataset, where: str, frame: int = 0) -> tuple[Plane, np.ndarray, str | None]:
    """The plane and origin of one image: from its header, else the default; and what was assumed."""
    plane_pos = frame_group(ds, frame, "PlanePositionSequence")
    ipp = ds.get("ImagePositionPatient")
    if plane_pos is not None and "ImagePositionPatient" in plane_pos:
        ipp = plane_pos.ImagePositionPatient
    if orientation_value(ds) is None:
        plane, guess = _projection_plane(ds, where)
        return plane, np.zeros(3), guess
    plane = _slice_plane(ds, where, frame)
    if ipp is None:
        return plane, np.zeros(3), "no ImagePositionPatient: origin 0"
    return plane, _position(ipp, where), None


def _layout_2d(ds: Dataset, where: str, frame: int = 0) -> Layout:
    """A single image: plane geometry from the header if it has one, else the default."""
    plane, origin, guess = _plane_and_origin(ds, where, frame)
    kind = "projection" if orientation_value(ds) is None else "slice"
    affine = plane_affine(plane, _thickness(ds, frame) or 1.0, origin)
    return Layout(affine, (int(ds.Rows), int(ds.Columns)), channels_of(ds), [0], ds, kind, guess)


def check_same_plane(planes: list[Plane], names: list[str], where: str) -> None:
    """``InputError`` unless every slice has the first one's orientation and pixel spacing."""
    ref = planes[0]
    for plane, name in zip(planes[1:], names[1:], strict=True):
        same_dir = np.allclose(np.r_[plane.row_cos, plane.col_cos], np.r_[ref.row_cos, ref.col_cos], atol=1e-3)
        same_ps = np.allclose([plane.row_spacing, plane.col_spacing], [ref.row_spacing, ref.col_spacing], rtol=1e-3)
        if not (same_dir and same_ps):
            raise InputError(
                f"{where}: {name} has orientation {np.r_[plane.row_cos, plane.col_cos].round(4).tolist()} and "
                f"spacing {[plane.row_spacing, plane.col_spacing]}, the first slice "
                f"{np.r_[ref.row_cos, ref.col_cos].round(4).tolist()} and {[ref.row_spacing, ref.col_spacing]}; "
                "expected one geometry for all slices of a series"
            )


def _single_frames_layout(group: SeriesGroup) -> Layout:
    where = group.label
    headers = group.headers
    if len(headers) == 1:  # the label names the file already
        return _layout_2d(headers[0].ds, where)
    planes = [_slice_plane(h.ds, f"{where}: {h.path.name}") for h in headers]
    check_same_plane(planes, [h.path.name for h in headers], where)
    positions = np.stack([_position(h.ds.ImagePositionPatient, f"{where}: {h.path.name}") for h in headers])
    order, spacing = sort_slices(positions, planes[0], where)
    first = headers[order[0]].ds
    affine = volume_affine(planes[0], spacing, positions[order[0]])
    shape = (len(headers), int(first.Rows), int(first.Columns))
    return Layout(affine, shape, channels_of(first), [int(i) for i in order], first, "volume", None)


def _multi_frame_positions(ds: Dataset, n: int, where: str) -> tuple[np.ndarray, Plane] | None:
    """Per-frame positions of a multi-frame file, or None if its frames have no positions."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        items = [frame_group(ds, f, "PlanePositionSequence") for f in range(n)]
        if any(it is None or "ImagePositionPatient" not in it for it in items):
            return None
        planes = [_slice_plane(ds, f"{where}: frame {f + 1}", f) for f in range(n)]
        check_same_plane(planes, [f"frame {f + 1}" for f in range(n)], where)
        positions = [
            _position(it.ImagePositionPatient, f"{where}: frame {f + 1}")
            for f, it in enumerate(items)
            if it is not None  # all are, checked above; this tells the type checker
        ]
        return np.stack(positions), planes[0]
    detector = first_item(ds.get("DetectorInformationSequence"))  # NM puts the plane here
    ipp = ds.get("ImagePositionPatient") or (detector.get("ImagePositionPatient") if detector is not None else None)
    if orientation_value(ds) is None or ipp is None:
        return None
    plane = _slice_plane(ds, where)
    origin = _position(ipp, where)
    offsets: np.ndarray
    if ds.get("GridFrameOffsetVector"):
        offsets = np.asarray([float(v) for v in ds.GridFrameOffsetVector], dtype=np.float64)
        if offsets.shape != (n,):
            raise InputError(
                f"{where}: GridFrameOffsetVector has {offsets.size} values for {n} frames; expected one per frame"
            )
        # Offsets are relative to the first frame whether or not the first value is 0.
        offsets = offsets - offsets[0]
    elif between := _float(ds, "SpacingBetweenSlices"):
        offsets = np.arange(n) * between
    else:
        return None
    return origin[None, :] + offsets[:, None] * plane.normal[None, :], plane


def _multi_frame_layout(group: SeriesGroup) -> Layout:
    where = group.label
    ds = group.headers[0].ds
    # NumberOfFrames is what pydicom's decoder splits the pixel data by, so the header's
    # count is the decoded count (a file with fewer bytes fails to decode when read).
    n = n_frames(ds)
    if n == 1:
        return _layout_2d(ds, where)
    in_plane = (int(ds.Rows), int(ds.Columns))
    geometry = _multi_frame_positions(ds, n, where)
    if geometry is None:
        plane_guess: str | None = None
        if orientation_value(ds) is not None:
            plane = _slice_plane(ds, where)
        else:
            plane, plane_guess = _projection_plane(ds, where)
        ipp = ds.get("ImagePositionPatient")
        origin = _position(ipp, where) if ipp is not None else np.zeros(3)
        if ipp is None and plane_guess is None:
            plane_guess = "no ImagePositionPatient: origin 0"
        between, thickness = _float(ds, "SpacingBetweenSlices"), _thickness(ds)
        step = between or thickness or 1.0
        step_from = "SpacingBetweenSlices" if between else "SliceThickness" if thickness else "1 mm (assumed)"
        frames_guess = f"frames have no positions: frame axis (maybe time) spaced by {step_from}"
        guess = f"{plane_guess}; {frames_guess}" if plane_guess else frames_guess
        affine = volume_affine(plane, step, origin)
        return Layout(affine, (n, *in_plane), channels_of(ds), list(range(n)), ds, "frame-stack", guess)
    positions, plane = geometry
    order, spacing = sort_slices(positions, plane, where)
    affine = volume_affine(plane, spacing, positions[order[0]])
    return Layout(affine, (n, *in_plane), channels_of(ds), [int(i) for i in order], ds, "multi-frame", None)


def group_layout(group: SeriesGroup) -> Layout:
    """The layout of one series from its headers (no pixel data is read).

    Raises:
        InputError: the series fails a geometry check (missing, duplicate, uneven or sheared
            slices, a damaged orientation...). Malformed values raise the pydicom errors of
            ``headers.MALFORMED``; callers turn them into one-line ``InputError``s.
    """
    layout = _multi_frame_layout(group) if group.multi_frame else _single_frames_layout(group)
    if layout.guessed is None:
        # A file medsynth wrote from a guessed geometry states it in full, and says in
        # ImageComments that it was assumed (``write_dicom``): it stays a guess.
        comment = str(layout.header.get("ImageComments") or "")
        if comment.startswith(f"{GEOMETRY_ASSUMED_NOTE}: "):
            layout = replace(layout, guessed=comment[len(GEOMETRY_ASSUMED_NOTE) + 2 :])
    return layout
