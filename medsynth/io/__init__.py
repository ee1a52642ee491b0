"""medsynth.io: read any supported scan into a ``Scan`` and write it back out.

Formats: NIfTI (``.nii``, ``.nii.gz``), DICOM (files, series folders, trees), and 2D
PNG/TIFF/JPEG. ``read_scan`` reads one scan, ``read_scans`` everything under a path
(errors per item, for ``medsynth inspect``), ``write_scan`` writes one scan in a named
format. What each format is (names, magic bytes, reader, writer) is its entry in
``medsynth.io.formats``; the readers themselves live in ``nifti.py``, ``png.py`` and
``dicom/``. This module only decides which entry to use. ``describe_path`` and
``describe_scans`` are ``read_scan``/``read_scans`` from headers alone: the same facts
(``ScanInfo``, see ``Scan.info``) without decoding pixel data.

Example:
    >>> from medsynth.io import read_scan, write_scan
    >>> scan = read_scan("series_folder/")  # doctest: +SKIP
    >>> write_scan(scan, "out/case-001", "nifti")  # doctest: +SKIP
    PosixPath('out/case-001.nii.gz')
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from medsynth.errors import InputError, MedsynthError, file_error
from medsynth.io.files import check_readable, walk_files
from medsynth.io.formats import (
    FOLDER_FORMAT,
    SNIFF_BYTES,
    Format,
    format_by_magic,
    format_by_name,
    format_by_probe,
    format_names,
    get_format,
)
from medsynth.io.modality import check_modality
from medsynth.io.nifti import read_nifti, write_nifti
from medsynth.io.png import read_png, write_png
from medsynth.io.provenance import Provenance
from medsynth.io.scan import Scan, ScanInfo

_T = TypeVar("_T", Scan, ScanInfo)

# The format names in preference order (the registry is ``medsynth.io.formats.FORMATS``).
FORMATS: tuple[str, ...] = format_names()

# Files that sit beside scans in datasets and medsynth output folders (labels, manifests,
# reports, notes). ``read_scans`` passes over them instead of reporting each as a bad scan.
COMPANION_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".html", ".log", ".pdf")


def _single_file(path: Path) -> bool:
    """True when the name says a one-scan-per-file format (NIfTI, PNG/TIFF/JPEG)."""
    fmt = format_by_name(path)
    return fmt is not None and not fmt.is_folder


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format (one of ``FORMATS``) that ``read_scan`` would use for ``path``.

    A folder is DICOM. A file is classified by its name (.nii/.nii.gz, .png/.tif/.tiff/
    .jpg/.jpeg, .dcm/.dicom/.ima) and otherwise by its content (NIfTI/PNG/TIFF/JPEG magic
    bytes, the DICOM preamble or a parseable DICOM header).

    Raises:
        InputError: missing, unreadable or empty file, or content of no known format.
    """
    path = Path(path)
    check_readable(path)
    if path.is_dir():
        return FOLDER_FORMAT.name
    fmt = format_by_name(path)
    if fmt is not None:
        return fmt.name
    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes), expected a scan")
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise file_error(path, f"cannot read ({exc.strerror or exc})") from exc
    fmt = format_by_magic(head) or format_by_probe(path)
    if fmt is not None:
        return fmt.name
    raise file_error(
        path,
        "not a recognised scan (expected DICOM, NIfTI .nii/.nii.gz, or PNG/TIFF/JPEG; "
        "a gzip-compressed NIfTI must be named .nii.gz)",
    )


def read_scan(path: str | os.PathLike[str], modality: str | None = None) -> Scan:
    """Read one scan: a NIfTI file, a PNG/TIFF/JPEG image, a DICOM file, or a DICOM series folder.

    Args:
        path: file or folder. A folder must hold exactly one DICOM series.
        modality: modality code for files that store none (NIfTI, PNG/TIFF/JPEG, a DICOM
            without a Modality attribute); default ``"OT"``. DICOM keeps its own Modality.

    Raises:
        InputError: the path cannot be read as one scan; the message says why.
    """
    return _one_scan(Path(path), lambda fmt, p: fmt.read(p, modality))


def _folder_of_files_error(path: Path) -> InputError | None:
    """For a folder of one-file scans (no single DICOM series), the error that says so; else None."""
    others = [p for p in walk_files(path) if _single_file(p)] if path.is_dir() else []
    if not others:
        return None
    return file_error(
        path,
        f"folder holds {len(others)} NIfTI/PNG/TIFF file(s) and no single DICOM series; "
        "read_scan reads one scan: give one file, or use read_scans / `medsynth inspect` "
        "for a folder of scans",
    )


def describe_path(path: str | os.PathLike[str], modality: str | None = None) -> ScanInfo:
    """``read_scan(path, modality).info`` from headers alone: no pixel data is decoded.

    DICOM headers are parsed up to the pixel data (``stop_before_pixels``) and a series is
    grouped, sorted and checked from them; NIfTI from nibabel's header (the data is never
    read); PNG/TIFF/JPEG from the image header. So the cost does not grow with the pixel
    data, and a file whose pixel data is damaged is still described (reading it fails).

    Raises:
        InputError: as ``read_scan``, for everything a header shows.
    """
    return _one_scan(Path(path), lambda fmt, p: fmt.describe(p, modality))


