"""Sampling limits are defined once: every layer that checks them imports them from medsynth.limits."""

from __future__ import annotations

import math

import pytest

from medsynth import limits
from medsynth.errors import InputError


def test_every_layer_uses_the_same_bounds() -> None:
    from medsynth.models import ldm
    from medsynth.protocol import schema
    from medsynth.training.config import TrainConfig

    assert ldm.GUIDANCE_RANGE is limits.GUIDANCE_RANGE and ldm.DEFAULT_GUIDANCE == limits.DEFAULT_GUIDANCE
    assert limits.GUIDANCE_RANGE[1] == schema.MAX_GUIDANCE and schema.MAX_STEPS == limits.MAX_STEPS
    field = TrainConfig.model_fields["default_guidance_scale"]
    assert field.default == limits.DEFAULT_GUIDANCE


@pytest.mark.parametrize("bad", [-0.1, 20.5, math.nan, math.inf, True, "3"])
def test_guidance_outside_the_range_is_refused(bad: object) -> None:
    with pytest.raises(InputError, match=r"guidance_scale=.*expected a number in \[0, 20\].*default is 5"):
        limits.check_guidance(bad, 5.0)


def test_checks_return_plain_values() -> None:
    assert limits.check_guidance(0, 3.0) == 0.0 and isinstance(limits.check_guidance(2, 3.0), float)
    assert limits.check_steps(1000, 1000) == 1000
    with pytest.raises(InputError, match="num_inference_steps=1001"):
        limits.check_steps(1001, 1000)
    assert limits.positive_int("n", 3) == 3
    with pytest.raises(InputError, match="n=0: expected a positive integer"):
        limits.positive_int("n", 0)
    with pytest.raises(InputError, match="seed=-1"):
        limits.check_seed(-1)
