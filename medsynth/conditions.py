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

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from medsynth.errors import InputError

PATHOLOGY_SEPARATOR = "|"
GROUP_SEPARATOR = "/"
NORMAL = "normal"  # the pathology of a scan without a finding (healthy backgrounds of insertion)


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


@dataclass(frozen=True)
class UnknownLabel:
    """A pathology or modality that a model's vocabulary does not hold, with the closest known one."""

    kind: str  # "pathology" | "modality"
    value: object  # as the caller gave it (a protocol or an API call may give a non-string)
    allowed: tuple[str, ...]

    @property
    def hint(self) -> str | None:
        close = difflib.get_close_matches(str(self.value), self.allowed, n=1)
        return close[0] if close else None

    def message(self, model: str | None = None) -> str:
        """One line: the value, what the model knows, and the nearest label.

        ``model`` (a model reference) gives the protocol form, which names the model and
        lists the labels plainly; without it, the Python API's form.
        """
        hint = f" (did you mean {self.hint!r}?)" if self.hint else ""
        if model is not None:
            return f"{self.value!r} is not a {self.kind} of model {model}; allowed: {', '.join(self.allowed)}{hint}"
        return f"unknown {self.kind} {self.value!r}; this model knows {list(self.allowed)}{hint}"


@dataclass(frozen=True)
class Vocabulary:
    """The pathologies and modalities a model was trained on (its config.json vocabularies)."""

    pathologies: tuple[str, ...]
    modalities: tuple[str, ...]

    @classmethod
    def of(cls, pathologies: Iterable[str], modalities: Iterable[str]) -> Vocabulary:
        return cls(tuple(str(p) for p in pathologies), tuple(str(m).upper() for m in modalities))

    def unknown_pathologies(self, labels: Iterable[str]) -> list[UnknownLabel]:
        """The labels (each one label, not ``|``-joined) this vocabulary lacks, in order."""
        return [UnknownLabel("pathology", str(x), self.pathologies) for x in labels if str(x) not in self.pathologies]

    def unknown_modality(self, modality: object) -> UnknownLabel | None:
        """The modality as an ``UnknownLabel`` if this vocabulary lacks it (compared upper-case, as given)."""
        if isinstance(modality, str) and modality.upper() in self.modalities:
            return None
        return UnknownLabel("modality", modality, self.modalities)

    def check(self, pathologies: str | Iterable[str], modality: str) -> Condition:
        """The canonical ``Condition``, or an ``InputError`` naming the first unknown label."""
        labels = split_pathologies(pathologies)
        problems = [*self.unknown_pathologies(labels)]
        unknown_mod = self.unknown_modality(modality)
        if unknown_mod is not None:
            problems.append(unknown_mod)
        if problems:
            raise InputError(problems[0].message())
        return Condition.of(labels, modality)
