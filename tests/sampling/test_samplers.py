"""The sampler registry: each sampler denoises exactly with an exact denoiser, and refuses misuse."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from medsynth.errors import InputError
from medsynth.sampling.samplers import DEFAULT_SAMPLER, SAMPLERS, available_samplers, make_sampler

SHAPE = (2, 4, 6, 6)


def _train(prediction_type: str = "epsilon", schedule: str = "scaled_linear_beta") -> DDPMScheduler:
    kwargs = {} if schedule == "cosine" else {"beta_start": 0.0015, "beta_end": 0.0195}
    return DDPMScheduler(1000, schedule=schedule, prediction_type=prediction_type, clip_sample=False, **kwargs)


def _oracle(train: DDPMScheduler, x0: torch.Tensor, z: torch.Tensor, t: int) -> torch.Tensor:
    """The exact prediction for clean data ``x0`` at noisy ``z``, in the training prediction type."""
    acp = train.alphas_cumprod[t]
    eps = (z - acp.sqrt() * x0) / (1 - acp).sqrt()
    return eps if train.prediction_type == "epsilon" else acp.sqrt() * eps - (1 - acp).sqrt() * x0


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_vp_samplers_recover_clean_latent_with_exact_denoiser(name: str, prediction: str, steps: int) -> None:
    train = _train(prediction, "cosine" if steps == 7 else "scaled_linear_beta")
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    s = make_sampler(name, train, "ddpm", steps, SHAPE[1:])
    assert s.name == name and len(s.timesteps) == steps and int(s.timesteps[0]) == 999
    gens = [torch.Generator().manual_seed(i) for i in range(SHAPE[0])]
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for i, t in enumerate(s.timesteps):
        z = s.step(_oracle(train, x0, z, int(t)), i, z, gens)
    torch.testing.assert_close(z, x0, atol=2e-4, rtol=1e-4)


def test_rflow_sampler_follows_straight_path() -> None:
    train = RFlowScheduler(1000)
    x0 = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    s = make_sampler("rflow", train, "rflow", 8, SHAPE[1:])
    z = s.add_noise(x0, noise, 0)
    torch.testing.assert_close(z, noise, atol=1e-6, rtol=0)  # t = T is pure noise
    for i in range(len(s.timesteps)):
        z = s.step(x0 - noise, i, z, [])
    torch.testing.assert_close(z, x0, atol=1e-5, rtol=0)


def test_respaced_ddpm_with_all_steps_is_monais_plain_ddpm() -> None:
    train = _train()
    s = make_sampler("ddpm", train, "ddpm", 1000, SHAPE[1:])
    assert torch.equal(s.timesteps, train.timesteps)
    torch.testing.assert_close(s.scheduler.alphas_cumprod, train.alphas_cumprod)
    z, out = torch.randn(SHAPE), torch.randn(SHAPE)
    for i in (0, 500, 998):
        t = int(s.timesteps[i])
        ours = s.step(out[:1], i, z[:1], [torch.Generator().manual_seed(5)])
        plain = train.step(out[:1], t, z[:1], generator=torch.Generator().manual_seed(5))[0]
        torch.testing.assert_close(ours, plain, atol=1e-4, rtol=1e-5)  # alphas re-derived from products


def test_ddpm_step_noise_is_per_item() -> None:
    """An item's step is the same alone or in a batch, given its own generator."""
    s = make_sampler("ddpm", _train(), "ddpm", 10, SHAPE[1:])
    z, out = torch.randn(SHAPE), torch.randn(SHAPE)
    batch = s.step(out, 3, z, [torch.Generator().manual_seed(10 + j) for j in range(SHAPE[0])])
    alone = s.step(out[1:2], 3, z[1:2], [torch.Generator().manual_seed(11)])
    assert torch.equal(batch[1:2], alone)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_add_noise_matches_training_noise_level(name: str) -> None:
    train = _train()
    s = make_sampler(name, train, "ddpm", 10, SHAPE[1:])
    s.begin(4)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = int(s.timesteps[4])
    expected = train.add_noise(x0, noise, torch.full((SHAPE[0],), t))
    torch.testing.assert_close(s.add_noise(x0, noise, 4), expected, atol=1e-5, rtol=1e-5)


def test_registry_names_kinds_and_defaults() -> None:
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpm++", "rflow"}
    assert available_samplers("ddpm") == ["ddpm", "ddim", "dpm++"]
    assert available_samplers("rflow") == ["rflow"]
    assert DEFAULT_SAMPLER == {"ddpm": "dpm++", "rflow": "rflow"}
    assert all("arXiv" in e.description for e in SAMPLERS.values())


@pytest.mark.parametrize(
    ("name", "kind", "steps", "message"),
    [
        ("euler", "ddpm", 10, "sampler 'euler' is unknown; choose one of ['ddpm', 'ddim', 'dpm++']"),
        ("rflow", "ddpm", 10, "sampler 'rflow' needs a model trained as 'rflow'"),
        ("dpm++", "rflow", 10, "choose one of ['rflow']"),
        ("ddim", "ddpm", 0, "num_inference_steps=0: expected an integer from 1 to 1000"),
        ("ddim", "ddpm", 1001, "num_inference_steps=1001"),
        ("ddim", "ddpm", 2.5, "num_inference_steps=2.5"),
        ("ddim", "ddpm", True, "num_inference_steps=True"),
    ],
)
def test_bad_sampler_arguments_raise_input_error(name: str, kind: str, steps: object, message: str) -> None:
    train = RFlowScheduler(1000) if kind == "rflow" else _train()
    with pytest.raises(InputError) as err:
        make_sampler(name, train, kind, steps, SHAPE[1:])  # type: ignore[arg-type]
    assert message in str(err.value)
