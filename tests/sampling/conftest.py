"""Tiny random models (2D, 3D, rectified flow) and an oracle denoiser for the sampling tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsynth.models.ldm import LatentDiffusionModel, ModelConfig

INTENSITY = {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1200}}
VP = {
    "kind": "ddpm",
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "prediction_type": "epsilon",
}


def tiny_model(dims: int, scheduler: dict | None = None, size: int = 16) -> LatentDiffusionModel:
    """An untrained model small enough for a unit test (latent 2 x (size/2)^dims)."""
    cfg = ModelConfig(
        spatial_dims=dims,
        in_channels=1,
        pathologies=["normal", "nodule", "mass"],
        modalities=["CT", "MR"],
        autoencoder={
            "channels": [8, 8],
            "latent_channels": 2,
            "num_res_blocks": 1,
            "attention_levels": [False, False],
            "norm_num_groups": 4,
        },
        unet={
            "channels": [8, 8],
            "attention_levels": [False, True],
            "num_res_blocks": 1,
            "num_head_channels": 8,
            "norm_num_groups": 4,
        },
        cond_dim=8,
        preprocessing={
            "spatial_dims": dims,
            "size": [size] * dims,
            "spacing": [2.5] * dims,
            "intensity": INTENSITY,
            "slice_thickness": 3.0,
        },
        scale_factor=0.7,
        scheduler=dict(scheduler or VP),
    )
    torch.manual_seed(1234)
    return LatentDiffusionModel(cfg).eval()


@pytest.fixture(scope="session")
def model2d() -> LatentDiffusionModel:
    return tiny_model(2)


@pytest.fixture(scope="session")
def model3d() -> LatentDiffusionModel:
    return tiny_model(3, size=16)


@pytest.fixture(scope="session")
def model_rflow() -> LatentDiffusionModel:
    return tiny_model(2, {"kind": "rflow", "num_train_timesteps": 1000})


class OracleUNet(nn.Module):
    """Stands in for the UNet: predicts exactly what denoises towards a known clean latent.

    The target depends on the condition (``target * (1 + mean of the context)``), so guidance and
    conditioning are visible in the result; ``calls`` records (batch size, context) per call,
    ``inputs`` and ``timesteps`` the latent and timestep it was given.
    """

    def __init__(self, target: torch.Tensor, model: LatentDiffusionModel) -> None:
        super().__init__()
        self.target = target
        self.kind = model.config.scheduler["kind"]
        schedule = model.make_scheduler()
        self.num_train_timesteps = schedule.num_train_timesteps
        self.alphas_cumprod = getattr(schedule, "alphas_cumprod", None)  # None for rectified flow
        self.reset()

    def reset(self) -> None:
        """Forget the recorded calls."""
        self.calls: list[tuple[int, torch.Tensor]] = []
        self.inputs: list[torch.Tensor] = []
        self.timesteps: list[torch.Tensor] = []

    def clean(self, context: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + context.mean(dim=(1, 2))
        return self.target * scale.view(-1, *[1] * self.target.dim())

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], context.clone()))
        self.inputs.append(x.clone())
        self.timesteps.append(timesteps.reshape(-1)[0].clone())
        x0 = self.clean(context)
        t = timesteps.reshape(-1)[0]
        if self.kind == "rflow":
            s = float(t) / self.num_train_timesteps
            noise = (x - (1 - s) * x0) / s
            return x0 - noise
        acp = self.alphas_cumprod[int(t)]
        return (x - acp.sqrt() * x0) / (1 - acp).sqrt()


def oracle_model(model: LatentDiffusionModel, seed: int = 0) -> LatentDiffusionModel:
    """A fresh copy of ``model``'s architecture whose UNet is an ``OracleUNet`` (``model.unet``)."""
    m = tiny_model(model.spatial_dims, model.config.scheduler, size=model.preprocessing.size[0])
    target = torch.randn(m.latent_shape, generator=torch.Generator().manual_seed(seed))
    m.unet = OracleUNet(target, m)
    return m


@pytest.fixture(scope="session")
def make_tiny():
    """``tiny_model`` for tests that need a model of their own (test modules cannot import conftest)."""
    return tiny_model


@pytest.fixture(scope="session")
def make_oracle():
    return oracle_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread hand-offs cost more than they save on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
