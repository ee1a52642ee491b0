"""medsynth.io: read any supported scan into a ``Scan`` and write it back out.

Formats: NIfTI (``.nii``, ``.nii.gz``), DICOM (files, series folders, trees), and 2D
PNG/TIFF/JPEG. ``read_scan`` reads one scan, ``read_scans`` everything under a path
(errors per item, for ``medsynth inspect``), ``write_scan`` writes one scan in a named
format. The readers themselves live in ``nifti.py``, ``png.py`` and ``dicom.py``; this
module only decides which one to call.

Example:
    >>> from medsynth.io import read_scan, write_scan
    >>> scan = read_scan("series_folder/")  # doctest: +SKIP
    >>> write_scan(scan, "out/case-001", "nifti")  # doctest: +SKIP
    PosixPath('out/case-001.nii.gz')
"""

from __future__ import annotations

import os
from pathlib import Path

from medsynth.errors import InputError, MedsynthError, file_error
from medsynth.io.atomic import TMP_PREFIX
from medsynth.io.nifti import NIFTI_SUFFIXES, is_nifti_path, read_nifti, write_nifti
from medsynth.io.png import is_image_path, read_png, write_png
from medsynth.io.scan import Scan

FORMATS = ("nifti", "dicom", "png")

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# Files that sit beside scans in datasets and medsynth output folders (labels, manifests,
# reports, notes). ``read_scans`` passes over them instead of reporting each as a bad scan.
COMPANION_SUFFIXES = (
    ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".html", ".log", ".pdf",
)

