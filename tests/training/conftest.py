"""Tiny phantom datasets and tiny training configs for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsynth.data.phantoms import BASE_PATHOLOGIES, phantom_dataset


@pytest.fixture(scope="session")
def phantoms_2d(tmp_path_factory) -> Path:
    """labels.csv of 80 2D phantoms at 32^2 (10 per pathology/modality class)."""
    return phantom_dataset(
        tmp_path_factory.mktemp("ph2d"), dim=2, count=80, seed=3, size=32, pathologies=BASE_PATHOLOGIES
    )


def tiny_train_config(labels: Path | None, out: Path, **over) -> dict:
    """A config dict for a seconds-long run on a 16^2 grid (3D: pass preprocessing/size overrides)."""
    cfg = {
        "name": "tiny",
        "data": {"labels": str(labels)} if labels is not None else {},
        "preprocessing": {"size": [16, 16], "intensity": {"MR": {"kind": "linear", "lo": 0, "hi": 1100}}},
        "autoencoder": {"channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4},
        "unet": {
            "channels": [8, 16],
            "attention_levels": [False, True],
            "num_head_channels": 8,
            "norm_num_groups": 4,
            "cond_dim": 8,
        },
        "stage1": {
            "steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "adv_weight": 0.1,
            "adv_start": 2,
            "disc_channels": 4,
            "disc_layers": 1,
        },
        "stage2": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "preview_steps": 2, "ema_decay": 0.9},
        "output_dir": str(out / "model"),
        "work_dir": str(out / "work"),
        "checkpoint_every": 2,
        "val_every": 2,
        "sample_every": 4,
        "log_every": 2,
        "threads": 1,
        # 80 scans give 8 test scans: too few to calibrate a privacy index (training.checks)
        "build_privacy_index": False,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(labels, out, **overrides) -> dict``."""
    return tiny_train_config


@pytest.fixture(scope="session")
def straight_run(phantoms_2d, tmp_path_factory) -> Path:
    """Model directory of an uninterrupted tiny run: the reference of the resume tests."""
    from medsynth.training.config import parse_config
    from medsynth.training.pipeline import train

    out = tmp_path_factory.mktemp("straight")
    return train(parse_config(tiny_train_config(phantoms_2d, out)), progress=False)
