"""The scan file formats medsynth reads and writes: one registry entry per format.

Everything that differs between formats is stated here once: the file names that mean
the format, how to tell it by content, its reader and writer, whether it holds 3D scans,
and where it goes in a ``medsynth generate`` output folder. ``medsynth.io`` (``read_scan``,
``write_scan``, ``convert``, ``detect_format``), the CLI, the phantoms, the protocol runner
and the manifest look formats up here instead of listing their names.

A new format is one more ``Format`` in ``FORMATS``; its position there is its place in
the preference order (the file a reader takes when a case has several: NIfTI, else DICOM,
else PNG).

Example:
    >>> from medsynth.io.formats import FORMATS, get_format
    >>> list(FORMATS)
    ['nifti', 'dicom', 'png']
    >>> get_format("nifti").output_path
    'nifti/{case_id}.nii.gz'
    >>> get_format("png").holds_3d
    False
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from medsynth.errors import InputError, MedsynthError
from medsynth.io.nifti import (
    NIFTI_SUFFIXES,
    describe_nifti,
    peek_nifti_dims,
    peek_nifti_shape,
    read_nifti,
    write_nifti,
)
from medsynth.io.png import IMAGE_SUFFIXES, PNG_SUFFIXES, describe_image, peek_image_shape, read_png, write_png
from medsynth.io.provenance import Provenance

if TYPE_CHECKING:
    from medsynth.io.scan import Scan, ScanInfo

# How many leading bytes ``sniff`` callables get: NIfTI-1's magic ends at byte 348.
SNIFF_BYTES = 352


class Reader(Protocol):
    """``read(path, modality)``: one scan; ``modality`` for formats that store none."""

    def __call__(self, path: Path, modality: str | None) -> Scan: ...


class Describer(Protocol):
    """``describe(path, modality)``: what ``read`` would give, from headers (no pixel data)."""

    def __call__(self, path: Path, modality: str | None) -> ScanInfo: ...


class Writer(Protocol):
    """``write(scan, path, provenance)``: what the file says it is (``medsynth.io.provenance``)."""

    def __call__(self, scan: Scan, path: Path, provenance: Provenance) -> Path: ...


@dataclass(frozen=True)
class Format:
    """One scan format: how its files are recognised, read, written and laid out.

    Args:
        name: the format's name in protocols, manifests and ``--format`` ("nifti").
        title: its name in messages ("NIfTI").
        suffixes: lower-case file name endings that are read as this format.
        write_suffixes: endings ``write_scan`` accepts; the first is added to a name without
            a suffix. Empty for a folder format.
        folder: the output folder of this format in a ``medsynth generate`` output folder.
        output_path: a case's path in such an output folder, ``{case_id}`` filled in.
        holds_3d: whether it stores volumes (PNG stores 2D images only).
        is_folder: one scan is a folder of files (a DICOM series): folders are read as this
            format and ``write_scan`` writes a folder.
        read: ``read(path, modality)``; ``modality`` is the code for formats that store none.
        describe: ``describe(path, modality)``: ``read(path, modality).info`` from headers
            alone, without decoding pixel data (``medsynth inspect``).
        write: ``write(scan, path, provenance)``, the path as given by ``destination``; each
            format records the provenance its own way; returns what was written.
        peek_spatial_dims: 2 or 3 from headers only, without reading pixel data.
        peek_shape: the spatial shape from headers only; None when the headers cannot tell.
        sniff: True when a file's first ``SNIFF_BYTES`` bytes carry the format's magic.
        probe: a slower content check that parses the file, tried when no name or magic
            matched; None when the magic bytes are the whole test.
        read_tree: for a folder format, every scan under a folder or tree, each with its
            label and its own error (``read_scans``); None for one-scan-per-file formats.
        describe_tree: ``read_tree`` from headers alone (``describe_scans``).
    """

    name: str
    title: str
    suffixes: tuple[str, ...]
    write_suffixes: tuple[str, ...]
    folder: str
    output_path: str
    holds_3d: bool
    is_folder: bool
    read: Reader
    describe: Describer
    write: Writer
    peek_spatial_dims: Callable[[Path], int]
    peek_shape: Callable[[Path], tuple[int, ...] | None]
    sniff: Callable[[bytes], bool]
    probe: Callable[[Path], bool] | None = None
    read_tree: Callable[[Path], list[tuple[str, Scan | MedsynthError]]] | None = None
    describe_tree: Callable[[Path], list[tuple[str, ScanInfo | MedsynthError]]] | None = None

    def named_by(self, path: str | os.PathLike[str]) -> bool:
        """True when the file name ends in one of ``suffixes`` (case-insensitive)."""
        return str(path).lower().endswith(self.suffixes)

    def destination(self, path: Path) -> Path:
        """Where ``write_scan(scan, path, name)`` writes: ``path``, given a suffix when it has none.

        Raises:
            InputError: ``path`` has a suffix this format does not write.
        """
        if self.is_folder or path.name.lower().endswith(self.write_suffixes):
            return path
        if path.suffix == "":
            return path.with_name(path.name + self.write_suffixes[0])
        raise InputError(
            f"{path}: format {self.name!r} needs a name ending in {' or '.join(self.write_suffixes)} "
            f"(or no suffix, and {self.write_suffixes[0]} is added); got {path.suffix!r}"
        )

    def output_file(self, out_dir: str | os.PathLike[str], case_id: str) -> Path:
        """A case's file (or DICOM folder) in a generation output folder ``out_dir``."""
        return Path(out_dir) / self.output_path.format(case_id=case_id)


