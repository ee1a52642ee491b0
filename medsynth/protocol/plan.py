"""From a protocol file to a checked, fixed plan of cases and batches (before any model runs).

``validate_protocol`` reads the protocol (``schema.load_protocol``), then checks it against
the model's vocabularies (read from its config.json, no weights loaded), the samplers the
model supports, the data sets it names and the privacy index; every problem becomes one
line of a ``ProtocolErrors``. The result, a ``RunPlan``, fixes:

* the quotas (explicit, or derived from a dataset's class counts in balance mode);
* the cases: case ``k`` of class (pathology, modality) is ``<pathology>-<modality>-<k>``
  (``case_stem``; e.g. ``nodule-CT-00017``), numbered across all quotas of that class, with seed
  ``derive_seed(protocol seed, pathology, modality, k, attempt)``;
* the batches: each quota's cases chunked by ``sampler.batch_size``. A batch is the unit of
  computation, so a resumed or sharded run recomputes whole batches and equals an
  uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.conditions import Condition, UnknownLabel, Vocabulary, group_key, split_pathologies
from medsynth.digest import sha256_json
from medsynth.errors import MedsynthError
from medsynth.protocol.plan_grid import GridPlan, check_grids
from medsynth.protocol.plan_insert import INTO_GENERATED, InsertPlan, check_insert
from medsynth.protocol.plan_output import check_formats, check_push
from medsynth.protocol.plan_privacy import IndexUse, check_image_index_present, check_index_strength
from medsynth.protocol.schema import Protocol, ProtocolErrors, ProtocolFile, QuotaSpec, load_protocol
from medsynth.pydantic_errors import format_loc
from medsynth.seeding import derive_seed

if TYPE_CHECKING:
    from medsynth.data.catalog import Catalog


@dataclass(frozen=True)
class ModelInfo:
    """What a protocol needs to know about a model, read from config.json without weights."""

    ref: str  # as written in the protocol
    path: Path
    name: str
    pathologies: tuple[str, ...]
    modalities: tuple[str, ...]
    spatial_dims: int
    kind: str  # "ddpm" (noise schedule) or "rflow"
    num_train_timesteps: int
    has_privacy_index: bool
    default_guidance_scale: float

    @property
    def id(self) -> str:
        """``builtin:<name>`` for shipped models, else the config's name (never a local path)."""
        return self.ref if self.ref.startswith("builtin:") else self.name

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.pathologies, self.modalities)


def read_model_info(ref: str, base_dir: Path) -> ModelInfo:
    """Resolve ``ref`` (``builtin:<name>`` or a folder relative to ``base_dir``) and read its config.

    Raises:
        InputError: no such model, not a model directory, or an invalid config.json.
    """
    from medsynth.models.artifact import PRIVACY_DIR, load_config, resolve_model_path, verify_model_dir

    target: str | Path = ref if ref.startswith("builtin:") else (base_dir / ref)
    path = resolve_model_path(target)
    cfg = load_config(path)
    verify_model_dir(path)  # size + sha256 of every recorded file, before any output folder exists
    privacy = path / PRIVACY_DIR
    return ModelInfo(
        ref=ref,
        path=path,
        name=cfg.name,
        pathologies=tuple(cfg.pathologies),
        modalities=tuple(cfg.modalities),
        spatial_dims=cfg.spatial_dims,
        kind=str(cfg.scheduler["kind"]),
        num_train_timesteps=int(cfg.scheduler["num_train_timesteps"]),
        has_privacy_index=privacy.is_dir() and any(privacy.iterdir()),
        default_guidance_scale=cfg.default_guidance_scale,
    )


@dataclass(frozen=True)
class ExtendPlan:
    """Real source scans a quota varies image-to-image (paths never reach an output)."""

    sources: tuple[Path, ...]
    strength: float


@dataclass(frozen=True)
class QuotaPlan:
    """One quota with its effective sampler settings."""

    index: int
    where: str  # field path for messages, e.g. "quotas[1]" or "balance[nodule/CT]"
    pathology: str  # '|'-joined when several
    modality: str
    count: int
    method: str
    steps: int
    guidance_scale: float
    extend: ExtendPlan | None = None
    insert: InsertPlan | None = None
    grid: GridPlan | None = None  # an output grid other than the model's (plan_grid)

    @property
    def condition(self) -> Condition:
        return Condition.of(self.pathology, self.modality)

    @property
    def pathologies(self) -> list[str]:
        return list(self.condition.pathologies)

    @property
    def group(self) -> str:
        """The privacy-index group, ``pathology/modality``."""
        return self.condition.group

    @property
    def label(self) -> str:
        """How progress and the summary name the quota: ``nodule/CT``, ``nodule/CT (insert into dataset)``."""
        if self.insert is not None:
            return f"{self.group} (insert into {self.insert.into})"
        return self.group if self.extend is None else f"{self.group} (extend)"

    def sampler_settings(self, batch_size: int) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "batch_size": batch_size,
        }


