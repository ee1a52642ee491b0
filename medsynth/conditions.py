"""Condition: what a case is of, a set of pathologies in one imaging modality.

The one place that knows how a condition is spelled:

* its **label**, the pathologies sorted and ``|``-joined (``effusion|nodule``), so
  ``nodule|effusion`` and ``effusion|nodule`` are one class with one case numbering;
* its **group key**, ``<label>/<modality>`` (``nodule/CT``), the name of a class in
  catalogs, balanced batches, plans, privacy thresholds and evaluation;
* its **validation** against a model's vocabularies, with "did you mean" hints.

Modalities are DICOM codes, upper-case (``CT``, ``MR``); pathology labels are
case-sensitive and may not contain ``/`` (it separates label and modality in group keys).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PATHOLOGY_SEPARATOR = "|"
GROUP_SEPARATOR = "/"


def pathology_label(pathologies: str | Iterable[str]) -> str:
    """The canonical label of a set of pathologies: sorted, ``|``-joined.

    Example:
        >>> pathology_label(["nodule", "effusion"])
        'effusion|nodule'
        >>> pathology_label("nodule|effusion")
        'effusion|nodule'
    """
    return PATHOLOGY_SEPARATOR.join(sorted(split_pathologies(pathologies)))


def split_pathologies(pathologies: str | Iterable[str]) -> tuple[str, ...]:
    """The labels of ``"a|b"`` or of a sequence of labels (each may itself be ``|``-joined), stripped."""
    items = [pathologies] if isinstance(pathologies, str) else list(pathologies)
    return tuple(part.strip() for item in items for part in str(item).split(PATHOLOGY_SEPARATOR))


def group_key(pathologies: str | Iterable[str], modality: str) -> str:
    """The class name ``<label>/<MODALITY>`` of a condition.

    Example:
        >>> group_key("nodule|effusion", "ct")
        'effusion|nodule/CT'
    """
    return f"{pathology_label(pathologies)}{GROUP_SEPARATOR}{modality.strip().upper()}"


@dataclass(frozen=True, order=True)
class Condition:
    """A set of pathologies in one modality, in canonical form (sorted labels, upper-case modality).

    Build it with ``Condition.of("nodule|effusion", "ct")``; the constructor takes the
    canonical parts as they are.
    """

    pathologies: tuple[str, ...]
    modality: str

    @classmethod
    def of(cls, pathologies: str | Iterable[str], modality: str) -> Condition:
        """The canonical condition of a pathology label (or labels) and a modality code."""
        return cls(tuple(sorted(split_pathologies(pathologies))), modality.strip().upper())

    @property
    def label(self) -> str:
        """``effusion|nodule``."""
        return PATHOLOGY_SEPARATOR.join(self.pathologies)

    @property
    def group(self) -> str:
        """``effusion|nodule/CT``."""
        return f"{self.label}{GROUP_SEPARATOR}{self.modality}"

    def __str__(self) -> str:
        return self.group
