"""The checks and plan of an insertion quota (``quotas[i].insert``), before any model runs.

An insertion quota paints a lesion made by the model's lesion model (``MODEL_DIR/lesion/``)
into a healthy background: rows of a dataset CSV (real scans, kept on their own grid) or a
``normal`` scan the whole-image model samples (``into: generated``). ``check_insert`` checks it
against the lesion model (vocabularies, samplers, steps, the size range against its crop,
its intensity normalisation against the whole-image model's), the dataset (readable, rows of
the background class, their dimensionality) and, with the gate on, the lesion privacy index;
every problem is one line of the caller's collector. ``plan.py`` calls it per quota.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medsynth.conditions import NORMAL, Condition, group_key
from medsynth.errors import MedsynthError
from medsynth.io.formats import get_format
from medsynth.protocol.schema import IntensityRegion, QuotaSpec
from medsynth.protocol.schema import Protocol as ProtocolDoc
from medsynth.pydantic_errors import format_loc

if TYPE_CHECKING:
    from medsynth.data.catalog import Catalog
    from medsynth.lesions.model import LesionModel
    from medsynth.protocol.plan import ModelInfo

INTO_DATASET, INTO_GENERATED = "dataset", "generated"


class Errors(Protocol):
    def add(self, loc: tuple[Any, ...] | str, message: str) -> None: ...


@dataclass(frozen=True)
class InsertPlan:
    """How an insertion quota's cases are made (paths never reach an output).

    Args:
        into: ``"dataset"`` or ``"generated"``.
        size_mm: ``(lo, hi)``, the equivalent diameter range.
        region: the ``resolve_region`` spec: ``"lungs"``, ``"body"`` or ``{"intensity": [lo, hi]}``.
        method, steps, guidance_scale: the lesion model's inpainting sampler.
        dataset: the background CSV (``into: dataset``).
        dataset_sha256: its bytes' SHA-256 (a changed CSV changes the plan).
        background: the background class, e.g. ``normal/CT``.
        rows: the 0-based data rows of the CSV used as backgrounds, in CSV order.
        catalog: the CSV as read (not part of the plan's identity).
    """

    into: str
    size_mm: tuple[float, float]
    region: str | dict[str, list[float]]
    method: str
    steps: int
    guidance_scale: float
    dataset: Path | None = None
    dataset_sha256: str | None = None
    background: str = ""
    rows: tuple[int, ...] = ()
    catalog: Catalog | None = field(default=None, compare=False, repr=False)

    def doc(self) -> dict[str, Any]:
        """The JSON-ready part of the plan's hash."""
        return {
            "into": self.into,
            "size_mm": list(self.size_mm),
            "region": self.region,
            "method": self.method,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "dataset": None if self.dataset is None else str(self.dataset),
            "dataset_sha256": self.dataset_sha256,
            "background": self.background,
            "rows": list(self.rows),
        }


def lesion_model_of(model: ModelInfo, cache: dict[Path, Any]) -> LesionModel | None:
    """The model directory's lesion model (read once per validation); None when it has none.

    Raises:
        InputError: a damaged lesion model.
    """
    from medsynth.lesions.model import load_lesion_model

    if model.path not in cache:
        cache[model.path] = load_lesion_model(model.path)
    return cache[model.path]


def _region_spec(value: Any, modality: str) -> str | dict[str, list[float]]:
    if value is None:
        from medsynth.lesions.case import default_region

        return default_region(modality)
    if isinstance(value, IntensityRegion):
        return {"intensity": [float(v) for v in value.intensity]}
    return str(value)


def _sampler(
    errs: Errors, loc: tuple[Any, ...], q: QuotaSpec, p: ProtocolDoc, kind: str, timesteps: int, who: str
) -> tuple[str, int]:
    from medsynth.sampling.samplers import DEFAULT_SAMPLER, available_samplers

    allowed = available_samplers(kind)
    written = q.method or p.sampler.method
    method = written if written is not None else DEFAULT_SAMPLER.get(kind, "")
    if method not in allowed:
        where = (*loc, "method") if q.method else ("sampler", "method")
        errs.add(where, f"{method!r} does not work with {who} (trained as {kind!r}); allowed: {', '.join(allowed)}")
    steps = q.steps if q.steps is not None else p.sampler.steps
    if steps > timesteps:
        errs.add((*loc, "steps"), f"{steps} is out of range; {who} allows 1 to {timesteps} steps")
    return method, steps


def _size(
    errs: Errors, loc: tuple[Any, ...], q: QuotaSpec, cls: Condition, cfg: Any, who: str
) -> tuple[float, float] | None:
    assert q.insert is not None
    if q.insert.size_mm is not None:
        lo, hi = (float(v) for v in q.insert.size_mm)
    else:
        spans = [cfg.sizes_mm[p] for p in cls.pathologies if p in cfg.sizes_mm]
        if not spans:
            errs.add(
                (*loc, "insert", "size_mm"),
                f"{who} records no training lesion size for {cls.label!r}; give size_mm: [lo, hi] in mm",
            )
            return None
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    # The lesion's box at the model's spacing, with the model's margin on each side and a voxel to
    # spare, must fit the crop (``crops.fits_crop``): no diameter may exceed the smallest such extent.
    largest = min((n - 2 * cfg.margin - 2) * s for n, s in zip(cfg.crop_size, cfg.spacing))
    if hi > largest:
        crop = "x".join(f"{n * s:g}" for n, s in zip(cfg.crop_size, cfg.spacing))
        errs.add(
            (*loc, "insert", "size_mm"),
            f"[{lo:g}, {hi:g}] mm is too large for {who}: its crop is {crop} mm with a {cfg.margin}-voxel margin, "
            f"so a lesion may be at most {max(largest, 0.0):g} mm across",
        )
        return None
    return lo, hi


def _dataset(
    errs: Errors, loc: tuple[Any, ...], q: QuotaSpec, cls: Condition, base: Path, dims: int, formats: list[str]
) -> tuple[Path, str, str, tuple[int, ...], Catalog] | None:
    from medsynth.data.catalog import Catalog

    assert q.insert is not None and not isinstance(q.insert.into, str)
    into = q.insert.into
    here = (*loc, "insert", "into", "dataset")
    csv = Path(into.dataset).expanduser()
    csv = csv if csv.is_absolute() else base / csv
    try:
        catalog = Catalog.from_csv(csv)
        data_dims = catalog.spatial_dims()
    except MedsynthError as exc:
        errs.add(here, str(exc))
        return None
    background = Condition.of(into.pathology, cls.modality)
    rows = tuple(i for i, r in enumerate(catalog.records) if r.condition == background)
    if not rows:
        found = ", ".join(group_key(p, m) for p, m in sorted(catalog.class_counts())) or "none"
        errs.add(here, f"{csv} has no rows of class {background.group} to insert into; found {found}")
        return None
    if data_dims != dims:
        errs.add(here, f"{csv} holds {data_dims}D scans; the lesion model inserts into {dims}D scans")
        return None
    for fmt in formats:
        if data_dims == 3 and not get_format(fmt).holds_3d:
            errs.add(("output", "formats"), f"{fmt} is only for 2D scans; {csv} holds 3D scans")
    return csv, hashlib.sha256(csv.read_bytes()).hexdigest(), background.group, rows, catalog


def check_insert(
    errs: Errors,
    loc: tuple[Any, ...],
    q: QuotaSpec,
    p: ProtocolDoc,
    model: ModelInfo,
    base: Path,
    check_class: Callable[[tuple[Any, ...], str, str, Any], Condition | None],
    cache: dict[Path, Any],
) -> tuple[Condition, InsertPlan] | None:
    """The quota's class and insertion plan, or None after reporting its problems to ``errs``.

    Args:
        check_class: ``(loc, pathology, modality, vocabulary owner) -> Condition | None`` (plan's
            vocabulary check, given a ``ModelInfo``-like owner).
    """
    from dataclasses import replace

    from medsynth.data.transforms import Preprocessing
    from medsynth.models.artifact import load_config

    assert q.insert is not None
    try:
        lesion = lesion_model_of(model, cache)
    except MedsynthError as exc:
        errs.add((*loc, "insert"), str(exc))
        return None
    if lesion is None:
        errs.add(
            (*loc, "insert"),
            f"model {model.ref} has no lesion model ({model.path}/lesion is missing); train one with "
            "`medsynth train` on a dataset with lesion masks, or sample whole scans (drop `insert`)",
        )
        return None
    cfg = lesion.config
    who = f"the lesion model of {model.ref}"
    owner = replace(model, ref=who, pathologies=tuple(cfg.pathologies), modalities=tuple(cfg.modalities))
    cls = check_class(loc, q.pathology, q.modality, owner)
    method, steps = _sampler(
        errs, loc, q, p, str(cfg.scheduler["kind"]), int(cfg.scheduler["num_train_timesteps"]), who
    )
    if cls is None:
        return None
    size = _size(errs, loc, q, cls, cfg, who)
    whole = Preprocessing.from_dict(load_config(model.path).preprocessing).intensity.get(cls.modality)
    if whole != cfg.intensity.get(cls.modality):
        errs.add(
            (*loc, "modality"),
            f"model {model.ref} normalises {cls.modality} as {whole}, its lesion model as "
            f"{cfg.intensity.get(cls.modality)}; retrain the lesion model with the model's preprocessing",
        )
    from medsynth.privacy.lesions import LESION_INDEX_DIR

    index = model.path / LESION_INDEX_DIR
    if p.privacy.gate and not (index.is_dir() and any(index.iterdir())):
        errs.add(
            ("privacy", "gate"),
            f"model {model.ref} has no lesion privacy index ({index} is missing) for the "
            f"insertion quota {format_loc(loc)}; build it when training the lesion model (a holdout with "
            "lesion masks), or set `privacy: {gate: false}` to insert without the memorization check",
        )
    guidance = q.guidance_scale if q.guidance_scale is not None else p.sampler.guidance_scale
    settings: dict[str, Any] = {
        "size_mm": size,
        "region": _region_spec(q.insert.region, cls.modality),
        "method": method,
        "steps": steps,
        "guidance_scale": float(cfg.default_guidance_scale if guidance is None else guidance),
    }
    if q.insert.into == INTO_GENERATED:
        if cfg.spatial_dims != model.spatial_dims:
            errs.add((*loc, "insert"), f"{who} is {cfg.spatial_dims}D; model {model.ref} samples {model.spatial_dims}D")
        check_class(loc, NORMAL, q.modality, model)
        if size is None:
            return None
        return cls, InsertPlan(into=INTO_GENERATED, background=group_key(NORMAL, cls.modality), **settings)
    found = _dataset(errs, loc, q, cls, base, cfg.spatial_dims, list(p.output.formats))
    if found is None or size is None:
        return None
    csv, sha, background, rows, catalog = found
    return cls, InsertPlan(
        into=INTO_DATASET,
        dataset=csv,
        dataset_sha256=sha,
        background=background,
        rows=rows,
        catalog=catalog,
        **settings,
    )
