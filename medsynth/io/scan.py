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
    }
)


def clean_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    """Keep only keys in ``SAFE_METADATA_KEYS``."""
    return {k: v for k, v in (meta or {}).items() if k in SAFE_METADATA_KEYS}


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an index->LPS affine to index->RAS (the same matrix serves the inverse)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


ras_to_lps = lps_to_ras


@dataclass
class Scan:
    """A 2D or 3D image in patient space.

    Args:
        array: channel-first float32 array, ``(C, H, W)`` or ``(C, D, H, W)``.
        affine: 4x4 index -> RAS+ mm matrix (see the module docstring).
        modality: DICOM modality code, e.g. ``"CT"`` or ``"MR"``.
        metadata: non-identifying extras; unknown keys are dropped.

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

    def __post_init__(self) -> None:
        self.array = np.ascontiguousarray(self.array, dtype=np.float32)
        if self.array.ndim not in (3, 4):
            raise ValueError(f"Scan.array must be channel-first (C,H,W) or (C,D,H,W); got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Scan.affine must be 4x4; got shape {self.affine.shape}")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise ValueError("Scan.affine is singular: its first three columns must span space")
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
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(round(v, 6)) for v in norms[: self.spatial_dims])

    @property
    def slice_thickness(self) -> float:
        """For 2D: the thickness encoded in the affine's third column; for 3D: the slice spacing."""
        return float(np.linalg.norm(self.affine[:3, 2]))

    @property
    def orientation(self) -> str:
        """Axis codes of the spatial array axes in RAS+, e.g. ``"SPL"`` or ``"RAS"`` (nibabel's codes)."""
        import nibabel as nib

        codes = nib.orientations.aff2axcodes(self.affine)
        return "".join(codes[: self.spatial_dims]) if self.spatial_dims == 3 else "".join(codes[:2])

    def with_array(self, array: np.ndarray, **metadata: Any) -> Scan:
        """A copy with a new array (same geometry) and updated metadata."""
        return Scan(array, self.affine.copy(), self.modality, {**self.metadata, **metadata})

    def __repr__(self) -> str:
        return (
            f"Scan({self.modality}, {self.spatial_dims}D, shape={self.shape}, "
            f"spacing={self.spacing}, orientation={self.orientation})"
        )