# --- the entries' callables: one signature for every format ---------------------------------


def _read_nifti(path: Path, modality: str | None) -> Scan:
    return read_nifti(path, modality=modality)


def _describe_nifti(path: Path, modality: str | None) -> ScanInfo:
    return describe_nifti(path, modality=modality)


def _write_nifti(scan: Scan, path: Path, provenance: Provenance) -> Path:
    return write_nifti(scan, path, description=provenance.nifti_descrip())


def _sniff_nifti(head: bytes) -> bool:
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00"


# pydicom is imported on first use only: reading NIfTI or PNG should not pay for it.
def _read_dicom(path: Path, modality: str | None) -> Scan:
    from medsynth.io.dicom import read_dicom

    return read_dicom(path, modality)  # the file's own Modality wins; ``modality`` fills a missing one


def _describe_dicom(path: Path, modality: str | None) -> ScanInfo:
    from medsynth.io.dicom import describe_dicom

    return describe_dicom(path, modality)


def _write_dicom(scan: Scan, path: Path, provenance: Provenance) -> Path:
    # write_dicom itself refuses a destination that is a file or a folder holding anything
    # but an earlier series, because it replaces the whole folder.
    from medsynth.io.dicom import write_dicom

    p = provenance
    write_dicom(
        scan,
        path,
        case_id=p.case_id or path.name,
        synthetic=p.synthetic,
        uid_namespace=p.namespace,
        seed=p.seed,
        model=p.model,
        pathology=p.pathology,
        body_part=p.body_part,
        created=p.created,
    )
    return path


def _peek_dicom(path: Path) -> int:
    from medsynth.io.dicom import peek_dicom_dims

    return peek_dicom_dims(path)


def _peek_dicom_shape(path: Path) -> tuple[int, ...] | None:
    from medsynth.io.dicom.headers import peek_dicom_shape

    return peek_dicom_shape(path)


def _sniff_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _probe_dicom(path: Path) -> bool:
    from medsynth.io.dicom import is_dicom_file

    return is_dicom_file(path)


def _read_dicom_tree(path: Path) -> list[tuple[str, Scan | MedsynthError]]:
    from medsynth.io.dicom import read_dicom_series

    return read_dicom_series(path)


def _describe_dicom_tree(path: Path) -> list[tuple[str, ScanInfo | MedsynthError]]:
    from medsynth.io.dicom import describe_dicom_series

    return describe_dicom_series(path)


def _read_image(path: Path, modality: str | None) -> Scan:
    return read_png(path, modality=modality or "OT")


def _describe_image(path: Path, modality: str | None) -> ScanInfo:
    return describe_image(path, modality=modality or "OT")


def _write_png(scan: Scan, path: Path, provenance: Provenance) -> Path:
    return write_png(scan, path, text=provenance.png_text())


def _peek_image(path: Path) -> int:
    return 2


# Leading bytes of PNG, TIFF (both byte orders) and JPEG.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff")


def _sniff_image(head: bytes) -> bool:
    return head.startswith(_IMAGE_MAGIC)


