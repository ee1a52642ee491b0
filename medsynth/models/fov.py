"""The fields of view a model was trained on, and the check of a requested one against them.

A model learns anatomy at its grid's spacing: every training scan is resampled onto the grid
(``preprocessing.size`` x ``preprocessing.spacing``, centred), so a scan smaller than the grid
fills part of it and a larger one is cut. The range a model has seen, per axis and in mm, runs
from the smallest field of view a training scan filled (its own, cut to the grid's) up to the
grid's. It is recorded in config.json as ``trained_fov: {"min": [...], "max": [...]}`` at
training time; a model without the record (trained before it existed) is taken to know its
grid's field of view alone.

Sampling a field of view outside that range asks the networks for anatomy they never saw
(they are convolutional, so they will draw something). ``check_fov`` refuses it with one line
naming the trained range, unless the caller allows extrapolation; then it says which axes are
outside, so that the manifest and summary can record it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medsynth.errors import InputError

# Relative slack on each bound: a request that rounds to the trained field of view (say 349.9
# mm against 350) is inside.
FOV_TOLERANCE = 0.01


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.1f}" for v in values) + " mm"


@dataclass(frozen=True)
class FieldOfView:
    """Per spatial axis (array order), the smallest and largest field of view in mm."""

    min: tuple[float, ...]
    max: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.min) != len(self.max) or any(lo <= 0 or lo > hi for lo, hi in zip(self.min, self.max)):
            raise InputError(
                f"config.trained_fov: expected 0 < min <= max per axis; got min {self.min}, max {self.max}"
            )

    @classmethod
    def of_scans(cls, fovs: Sequence[Sequence[float]], grid_fov: Sequence[float]) -> FieldOfView:
        """The range that training scans with these fields of view fill on a grid of ``grid_fov``."""
        if not fovs:
            return cls(tuple(grid_fov), tuple(grid_fov))
        filled = [[min(f, g) for f, g in zip(fov, grid_fov)] for fov in fovs]
        return cls(
            tuple(round(min(f[a] for f in filled), 3) for a in range(len(grid_fov))),
            tuple(round(max(f[a] for f in filled), 3) for a in range(len(grid_fov))),
        )

    @classmethod
    def of_config(cls, trained_fov: dict[str, Any] | None, grid_fov: Sequence[float]) -> FieldOfView:
        """A config's record, or the grid's field of view alone for a model without one."""
        if not trained_fov:
            return cls(tuple(grid_fov), tuple(grid_fov))
        try:
            return cls(tuple(float(v) for v in trained_fov["min"]), tuple(float(v) for v in trained_fov["max"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"config.trained_fov: expected {{'min': [...], 'max': [...]}} in mm; got {trained_fov!r}"
            ) from None

    def to_dict(self) -> dict[str, list[float]]:
        return {"min": list(self.min), "max": list(self.max)}

    def describe(self) -> str:
        if self.min == self.max:
            return _mm(self.max)
        return f"{_mm(self.min)} to {_mm(self.max)}"

    def outside(self, fov: Sequence[float]) -> list[int]:
        """The axes on which ``fov`` (mm) lies outside the range, beyond ``FOV_TOLERANCE``."""
        return [
            a
            for a, (f, lo, hi) in enumerate(zip(fov, self.min, self.max))
            if f < lo * (1 - FOV_TOLERANCE) or f > hi * (1 + FOV_TOLERANCE)
        ]


def check_fov(trained: FieldOfView, fov: Sequence[float], *, allow_extrapolation: bool, where: str) -> bool:
    """Whether ``fov`` extrapolates beyond ``trained``; refused (InputError) unless allowed.

    Args:
        where: what the message names, e.g. ``"quotas[0].shape/spacing"``.
    """
    axes = trained.outside(fov)
    if axes and not allow_extrapolation:
        raise InputError(
            f"{where}: field of view {_mm(fov)} is outside the {trained.describe()} the model was trained on "
            f"(axes {axes}); choose a shape x spacing inside it, or set allow_fov_extrapolation: true to "
            "sample it anyway (the manifest and summary then say so)"
        )
    return bool(axes)
