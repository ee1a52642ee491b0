"""DICOM series in and out: ``read_dicom``, ``read_dicom_series``, ``write_dicom``.

Reading (any vendor, any transfer syntax pydicom's pixel plugins decode):

* A path may be one file, a folder or a tree. Files whose name starts with ``.`` and
  files that are not DICOM are ignored in folders; DICOMDIR indexes and files without
  pixel data (SR, RT plans, presentation states...) are skipped when images are present.
* Files are grouped into series by SeriesInstanceUID, ImageOrientationPatient (rounded to
  3 decimals) and matrix size. A multi-frame file is a series of its own, and so is a
  single-frame file without ImagePositionPatient (a radiograph, a secondary capture).
* Slices are sorted along the slice normal (see ``dicom_geometry``); missing, duplicate,
  unevenly spaced or sheared slices raise ``InputError``.
* Pixel values go through the modality transform (Modality LUT, or Rescale Slope/Intercept,
  per frame for enhanced multi-frame files; DoseGridScaling for RT Dose), so CT is in HU.
  MONOCHROME1 is inverted within its value range so that bright means dense everywhere.
* Colour (RGB, YBR_*, PALETTE COLOR) is kept as three RGB channels: ``(3, H, W)`` or
  ``(3, D, H, W)``; YBR is converted to RGB and palettes are expanded by pydicom.
* 2D images without ImagePositionPatient/ImageOrientationPatient get a default geometry:
  spacing from PixelSpacing, else ImagerPixelSpacing, else NominalScannedPixelSpacing,
  else 1 mm; orientation from PatientOrientation, else rows to the patient's left and
  columns to the feet (a PA radiograph); origin 0; thickness SliceThickness, else 1 mm.
* A multi-frame file without per-frame positions (cine, simple multi-frame SC) is read as
  a frame stack: a 3D scan whose first axis is the frame index, spaced SpacingBetweenSlices,
  else SliceThickness, else 1 mm (``series_kind`` "frame-stack": that axis may be time).

Writing: one file per slice, CT or MR Image Storage for CT/MR scans and Secondary Capture
(ConversionType SYN) otherwise, each marked synthetic (see ``write_dicom``).
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.errors
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import format_number_as_ds

from medsynth.errors import InputError, MedsynthError, file_error
from medsynth.io.dicom_geometry import (
    DEFAULT_COL_COS,
    DEFAULT_ROW_COS,
    Plane,
    decompose_affine,
    orientation_from_letters,
    parse_orientation,
    parse_spacing,
    plane_affine,
    sort_slices,
    volume_affine,
)
from medsynth.io.files import walk_files
from medsynth.io.scan import Scan

__all__ = ["is_dicom_file", "read_dicom", "read_dicom_series", "write_dicom"]

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
_SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")
_RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"

# What pydicom raises when a malformed element value (unknown VR, odd length, a bad IS/DS
# number, a wrong value count) is first used: it decodes values lazily, on first access,
# so every use of header values sits under a handler for these.
_MALFORMED = (
    ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, NotImplementedError,
    pydicom.errors.BytesLengthException,
)

# ---------------------------------------------------------------------------------------
# Reading: discovery and grouping (headers only)
# ---------------------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom's warnings about vendor quirks (odd VRs, padding); errors still raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def is_dicom_file(path: str | Path) -> bool:
    """Cheap check: a 'DICM' marker at byte 128, or a parseable header without preamble.

    Example:
        >>> is_dicom_file(Path("scan.nii.gz"))  # doctest: +SKIP
        False
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    # Files without preamble (ACR-NEMA style, some old exports) start directly with a tag
    # of group 0x0002 or 0x0008 in either byte order; only those are worth parsing.
    if len(head) < 8 or not {int.from_bytes(head[:2], o) for o in ("little", "big")} & {2, 8}:
        return False
    try:
        with _quiet():
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return any(k in ds for k in ("SOPClassUID", "Modality", "Rows"))
    except Exception:  # any parse failure means "not DICOM" for this yes/no question
        return False


def peek_dicom_dims(path: Path) -> int:
    """2 or 3, from headers only (no pixel data), following what ``read_dicom`` does.

    A multi-frame image is 3D, an image without ImagePositionPatient (radiograph, secondary
    capture) is 2D, and a folder with two or more positioned images is a 3D series.
    DICOMDIR indexes and other files without Rows (no image) are passed over.
    """
    candidates = [path] if path.is_file() else (f for f in walk_files(path) if is_dicom_file(f))
    positioned = 0
    for file in candidates:
        header = _peek_header(file)
        if "Rows" not in header:
            continue
        try:
            frames = int(header.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError) as exc:
            raise file_error(file, f"NumberOfFrames {header.NumberOfFrames!r} is not a number") from exc
        if frames > 1:
            return 3
        if "ImagePositionPatient" not in header:
            return 2
        positioned += 1
        if positioned == 2:
            return 3
    if positioned == 0:
        raise file_error(path, "holds no DICOM image")
    return 2


