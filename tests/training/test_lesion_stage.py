"""``medsynth train`` with masks: the lesion model beside the whole-image model (training/lesion_stage.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from medsynth.data.phantoms import BASE_PATHOLOGIES, phantom_dataset
from medsynth.errors import InputError
from medsynth.lesions import train as lesion_train
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
    return phantom_dataset(
        tmp_path_factory.mktemp("masked"), dim=2, count=64, seed=5, size=32, masks=True, pathologies=BASE_PATHOLOGIES
    )


def _cfg(tiny_cfg, labels, out, **over):
    return parse_config(tiny_cfg(labels, out, **{"lesion": LESION, **over}))


PICKED = {**LESION, "pathologies": ["nodule", "mass"]}


_RUNS: dict = {}


@pytest.fixture
def masked_run(tiny_cfg, masked_2d, tmp_path_factory):
    """Model directory of a tiny 2D run with masks (whole-image model plus lesion model), trained once."""
    if "2d" not in _RUNS:
        out = tmp_path_factory.mktemp("masked-run")
        _RUNS["2d"] = train(_cfg(tiny_cfg, masked_2d, out, lesion=PICKED), progress=False)
    return _RUNS["2d"]


def _without_lesion(model_dir, where):
    """A copy of ``model_dir`` (as ``where/model``) without its lesion folder."""
    shutil.copytree(model_dir, where / "model")
    shutil.rmtree(where / "model" / "lesion")
    return where / "model"


def _same_lesion_weights(a, b) -> bool:
    # Not bytes: safetensors writes its metadata keys in no fixed order.
    x, y = load_file(a / "lesion" / "lesion.safetensors"), load_file(b / "lesion" / "lesion.safetensors")
    return sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_training_with_masks_writes_a_lesion_model_and_lesion_only_adds_one(tiny_cfg, masked_2d, masked_run, tmp_path):
    out = masked_run
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
    other = _without_lesion(out, tmp_path)
    before = {f.name: f.read_bytes() for f in other.glob("*.safetensors")}
    digest = model_sha256(other)
    train(_cfg(tiny_cfg, masked_2d, tmp_path, lesion=PICKED), progress=False, lesion_only=True)
    assert {f.name: f.read_bytes() for f in other.glob("*.safetensors")} == before
    assert _same_lesion_weights(other, out)
    assert model_sha256(other) != digest


def test_a_crash_in_the_lesion_stage_resumes_to_the_same_weights(
    tiny_cfg, masked_2d, masked_run, tmp_path, monkeypatch
):
    other = _without_lesion(masked_run, tmp_path)
    cfg = _cfg(tiny_cfg, masked_2d, tmp_path, lesion=PICKED)
    calls = {"n": 0}
    real = lesion_train.training_batch

    def crash_at_step_3(examples, idx, rng, *args, **kwargs):
        calls["n"] += rng is not None  # training batches only (validation draws none)
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(examples, idx, rng, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(lesion_train, "training_batch", crash_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, progress=False, lesion_only=True)
    state = json.loads((tmp_path / "work" / "checkpoints" / "lesion" / "state.json").read_text())
    assert state["step"] == 2 and not state["complete"] and not (other / "lesion").exists()
    train(cfg, progress=False, lesion_only=True)
    assert _same_lesion_weights(other, masked_run)


def test_train_3d_with_masks_writes_a_16_cubed_lesion_model(tiny_cfg, tmp_path):
    cfg = parse_config(
        tiny_cfg(
            None,
            tmp_path,
            data={
                "phantoms": {
                    "dim": 3,
                    "count": 16,
                    "seed": 1,
                    "size": 32,
                    "masks": True,
                    "pathologies": ["normal", "nodule", "mass", "effusion"],
                }
            },
            preprocessing={"size": [16, 16, 16]},
            stage1={"steps": 2, "patch_size": [8, 8, 8], "adv_weight": 0.0, "batch_size": 2},
            stage2={"steps": 2, "batch_size": 2},
            lesion={k: v for k, v in {**LESION, "steps": 2, "batch_size": 2}.items() if k != "crop_size"},
        )
    )
    out = train(cfg, progress=False)
    lesion = load_lesion_model(out)
    assert lesion is not None and lesion.config.spatial_dims == 3 and lesion.config.crop_size == [16, 16, 16]
    bank = load_mask_bank(out)
    assert bank is not None and len(bank) >= 1


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


def test_no_lesion_fitting_the_crop_is_a_one_line_error(tiny_cfg, masked_2d, masked_run, tmp_path):
    other = _without_lesion(masked_run, tmp_path)
    cfg = _cfg(tiny_cfg, masked_2d, tmp_path, lesion={**PICKED, "crop_size": [8, 8], "spacing": [2.0, 2.0]})
    with pytest.raises(InputError, match=r"none of the training lesions fits the crop \[8, 8\]") as err:
        train(cfg, progress=False, lesion_only=True)
    assert "\n" not in str(err.value) and not (other / "lesion").exists()


@pytest.mark.parametrize("key, value", [("crop_size", [16, 16]), ("spacing", [2.0, 2.0])])
def test_a_lesion_grid_of_other_dimensions_is_a_one_line_error_when_the_config_is_read(tiny_cfg, tmp_path, key, value):
    with pytest.raises(InputError, match=rf"lesion.{key} .* needs 3 values") as err:
        parse_config(
            tiny_cfg(
                None,
                tmp_path,
                data={"phantoms": {"dim": 3, "count": 16, "masks": True}},
                preprocessing={"size": [16, 16, 16]},
                lesion={key: value},
            )
        )
    assert "\n" not in str(err.value)
