"""Writing a ``Scan`` as a DICOM series: one file per slice, marked synthetic (see ``write_dicom``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, TM, format_number_as_ds

from medsynth.errors import InputError
from medsynth.io.dicom.geometry import GEOMETRY_ASSUMED_NOTE, Plane, decompose_affine
from medsynth.io.dicom.identity import SeriesIdentity, description, series_identity
from medsynth.io.dicom.identity import uid as _uid
from medsynth.io.provenance import generation_time
from medsynth.io.scan import Scan
from medsynth.io.streaming import VolumeStats, volume_stats

_CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
_MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
_SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")

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
# CT display presets (W/L in HU) with their WindowCenterWidthExplanation, the first one a
# viewer opens with: mediastinum (soft tissue of the chest: effusions, masses), then lung
# (nodules in aerated lung). A window computed from the data (e.g. -255/1490) shows neither well.
CT_WINDOWS: tuple[tuple[str, float, float], ...] = (("MEDIASTINUM", 40.0, 350.0), ("LUNG", -600.0, 1500.0))
# MR is stored in its own units: stored value = round(value), no Rescale Slope/Intercept (the MR
# Image IOD has no Modality LUT module), so a viewer shows the values and windows as written.
MR_PRECISION = 0.5


@dataclass(frozen=True)
class _Encoding:
    """How float modality values become stored integers: value = stored * slope + intercept.

    Decided once from the whole volume's ``VolumeStats``, applied a slice at a time
    (``encode``), so the series is written without an integer copy of the volume.
    """

    rule: str  # "round": round(v); "cast": v as it is (whole numbers); "scale": round(v / slope)
    slope: str  # DS strings: the exact values the file carries and the quantisation used
    intercept: str
    signed: bool

    def encode(self, frame: np.ndarray) -> np.ndarray:
        """The stored integers of one slice (int16 if ``signed``, else uint16)."""
        dtype = np.int16 if self.signed else np.uint16
        if self.rule == "cast":
            return frame.astype(dtype)
        if self.rule == "scale":
            return np.round(frame / float(self.slope)).astype(dtype)
        return np.round(frame).astype(dtype)


def _ds(value: float) -> str:
    return format_number_as_ds(float(value) + 0.0)


def _encode_mono(stats: VolumeStats, modality: str) -> _Encoding:
    """Quantise to 16 bits, losing at most half a stored step (``slope / 2``).

    CT: int16 with slope 1 and intercept 0 (whole HU) when the values fit, as CT readers
    expect. Others: integers that fit are stored as they are (slope 1); fractional values
    use the whole 16-bit range (uint16 if non-negative, else int16) with intercept 0.
    """
    lo, hi, integral = stats.lo, stats.hi, stats.integral
    if modality == "CT" and lo >= -32768 and hi <= 32767:
        return _Encoding("round", "1", "0", True)
    if integral and lo >= 0 and hi <= 65535:
        return _Encoding("cast", "1", "0", False)
    if integral and lo >= -32768 and hi <= 32767:
        return _Encoding("cast", "1", "0", True)
    signed = lo < 0
    limit = 32767 if signed else 65535
    peak = max(abs(lo), abs(hi))
    # One step of headroom so that the DS-rounded slope cannot push the peak past the limit.
    slope = _ds(peak / (limit - 1)) if peak > 0 else "1"
    return _Encoding("scale", slope, "0", signed)


def _encode_mr(stats: VolumeStats, case_id: str) -> _Encoding:
    """MR in its own units: whole numbers (at most ``MR_PRECISION`` off), uint16, or int16 if negative."""
    # Rounding is monotonic, so the range of the rounded values is the rounded range.
    lo, hi = float(np.round(stats.lo)), float(np.round(stats.hi))
    if lo >= 0 and hi <= 65535:
        return _Encoding("round", "1", "0", False)
    if lo >= -32768 and hi <= 32767:
        return _Encoding("round", "1", "0", True)
    raise InputError(
        f"MR scan for case {case_id} has values {lo:g}..{hi:g}: MR Image Storage keeps whole numbers in the "
        "scan's own units within 16 bits (no Rescale Slope): rescale the intensities, or write "
        "sop_class='sc' or NIfTI"
    )


def _window(scan: Scan, values: np.ndarray) -> tuple[list[str], list[str], list[str] | None]:
    """WindowCenter, WindowWidth and WindowCenterWidthExplanation (None: no explanation).

    CT: the presets ``CT_WINDOWS``. Others: the scan's ``window_*`` metadata, else the
    0.5-99.5 percentiles of its values (one window for the whole series), in the units a
    viewer windows: for MR the stored values themselves.
    """
    if scan.modality == "CT":
        return [_ds(c) for _, c, _ in CT_WINDOWS], [_ds(w) for _, _, w in CT_WINDOWS], [n for n, _, _ in CT_WINDOWS]
    center, width = scan.metadata.get("window_center"), scan.metadata.get("window_width")
    if center is None or width is None or float(width) <= 0:
        # A strided sample of at most ~1M voxels: the window is a display hint, and exact
        # percentiles of a 300x512x512 volume cost seconds.
        lo, hi = np.percentile(values.ravel()[:: max(1, values.size // 1_000_000)], [0.5, 99.5])
        center, width = (lo + hi) / 2, max(hi - lo, 1.0)
    return [_ds(center)], [_ds(width)], None


def _check_lo(name: str, value: str) -> None:
    if len(value) > 64 or any(c in value for c in "\\\r\n\t\x0c\x1b"):
        raise InputError(
            f"{name} {value!r}: expected at most 64 characters without backslash or control characters (DICOM LO)"
        )


def _check_write_args(
    scan: Scan, case_id: str, series_description: str, sop_class: str, body_part: str | None
) -> tuple[str, VolumeStats]:
    """Validate arguments; return the IOD to write ("CT", "MR" or "SC") and the values' statistics."""
    if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
        raise InputError(
            f"case_id {case_id!r}: expected 1-56 characters of letters, digits, '.', '_' or '-' "
            "(it becomes part of PatientID 'SYN-<case_id>-<digest>'), starting with a letter or digit"
        )
    _check_lo("series_description", series_description)
    if body_part is not None and not _CS.match(body_part):
        raise InputError(
            f"body_part {body_part!r}: expected a DICOM Body Part Examined code (CS: 1-16 capitals, "
            "digits, space or '_', such as CHEST)"
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
    # One pass over slabs of the slice axis (channels moved after it: a view), not a whole-array mask.
    stats = volume_stats(np.moveaxis(scan.array, 1, 0))
    if not stats.finite:
        raise InputError("scan array holds NaN or infinite values; expected finite intensities")
    if scan.array.shape[0] == 3:
        if stats.lo < -0.5 or stats.hi >= 255.5:
            raise InputError(
                f"3-channel scan has values {stats.lo:g}..{stats.hi:g}; RGB DICOM is 8-bit: expected 0..255"
            )
        return "SC", stats
    if sop_class == "sc" or scan.modality not in ("CT", "MR"):
        return "SC", stats
    return scan.modality, stats


@dataclass(frozen=True)
class _Study:
    """What every file of the series says about its study besides the UIDs."""

    identity: SeriesIdentity
    study_description: str
    series_description: str
    created: datetime  # UTC: the generation (or conversion) time


def _base_dataset(*, iod: str, modality: str, study: _Study, index: int, synthetic: bool) -> Dataset:
    """Patient/study/series/equipment/SOP common modules via highdicom, plus the synthetic marks."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medsynth import __version__

    ident = study.identity
    sop_class_uid = {"CT": _CT_IMAGE, "MR": _MR_IMAGE, "SC": _SC_IMAGE}[iod]
    software = f"medsynth {__version__}"
    texts = (study.series_description, study.study_description)
    date, time = study.created.strftime("%Y%m%d"), study.created.strftime("%H%M%S")
    ds = hd.SOPClass(
        study_instance_uid=ident.study_uid,
        series_instance_uid=ident.series_uid,
        series_number=1,
        sop_instance_uid=_uid("instance", ident.series_uid, str(index)),
        sop_class_uid=sop_class_uid,
        instance_number=index + 1,
        modality=modality,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        patient_id=ident.patient_id,
        patient_name=ident.patient_name,
        study_id=ident.study_id,
        study_date=date,
        study_time=time,
        series_description=study.series_description,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software,
        specific_character_set="ISO_IR 192" if not all(t.isascii() for t in texts) else None,
    )
    ds.StudyDescription = study.study_description
    # highdicom stamps creation/content date-time with "now": every date is the generation time
    # instead (for a protocol run its start, recorded once), so a rewrite gives the same bytes.
    ds.SeriesDate, ds.SeriesTime = DA(date), TM(time)
    ds.ContentDate, ds.ContentTime = DA(date), TM(time)
    ds.InstanceCreationDate, ds.InstanceCreationTime = DA(date), TM(time)
    ds.TimezoneOffsetFromUTC = "+0000"  # the times are UTC
    ds.SyntheticData = "YES" if synthetic else "NO"
    ds.BurnedInAnnotation = "NO"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD if synthetic else CONVERTED_DEIDENTIFICATION_METHOD
    purpose, contribution = (
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
            contribution_description=contribution,
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
    window: tuple[list[str], list[str], list[str] | None] | None,
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
        ds.PixelData = np.ascontiguousarray(frame, dtype="<i2" if enc.signed else "<u2").tobytes()
        if iod != "MR":  # the MR Image IOD has no Modality LUT module: MR is stored in its own units
            ds.RescaleIntercept, ds.RescaleSlope = enc.intercept, enc.slope
            # RescaleType: CT Image (type 3) and Modality LUT module (type 1C)
            ds.RescaleType = "HU" if scan.modality == "CT" else "US"
        assert window is not None  # write_dicom computes it with ``enc``
        centers, widths, explanations = window
        ds.WindowCenter = centers if len(centers) > 1 else centers[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
        if explanations:
            ds.WindowCenterWidthExplanation = explanations if len(explanations) > 1 else explanations[0]
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


def _frame(scan: Scan, enc: _Encoding | None, index: int) -> np.ndarray:
    """Slice ``index`` (a 2D scan: its one image) as written: the stored integers, or RGB 8-bit."""
    part = scan.array[:, index] if scan.spatial_dims == 3 else scan.array
    if enc is None:  # RGB: (3, H, W) -> (H, W, 3)
        return np.round(np.moveaxis(part, 0, -1)).astype(np.uint8)
    return enc.encode(part[0])


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
    series_description: str | None = None,
    sop_class: str = "auto",
    synthetic: bool = True,
    uid_namespace: str = "",
    seed: int | None = None,
    model: str | None = None,
    pathology: str | None = None,
    body_part: str | None = None,
    created: datetime | None = None,
) -> list[Path]:
    """Write ``scan`` as a DICOM series, one file per slice, into ``out_dir``.

    CT and MR scans become CT/MR Image Storage (2D and 3D); other modalities, RGB scans and
    ``sop_class="sc"`` become Secondary Capture (ConversionType SYN). Every file carries
    SyntheticData YES, ImageType DERIVED\\SECONDARY, a Contributing Equipment item
    "Synthesizing Equipment" (medsynth and its version), PatientIdentityRemoved YES, a patient,
    study and series identity of its own (``medsynth.io.dicom.identity``), Study Date/Time,
    Study ID, Study and Series Descriptions naming medsynth, the condition and the model, and
    the full plane geometry (also in Secondary Captures, as standard extended attributes).
    CT carries the window presets ``CT_WINDOWS``; MR is stored in its own units (whole numbers,
    no Rescale Slope). The same arguments give the same bytes. The series is streamed: one
    pass over the values (``medsynth.io.streaming.volume_stats``) fixes the encoding for the
    whole volume, then each slice is encoded and written in turn, so no copy of the volume is
    made (a 512 x 512 x 256 CT: see docs/performance.md). A scan whose geometry was
    guessed (``scan.geometry_guessed``) gets ImageComments
    ``"geometry assumed by medsynth, not measured: <reason>"``.

    Args:
        scan: the image; grayscale (1 channel) or RGB (3 channels, values 0..255).
        out_dir: the series folder; built under a temporary name and renamed when complete.
            An existing folder holding only ``.dcm`` files (an earlier write) is replaced;
            any other existing non-empty folder is refused.
        case_id: the case, part of PatientID ``SYN-<case_id>-<digest>`` and PatientName
            ``SYNTHETIC^<case_id>-<digest>``; the digest (of ``uid_namespace``, ``case_id`` and
            ``seed``, or without a namespace of the scan's content) keeps equal case ids apart.
        series_description: SeriesDescription (at most 64 characters); default the study's
            description (``medsynth synthetic <pathology> <modality>, model <model>``).
        sop_class: ``"auto"`` or ``"sc"`` (force Secondary Capture).
        synthetic: ``False`` for a converted real scan (``medsynth convert``): SyntheticData
            NO, an anonymous patient ``ANONYMOUS^<case_id>-<digest>``, "Processing Equipment" as
            the contribution, ConversionType WSD; its dates are those of the conversion (the
            source's are identifiers and are not carried over); the de-identification marks stay.
        uid_namespace: mixed into every id, so equal case ids in different datasets (say,
            two protocols) never share one; the protocol runner passes the protocol's hash.
        seed: the case's seed, mixed into the identity.
        model: the model's id, named in the descriptions.
        pathology: the case's pathology label (``effusion|nodule``), named in the descriptions.
        body_part: BodyPartExamined (``CHEST``); default the scan's ``body_part`` metadata, else
            the attribute is left out.
        created: the generation (or conversion) time for Study/Series/Content Date and Time
            (written in UTC, TimezoneOffsetFromUTC +0000); default
            ``medsynth.io.provenance.generation_time()`` (now, or SOURCE_DATE_EPOCH).

    Returns:
        The written file paths in slice order (``00001.dcm``, ...).

    Example:
        >>> write_dicom(scan, "out/dicom/case-0001", case_id="case-0001")  # doctest: +SKIP
    """
    from medsynth.io.atomic import atomic_path

    if model is not None:
        _check_lo("model", model)
    study_description = description(synthetic=synthetic, modality=scan.modality, pathology=pathology, model=model)
    series_description = study_description if series_description is None else series_description
    if body_part is None:
        from_scan = str(scan.metadata.get("body_part", "")).strip().upper()
        body_part = from_scan if _CS.match(from_scan) else None
    iod, stats = _check_write_args(scan, case_id, series_description, sop_class, body_part)
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
    created = (created or generation_time()).astimezone(UTC)
    study = _Study(
        identity=series_identity(
            scan,
            case_id=case_id,
            synthetic=synthetic,
            namespace=uid_namespace,
            seed=seed,
            series_description=series_description,
            iod=iod,
        ),
        study_description=study_description,
        series_description=series_description,
        created=created,
    )
    if scan.array.shape[0] == 3:
        enc = None
    else:
        enc = _encode_mr(stats, case_id) if iod == "MR" else _encode_mono(stats, scan.modality)
    window = None if enc is None else _window(scan, scan.array[0])
    plane = geometry.plane
    normal = plane.normal
    names = [f"{i + 1:05d}.dcm" for i in range(scan.shape[0] if scan.spatial_dims == 3 else 1)]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i in range(len(names)):
            # Streamed: each slice is encoded as it is written, with the volume-wide encoding.
            frame = _frame(scan, enc, i)
            ds = _base_dataset(iod=iod, modality=scan.modality, study=study, index=i, synthetic=synthetic)
            ds.FrameOfReferenceUID = study.identity.frame_of_reference_uid
            ds.PositionReferenceIndicator = None
            if body_part is not None:
                # Laterality (type 2C, for paired body parts) is left out: the body parts medsynth
                # models make (CHEST) are unpaired, and an empty value would claim "unknown".
                ds.BodyPartExamined = body_part
            else:
                # Without a body part, whether Laterality applies is itself unknown: type 2C
                # then asks for it, empty (dciodvfy reports it missing otherwise).
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
            if scan.geometry_guessed:
                # The attributes above state a geometry; say that the source did not (General
                # Image module, type 3, in every IOD written here).
                ds.ImageComments = f"{GEOMETRY_ASSUMED_NOTE}: {scan.geometry_guessed}"
            _add_image(ds, iod=iod, scan=scan, frame=frame, enc=enc, window=window, synthetic=synthetic)
            ds.save_as(tmp / names[i], enforce_file_format=True)
    return [out / name for name in names]
