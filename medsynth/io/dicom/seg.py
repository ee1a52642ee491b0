"""DICOM Segmentation (SEG) objects of lesion masks, written and read with highdicom.

``write_seg`` writes one BINARY segment, labelled with the pathology, that references a
DICOM series (the case's own synthetic series, as ``write_dicom`` writes it) and shares its
Frame of Reference; ``read_seg`` gives a SEG's segments back as one label volume with its
geometry. Where the mask's voxels lie is decided by geometry, never by file order: the mask
is moved onto the series' grid with ``medsynth.io.grids.map_to_grid`` before it is written,
and a SEG read back is moved onto a scan's grid the same way (``medsynth.io.masks``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medsynth.errors import InputError, file_error
from medsynth.io.atomic import atomic_path
from medsynth.io.dicom.headers import is_dicom_file, quiet
from medsynth.io.dicom.identity import uid as _uid
from medsynth.io.dicom.write import MANUFACTURER, MODEL_NAME
from medsynth.io.files import walk_files
from medsynth.io.grids import map_to_grid
from medsynth.io.scan import Scan, lps_to_ras

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage

# SNOMED CT segmented property types of the pathologies medsynth knows (pydicom.sr.codedict
# names); any other pathology, or several at once, is a "Lesion".
_PROPERTY_TYPES = {"nodule": "Nodule", "mass": "Mass", "effusion": "PleuralEffusion"}

# Attributes that say what the referenced images are (synthetic, de-identified): a SEG of a
# synthetic series says the same about itself.
_COPIED_MARKS = ("SyntheticData", "PatientIdentityRemoved", "DeidentificationMethod")


def is_seg_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a DICOM file whose SOP class is Segmentation Storage."""
    path = Path(path)
    if not (path.is_file() and is_dicom_file(path)):
        return False
    try:
        with quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SOPClassUID"])
    except Exception:  # a yes/no question: any parse failure means "not a SEG"
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS


def peek_seg_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """``(rows, columns)``, led by the number of referenced images when there are several; header only."""
    path = Path(path)
    try:
        with quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
        referenced = sum(
            len(item.get("ReferencedInstanceSequence", [])) for item in ds.get("ReferencedSeriesSequence", [])
        )
    except Exception as exc:  # pydicom raises many types for malformed headers
        raise file_error(path, f"not a readable DICOM SEG header ({exc})") from exc
    return (referenced, rows, columns) if referenced > 1 else (rows, columns)