def _peek_header(path: Path) -> Dataset:
    """The three attributes ``peek_dicom_dims`` needs, read leniently (``force``)."""
    try:
        return pydicom.dcmread(
            path, stop_before_pixels=True, force=True,
            specific_tags=["Rows", "NumberOfFrames", "ImagePositionPatient"],
        )
    except Exception as exc:  # pydicom raises many types for malformed headers
        raise file_error(path, f"not a readable DICOM header ({exc})") from exc


@dataclass
class _Header:
    path: Path
    ds: Dataset  # header only (stop_before_pixels)
    kind: str  # "image" | "DICOMDIR" | "without pixel data"


@dataclass
class _Group:
    headers: list[_Header]
    folder: Path
    series_number: str
    multi_frame: bool
    label: str = ""
    plane_hint: str = ""
    shape_hint: str = ""


def _dcmread(path: Path, **kwargs: Any) -> Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:  # no preamble: is_dicom_file already vouched for it
        return pydicom.dcmread(path, force=True, **kwargs)


def _read_header(path: Path) -> Dataset:
    """Header of a DICOM file (no pixels); ``InputError`` if it cannot be parsed."""
    try:
        ds = _dcmread(path, stop_before_pixels=True)
        declared = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    except Exception as exc:
        raise InputError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    # pydicom returns what it could parse of a truncated file without complaint; an image
    # SOP class without SOPClassUID/Rows in its dataset can only be a cut or damaged file.
    complete = all(k in ds for k in ("SOPClassUID", "Rows", "Columns"))
    if declared and "Image Storage" in UID(declared).name and not complete:
        raise InputError(
            f"{path}: unreadable DICOM header (declares {UID(declared).name} but the header ends "
            f"after {len(ds)} elements, before SOPClassUID/Rows/Columns: the file is truncated or damaged)"
        )
    return ds


def _read_full(path: Path) -> Dataset:
    try:
        return _dcmread(path)
    except Exception as exc:
        raise InputError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def _classify(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    if (meta is not None and meta.get("MediaStorageSOPClassUID") == _DICOMDIR_SOP_CLASS) or (
        "DirectoryRecordSequence" in ds
    ):
        return "DICOMDIR"
    if "Rows" not in ds or "Columns" not in ds:
        return "without pixel data"
    return "image"


def _list_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"{root}: no such file or folder; expected a DICOM file, folder or tree")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _first_item(seq: Any) -> Dataset | None:
    return seq[0] if seq else None


