"""medsynth: privacy-audited synthetic medical images from MONAI latent diffusion models.

The public API is small and imported lazily, so ``medsynth --version`` does not load torch.
"""

from __future__ import annotations

from medsynth.lazy_import import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "Scan": "medsynth.io.scan",
    "read_scan": "medsynth.io",
    "write_scan": "medsynth.io",
    "read_scans": "medsynth.io",
    "Catalog": "medsynth.data.catalog",
    "MedsynthError": "medsynth.errors",
    "make_phantom": "medsynth.data.phantoms",
    "phantom_dataset": "medsynth.data.phantoms",
    "load_model": "medsynth.models.artifact",
    "save_model": "medsynth.models.artifact",
    "LatentDiffusionModel": "medsynth.models.ldm",
    "Synthesizer": "medsynth.sampling",
    "Protocol": "medsynth.protocol",
    "validate_protocol": "medsynth.protocol",
    "generate": "medsynth.protocol",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
