"""Reduced precision for the UNet during sampling: an explicit choice, float32 by default.

``torch.autocast`` runs matmuls and convolutions in bfloat16 or float16 and keeps reductions in
float32; the sampler's update and the decode stay float32 (the Synthesizer casts the UNet's
output back), so rounding enters once per step. On CPU autocast is usually slower than float32;
it exists there so that the path can be tested without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from medsynth.errors import InputError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: object) -> str:
    """``precision`` if it names one of ``PRECISIONS``, else a one-line InputError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"precision={precision!r}: expected one of {sorted(PRECISIONS)} (fp32 is the default)")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` on ``device`` at ``precision``; nothing for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