def read_seg(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """All segments of a SEG as one bool volume ``(slices, rows, columns)`` and its index -> RAS affine.

    A voxel is True where any segment is set (FRACTIONAL: at least one half). The volume spans
    the frames the SEG stores, which may be fewer than its series has (empty frames omitted).

    Raises:
        InputError: not a readable SEG, or frames that do not form a regular volume.
    """
    import highdicom as hd

    path = Path(path)
    try:
        with quiet():
            seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom/pydicom raise many types for files they cannot use
        raise file_error(path, f"not a readable DICOM SEG ({type(exc).__name__}: {exc})") from exc
    try:
        volume = seg.get_volume()
    except Exception as exc:  # e.g. frames without plane positions, or irregularly spaced
        raise file_error(
            path, f"its frames do not form a regular volume ({exc}); medsynth reads SEGs of image series"
        ) from exc
    array = np.asarray(volume.array)
    if array.ndim == 4:  # one channel per segment
        array = array.max(axis=-1)
    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    values = array >= 0.5 if fractional else array > 0
    return values, lps_to_ras(volume.affine)


def _source_datasets(source: str | os.PathLike[str] | Sequence[Dataset]) -> list[Dataset]:
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        files = [folder] if folder.is_file() else [f for f in walk_files(folder) if is_dicom_file(f)]
        if not files:
            raise InputError(f"{folder}: holds no DICOM file; write_seg needs the series the mask belongs to")
        with quiet():
            return [pydicom.dcmread(f) for f in files]
    datasets = list(source)
    if not datasets:
        raise InputError("write_seg: no source datasets given; pass the series the mask belongs to")
    return datasets


def _segment(pathology: str):
    """The SEG's one segment: labelled with the pathology, made by medsynth (highdicom objects)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medsynth import __version__

    label = str(pathology).strip()
    if not label or len(label) > 64 or any(c in label for c in "\\\r\n\t"):
        raise InputError(f"pathology {pathology!r}: expected 1-64 characters without backslash or control characters")
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=getattr(codes.SCT, _PROPERTY_TYPES.get(label, "Lesion")),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medsynth", version=__version__, family=codes.DCM.ArtificialIntelligence
        ),
    )


def _pin(seg: Dataset, stamp: datetime, series_uid: str) -> None:
    """Replace what highdicom draws afresh on every call (times, a random UID) by values
    fixed by ``stamp`` and the series, so a SEG written twice is the same file."""
    date, time = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S")
    seg.ContentDate, seg.ContentTime = date, time
    seg.InstanceCreationDate, seg.InstanceCreationTime = date, time
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    organization = _uid("seg-dimension-organization", series_uid)
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = organization


def write_seg(
    mask: np.ndarray,
    source: str | os.PathLike[str] | Sequence[Dataset],
    path: str | os.PathLike[str],
    *,
    pathology: str,
    like: Scan | None = None,
    series_description: str = "medsynth lesion mask",
    content_datetime: datetime | None = None,
) -> Path:
    """Write ``mask`` as a DICOM SEG of the series ``source`` (atomic); return ``path``.

    One BINARY segment labelled ``pathology`` (segmented property: SNOMED "Morphologically
    abnormal structure" / "Nodule", "Mass", "Pleural effusion", else "Lesion"), made by the
    algorithm "medsynth" of this version. Patient, study and Frame of Reference come from the
    series; the series and instance UIDs are new, derived from the series' own UID, so
    rewriting a case gives the same UIDs. Synthetic and de-identification marks of the series
    are copied. Empty frames are omitted (all are kept when the mask is empty).

    Args:
        mask: bool or 0/1 array on ``like``'s grid, ``like.shape`` or ``(1, *like.shape)``.
        source: the series: its folder, or its pydicom datasets (pixel data included).
        path: the SEG file to write, e.g. ``seg/case-0001.dcm``.
        pathology: the segment's label, e.g. ``"nodule"``.
        like: the scan the mask is on, e.g. the one that ``write_dicom`` wrote as ``source``;
            default: the series as ``read_dicom`` reads it (a folder only).
        series_description: SeriesDescription of the SEG (at most 64 characters).
        content_datetime: ContentDate/ContentTime and the creation times (type 1 in a SEG);
            default now. With a fixed value, rewriting a case gives the same bytes.

    Raises:
        InputError: the mask's grid is not the series' (``map_to_grid``), a bad argument.

    Example:
        >>> files = write_dicom(scan, "out/dicom/case-1", case_id="case-1")  # doctest: +SKIP
        >>> write_seg(mask, "out/dicom/case-1", "out/seg/case-1.dcm", pathology="nodule", like=scan)  # doctest: +SKIP
    """
    import highdicom as hd

    from medsynth import __version__

    datasets = _source_datasets(source)
    if like is None:
        if not isinstance(source, (str, os.PathLike)):
            raise InputError("write_seg: pass like= (the scan the mask is on) when the series is given as datasets")
        from medsynth.io.dicom.read import read_dicom

        like = read_dicom(Path(source))
    mask = np.asarray(mask)
    if mask.shape == (1, *like.shape):
        mask = mask[0]
    if mask.shape != like.shape:
        raise InputError(
            f"write_seg: mask has shape {mask.shape}, but the scan it is on has {like.shape}; expected equal"
        )
    try:
        with quiet():
            series = (
                hd.get_volume_from_series(datasets)
                if len(datasets) > 1
                else hd.Image.from_dataset(datasets[0], copy=False).get_volume()
            )
    except Exception as exc:  # highdicom names what it could not use; the message carries it
        raise InputError(f"{source}: the series has no regular volume geometry for a SEG ({exc})") from exc
    on_series = map_to_grid(
        mask,
        like.affine,
        series.spatial_shape,
        lps_to_ras(series.affine),
        where="write_seg mask",
        target="DICOM series",
    )
    first = datasets[0]
    pixels = hd.Volume(
        array=on_series.astype(np.uint8),
        affine=series.affine,
        coordinate_system="PATIENT",
        frame_of_reference_uid=first.FrameOfReferenceUID,
    )
    series_uid = str(first.SeriesInstanceUID)
    with quiet():
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment(pathology)],
            series_instance_uid=_uid("seg-series", series_uid),
            series_number=int(first.get("SeriesNumber") or 0) + 1,
            sop_instance_uid=_uid("seg-instance", series_uid),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MODEL_NAME,
            software_versions=f"medsynth {__version__}",
            device_serial_number=MODEL_NAME,
            series_description=series_description,
            content_label="LESION",
            content_description=f"{pathology} mask"[:64],
        )
    _pin(seg, content_datetime or datetime.now(), series_uid)
    for keyword in _COPIED_MARKS:
        if keyword in first:
            setattr(seg, keyword, first.get(keyword))
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


__all__ = ["SEG_SOP_CLASS", "is_seg_file", "peek_seg_shape", "read_seg", "write_seg"]
