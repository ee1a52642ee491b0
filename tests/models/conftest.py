"""Tiny 2D and 3D models for the model tests."""

from __future__ import annotations

import shutil
from pathlib import Path

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


# A small lesion model for the verification tests (pixel-space UNet on a 16^2 crop).
LESION_CFG = dict(
    spatial_dims=2,
    crop_size=[16, 16],
    spacing=[2.0, 2.0],
    pathologies=["nodule"],
    modalities=["CT"],
    intensity={"CT": {"kind": "linear", "lo": -1000, "hi": 1000}},
    unet={
        "channels": [8, 16],
        "attention_levels": [False, True],
        "num_head_channels": 8,
        "norm_num_groups": 4,
        "num_res_blocks": 1,
    },
    cond_dim=8,
)


@pytest.fixture(scope="module")
def full_model_dir(tmp_path_factory):
    """A tiny 2D model directory with every kind of recorded file, written by the writers that record them.

    Its privacy indexes are copies of the shipped phantom-2d's (loading an index does not need it
    to match the model), recorded as the index builders record theirs (``record_folder``).
    Tests copy it before damaging anything.
    """
    import numpy as np

    from medsynth.lesions.model import LesionModel, LesionModelConfig, save_lesion_model
    from medsynth.lesions.shapes import MaskBank
    from medsynth.models.artifact import PRETRAINED_DIR, save_model
    from medsynth.models.verify import record_folder

    shipped = PRETRAINED_DIR / "phantom-2d"
    torch.manual_seed(0)
    out = save_model(LatentDiffusionModel(make_tiny_config(2)).eval(), tmp_path_factory.mktemp("full") / "m")
    shutil.copytree(shipped / "privacy", out / "privacy")
    record_folder(out, "privacy")
    mask = np.zeros((5, 6), bool)
    mask[1:4, 1:5] = True
    save_lesion_model(LesionModel(LesionModelConfig(**LESION_CFG)), out, MaskBank((mask,), ((2.0, 2.0),)))
    shutil.copytree(shipped / "lesion" / "privacy", out / "lesion" / "privacy")
    record_folder(out, "lesion/privacy")
    return out


@pytest.fixture
def model_copy(full_model_dir, tmp_path):
    """A fresh copy of ``full_model_dir`` to damage."""
    return Path(shutil.copytree(full_model_dir, tmp_path / "copy"))
