"""DICOM files and their headers: recognising DICOM, reading headers, grouping them into series.

Headers only, no pixel data: ``discover`` lists the files under a path, reads each header
and groups the images into series (``SeriesGroup``) with human labels that name folders and
series numbers, never UIDs; ``medsynth.io.dicom.read`` then decodes each group. The
grouping rules are those of the package docstring (``medsynth.io.dicom``).
"""

from __future__ import annotations

import os
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
from pydicom.uid import UID

from medsynth.errors import InputError, file_error
from medsynth.io.dicom.geometry import parse_orientation
from medsynth.io.files import walk_files

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# What pydicom raises when a malformed element value (unknown VR, odd length, a bad IS/DS
# number, a wrong value count) is first used: it decodes values lazily, on first access,
# so every use of header values sits under a handler for these.
MALFORMED = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,
    pydicom.errors.BytesLengthException,
)


@contextmanager
def quiet() -> Iterator[None]:
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
        with quiet():
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
            path,
            stop_before_pixels=True,
            force=True,
            specific_tags=["Rows", "NumberOfFrames", "ImagePositionPatient"],
        )
    except Exception as exc:  # pydicom raises many types for malformed headers
        raise file_error(path, f"not a readable DICOM header ({exc})") from exc


@dataclass
class Header:
    """One DICOM file found by ``discover``, with its header."""

    path: Path
    ds: Dataset  # header only (stop_before_pixels)
    kind: str  # "image" | "DICOMDIR" | "without pixel data"


@dataclass
class SeriesGroup:
    """The files of one series (or one multi-frame or unpositioned file), in discovery order.

    ``label`` names the folder and series number (``_label_groups``); the hints tell apart
    groups that would otherwise share a label.
    """

    headers: list[Header]
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


def read_full(path: Path) -> Dataset:
    """The whole file, pixel data included; ``InputError`` if it cannot be parsed."""
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


def first_item(seq: Any) -> Dataset | None:
    """The first item of a sequence attribute, or None when it is absent or empty."""
    return seq[0] if seq else None


def frame_group(ds: Dataset, frame: int, name: str) -> Dataset | None:
    """First item of functional group ``name`` for ``frame``: per-frame, else shared."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per and frame < len(per) and per[frame].get(name):
        return per[frame].get(name)[0]
    shared = first_item(ds.get("SharedFunctionalGroupsSequence"))
    if shared is not None and shared.get(name):
        return shared.get(name)[0]
    return None


def orientation_value(ds: Dataset) -> Any:
    """ImageOrientationPatient wherever the IOD puts it (top level, functional groups, NM detector)."""
    if "ImageOrientationPatient" in ds:
        return ds.ImageOrientationPatient
    item = frame_group(ds, 0, "PlaneOrientationSequence")
    if item is not None and "ImageOrientationPatient" in item:
        return item.ImageOrientationPatient
    det = first_item(ds.get("DetectorInformationSequence"))
    if det is not None and "ImageOrientationPatient" in det:
        return det.ImageOrientationPatient
    return None


def n_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unusable."""
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


