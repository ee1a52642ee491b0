"""The lesion model: a pixel-space diffusion UNet that inpaints a lesion into a crop of a scan.

The network is a MONAI ``DiffusionModelUNet`` on a fixed-size crop around a lesion, at a
fixed spacing (``LesionModelConfig.spacing``), in the normalised units of the model's
``Preprocessing``. Its input channels are ``[x_t, surroundings, mask]``:

* ``x_t``: the noisy crop (``C`` channels);
* ``surroundings``: the clean crop with the *hole* (the lesion mask dilated by ``margin``
  voxels) set to 0, so the network sees the anatomy it must blend into but not the lesion;
* ``mask``: the lesion mask as -1 / +1. The hole is a fixed function of the mask (a
  Euclidean dilation by ``margin``), so the network knows it without a channel of its own.

Condition: cross-attention on a medsynth ``Conditioner`` (pathology and modality tokens, each
with its null token for classifier-free guidance). The weights are shared across classes and
modalities, which is what lets about ten examples of a class suffice: an MR nodule borrows
"round solid lesion" from CT nodules and "MR contrast" from MR masses.

Why pixel space: a phantom nodule is 3-5 voxels across on the 64-voxel grid, one or two latent
voxels after the shipped autoencoder's downsampling; a crop is small, so the UNet is cheap in
pixels too (see ``benchmarks/lesion_model.py`` for the measurement).

A model directory stores it in a sub-folder ``lesion/``: ``config.json`` (``LesionModelConfig``)
and ``lesion.safetensors`` (the UNet and conditioner, EMA weights after training). No pickle.
The model directory's own config.json records their sizes and SHA-256 (``models.verify``),
checked when they are loaded.

Example:
    >>> cfg = LesionModelConfig(spatial_dims=2, crop_size=[16, 16], spacing=[2.0, 2.0],
    ...     pathologies=["nodule"], modalities=["CT"], intensity={"CT": {"kind": "linear", "lo": -1000, "hi": 1000}},
    ...     unet={"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8,
    ...           "norm_num_groups": 4, "num_res_blocks": 1}, cond_dim=8)
    >>> model = LesionModel(cfg)
    >>> x = torch.zeros(2, 1, 16, 16)
    >>> model(x, torch.tensor([10, 10]), x, x, model.context(["nodule"] * 2, ["CT"] * 2)).shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import Scheduler
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from medsynth import __version__
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.lesions.morphology import dilate
from medsynth.lesions.shapes import MaskBank
from medsynth.limits import GUIDANCE_RANGE
from medsynth.models.conditioning import Conditioner
from medsynth.models.ldm import DEFAULT_SCHEDULER, SCHEDULER_KINDS, validate_scheduler_config
from medsynth.models.verify import record_folder, verify_files
from medsynth.strict import dataclass_from_dict

LESION_DIR = "lesion"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "lesion.safetensors"
MASKS_NAME = "masks.safetensors"  # the training lesion shapes (MaskBank) that insertion draws from

# A small UNet: crops are 32^2 / 16^3-24^3, and ten examples a class cannot feed a large one.
DEFAULT_UNET: dict[str, Any] = {
    "channels": [32, 64, 64],
    "attention_levels": [False, True, True],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": 16,
    "transformer_num_layers": 1,
}


@dataclass
class LesionModelConfig:
    """Everything needed to rebuild a ``LesionModel`` and use it; the ``lesion/config.json``.

    Args:
        spatial_dims: 2 or 3.
        crop_size: the crop the UNet works on, one value per axis, each divisible by the UNet's
            downsampling ``2 ** (len(unet["channels"]) - 1)``.
        spacing: voxel size of the crop in mm (array axis order); backgrounds on another grid
            are resampled to it and back (``insert_lesion``).
        pathologies: lesion vocabulary (e.g. ``["mass", "nodule"]``).
        modalities: modality vocabulary (e.g. ``["CT", "MR"]``).
        intensity: the per-modality normalisation the crops were made with (a ``Preprocessing``'s
            ``intensity``); insertion refuses a preprocessing that disagrees.
        unet: ``DiffusionModelUNet`` keyword arguments without spatial_dims, channel counts and
            conditioning, which follow from the fields above.
        cond_dim: width of the condition tokens (the UNet's ``cross_attention_dim``).
        channels: image channels ``C`` (the UNet takes ``2 C + 1``, gives ``C``).
        margin: voxels by which the mask is dilated into the hole the model fills (at ``spacing``).
        scheduler: as ``ModelConfig.scheduler`` (``ddpm`` with epsilon or v, or ``rflow``).
        default_guidance_scale: the guidance ``inpaint`` uses when the caller names none.
        sizes_mm: per pathology, the ``[smallest, largest]`` equivalent diameter in mm of the
            training lesions: the size range insertion draws from when the user names none.
    """

    spatial_dims: int
    crop_size: list[int]
    spacing: list[float]
    pathologies: list[str]
    modalities: list[str]
    intensity: dict[str, dict[str, Any]]
    unet: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_UNET))
    cond_dim: int = 64
    channels: int = 1
    margin: int = 3
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULER))
    default_guidance_scale: float = 1.5
    sizes_mm: dict[str, list[float]] = field(default_factory=dict)
    medsynth_version: str = __version__

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"lesion config.spatial_dims: expected 2 or 3; got {self.spatial_dims!r}")
        self.crop_size = [int(s) for s in self.crop_size]
        self.spacing = [float(s) for s in self.spacing]
        self.pathologies = [str(p) for p in self.pathologies]
        self.modalities = [str(m).upper() for m in self.modalities]
        for name, value in (("crop_size", self.crop_size), ("spacing", self.spacing)):
            if len(value) != self.spatial_dims or min(value) <= 0:
                raise InputError(f"lesion config.{name}: expected {self.spatial_dims} positive values; got {value}")
        levels = self.unet.get("channels", DEFAULT_UNET["channels"])
        down = 2 ** (len(levels) - 1)
        if any(s % down for s in self.crop_size):
            raise InputError(
                f"lesion config.crop_size {self.crop_size}: each value must be divisible by {down}, the "
                f"downsampling of a UNet with {len(levels)} levels"
            )
        if not any(self.unet.get("attention_levels", DEFAULT_UNET["attention_levels"])):
            raise InputError(
                "lesion config.unet.attention_levels: at least one level needs attention for the condition"
            )
        # Validated here (through Preprocessing), so a bad entry fails when the config is read.
        self.intensity = self.preprocessing().intensity
        missing = sorted(set(self.modalities) - set(self.intensity))
        if missing:
            raise InputError(f"lesion config.intensity: no normalisation for modalities {missing}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise InputError(f"lesion config.margin: expected a whole number of voxels >= 0; got {self.margin!r}")
        validate_scheduler_config(self.scheduler)
        for name, span in self.sizes_mm.items():
            if name not in self.pathologies or len(span) != 2 or not 0 < float(span[0]) <= float(span[1]):
                raise InputError(
                    f"lesion config.sizes_mm[{name!r}]: expected a pathology of the vocabulary and "
                    f"[smallest, largest] > 0 mm; got {span!r}"
                )
        self.sizes_mm = {k: [float(v[0]), float(v[1])] for k, v in self.sizes_mm.items()}
        lo, hi = GUIDANCE_RANGE
        if not lo <= float(self.default_guidance_scale) <= hi:
            raise InputError(
                f"lesion config.default_guidance_scale: expected [{lo:g}, {hi:g}]; got {self.default_guidance_scale}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LesionModelConfig:
        """Inverse of ``to_dict``; unknown or missing keys are an ``InputError``."""
        return dataclass_from_dict(cls, d, "lesion config.json")

    def preprocessing(self) -> Preprocessing:
        """A ``Preprocessing`` holding this model's intensity normalisation on its crop grid."""
        return Preprocessing(self.spatial_dims, tuple(self.crop_size), tuple(self.spacing), self.intensity)


class LesionModel(nn.Module):
    """Conditioner + pixel-space inpainting UNet, built from a ``LesionModelConfig``.

    ``forward`` takes the three input parts separately, so training and sampling cannot
    assemble them in different orders.
    """

    def __init__(self, config: LesionModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.unet = DiffusionModelUNet(
            spatial_dims=config.spatial_dims,
            in_channels=2 * c + 1,
            out_channels=c,
            with_conditioning=True,
            cross_attention_dim=config.cond_dim,
            use_flash_attention=True,  # torch SDPA: same parameters as MONAI's explicit attention, faster
            **config.unet,
        )
        self.conditioner = Conditioner(config.pathologies, config.modalities, config.cond_dim)

    @property
    def spatial_dims(self) -> int:
        return self.config.spatial_dims

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """``(C, *crop_size)``: the shape of one crop (the samplers' ``latent_shape``)."""
        return (self.config.channels, *self.config.crop_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def context(
        self,
        pathologies: Sequence[str | Sequence[str]],
        modalities: Sequence[str],
        drop_pathology: torch.Tensor | None = None,
        drop_modality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attention context ``(B, 2, cond_dim)``; the drop masks null tokens (training)."""
        return self.conditioner(pathologies, modalities, drop_pathology, drop_modality)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, surroundings: torch.Tensor, mask: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's prediction (epsilon, v or flow velocity, per ``config.scheduler``).

        Args:
            x_t: noisy crops ``(B, C, *crop)``.
            t: timesteps ``(B,)`` or ``(1,)``.
            surroundings: clean crops with the hole zeroed ``(B, C, *crop)`` (``lesion_inputs``).
            mask: the lesion mask channel ``(B, 1, *crop)`` in -1/+1 (``lesion_inputs``).
            context: ``context(...)``, or ``conditioner.null(B)``.
        """
        return self.unet(torch.cat([x_t, surroundings, mask], dim=1), timesteps=t, context=context)

    def make_scheduler(self) -> Scheduler:
        """A fresh training scheduler (MONAI ``DDPMScheduler`` or ``RFlowScheduler``)."""
        return SCHEDULER_KINDS[self.config.scheduler["kind"]](self.config.scheduler, self.spatial_dims)


def lesion_inputs(crop: torch.Tensor, mask: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning channels of a batch: ``(surroundings, mask channel)``.

    Args:
        crop: clean normalised crops ``(B, C, *crop)``.
        mask: boolean lesion masks ``(B, *crop)``.
        hole: boolean holes ``(B, *crop)``: the mask dilated by the model's margin (``holes_of``).
    """
    surroundings = crop * (~hole).unsqueeze(1).to(crop.dtype)
    return surroundings, (mask.unsqueeze(1).to(crop.dtype) * 2.0 - 1.0)


def holes_of(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """The hole of each mask in a batch ``(B, *crop)``: dilated by ``margin`` voxels (Euclidean ball).

    The same dilation as the compositing band (``morphology.dilate``), so "the mask and its margin"
    means one thing everywhere.
    """
    arr = mask.detach().cpu().numpy().astype(bool)
    return torch.from_numpy(np.stack([dilate(m, margin) for m in arr])).to(mask.device)


# -- save / load -----------------------------------------------------------------------------


def save_lesion_model(
    model: LesionModel, model_dir: str | Path, bank: MaskBank | None = None, *, weights_dtype: str = "float32"
) -> Path:
    """Write ``model`` to ``MODEL_DIR/lesion/`` (config.json + lesion.safetensors), atomically.

    Args:
        weights_dtype: ``float32`` or ``float16`` (half the file; loaded back as float32), as the
            whole-image model's ``weights_dtype``.
        bank: the training lesion shapes, stored beside the weights as ``masks.safetensors``
            (binary tight crops and their spacings; no image values), for ``load_mask_bank``.

    Returns:
        The ``lesion/`` folder written (it replaces an earlier one whole, privacy index included).
        The model directory's config.json then records the folder's files (and no longer the
        replaced ones'), when the directory has a config.json.
    """
    out = Path(model_dir) / LESION_DIR
    if weights_dtype not in ("float32", "float16"):
        raise InputError(f"lesion model weights_dtype: expected float32 or float16; got {weights_dtype!r}")
    dtype = torch.float16 if weights_dtype == "float16" else torch.float32
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "medsynth": __version__})
        if bank is not None:
            masks = {f"mask-{i:05d}": torch.from_numpy(m.astype(np.uint8)) for i, m in enumerate(bank.masks)}
            spacings = json.dumps([list(sp) for sp in bank.spacings])
            save_file(masks, str(tmp / MASKS_NAME), metadata={"spacings": spacings, "medsynth": __version__})
    record_folder(model_dir, LESION_DIR)
    return out


def load_mask_bank(model_dir: str | Path) -> MaskBank | None:
    """The training lesion shapes saved with the lesion model; None when it has none.

    Raises:
        InputError: a damaged ``masks.safetensors`` (one line, naming the file).
    """
    path = Path(model_dir) / LESION_DIR / MASKS_NAME
    if not path.is_file():
        return None
    verify_files(model_dir, (f"{LESION_DIR}/{MASKS_NAME}",))
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            spacings = json.loads((f.metadata() or {})["spacings"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable mask bank ({first}); retrain or re-save the lesion model") from None
    keys = sorted(state)
    if len(keys) != len(spacings):
        raise InputError(f"{path}: {len(keys)} masks but {len(spacings)} spacings; retrain the lesion model")
    return MaskBank(tuple(state[k].numpy() != 0 for k in keys), tuple(tuple(float(v) for v in sp) for sp in spacings))


def load_lesion_model(model_dir: str | Path, device: str | torch.device = "cpu") -> LesionModel | None:
    """The lesion model of a model directory, in eval mode; None when it has no ``lesion/`` folder.

    Raises:
        InputError: a ``lesion/`` folder with a missing or damaged config.json or weights file,
            a file that differs from the model directory's records (its lesion privacy index
            included), or weights that do not fit the config (one line, naming the file).
    """
    folder = Path(model_dir) / LESION_DIR
    if not folder.is_dir():
        return None
    # The whole folder, lesion privacy index included: whoever loads the lesion model uses them together.
    verify_files(model_dir, (f"{LESION_DIR}/",))
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{cfg_path}: not readable JSON ({type(exc).__name__}); re-save the lesion model") from None
    if not isinstance(raw, dict):
        raise InputError(f"{cfg_path}: expected a JSON object of lesion model settings")
    model = LesionModel(LesionModelConfig.from_dict(raw))
    if not w_path.is_file():
        raise InputError(f"{w_path}: missing; a lesion model folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{w_path}: not a readable safetensors file ({first}); re-save the lesion model") from None
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise InputError(f"{w_path}: weights do not match {CONFIG_NAME} ({first})") from None
    return model.to(device).eval()
