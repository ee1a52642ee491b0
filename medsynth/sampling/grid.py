"""The output grid of sampling: any shape and spacing, sampled at the model's own spacing.

The networks are convolutional, so they sample any latent grid that the autoencoder's
downsampling divides, but they draw anatomy at the spacing they were trained at: a voxel of
the model is ``preprocessing.spacing`` mm whatever the caller calls it. So a request for
``shape`` at ``spacing`` is sampled on the *working grid*, the same field of view at the model's
spacing (its sides rounded to multiples of the downsampling), and resampled onto the requested
grid (linear interpolation, centres aligned). With the model's spacing (the default) the working
grid is the requested one, nothing is resampled, and a shape the downsampling does not divide is
refused with the nearest valid shapes.

Example:
    >>> grid = plan_grid(model.config, shape=(256, 256, 256), spacing=(1.367, 1.367, 1.367))  # doctest: +SKIP
    >>> grid.work_shape, grid.resampled                                                # doctest: +SKIP
    ((48, 48, 48), True)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.models.fov import check_fov

if TYPE_CHECKING:
    from medsynth.models.ldm import LatentDiffusionModel, ModelConfig

# Spacings closer than this (relative) to the model's count as the model's: no resampling.
_SAME_SPACING = 1e-4


@dataclass(frozen=True)
class SampleGrid:
    """A checked output grid.

    Attributes:
        shape, spacing: the grid of the returned scans (array order; mm).
        work_shape: the grid sampled at the model's spacing.
        resampled: whether the working grid is resampled onto ``shape`` x ``spacing``.
        fov_extrapolated: whether the field of view lies outside the one the model was trained on.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    work_shape: tuple[int, ...]
    resampled: bool
    fov_extrapolated: bool

    @property
    def fov(self) -> tuple[float, ...]:
        return tuple(n * s for n, s in zip(self.shape, self.spacing))


def nearest_valid(shape: Sequence[int], down: int) -> list[tuple[int, ...]]:
    """The valid shapes next to ``shape``: each side rounded down and up to a multiple of ``down``."""
    lower = tuple(max(down, (n // down) * down) for n in shape)
    upper = tuple(-(-n // down) * down for n in shape)
    return [lower] if lower == upper else [lower, upper]


def _values(name: str, value: object, dims: int, kind: type) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != dims:
        raise InputError(f"{name}={value!r}: expected {dims} values, one per spatial axis (array order)")
    out = []
    for v in value:
        ok = isinstance(v, numbers.Integral) if kind is int else isinstance(v, numbers.Real)
        if isinstance(v, bool) or not ok or v <= 0:
            what = "positive integers" if kind is int else "positive numbers (mm)"
            raise InputError(f"{name}={list(value)!r}: expected {what}")
        out.append(kind(v))
    return tuple(out)


def plan_grid(
    config: ModelConfig,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    *,
    allow_fov_extrapolation: bool = False,
    where: str = "shape/spacing",
) -> SampleGrid:
    """Check a requested output grid against the model and its trained fields of view.

    Raises:
        InputError: a malformed shape or spacing, a shape the downsampling cannot divide (at
            the model's spacing), or a field of view outside the trained range unless allowed.
    """
    pre, down, dims = Preprocessing.from_dict(config.preprocessing), config.downsampling, config.spatial_dims
    shape_t = pre.size if shape is None else _values(f"{where}: shape", shape, dims, int)
    spacing_t = pre.spacing if spacing is None else _values(f"{where}: spacing", spacing, dims, float)
    same = all(abs(s / m - 1.0) <= _SAME_SPACING for s, m in zip(spacing_t, pre.spacing))
    if same:
        if any(n % down for n in shape_t):
            options = " or ".join(str(list(s)) for s in nearest_valid(shape_t, down))
            raise InputError(
                f"{where}: shape {list(shape_t)} cannot be sampled: every side must be a multiple of the "
                f"autoencoder's downsampling factor {down}; nearest valid shapes {options}"
            )
        work = shape_t
    else:  # the same field of view at the model's spacing, sides rounded to the downsampling
        work = tuple(max(down, round(n * s / (m * down)) * down) for n, s, m in zip(shape_t, spacing_t, pre.spacing))
    fov = [n * s for n, s in zip(shape_t, spacing_t)]
    extrapolated = check_fov(config.fields_of_view(), fov, allow_extrapolation=allow_fov_extrapolation, where=where)
    return SampleGrid(tuple(shape_t), tuple(spacing_t), tuple(work), not same, extrapolated)


def work_preprocessing(model: LatentDiffusionModel, grid: SampleGrid) -> Preprocessing:
    """The model's preprocessing on the working grid (its spacing and intensities, the grid's size)."""
    return replace(model.preprocessing, size=grid.work_shape)


def to_output_grid(scan: Scan, grid: SampleGrid, model: LatentDiffusionModel) -> Scan:
    """A scan on the working grid, resampled onto ``grid`` (returned as is when not ``resampled``).

    Reuses the model's own resampling (``Preprocessing.to_model``, linear, air outside the
    scan), so sampling another spacing goes through the same geometry code as training.
    """
    if not grid.resampled:
        return scan
    out = replace(model.preprocessing, size=grid.shape, spacing=grid.spacing)
    return out.from_model(out.to_model(scan), scan.modality, **scan.metadata)
