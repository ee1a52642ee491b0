"""Tiny 2D and 3D models for the model tests."""

from __future__ import annotations

import pytest
import torch

from medsynth.data.transforms import Preprocessing
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig

INTENSITY = {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1200}}


def make_tiny_config(dims: int, **overrides) -> ModelConfig:
    size = (16,) * dims
    pre = Preprocessing(dims, size, (4.0,) * dims, INTENSITY, slice_thickness=5.0)
    kwargs = dict(
        spatial_dims=dims,
        in_channels=1,
        pathologies=["effusion", "mass", "nodule", "normal"],
        modalities=["CT", "MR"],
        autoencoder=dict(
            channels=[8, 8],
            latent_channels=2,
            num_res_blocks=1,
            attention_levels=[False, False],
            norm_num_groups=4,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        ),
        unet=dict(
            channels=[8, 16], attention_levels=[False, True], num_res_blocks=1, norm_num_groups=4, num_head_channels=8
        ),
        cond_dim=8,
        preprocessing=pre.to_dict(),
        scale_factor=0.7,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


@pytest.fixture
def tiny_config():
    """``tiny_config(dims, **overrides) -> ModelConfig``."""
    return make_tiny_config


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def tiny_model(request) -> LatentDiffusionModel:
    torch.manual_seed(0)
    return LatentDiffusionModel(make_tiny_config(request.param)).eval()
