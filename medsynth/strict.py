"""The one pydantic base for user-written files (protocols, training configs): unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Refuses unknown keys, so a typo is named instead of ignored.

    Protocol models tighten it further (``strict=True``: no "2" for 2; ``frozen=True``).
    """

    model_config = ConfigDict(extra="forbid")
