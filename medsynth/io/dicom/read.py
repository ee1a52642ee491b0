"""Reading DICOM series into ``Scan`` objects: pixels, intensities and the geometry of a series.

The rules (modality transform, MONOCHROME1, colour, default geometry of projection images,
frame stacks) are those of the package docstring (``medsynth.io.dicom``); the series come
from ``medsynth.io.dicom.headers.discover``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from medsynth.errors import InputError, MedsynthError
from medsynth.io.dicom.geometry import (
    DEFAULT_COL_COS,
    DEFAULT_ROW_COS,
    Plane,
    orientation_from_letters,
    parse_orientation,
    parse_spacing,
    plane_affine,
    sort_slices,
    volume_affine,
)
from medsynth.io.dicom.headers import (
    MALFORMED,
    SeriesGroup,
    discover,
    first_item,
    frame_group,
    n_frames,
    orientation_value,
    quiet,
    read_full,
    sop_name,
)
from medsynth.io.scan import Scan

_RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"


# ---------------------------------------------------------------------------------------
# Reading: pixels and intensities
# ---------------------------------------------------------------------------------------


def _decode(ds: Dataset, where: str) -> np.ndarray:
    """All frames as ``(F, H, W, S)`` in the stored dtype (YBR converted to RGB by pydicom)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{where}: has no pixel data although it declares an image ({sop_name(ds)})")
    try:
        arr = ds.pixel_array
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    # Any decoder failure is a property of the file. BaseException: the Rust-based plugins
    # (pylibjpeg-rle) report corrupt data as a pyo3 PanicException, which is not an Exception.
    except BaseException as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = UID(str(ts)).name if ts else "unknown transfer syntax"
        raise InputError(
            f"{where}: cannot decode the pixel data ({ts_name}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    frames = n_frames(ds)
    color = int(ds.get("SamplesPerPixel", 1) or 1) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if not color:
        arr = arr[..., None]
    if frames == 1:
        arr = arr[None]
    return np.asarray(arr)


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) for ``frame``: enhanced functional groups first, then the top level."""
    item = frame_group(ds, frame, "PixelValueTransformationSequence")
    src = item if item is not None and "RescaleSlope" in item else ds
    try:
        slope = float(src.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(src.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise InputError(
            f"RescaleSlope/RescaleIntercept are {src.get('RescaleSlope')!r}/{src.get('RescaleIntercept')!r}; "
            "expected numbers"
        ) from None
    if str(ds.get("SOPClassUID", "")) == _RT_DOSE and "DoseGridScaling" in ds:
        slope *= float(ds.DoseGridScaling)
    return slope, intercept


def _to_modality_units(raw: np.ndarray, ds: Dataset, frame: int, where: str) -> np.ndarray:
    """One frame ``(H, W, S)`` -> float32 ``(S, H, W)`` in modality units."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if raw.shape[-1] == 3:
        return np.moveaxis(raw.astype(np.float32), -1, 0)
    mono = raw[..., 0]
    try:
        if ds.get("ModalityLUTSequence"):
            from pydicom.pixels import apply_modality_lut

            lut = lambda a: apply_modality_lut(a, ds).astype(np.float64)  # noqa: E731
        else:
            slope, intercept = _rescale(ds, frame)
            lut = lambda a: a.astype(np.float64) * slope + intercept  # noqa: E731
        out = lut(mono)
        if photometric == "MONOCHROME1" and np.issubdtype(mono.dtype, np.integer):
            bits = int(ds.get("BitsStored", mono.dtype.itemsize * 8))
            signed = int(ds.get("PixelRepresentation", 0)) == 1
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            ends = lut(np.array([lo, hi], dtype=np.int64))
            out = float(ends.min() + ends.max()) - out
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return out.astype(np.float32)[None]


def _metadata(ds: Dataset, kind: str) -> dict[str, Any]:
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


