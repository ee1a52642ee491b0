"""NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``) reading and writing with nibabel.

The array keeps nibabel's voxel order ``(i, j, k)``, so the image's affine is the
``Scan`` affine unchanged: NIfTI's world frame is already RAS+ (see ``medsynth.io.scan``).

Affine choice on reading (the NIfTI standard's order, made explicit):

1. the sform when ``sform_code > 0``;
2. else the qform when ``qform_code > 0``;
3. else (both codes 0: an image with no stated orientation) nibabel's fallback
   ``header.get_best_affine()``: voxel sizes from ``pixdim``, the x axis flipped and the
   origin at the volume centre (the old Analyze convention). A ``UserWarning`` says so,
   because the orientation is then a guess, and ``Scan.geometry_guessed`` records it.

``describe_nifti`` gives the same facts from the header alone (``medsynth inspect``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from medsynth.errors import InputError, file_error
from medsynth.io.atomic import atomic_path
from medsynth.io.scan import Scan, ScanInfo
from medsynth.io.streaming import slabs, volume_stats

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# int16 holds CT in HU exactly; wider ranges or non-integers fall back to float32.
_INT16 = np.iinfo(np.int16)


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_image(path: Path):
    """``nibabel.load``, also for an uncompressed NIfTI file whose name lacks ``.nii``.

    nibabel picks the image class from the file name; a file recognised by its content
    (``medsynth.io.detect_format``) is opened by its magic: NIfTI-2 ``n+2`` at byte 4,
    else NIfTI-1.
    """
    import nibabel as nib

    if is_nifti_path(path):
        return nib.load(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    cls = nib.Nifti2Image if head[4:8] == b"n+2\x00" else nib.Nifti1Image
    holder = nib.FileHolder(filename=str(path))
    return cls.from_file_map({"image": holder, "header": holder})


# What ``Scan.geometry_guessed`` says of a NIfTI file that states no orientation.
GUESSED_NIFTI = (
    "sform_code and qform_code are 0: Analyze fallback (voxel sizes from pixdim, x flipped, origin at the centre)"
)


def _choose_affine(img, path: Path, *, warn: bool = True) -> tuple[np.ndarray, str | None]:
    """The affine the NIfTI standard's order picks, and None or why it is a guess."""
    header = img.header
    sform, sform_code = header.get_sform(coded=True)
    if sform is not None and int(sform_code) > 0:
        return np.asarray(sform, dtype=np.float64), None
    qform, qform_code = header.get_qform(coded=True)
    if qform is not None and int(qform_code) > 0:
        return np.asarray(qform, dtype=np.float64), None
    if warn:
        warnings.warn(
            f"{path}: sform_code and qform_code are both 0 (no orientation stored); using voxel "
            "sizes from pixdim with the Analyze fallback orientation (x flipped, origin at the "
            "centre). Check the orientation before using this scan.",
            UserWarning,
            stacklevel=4,
        )
    return np.asarray(header.get_best_affine(), dtype=np.float64), GUESSED_NIFTI


def _spatial_data(data_shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """The spatial shape that the file's shape maps to; InputError for what medsynth cannot use."""
    shape = tuple(int(s) for s in data_shape)
    # Trailing singleton dimensions beyond the third carry nothing (e.g. (X,Y,Z,1)).
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) < 2 or min(shape) < 1:
        raise file_error(path, f"image shape {tuple(data_shape)} is not a 2D or 3D image")
    if len(shape) > 3:
        raise file_error(
            path,
            f"image has shape {tuple(data_shape)}: a {len(shape)}D series (e.g. time points or "
            "diffusion directions); medsynth reads one 2D or 3D volume per file: split it first "
            "(e.g. fslsplit, or nibabel.funcs.four_to_three)",
        )
    return shape


def read_nifti(path: str | os.PathLike[str], modality: str | None = None) -> Scan:
    """Read a ``.nii`` / ``.nii.gz`` file into a ``Scan``.

    Args:
        path: the NIfTI file.
        modality: DICOM modality code to record (NIfTI does not store one); default ``"OT"``.

    Returns:
        A 3D scan ``(1, X, Y, Z)``, or a 2D scan ``(1, X, Y)`` for an ``(X, Y)`` or ``(X, Y, 1)``
        image, whose affine keeps the slice thickness in its third column. Intensities have
        ``scl_slope``/``scl_inter`` applied.

    Raises:
        InputError: the file is missing, unreadable, not NIfTI, 4D with several volumes,
            or has a singular affine.

    Example:
        >>> scan = read_nifti("ct.nii.gz", modality="CT")  # doctest: +SKIP
    """
    path = Path(path)
    img, shape, affine, guessed = _open_with_geometry(path, warn=True)
    try:
        # get_fdata applies scl_slope/scl_inter (nibabel's array proxy does the scaling).
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # same reason as at nib.load: malformed data, many types
        raise file_error(path, f"cannot read the voxel data ({_short(exc)}); truncated file?") from exc
    try:
        return Scan(data[None], affine, modality or "OT", {"source_format": "nifti"}, guessed)
    except ValueError as exc:
        raise file_error(path, f"unusable geometry in the header: {exc}") from exc


