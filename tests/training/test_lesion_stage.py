"""``medsynth train`` with masks: the lesion model beside the whole-image model (training/lesion_stage.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from medsynth.data.phantoms import phantom_dataset
from medsynth.errors import InputError
from medsynth.lesions.model import load_lesion_model, load_mask_bank
from medsynth.models.artifact import model_sha256
from medsynth.training.config import parse_config
from medsynth.training.pipeline import train

LESION = {
    "steps": 3,
    "batch_size": 4,
    "warmup_steps": 1,
    "crop_size": [16, 16],
    "unet": {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 4},
    "cond_dim": 8,
}


@pytest.fixture(scope="module")
def masked_2d(tmp_path_factory):
    """labels.csv (with a mask column) of 64 2D phantoms at 32^2: 8 per pathology/modality class."""
    return phantom_dataset(tmp_path_factory.mktemp("masked"), dim=2, count=64, seed=5, size=32, masks=True)


def _cfg(tiny_cfg, labels, out, **over):
    return parse_config(tiny_cfg(labels, out, **{"lesion": LESION, **over}))


def test_training_with_masks_writes_a_lesion_model_and_lesion_only_adds_one(tiny_cfg, masked_2d, tmp_path):
    cfg = _cfg(tiny_cfg, masked_2d, tmp_path, lesion={**LESION, "pathologies": ["nodule", "mass"]})
    out = train(cfg, progress=False)
    lesion = load_lesion_model(out)
    assert lesion is not None and lesion.config.pathologies == ["mass", "nodule"]
    assert lesion.config.modalities == ["CT", "MR"]
    # The crop at the whole-image model's grid spacing (350 mm phantoms on a 16^2 grid).
    assert lesion.config.crop_size == [16, 16] and lesion.config.spacing == pytest.approx([350 / 16] * 2)
    assert lesion.config.sizes_mm["nodule"][0] > 0
    bank = load_mask_bank(out)
    assert bank is not None and len(bank) >= 1
    assert "## Lesion model" in (out / "model_card.md").read_text()

    # --lesion-only into a copy without the lesion folder: the whole-image weights stay byte-equal,
    # the same lesion model comes back (same data, settings and seed), and the digest covers it.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(out, other / "model")
    shutil.rmtree(other / "model" / "lesion")
    before = {f.name: f.read_bytes() for f in (other / "model").glob("*.safetensors")}
    digest = model_sha256(other / "model")
    cfg2 = _cfg(tiny_cfg, masked_2d, other, lesion={**LESION, "pathologies": ["nodule", "mass"]})
    train(cfg2, progress=False, lesion_only=True)
    assert {f.name: f.read_bytes() for f in (other / "model").glob("*.safetensors")} == before
    # The same weights (not bytes: safetensors writes its metadata keys in no fixed order).
    again, first = (
        load_file(other / "model" / "lesion" / "lesion.safetensors"),
        load_file(out / "lesion" / "lesion.safetensors"),
    )
    assert sorted(again) == sorted(first) and all(torch.equal(again[k], first[k]) for k in first)
    assert model_sha256(other / "model") != digest


def test_lesion_only_refuses_a_model_of_other_data(tiny_cfg, masked_2d, phantoms_2d, tmp_path):
    out = train(parse_config(tiny_cfg(phantoms_2d, tmp_path, lesion={"enabled": False})), progress=False)
    with pytest.raises(InputError, match="another training set") as err:
        train(_cfg(tiny_cfg, masked_2d, tmp_path), progress=False, lesion_only=True)
    assert "\n" not in str(err.value)
    assert load_lesion_model(out) is None


def test_enabled_without_masks_fails_before_any_work(tiny_cfg, phantoms_2d, tmp_path):
    cfg = parse_config(tiny_cfg(phantoms_2d, tmp_path, lesion={"enabled": True}))
    with pytest.raises(InputError, match="no masks") as err:
        train(cfg, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "work" / "checkpoints").exists()


def test_lesion_pathologies_without_masks_fail_before_any_work(tiny_cfg, masked_2d, tmp_path):
    cfg = _cfg(tiny_cfg, masked_2d, tmp_path, lesion={**LESION, "pathologies": ["nodule", "pneumothorax"]})
    with pytest.raises(InputError, match=r"lesion.pathologies: \['pneumothorax'\] have no masks") as err:
        train(cfg, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "work" / "checkpoints").exists()


def test_a_crop_the_unet_cannot_divide_is_a_one_line_error_when_the_config_is_read(tiny_cfg, masked_2d, tmp_path):
    with pytest.raises(InputError, match=r"lesion: crop_size \[15, 16\]: .*divisible by 2") as err:
        _cfg(tiny_cfg, masked_2d, tmp_path, lesion={**LESION, "crop_size": [15, 16]})
    assert "\n" not in str(err.value)


def test_masks_and_the_lesion_section_do_not_change_the_stage_fingerprints(tiny_cfg, tmp_path):
    spec = {"phantoms": {"dim": 2, "count": 16, "size": 32}}
    plain = parse_config(tiny_cfg(None, tmp_path, data=spec))
    masked = parse_config(
        tiny_cfg(None, tmp_path, data={"phantoms": {**spec["phantoms"], "masks": True}}, lesion=LESION)
    )
    for stage in ("stage1", "stage2"):
        assert plain.fingerprint(stage) == masked.fingerprint(stage)
