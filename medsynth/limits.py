"""Limits of sampling settings, defined once for every layer that checks them.

The protocol schema, the training config (its ``default_guidance_scale``), the model
config, the ``Synthesizer`` and the samplers all import these, so a bound cannot drift
between layers. Torch-free, so configs and protocols validate without loading torch.
"""

from __future__ import annotations

import math
import numbers

from medsynth.errors import InputError

# Classifier-free guidance scales a sampler accepts, and the default of a model that names none.
GUIDANCE_RANGE = (0.0, 20.0)
DEFAULT_GUIDANCE = 3.0
# Inference steps a protocol may ask for (a model may allow fewer: its training timesteps).
MAX_STEPS = 1000


def positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1, or an ``InputError`` naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def check_seed(seed: object) -> int:
    """``seed`` as a non-negative int, or an ``InputError``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed={seed!r}: expected a non-negative integer")
    return int(seed)


def check_steps(num_inference_steps: object, num_train_timesteps: int) -> int:
    """``num_inference_steps`` as an int in ``[1, num_train_timesteps]``, or an ``InputError``."""
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= int(n) <= num_train_timesteps:
        raise InputError(
            f"num_inference_steps={num_inference_steps!r}: expected an integer from 1 to "
            f"{num_train_timesteps} (the model's training timesteps); 20 is a good default"
        )
    return int(n)


def check_guidance(guidance_scale: object, default: float) -> float:
    """``guidance_scale`` as a float in ``GUIDANCE_RANGE``, or an ``InputError`` that names ``default``."""
    lo, hi = GUIDANCE_RANGE
    g = guidance_scale
    if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g) or not lo <= float(g) <= hi:
        raise InputError(
            f"guidance_scale={guidance_scale!r}: expected a number in [{lo:g}, {hi:g}] "
            f"(1 = no guidance; this model's default is {default:g})"
        )
    return float(g)