@dataclass(frozen=True)
class CasePlan:
    """One case: identity, place in the plan and (extend mode) which source it varies."""

    case_id: str
    quota: int
    pathology: str
    modality: str
    number: int  # k: the case's index within its (pathology, modality) class
    position: int  # order in the whole plan (the manifest's order)
    source: int | None = None  # extend: the source's index; insert into a dataset: the index into its rows

    def seed(self, protocol_seed: int, attempt: int) -> int:
        """The seed of this case's ``attempt`` (0 first; each privacy resample adds one)."""
        return derive_seed(protocol_seed, self.pathology, self.modality, self.number, attempt)


@dataclass(frozen=True)
class BatchPlan:
    """Cases of one quota sampled together; the unit that a resumed run recomputes whole."""

    index: int
    quota: int
    cases: tuple[CasePlan, ...]


@dataclass(frozen=True)
class RunPlan:
    """A validated protocol with its model, quotas, cases, batches and output folder."""

    source: ProtocolFile
    model: ModelInfo
    quotas: tuple[QuotaPlan, ...]
    batches: tuple[BatchPlan, ...]
    output_dir: Path
    indexes: tuple[IndexUse, ...] = ()  # the privacy indexes the run uses, judged (plan_privacy)

    @property
    def protocol(self) -> Protocol:
        return self.source.protocol

    @property
    def weak_indexes(self) -> frozenset[str]:
        """The privacy indexes the protocol accepted as weak (``plan_privacy``)."""
        return frozenset(u.kind for u in self.indexes if u.weaknesses)

    @property
    def cases(self) -> list[CasePlan]:
        return [c for b in self.batches for c in b.cases]

    @property
    def plan_sha256(self) -> str:
        """Hash of everything that decides the output (quotas, settings, batches), for resume checks."""
        doc = {
            "seed": self.protocol.seed,
            "formats": list(self.protocol.output.formats),
            "batch_size": self.protocol.sampler.batch_size,
            "privacy": self.protocol.privacy.model_dump(),
            "quotas": [_quota_doc(q) for q in self.quotas],
            "batches": [[c.case_id for c in b.cases] for b in self.batches],
            **self.protocol.sampler.hashed(),
        }
        return sha256_json(doc)


def _quota_doc(q: QuotaPlan) -> dict[str, Any]:
    # Without insert's catalog (asdict would deep-copy it); keys absent when unused keep old plans' hashes.
    doc = asdict(replace(q, insert=None))
    doc.pop("insert")
    if q.grid is None:  # absent, so that plans made before output grids keep their hash
        doc.pop("grid")
    if q.insert is not None:
        doc["insert"] = q.insert.doc()
    if q.extend is not None:
        doc["extend"] = {"strength": q.extend.strength, "sources": [str(p) for p in q.extend.sources]}
    return doc


_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
# Case ids stay short enough for the DICOM writer (PatientID "SYN-<case_id>": at most 56 characters).
_MAX_STEM = 32


def case_stem(pathology: str, modality: str) -> str:
    """File-name-safe class prefix of case ids: ``effusion|nodule``, ``CT`` -> ``effusion.nodule-CT``.

    A long prefix is cut and completed with a hash of the whole, so it stays unique.
    """
    stem = ".".join(_SLUG.sub("_", p) for p in pathology.split("|")) + "-" + _SLUG.sub("_", modality)
    if len(stem) > _MAX_STEM:
        stem = stem[: _MAX_STEM - 9] + "-" + hashlib.sha256(stem.encode()).hexdigest()[:8]
    return stem if stem[0].isalnum() else "c" + stem


