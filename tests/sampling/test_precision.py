"""Reduced-precision sampling: explicit, float32 by default, close to float32 when asked for."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.errors import InputError
from medsynth.models.artifact import load_model
from medsynth.sampling import Synthesizer


def _sample(model, **kw):
    synth = Synthesizer(model, **kw)
    return synth(["nodule"], "CT", num_samples=2, num_inference_steps=3, sampler="ddim", seed=5)


def test_precision_is_fp32_unless_asked(model2d):
    default = _sample(model2d)
    explicit = _sample(model2d, precision="fp32")
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a.array, b.array)


@pytest.mark.parametrize("bad", ["fp8", "float16", 16, None])
def test_an_unknown_precision_is_one_line(model2d, bad):
    with pytest.raises(InputError, match=r"precision=.*expected one of \['bf16', 'fp16', 'fp32'\]"):
        Synthesizer(model2d, precision=bad)


@pytest.mark.parametrize("name", ["phantom-2d", "phantom-3d"])
def test_bf16_autocast_stays_close_to_fp32_and_differs_from_it(name):
    # The shipped models: a random tiny model saturates its output range, hiding any difference.
    model = load_model(f"builtin:{name}")
    full, half = (
        Synthesizer(model, precision=p)("nodule", "CT", num_samples=1, num_inference_steps=2, seed=5)[0]
        for p in ("fp32", "bf16")
    )
    diff = np.abs(full.array - half.array)
    assert diff.max() > 0  # it did run in reduced precision
    assert diff.mean() < 20.0  # HU