def _frame_group(ds: Dataset, frame: int, name: str) -> Dataset | None:
    """First item of functional group ``name`` for ``frame``: per-frame, else shared."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per and frame < len(per) and per[frame].get(name):
        return per[frame].get(name)[0]
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    if shared is not None and shared.get(name):
        return shared.get(name)[0]
    return None


def _orientation_value(ds: Dataset) -> Any:
    """ImageOrientationPatient wherever the IOD puts it (top level, functional groups, NM detector)."""
    if "ImageOrientationPatient" in ds:
        return ds.ImageOrientationPatient
    item = _frame_group(ds, 0, "PlaneOrientationSequence")
    if item is not None and "ImageOrientationPatient" in item:
        return item.ImageOrientationPatient
    det = _first_item(ds.get("DetectorInformationSequence"))
    if det is not None and "ImageOrientationPatient" in det:
        return det.ImageOrientationPatient
    return None


def _n_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _plane_name(iop: Any) -> str:
    try:
        row, col = parse_orientation(iop, "")
    except InputError:
        return "unknown plane"
    axis = int(np.argmax(np.abs(np.cross(row, col))))
    names = ("sagittal", "coronal", "axial")
    return names[axis] if np.max(np.abs(np.cross(row, col))) > 0.99 else f"oblique ~{names[axis]}"


def _group_key(h: _Header) -> tuple:
    ds = h.ds
    # A multi-frame file, or a single image without a position, cannot be stacked with
    # other files: each is its own series.
    if _n_frames(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds or "ImagePositionPatient" not in ds:
        return ("file", str(h.path))
    iop = _orientation_value(ds)
    try:
        iop_key = tuple(round(float(v), 3) + 0.0 for v in iop) if iop is not None else None
    except (TypeError, ValueError):
        iop_key = ("invalid", str(iop))
    series_uid = str(ds.get("SeriesInstanceUID") or f"no-uid:{h.path.parent}")
    return ("series", series_uid, iop_key, int(ds.Rows), int(ds.Columns))


def _label_groups(groups: list[_Group]) -> None:
    """Human labels without UIDs: '<folder> [series 3, 40 files]', or the file for one file.

    Groups that would share a label (one folder, one series number, several orientations
    or matrix sizes) get the matrix and plane, then a part number, appended.
    """
    for g in groups:
        n = len(g.headers)
        if g.multi_frame:
            frames = _n_frames(g.headers[0].ds)
            g.label = f"{g.headers[0].path} [series {g.series_number}, 1 file, {frames} frames]"
        elif n == 1:
            g.label = f"{g.headers[0].path} [series {g.series_number}, 1 file]"
        else:
            g.label = f"{g.folder} [series {g.series_number}, {n} files]"
    counts = Counter(g.label for g in groups)
    for g in groups:
        if counts[g.label] > 1:
            g.label = g.label[:-1] + f", {g.shape_hint} {g.plane_hint}]"
    counts = Counter(g.label for g in groups)
    seen: Counter[str] = Counter()
    for g in groups:
        if counts[g.label] > 1:
            seen[g.label] += 1
            g.label = g.label[:-1] + f", part {seen[g.label]}]"


def _discover(path: str | Path) -> tuple[list[_Group], list[tuple[str, InputError]]]:
    """Headers of every DICOM file under ``path``, grouped into series.

    Returns the groups (labelled, in a stable order) and the files whose header could not
    be read, as ``(path, error)``.
    """
    root = Path(path)
    files = _list_files(root)
    if root.is_file() and not is_dicom_file(root):
        raise InputError(f"{root}: not a DICOM file (no 'DICM' marker and no parseable DICOM header)")
    headers: list[_Header] = []
    broken: list[tuple[str, InputError]] = []
    for f in files:
        if root.is_dir() and not is_dicom_file(f):
            continue
        try:
            ds = _read_header(f)
        except InputError as exc:
            broken.append((str(f), exc))
            continue
        headers.append(_Header(f, ds, _classify(ds)))
    images = [h for h in headers if h.kind == "image"]
    if not images:
        if broken:
            return [], broken
        if root.is_file():
            kind = headers[0].kind
            what = "a DICOMDIR index" if kind == "DICOMDIR" else f"a DICOM file {kind} ({_sop_name(headers[0].ds)})"
            raise InputError(f"{root}: is {what}; expected an image: pass the file or folder that holds the images")
        skipped = Counter(h.kind for h in headers)
        skipped["not DICOM"] = len(files) - len(headers)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()) if n)
        raise InputError(
            f"{root}: no DICOM images found ({len(files)} files looked at: {detail}); "
            "expected a folder of DICOM image files"
        )
    by_key: dict[tuple, list[_Header]] = {}
    facts: dict[tuple, dict[str, Any]] = {}
    for h in images:
        try:
            key, info = _group_key(h), _group_facts(h)
        except _MALFORMED as exc:
            broken.append((str(h.path), InputError(f"{h.path}: unusable DICOM header ({type(exc).__name__}: {exc})")))
            continue
        by_key.setdefault(key, []).append(h)
        facts.setdefault(key, info)
    groups = [
        _Group(headers=members, folder=_folder_of(members), **facts[key]) for key, members in by_key.items()
    ]
    groups.sort(key=lambda g: (str(g.folder), _series_sort_key(g.series_number), str(g.headers[0].path)))
    _label_groups(groups)
    return groups, broken


def _group_facts(h: _Header) -> dict[str, Any]:
    """What a group's label needs, from its first header."""
    ds = h.ds
    return {
        "series_number": str(ds.get("SeriesNumber", "") or "?"),
        "multi_frame": _n_frames(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds,
        "plane_hint": _plane_name(_orientation_value(ds)),
        "shape_hint": f"{int(ds.Rows)}x{int(ds.Columns)}",
    }


def _folder_of(members: list[_Header]) -> Path:
    folders = {m.path.parent for m in members}
    return members[0].path.parent if len(folders) == 1 else Path(os.path.commonpath([str(f) for f in folders]))


def _series_sort_key(number: str) -> tuple[int, str]:
    try:
        return (int(number), number)
    except ValueError:
        return (1 << 30, number)


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return UID(str(uid)).name if uid else "unknown SOP class"


# ---------------------------------------------------------------------------------------
# Reading: pixels and intensities
# ---------------------------------------------------------------------------------------


def _decode(ds: Dataset, where: str) -> np.ndarray:
    """All frames as ``(F, H, W, S)`` in the stored dtype (YBR converted to RGB by pydicom)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{where}: has no pixel data although it declares an image ({_sop_name(ds)})")
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
    frames = _n_frames(ds)
    color = int(ds.get("SamplesPerPixel", 1) or 1) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if not color:
        arr = arr[..., None]
    if frames == 1:
        arr = arr[None]
    return np.asarray(arr)


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) for ``frame``: enhanced functional groups first, then the top level."""
    item = _frame_group(ds, frame, "PixelValueTransformationSequence")
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
    for key, kw in (("photometric", "PhotometricInterpretation"), ("body_part", "BodyPartExamined"),
                    ("manufacturer_model", "ManufacturerModelName")):
        if ds.get(kw):
            meta[key] = str(ds.get(kw))
    if ds.get("BitsStored"):
        meta["bits_stored"] = int(ds.BitsStored)
    voi = _frame_group(ds, 0, "FrameVOILUTSequence") or ds
    for key, kw in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        value = voi.get(kw)
        if value is not None and value != "":
            first = value[0] if isinstance(value, (list, tuple, MultiValue)) else value
            try:
                meta[key] = float(first)
            except (TypeError, ValueError):
                pass  # an unusable display hint is simply not carried over
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
    orient = _frame_group(ds, frame, "PlaneOrientationSequence")
    if orient is not None and "ImageOrientationPatient" in orient:
        iop = orient.ImageOrientationPatient
    else:
        iop = _orientation_value(ds)
    row, col = parse_orientation(iop, where)
    measures = _frame_group(ds, frame, "PixelMeasuresSequence")
    src = measures if measures is not None and "PixelSpacing" in measures else ds
    if "PixelSpacing" not in src:
        raise InputError(
            f"{where}: PixelSpacing is missing; expected it with ImageOrientationPatient (Image Plane module)"
        )
    ps = parse_spacing(src.PixelSpacing, where)
    return Plane(row, col, ps[0], ps[1])


def _thickness(ds: Dataset, frame: int = 0) -> float | None:
    measures = _frame_group(ds, frame, "PixelMeasuresSequence")
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
    plane_pos = _frame_group(ds, frame, "PlanePositionSequence")
    ipp = ds.get("ImagePositionPatient")
    if plane_pos is not None and "ImagePositionPatient" in plane_pos:
        ipp = plane_pos.ImagePositionPatient
    if _orientation_value(ds) is not None:
        plane = _slice_plane(ds, where, frame)
        origin = _position(ipp, where) if ipp is not None else np.zeros(3)
        kind = "slice"
    else:
        plane, origin, kind = _projection_plane(ds, where), np.zeros(3), "projection"
    affine = plane_affine(plane, _thickness(ds, frame) or 1.0, origin)
    return Scan(pixels, affine, _modality(ds), _metadata(ds, kind))


def _check_same_plane(planes: list[Plane], names: list[str], where: str) -> None:
    ref = planes[0]
    for plane, name in zip(planes[1:], names[1:]):
        same_dir = np.allclose(np.r_[plane.row_cos, plane.col_cos], np.r_[ref.row_cos, ref.col_cos], atol=1e-3)
        same_ps = np.allclose([plane.row_spacing, plane.col_spacing], [ref.row_spacing, ref.col_spacing], rtol=1e-3)
        if not (same_dir and same_ps):
            raise InputError(
                f"{where}: {name} has orientation {np.r_[plane.row_cos, plane.col_cos].round(4).tolist()} and "
                f"spacing {[plane.row_spacing, plane.col_spacing]}, the first slice "
                f"{np.r_[ref.row_cos, ref.col_cos].round(4).tolist()} and {[ref.row_spacing, ref.col_spacing]}; "
                "expected one geometry for all slices of a series"
            )


def _load_single_frames(group: _Group) -> Scan:
    where = group.label
    headers = group.headers
    if len(headers) == 1:  # the label names the file already
        ds = _read_full(headers[0].path)
        return _scan_2d(ds, _frames_in_units(ds, where)[0], where)
    # Geometry first, from the headers: a broken series fails before any pixel is decoded.
    planes = [_slice_plane(h.ds, f"{where}: {h.path.name}") for h in headers]
    _check_same_plane(planes, [h.path.name for h in headers], where)
    positions = np.stack([_position(h.ds.ImagePositionPatient, f"{where}: {h.path.name}") for h in headers])
    order, spacing = sort_slices(positions, planes[0], where)
    slices = []
    for i in order:
        ds = _read_full(headers[i].path)
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
        items = [_frame_group(ds, f, "PlanePositionSequence") for f in range(n)]
        if any(it is None or "ImagePositionPatient" not in it for it in items):
            return None
        planes = [_slice_plane(ds, f"{where}: frame {f + 1}", f) for f in range(n)]
        _check_same_plane(planes, [f"frame {f + 1}" for f in range(n)], where)
        positions = [_position(it.ImagePositionPatient, f"{where}: frame {f + 1}") for f, it in enumerate(items)]
        return np.stack(positions), planes[0]
    detector = _first_item(ds.get("DetectorInformationSequence"))  # NM puts the plane here
    ipp = ds.get("ImagePositionPatient") or (detector.get("ImagePositionPatient") if detector is not None else None)
    if _orientation_value(ds) is None or ipp is None:
        return None
    plane = _slice_plane(ds, where)
    origin = _position(ipp, where)
    if ds.get("GridFrameOffsetVector"):
        offsets = np.asarray([float(v) for v in ds.GridFrameOffsetVector], dtype=np.float64)
        if offsets.shape != (n,):
            raise InputError(
                f"{where}: GridFrameOffsetVector has {offsets.size} values for {n} frames; expected one per frame"
            )
        # Offsets are relative to the first frame whether or not the first value is 0.
        offsets = offsets - offsets[0]
    elif _float(ds, "SpacingBetweenSlices"):
        offsets = np.arange(n) * _float(ds, "SpacingBetweenSlices")
    else:
        return None
    return origin[None, :] + offsets[:, None] * plane.normal[None, :], plane


def _load_multi_frame(group: _Group) -> Scan:
    where = group.label
    ds = _read_full(group.headers[0].path)
    frames = _frames_in_units(ds, where)
    n = len(frames)
    if n == 1:
        return _scan_2d(ds, frames[0], where)
    geometry = _multi_frame_positions(ds, n, where)
    if geometry is None:
        plane = _slice_plane(ds, where) if _orientation_value(ds) is not None else _projection_plane(ds, where)
        step = _float(ds, "SpacingBetweenSlices") or _thickness(ds) or 1.0
        origin = ds.get("ImagePositionPatient")
        affine = volume_affine(plane, step, _position(origin, where) if origin is not None else np.zeros(3))
        return Scan(np.stack(frames, axis=1), affine, _modality(ds), _metadata(ds, "frame-stack"))
    positions, plane = geometry
    order, spacing = sort_slices(positions, plane, where)
    affine = volume_affine(plane, spacing, positions[order[0]])
    array = np.stack([frames[i] for i in order], axis=1)
    return Scan(array, affine, _modality(ds), _metadata(ds, "multi-frame"))


def _load_group(group: _Group) -> Scan:
    try:
        return _load_multi_frame(group) if group.multi_frame else _load_single_frames(group)
    except _MALFORMED as exc:  # chained, so that --debug still shows where it came from
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
    with _quiet():
        groups, broken = _discover(path)
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
    with _quiet():
        return _read_one(path)


def _read_one(path: str | Path) -> Scan:
    groups, broken = _discover(path)
    if broken:
        first_path, first_err = broken[0]
        more = f" (and {len(broken) - 1} more unreadable files)" if len(broken) > 1 else ""
        raise InputError(f"{first_err}{more}; remove or replace the file and retry")
    if len(groups) > 1:
        listing = "; ".join(g.label for g in groups)
        raise InputError(
            f"{path}: holds {len(groups)} series, expected exactly one: {listing}. "
            "Pass one series folder, or use read_dicom_series to read them all"
        )
    return _load_group(groups[0])


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

# dcm2niix guesses the vendor from the first two letters of Manufacturer (SI, GE, HI, ME,
# PH, TO, CA, CP, UI, BR, MR, HY in nii_dicom.cpp dcmStrManufacturer) and then applies
# vendor-specific fixes; "medsynth" would read as Mediso (ME). "SY" matches no vendor.
MANUFACTURER = "Synthetic (medsynth)"
MODEL_NAME = "medsynth"
DEIDENTIFICATION_METHOD = "synthetic image, no patient"
# A converted real scan (``medsynth convert``) is not synthetic: it says what was done instead.
CONVERTED_DEIDENTIFICATION_METHOD = "converted by medsynth; no identifying attribute carried over"
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,55}$")
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")
_SOP_CLASS_CHOICES = ("auto", "sc")
_UID_NAMESPACE = uuid.UUID("6f1c0a8e-2b1d-5c4e-9a57-6d6564737974")  # fixed: medsynth's UIDs


