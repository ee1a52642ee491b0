"""Reading DICOM series into ``Scan`` objects: pixels, intensities and the geometry of a series.

The rules (modality transform, MONOCHROME1, colour, default geometry of projection images,
frame stacks) are those of the package docstring (``medsynth.io.dicom``); the series come
from ``medsynth.io.dicom.headers.discover`` and their geometry from
``medsynth.io.dicom.layout.group_layout``, checked before any pixel is decoded.
``describe_dicom``/``describe_dicom_series`` stop there: the same facts, no pixel data read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medsynth.errors import InputError, MedsynthError
from medsynth.io.dicom.headers import (
    MALFORMED,
    SeriesGroup,
    discover,
    frame_group,
    n_frames,
    quiet,
    read_full,
    sop_name,
)
from medsynth.io.dicom.layout import Layout, channels_of, group_layout, scan_metadata, scan_modality
from medsynth.io.scan import Scan, ScanInfo

_T = TypeVar("_T")

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
    if channels_of(ds) == 1:
        arr = arr[..., None]
    if n_frames(ds) == 1:
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


def _frames_in_units(ds: Dataset, where: str) -> list[np.ndarray]:
    raw = _decode(ds, where)
    return [_to_modality_units(raw[f], ds, f, where) for f in range(raw.shape[0])]


def _pixels(group: SeriesGroup, layout: Layout) -> np.ndarray:
    """The decoded pixels in modality units, ``(C, H, W)`` or ``(C, D, H, W)`` in layout order."""
    where = group.label
    if not group.multi_frame and len(group.headers) > 1:
        slices = []
        for i in layout.order:
            path = group.headers[i].path
            slices.append(_frames_in_units(read_full(path), f"{where}: {path.name}")[0])
        shapes = {s.shape for s in slices}
        if len(shapes) > 1:
            raise InputError(f"{where}: slices decode to different shapes {sorted(shapes)}; expected one matrix size")
        return np.stack(slices, axis=1)
    frames = _frames_in_units(read_full(group.headers[0].path), where)
    if len(layout.shape) == 2:
        return frames[0]
    if len(frames) != layout.shape[0]:
        raise InputError(f"{where}: the pixel data holds {len(frames)} frames; NumberOfFrames says {layout.shape[0]}")
    return np.stack([frames[i] for i in layout.order], axis=1)


def _load_group(group: SeriesGroup, modality: str | None = None) -> Scan:
    try:
        # Geometry first, from the headers: a broken series fails before any pixel is decoded.
        layout = group_layout(group)
        array = _pixels(group, layout)
        meta = scan_metadata(layout.header, layout.kind)
        return Scan(array, layout.affine, scan_modality(layout.header, modality), meta, layout.guessed)
    except MALFORMED as exc:  # chained, so that --debug still shows where it came from
        raise _unusable(group, exc) from exc


def _describe_group(group: SeriesGroup, modality: str | None = None) -> ScanInfo:
    try:
        return group_layout(group).info(modality)
    except MALFORMED as exc:
        raise _unusable(group, exc) from exc


def _unusable(group: SeriesGroup, exc: Exception) -> InputError:
    return InputError(f"{group.label}: unusable DICOM attribute value ({type(exc).__name__}: {exc})")


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
    return _per_group(path, _load_group)


def describe_dicom_series(path: str | Path) -> list[tuple[str, ScanInfo | MedsynthError]]:
    """``read_dicom_series`` from headers only: the same labels, facts and geometry errors.

    No pixel data is read (headers are parsed with ``stop_before_pixels``), so this is fast
    and small on any series; pixel data that would fail to decode is not noticed.
    """
    return _per_group(path, _describe_group)


def _per_group(path: str | Path, one: Callable[[SeriesGroup], _T]) -> list[tuple[str, _T | MedsynthError]]:
    with quiet():
        groups, broken = discover(path)
        results: list[tuple[str, _T | MedsynthError]] = [(label, err) for label, err in broken]
        for group in groups:
            try:
                results.append((group.label, one(group)))
            except MedsynthError as exc:
                results.append((group.label, exc))
    return results


def read_dicom(path: str | Path, modality: str | None = None) -> Scan:
    """The one series held by a DICOM file, folder or tree.

    Args:
        path: a DICOM file, folder or tree holding one series.
        modality: used only when the files carry no Modality attribute; default ``"OT"``.

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
        return _load_group(_one_group(path), modality)


def describe_dicom(path: str | Path, modality: str | None = None) -> ScanInfo:
    """``read_dicom`` from headers only (see ``describe_dicom_series``)."""
    with quiet():
        return _describe_group(_one_group(path), modality)


def _one_group(path: str | Path) -> SeriesGroup:
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
    return groups[0]
