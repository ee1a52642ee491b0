"""Labelled scan sets for evaluation: from a dataset CSV or from a ``medsynth generate`` output dir.

Both fidelity and utility take "SYNTH.csv or OUTPUT_DIR"; this module is the one loader:

* a CSV with columns ``path,pathology,modality`` (the dataset format of ``medsynth.data.catalog``,
  read through ``Catalog``, so its validation and path rules apply);
* a folder holding ``manifest.jsonl`` (one ``ManifestRecord`` per generated case; a hand-made
  one needs ``pathology``, ``modality`` and ``files`` {format: path relative to the folder}).
  A case is read from its ``preferred_file()``: its NIfTI, else its DICOM series, else its PNG.

Subjects (from the CSV's ``subject`` column) are kept only in memory, to split real data
without putting one subject's scans on both sides; they never reach a report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medsynth.conditions import GROUP_SEPARATOR
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.protocol.manifest import MANIFEST, LineError, read_manifest


@dataclass
class LabelledScans:
    """Scans with their pathology label (``|``-joined when several) and modality, in one order.

    Example:
        >>> s = load_labelled("labels.csv")  # doctest: +SKIP
        >>> s.classes  # doctest: +SKIP
        ['effusion/CT', 'normal/CT', 'nodule/CT']
    """

    scans: list[Scan]
    pathologies: list[str]
    modalities: list[str]
    subjects: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.subjects:
            self.subjects = [None] * len(self.scans)
        if not len(self.scans) == len(self.pathologies) == len(self.modalities) == len(self.subjects):
            raise ValueError("LabelledScans: scans, pathologies, modalities and subjects differ in length")

    def __len__(self) -> int:
        return len(self.scans)

    @property
    def labels(self) -> list[str]:
        """The joint class of each scan, ``"pathology/modality"``, with the pathology as the source wrote it.

        Not ``conditions.group_key``: that one sorts a multi-label pathology, and these labels
        name classes the way the user's CSV or manifest spells them.
        """
        return [f"{p}{GROUP_SEPARATOR}{m}" for p, m in zip(self.pathologies, self.modalities)]

    @property
    def classes(self) -> list[str]:
        """Sorted joint classes present."""
        return sorted(set(self.labels))

    def class_counts(self) -> dict[str, int]:
        """Joint class -> number of scans."""
        return dict(sorted(Counter(self.labels).items()))

    @property
    def spatial_dims(self) -> int:
        """2 or 3 (every scan agrees: checked on load)."""
        return self.scans[0].spatial_dims

    def subset(self, indices: Sequence[int]) -> LabelledScans:
        """The scans at ``indices``, in that order."""
        idx = list(indices)
        return LabelledScans(
            [self.scans[i] for i in idx],
            [self.pathologies[i] for i in idx],
            [self.modalities[i] for i in idx],
            [self.subjects[i] for i in idx],
        )

    def concat(self, other: LabelledScans) -> LabelledScans:
        """This set followed by ``other``."""
        return LabelledScans(
            self.scans + other.scans,
            self.pathologies + other.pathologies,
            self.modalities + other.modalities,
            self.subjects + other.subjects,
        )


def load_labelled(path: str | Path, *, role: str = "dataset") -> LabelledScans:
    """Load a dataset CSV or a generate output directory (see the module docstring).

    Args:
        path: ``labels.csv``-style file, or a folder with ``manifest.jsonl``.
        role: what the set is for, used in error messages (e.g. ``"--synthetic"``).
    """
    p = Path(path)
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise InputError(
                f"{role} {p}: folder has no {MANIFEST}; expected a medsynth generate output folder "
                "or a dataset CSV (path,pathology,modality)"
            )
        out = _load_manifest(p / MANIFEST, role)
    elif p.is_file():
        out = _load_csv(p)
    else:
        raise InputError(f"{role} {p}: no such file or folder; expected a dataset CSV or a generate output folder")
    if len(out) == 0:
        raise InputError(f"{role} {p}: holds no scans; expected at least one labelled scan")
    dims = {s.spatial_dims for s in out.scans}
    if len(dims) > 1:
        raise InputError(f"{role} {p}: mixes 2D and 3D scans; evaluate one dimensionality at a time")
    return out


def _load_csv(path: Path) -> LabelledScans:
    from medsynth.data.catalog import Catalog

    cat = Catalog.from_csv(path)
    scans = [cat.load(i) for i in range(len(cat))]
    return LabelledScans(
        scans,
        [r.pathology for r in cat.records],
        [s.modality for s in scans],
        [r.subject for r in cat.records],
    )


def _load_manifest(manifest: Path, role: str) -> LabelledScans:
    from medsynth.io import read_scan

    root = manifest.parent
    try:
        records = read_manifest(manifest)
    except LineError as exc:
        where = f"{role} {manifest}:{exc.line}"
        if exc.syntax:
            raise InputError(f"{where}: not a JSON object ({exc.detail}); the manifest is damaged") from None
        raise InputError(f"{where}: {exc.detail}") from None
    scans, paths, mods = [], [], []
    for lineno, case in records:
        rel = case.preferred_file()
        if not (root / rel).exists():
            raise InputError(f"{role} {manifest}:{lineno}: listed file {rel} is missing under {root}")
        scans.append(read_scan(root / rel, modality=case.modality))
        paths.append(case.pathology)
        mods.append(case.modality.upper())
    return LabelledScans(scans, paths, mods)