# Leading bytes of the formats that can be told by content when the name does not say.
_MAGIC_IMAGE = (b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise file_error(path, "no such file or folder")
    if not os.access(path, os.R_OK):
        raise file_error(path, "permission denied (not readable by this user)")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format (one of ``FORMATS``) that ``read_scan`` would use for ``path``.

    A folder is DICOM. A file is classified by its name (.nii/.nii.gz, .png/.tif/.tiff/
    .jpg/.jpeg, .dcm/.dicom/.ima) and otherwise by its content (NIfTI/PNG/TIFF/JPEG magic
    bytes, the DICOM preamble or a parseable DICOM header).

    Raises:
        InputError: missing, unreadable or empty file, or content of no known format.
    """
    path = Path(path)
    _check_readable(path)
    if path.is_dir():
        return "dicom"
    if is_nifti_path(path):
        return "nifti"
    if is_image_path(path):
        return "png"
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return "dicom"
    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes), expected a scan")
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise file_error(path, f"cannot read ({exc.strerror or exc})") from exc
    # DICOM first: its 128-byte preamble may legally hold a TIFF header (dual-format files).
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_MAGIC_IMAGE):
        return "png"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "nifti"
    from medsynth.io.dicom import is_dicom_file

    if is_dicom_file(path):
        return "dicom"
    raise file_error(
        path,
        "not a recognised scan (expected DICOM, NIfTI .nii/.nii.gz, or PNG/TIFF/JPEG; "
        "a gzip-compressed NIfTI must be named .nii.gz)",
    )


def read_scan(path: str | os.PathLike[str], modality: str | None = None) -> Scan:
    """Read one scan: a NIfTI file, a PNG/TIFF/JPEG image, a DICOM file, or a DICOM series folder.

    Args:
        path: file or folder. A folder must hold exactly one DICOM series.
        modality: modality code for formats that store none (NIfTI, PNG/TIFF/JPEG);
            default ``"OT"``. DICOM keeps its own Modality attribute.

    Raises:
        InputError: the path cannot be read as one scan; the message says why.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "nifti":
        return read_nifti(path, modality=modality)
    if fmt == "png":
        return read_png(path, modality=modality or "OT")
    from medsynth.io.dicom import read_dicom

    try:
        return read_dicom(path)
    except InputError as exc:
        if not path.is_dir():
            raise
        others = [p for p in _walk_files(path) if is_nifti_path(p) or is_image_path(p)]
        if others:
            raise file_error(
                path,
                f"folder holds {len(others)} NIfTI/PNG/TIFF file(s) and no single DICOM series; "
                "read_scan reads one scan: give one file, or use read_scans / `medsynth inspect` "
                "for a folder of scans",
            ) from exc
        raise


def _walk_files(root: Path) -> list[Path]:
    """Files under ``root`` in sorted order, without hidden files/folders or atomic temporaries."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith((".", TMP_PREFIX)))
    return found


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
    path = Path(path)
    try:
        _check_readable(path)
    except InputError as exc:
        return [(str(path), exc)]
    if path.is_file():
        return [(str(path), _try_read(path))]
    from medsynth.io.dicom import is_dicom_file

    items: list[tuple[str, Scan | MedsynthError]] = []
    dicom_seen = False
    for file in _walk_files(path):
        if file.name.lower().endswith(COMPANION_SUFFIXES):
            continue
        if is_nifti_path(file) or is_image_path(file):
            items.append((str(file), _try_read(file)))
            continue
        try:
            fmt = detect_format(file)
            if fmt == "dicom" and not is_dicom_file(file):
                # read_dicom_series passes over non-DICOM files; a .dcm that is not one is
                # worth reporting rather than dropping.
                size = file.stat().st_size
                raise file_error(file, "empty file (0 bytes)" if size == 0 else "not a DICOM file (no DICOM header)")
        except InputError as exc:
            items.append((str(file), exc))
            continue
        if fmt == "dicom":
            dicom_seen = True
        else:  # NIfTI or image recognised by content under an unusual name
            items.append((str(file), _try_read(file)))
    if dicom_seen:
        from medsynth.io.dicom import read_dicom_series

        try:
            items.extend(read_dicom_series(path))
        except MedsynthError as exc:
            items.append((str(path), exc))
    if not items:
        items.append((str(path), file_error(path, "no scans found (looked for DICOM, NIfTI, PNG, TIFF, JPEG)")))
    return sorted(items, key=lambda item: item[0])


def _try_read(path: Path) -> Scan | MedsynthError:
    """``read_scan(path)``, or the error it raised."""
    try:
        return read_scan(path)
    except MedsynthError as exc:
        return exc


def _with_suffix(path: Path, suffixes: tuple[str, ...], fmt: str) -> Path:
    """``path`` if it ends in one of ``suffixes``; ``path`` + ``suffixes[0]`` if it has none."""
    if path.name.lower().endswith(suffixes):
        return path
    if path.suffix == "":
        return path.with_name(path.name + suffixes[0])
    raise InputError(
        f"{path}: format {fmt!r} needs a name ending in {' or '.join(suffixes)} "
        f"(or no suffix, and {suffixes[0]} is added); got {path.suffix!r}"
    )


def write_scan(
    scan: Scan,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    case_id: str | None = None,
    synthetic: bool = True,
    uid_namespace: str = "",
) -> Path:
    """Write ``scan`` in format ``fmt``; return what was written.

    Args:
        scan: the scan.
        path: for ``"nifti"`` a file (``.nii.gz`` is added when the name has no suffix);
            for ``"png"`` a file (``.png`` added likewise; 2D only); for ``"dicom"`` a folder
            that receives one file per slice.
        fmt: one of ``FORMATS``.
        case_id: DICOM only: the identifier written as the synthetic patient/case
            (default: the folder's name). Never pass a real patient identifier.
        synthetic: DICOM only: mark the files synthetic (generated output, the default) or
            as a converted real scan (``convert``); see ``medsynth.io.dicom.write_dicom``.
        uid_namespace: DICOM only: mixed into the UIDs (the runner passes the protocol hash).

    Raises:
        InputError: unknown format, a suffix that contradicts the format, a 3D scan as PNG,
            or a DICOM destination that is a file or a folder holding non-DICOM files.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "dicom":
        # write_dicom itself refuses a destination that is a file or a folder holding
        # anything but an earlier series, because it replaces the whole folder.
        from medsynth.io.dicom import write_dicom

        write_dicom(
            scan, path, case_id=case_id or path.name, synthetic=synthetic, uid_namespace=uid_namespace
        )
        return path
    path = _with_suffix(path, NIFTI_SUFFIXES if fmt == "nifti" else (".png",), fmt)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {fmt} output needs a file name")
    return write_nifti(scan, path) if fmt == "nifti" else write_png(scan, path)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: str,
    *,
    overwrite: bool = False,
    case_id: str | None = None,
) -> tuple[Path, Scan]:
    """Read one scan from ``src`` and write it to ``dst`` in format ``fmt``.

    Everything that can be checked before writing is checked first (format, destination
    name, an existing destination, 2D-only PNG), so a failed conversion writes nothing.

    Args:
        src: a scan file or a DICOM series folder.
        dst: destination file (nifti, png; suffix added when missing) or folder (dicom).
        fmt: one of ``FORMATS``.
        overwrite: replace an existing destination (never a non-DICOM folder for dicom).
        case_id: DICOM only, see ``write_scan``.

    Returns:
        The path written and the scan.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; allowed: {', '.join(FORMATS)}")
    dst = Path(dst)
    if fmt != "dicom":
        dst = _with_suffix(dst, NIFTI_SUFFIXES if fmt == "nifti" else (".png",), fmt)
    if dst.exists() and not overwrite:
        raise InputError(f"{dst}: already exists; choose another destination or pass --overwrite")
    scan = read_scan(src)
    if fmt == "png" and scan.spatial_dims != 2:
        raise InputError(
            f"{src}: is a 3D scan with shape {scan.shape}; PNG holds 2D images only: "
            "convert to nifti or dicom"
        )
    # A converted scan came from a real file: it must not be labelled synthetic.
    return write_scan(scan, dst, fmt, case_id=case_id, synthetic=False), scan


def describe_scan(scan: Scan) -> dict:
    """The facts ``medsynth inspect`` prints: modality, dimensions, shape, spacing, orientation."""
    return {
        "modality": scan.modality,
        "spatial_dims": scan.spatial_dims,
        "channels": int(scan.array.shape[0]),
        "shape": list(scan.shape),
        "spacing": list(scan.spacing),
        "orientation": scan.orientation,
        "source_format": scan.metadata.get("source_format"),
    }


def peek_spatial_dims(path: str | os.PathLike[str]) -> int:
    """2 or 3, from headers only (no pixel data), for checking a dataset before loading it.

    Follows what the readers do: NIfTI by its header's shape; PNG/TIFF/JPEG: 2; DICOM: a
    multi-frame image is 3D, an image without ImagePositionPatient (radiograph, secondary
    capture) is 2D, and a folder with two or more positioned images is a 3D series.
    DICOMDIR indexes and other files without Rows (no image) are passed over.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "png":
        return 2
    if fmt == "nifti":
        import nibabel as nib

        from medsynth.io.nifti import _spatial_data, load_image

        try:
            with nib.imageglobals.LoggingOutputSuppressor():
                shape = load_image(path).shape
        except Exception as exc:  # malformed headers raise many types; see read_nifti
            raise file_error(path, f"not a readable NIfTI file ({exc})") from exc
        return len(_spatial_data(shape, path))
    from medsynth.io.dicom import is_dicom_file

    candidates = [path] if path.is_file() else (f for f in _walk_files(path) if is_dicom_file(f))
    positioned = 0
    for file in candidates:
        header = _dicom_header(file)
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


def _dicom_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(
            path, stop_before_pixels=True, force=True,
            specific_tags=["Rows", "NumberOfFrames", "ImagePositionPatient"],
        )
    except Exception as exc:  # pydicom raises many types for malformed headers
        raise file_error(path, f"not a readable DICOM header ({exc})") from exc


__all__ = [
    "FORMATS",
    "Scan",
    "convert",
    "describe_scan",
    "detect_format",
    "peek_spatial_dims",
    "read_scan",
    "read_scans",
    "write_scan",
    "read_nifti",
    "write_nifti",
    "read_png",
    "write_png",
]
