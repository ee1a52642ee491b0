"""The latent diffusion model bundle: MONAI AutoencoderKL + DiffusionModelUNet + conditioning.

``ModelConfig`` is everything needed to rebuild the networks and sample (it is the model
directory's ``config.json``); ``LatentDiffusionModel`` holds the three networks and the
preprocessing, and offers the few operations training and sampling need: ``encode``,
``decode``, ``context``, the UNet ``forward`` and ``make_scheduler``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler, Scheduler
from torch import nn

from medsynth import __version__
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.limits import DEFAULT_GUIDANCE, GUIDANCE_RANGE
from medsynth.models.conditioning import Conditioner
from medsynth.models.fov import FieldOfView
from medsynth.strict import dataclass_from_dict

DEFAULT_SCHEDULER: dict[str, Any] = {
    "kind": "ddpm",
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "prediction_type": "epsilon",
}

SCHEDULES = ("linear_beta", "scaled_linear_beta", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _ddpm(cfg: dict[str, Any]) -> Scheduler:
    schedule = cfg.get("schedule", "linear_beta")
    # MONAI's cosine schedule takes no beta range; the beta schedules do.
    kwargs = {} if schedule == "cosine" else {"beta_start": cfg["beta_start"], "beta_end": cfg["beta_end"]}
    return DDPMScheduler(
        num_train_timesteps=int(cfg["num_train_timesteps"]),
        schedule=schedule,
        prediction_type=cfg.get("prediction_type", "epsilon"),
        # Latents are not confined to [-1, 1]: clipping the predicted x0 would bias samples.
        clip_sample=False,
        **kwargs,
    )


def _rflow(cfg: dict[str, Any], spatial_dims: int) -> Scheduler:
    return RFlowScheduler(
        num_train_timesteps=int(cfg["num_train_timesteps"]),
        use_discrete_timesteps=bool(cfg.get("use_discrete_timesteps", True)),
        sample_method=cfg.get("sample_method", "uniform"),
        spatial_dim=spatial_dims,
    )


# kind -> factory(scheduler config, spatial_dims)
SCHEDULER_KINDS: dict[str, Callable[[dict[str, Any], int], Scheduler]] = {
    "ddpm": lambda cfg, dims: _ddpm(cfg),
    "rflow": _rflow,
}


def validate_scheduler_config(cfg: dict[str, Any]) -> None:
    """One-line ``InputError`` for a scheduler config that cannot be built."""
    kind = cfg.get("kind")
    if kind not in SCHEDULER_KINDS:
        raise InputError(f"scheduler.kind: unknown {kind!r}; expected one of {sorted(SCHEDULER_KINDS)}")
    if kind == "ddpm":
        if cfg.get("schedule") not in SCHEDULES:
            raise InputError(f"scheduler.schedule: unknown {cfg.get('schedule')!r}; expected one of {list(SCHEDULES)}")
        if cfg.get("prediction_type") not in PREDICTION_TYPES:
            raise InputError(
                f"scheduler.prediction_type: unknown {cfg.get('prediction_type')!r}; "
                f"expected one of {list(PREDICTION_TYPES)}"
            )
    if int(cfg.get("num_train_timesteps", 0)) < 1:
        raise InputError(f"scheduler.num_train_timesteps: expected >= 1; got {cfg.get('num_train_timesteps')}")


@dataclass
class ModelConfig:
    """Constructor arguments, vocabularies, preprocessing, latent scale and scheduler of a model.

    JSON-serialisable (``to_dict``/``from_dict``); this is the model directory's config.json.
    ``autoencoder`` holds ``monai.networks.nets.AutoencoderKL`` keyword arguments and ``unet``
    ``DiffusionModelUNet`` keyword arguments, both without ``spatial_dims`` and channel counts,
    which follow from ``spatial_dims``, ``in_channels`` and the autoencoder's ``latent_channels``.
    """

    spatial_dims: int
    in_channels: int
    pathologies: list[str]
    modalities: list[str]
    autoencoder: dict[str, Any]
    unet: dict[str, Any]
    cond_dim: int
    preprocessing: dict[str, Any]
    scale_factor: float = 1.0
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULER))
    fingerprint: dict[str, Any] = field(default_factory=dict)
    name: str = "medsynth-ldm"
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    medsynth_version: str = __version__
    weights_dtype: str = "float32"
    # The guidance used when a caller names none: chosen per model from its measured accuracy and
    # diversity against guidance (the model card), as the best setting differs between models.
    default_guidance_scale: float = DEFAULT_GUIDANCE
    # Per axis, the smallest and largest field of view (mm) the training scans filled on the
    # grid (``medsynth.models.fov``); None for a model trained before it was recorded.
    trained_fov: dict[str, list[float]] | None = None
    # DICOM BodyPartExamined of the scans the model makes (CHEST for the phantoms), written into
    # generated DICOM; None (configs without it): not known, and the attribute is left out.
    body_part: str | None = None
    # A fine-tuned model that stores only what changed: its base (id and sha256), the method and
    # what its files hold (``medsynth.adapters``); None for a standalone model.
    adapter: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"config.spatial_dims: expected 2 or 3; got {self.spatial_dims}")
        self.pathologies = [str(p) for p in self.pathologies]
        self.modalities = [str(m).upper() for m in self.modalities]
        validate_scheduler_config(self.scheduler)
        if self.weights_dtype not in ("float32", "float16"):
            raise InputError(f"config.weights_dtype: expected float32 or float16; got {self.weights_dtype!r}")
        g, (lo, hi) = self.default_guidance_scale, GUIDANCE_RANGE
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not lo <= g <= hi:
            raise InputError(f"config.default_guidance_scale: expected a number in [{lo:g}, {hi:g}]; got {g!r}")
        self.default_guidance_scale = float(g)
        if self.body_part is not None and not (
            isinstance(self.body_part, str) and re.fullmatch(r"[A-Z0-9 _]{1,16}", self.body_part)
        ):
            raise InputError(
                "config.body_part: expected a DICOM Body Part Examined code (1-16 capitals, digits, "
                f"space or '_', such as CHEST) or null; got {self.body_part!r}"
            )

    @property
    def downsampling(self) -> int:
        """The autoencoder's downsampling factor per axis: image sides must be multiples of it."""
        return int(2 ** (len(self.autoencoder.get("channels", (32, 64, 64, 64))) - 1))

    def fields_of_view(self) -> FieldOfView:
        """The fields of view the model was trained on (``medsynth.models.fov``)."""
        pre = self.preprocessing
        return FieldOfView.of_config(
            self.trained_fov, [float(n) * float(s) for n, s in zip(pre["size"], pre["spacing"])]
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return dataclass_from_dict(cls, d, "config.json")


def build_autoencoder(cfg: ModelConfig) -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.in_channels, **cfg.autoencoder
    )


