"""The GPU path: run by `pytest -m gpu` (benchmarks/gpu_check.sh); skipped where torch sees no CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.models.artifact import load_model
from medsynth.sampling import Synthesizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none"),
]


def _nodule(device: str, **kw):
    synth = Synthesizer(load_model("builtin:phantom-2d"), device=device, **kw)
    return synth("nodule", "CT", num_samples=2, num_inference_steps=4, seed=11)


def test_cuda_samples_equal_cpu_samples_within_float_rounding():
    # The initial noise is drawn on the CPU for every device, so the same seed gives the same scan.
    for a, b in zip(_nodule("cpu"), _nodule("cuda")):
        assert np.abs(a.array - b.array).mean() < 1.0  # HU


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_cuda_stays_near_fp32(precision):
    full, half = _nodule("cuda"), _nodule("cuda", precision=precision)
    for a, b in zip(full, half):
        diff = np.abs(a.array - b.array)
        assert 0 < diff.max() and diff.mean() < 20.0


def test_compiled_unet_gives_the_same_samples():
    for a, b in zip(_nodule("cuda"), _nodule("cuda", compile=True)):
        assert np.abs(a.array - b.array).mean() < 1.0