def describe_nifti(path: str | os.PathLike[str], modality: str | None = None) -> ScanInfo:
    """What ``read_nifti`` would give, from the header alone: the voxel data is never read.

    ``nibabel.load`` reads the header and maps the data lazily, so this is fast on any file,
    and a file whose data part is truncated is still described (reading it fails).
    """
    path = Path(path)
    _, shape, affine, guessed = _open_with_geometry(path, warn=False)  # the caller shows the guess
    try:
        return ScanInfo(shape, 1, affine, modality or "OT", {"source_format": "nifti"}, guessed)
    except ValueError as exc:
        raise file_error(path, f"unusable geometry in the header: {exc}") from exc


def _open_with_geometry(path: Path, *, warn: bool) -> tuple[Any, tuple[int, ...], np.ndarray, str | None]:
    """The lazily loaded image, its spatial shape, its affine and None or why the affine is a guess.

    Header only: the checks both ``read_nifti`` and ``describe_nifti`` make before any voxel.
    """
    import nibabel as nib

    if not path.is_file():
        raise file_error(path, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes), expected a NIfTI image")
    try:
        # nibabel logs its header repairs to stderr; the CLI's one-line errors should stand alone.
        with nib.imageglobals.LoggingOutputSuppressor():
            img = load_image(path)
    # nibabel raises many types for malformed files (ImageFileError, HeaderDataError,
    # zlib.error, OSError, ValueError...); any failure here is the file's, not a bug.
    except Exception as exc:
        raise file_error(path, f"not a readable NIfTI file ({_short(exc)})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise file_error(path, f"not a NIfTI image (nibabel found {type(img).__name__})")
    shape = _spatial_data(img.shape, path)
    affine, guessed = _choose_affine(img, path, warn=warn)
    if not np.all(np.isfinite(affine)):
        raise file_error(path, "the header's affine holds NaN or infinite values")
    if len(shape) == 2:
        affine = _with_slice_normal(affine)
    return img, shape, affine, guessed


def peek_nifti_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The spatial shape ``read_nifti`` would give, from the header alone (no voxel data)."""
    import nibabel as nib

    path = Path(path)
    try:
        with nib.imageglobals.LoggingOutputSuppressor():
            shape = load_image(path).shape
    except Exception as exc:  # malformed headers raise many types; see read_nifti
        raise file_error(path, f"not a readable NIfTI file ({exc})") from exc
    return _spatial_data(shape, path)


def peek_nifti_dims(path: str | os.PathLike[str]) -> int:
    """2 or 3, from the header's shape alone (no voxel data), as ``read_nifti`` would read it."""
    return len(peek_nifti_shape(path))


def _with_slice_normal(affine: np.ndarray) -> np.ndarray:
    """For a 2D image whose header gives no through-plane step, use the in-plane normal x 1 mm.

    A 2D scan keeps its plane in the affine's third column (see ``medsynth.io.scan``); a
    zero column there (pixdim[3] = 0) has no thickness to keep, so 1 mm is the documented
    default, the same default the DICOM reader uses for a missing SliceThickness.
    """
    if np.linalg.norm(affine[:3, 2]) > 1e-9:
        return affine
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    norm = np.linalg.norm(normal)
    if norm < 1e-12:
        return affine  # in-plane axes are degenerate: Scan reports the singular affine
    out = affine.copy()
    out[:3, 2] = normal / norm
    return out


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def write_nifti(scan: Scan, path: str | os.PathLike[str], *, description: str | None = None) -> Path:
    """Write a one-channel scan as NIfTI-1 with qform = sform = ``scan.affine`` (codes 1).

    A 2D scan is written as ``(X, Y, 1)`` so the slice plane and thickness survive. CT whose
    values are whole numbers within int16 is stored as int16 (lossless, ~half the size);
    everything else as float32. Units are mm and seconds. The write is atomic and streamed:
    one pass over the values decides the dtype, then the voxels are cast and written a slab
    at a time (``write_nifti_array``), so no copy of the volume is made.

    Args:
        scan: the scan; ``array.shape[0]`` must be 1.
        path: destination ending in ``.nii`` or ``.nii.gz``.
        description: the header's ``descrip`` (ASCII, at most 80 bytes); ``write_scan`` passes
            ``Provenance.nifti_descrip()``: ``synthetic medsynth case=<id> model=<id>`` for
            generated output, ``not synthetic: ...`` for a converted scan. None: left empty.

    Returns:
        The path written.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    if scan.array.shape[0] != 1:
        raise InputError(
            f"{path}: scan has {scan.array.shape[0]} channels; NIfTI output holds one channel "
            "per file: write each channel separately"
        )
    data = scan.array[0]
    dtype = np.int16 if scan.modality == "CT" and _fits_int16(data) else np.float32
    return write_nifti_array(data, scan.affine, path, description=description, dtype=dtype)


def write_nifti_array(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    *,
    description: str | None = None,
    dtype: DTypeLike | None = None,
) -> Path:
    """Write a spatial array (2D or 3D) on a ``Scan`` affine, slab by slab; atomic.

    The one place that lays out medsynth's NIfTI files: ``write_nifti`` (scans) and
    ``medsynth.io.masks.write_mask_nifti`` (uint8 label maps) both write through it, so a
    mask's header carries exactly the geometry of its scan's. A 2D array is written as
    ``(X, Y, 1)`` so the slice plane and thickness survive; qform = sform = ``affine``
    (codes 1), units mm and seconds, no intensity scaling.

    nibabel lays out the header (from a zero-strided stand-in of the array's shape and
    dtype, so it never holds the voxels) and opens the file (gzip for ``.nii.gz``, its
    settings); the voxels follow in NIfTI's order (first index fastest), cast a slab of the
    last axis at a time. The bytes are those ``nibabel.save`` writes for the whole array.

    Args:
        data: ``(X, Y)`` or ``(X, Y, Z)``.
        affine: the 4x4 index -> RAS+ matrix of a ``Scan`` with that spatial shape.
        path: destination ending in ``.nii`` or ``.nii.gz``.
        description: the header's ``descrip`` (ASCII, at most 80 bytes), see ``write_nifti``.
        dtype: the on-disk type; each slab is cast to it (``astype``) as it is written.
            Default ``data.dtype``.
    """
    import nibabel as nib
    from nibabel.volumeutils import seek_tell

    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    if description is not None and (not description.isascii() or len(description) > 80):
        raise InputError(f"{path}: NIfTI description {description!r}: expected at most 80 ASCII characters")
    if data.ndim == 2:
        data = data[:, :, None]
    out_dtype = np.dtype(data.dtype if dtype is None else dtype)
    img = nib.Nifti1Image(np.broadcast_to(np.zeros((), out_dtype), data.shape), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header.set_slope_inter(1.0, 0.0)
    if description is not None:
        img.header["descrip"] = description.encode("ascii")
    # What ``to_file_map`` does before it writes: shape, affine and magic into the header.
    img.update_header()
    header = img.header
    # nibabel picks gzip from the name, so the temporary keeps the final suffix.
    with atomic_path(path) as tmp, nib.openers.ImageOpener(str(tmp), "wb") as fh:
        header.write_to(fh)
        seek_tell(fh.fobj, header.get_data_offset(), write0=True)
        _write_voxels(data, fh, header.get_data_dtype())
    return path


def _write_voxels(data: np.ndarray, fh: Any, dtype: np.dtype) -> None:
    """``data`` (X, Y, Z) in Fortran order as ``dtype``, one slab of the last axis at a time.

    Fortran order is the z-slices one after another, each ``data[:, :, k].T`` in C order; a
    slab of them is gathered with one transposed copy (rows of consecutive k are read
    together, which is kinder to the cache than one strided slice at a time).
    """
    plane = data.shape[0] * data.shape[1] * max(data.itemsize, dtype.itemsize)
    for part in slabs(data.shape[2], plane):
        block = np.ascontiguousarray(data[:, :, part].transpose(2, 1, 0)).astype(dtype, copy=False)
        for z in block:  # one write per z-slice, as nibabel's array writer does
            fh.write(memoryview(z).cast("B"))


def _fits_int16(data: np.ndarray) -> bool:
    """Every value finite, whole and within int16 (one streaming pass, see ``volume_stats``)."""
    if data.size == 0:
        return False
    stats = volume_stats(data)
    return stats.finite and stats.integral and stats.lo >= _INT16.min and stats.hi <= _INT16.max
