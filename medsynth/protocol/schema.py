"""The protocol file: a versioned YAML schema, validated by pydantic.

A protocol says which model to sample, how, how many cases of each (pathology, modality)
class to make, where to write them and how strictly to gate them for memorization. The
schema is strict on purpose: unknown keys are errors (typos are caught), numbers are not
coerced (``count: "12"``, ``count: 12.5`` and ``count: true`` are all errors) and YAML is
read with ``yaml.safe_load`` semantics (tags such as ``!!python/object`` never execute).

This module checks the *shape* of a protocol (``load_protocol``). Checks that need the
model's vocabularies, the data sets or the file system live in ``medsynth.protocol.validate``.

Example:
    >>> from medsynth.protocol.schema import parse_protocol_text
    >>> p = parse_protocol_text('''
    ... protocol: 1
    ... name: demo
    ... model: builtin:phantom-2d
    ... seed: 7
    ... quotas: [{pathology: normal, modality: CT, count: 2}]
    ... ''')
    >>> p.quotas[0].count, p.sampler.steps, p.privacy.gate
    (2, 20, True)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from medsynth.errors import ErrorLines, ProtocolError
from medsynth.io.formats import FormatName
from medsynth.limits import GUIDANCE_RANGE, MAX_STEPS
from medsynth.protocol.schema_push import PushField, refuse_credentials
from medsynth.pydantic_errors import error_lines, short_repr
from medsynth.strict import StrictModel
from medsynth.yamlfile import describe_yaml_error, load_yaml

SCHEMA_VERSIONS: tuple[int, ...] = (1,)
# Sampler names as the samplers registry spells them (not imported: it needs torch); a test
# checks that they stay in step. Format names come from the io.formats registry.
SamplerName = Literal["ddpm", "ddim", "dpm++", "rflow"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
FORMAT_NAMES: tuple[str, ...] = get_args(FormatName)
MAX_GUIDANCE = GUIDANCE_RANGE[1]
MAX_BATCH = 4096
MAX_COUNT = 1_000_000  # per quota: a typo such as 10**9 is an error, not an hours-long plan


class ProtocolErrors(ErrorLines, ProtocolError):
    """Several protocol errors at once (``medsynth.errors.ErrorLines``)."""


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _sources(value: Any) -> Any:
    # A BeforeValidator, so that a wrong type gives one message instead of one per union member.
    if isinstance(value, str):
        return _nonblank(value)
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return value
    raise ValueError("expected a CSV path or a non-empty list of scan paths")


def _target(value: Any) -> Any:
    if value == "majority" or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT):
        return value
    raise ValueError(f"expected a whole number from 1 to {MAX_COUNT} or 'majority'")


Text = Annotated[str, AfterValidator(_nonblank)]
# An output grid: 2 or 3 positive values (the model decides how many, checked in the plan).
GridShape = Annotated[list[Annotated[int, Field(gt=0, le=4096)]], Field(min_length=2, max_length=3)]
GridSpacing = Annotated[list[Annotated[float, Field(gt=0, le=1000)]], Field(min_length=2, max_length=3)]


class _Strict(StrictModel):
    # Protocols are stricter than the base: no "2" for 2, and a parsed protocol never changes.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _default_formats() -> list[FormatName]:
    return ["nifti"]


class OutputSpec(_Strict):
    """Where and in which formats cases are written."""

    dir: Text | None = Field(
        None,
        description="Output folder, relative to the protocol file (default synthetic/<name>); "
        "`medsynth generate --out` overrides it.",
    )
    formats: list[FormatName] = Field(
        default_factory=_default_formats,
        min_length=1,
        description="Any of dicom, nifti, png (png only for 2D models).",
    )
    push: PushField | None = Field(
        None,
        description="Store each finished case's DICOM files in a PACS: {dicomweb: URL} or {dimse: AET@HOST:PORT}; "
        "needs dicom in formats. Credentials are not allowed here: they come from the environment.",
    )
    shape: GridShape | None = Field(
        None,
        description="Output grid shape (array order), default the model's; a quota may override it. At the "
        "model's spacing every side must be a multiple of the autoencoder's downsampling.",
    )
    spacing: GridSpacing | None = Field(
        None,
        description="Output grid spacing in mm, default the model's; another spacing is sampled at the "
        "model's over the same field of view and resampled. A quota may override it.",
    )
    allow_fov_extrapolation: bool = Field(
        False,
        description="Sample fields of view (shape x spacing) outside those the model was trained on "
        "instead of refusing them; the manifest and summary record it.",
    )

    @model_validator(mode="after")
    def _unique_formats(self) -> OutputSpec:
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats lists a format twice: {self.formats}")
        if self.push is not None and "dicom" not in self.formats:
            raise ValueError(f"push stores DICOM files: add dicom to formats (they are {self.formats})")
        return self


def _memory_size(value: Any) -> Any:
    """Check a ``max_memory`` value; kept as written (``"4GB"``), parsed where the budget is used."""
    from medsynth.errors import InputError
    from medsynth.sampling.memory import parse_memory

    try:
        parse_memory(value, field="sampler.max_memory")
    except InputError as exc:
        # pydantic names the field already: keep only what follows "sampler.max_memory=...: ".
        raise ValueError(str(exc).split(": ", 1)[1]) from None
    return value


class SamplerSpec(_Strict):
    """Sampler settings shared by all quotas (a quota may override method, steps, guidance)."""

    method: SamplerName | None = Field(
        None,
        description="ddpm | ddim | dpm++ | rflow, as the model supports; default: the model's own "
        "(dpm++ for noise-schedule models, rflow for rectified-flow models).",
    )
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="Number of inference steps.")
    guidance_scale: float | None = Field(
        None,
        ge=0.0,
        le=MAX_GUIDANCE,
        description="Classifier-free guidance scale; default: the model's default_guidance_scale (its model card).",
    )
    batch_size: int = Field(16, ge=1, le=MAX_BATCH, description="Cases sampled together (affects speed only).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="The UNet's arithmetic: fp32, or bf16/fp16 autocast (faster on a GPU; outputs differ by "
        "rounding, see docs/performance.md).",
    )
    compile: bool = Field(False, description="Run the UNet through torch.compile (speed only).")
    max_memory: Annotated[int | str | None, BeforeValidator(_memory_size)] = Field(
        None,
        description='Memory budget of decoding (and of extend\'s encoding): bytes, or a size such as "4GB" or '
        '"512MiB"; default half the free RAM (GPU memory on CUDA). Whole decode when it fits, else slabs with '
        "whole-volume GroupNorm statistics: the same result within float rounding (speed and memory only). "
        "medsynth generate --max-memory overrides it.",
    )
    decode_window: int | None = Field(
        None,
        ge=1,
        description="Latent rows per decoding slab, by hand; default chosen from max_memory (speed and memory only).",
    )

    def hashed(self) -> dict[str, Any]:
        """What of these settings changes the output beyond the quotas' own (for ``plan_sha256``).

        Empty at the defaults, so plans made before ``precision`` existed keep their hash.
        """
        return {} if self.precision == "fp32" else {"precision": self.precision}


class ExtendSpec(_Strict):
    """Vary real scans image-to-image instead of sampling from noise."""

    sources: Annotated[str | list[str], BeforeValidator(_sources)] = Field(
        description="A dataset CSV (path,pathology,modality; rows of the quota's class are used) "
        "or a list of scan paths, relative to the protocol file."
    )
    strength: float = Field(0.5, gt=0.0, le=1.0, description="Noise strength: 0 keeps the source, 1 ignores it.")


def _into_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "<dataset>"
    return "<generated>" if value == "generated" else None


def _region_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "<intensity>"
    return "<named>" if value in ("lungs", "body") else None


class IntoSpec(_Strict):
    """Healthy backgrounds from a dataset CSV."""

    dataset: Text = Field(
        description="A dataset CSV (path,pathology,modality[,split,subject,mask]), relative to the protocol file."
    )
    pathology: Text = Field(
        "normal", description="The rows of this pathology (and the quota's modality) are the backgrounds."
    )


def _lo_hi(what: str, positive: bool) -> Any:
    def check(value: list[float]) -> list[float]:
        if len(value) != 2:
            raise ValueError(f"expected two numbers [lo, hi] ({what})")
        lo, hi = value
        if positive and not 0 < lo <= hi:
            raise ValueError(f"expected [lo, hi] with 0 < lo <= hi ({what})")
        if lo > hi:
            raise ValueError(f"expected [lo, hi] with lo <= hi ({what})")
        return value

    return AfterValidator(check)


class IntensityRegion(_Strict):
    """Voxels with lo <= value <= hi (modality units: HU for CT) inside the body."""

    intensity: Annotated[list[float], _lo_hi("modality units, HU for CT", False)] = Field(
        description="[lo, hi], lo <= hi."
    )


# Tags in angle brackets are union members, not keys: format_loc leaves them out of field paths.
IntoField = Annotated[
    Annotated[IntoSpec, Tag("<dataset>")] | Annotated[Literal["generated"], Tag("<generated>")],
    Discriminator(
        _into_kind,
        custom_error_type="into_kind",
        custom_error_message="expected 'generated' or a mapping {dataset: CSV, pathology: normal}",
    ),
]
RegionField = Annotated[
    Annotated[Literal["lungs", "body"], Tag("<named>")] | Annotated[IntensityRegion, Tag("<intensity>")],
    Discriminator(
        _region_kind,
        custom_error_type="region_kind",
        custom_error_message="expected 'lungs', 'body' or a mapping {intensity: [lo, hi]}",
    ),
]


class InsertSpec(_Strict):
    """Insert a lesion into a healthy background instead of sampling a whole scan."""

    into: IntoField = Field(
        description="{dataset: CSV, pathology: normal}: real backgrounds from a dataset; "
        "'generated': a normal scan sampled by the model."
    )
    size_mm: Annotated[list[float], _lo_hi("mm", True)] | None = Field(
        None,
        description="[lo, hi]: the lesion's equivalent diameter in mm, drawn uniformly; "
        "default the lesion model's training range for the pathology.",
    )
    region: RegionField | None = Field(
        None, description="lungs | body | {intensity: [lo, hi]}; default lungs for CT and MR, body otherwise."
    )


class QuotaSpec(_Strict):
    """How many cases of one (pathology, modality) class to make."""

    pathology: Text = Field(description="A pathology of the model; several joined by '|', e.g. nodule|effusion.")
    modality: Text = Field(description="A modality of the model, e.g. CT or MR.")
    count: int = Field(gt=0, le=MAX_COUNT, description="Number of cases (a whole number > 0).")
    method: SamplerName | None = Field(None, description="Overrides sampler.method for this quota.")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Overrides sampler.steps.")
    guidance_scale: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE, description="Overrides sampler.guidance_scale.")
    shape: GridShape | None = Field(None, description="Overrides output.shape for this quota.")
    spacing: GridSpacing | None = Field(None, description="Overrides output.spacing for this quota.")
    extend: ExtendSpec | None = None
    insert: InsertSpec | None = None

    @model_validator(mode="after")
    def _extend_xor_insert(self) -> QuotaSpec:
        if self.extend is not None and self.insert is not None:
            raise ValueError("give at most one of `extend` (vary real scans) and `insert` (insert a lesion)")
        return self


class BalanceSpec(_Strict):
    """Fill each (pathology, modality) class of a real dataset up to a target count."""

    dataset: Text = Field(description="Dataset CSV (path,pathology,modality), relative to the protocol file.")
    target: Annotated[int | str, BeforeValidator(_target)] = Field(
        description="Cases per class after generation (real + synthetic), or 'majority' (the largest class)."
    )


class PrivacySpec(_Strict):
    """The memorization gate in front of every written case."""

    gate: bool = Field(True, description="Check every case against the model's privacy index.")
    quantile: float = Field(0.99, gt=0.5, lt=1.0, description="Threshold quantile of holdout-to-train similarity.")
    on_flag: Literal["resample", "drop", "fail"] = Field(
        "resample", description="A flagged case is resampled with a new seed, dropped, or fails the run."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Attempts per case when on_flag is resample.")
    alpha: float = Field(
        0.01, gt=0.0, lt=0.5, description="Significance of the flagged-rate test that fails a run (exit 3)."
    )
    accept_weak_index: bool = Field(
        False,
        description=(
            "Generate even when a privacy index is weak (self-test recall under 0.9, or a threshold "
            "resting on fewer than 50 holdout scans); the manifest, summary and reports record it in red."
        ),
    )


class Protocol(_Strict):
    """A generation protocol, schema version 1."""

    protocol: Literal[1] = Field(description="Schema version.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Study name: letters, digits, '.', '_' or '-' (at most 64).",
    )
    description: str | None = None
    model: Text = Field(description="builtin:phantom-2d, builtin:phantom-3d or a model directory.")
    seed: int = Field(ge=0, lt=2**63, description="Protocol seed; every case seed derives from it.")
    output: OutputSpec = Field(default_factory=OutputSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    quotas: list[QuotaSpec] | None = Field(None, min_length=1)
    balance: BalanceSpec | None = None
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        # At the top and before the fields: the only place whose error lines do not repeat the value given.
        refuse_credentials(data)
        return data

    @model_validator(mode="after")
    def _quotas_xor_balance(self) -> Protocol:
        if (self.quotas is None) == (self.balance is None):
            raise ValueError("give exactly one of `quotas` (explicit counts) or `balance` (fill a dataset's classes)")
        return self

    @model_validator(mode="after")
    def _max_attempts_needs_resample(self) -> Protocol:
        if self.privacy.on_flag != "resample" and "max_attempts" in self.privacy.model_fields_set:
            raise ValueError(
                f"privacy.max_attempts applies only to on_flag: resample (on_flag is {self.privacy.on_flag!r})"
            )
        return self


def protocol_json_schema() -> dict[str, Any]:
    """The JSON Schema of protocol version 1 (what ``medsynth protocol-schema`` prints)."""
    schema = Protocol.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "medsynth protocol, version 1"
    return schema


# --- reading YAML ------------------------------------------------------------------------------


def read_protocol_mapping(text: str, source: str = "<protocol>") -> dict[str, Any]:
    """Parse YAML text into the raw mapping, with errors naming ``source`` and the line."""
    if not text.strip():
        raise ProtocolError(f"{source}: the file is empty; expected a protocol mapping (see docs/protocols.md)")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{source}:{describe_yaml_error(exc, 'protocol')}") from None
    if data is None:
        raise ProtocolError(f"{source}: the file holds no YAML content; expected a protocol mapping")
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{source}: expected a YAML mapping of keys (protocol:, name:, model:, ...); got a {type(data).__name__}"
        )
    return data


def _version_check(data: dict[str, Any], source: str) -> None:
    known = ", ".join(str(v) for v in SCHEMA_VERSIONS)
    if "protocol" not in data:
        raise ProtocolError(
            f"{source}: protocol: a required key is missing; put `protocol: 1` first "
            f"(schema versions this release reads: {known})"
        )
    version = data["protocol"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in SCHEMA_VERSIONS:
        raise ProtocolError(
            f"{source}: protocol: {short_repr(version)} is not a schema version this release of medsynth "
            f"knows (known: {known}); upgrade medsynth or rewrite the file for version {SCHEMA_VERSIONS[-1]}"
        )


def parse_protocol_mapping(data: dict[str, Any], source: str = "<protocol>") -> Protocol:
    """Validate a raw mapping; all schema errors are raised together as ``ProtocolErrors``."""
    _version_check(data, source)
    try:
        return Protocol.model_validate(data)
    except ValidationError as exc:
        raise ProtocolErrors(error_lines(exc, Protocol, source)) from None


def parse_protocol_text(text: str, source: str = "<protocol>") -> Protocol:
    """Parse and validate protocol YAML text."""
    return parse_protocol_mapping(read_protocol_mapping(text, source), source)


@dataclass(frozen=True)
class ProtocolFile:
    """A protocol as read from disk: the validated model plus where it came from."""

    protocol: Protocol
    path: Path
    sha256: str  # of the file's bytes, so `sha256sum protocol.yaml` matches the manifest

    @property
    def base_dir(self) -> Path:
        """Relative paths in the protocol are relative to this folder."""
        return self.path.parent


def load_protocol(path: str | os.PathLike[str]) -> ProtocolFile:
    """Read and shape-check a protocol file (no model or data access).

    Raises:
        ProtocolError: the file is missing, unreadable, not YAML, not a mapping, or does not
            match the schema (``ProtocolErrors`` with one line per problem).
    """
    path = Path(path)
    if not path.exists():
        raise ProtocolError(f"{path}: no such protocol file")
    if path.is_dir():
        raise ProtocolError(f"{path}: is a folder; expected a protocol YAML file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{path}: is not UTF-8 text; expected a protocol YAML file") from None
    protocol = parse_protocol_text(text, str(path))
    return ProtocolFile(protocol=protocol, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())