def _modality(ds: Dataset) -> str:
    return str(ds.get("Modality") or "OT").strip().upper() or "OT"


# ---------------------------------------------------------------------------------------
# Reading: geometry of a group
# ---------------------------------------------------------------------------------------


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


def _projection_plane(ds: Dataset, where: str) -> Plane:
    """Default geometry of a 2D image without ImageOrientationPatient (see module docstring)."""
    spacing = (1.0, 1.0)
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if ds.get(kw):
            spacing = parse_spacing(ds.get(kw), where, kw)
            break
    letters = orientation_from_letters(ds.get("PatientOrientation"))
    row, col = letters if letters is not None else (DEFAULT_ROW_COS, DEFAULT_COL_COS)
    return Plane(row, col, spacing[0], spacing[1])


def _position(value: Any, where: str) -> np.ndarray:
    try:
        pos = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        pos = np.zeros(0)
    if pos.shape != (3,) or not np.all(np.isfinite(pos)):
        raise InputError(f"{where}: ImagePositionPatient is {value!r}; expected three finite numbers (mm)")
    return pos


def _scan_2d(ds: Dataset, pixels: np.ndarray, where: str, frame: int = 0) -> Scan:
    """A single image: plane geometry from the header if it has one, else the default."""
    plane_pos = frame_group(ds, frame, "PlanePositionSequence")
    ipp = ds.get("ImagePositionPatient")
    if plane_pos is not None and "ImagePositionPatient" in plane_pos:
        ipp = plane_pos.ImagePositionPatient
    if orientation_value(ds) is not None:
        plane = _slice_plane(ds, where, frame)
        origin = _position(ipp, where) if ipp is not None else np.zeros(3)
        kind = "slice"
    else:
        plane, origin, kind = _projection_plane(ds, where), np.zeros(3), "projection"
    affine = plane_affine(plane, _thickness(ds, frame) or 1.0, origin)
    return Scan(pixels, affine, _modality(ds), _metadata(ds, kind))


def _check_same_plane(planes: list[Plane], names: list[str], where: str) -> None:
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


def _load_single_frames(group: SeriesGroup) -> Scan:
    where = group.label
    headers = group.headers
    if len(headers) == 1:  # the label names the file already
        ds = read_full(headers[0].path)
        return _scan_2d(ds, _frames_in_units(ds, where)[0], where)
    # Geometry first, from the headers: a broken series fails before any pixel is decoded.
    planes = [_slice_plane(h.ds, f"{where}: {h.path.name}") for h in headers]
    _check_same_plane(planes, [h.path.name for h in headers], where)
    positions = np.stack([_position(h.ds.ImagePositionPatient, f"{where}: {h.path.name}") for h in headers])
    order, spacing = sort_slices(positions, planes[0], where)
    slices = []
    for i in order:
        ds = read_full(headers[i].path)
        slices.append(_frames_in_units(ds, f"{where}: {headers[i].path.name}")[0])
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"{where}: slices decode to different shapes {sorted(shapes)}; expected one matrix size")
    first = headers[order[0]].ds
    affine = volume_affine(planes[0], spacing, positions[order[0]])
    return Scan(np.stack(slices, axis=1), affine, _modality(first), _metadata(first, "volume"))


def _frames_in_units(ds: Dataset, where: str) -> list[np.ndarray]:
    raw = _decode(ds, where)
    return [_to_modality_units(raw[f], ds, f, where) for f in range(raw.shape[0])]