class _Collector:
    """Gathers one-line problems, each prefixed with the protocol file and a field path."""

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    def add(self, loc: tuple[Any, ...] | str, message: str) -> None:
        where = loc if isinstance(loc, str) else format_loc(loc)
        self.lines.append(f"{self.source}: {where}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ProtocolErrors(self.lines)


def _check_class(
    errs: _Collector, loc: tuple[Any, ...], pathology: str, modality: str, model: ModelInfo
) -> Condition | None:
    """The canonical condition if both parts are in the model's vocabularies, else ``None``."""
    ok = True
    labels = split_pathologies(pathology)
    if len(set(labels)) != len(labels):
        errs.add((*loc, "pathology"), f"{pathology!r} names a pathology twice")
        ok = False
    for unknown in model.vocabulary.unknown_pathologies(labels):
        errs.add((*loc, "pathology"), unknown.message(model.ref))
        ok = False
    unknown_mod = model.vocabulary.unknown_modality(modality.strip())
    if unknown_mod is not None:
        errs.add((*loc, "modality"), UnknownLabel("modality", modality, model.modalities).message(model.ref))
        ok = False
    # Canonical, so "nodule|effusion" and "effusion|nodule" are one class with one case numbering.
    return Condition.of(labels, modality) if ok else None


def _guidance(written: float | None, model: ModelInfo) -> float:
    """The guidance a quota samples with: as written, else the model's own default."""
    return model.default_guidance_scale if written is None else float(written)


def _check_sampler(
    errs: _Collector, loc: tuple[Any, ...], method: str | None, steps: int, model: ModelInfo, report: bool = True
) -> str:
    """The effective sampler name; problems are reported only where the setting was written."""
    from medsynth.sampling.samplers import DEFAULT_SAMPLER, available_samplers

    name = method or DEFAULT_SAMPLER.get(model.kind, "")
    allowed = available_samplers(model.kind)
    if not report:
        return name
    if name not in allowed:
        errs.add(
            (*loc, "method"),
            f"{name!r} does not work with model {model.ref} (trained as {model.kind!r}); allowed: {', '.join(allowed)}",
        )
    if steps > model.num_train_timesteps:
        errs.add(
            (*loc, "steps"),
            f"{steps} is out of range; model {model.ref} allows 1 to {model.num_train_timesteps} steps",
        )
    return name


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _catalog(path: Path) -> Catalog:
    # Imported here: validating a protocol that names no dataset should not import the readers.
    from medsynth.data.catalog import Catalog

    return Catalog.from_csv(path)


def _extend_sources(
    errs: _Collector, loc: tuple[Any, ...], q: QuotaSpec, cls: Condition, base: Path
) -> ExtendPlan | None:
    assert q.extend is not None
    spec = q.extend.sources
    loc = (*loc, "extend", "sources")
    if isinstance(spec, str):
        csv = _resolve(base, spec)
        try:
            catalog = _catalog(csv)
        except MedsynthError as exc:
            errs.add(loc, str(exc))
            return None
        paths = tuple(r.path for r in catalog.records if r.condition == cls)
        if not paths:
            errs.add(loc, f"{csv} has no rows of class {cls.group} to vary; found {_classes(catalog)}")
            return None
        return ExtendPlan(paths, q.extend.strength)
    paths = tuple(_resolve(base, s) for s in spec)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        errs.add(loc, f"no such scan file or folder: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        return None
    return ExtendPlan(paths, q.extend.strength)


def _classes(catalog: Catalog) -> str:
    return ", ".join(group_key(p, m) for p, m in sorted(catalog.class_counts())) or "none"


def _balance_quotas(errs: _Collector, source: ProtocolFile, model: ModelInfo, method: str) -> list[QuotaPlan]:
    p = source.protocol
    assert p.balance is not None
    csv = _resolve(source.base_dir, p.balance.dataset)
    try:
        counts = _catalog(csv).class_counts()
    except MedsynthError as exc:
        errs.add(("balance", "dataset"), str(exc))
        return []
    target = max(counts.values()) if p.balance.target == "majority" else int(p.balance.target)
    quotas: list[QuotaPlan] = []
    for (pathology, modality), n in sorted(counts.items()):
        where = f"balance.dataset class {group_key(pathology, modality)}"
        cls = _check_class(errs, (where,), pathology, modality, model)
        if cls is None or n >= target:
            continue
        quotas.append(
            QuotaPlan(
                index=len(quotas),
                where=f"balance[{cls.group}]",
                pathology=cls.label,
                modality=cls.modality,
                count=target - n,
                method=method,
                steps=p.sampler.steps,
                guidance_scale=_guidance(p.sampler.guidance_scale, model),
            )
        )
    return quotas


def _explicit_quotas(errs: _Collector, source: ProtocolFile, model: ModelInfo) -> list[QuotaPlan]:
    p = source.protocol
    assert p.quotas is not None
    quotas: list[QuotaPlan] = []
    lesion_models: dict[Path, Any] = {}
    for i, q in enumerate(p.quotas):
        loc = ("quotas", i)
        steps = q.steps if q.steps is not None else p.sampler.steps
        insert = None
        if q.insert is None:
            cls = _check_class(errs, loc, q.pathology, q.modality, model)
        else:
            found = check_insert(
                errs,
                loc,
                q,
                p,
                model,
                source.base_dir,
                lambda where, path, mod, owner: _check_class(errs, where, path, mod, owner),
                lesion_models,
            )
            cls, insert = found if found is not None else (None, None)
        # The whole-image sampler matters to an insertion quota only when it samples its background.
        samples = q.insert is None or q.insert.into == INTO_GENERATED
        overridden = samples and (q.method is not None or q.steps is not None)
        method = _check_sampler(errs, loc, q.method or p.sampler.method, steps, model, report=overridden)
        extend = None
        if q.extend is not None and cls is not None:
            extend = _extend_sources(errs, loc, q, cls, source.base_dir)
        if cls is None:
            continue
        quotas.append(
            QuotaPlan(
                index=i,
                where=format_loc(loc),
                pathology=cls.label,
                modality=cls.modality,
                count=q.count,
                method=method,
                steps=steps,
                guidance_scale=_guidance(
                    q.guidance_scale if q.guidance_scale is not None else p.sampler.guidance_scale, model
                ),
                extend=extend,
                insert=insert,
            )
        )
    return quotas


def plan_cases(quotas: list[QuotaPlan] | tuple[QuotaPlan, ...], batch_size: int) -> tuple[BatchPlan, ...]:
    """Number the cases per class across quotas, then chunk each quota's cases by ``batch_size``."""
    numbers: Counter[tuple[str, str]] = Counter()
    batches: list[BatchPlan] = []
    position = 0
    for q in quotas:
        stem = case_stem(q.pathology, q.modality)
        cases = []
        for j in range(q.count):
            k = numbers[(q.pathology, q.modality)]
            numbers[(q.pathology, q.modality)] += 1
            source = None
            if q.extend is not None:
                source = j % len(q.extend.sources)
            elif q.insert is not None and q.insert.rows:
                source = j % len(q.insert.rows)  # round robin over the background rows, in CSV order
            cases.append(CasePlan(f"{stem}-{k:05d}", q.index, q.pathology, q.modality, k, position, source))
            position += 1
        for start in range(0, len(cases), batch_size):
            batches.append(BatchPlan(len(batches), q.index, tuple(cases[start : start + batch_size])))
    return tuple(batches)


def output_dir_for(source: ProtocolFile, out: str | os.PathLike[str] | None) -> Path:
    """``--out`` if given, else ``output.dir`` relative to the protocol file, else ``synthetic/<name>``."""
    if out is not None:
        return Path(out).expanduser().resolve()
    p = source.protocol
    rel = p.output.dir if p.output.dir is not None else f"synthetic/{p.name}"
    return _resolve(source.base_dir, rel).resolve()


def validate_protocol(path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None) -> RunPlan:
    """Check a protocol completely (schema, model, vocabularies, samplers, data, privacy index).

    Args:
        path: the protocol YAML file.
        out: output folder overriding ``output.dir``.

    Raises:
        ProtocolError: one line per problem (``ProtocolErrors``); nothing is written.
    """
    source = load_protocol(path)
    p = source.protocol
    errs = _Collector(str(path))
    try:
        model = read_model_info(p.model, source.base_dir)
    except MedsynthError as exc:
        # Nothing else can be checked without the model's vocabularies.
        raise ProtocolErrors([f"{path}: model: {exc}"]) from None
    method = _check_sampler(errs, ("sampler",), p.sampler.method, p.sampler.steps, model)
    check_formats(errs.add, p, model)
    check_image_index_present(errs.add, p, model)
    quotas = (
        _explicit_quotas(errs, source, model) if p.quotas is not None else _balance_quotas(errs, source, model, method)
    )
    quotas = check_grids(errs.add, p, model, quotas)
    indexes = check_index_strength(errs.add, p, model, quotas)
    errs.lines += [] if errs.lines else check_push(source)  # asks the PACS: last, once all else is right
    errs.raise_if_any()
    batches = plan_cases(quotas, p.sampler.batch_size)
    ids = Counter(c.case_id for b in batches for c in b.cases)
    clashes = sorted(i for i, n in ids.items() if n > 1)
    if clashes:
        errs.add("quotas", f"pathology names that differ only in punctuation give the same case ids: {clashes[:3]}")
        errs.raise_if_any()
    return RunPlan(source, model, tuple(quotas), batches, output_dir_for(source, out), indexes)
