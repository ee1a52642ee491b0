"""Strict reading of configuration: unknown keys are errors, in pydantic models and in config dataclasses."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from medsynth.errors import InputError

T = TypeVar("T")


class StrictModel(BaseModel):
    """Refuses unknown keys, so a typo is named instead of ignored.

    Protocol models tighten it further (``strict=True``: no "2" for 2; ``frozen=True``).
    """

    model_config = ConfigDict(extra="forbid")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """``cls(**data)`` for a config dataclass read from JSON, refusing unknown and missing keys.

    ``source`` names the file in messages (``"config.json"``, ``"lesion config.json"``).
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    extra = set(data) - names
    if extra:
        raise InputError(f"{source}: unknown keys {sorted(extra)}; allowed: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a missing required key
        raise InputError(f"{source}: {exc}; a config needs {sorted(names)}") from None