@dataclass(frozen=True)
class _Encoding:
    """How float modality values become stored integers: value = stored * slope + intercept."""

    stored: np.ndarray
    slope: str  # DS strings: the exact values the file carries and the quantisation used
    intercept: str
    signed: bool


def _ds(value: float) -> str:
    return format_number_as_ds(float(value) + 0.0)


def _encode_mono(values: np.ndarray, modality: str) -> _Encoding:
    """Quantise to 16 bits, losing at most half a stored step (``slope / 2``).

    CT: int16 with slope 1 and intercept 0 (whole HU) when the values fit, as CT readers
    expect. Others: integers that fit are stored as they are (slope 1); fractional values
    use the whole 16-bit range (uint16 if non-negative, else int16) with intercept 0.
    """
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(values == np.round(values)))
    if modality == "CT" and lo >= -32768 and hi <= 32767:
        return _Encoding(np.round(values).astype(np.int16), "1", "0", True)
    if integral and lo >= 0 and hi <= 65535:
        return _Encoding(values.astype(np.uint16), "1", "0", False)
    if integral and lo >= -32768 and hi <= 32767:
        return _Encoding(values.astype(np.int16), "1", "0", True)
    signed = lo < 0
    limit = 32767 if signed else 65535
    peak = max(abs(lo), abs(hi))
    # One step of headroom so that the DS-rounded slope cannot push the peak past the limit.
    slope = _ds(peak / (limit - 1)) if peak > 0 else "1"
    stored = np.round(values / float(slope))
    return _Encoding(stored.astype(np.int16 if signed else np.uint16), slope, "0", signed)


