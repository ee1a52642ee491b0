"""Fixtures for the protocol tests: tiny untrained model directories and protocol writers."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medsynth.models.artifact import load_model, save_model
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.seeding import derive_seed

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


# The protocol seed and sampler settings the gated models' planted copies were drawn with.
GATED_SEED = 777
GATED_SAMPLER = {"method": "ddpm", "steps": 3, "guidance_scale": 3.0}
GATED_CLASSES = (("normal", "CT"), ("nodule", "MR"))


def _gated_model(model_dir: Path, target: Path, planted: list[tuple[str, str, int]]) -> Path:
    """A copy of ``model_dir`` with a privacy index whose training set holds the exact first
    attempt of the ``planted`` cases (pathology, modality, k) of a protocol with ``GATED_SEED``
    and ``GATED_SAMPLER``, as a memorizing model would reproduce them. The other training and
    all holdout scans are samples at unrelated seeds (40 holdout per class)."""
    from medsynth.privacy.index import PrivacyIndex
    from medsynth.sampling import Synthesizer

    shutil.copytree(model_dir, target)
    synth = Synthesizer(load_model(target))
    settings = {
        "num_inference_steps": GATED_SAMPLER["steps"],
        "guidance_scale": GATED_SAMPLER["guidance_scale"],
        "sampler": GATED_SAMPLER["method"],
    }
    train, train_groups, holdout, holdout_groups = [], [], [], []
    for pathology, modality in GATED_CLASSES:
        group = f"{pathology}/{modality}"
        copies = [derive_seed(GATED_SEED, p, m, k, 0) for p, m, k in planted if (p, m) == (pathology, modality)]
        fresh = [derive_seed("train", group, i) for i in range(24)]
        held = [derive_seed("holdout", group, i) for i in range(40)]
        for seeds, scans, groups in ((copies + fresh, train, train_groups), (held, holdout, holdout_groups)):
            scans += synth.generate([pathology] * len(seeds), [modality] * len(seeds), seeds, **settings)
            groups += [group] * len(seeds)
    index = PrivacyIndex.build(
        train,
        holdout,
        train_groups=train_groups,
        holdout_groups=holdout_groups,
        train_ids=[f"train-{i:05d}" for i in range(len(train))],
        quantile=0.99,
        run_selftest=False,  # the detector's own self-test belongs to tests/privacy
    )
    index.save(target / "privacy")
    return target


@pytest.fixture(scope="session")
def gated_model(model_dirs, tmp_path_factory) -> Path:
    """The 2D tiny model with a privacy index holding copies of normal-CT-00002, normal-CT-00004
    and nodule-MR-00001 (a protocol chooses how many of them it asks for through its counts)."""
    planted = [("normal", "CT", 2), ("normal", "CT", 4), ("nodule", "MR", 1)]
    return _gated_model(model_dirs["2d"], tmp_path_factory.mktemp("gated") / "model", planted)


@pytest.fixture(scope="session")
def gated_protocol():
    """``gated_protocol(model_dir, quotas, **privacy)``: a gate-on protocol matching the planted copies."""

    def make(model_dir: Path, quotas: list[dict[str, Any]], **privacy: Any) -> dict[str, Any]:
        return {
            "protocol": 1,
            "name": "gated",
            "model": str(model_dir),
            "seed": GATED_SEED,
            "output": {"dir": "out", "formats": ["nifti"]},
            "sampler": {**GATED_SAMPLER, "batch_size": 6},
            "quotas": quotas,
            # The tiny index has no self-test and a small holdout: weak by design (the gate's logic is under test).
            "privacy": {"gate": True, "quantile": 0.99, "accept_weak_index": True, **privacy},
        }

    return make


def _tree(out: Path) -> dict[str, str]:
    """Every file under ``out`` -> sha256 (JSON-lines files: records without ``created``)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name == "summary.json":
            continue
        rel = p.relative_to(out).as_posix()
        if p.suffix == ".jsonl":
            lines = [json.loads(x) for x in p.read_text().splitlines()]
            files[rel] = json.dumps([{k: v for k, v in r.items() if k != "created"} for r in lines], sort_keys=True)
        else:
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="session")
def output_tree():
    """``output_tree(out)``: what a resumed run must reproduce byte for byte (see docs/protocols.md):
    every file's sha256, JSON lines without their ``created`` stamps, summary.json left out."""
    return _tree
