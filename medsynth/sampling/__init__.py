"""medsynth.sampling: conditioned sampling, samplers, tile-wise decoding.

Example:
    >>> from medsynth.sampling import Synthesizer        # doctest: +SKIP
    >>> scans = Synthesizer("builtin:phantom-2d")(pathology="nodule", modality="CT", num_samples=4)  # doctest: +SKIP
"""

from __future__ import annotations

from medsynth.sampling.samplers import SAMPLERS, Sampler, available_samplers, make_sampler
from medsynth.sampling.synthesizer import Synthesizer
from medsynth.sampling.tiling import decode_tiled

__all__ = ["SAMPLERS", "Sampler", "Synthesizer", "available_samplers", "decode_tiled", "make_sampler"]