def build_unet(cfg: ModelConfig) -> DiffusionModelUNet:
    latent = int(cfg.autoencoder.get("latent_channels", 3))
    return DiffusionModelUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=latent,
        out_channels=latent,
        with_conditioning=True,
        cross_attention_dim=cfg.cond_dim,
        # torch's scaled_dot_product_attention instead of MONAI's explicit softmax(QK^T)V: same
        # parameters and outputs (within 1e-5), the UNet ~25% faster on CPU (benchmarks/bench_sampling.py).
        use_flash_attention=True,
        **cfg.unet,
    )


class LatentDiffusionModel(nn.Module):
    """Autoencoder + conditioned latent UNet + conditioner + preprocessing, built from a ``ModelConfig``.

    Example:
        >>> model = load_model("builtin:phantom-2d")          # doctest: +SKIP
        >>> ctx = model.context(["nodule"], ["CT"])           # doctest: +SKIP
        >>> eps = model(z_t, t, ctx)                          # doctest: +SKIP
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocessing = Preprocessing.from_dict(config.preprocessing)
        if self.preprocessing.spatial_dims != config.spatial_dims:
            raise InputError(
                f"config: preprocessing.spatial_dims={self.preprocessing.spatial_dims} "
                f"disagrees with spatial_dims={config.spatial_dims}"
            )
        down = config.downsampling
        bad = [s for s in self.preprocessing.size if s % down]
        if bad:
            raise InputError(
                f"config: preprocessing.size {list(self.preprocessing.size)} must be divisible by the "
                f"autoencoder's downsampling factor {down}"
            )
        self.autoencoder = build_autoencoder(config)
        self.unet = build_unet(config)
        self.conditioner = Conditioner(config.pathologies, config.modalities, config.cond_dim)
        self._down = down

    # -- descriptive properties --------------------------------------------------------------

    @property
    def pathologies(self) -> list[str]:
        return list(self.config.pathologies)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    @property
    def spatial_dims(self) -> int:
        return self.config.spatial_dims

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """``(latent_channels, *spatial)`` of the latent the UNet works on."""
        c = int(self.config.autoencoder.get("latent_channels", 3))
        return (c, *(s // self._down for s in self.preprocessing.size))

    @property
    def downsampling(self) -> int:
        """The autoencoder's downsampling factor per axis: image sides must be multiples of it."""
        return self._down

    @property
    def trained_fov(self) -> FieldOfView:
        """The fields of view the model was trained on (``medsynth.models.fov``)."""
        return self.config.fields_of_view()

    @property
    def scale_factor(self) -> float:
        return float(self.config.scale_factor)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- operations --------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised image ``(B, C, *size)`` -> scaled latent (posterior mean, or a sample with ``generator``)."""
        z_mu, z_sigma = self.autoencoder.encode(x)
        if generator is not None:
            noise = torch.randn(z_mu.shape, generator=generator, device=z_mu.device, dtype=z_mu.dtype)
            z_mu = z_mu + z_sigma * noise
        return z_mu * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent ``(B, *latent_shape)`` -> normalised image, whole.

        For volumes too large to decode at once, ``medsynth.sampling.decode_tiled(model, z, max_memory=...)``
        decodes slab by slab with the same result (``encode_tiled`` likewise for ``encode``).
        """
        return self.autoencoder.decode(z / self.scale_factor)

    def context(self, pathologies: Sequence[str | Sequence[str]], modalities: Sequence[str]) -> torch.Tensor:
        """Cross-attention context ``(B, 2, cond_dim)`` of one condition per item (see ``Conditioner``).

        Training's condition dropout calls ``conditioner`` itself, with its ``drop_*`` masks.
        """
        return self.conditioner(pathologies, modalities)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction (epsilon, v or flow velocity, per ``config.scheduler``)."""
        return self.unet(z_t, timesteps=t, context=context)

    def make_scheduler(self) -> Scheduler:
        """A fresh MONAI ``DDPMScheduler`` or ``RFlowScheduler`` matching the training schedule."""
        return SCHEDULER_KINDS[self.config.scheduler["kind"]](self.config.scheduler, self.spatial_dims)