def _group_key(h: Header) -> tuple:
    ds = h.ds
    # A multi-frame file, or a single image without a position, cannot be stacked with
    # other files: each is its own series.
    if n_frames(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds or "ImagePositionPatient" not in ds:
        return ("file", str(h.path))
    iop = orientation_value(ds)
    iop_key: tuple[Any, ...] | None
    try:
        iop_key = tuple(round(float(v), 3) + 0.0 for v in iop) if iop is not None else None
    except (TypeError, ValueError):
        iop_key = ("invalid", str(iop))
    series_uid = str(ds.get("SeriesInstanceUID") or f"no-uid:{h.path.parent}")
    return ("series", series_uid, iop_key, int(ds.Rows), int(ds.Columns))


def _label_groups(groups: list[SeriesGroup]) -> None:
    """Human labels without UIDs: '<folder> [series 3, 40 files]', or the file for one file.

    Groups that would share a label (one folder, one series number, several orientations
    or matrix sizes) get the matrix and plane, then a part number, appended.
    """
    for g in groups:
        n = len(g.headers)
        if g.multi_frame:
            frames = n_frames(g.headers[0].ds)
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


def discover(path: str | Path) -> tuple[list[SeriesGroup], list[tuple[str, InputError]]]:
    """Headers of every DICOM file under ``path``, grouped into series.

    Returns the groups (labelled, in a stable order) and the files whose header could not
    be read, as ``(path, error)``.
    """
    root = Path(path)
    files = _list_files(root)
    if root.is_file() and not is_dicom_file(root):
        raise InputError(f"{root}: not a DICOM file (no 'DICM' marker and no parseable DICOM header)")
    headers: list[Header] = []
    broken: list[tuple[str, InputError]] = []
    for f in files:
        if root.is_dir() and not is_dicom_file(f):
            continue
        try:
            ds = _read_header(f)
        except InputError as exc:
            broken.append((str(f), exc))
            continue
        headers.append(Header(f, ds, _classify(ds)))
    images = [h for h in headers if h.kind == "image"]
    if not images:
        if broken:
            return [], broken
        if root.is_file():
            kind = headers[0].kind
            what = "a DICOMDIR index" if kind == "DICOMDIR" else f"a DICOM file {kind} ({sop_name(headers[0].ds)})"
            raise InputError(f"{root}: is {what}; expected an image: pass the file or folder that holds the images")
        skipped = Counter(h.kind for h in headers)
        skipped["not DICOM"] = len(files) - len(headers)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()) if n)
        raise InputError(
            f"{root}: no DICOM images found ({len(files)} files looked at: {detail}); "
            "expected a folder of DICOM image files"
        )
    by_key: dict[tuple, list[Header]] = {}
    facts: dict[tuple, dict[str, Any]] = {}
    for h in images:
        try:
            key, info = _group_key(h), _group_facts(h)
        except MALFORMED as exc:
            broken.append((str(h.path), InputError(f"{h.path}: unusable DICOM header ({type(exc).__name__}: {exc})")))
            continue
        by_key.setdefault(key, []).append(h)
        facts.setdefault(key, info)
    groups = [SeriesGroup(headers=members, folder=_folder_of(members), **facts[key]) for key, members in by_key.items()]
    groups.sort(key=lambda g: (str(g.folder), _series_sort_key(g.series_number), str(g.headers[0].path)))
    _label_groups(groups)
    return groups, broken


def _group_facts(h: Header) -> dict[str, Any]:
    """What a group's label needs, from its first header."""
    ds = h.ds
    return {
        "series_number": str(ds.get("SeriesNumber", "") or "?"),
        "multi_frame": n_frames(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds,
        "plane_hint": _plane_name(orientation_value(ds)),
        "shape_hint": f"{int(ds.Rows)}x{int(ds.Columns)}",
    }


def _folder_of(members: list[Header]) -> Path:
    folders = {m.path.parent for m in members}
    return members[0].path.parent if len(folders) == 1 else Path(os.path.commonpath([str(f) for f in folders]))


def _series_sort_key(number: str) -> tuple[int, str]:
    try:
        return (int(number), number)
    except ValueError:
        return (1 << 30, number)


def sop_name(ds: Dataset) -> str:
    """The SOP class's name for messages ("CT Image Storage")."""
    uid = ds.get("SOPClassUID")
    return UID(str(uid)).name if uid else "unknown SOP class"


def peek_dicom_shape(path: Path) -> tuple[int, ...] | None:
    """The shape ``read_dicom`` would give, from headers; None when the path is no single series."""
    with quiet():
        groups, broken = discover(path)
    if len(groups) != 1 or broken:
        return None  # reading reports it properly; a header check has nothing to compare
    group = groups[0]
    ds = group.headers[0].ds
    in_plane = (int(ds.Rows), int(ds.Columns))
    if group.multi_frame:
        return (n_frames(ds), *in_plane)
    return (len(group.headers), *in_plane) if len(group.headers) > 1 else in_plane
