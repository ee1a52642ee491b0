"""Lazy public names for package ``__init__`` files: a submodule is imported on first use.

So ``medsynth --version`` or reading a protocol's schema does not load torch.

Example:
    >>> __getattr__ = lazy_getattr("medsynth.example", {"Scan": "medsynth.io.scan"})
    >>> __getattr__("Scan").__name__
    'Scan'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[name]`` and returns its attribute ``name``.

    Args:
        package: the importing package's name, for the ``AttributeError`` message.
        names: public name -> module that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
