"""Explicit randomness: every random draw comes from a seed derived from named parts.

``derive_seed(protocol_seed, "nodule", "CT", 17)`` is stable across runs, machines, batch
sizes and process counts, so a case can be regenerated alone and a resumed or sharded run
equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the string forms of ``parts`` (SHA-256, so no collisions in practice)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def numpy_rng(*parts: object) -> np.random.Generator:
    """A NumPy generator seeded by ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded by ``derive_seed(*parts)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
