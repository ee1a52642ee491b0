"""The training configuration (YAML -> pydantic), as strict as a protocol.

Every section forbids unknown keys, numbers are not coerced (``steps: "2"`` is an error) and a
key given twice is an error, so a typo fails at load time: every problem is one line naming the
file and the field (``ConfigErrors``), an unknown key with the closest allowed one. Shapes and
channel counts the networks cannot take are errors here too, not after stage 1 has run.
Relative paths are resolved against the folder of the YAML file, so a config can travel with
its data.

Example (``configs/phantom-2d.yaml`` is a full one)::

    name: phantom-2d
    data: {phantoms: {dim: 2, count: 1600, seed: 0, size: 64}}
    preprocessing: {size: [64, 64]}
    stage1: {steps: 1500, batch_size: 16, lr: 2.0e-4}
    stage2: {steps: 3000, batch_size: 32, lr: 2.0e-4}
    output_dir: out/phantom-2d
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, Strict, ValidationError, model_validator

from medsynth.digest import sha256_json
from medsynth.errors import ConfigErrors, InputError
from medsynth.io.formats import FormatName
from medsynth.limits import DEFAULT_GUIDANCE, GUIDANCE_RANGE
from medsynth.pydantic_errors import error_lines
from medsynth.strict import StrictModel
from medsynth.yamlfile import describe_yaml_error, load_yaml


class _Section(StrictModel):
    # As strict as protocols: no "2" for 2, no 2.5 for a whole number, no "yes" for true.
    model_config = ConfigDict(extra="forbid", strict=True)


# Paths are written as text in YAML: strict mode would refuse a str for a Path.
LaxPath = Annotated[Path, Strict(False)]


class PhantomData(_Section):
    """Generate the built-in phantoms (``medsynth.data.phantoms.phantom_dataset``) into the work folder."""

    dim: Literal[2, 3]
    count: int = Field(ge=8)
    seed: int = 0
    size: int = Field(default=64, ge=16, le=256)
    fmt: FormatName = "nifti"
    # Also write each lesion's mask (``phantom_dataset(masks=True)``): the lesion model's data.
    # The images are the same either way, so it is not part of the stages' fingerprints.
    masks: bool = False
    # The classes to balance over (None: every phantom pathology, pneumothorax included); the
    # shipped models' configs name the four they were trained on. Checked by the phantoms.
    pathologies: list[str] | None = None
    scanner: Literal["A", "B"] = "A"  # ``medsynth.data.phantoms.scanners``

    @model_validator(mode="after")
    def _known_pathologies(self) -> PhantomData:
        if self.pathologies is not None:
            from medsynth.data.phantoms.render import parse_pathologies

            labels = []
            for entry in self.pathologies:
                try:
                    labels.append("|".join(parse_pathologies(entry)))
                except InputError as exc:
                    raise ValueError(str(exc)) from None
            if not labels or len(set(labels)) != len(labels):
                raise ValueError(f"pathologies {self.pathologies}: expected at least one class, each once")
        return self


class DataConfig(_Section):
    """Exactly one of ``labels`` (a labels.csv) or ``phantoms``."""

    labels: LaxPath | None = None
    phantoms: PhantomData | None = None
    # used only when labels.csv has no split column: patient-disjoint fractions
    val_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.labels is None) == (self.phantoms is None):
            raise ValueError("give exactly one of 'labels' (a labels.csv path) or 'phantoms' ({dim, count, ...})")
        return self


class PreprocessingConfig(_Section):
    """The model grid. ``spacing`` None: the first training scan's field of view divided by ``size``.

    ``intensity`` None per modality: CT linear [-1000, 1000] HU; any other modality linear between
    the 0.5th and 99.5th percentiles of its training intensities (rounded), recorded in config.json.
    """

    size: list[int] = Field(min_length=2, max_length=3)
    spacing: list[float] | None = None
    intensity: dict[str, dict[str, Any]] = Field(default_factory=dict)
    slice_thickness: float | None = None
    # Training scans whose field of view differs from the grid's by more than this ratio on an
    # axis are reported (an error under `train --strict`): training.checks.
    fov_tolerance: float = Field(default=0.25, gt=0, le=10)


class AutoencoderConfig(_Section):
    """``monai.networks.nets.AutoencoderKL`` sizes."""

    channels: list[int] = Field(default=[32, 64, 64], min_length=2)
    latent_channels: int = Field(default=4, ge=1)
    num_res_blocks: int = Field(default=1, ge=1)
    attention_levels: list[bool] | None = None  # None: no attention anywhere
    norm_num_groups: int = 16
    with_nonlocal_attn: bool = False

    def kwargs(self) -> dict[str, Any]:
        levels = self.attention_levels or [False] * len(self.channels)
        if len(levels) != len(self.channels):
            raise InputError(
                f"autoencoder.attention_levels: need {len(self.channels)} entries (one per channel level); got {levels}"
            )
        return {
            "channels": list(self.channels),
            "latent_channels": self.latent_channels,
            "num_res_blocks": self.num_res_blocks,
            "attention_levels": list(levels),
            "norm_num_groups": self.norm_num_groups,
            "with_encoder_nonlocal_attn": self.with_nonlocal_attn,
            "with_decoder_nonlocal_attn": self.with_nonlocal_attn,
        }


class UNetConfig(_Section):
    """``monai.networks.nets.DiffusionModelUNet`` sizes; ``cond_dim`` is the cross-attention width."""

    channels: list[int] = Field(default=[64, 128, 128], min_length=2)
    attention_levels: list[bool] = Field(default=[False, True, True])
    num_res_blocks: int = Field(default=1, ge=1)
    num_head_channels: int = 32
    norm_num_groups: int = 32
    transformer_num_layers: int = 1
    cond_dim: int = Field(default=64, ge=1)

    def kwargs(self) -> dict[str, Any]:
        if len(self.attention_levels) != len(self.channels):
            raise InputError(
                f"unet.attention_levels: need {len(self.channels)} entries (one per channel level); "
                f"got {self.attention_levels}"
            )
        if not any(self.attention_levels):
            raise InputError("unet.attention_levels: at least one level needs attention to carry the conditioning")
        return {
            "channels": list(self.channels),
            "attention_levels": list(self.attention_levels),
            "num_res_blocks": self.num_res_blocks,
            "num_head_channels": self.num_head_channels,
            "norm_num_groups": self.norm_num_groups,
            "transformer_num_layers": self.transformer_num_layers,
        }


class _StageCommon(_Section):
    steps: int = Field(ge=1)
    batch_size: int = Field(default=16, ge=1)  # per process and micro-batch
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = Field(default=1.0, gt=0)
    # Draw every (pathology, modality) class equally often: each class's scans are repeated up to
    # the size of the largest class in every epoch. For imbalanced sets (10 rare vs 300 common
    # cases), where a plain epoch shows the rare lesion too seldom for the networks to learn it.
    balanced: bool = False


class Stage1Config(_StageCommon):
    """Autoencoder: L1 + ``kl_weight`` * KL, optional patch adversarial loss (``adv_weight`` > 0)."""

    kl_weight: float = Field(default=1e-6, ge=0)
    # Train on random crops of this size (the autoencoder is convolutional; 3D crops make stage 1
    # several times cheaper). None: whole images. Validation always uses whole images.
    patch_size: list[int] | None = None
    adv_weight: float = Field(default=0.0, ge=0)
    adv_start: int = Field(default=0, ge=0)  # steps of plain L1+KL before the discriminator joins
    disc_lr: float = Field(default=2e-4, gt=0)
    disc_channels: int = Field(default=32, ge=1)
    disc_layers: int = Field(default=2, ge=1)


class SchedulerConfig(_Section):
    """The noise schedule (MONAI ``DDPMScheduler`` names) or rectified flow (``RFlowScheduler``)."""

    kind: Literal["ddpm", "rflow"] = "ddpm"
    num_train_timesteps: int = Field(default=1000, ge=2)
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(default=0.0015, gt=0)
    beta_end: float = Field(default=0.0195, gt=0)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"


class Stage2Config(_StageCommon):
    """Latent diffusion. ``cond_drop``: both tokens null; ``token_drop``: each token null on its own."""

    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    cond_drop: float = Field(default=0.12, ge=0, lt=1)
    token_drop: float = Field(default=0.05, ge=0, lt=1)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    preview_guidance: float = Field(default=3.0, ge=1)
    preview_steps: int = Field(default=25, ge=1)


class LesionConfig(_Section):
    """The lesion model (``medsynth.lesions``), trained after stage 2 when the training data has masks.

    ``enabled: auto`` trains it when the training split has masks; ``true`` without masks is an
    error before any work. Sizes: ``crop_size`` default 32² (2D) / 16³ (3D) at ``spacing``
    (default the whole-image model's grid spacing); ``unet`` keys override
    ``lesions.model.DEFAULT_UNET`` one by one.
    """

    enabled: Literal["auto"] | bool = "auto"
    # The pathologies it learns (None: every pathology with a non-empty mask in the training split).
    pathologies: list[str] | None = None
    crop_size: list[int] | None = None
    spacing: list[float] | None = None
    steps: int = Field(default=1500, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=50, ge=0)
    margin: int = Field(default=3, ge=0, le=8)
    unet: dict[str, Any] = Field(default_factory=dict)
    cond_dim: int = Field(default=64, ge=1)
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(prediction_type="v_prediction"))
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    cond_drop: float = Field(default=0.1, ge=0, lt=1)
    token_drop: float = Field(default=0.1, ge=0, lt=1)
    outside_weight: float = Field(default=0.1, ge=0)
    default_guidance_scale: float = Field(default=1.5, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])

    @model_validator(mode="after")
    def _crop(self) -> LesionConfig:
        # Checked when the config is read, not after two stages of training.
        levels = self.unet.get("channels", [32, 64, 64])  # lesions.model.DEFAULT_UNET["channels"]
        down = 2 ** (len(levels) - 1)
        if self.crop_size is not None and any(int(c) % down or int(c) < down for c in self.crop_size):
            raise ValueError(
                f"crop_size {self.crop_size}: each value must be divisible by {down}, the downsampling of the "
                f"lesion UNet's {len(levels)} levels"
            )
        return self


class TrainConfig(_Section):
    """A full training run: data, grid, model sizes, the two stages, bookkeeping."""

    name: str = "medsynth-ldm"
    data: DataConfig
    preprocessing: PreprocessingConfig
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    stage1: Stage1Config
    stage2: Stage2Config
    output_dir: LaxPath
    work_dir: LaxPath | None = None  # checkpoints, generated phantoms, previews; default <output_dir>.work
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, fp32 on CPU
    threads: int | None = Field(default=None, ge=1)  # torch intra-op threads per process (None: torch default)
    checkpoint_every: int = Field(default=250, ge=1)
    val_every: int = Field(default=250, ge=1)
    sample_every: int = Field(default=1000, ge=1)
    log_every: int = Field(default=50, ge=1)
    early_stopping_patience: int = Field(default=0, ge=0)  # validations without improvement; 0 = off
    # Written into the model's config.json: the guidance sampling uses when a caller names none.
    # It does not change the weights, so it is not part of the stages' fingerprints.
    default_guidance_scale: float = Field(default=DEFAULT_GUIDANCE, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])
    # Written into config.json: DICOM BodyPartExamined of generated scans (CHEST for the phantoms);
    # None: not known, left out. Not part of the fingerprints (the weights do not depend on it).
    body_part: Annotated[str, Field(pattern=r"^[A-Z0-9 _]{1,16}$")] | None = None
    weights_dtype: Literal["float32", "float16"] = "float32"
    build_privacy_index: bool = True
    lesion: LesionConfig = Field(default_factory=LesionConfig)

    @model_validator(mode="after")
    def _grid(self) -> TrainConfig:
        dims = len(self.preprocessing.size)
        if self.data.phantoms is not None and self.data.phantoms.dim != dims:
            raise ValueError(f"preprocessing.size has {dims} values but data.phantoms.dim is {self.data.phantoms.dim}")
        down = 2 ** (len(self.autoencoder.channels) - 1)
        patch = self.stage1.patch_size
        if patch is not None and (
            len(patch) != dims or any(p % down or p > s for p, s in zip(patch, self.preprocessing.size))
        ):
            raise ValueError(
                f"stage1.patch_size {patch} needs {dims} values, each divisible by {down} and at most "
                f"preprocessing.size {self.preprocessing.size}"
            )
        for key in ("crop_size", "spacing"):  # the lesion model's grid: one value per dimension
            value = getattr(self.lesion, key)
            if value is not None and len(value) != dims:
                raise ValueError(f"lesion.{key} {value} needs {dims} values (preprocessing.size has {dims})")
        if any(s % down for s in self.preprocessing.size):
            raise ValueError(
                f"preprocessing.size {self.preprocessing.size} must be divisible by the autoencoder "
                f"downsampling factor {down} (2 ** (len(autoencoder.channels) - 1))"
            )
        unet_down = 2 ** (len(self.unet.channels) - 1)
        latent = [s // down for s in self.preprocessing.size]
        if any(v % unet_down for v in latent):
            valid = down * unet_down
            raise ValueError(
                f"preprocessing.size {self.preprocessing.size} gives a latent grid of {latent}, which the UNet's "
                f"{len(self.unet.channels)} levels cannot halve {len(self.unet.channels) - 1} times: use sizes "
                f"divisible by {valid} (e.g. {[max(valid, round(s / valid) * valid) for s in self.preprocessing.size]})"
            )
        _check_groups("autoencoder", self.autoencoder.channels, self.autoencoder.norm_num_groups)
        _check_groups("unet", self.unet.channels, self.unet.norm_num_groups)
        heads = [
            c for c, a in zip(self.unet.channels, self.unet.attention_levels) if a and c % self.unet.num_head_channels
        ]
        if heads:
            raise ValueError(
                f"unet.num_head_channels {self.unet.num_head_channels} must divide the channels of every level with "
                f"attention; {heads} are not multiples of it"
            )
        return self

    @property
    def spatial_dims(self) -> int:
        return len(self.preprocessing.size)

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir or self.output_dir.with_name(self.output_dir.name + ".work")

    def fingerprint(self, stage: str = "stage2") -> str:
        """Hash of the settings that decide a stage's weights (bookkeeping fields excluded).

        A checkpoint only resumes under the same fingerprint. Stage 1 depends on the data, the
        grid, the autoencoder and its own settings only, so a finished autoencoder survives a
        change of the diffusion settings; stage 2 depends on everything but the lesion model
        (which has its own fingerprint, ``lesions.train``) and whether phantom masks are written.
        """
        d = self.model_dump(
            mode="json",
            exclude={
                "lesion",
                "output_dir",
                "work_dir",
                "device",
                "threads",
                "log_every",
                "sample_every",
                "checkpoint_every",
                "build_privacy_index",
                "name",
                "weights_dtype",
                "default_guidance_scale",
                "body_part",
            },
        )
        if d["data"].get("phantoms"):
            d["data"]["phantoms"].pop("masks", None)
        d["preprocessing"].pop("fov_tolerance")  # decides what is reported, not the weights
        if stage == "stage1":
            d = {
                k: d[k]
                for k in (
                    "data",
                    "preprocessing",
                    "autoencoder",
                    "stage1",
                    "seed",
                    "precision",
                    "val_every",
                    "early_stopping_patience",
                )
            }
        return sha256_json(d)[:16]


def _check_groups(section: str, channels: list[int], groups: int) -> None:
    """GroupNorm splits each level's channels into ``groups`` groups: they must divide evenly."""
    bad = [c for c in channels if groups < 1 or c % groups]
    if bad:
        raise ValueError(
            f"{section}.norm_num_groups {groups} must divide every entry of {section}.channels {channels}; "
            f"{bad} are not multiples of it"
        )


def resolve_path(p: Path | None, base: Path) -> Path | None:
    """``p`` against ``base`` when relative, normalised; None stays None."""
    # Normalised ("a/../b" -> "b"), so the same file reached by two relative paths gives the same
    # fingerprint and a finished stage resumes whichever config names it.
    return None if p is None else (p if p.is_absolute() else (base / p)).resolve()


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None, source: str = "config") -> TrainConfig:
    """Validate a config dict; relative paths are resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of settings at the top level; got {type(data).__name__}")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(error_lines(exc, TrainConfig, source)) from None

    base = base_dir or Path.cwd()
    cfg.output_dir = resolve_path(cfg.output_dir, base)  # type: ignore[assignment]
    cfg.work_dir = resolve_path(cfg.work_dir, base)
    cfg.data.labels = resolve_path(cfg.data.labels, base)
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a training YAML.

    Raises:
        InputError: unreadable file, bad YAML or a setting that does not validate (one line).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the training config ({exc.strerror})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}:{describe_yaml_error(exc, 'training config')}") from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))
