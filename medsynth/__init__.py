"""medsynth: privacy-audited synthetic medical images from MONAI latent diffusion models.

The public API is small and imported lazily, so ``medsynth --version`` does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Scan": "medsynth.io.scan",
    "read_scan": "medsynth.io",
    "write_scan": "medsynth.io",
    "MedsynthError": "medsynth.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsynth' has no attribute {name!r}")
