"""Tile-wise decoding agrees with whole decoding, closer as windows grow; Synthesizer uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth import Synthesizer
from medsynth.errors import InputError
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling.tiling import decode_tiled


def _local_model(make_tiny, dims: int) -> LatentDiffusionModel:
    """A tiny model whose decoder has no global (non-local) attention, so tiles can match."""
    cfg = make_tiny(dims, size=32).config
    cfg.autoencoder = dict(cfg.autoencoder, with_decoder_nonlocal_attn=False)
    torch.manual_seed(0)
    return LatentDiffusionModel(cfg).eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_tiled_decode_matches_full_decode_within_tolerance(make_tiny, dims: int) -> None:
    model = _local_model(make_tiny, dims)
    z = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))  # latent 16^d
    with torch.no_grad():
        full = model.decode(z)
        # A window covering the whole latent is one tile: the same computation as a full decode.
        whole = decode_tiled(model.decode, z, window=16)
        windows = (4, 8, 12) if dims == 2 else (8, 12)  # 4^3 windows would be 343 tiles: slow
        errors = [(decode_tiled(model.decode, z, window=w, overlap=0.5) - full).abs().mean().item() for w in windows]
    torch.testing.assert_close(whole, full, atol=1e-5, rtol=1e-5)
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors)  # larger: fewer seams
    assert errors[-1] < 0.15 * full.std().item()


def test_tiled_decode_per_axis_window_and_output_device(make_tiny) -> None:
    model = _local_model(make_tiny, 3)
    z = torch.randn(1, *model.latent_shape)
    with torch.no_grad():
        out = decode_tiled(model.decode, z, window=[16, 8, 100], overlap=0.25, output_device="cpu")
    assert out.shape == (1, 1, 32, 32, 32) and out.device.type == "cpu"
    with pytest.raises(InputError, match=r"decode_window=\[8, 8\]: expected a positive latent window edge"):
        decode_tiled(model.decode, z, window=[8, 8])


def test_synthesizer_with_decode_window_is_close_to_whole_decoding(make_tiny) -> None:
    model = _local_model(make_tiny, 3)
    kw = dict(num_samples=1, num_inference_steps=2, seed=3)
    whole = Synthesizer(model)("mass", "CT", **kw)[0]
    tiled = Synthesizer(model, decode_window=12, decode_overlap=0.5)("mass", "CT", **kw)[0]
    assert tiled.array.shape == whole.array.shape == (1, 32, 32, 32)
    np.testing.assert_array_equal(tiled.affine, whole.affine)
    diff = np.abs(tiled.array - whole.array)
    assert diff.mean() < 0.15 * whole.array.std()