def _one_scan(path: Path, op: Callable[[Format, Path], _T]) -> _T:
    """``op(format, path)`` for the path's format; a folder of one-file scans gets the error that says so."""
    fmt = get_format(detect_format(path))
    try:
        return op(fmt, path)
    except InputError as exc:
        folder_error = _folder_of_files_error(path)
        if folder_error is None:
            raise
        raise folder_error from exc


def read_scans(path: str | os.PathLike[str]) -> list[tuple[str, Scan | MedsynthError]]:
    """Every scan under a file, folder or tree, with a per-item error instead of stopping.

    NIfTI and PNG/TIFF/JPEG files are one scan each; DICOM files are grouped into series
    (``read_dicom_series``). Hidden files and folders (name starting with ``.``) and
    companion files (``COMPANION_SUFFIXES``: .csv, .json, .txt, ...) are passed over; any
    other file that is no scan is reported as an error item.

    Returns:
        ``(label, scan_or_error)`` pairs sorted by label; a label is the file path, or for
        DICOM the series label of ``read_dicom_series``.
    """
    return _walk(Path(path), lambda p: _attempt(read_scan, p), FOLDER_FORMAT.read_tree)


def describe_scans(path: str | os.PathLike[str]) -> list[tuple[str, ScanInfo | MedsynthError]]:
    """``read_scans`` from headers alone (``describe_path`` per item): the same labels and order.

    What ``medsynth inspect`` prints: fast and small on any file, since no pixel data is decoded.
    """
    return _walk(Path(path), lambda p: _attempt(describe_path, p), FOLDER_FORMAT.describe_tree)


def _walk(
    path: Path,
    one: Callable[[Path], _T | MedsynthError],
    tree: Callable[[Path], list[tuple[str, _T | MedsynthError]]] | None,
) -> list[tuple[str, _T | MedsynthError]]:
    """The traversal of ``read_scans``: ``one`` for each one-scan file, ``tree`` for the DICOM series."""
    try:
        check_readable(path)
    except InputError as exc:
        return [(str(path), exc)]
    if path.is_file():
        return [(str(path), one(path))]
    items: list[tuple[str, _T | MedsynthError]] = []
    series_seen = False
    for file in walk_files(path):
        if file.name.lower().endswith(COMPANION_SUFFIXES):
            continue
        if _single_file(file):
            items.append((str(file), one(file)))
            continue
        try:
            fmt = get_format(detect_format(file))
            if fmt.is_folder and fmt.probe is not None and not fmt.probe(file):
                # The series reader passes over files that fail the probe; a .dcm that is
                # not DICOM is worth reporting rather than dropping.
                size = file.stat().st_size
                raise file_error(
                    file, "empty file (0 bytes)" if size == 0 else f"not a {fmt.title} file (no {fmt.title} header)"
                )
        except InputError as exc:
            items.append((str(file), exc))
            continue
        if fmt.is_folder:
            series_seen = True
        else:  # NIfTI or image recognised by content under an unusual name
            items.append((str(file), one(file)))
    if series_seen and tree is not None:
        try:
            items.extend(tree(path))
        except MedsynthError as exc:
            items.append((str(path), exc))
    if not items:
        items.append((str(path), file_error(path, "no scans found (looked for DICOM, NIfTI, PNG, TIFF, JPEG)")))
    return sorted(items, key=lambda item: item[0])


def _attempt(fn: Callable[[Path], _T], path: Path) -> _T | MedsynthError:
    """``fn(path)``, or the error it raised."""
    try:
        return fn(path)
    except MedsynthError as exc:
        return exc


