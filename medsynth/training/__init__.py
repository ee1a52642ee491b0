"""medsynth.training: ``train(config)`` runs both stages and writes a model directory.

Imported lazily so that reading a config does not load the networks.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "train": "medsynth.training.pipeline",
    "load_config": "medsynth.training.config",
    "TrainConfig": "medsynth.training.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsynth.training' has no attribute {name!r}")