# In preference order: the order of this dict is the order in which a reader picks a case's
# file when it has several (and in which messages list the formats).
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            name="nifti",
            title="NIfTI",
            suffixes=NIFTI_SUFFIXES,
            write_suffixes=NIFTI_SUFFIXES,
            folder="nifti",
            output_path="nifti/{case_id}.nii.gz",
            holds_3d=True,
            is_folder=False,
            read=_read_nifti,
            describe=_describe_nifti,
            write=_write_nifti,
            peek_spatial_dims=peek_nifti_dims,
            peek_shape=peek_nifti_shape,
            sniff=_sniff_nifti,
        ),
        Format(
            name="dicom",
            title="DICOM",
            suffixes=(".dcm", ".dicom", ".ima"),
            write_suffixes=(),
            folder="dicom",
            output_path="dicom/{case_id}",
            holds_3d=True,
            is_folder=True,
            read=_read_dicom,
            describe=_describe_dicom,
            write=_write_dicom,
            peek_spatial_dims=_peek_dicom,
            peek_shape=_peek_dicom_shape,
            sniff=_sniff_dicom,
            probe=_probe_dicom,
            read_tree=_read_dicom_tree,
            describe_tree=_describe_dicom_tree,
        ),
        Format(
            # Reads PNG, TIFF and JPEG (2D images without geometry); writes PNG previews.
            name="png",
            title="PNG",
            suffixes=IMAGE_SUFFIXES,
            write_suffixes=PNG_SUFFIXES,
            folder="png",
            output_path="png/{case_id}.png",
            holds_3d=False,
            is_folder=False,
            read=_read_image,
            describe=_describe_image,
            write=_write_png,
            peek_spatial_dims=_peek_image,
            peek_shape=peek_image_shape,
            sniff=_sniff_image,
        ),
    )
}

# The preferred file of a case with several: NIfTI, else DICOM, else PNG.
PREFERENCE: tuple[str, ...] = tuple(FORMATS)

# The names as a type, for pydantic models of protocols and training configs (their error
# messages and JSON schema list the allowed values). A Literal cannot be built from the
# registry, so it is written here beside it and checked against it at import.
FormatName = Literal["nifti", "dicom", "png"]
if get_args(FormatName) != PREFERENCE:
    raise RuntimeError(f"io.formats: FormatName {get_args(FormatName)} is out of step with FORMATS {PREFERENCE}")

# Content sniffing checks DICOM first: its 128-byte preamble may legally hold a TIFF header
# (dual-format files). NIfTI's magic sits at fixed offsets and is checked last.
SNIFF_ORDER: tuple[str, ...] = ("dicom", "png", "nifti")

# The format a folder is read as (a DICOM series folder).
FOLDER_FORMAT: Format = next(f for f in FORMATS.values() if f.is_folder)


def format_names() -> tuple[str, ...]:
    """The format names in preference order: ``("nifti", "dicom", "png")``."""
    return PREFERENCE


def get_format(name: str) -> Format:
    """The registry entry named ``name``.

    Raises:
        InputError: no such format; the message names the value and the allowed names.
    """
    try:
        return FORMATS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value from a parsed file
        raise InputError(f"unknown output format {name!r}; allowed: {', '.join(FORMATS)}") from None


def preferred_format(available: Iterable[str]) -> str | None:
    """The first of ``PREFERENCE`` among ``available`` format names; None if there is none."""
    present = set(available)
    return next((name for name in PREFERENCE if name in present), None)


def format_by_name(path: str | os.PathLike[str]) -> Format | None:
    """The format a file's name says (``.nii.gz``, ``.png``, ``.dcm``...); None if it says none."""
    return next((f for f in FORMATS.values() if f.named_by(path)), None)


def format_by_magic(head: bytes) -> Format | None:
    """The format whose magic bytes start ``head`` (``SNIFF_ORDER``); None if none does."""
    return next((FORMATS[name] for name in SNIFF_ORDER if FORMATS[name].sniff(head)), None)


def format_by_probe(path: Path) -> Format | None:
    """The first format whose parsing ``probe`` accepts the file; None if none does."""
    return next((f for f in FORMATS.values() if f.probe is not None and f.probe(path)), None)


def choices_text() -> str:
    """The names for help texts: ``"nifti, dicom or png (png: 2D only)"``."""
    names = list(FORMATS)
    flat = [f"{f.name}: 2D only" for f in FORMATS.values() if not f.holds_3d]
    listing = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    return listing + (f" ({', '.join(flat)})" if flat else "")


__all__ = [
    "FOLDER_FORMAT",
    "FORMATS",
    "PREFERENCE",
    "SNIFF_BYTES",
    "SNIFF_ORDER",
    "Format",
    "choices_text",
    "format_by_magic",
    "format_by_name",
    "format_by_probe",
    "format_names",
    "get_format",
    "preferred_format",
]