def _window(scan: Scan, values: np.ndarray) -> tuple[str, str]:
    center, width = scan.metadata.get("window_center"), scan.metadata.get("window_width")
    if center is None or width is None or float(width) <= 0:
        # A strided sample of at most ~1M voxels: the window is a display hint, and exact
        # percentiles of a 300x512x512 volume cost seconds.
        lo, hi = np.percentile(values.ravel()[:: max(1, values.size // 1_000_000)], [0.5, 99.5])
        center, width = (lo + hi) / 2, max(hi - lo, 1.0)
    return _ds(center), _ds(width)


def _check_write_args(scan: Scan, case_id: str, series_description: str, sop_class: str) -> str:
    """Validate arguments and return the IOD to write: "CT", "MR" or "SC"."""
    if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
        raise InputError(
            f"case_id {case_id!r}: expected 1-56 characters of letters, digits, '.', '_' or '-' "
            "(it becomes PatientID 'SYN-<case_id>'), starting with a letter or digit"
        )
    if len(series_description) > 64 or any(c in series_description for c in "\\\r\n\t\x0c\x1b"):
        raise InputError(
            f"series_description {series_description!r}: expected at most 64 characters "
            "without backslash or control characters (DICOM LO)"
        )
    if sop_class not in _SOP_CLASS_CHOICES:
        raise InputError(f"sop_class {sop_class!r}: expected one of {', '.join(_SOP_CLASS_CHOICES)}")
    if not _CS.match(scan.modality):
        raise InputError(f"scan modality {scan.modality!r}: expected a DICOM modality code such as CT, MR, CR, OT")
    if scan.array.shape[0] not in (1, 3):
        raise InputError(
            f"scan has {scan.array.shape[0]} channels; DICOM images have 1 (grayscale) or 3 (RGB): "
            "write one channel at a time"
        )
    if not np.all(np.isfinite(scan.array)):
        raise InputError("scan array holds NaN or infinite values; expected finite intensities")
    if scan.array.shape[0] == 3:
        lo, hi = float(scan.array.min()), float(scan.array.max())
        if lo < -0.5 or hi >= 255.5:
            raise InputError(
                f"3-channel scan has values {lo:g}..{hi:g}; RGB DICOM is 8-bit: expected 0..255"
            )
        return "SC"
    if sop_class == "sc" or scan.modality not in ("CT", "MR"):
        return "SC"
    return scan.modality


def _uid(*parts: str) -> str:
    """A '2.25.<UUID>' UID (ISO/IEC 9834-8) from a name-based UUID of ``parts``: same parts, same UID.

    pydicom's ``generate_uid(prefix=None)`` ignores ``entropy_srcs`` and draws a random
    UUID, and a prefix would need an organisation root; a UUID5 gives both properties.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def _uids(case_id: str, series_description: str, iod: str, namespace: str) -> tuple[str, str, str]:
    """Study, series and frame-of-reference UIDs, deterministic from the namespace and case identity."""
    study = _uid("study", namespace, case_id)
    series = _uid("series", namespace, case_id, series_description, iod)
    frame_of_reference = _uid("frame-of-reference", namespace, case_id)
    return study, series, frame_of_reference


def _base_dataset(
    *,
    iod: str,
    modality: str,
    case_id: str,
    series_description: str,
    uids: tuple[str, str, str],
    index: int,
    synthetic: bool,
) -> Dataset:
    """Patient/study/series/equipment/SOP common modules via highdicom, plus the synthetic marks."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medsynth import __version__

    study_uid, series_uid, _ = uids
    sop_class_uid = {"CT": _CT_IMAGE, "MR": _MR_IMAGE, "SC": _SC_IMAGE}[iod]
    software = f"medsynth {__version__}"
    ds = hd.SOPClass(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        series_number=1,
        sop_instance_uid=_uid("instance", series_uid, str(index)),
        sop_class_uid=sop_class_uid,
        instance_number=index + 1,
        modality=modality,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        patient_id=f"SYN-{case_id}" if synthetic else f"ANON-{case_id}",
        patient_name=f"SYNTHETIC^{case_id}" if synthetic else f"ANONYMOUS^{case_id}",
        series_description=series_description,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software,
        specific_character_set="ISO_IR 192" if not series_description.isascii() else None,
    )
    # highdicom stamps creation/content date-time with "now"; drop them (all optional here)
    # so that regenerating a case writes byte-identical files.
    for kw in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        if kw in ds:
            delattr(ds, kw)
    ds.SyntheticData = "YES" if synthetic else "NO"
    ds.BurnedInAnnotation = "NO"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD if synthetic else CONVERTED_DEIDENTIFICATION_METHOD
    purpose, description = (
        (codes.DCM.SynthesizingEquipment, "image synthesized by a generative model; no patient was imaged")
        if synthetic
        else (codes.DCM.ProcessingEquipment, "converted from another file format; identifiers not carried over")
    )
    ds.ContributingEquipmentSequence = [
        hd.ContributingEquipment(
            MANUFACTURER,
            purpose,
            manufacturer_model_name=MODEL_NAME,
            software_versions=software,
            contribution_description=description,
        )
    ]
    return ds


def _add_image(
    ds: Dataset,
    *,
    iod: str,
    scan: Scan,
    frame: np.ndarray,
    enc: _Encoding | None,
    window: tuple[str, str] | None,
    synthetic: bool,
) -> None:
    """Image pixel, image type and the IOD-specific module attributes."""
    third = {"CT": "AXIAL", "MR": "OTHER", "SC": "OTHER"}[iod]
    ds.ImageType = ["DERIVED", "SECONDARY", third]
    ds.Rows, ds.Columns = int(frame.shape[0]), int(frame.shape[1])
    if enc is None:  # RGB, 8 bits
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if enc.signed else 0
        ds.PixelData = np.ascontiguousarray(frame.astype("<i2" if enc.signed else "<u2")).tobytes()
        ds.RescaleIntercept, ds.RescaleSlope = enc.intercept, enc.slope
        if iod != "MR":  # RescaleType: CT Image (type 3) and Modality LUT module (type 1C)
            ds.RescaleType = "HU" if scan.modality == "CT" else "US"
        ds.WindowCenter, ds.WindowWidth = window
    if iod == "CT":
        ds.KVP = None
        ds.AcquisitionNumber = None
    elif iod == "MR":
        ds.ScanningSequence = "RM"  # research mode: no real pulse sequence produced this image
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = None
        ds.MRAcquisitionType = "3D" if scan.spatial_dims == 3 else "2D"
        ds.RepetitionTime = None
        ds.EchoTime = None
        ds.EchoTrainLength = None
    else:
        ds.ConversionType = "SYN" if synthetic else "WSD"  # synthetic image / workstation


def _patient_orientation(plane: Plane) -> list[str]:
    """Dominant anatomical letters of the row and column directions (General Image module)."""
    letters = []
    for v in (plane.row_cos, plane.col_cos):
        axis = int(np.argmax(np.abs(v)))
        letters.append(("LR", "PA", "HF")[axis][0 if v[axis] > 0 else 1])
    return letters


def write_dicom(
    scan: Scan,
    out_dir: str | Path,
    *,
    case_id: str,
    series_description: str = "medsynth synthetic",
    sop_class: str = "auto",
    synthetic: bool = True,
    uid_namespace: str = "",
) -> list[Path]:
    """Write ``scan`` as a DICOM series, one file per slice, into ``out_dir``.

    CT and MR scans become CT/MR Image Storage (2D and 3D); other modalities, RGB scans and
    ``sop_class="sc"`` become Secondary Capture (ConversionType SYN). Every file carries
    SyntheticData YES, ImageType DERIVED\\SECONDARY, a Contributing Equipment item
    "Synthesizing Equipment" (medsynth and its version), PatientIdentityRemoved YES, the full
    plane geometry (also in Secondary Captures, as standard extended attributes), and UIDs
    derived from ``case_id``, so rewriting a case gives the same UIDs and bytes.

    Args:
        scan: the image; grayscale (1 channel) or RGB (3 channels, values 0..255).
        out_dir: the series folder; built under a temporary name and renamed when complete.
            An existing folder holding only ``.dcm`` files (an earlier write) is replaced;
            any other existing non-empty folder is refused.
        case_id: the synthetic case's identity (becomes PatientID ``SYN-<case_id>`` and
            PatientName ``SYNTHETIC^<case_id>``); make it unique across datasets.
        series_description: SeriesDescription (at most 64 characters).
        sop_class: ``"auto"`` or ``"sc"`` (force Secondary Capture).
        synthetic: ``False`` for a converted real scan (``medsynth convert``): SyntheticData
            NO, an anonymous patient ``ANONYMOUS^<case_id>``, "Processing Equipment" as the
            contribution, ConversionType WSD; the de-identification marks stay.
        uid_namespace: mixed into every UID, so equal case ids in different datasets (say,
            two protocols) never share UIDs; the protocol runner passes the protocol's hash.

    Returns:
        The written file paths in slice order (``00001.dcm``, ...).

    Example:
        >>> write_dicom(scan, "out/dicom/case-0001", case_id="case-0001")  # doctest: +SKIP
    """
    from medsynth.io.atomic import atomic_path

    iod = _check_write_args(scan, case_id, series_description, sop_class)
    out = Path(out_dir)
    if out.exists():
        if out.is_dir():
            others = [p.name for p in out.iterdir() if not (p.is_file() and p.suffix == ".dcm")]
        else:
            others = [out.name]
        if others:
            raise InputError(
                f"{out}: exists and holds {others[:3]}; expected a new folder or an earlier series "
                "(only .dcm files): choose another output folder"
            )
    geometry = decompose_affine(scan.affine, scan.shape, where=f"scan for case {case_id}")
    values = scan.array[0]
    enc = None if scan.array.shape[0] == 3 else _encode_mono(values, scan.modality)
    window = None if enc is None else _window(scan, values)
    if enc is None:
        # (3, [D,] H, W) -> ([D,] H, W, 3) 8-bit RGB
        frames_all = np.round(np.moveaxis(scan.array, 0, -1)).astype(np.uint8)
    else:
        frames_all = enc.stored
    frames = list(frames_all) if scan.spatial_dims == 3 else [frames_all]
    uids = _uids(case_id, series_description, iod, uid_namespace)
    plane = geometry.plane
    normal = plane.normal
    names = [f"{i + 1:05d}.dcm" for i in range(len(frames))]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, frame in enumerate(frames):
            ds = _base_dataset(
                iod=iod, modality=scan.modality, case_id=case_id,
                series_description=series_description, uids=uids, index=i, synthetic=synthetic,
            )
            ds.FrameOfReferenceUID = uids[2]
            ds.PositionReferenceIndicator = None
            body_part = str(scan.metadata.get("body_part", "")).strip().upper()
            if _CS.match(body_part):
                ds.BodyPartExamined = body_part
            else:
                # Laterality is type 2C (paired body parts); the body part is unknown, so is it.
                ds.Laterality = None
            if iod != "SC":
                ds.PatientPosition = None
            else:
                ds.PatientOrientation = _patient_orientation(plane)
            pos = geometry.positions[i]
            ds.ImagePositionPatient = [_ds(v) for v in pos]
            ds.ImageOrientationPatient = [_ds(v) for v in np.r_[plane.row_cos, plane.col_cos]]
            ds.PixelSpacing = [_ds(plane.row_spacing), _ds(plane.col_spacing)]
            ds.SliceThickness = _ds(geometry.thickness)
            if scan.spatial_dims == 3:
                ds.SpacingBetweenSlices = _ds(geometry.thickness)
            ds.SliceLocation = _ds(float(pos @ normal))
            _add_image(ds, iod=iod, scan=scan, frame=frame, enc=enc, window=window, synthetic=synthetic)
            ds.save_as(tmp / names[i], enforce_file_format=True)
    return [out / name for name in names]
