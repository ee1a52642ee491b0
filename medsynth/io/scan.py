"""The ``Scan``: one image with its geometry, modality and non-identifying metadata.

Conventions (the only place they are stated; every reader and writer follows them):

* ``array`` is channel-first float32: ``(C, H, W)`` for 2D, ``(C, D, H, W)`` for 3D.
  For a DICOM-derived volume the spatial axes are (slice, row, column).
* ``affine`` is a 4x4 float64 matrix that maps a spatial array index to patient
  coordinates in millimetres in the **RAS+** frame (x to the patient's Right, y Anterior,
  z Superior), the frame of NIfTI and nibabel. DICOM's LPS+ is converted at the DICOM
  border only (``lps_to_ras``).
  - 3D: ``xyz = affine @ [i, j, k, 1]`` with ``i, j, k`` the indices of array axes 1, 2, 3.
  - 2D: ``xyz = affine @ [i, j, 0, 1]``; the third column is the slice normal times the
    slice thickness, so a 2D scan still knows its plane and thickness.
* ``spacing`` (mm) is derived from the affine, one value per spatial array axis, in array
  axis order. It is never stored separately, so it cannot disagree with the affine.
* Intensities are in modality units: Hounsfield units for CT, scanner units for MR.
* ``metadata`` holds only non-identifying keys (see ``SAFE_METADATA_KEYS``); readers never
  copy names, IDs, dates or UIDs into it.
* ``geometry_guessed`` is None when the file stated the geometry, else a short reason saying
  what the reader assumed (a PNG stores no spacing, a NIfTI with sform/qform codes 0, a DICOM
  without ImagePositionPatient/ImageOrientationPatient). Writers must not present such a
  geometry as measured (``medsynth convert --format dicom`` refuses it unless told).
* ``ScanInfo`` is the same description without the pixels, built from headers alone
  (``medsynth inspect``); ``Scan.info`` gives it for a loaded scan, so both agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Metadata that may travel with a Scan. Anything else is dropped by ``clean_metadata``,
# so a reader cannot leak an identifier by accident.
SAFE_METADATA_KEYS = frozenset(
    {
        "source_format",  # dicom | nifti | png | tiff | phantom | synthetic
        "body_part",
        "series_kind",  # e.g. "volume", "single-frame", "multi-frame", "secondary-capture"
        "pathology",
        "pathologies",
        "subject_group",
        "synthetic",
        "seed",
        "case_id",
        "window_center",
        "window_width",
        "bits_stored",
        "photometric",
        "transfer_syntax",
        "manufacturer_model",
        "sampler",
        "fov_extrapolated",  # sampled outside the model's trained fields of view (sampling.grid)
    }
)


def clean_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    """Keep only keys in ``SAFE_METADATA_KEYS``."""
    return {k: v for k, v in (meta or {}).items() if k in SAFE_METADATA_KEYS}


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an index->LPS affine to index->RAS (the same matrix serves the inverse)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


ras_to_lps = lps_to_ras


def check_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` as a 4x4 float64 matrix; ValueError when it has another shape or is singular."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"Scan.affine must be 4x4; got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("Scan.affine is singular: its first three columns must span space")
    return affine


def affine_spacing(affine: np.ndarray, spatial_dims: int) -> tuple[float, ...]:
    """Voxel size in mm along each of the first ``spatial_dims`` array axes (column norms)."""
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return tuple(float(round(v, 6)) for v in norms[:spatial_dims])


def affine_orientation(affine: np.ndarray, spatial_dims: int) -> str:
    """Axis codes of the spatial array axes in RAS+, e.g. ``"SPL"`` or ``"PL"`` (nibabel's codes)."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(affine)[:spatial_dims])


@dataclass
class ScanInfo:
    """What a scan is, without its pixels: the facts ``medsynth inspect`` prints.

    Built from file headers by ``medsynth.io.describe_path``, or from a loaded scan by
    ``Scan.info``; spacing and orientation derive from the affine exactly as for ``Scan``.

    Args:
        shape: spatial shape, ``(H, W)`` or ``(D, H, W)``.
        channels: number of channels (1 grey, 3 RGB).
        affine: 4x4 index -> RAS+ mm matrix.
        modality: DICOM modality code.
        metadata: non-identifying extras; unknown keys are dropped.
        geometry_guessed: None, or what the reader assumed (see the module docstring).
    """

    shape: tuple[int, ...]
    channels: int
    affine: np.ndarray
    modality: str
    metadata: dict[str, Any] = field(default_factory=dict)
    geometry_guessed: str | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) not in (2, 3):
            raise ValueError(f"ScanInfo.shape must be 2D or 3D; got {self.shape}")
        self.affine = check_affine(self.affine)
        self.modality = str(self.modality).upper()
        self.metadata = clean_metadata(self.metadata)

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return len(self.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis."""
        return affine_spacing(self.affine, self.spatial_dims)

    @property
    def orientation(self) -> str:
        """Axis codes of the spatial array axes in RAS+ (see ``Scan.orientation``)."""
        return affine_orientation(self.affine, self.spatial_dims)


@dataclass
class Scan:
    """A 2D or 3D image in patient space.

    Args:
        array: channel-first float32 array, ``(C, H, W)`` or ``(C, D, H, W)``.
        affine: 4x4 index -> RAS+ mm matrix (see the module docstring).
        modality: DICOM modality code, e.g. ``"CT"`` or ``"MR"``.
        metadata: non-identifying extras; unknown keys are dropped.
        geometry_guessed: None when the source stated the geometry, else what its reader
            assumed, e.g. ``"PNG stores no geometry: ..."`` (see the module docstring).

    Example:
        >>> import numpy as np
        >>> s = Scan(np.zeros((1, 4, 5), np.float32), np.diag([0.5, 0.7, 2.0, 1.0]), "CT")
        >>> s.spacing, s.spatial_dims, s.shape
        ((0.5, 0.7), 2, (4, 5))
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str
    metadata: dict[str, Any] = field(default_factory=dict)
    geometry_guessed: str | None = None

    def __post_init__(self) -> None:
        self.array = np.ascontiguousarray(self.array, dtype=np.float32)
        if self.array.ndim not in (3, 4):
            raise ValueError(f"Scan.array must be channel-first (C,H,W) or (C,D,H,W); got shape {self.array.shape}")
        self.affine = check_affine(self.affine)
        self.modality = str(self.modality).upper()
        self.metadata = clean_metadata(self.metadata)

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.array.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape, without the channel axis."""
        return tuple(self.array.shape[1:])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis."""
        return affine_spacing(self.affine, self.spatial_dims)

    @property
    def slice_thickness(self) -> float:
        """For 2D: the thickness encoded in the affine's third column; for 3D: the slice spacing."""
        return float(np.linalg.norm(self.affine[:3, 2]))

    @property
    def orientation(self) -> str:
        """Axis codes of the spatial array axes in RAS+, e.g. ``"SPL"`` or ``"RAS"`` (nibabel's codes)."""
        return affine_orientation(self.affine, self.spatial_dims)

    @property
    def info(self) -> ScanInfo:
        """The scan's description without its pixels (what ``medsynth inspect`` prints)."""
        return ScanInfo(
            self.shape, int(self.array.shape[0]), self.affine, self.modality, self.metadata, self.geometry_guessed
        )

    def with_array(self, array: np.ndarray, **metadata: Any) -> Scan:
        """A copy with a new array (same geometry, guessed or not) and updated metadata."""
        return Scan(array, self.affine.copy(), self.modality, {**self.metadata, **metadata}, self.geometry_guessed)

    def __repr__(self) -> str:
        return (
            f"Scan({self.modality}, {self.spatial_dims}D, shape={self.shape}, "
            f"spacing={self.spacing}, orientation={self.orientation})"
        )
