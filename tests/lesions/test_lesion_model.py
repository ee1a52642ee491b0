"""The lesion model: shapes, save/load, training (loss falls, exact resume), inpainting and insertion.

Tiny everything: UNet channels (8, 16), one res block, crops 16^2 / 8^3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lesions import train as lesion_train
from medsynth.lesions.crops import LesionExample, lesion_examples
from medsynth.lesions.inpaint import inpaint, insert_lesion
from medsynth.lesions.model import (
    LESION_DIR,
    MASKS_NAME,
    WEIGHTS_NAME,
    LesionModel,
    LesionModelConfig,
    holes_of,
    load_lesion_model,
    load_mask_bank,
    save_lesion_model,
)
from medsynth.lesions.morphology import dilate
from medsynth.lesions.shapes import MaskBank
from medsynth.lesions.train import lesion_loss, train_lesion_model, training_batch

INTENSITY = {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}, "MR": {"kind": "linear", "lo": 0, "hi": 1100}}
UNET = {
    "channels": [8, 16],
    "attention_levels": [False, True],
    "num_head_channels": 8,
    "norm_num_groups": 4,
    "num_res_blocks": 1,
}
CROP = {2: [16, 16], 3: [8, 8, 8]}


def _config(dims: int, **over) -> LesionModelConfig:
    kw = {
        "spatial_dims": dims,
        "crop_size": CROP[dims],
        "spacing": [2.0] * dims,
        "pathologies": ["mass", "nodule"],
        "modalities": ["CT", "MR"],
        "intensity": INTENSITY,
        "unet": UNET,
        "cond_dim": 8,
        "margin": 1,
        **over,
    }
    return LesionModelConfig(**kw)


def _model(dims: int, seed: int = 0, **over) -> LesionModel:
    torch.manual_seed(seed)
    return LesionModel(_config(dims, **over)).eval()


def _examples(dims: int, n: int = 6) -> list[LesionExample]:
    """Bright cubic lesions (nodule in CT, mass in MR) on a noisy dark background, at 1.5 mm."""
    rng = np.random.default_rng(dims)
    size = 32 if dims == 2 else 20
    out: list[LesionExample] = []
    for i in range(n):
        image = (rng.standard_normal((1, *(size,) * dims)) * 0.05 - 0.8).astype(np.float32)
        mask = np.zeros((size,) * dims, bool)
        c = rng.integers(size // 2 - 3, size // 2 + 3, dims)
        mask[tuple(slice(int(x) - 2, int(x) + 2) for x in c)] = True
        image[0][mask] = 0.1 if i % 2 else 0.4
        out += lesion_examples(
            image,
            mask,
            (1.5,) * dims,
            pathology=["nodule", "mass"][i % 2],
            modality=["CT", "MR"][i % 2],
            target_spacing=(2.0,) * dims,
            crop_size=CROP[dims],
            margin=1,
        )
    return out


def _train(dims: int, work, **over):
    kw = {
        "steps": 4,
        "batch_size": 4,
        "lr": 1e-3,
        "seed": 3,
        "work_dir": work,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "log_every": 100,
        "ema_decay": 0.9,
        "log": lambda m: None,
        **over,
    }
    return train_lesion_model(_examples(dims), _config(dims), **kw)


# -- the network ---------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_shapes(dims):
    model = _model(dims)
    x = torch.zeros(3, *model.crop_shape)
    ctx = model.context(["nodule", ["mass", "nodule"], "mass"], ["CT", "MR", "CT"])
    assert ctx.shape == (3, 2, 8)
    assert model(x, torch.tensor([1, 500, 999]), x, x, ctx).shape == x.shape


def test_config_round_trips_and_refuses_bad_values():
    cfg = _config(2)
    assert LesionModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="divisible by 2"):
        _config(2, crop_size=[15, 16])
    with pytest.raises(InputError, match="unknown keys"):
        LesionModelConfig.from_dict({**cfg.to_dict(), "extra": 1})
    with pytest.raises(InputError, match="no normalisation"):
        _config(2, intensity={"CT": INTENSITY["CT"]})
    sized = _config(2, sizes_mm={"nodule": [6, 20]})
    assert LesionModelConfig.from_dict(json.loads(json.dumps(sized.to_dict()))).sizes_mm == {"nodule": [6.0, 20.0]}
    for bad in ({"effusion": [6, 20]}, {"nodule": [20, 6]}, {"nodule": [0, 6]}, {"nodule": [6]}):
        with pytest.raises(InputError, match="sizes_mm"):
            _config(2, sizes_mm=bad)


@pytest.mark.parametrize("dims", [2, 3])
def test_save_and_load_give_the_same_outputs(tmp_path, dims):
    model = _model(dims)
    assert load_lesion_model(tmp_path) is None  # no lesion/ folder: no lesion model
    save_lesion_model(model, tmp_path)
    loaded = load_lesion_model(tmp_path)
    assert loaded is not None and loaded.config == model.config
    x = torch.randn(2, *model.crop_shape, generator=torch.Generator().manual_seed(0))
    ctx = model.context(["nodule", "mass"], ["CT", "MR"])
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([5, 50]), x, x, ctx), loaded(x, torch.tensor([5, 50]), x, x, ctx))


def test_float16_weights_are_half_the_file_and_load_back_as_float32(tmp_path):
    model = _model(2)
    save_lesion_model(model, tmp_path / "f32")
    save_lesion_model(model, tmp_path / "f16", weights_dtype="float16")
    f32, f16 = (tmp_path / d / LESION_DIR / WEIGHTS_NAME for d in ("f32", "f16"))
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    loaded = load_lesion_model(tmp_path / "f16")
    assert loaded is not None
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype and torch.allclose(a, b, rtol=1e-3, atol=1e-4), k
    with pytest.raises(InputError, match="weights_dtype"):
        save_lesion_model(model, tmp_path / "bad", weights_dtype="bfloat16")


def test_a_damaged_lesion_folder_is_a_one_line_input_error(tmp_path):
    save_lesion_model(_model(2), tmp_path)
    weights = tmp_path / LESION_DIR / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="not a readable safetensors file") as err:
        load_lesion_model(tmp_path)
    assert "\n" not in str(err.value) and str(weights) in str(err.value)
    weights.unlink()
    with pytest.raises(InputError, match="missing"):
        load_lesion_model(tmp_path)
    (tmp_path / LESION_DIR / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        load_lesion_model(tmp_path)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_mask_bank_is_saved_beside_the_weights_and_read_back_exactly(tmp_path, dims):
    label_map = np.zeros((12,) * dims, np.uint8)
    label_map[(slice(2, 5),) * dims] = 1
    label_map[(slice(7, 11), *(slice(6, 8),) * (dims - 1))] = 1
    spacing = (0.7, 0.8, 1.5)[:dims]
    bank = MaskBank.from_masks([label_map], [spacing])
    save_lesion_model(_model(dims), tmp_path)
    assert load_mask_bank(tmp_path) is None  # saved without a bank: none to read
    save_lesion_model(_model(dims), tmp_path, bank)
    back = load_mask_bank(tmp_path)
    assert back is not None and len(back) == 2 and back.spacings == bank.spacings
    assert all(np.array_equal(a, b) for a, b in zip(back.masks, bank.masks))
    path = tmp_path / LESION_DIR / MASKS_NAME
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match="not a readable mask bank") as err:
        load_mask_bank(tmp_path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


# -- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_a_few_steps_reduce_the_loss_on_a_fixed_set(tmp_path, dims):
    examples = _examples(dims)
    before = lesion_loss(_model(dims), examples)
    model, summary = _train(dims, tmp_path, steps=30, lr=3e-3, ema_decay=0.0, checkpoint_every=100)
    assert summary["steps_done"] == 30
    after = lesion_loss(model, examples)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("dims", [2, 3])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, dims):
    straight, _ = _train(dims, tmp_path / "a")
    calls = {"n": 0}
    real = lesion_train.training_batch

    def crash_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(lesion_train, "training_batch", crash_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            _train(dims, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "checkpoints" / "lesion" / "state.json").read_text())
    assert meta["step"] == 2 and not meta["complete"]
    resumed, summary = _train(dims, tmp_path / "b")
    assert summary["steps_done"] == 4
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    _train(2, tmp_path)
    with pytest.raises(InputError, match="different training settings"):
        _train(2, tmp_path, lr=2e-3)


def test_examples_outside_the_vocabulary_are_refused(tmp_path):
    with pytest.raises(InputError, match="outside the lesion model's vocabulary"):
        train_lesion_model(
            _examples(2), _config(2, pathologies=["nodule"]), steps=1, batch_size=2, lr=1e-3, seed=0, work_dir=tmp_path
        )


# -- inpainting ----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_inpaint_is_deterministic_per_seed_and_independent_of_batch_size(dims, sampler):
    model = _model(dims)
    crops, masks, paths, mods = training_batch(_examples(dims), [0, 1, 2, 3], None, model.config.crop_size)
    kw = {"seed": 11, "steps": 4, "sampler": sampler, "guidance_scale": 2.0}
    a = inpaint(model, crops, masks, paths, mods, **kw)
    b = inpaint(model, crops, masks, paths, mods, batch_size=3, **kw)
    assert torch.allclose(a, b, atol=1e-5), "a crop depends on the batch it was made in"
    assert torch.equal(a, inpaint(model, crops, masks, paths, mods, **kw))
    assert not torch.allclose(a, inpaint(model, crops, masks, paths, mods, **{**kw, "seed": 12}))
    # crop 2 alone, with its per-crop seed, is crop 2 of the batch
    from medsynth.seeding import derive_seed

    alone = inpaint(model, crops[2], masks[2], paths[2], mods[2], **{**kw, "seed": [derive_seed(11, 2)]})
    assert torch.allclose(alone, a[2], atol=1e-5)
    holes = holes_of(masks, model.config.margin).unsqueeze(1).expand_as(a)
    assert torch.equal(a[~holes], crops[~holes])  # outside the hole: the given surroundings


def test_inpaint_refuses_crops_of_another_size_and_empty_masks():
    model = _model(2)
    with pytest.raises(InputError, match="do not fit"):
        inpaint(model, torch.zeros(1, 1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), "nodule", "CT", seed=0)
    with pytest.raises(InputError, match="empty"):
        inpaint(model, torch.zeros(1, 1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.bool), "nodule", "CT", seed=0)
    with pytest.raises(InputError, match="sampler"):
        inpaint(
            model, torch.zeros(1, 16, 16), torch.ones(16, 16, dtype=torch.bool), "nodule", "CT", seed=0, sampler="euler"
        )


def _oblique_affine(dims: int, spacing: float) -> np.ndarray:
    """A rotated, translated index -> RAS affine with isotropic ``spacing`` (the third column the slice normal in 2D)."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot * spacing
    aff[:3, 3] = [12.0, -40.0, 7.5]
    return aff


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("bg_spacing", [2.0, 1.3, 3.1])
def test_insert_lesion_leaves_every_voxel_outside_the_margin_bit_identical(dims, bg_spacing):
    model = _model(dims)
    size = 40 if dims == 2 else 16
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((1, *(size,) * dims)) * 80.0 - 700.0).astype(np.float32)
    background = Scan(array, _oblique_affine(dims, bg_spacing), "CT", {"pathology": "normal", "body_part": "CHEST"})
    mask = np.zeros((size,) * dims, bool)
    for corner in (size // 2 - 1, 0):  # a lesion inside, and one at the image's border
        mask[:] = False
        mask[(slice(corner, corner + 2),) * dims] = True
        out = insert_lesion(model, background, mask, "nodule", "CT", seed=5, steps=3, margin=2)
        assert out.shape == background.shape and out.spacing == background.spacing
        assert np.array_equal(out.affine, background.affine) and out.modality == "CT"
        assert out.metadata["pathology"] == "nodule" and out.metadata["seed"] == 5
        assert out.metadata["body_part"] == "CHEST"
        keep = ~dilate(mask, 2)
        assert np.array_equal(out.array[0][keep], background.array[0][keep])
        assert not np.array_equal(out.array[0][mask], background.array[0][mask])
        again = insert_lesion(model, background, mask, "nodule", "CT", seed=5, steps=3, margin=2)
        assert np.array_equal(out.array, again.array)


def test_insert_lesion_into_a_phantom_keeps_its_grid(phantom):
    model = _model(2)
    scan, _ = phantom(2, "MR", 1, 64)
    mask = np.zeros(scan.shape, bool)
    mask[30:33, 20:23] = True
    out = insert_lesion(model, scan, mask[None], "mass", None, model.config.preprocessing(), seed=0, steps=2)
    assert np.array_equal(out.affine, scan.affine) and out.modality == "MR"
    assert np.array_equal(out.array[0][~dilate(mask, 2)], scan.array[0][~dilate(mask, 2)])


def test_insert_lesion_refuses_what_does_not_fit():
    model = _model(2)
    background = Scan(np.zeros((1, 40, 40), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "CT")
    small = np.zeros((40, 40), bool)
    small[18:20, 18:20] = True
    big = np.zeros((40, 40), bool)
    big[5:35, 5:35] = True
    with pytest.raises(InputError, match="does not fit the lesion model's crop"):
        insert_lesion(model, background, big, "nodule", seed=0)
    with pytest.raises(InputError, match="not on the background's grid"):
        insert_lesion(model, background, small[:30], "nodule", seed=0)
    with pytest.raises(InputError, match="empty"):
        insert_lesion(model, background, np.zeros_like(small), "nodule", seed=0)
    with pytest.raises(InputError, match="differs from the background"):
        insert_lesion(model, background, small, "nodule", "MR", seed=0)
    other = model.config.preprocessing()
    other.intensity["CT"] = {"kind": "linear", "lo": -1024.0, "hi": 3071.0}
    with pytest.raises(InputError, match="trained with"):
        insert_lesion(model, background, small, "nodule", "CT", other, seed=0)
    with pytest.raises(InputError, match="unknown"):
        insert_lesion(model, background, small, "effusion", seed=0)
