"""medsynth.training: ``train(config)`` runs both stages and writes a model directory.

Imported lazily so that reading a config does not load the networks.
"""

from __future__ import annotations

from medsynth.lazy_import import lazy_getattr

_LAZY = {
    "train": "medsynth.training.pipeline",
    "load_config": "medsynth.training.config",
    "TrainConfig": "medsynth.training.config",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
