"""medsynth.protocol: protocol files, validation, and resumable, gated batch generation.

Names are imported lazily, so reading a protocol's schema (``medsynth protocol-schema``)
does not load torch.

Example:
    >>> from medsynth.protocol import validate_protocol, generate      # doctest: +SKIP
    >>> plan = validate_protocol("protocols/demo.yaml")                # doctest: +SKIP
    >>> result = generate("protocols/demo.yaml", out="demo-output")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from medsynth.lazy_import import lazy_getattr

# The demo protocol ships inside the package, so an installed medsynth can run `medsynth demo`.
DEMO_PROTOCOL = Path(__file__).resolve().parent / "demo.yaml"

_LAZY = {
    "Protocol": "medsynth.protocol.schema",
    "load_protocol": "medsynth.protocol.schema",
    "protocol_json_schema": "medsynth.protocol.schema",
    "RunPlan": "medsynth.protocol.plan",
    "validate_protocol": "medsynth.protocol.plan",
    "RunResult": "medsynth.protocol.summary",
    "generate": "medsynth.protocol.runner",
}

__all__ = ["DEMO_PROTOCOL", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
