"""Slab-wise decoding and encoding equal whole ones (in HU); the window follows a memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth import Synthesizer
from medsynth.errors import InputError
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling.memory import DEFAULT_FRACTION, available_memory, memory_budget, parse_memory
from medsynth.sampling.tiling import decode_plan, decode_tiled, encode_plan, encode_tiled

# The acceptance bounds of issue #17: a seamless decode differs from a whole one by rounding only.
MAX_HU, MEAN_HU = 1.0, 0.1

AUTOENCODERS = {
    # the conftest model: one upsampling, non-local attention at the latent level (run whole)
    "tiny": {},
    # three levels like the shipped 3D model (x4), a channel change at full resolution (1x1
    # shortcut), two residual blocks per level, no attention
    "deep": {
        "channels": [4, 8, 8],
        "attention_levels": [False, False, False],
        "num_res_blocks": 2,
        "with_decoder_nonlocal_attn": False,
        "with_encoder_nonlocal_attn": False,
    },
    # transposed-convolution upsampling
    "deconv": {"use_convtranspose": True},
}


def _model(make_tiny, dims: int, kind: str, size: int = 16) -> LatentDiffusionModel:
    cfg = make_tiny(dims, size=size).config
    cfg.autoencoder = dict(cfg.autoencoder, **AUTOENCODERS[kind])
    torch.manual_seed(7)
    model = LatentDiffusionModel(cfg).eval()
    # Random weights decode to a narrow range; widen it so that HU differences mean something.
    with torch.no_grad():
        model.autoencoder.decoder.blocks[-1].conv.weight.mul_(20.0)
    return model


def _hu(model: LatentDiffusionModel, x: torch.Tensor) -> np.ndarray:
    return model.preprocessing.denormalise(x, "CT").numpy().astype(np.float64)


def _assert_same_hu(model: LatentDiffusionModel, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    diff = np.abs(_hu(model, got) - _hu(model, want))
    assert diff.max() <= MAX_HU and diff.mean() <= MEAN_HU, (diff.max(), diff.mean())


@pytest.mark.parametrize(
    "dims,kind,latent",
    [
        (2, "tiny", (13, 10)),
        (2, "deep", (9, 14)),
        (2, "deconv", (11, 7)),
        (3, "tiny", (5, 6, 9)),
        (3, "deep", (6, 5, 11)),
        (3, "deconv", (4, 7, 7)),
    ],
)
def test_slab_decode_equals_whole_decode(make_tiny, dims: int, kind: str, latent: tuple[int, ...]) -> None:
    model = _model(make_tiny, dims, kind)
    z = torch.randn(2, model.latent_shape[0], *latent, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model.decode(z)
    spread = _hu(model, whole).std()
    assert spread > 20.0  # the output varies by tens of HU: per-slab statistics would show
    rows = latent[-1]
    for window in (1, 2, 3, rows - 1):
        plan = decode_plan(model, tuple(z.shape[1:]), window=window, batch=2)
        assert plan.window == window and len(plan.passes) > 3  # really slabbed, several GroupNorm passes
        _assert_same_hu(model, decode_tiled(model, z, window=window), whole)
    # A window covering the latent is the network's own forward (item by item: float32 rounding
    # of a batch of one against a batch of two, ~1e-4 with these x20 weights).
    assert decode_plan(model, tuple(z.shape[1:]), window=rows).window is None
    torch.testing.assert_close(decode_tiled(model, z, window=rows), whole, atol=1e-3, rtol=1e-3)


def test_per_window_groupnorm_would_fail_the_bound(make_tiny) -> None:
    """The bound can fail: decoding halves of the latent separately (own GroupNorm statistics) exceeds it."""
    model = _model(make_tiny, 3, "deep")
    z = torch.randn(1, model.latent_shape[0], 6, 6, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model.decode(z)
        halves = torch.cat([model.decode(z[..., :5]), model.decode(z[..., 5:])], dim=-1)
    diff = np.abs(_hu(model, halves) - _hu(model, whole))
    assert diff.max() > MAX_HU


@pytest.mark.parametrize("dims,kind,image", [(2, "tiny", (32, 20)), (2, "deep", (24, 36)), (3, "deep", (16, 12, 20))])
def test_slab_encode_equals_whole_encode(make_tiny, dims: int, kind: str, image: tuple[int, ...]) -> None:
    model = _model(make_tiny, dims, kind)
    x = torch.rand(2, 1, *image, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        whole = model.encode(x)
        for window in (1, 2, 3):
            assert encode_plan(model, tuple(x.shape[1:]), window=window).window == window
            torch.testing.assert_close(encode_tiled(model, x, window=window), whole, atol=1e-4, rtol=1e-4)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(
            encode_tiled(model, x, window=2, generator=g1), model.encode(x, g2), atol=1e-4, rtol=1e-4
        )


def test_auto_window_keeps_to_the_budget_and_decodes_the_same(make_tiny) -> None:
    model = _model(make_tiny, 3, "deep")
    z = torch.randn(1, model.latent_shape[0], 6, 6, 32, generator=torch.Generator().manual_seed(4))
    shape = tuple(z.shape[1:])
    whole_plan = decode_plan(model, shape, max_memory="1GiB")
    assert whole_plan.window is None  # fits: the network's own forward
    budget = whole_plan.peak_bytes // 2
    plan = decode_plan(model, shape, max_memory=budget)
    assert plan.window is not None and plan.window < 32
    assert plan.peak_bytes <= budget and all(p.peak_bytes <= budget for p in plan.passes)
    tighter = decode_plan(model, shape, max_memory=budget * 2 // 5)
    assert tighter.window is not None and tighter.peak_bytes <= budget * 2 // 5
    assert tighter.macs > plan.macs  # less memory: fewer tensors kept whole, more recomputation
    with torch.no_grad():
        _assert_same_hu(model, decode_tiled(model, z, max_memory=budget * 2 // 5), model.decode(z))


def test_a_budget_too_small_for_any_window_is_refused_before_work(make_tiny) -> None:
    model = _model(make_tiny, 3, "deep")
    with pytest.raises(InputError, match=r"max_memory=1000 B: decoding a latent of shape \[6, 6, 32\] needs about"):
        decode_plan(model, (2, 6, 6, 32), max_memory=1000)


@pytest.mark.parametrize(
    "value,expected",
    [(4096, 4096), ("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5G", int(1.5 * 2**30)), (" 2 gib ", 2 * 2**30)],
)
def test_memory_sizes_parse(value: object, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", [0, -5, True, 1.5, "4XB", "GB", "", "-1GB", [4]])
def test_a_bad_max_memory_is_one_line_naming_value_and_form(make_tiny, value: object) -> None:
    with pytest.raises(InputError) as err:
        Synthesizer(_model(make_tiny, 2, "tiny"), max_memory=value)
    message = str(err.value)
    assert message.startswith(f"max_memory={value!r}: expected a memory size") and '"4GB"' in message
    assert "\n" not in message


def test_default_budget_is_a_fraction_of_free_memory() -> None:
    free = available_memory("cpu")
    assert free > 0
    assert abs(memory_budget(None, "cpu") - DEFAULT_FRACTION * free) <= 0.05 * free  # free memory moves
    assert memory_budget(12345, "cpu") == 12345


def test_synthesizer_within_a_small_budget_samples_the_same_scans(make_tiny) -> None:
    model = _model(make_tiny, 3, "deep", size=32)  # latent 8^3
    kw = dict(num_samples=2, num_inference_steps=2, seed=3)
    whole = Synthesizer(model)("mass", "CT", **kw)
    budget = decode_plan(model, batch=1, max_memory="1GiB").peak_bytes * 3 // 4
    synth = Synthesizer(model, max_memory=budget)
    assert decode_plan(model, batch=2, max_memory=synth.max_memory).window is not None
    small = synth("mass", "CT", **kw)
    hand = Synthesizer(model, decode_window=1)("mass", "CT", **kw)
    for a, b, c in zip(whole, small, hand, strict=True):
        np.testing.assert_array_equal(a.affine, b.affine)
        for other in (b, c):
            diff = np.abs(other.array.astype(np.float64) - a.array)
            assert diff.max() <= MAX_HU and diff.mean() <= MEAN_HU
    # image-to-image: the source is encoded slab by slab within the same budget
    var_whole = Synthesizer(model).variation(whole[0], strength=0.0, num_inference_steps=2)[0]
    var_small = synth.variation(whole[0], strength=0.0, num_inference_steps=2)[0]
    assert np.abs(var_small.array.astype(np.float64) - var_whole.array).max() <= MAX_HU
