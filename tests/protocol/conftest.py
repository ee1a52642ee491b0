"""Fixtures for the protocol tests: tiny untrained model directories and protocol writers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medsynth.models.artifact import save_model
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig

# One intra-op thread: the CI box has 2 cores shared by several jobs, and two spinning OpenMP
# threads per test process run tiny convolutions tens of times slower than one.
torch.set_num_threads(1)

INTENSITY = {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1200}}
VP = {
    "kind": "ddpm",
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "prediction_type": "epsilon",
}


def _tiny(dims: int, size: int, scheduler: dict[str, Any]) -> LatentDiffusionModel:
    """An untrained model small enough for plumbing tests (latent 2 x (size/2)^dims)."""
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
            "attention_levels": [False, False],
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
        scheduler=dict(scheduler),
        name=f"tiny-{dims}d",
    )
    torch.manual_seed(1234)
    return LatentDiffusionModel(cfg).eval()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Model directories without a privacy index: ``2d`` (16x16), ``3d`` (8^3), ``rflow`` (2D)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "2d": save_model(_tiny(2, 16, VP), root / "tiny2d"),
        "3d": save_model(_tiny(3, 8, VP), root / "tiny3d"),
        "rflow": save_model(_tiny(2, 16, {"kind": "rflow", "num_train_timesteps": 1000}), root / "tinyrflow"),
    }


def base_protocol(model: str | Path, **overrides: Any) -> dict[str, Any]:
    """A small valid protocol (gate off: these models carry no privacy index)."""
    doc: dict[str, Any] = {
        "protocol": 1,
        "name": "tiny-study",
        "model": str(model),
        "seed": 20261121,
        "output": {"dir": "out", "formats": ["nifti", "png"]},
        "sampler": {"method": "ddim", "steps": 2, "guidance_scale": 3.0, "batch_size": 2},
        "quotas": [
            {"pathology": "normal", "modality": "CT", "count": 3},
            {"pathology": "nodule", "modality": "MR", "count": 2, "guidance_scale": 4.0},
        ],
        "privacy": {"gate": False},
    }
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return copy.deepcopy(doc)


@pytest.fixture(scope="session")
def make_protocol():
    """``make_protocol(model_dir, **overrides)`` -> a protocol dict (see ``base_protocol``)."""
    return base_protocol


@pytest.fixture
def write_protocol(tmp_path):
    """``write_protocol(doc_or_text, name=...)`` -> path of the YAML file in ``tmp_path``."""

    def write(doc: dict[str, Any] | str, name: str = "protocol.yaml") -> Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write