def write_scan(
    scan: Scan,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    case_id: str | None = None,
    synthetic: bool = True,
    uid_namespace: str = "",
    seed: int | None = None,
    model: str | None = None,
    pathology: str | None = None,
    body_part: str | None = None,
    created: datetime | None = None,
) -> Path:
    """Write ``scan`` in format ``fmt``; return what was written.

    Every format says whether the file is synthetic (``medsynth.io.provenance``): DICOM in its
    attributes (``medsynth.io.dicom.write_dicom``), NIfTI in ``descrip``, PNG in text chunks.

    Args:
        scan: the scan.
        path: for ``"nifti"`` a file (``.nii.gz`` is added when the name has no suffix);
            for ``"png"`` a file (``.png`` added likewise; 2D only); for ``"dicom"`` a folder
            that receives one file per slice.
        fmt: one of ``FORMATS``.
        case_id: the case, named in every format and part of the DICOM patient identity
            (DICOM default: the folder's name). Never pass a real patient identifier.
        synthetic: mark the files synthetic (generated output, the default) or as a converted
            real scan (``convert``).
        uid_namespace: DICOM only: mixed into the patient/study/series ids (the runner passes
            the protocol hash).
        seed: DICOM only: the case's seed, mixed into the ids.
        model: the model's id, named in every format.
        pathology: DICOM only: the pathology label, named in the Study/Series Description.
        body_part: DICOM only: BodyPartExamined (the model's ``body_part``).
        created: DICOM only: the generation time (Study Date/Time); default now, or
            ``SOURCE_DATE_EPOCH``.

    Raises:
        InputError: unknown format, a suffix that contradicts the format, a 3D scan as PNG,
            or a DICOM destination that is a file or a folder holding non-DICOM files.
    """
    entry = get_format(fmt)
    path = entry.destination(Path(path))
    if not entry.is_folder and path.is_dir():
        raise InputError(f"{path}: is a folder; {fmt} output needs a file name")
    provenance = Provenance(case_id, synthetic, uid_namespace, seed, model, pathology, body_part, created)
    return entry.write(scan, path, provenance)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: str,
    *,
    overwrite: bool = False,
    case_id: str | None = None,
    modality: str | None = None,
    allow_guessed_geometry: bool = False,
) -> tuple[Path, Scan]:
    """Read one scan from ``src`` and write it to ``dst`` in format ``fmt``.

    Everything that can be checked before writing is checked first (format, modality,
    destination name, an existing destination, 2D-only PNG, guessed geometry), so a failed
    conversion writes nothing.

    Args:
        src: a scan file or a DICOM series folder.
        dst: destination file (nifti, png; suffix added when missing) or folder (dicom).
        fmt: one of ``FORMATS``.
        overwrite: replace an existing destination (never a non-DICOM folder for dicom).
        case_id: DICOM only, see ``write_scan``.
        modality: the source's modality (a DICOM modality code, CID 33) for files that store
            none (NIfTI, PNG/TIFF/JPEG, a DICOM without Modality); it must agree with a DICOM's
            own Modality attribute.
        allow_guessed_geometry: write DICOM even when the source's geometry was guessed
            (``Scan.geometry_guessed``); the files then say so in ImageComments.

    Returns:
        The path written and the scan.

    Raises:
        InputError: any check above fails; the message names the file and what to do.
    """
    entry = get_format(fmt)
    given = check_modality(modality, "--modality") if modality is not None else None
    dst = entry.destination(Path(dst))
    if dst.exists() and not overwrite:
        raise InputError(f"{dst}: already exists; choose another destination or pass --overwrite")
    scan = read_scan(src, given)
    if given is not None and scan.modality != given:
        # Only a file's own Modality attribute can differ from the one given (it fills a missing one).
        raise InputError(
            f"{src}: --modality {given} contradicts the file's own Modality {scan.modality}; "
            "drop --modality (DICOM keeps its own) or give the file's modality"
        )
    if not entry.holds_3d and scan.spatial_dims != 2:
        volume_formats = " or ".join(name for name in FORMATS if get_format(name).holds_3d)
        raise InputError(
            f"{src}: is a 3D scan with shape {scan.shape}; {entry.title} holds 2D images only: "
            f"convert to {volume_formats}"
        )
    if entry.name == "dicom" and scan.geometry_guessed and not allow_guessed_geometry:
        # DICOM states patient position and orientation per slice: an assumed geometry written
        # there would read back as measured. NIfTI and PNG output is not checked here.
        raise InputError(
            f"{src}: its geometry was guessed ({scan.geometry_guessed}); DICOM output would state it "
            "as measured: pass --allow-guessed-geometry to write it anyway (noted in ImageComments)"
        )
    # A converted scan came from a real file: it must not be labelled synthetic.
    return write_scan(scan, dst, fmt, case_id=case_id, synthetic=False), scan


def describe_scan(scan: Scan | ScanInfo) -> dict:
    """The facts ``medsynth inspect`` prints: modality, dimensions, shape, spacing, orientation.

    ``geometry_guessed`` is None, or what the reader assumed about the geometry. A ``Scan``
    and the ``ScanInfo`` of its file (``describe_path``) give the same dict.
    """
    info = scan.info if isinstance(scan, Scan) else scan
    return {
        "modality": info.modality,
        "spatial_dims": info.spatial_dims,
        "channels": info.channels,
        "shape": list(info.shape),
        "spacing": list(info.spacing),
        "orientation": info.orientation,
        "source_format": info.metadata.get("source_format"),
        "geometry_guessed": info.geometry_guessed,
    }


def peek_spatial_dims(path: str | os.PathLike[str]) -> int:
    """2 or 3, from headers only (no pixel data), for checking a dataset before loading it.

    Follows what the readers do: NIfTI by its header's shape; PNG/TIFF/JPEG: 2; DICOM: a
    multi-frame image is 3D, an image without ImagePositionPatient (radiograph, secondary
    capture) is 2D, and a folder with two or more positioned images is a 3D series.
    DICOMDIR indexes and other files without Rows (no image) are passed over.
    """
    path = Path(path)
    return get_format(detect_format(path)).peek_spatial_dims(path)


__all__ = [
    "FORMATS",
    "Scan",
    "ScanInfo",
    "check_modality",
    "convert",
    "describe_path",
    "describe_scan",
    "describe_scans",
    "detect_format",
    "peek_spatial_dims",
    "read_nifti",
    "read_png",
    "read_scan",
    "read_scans",
    "write_nifti",
    "write_png",
    "write_scan",
]
