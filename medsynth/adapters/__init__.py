"""medsynth.adapters: fine-tuning a trained model (new tokens, LoRA via peft, prior preservation) and composing it with its base.

``finetune(config)`` (``medsynth finetune CONFIG.yaml``) writes an adapter directory that
``load_model`` composes with its base; ``merge`` (``medsynth merge``) makes it standalone.
Imported lazily, so that reading a config does not load the networks (or peft).
"""

from __future__ import annotations

from medsynth.lazy_import import lazy_getattr

_LAZY = {
    "finetune": "medsynth.adapters.train",
    "merge": "medsynth.adapters.store",
    "load_config": "medsynth.adapters.config",
    "FinetuneConfig": "medsynth.adapters.config",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
