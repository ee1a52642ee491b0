"""The latent diffusion model bundle, 2D and 3D, on tiny shapes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from medsynth.errors import InputError
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.sampling.tiling import decode_tiled


def test_shapes_and_vocabularies(tiny_model):
    d = tiny_model.spatial_dims
    assert tiny_model.latent_shape == (2,) + (8,) * d
    assert tiny_model.pathologies == ["effusion", "mass", "nodule", "normal"]
    assert tiny_model.modalities == ["CT", "MR"]
    x = torch.rand(2, 1, *(16,) * d) * 2 - 1
    with torch.no_grad():
        z = tiny_model.encode(x)
        assert z.shape == (2, *tiny_model.latent_shape)
        ctx = tiny_model.context(["nodule", ["mass", "effusion"]], ["CT", "MR"])
        out = tiny_model(z, torch.tensor([3, 700]), ctx)
        y = tiny_model.decode(z)
    assert ctx.shape == (2, 2, 8) and out.shape == z.shape and y.shape == x.shape


def test_encode_uses_scale_factor_and_generator(tiny_model):
    x = torch.rand(1, 1, *(16,) * tiny_model.spatial_dims)
    with torch.no_grad():
        mu, _ = tiny_model.autoencoder.encode(x)
        assert torch.allclose(tiny_model.encode(x), mu * 0.7)
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        s1, s2 = tiny_model.encode(x, generator=g1), tiny_model.encode(x, generator=g2)
    assert torch.equal(s1, s2) and not torch.allclose(s1, mu * 0.7)


def test_sliding_window_decode_covers_the_image(tiny_model):
    z = torch.randn(1, *tiny_model.latent_shape)
    with torch.no_grad():
        full = tiny_model.decode(z)
        tiled = decode_tiled(tiny_model, z, window=8)  # one window = the whole latent
        small = decode_tiled(tiny_model, z, window=3)  # slabs, whole-volume GroupNorm statistics
    assert torch.allclose(full, tiled, atol=1e-5)
    assert small.shape == full.shape and torch.allclose(full, small, atol=1e-5)


@pytest.mark.parametrize(
    "sched,cls",
    [
        (
            {
                "kind": "ddpm",
                "num_train_timesteps": 100,
                "schedule": "cosine",
                "beta_start": 1e-4,
                "beta_end": 2e-2,
                "prediction_type": "v_prediction",
            },
            DDPMScheduler,
        ),
        ({"kind": "rflow", "num_train_timesteps": 100}, RFlowScheduler),
    ],
)
def test_make_scheduler(sched, cls, tiny_config):
    model = LatentDiffusionModel(tiny_config(2, scheduler=sched))
    s = model.make_scheduler()
    assert isinstance(s, cls) and s.num_train_timesteps == 100
    if cls is DDPMScheduler:
        assert s.prediction_type == "v_prediction" and s.clip_sample is False


def test_default_scheduler_matches_the_config(tiny_config):
    model = LatentDiffusionModel(tiny_config(2))
    s = model.make_scheduler()
    ref = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod)


def test_config_errors(tiny_config):
    with pytest.raises(InputError, match="scheduler.kind"):
        tiny_config(2, scheduler={"kind": "euler", "num_train_timesteps": 10})
    with pytest.raises(InputError, match="prediction_type"):
        tiny_config(
            2, scheduler={"kind": "ddpm", "num_train_timesteps": 10, "schedule": "cosine", "prediction_type": "x0"}
        )
    with pytest.raises(InputError, match="unknown keys"):
        ModelConfig.from_dict({**tiny_config(2).to_dict(), "extra": 1})
    d = tiny_config(2).to_dict()
    del d["unet"]
    with pytest.raises(InputError, match="config.json"):
        ModelConfig.from_dict(d)
    bad = tiny_config(2).to_dict()
    bad["preprocessing"]["size"] = [17, 17]
    with pytest.raises(InputError, match="divisible"):
        LatentDiffusionModel(ModelConfig.from_dict(bad))


def test_default_guidance_scale_is_kept_checked_and_optional(tiny_config):
    d = tiny_config(2).to_dict()
    assert d["default_guidance_scale"] == 3.0
    assert ModelConfig.from_dict({**d, "default_guidance_scale": 5}).default_guidance_scale == 5.0
    del d["default_guidance_scale"]  # a config.json written before the field existed
    assert ModelConfig.from_dict(d).default_guidance_scale == 3.0
    for bad in (25, -1, float("nan"), "high", True):
        with pytest.raises(InputError, match=r"config.default_guidance_scale: expected a number in \[0, 20\]"):
            ModelConfig.from_dict({**d, "default_guidance_scale": bad})
