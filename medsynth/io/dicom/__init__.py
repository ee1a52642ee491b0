"""DICOM series in and out: ``read_dicom``, ``read_dicom_series``, ``write_dicom``.

The package has one module per job: ``headers`` finds DICOM files and groups their headers
into series, ``layout`` works out a series' geometry, shape and slice order from those headers,
``read`` decodes the pixels into that layout (``describe_dicom`` stops before the pixels),
``write`` writes a ``Scan`` as a series, and ``geometry`` holds the slice sorting and
affine <-> plane attributes both directions use.

Reading (any vendor, any transfer syntax pydicom's pixel plugins decode):

* A path may be one file, a folder or a tree. Files whose name starts with ``.`` and
  files that are not DICOM are ignored in folders; DICOMDIR indexes and files without
  pixel data (SR, RT plans, presentation states...) are skipped when images are present.
* Files are grouped into series by SeriesInstanceUID, ImageOrientationPatient (rounded to
  3 decimals) and matrix size. A multi-frame file is a series of its own, and so is a
  single-frame file without ImagePositionPatient (a radiograph, a secondary capture).
* Slices are sorted along the slice normal (see ``geometry``); missing, duplicate,
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
  ``Scan.geometry_guessed`` says so (also for an image with orientation but no position).
* A multi-frame file without per-frame positions (cine, simple multi-frame SC) is read as
  a frame stack: a 3D scan whose first axis is the frame index, spaced SpacingBetweenSlices,
  else SliceThickness, else 1 mm (``series_kind`` "frame-stack": that axis may be time);
  ``Scan.geometry_guessed`` says so.
* Modality is the Modality attribute; ``read_dicom(path, modality=...)`` supplies one only for
  files that carry none (else ``"OT"``).

Writing: one file per slice, CT or MR Image Storage for CT/MR scans and Secondary Capture
(ConversionType SYN) otherwise, each marked synthetic (see ``write_dicom``).
"""

from __future__ import annotations

from medsynth.io.dicom.headers import is_dicom_file, peek_dicom_dims
from medsynth.io.dicom.read import describe_dicom, describe_dicom_series, read_dicom, read_dicom_series
from medsynth.io.dicom.write import (
    CONVERTED_DEIDENTIFICATION_METHOD,
    DEIDENTIFICATION_METHOD,
    MANUFACTURER,
    MODEL_NAME,
    write_dicom,
)

__all__ = [
    "CONVERTED_DEIDENTIFICATION_METHOD",
    "DEIDENTIFICATION_METHOD",
    "MANUFACTURER",
    "MODEL_NAME",
    "describe_dicom",
    "describe_dicom_series",
    "is_dicom_file",
    "peek_dicom_dims",
    "read_dicom",
    "read_dicom_series",
    "write_dicom",
]
