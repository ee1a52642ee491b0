"""The output grid of each quota: ``output.shape``/``spacing``, a quota's own, and the field-of-view check.

A quota samples on ``quota.shape``/``spacing`` when it gives them, else on ``output.shape``/
``spacing``, else on the model's grid (then it has no ``GridPlan`` at all, so plans and
manifests of protocols without a grid are as before). Each grid is checked against the model
(``medsynth.sampling.grid.plan_grid``: the downsampling, the trained fields of view) at
``validate`` time, so a bad grid stops the run before any model runs. A quota that inserts
into a dataset's scans keeps each background's own grid: a grid of its own is an error there,
and ``output.shape``/``spacing`` do not apply to it (they apply to generated backgrounds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from medsynth.errors import MedsynthError
from medsynth.protocol.plan_insert import INTO_DATASET

if TYPE_CHECKING:
    from medsynth.protocol.plan import ModelInfo, QuotaPlan
    from medsynth.protocol.schema import Protocol


@dataclass(frozen=True)
class GridPlan:
    """A quota's checked output grid (``shape``/``spacing`` None: the model's)."""

    shape: tuple[int, ...] | None
    spacing: tuple[float, ...] | None
    allow_fov_extrapolation: bool
    fov_extrapolated: bool

    def synthesizer_args(self) -> dict[str, Any]:
        """Keyword arguments of ``Synthesizer`` for this grid."""
        return {"shape": self.shape, "spacing": self.spacing, "allow_fov_extrapolation": self.allow_fov_extrapolation}

    def record(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> dict[str, Any]:
        """The manifest's ``grid`` field for a case written on this grid."""
        return {
            "shape": list(shape),
            "spacing": [round(s, 6) for s in spacing],
            "fov_extrapolated": self.fov_extrapolated,
        }


def check_grids(
    add: Callable[[Any, str], None], p: Protocol, model: ModelInfo, quotas: list[QuotaPlan]
) -> list[QuotaPlan]:
    """``quotas`` with their grids; each problem goes to ``add(location, message)``."""
    from medsynth.models.artifact import load_config
    from medsynth.sampling.grid import plan_grid

    specs = {i: q for i, q in enumerate(p.quotas or [])}
    config = None
    out = []
    for q in quotas:
        spec = specs.get(q.index) if p.quotas is not None else None
        own = spec is not None and (spec.shape is not None or spec.spacing is not None)
        into_dataset = q.insert is not None and q.insert.into == INTO_DATASET
        if own and into_dataset:
            add(
                ("quotas", q.index),
                "shape/spacing: a quota that inserts into a dataset keeps each background's own grid; remove them",
            )
            continue
        shape = spec.shape if own and spec is not None and spec.shape is not None else p.output.shape
        spacing = spec.spacing if own and spec is not None and spec.spacing is not None else p.output.spacing
        if into_dataset or (shape is None and spacing is None):
            out.append(q)
            continue
        where = f"{q.where}.shape/spacing" if own else "output.shape/spacing"
        try:
            config = config or load_config(model.path)
            grid = plan_grid(
                config, shape, spacing, allow_fov_extrapolation=p.output.allow_fov_extrapolation, where=where
            )
        except MedsynthError as exc:
            add(where, str(exc).removeprefix(f"{where}: "))
            continue
        out.append(
            replace(
                q,
                grid=GridPlan(
                    None if shape is None else grid.shape,
                    None if spacing is None else grid.spacing,
                    p.output.allow_fov_extrapolation,
                    grid.fov_extrapolated,
                ),
            )
        )
    return out