def _multi_frame_positions(ds: Dataset, n: int, where: str) -> tuple[np.ndarray, Plane] | None:
    """Per-frame positions of a multi-frame file, or None if its frames have no positions."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        items = [frame_group(ds, f, "PlanePositionSequence") for f in range(n)]
        if any(it is None or "ImagePositionPatient" not in it for it in items):
            return None
        planes = [_slice_plane(ds, f"{where}: frame {f + 1}", f) for f in range(n)]
        _check_same_plane(planes, [f"frame {f + 1}" for f in range(n)], where)
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


def _load_multi_frame(group: SeriesGroup) -> Scan:
    where = group.label
    ds = read_full(group.headers[0].path)
    frames = _frames_in_units(ds, where)
    n = len(frames)
    if n == 1:
        return _scan_2d(ds, frames[0], where)
    geometry = _multi_frame_positions(ds, n, where)
    if geometry is None:
        plane = _slice_plane(ds, where) if orientation_value(ds) is not None else _projection_plane(ds, where)
        step = _float(ds, "SpacingBetweenSlices") or _thickness(ds) or 1.0
        origin = ds.get("ImagePositionPatient")
        affine = volume_affine(plane, step, _position(origin, where) if origin is not None else np.zeros(3))
        return Scan(np.stack(frames, axis=1), affine, _modality(ds), _metadata(ds, "frame-stack"))
    positions, plane = geometry
    order, spacing = sort_slices(positions, plane, where)
    affine = volume_affine(plane, spacing, positions[order[0]])
    array = np.stack([frames[i] for i in order], axis=1)
    return Scan(array, affine, _modality(ds), _metadata(ds, "multi-frame"))


def _load_group(group: SeriesGroup) -> Scan:
    try:
        return _load_multi_frame(group) if group.multi_frame else _load_single_frames(group)
    except MALFORMED as exc:  # chained, so that --debug still shows where it came from
        raise InputError(f"{group.label}: unusable DICOM attribute value ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------
# Reading: public API
# ---------------------------------------------------------------------------------------


def read_dicom_series(path: str | Path) -> list[tuple[str, Scan | MedsynthError]]:
    """Every series under a file, folder or tree, each read on its own.

    Args:
        path: a DICOM file, a folder, or a tree of folders.

    Returns:
        ``(label, scan_or_error)`` per series, e.g. ``("scans/ct [series 3, 40 files]", Scan)``.
        Labels name folders and series numbers, never UIDs or patient names. A series that
        cannot be read yields its ``InputError`` instead of stopping the others; so does a
        file whose header is unreadable (labelled with its path).

    Raises:
        InputError: if ``path`` does not exist or holds no DICOM image at all.

    Example:
        >>> for label, item in read_dicom_series("/data/dicom"):  # doctest: +SKIP
        ...     print(label, item)
    """
    with quiet():
        groups, broken = discover(path)
        results: list[tuple[str, Scan | MedsynthError]] = [(label, err) for label, err in broken]
        for group in groups:
            try:
                results.append((group.label, _load_group(group)))
            except MedsynthError as exc:
                results.append((group.label, exc))
    return results


def read_dicom(path: str | Path) -> Scan:
    """The one series held by a DICOM file, folder or tree.

    Raises:
        InputError: if the path holds no series, more than one (the message lists them), an
            unreadable file, or a series that fails validation (missing or duplicate slices,
            uneven spacing, undecodable pixels...).

    Example:
        >>> scan = read_dicom("/data/ct/series3")  # doctest: +SKIP
        >>> scan.modality, scan.shape, scan.spacing  # doctest: +SKIP
        ('CT', (40, 512, 512), (2.5, 0.7, 0.7))
    """
    with quiet():
        return _read_one(path)


def _read_one(path: str | Path) -> Scan:
    groups, broken = discover(path)
    if broken:
        _, first_err = broken[0]
        more = f" (and {len(broken) - 1} more unreadable files)" if len(broken) > 1 else ""
        raise InputError(f"{first_err}{more}; remove or replace the file and retry")
    if len(groups) > 1:
        listing = "; ".join(g.label for g in groups)
        raise InputError(
            f"{path}: holds {len(groups)} series, expected exactly one: {listing}. "
            "Pass one series folder, or use read_dicom_series to read them all"
        )
    return _load_group(groups[0])
