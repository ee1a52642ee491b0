"""Model directories: save/load, fp16 storage, refusing pickles, built-ins, hashing."""

from __future__ import annotations

import json

import pytest
import torch

import medsynth
from medsynth.errors import InputError
from medsynth.models.artifact import builtin_models, load_model, model_sha256, save_model
from medsynth.models.ldm import LatentDiffusionModel


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, **tol) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), **tol) for k in sa)


def test_round_trip(tiny_model, tmp_path):
    out = save_model(tiny_model, tmp_path / "m", card="# tiny\n")
    assert sorted(p.name for p in out.iterdir()) == [
        "autoencoder.safetensors",
        "conditioner.safetensors",
        "config.json",
        "model_card.md",
        "unet.safetensors",
    ]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pathologies"] == tiny_model.pathologies and cfg["scale_factor"] == 0.7
    loaded = medsynth.load_model(out)
    assert isinstance(loaded, LatentDiffusionModel) and not loaded.training
    assert _same_weights(tiny_model, loaded, rtol=0, atol=0)
    assert loaded.preprocessing == tiny_model.preprocessing
    assert (out / "model_card.md").read_text() == "# tiny\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_float16_storage_loads_as_float32(tiny_model, tmp_path):
    tiny_model.config.weights_dtype = "float16"
    out = save_model(tiny_model, tmp_path / "m16")
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(out / "unet.safetensors").values() if v.is_floating_point())
    loaded = load_model(out)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert _same_weights(tiny_model, loaded, rtol=1e-3, atol=1e-3)


def test_resave_keeps_the_privacy_index_and_hash_tracks_weights(tiny_model, tmp_path):
    out = save_model(tiny_model, tmp_path / "m")
    (out / "privacy").mkdir()
    (out / "privacy" / "index.json").write_text("{}")
    h1 = model_sha256(out)
    assert h1 == model_sha256(out) and len(h1) == 64
    with torch.no_grad():
        next(tiny_model.unet.parameters()).add_(1.0)
    save_model(tiny_model, out)
    assert (out / "privacy" / "index.json").read_text() == "{}"
    assert model_sha256(out) != h1


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    f = tmp_path / f"model{suffix}"
    f.write_bytes(b"\x80\x04not really")
    with pytest.raises(InputError, match="only safetensors model directories"):
        load_model(f)


def test_missing_things_are_named(tiny_model, tmp_path):
    with pytest.raises(InputError, match="no such model directory"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json is missing"):
        load_model(tmp_path / "empty")
    out = save_model(tiny_model, tmp_path / "m")
    (out / "unet.safetensors").unlink()
    with pytest.raises(InputError, match="unet.safetensors: missing"):
        load_model(out)
    (out / "unet.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="unet.safetensors: 7 bytes, but config.json records"):
        load_model(out)
    # Without records (a directory from before them) the reader names the damage.
    cfg = json.loads((out / "config.json").read_text())
    del cfg["files"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_model(out)


def test_weights_that_do_not_fit_the_config(tiny_model, tmp_path, tiny_config):
    out = save_model(tiny_model, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["unet"]["channels"] = [8, 24]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="weights do not match config.json"):
        load_model(out)


def test_unknown_builtin_lists_the_available_ones():
    with pytest.raises(InputError, match="unknown built-in model 'builtin:nope'; available: "):
        load_model("builtin:nope")


def test_builtin_models_load():
    names = builtin_models()
    assert names == ["phantom-2d", "phantom-3d"]
    for name, dims in (("phantom-2d", 2), ("phantom-3d", 3)):
        model = load_model(f"builtin:{name}")
        assert model.spatial_dims == dims
        assert model.pathologies == ["effusion", "mass", "nodule", "normal"] and model.modalities == ["CT", "MR"]
        assert model.config.fingerprint["counts"] and "file_list_sha256" in model.config.fingerprint
