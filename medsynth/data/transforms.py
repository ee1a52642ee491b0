"""Preprocessing between a ``Scan`` on disk and the fixed grid a model sees, and back.

A model works on one grid: a canonical orientation, a target spacing and a target size.
``Preprocessing`` holds that grid and the per-modality intensity normalisation, and is
stored in the model's ``config.json`` (``to_dict``/``from_dict``), so sampling undoes exactly
what training did.

Grid. The model grid is axial in the radiological display convention of the built-in
phantoms (see ``medsynth/io/scan.py``):

* 3D: array axes (slice, row, column) point to (superior, posterior, patient left), codes ``SPL``;
* 2D: array axes (row, column) point to (posterior, patient left); the affine's third column is
  ``+z * slice_thickness``.

The grid is centred at the RAS origin in ``output_affine()`` (generated scans have no patient
position to inherit).

Resampling. ``to_model`` is a *direct resample*: one ``torch.nn.functional.grid_sample`` call
maps every model-grid voxel through the model affine and the scan's inverse affine. It does the
work of MONAI's ``Orientation`` + ``Spacing`` + ``ResizeWithPadOrCrop`` (centre crop/pad) in
one interpolation instead of two, and is exact for oblique affines too. The scan's field of
view is centred on the grid; voxels outside it get the normalised value -1 (air: ``lo``).

Intensity. Each modality has a named, invertible normalisation (registry ``INTENSITY_KINDS``);
``linear`` maps ``[lo, hi]`` to ``[-1, 1]`` and clips, so CT comes back in HU (clipped to
``[lo, hi]``) after ``denormalise``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import InputError
from medsynth.io.scan import Scan

# World (RAS) direction of each model-grid array axis: 3D (S, P, L), 2D (P, L).
_CANONICAL_DIRECTIONS = {
    3: np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]),
    2: np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]),
}
_SLICE_NORMAL_2D = np.array([0.0, 0.0, 1.0])


def _linear_forward(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    lo, hi = float(p["lo"]), float(p["hi"])
    return (2.0 * (x - lo) / (hi - lo) - 1.0).clamp(-1.0, 1.0)


def _linear_inverse(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    lo, hi = float(p["lo"]), float(p["hi"])
    return (x.clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo) + lo


def _linear_check(modality: str, p: dict[str, Any]) -> None:
    try:
        lo, hi = float(p["lo"]), float(p["hi"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"preprocessing.intensity.{modality}: linear normalisation needs numeric 'lo' and 'hi'; got {p}"
        ) from None
    if not hi > lo:
        raise InputError(f"preprocessing.intensity.{modality}: need hi > lo; got lo={lo}, hi={hi}")


# name -> (forward to [-1, 1], inverse back to modality units, parameter check)
INTENSITY_KINDS: dict[
    str,
    tuple[
        Callable[[torch.Tensor, dict[str, Any]], torch.Tensor],
        Callable[[torch.Tensor, dict[str, Any]], torch.Tensor],
        Callable[[str, dict[str, Any]], None],
    ],
] = {"linear": (_linear_forward, _linear_inverse, _linear_check)}


@dataclass
class Preprocessing:
    """The model grid and the per-modality intensity normalisation.

    Args:
        spatial_dims: 2 or 3.
        size: grid shape, one value per spatial axis (array order).
        spacing: grid spacing in mm, one value per spatial axis (array order).
        intensity: per modality, ``{"kind": "linear", "lo": ..., "hi": ...}``.
        slice_thickness: 2D only: the thickness (mm) written into the third affine column.

    Example:
        >>> pre = Preprocessing(2, (64, 64), (5.5, 5.5), {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}})
        >>> x = pre.to_model(scan)            # doctest: +SKIP  (1, 64, 64) in [-1, 1]
        >>> back = pre.from_model(x, "CT")    # doctest: +SKIP  a Scan in HU on the model grid
    """

    spatial_dims: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    intensity: dict[str, dict[str, Any]] = field(default_factory=dict)
    slice_thickness: float = 1.0

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"preprocessing.spatial_dims: expected 2 or 3; got {self.spatial_dims}")
        self.size = tuple(int(s) for s in self.size)
        self.spacing = tuple(float(s) for s in self.spacing)
        for name, value in (("size", self.size), ("spacing", self.spacing)):
            if len(value) != self.spatial_dims or min(value) <= 0:
                raise InputError(
                    f"preprocessing.{name}: expected {self.spatial_dims} positive values; got {list(value)}"
                )
        self.intensity = {str(m).upper(): dict(p) for m, p in self.intensity.items()}
        for modality, params in self.intensity.items():
            kind = params.get("kind")
            if kind not in INTENSITY_KINDS:
                raise InputError(
                    f"preprocessing.intensity.{modality}.kind: unknown {kind!r}; "
                    f"expected one of {sorted(INTENSITY_KINDS)}"
                )
            INTENSITY_KINDS[kind][2](modality, params)

    # -- intensity ---------------------------------------------------------------------------

    def _params(self, modality: str) -> dict[str, Any]:
        params = self.intensity.get(str(modality).upper())
        if params is None:
            raise InputError(
                f"modality {modality!r} has no intensity normalisation in this model; "
                f"known modalities: {sorted(self.intensity)}"
            )
        return params

    def normalise(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Modality units (HU for CT) -> model range ``[-1, 1]``."""
        p = self._params(modality)
        return INTENSITY_KINDS[p["kind"]][0](x, p)

    def denormalise(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Model range -> modality units; the inverse of ``normalise`` inside ``[lo, hi]``."""
        p = self._params(modality)
        return INTENSITY_KINDS[p["kind"]][1](x, p)

    # -- geometry ----------------------------------------------------------------------------

    def _directions(self) -> np.ndarray:
        """(spatial_dims, 3) world step of one voxel along each grid axis."""
        return _CANONICAL_DIRECTIONS[self.spatial_dims] * np.asarray(self.spacing)[:, None]

    def output_affine(self) -> np.ndarray:
        """Index -> RAS affine of the model grid, centred at the origin."""
        aff = np.eye(4)
        steps = self._directions()
        aff[:3, : self.spatial_dims] = steps.T
        if self.spatial_dims == 2:
            aff[:3, 2] = _SLICE_NORMAL_2D * self.slice_thickness
        centre_index = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        aff[:3, 3] = -steps.T @ centre_index
        return aff

    def _source_index_grid(self, scan: Scan) -> np.ndarray:
        """For every grid voxel, the (fractional) index into ``scan`` it samples: (*size, dims)."""
        d = self.spatial_dims
        steps = self._directions()  # (d, 3)
        src_aff = scan.affine
        src_shape = np.asarray(scan.shape, dtype=np.float64)
        src_centre_idx = (src_shape - 1.0) / 2.0
        if d == 3:
            to_index = np.linalg.inv(src_aff[:3, :3])
        else:
            in_plane = src_aff[:3, :2]
            normal = np.cross(in_plane[:, 0], in_plane[:, 1])
            normal /= np.linalg.norm(normal)
            # The 2D grid is axial; a coronal or sagittal slice cannot be put on it without
            # inventing data, so it is refused rather than silently projected.
            if abs(normal @ _SLICE_NORMAL_2D) < 0.9:
                raise InputError(
                    f"2D scan with orientation {scan.orientation!r} is not axial "
                    f"(slice normal {np.round(normal, 3).tolist()}); this model's 2D grid is axial: "
                    "reformat the slices to axial first"
                )
            to_index = np.linalg.pinv(in_plane)  # (2, 3): world offset in the plane -> index offset
        grid_centre = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        axes = [np.arange(n, dtype=np.float64) - c for n, c in zip(self.size, grid_centre)]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (*size, d) grid offsets
        world_offsets = mesh @ steps  # (*size, 3)
        return world_offsets @ to_index.T + src_centre_idx  # (*size, d) source indices

    def to_model(self, scan: Scan) -> torch.Tensor:
        """A ``Scan`` -> ``(C, *size)`` float32 tensor on the model grid, normalised to ``[-1, 1]``.

        Raises:
            InputError: wrong dimensionality, unknown modality or a non-axial 2D slice.
        """
        if scan.spatial_dims != self.spatial_dims:
            raise InputError(
                f"scan is {scan.spatial_dims}D but the model grid is {self.spatial_dims}D: "
                f"use a {scan.spatial_dims}D model or convert the data"
            )
        x = self.normalise(torch.from_numpy(scan.array), scan.modality)
        src_index = self._source_index_grid(scan)
        # grid_sample wants coordinates in [-1, 1] (align_corners=True: -1 = first voxel centre)
        # and in reversed axis order (x = last array axis).
        src_shape = np.asarray(scan.shape, dtype=np.float64)
        norm = 2.0 * src_index / np.maximum(src_shape - 1.0, 1.0) - 1.0
        grid = torch.from_numpy(norm[..., ::-1].copy()).float().unsqueeze(0)
        # Shift so that zero padding outside the scan means -1 (air) after shifting back.
        sampled = F.grid_sample((x + 1.0).unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (sampled[0] - 1.0).contiguous()

    def from_model(self, x: torch.Tensor, modality: str, **metadata: Any) -> Scan:
        """A ``(C, *size)`` model-range tensor -> ``Scan`` in modality units on the model grid."""
        if tuple(x.shape[1:]) != self.size:
            raise InputError(f"array of shape {tuple(x.shape)} does not match the model grid {self.size}")
        arr = self.denormalise(x.detach().float().cpu(), modality).numpy()
        return Scan(arr, self.output_affine(), str(modality).upper(), metadata)

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form stored in config.json."""
        return {
            "spatial_dims": self.spatial_dims,
            "size": list(self.size),
            "spacing": list(self.spacing),
            "intensity": {m: dict(p) for m, p in self.intensity.items()},
            "slice_thickness": self.slice_thickness,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of ``to_dict``; unknown keys are an error."""
        allowed = {"spatial_dims", "size", "spacing", "intensity", "slice_thickness"}
        extra = set(d) - allowed
        if extra:
            raise InputError(f"preprocessing: unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")
        return cls(**d)
