"""The fine-tuning configuration (YAML -> pydantic), as strict as a training config.

Unknown keys, numbers given as text and keys given twice are errors naming the file and the
field. Relative paths are resolved against the YAML file's folder. Example::

    base: builtin:phantom-2d
    data: {labels: new-condition.csv}
    method: lora                       # lora | full | embedding
    new_pathologies: {pneumothorax: {init_from: normal}}
    steps: 1500
    output_dir: models/phantom-2d-pneumothorax

Every key and its default is listed in docs/finetuning.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from medsynth.digest import sha256_json
from medsynth.errors import ConfigErrors, InputError
from medsynth.pydantic_errors import error_lines
from medsynth.strict import StrictModel
from medsynth.training.config import LaxPath, Stage1Config, Stage2Config, resolve_path
from medsynth.yamlfile import describe_yaml_error, load_yaml

# LoRA targets by module-name suffix in MONAI's DiffusionModelUNet: the attention projections
# (self- and cross-attention, where the condition tokens enter), the 1x1 convolutions around each
# transformer and both 3x3 convolutions of every residual block.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "out_proj", "proj_in.conv", "proj_out.conv", "conv1.conv", "conv2.conv")


class _Section(StrictModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewToken(_Section):
    """A new vocabulary entry: its embedding starts as a copy of ``init_from`` (a base label) or the mean."""

    init_from: str = "mean"
    # New modalities only: the intensity normalisation (``{kind: linear, lo, hi}``); None: the 0.5th
    # and 99.5th percentiles of the fine-tuning scans of that modality, as training does.
    intensity: dict[str, Any] | None = None


class FinetuneData(_Section):
    """The fine-tuning scans: a labels.csv in the dataset format (docs/data.md)."""

    labels: LaxPath
    # Without a split column: patient-disjoint fractions. The test part is the privacy index's
    # holdout (docs/finetuning.md); validation is off by default (ten scans are few enough).
    val_fraction: float = Field(default=0.0, ge=0.0, lt=0.5)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=0.5)


class LoraSettings(_Section):
    """peft ``LoraConfig``: rank ``r``, ``lora_alpha`` (update scaled by alpha / rank), targets by name suffix."""

    rank: int = Field(default=8, ge=1)
    alpha: int = Field(default=8, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1)
    # The update only for samples of a new token (adapters.gate): old classes stay the base's.
    gate: bool = False


class PriorPreservation(_Section):
    """DreamBooth prior preservation: base samples of its own classes, mixed into every step at ``weight``."""

    weight: float = Field(default=1.0, ge=0)
    samples_per_class: int = Field(default=8, ge=1)
    sampling_steps: int = Field(default=25, ge=1)
    guidance: float | None = Field(default=None, ge=1)  # None: the base's default_guidance_scale
    batch_size: int | None = Field(default=None, ge=1)  # prior samples per step; None: batch_size


class FinetuneConfig(_Section):
    """A fine-tuning run: base, data, method, new tokens, optimisation, bookkeeping."""

    base: str
    data: FinetuneData
    method: Literal["lora", "full", "embedding"] = "lora"
    new_pathologies: dict[str, NewToken] = Field(default_factory=dict)
    new_modalities: dict[str, NewToken] = Field(default_factory=dict)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    # Written into the adapter's config.json: how much of the UNet change load_model applies.
    scale: float = Field(default=1.0, ge=0)
    prior_preservation: PriorPreservation | None = None
    train_autoencoder: bool = False
    autoencoder: Stage1Config | None = None  # stage-1 settings when train_autoencoder (default: steps // 2)
    steps: int = Field(ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    # The new token rows' own rate. A row has norm ~7 and the base's rows lie ~10 apart (phantom
    # models); at the UNet's 1e-4 to 1e-3 Adam moves a row by ~0.2 in 200 steps, so the new token
    # stays the copy of its init_from token and LoRA learns the new finding for both (measured:
    # docs/finetuning.md). Textual inversion likewise trains embeddings far faster than weights.
    embedding_lr: float = Field(default=1e-2, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    warmup_steps: int = Field(default=20, ge=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    balanced: bool = False
    cond_drop: float = Field(default=0.12, ge=0, lt=1)
    token_drop: float = Field(default=0.05, ge=0, lt=1)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    preview_steps: int = Field(default=25, ge=1)
    preview_guidance: float = Field(default=3.0, ge=1)
    output_dir: LaxPath
    work_dir: LaxPath | None = None  # checkpoints, prior samples, previews; default <output_dir>.work
    name: str | None = None  # default "<base name>-<new labels or method>"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    val_every: int = Field(default=100, ge=1)
    sample_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=25, ge=1)
    build_privacy_index: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.method == "embedding" and not (self.new_pathologies or self.new_modalities):
            raise ValueError(
                "method 'embedding' trains only new token embeddings: give new_pathologies or new_modalities"
            )
        if self.autoencoder is not None and not self.train_autoencoder:
            raise ValueError("autoencoder: settings given but train_autoencoder is false; set it true or remove them")
        if self.lora.gate and (self.method != "lora" or not (self.new_pathologies or self.new_modalities)):
            raise ValueError(
                "lora.gate applies the LoRA update to new tokens only: it needs method lora and new tokens"
            )
        if self.lora.gate and self.prior_preservation is not None:
            raise ValueError(
                "lora.gate leaves every base class untouched, so prior_preservation has nothing to keep; remove one"
            )
        for name, tok in self.new_pathologies.items():
            if tok.intensity is not None:
                raise ValueError(f"new_pathologies.{name}.intensity: only new modalities have an intensity")
        return self

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir or self.output_dir.with_name(self.output_dir.name + ".work")

    def stage2(self) -> Stage2Config:
        """The diffusion-stage settings ``training.diffusion.build_stage2`` takes."""
        keys = ["steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "min_lr_ratio"]
        keys += ["grad_clip", "balanced", "cond_drop", "token_drop", "ema_decay", "preview_steps", "preview_guidance"]
        return Stage2Config(**{k: getattr(self, k) for k in keys})

    def stage1(self) -> Stage1Config:
        """Stage-1 settings for ``train_autoencoder``: the config's, else half the steps at a low rate."""
        if self.autoencoder is not None:
            return self.autoencoder
        return Stage1Config(steps=max(1, self.steps // 2), batch_size=self.batch_size, lr=self.lr, warmup_steps=0)

    def fingerprint(self, base_sha256: str, stage: str = "finetune") -> str:
        """Hash of what decides the weights: a checkpoint resumes only under the same fingerprint."""
        d = self.model_dump(
            mode="json",
            exclude={"output_dir", "work_dir", "device", "threads", "log_every", "sample_every"}
            | {"checkpoint_every", "build_privacy_index", "name", "scale", "preview_steps", "preview_guidance"},
        )
        d["base_sha256"] = base_sha256
        if stage == "autoencoder":
            d = {k: d[k] for k in ("data", "base_sha256", "autoencoder", "seed", "precision", "batch_size", "lr")}
            d["stage1"] = self.stage1().model_dump(mode="json")
        return sha256_json(d)[:16]


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None, source: str = "config") -> FinetuneConfig:
    """Validate a fine-tuning config dict; relative paths (and a base folder) resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of settings at the top level; got {type(data).__name__}")
    try:
        cfg = FinetuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(error_lines(exc, FinetuneConfig, source)) from None
    base = base_dir or Path.cwd()
    cfg.output_dir = resolve_path(cfg.output_dir, base)  # type: ignore[assignment]
    cfg.work_dir = resolve_path(cfg.work_dir, base)
    cfg.data.labels = resolve_path(cfg.data.labels, base)  # type: ignore[assignment]
    if not cfg.base.startswith("builtin:"):
        cfg.base = str(resolve_path(Path(cfg.base), base))
    return cfg


def load_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a fine-tuning YAML.

    Raises:
        InputError: unreadable file, bad YAML or a setting that does not validate (one line each).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the fine-tuning config ({exc.strerror})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}:{describe_yaml_error(exc, 'fine-tuning config')}") from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))
