"""Datasets: a folder of scans described by a CSV, with its label vocabularies and splits.

The CSV has the columns ``path,pathology,modality`` and optionally ``split``, ``subject``
and ``mask`` (no others, so a misspelt column is caught):

* ``path``: a scan file or DICOM series folder, relative to the CSV's folder or absolute.
* ``pathology``: one label, or several separated by ``|`` (``nodule|effusion``). Labels
  are case-sensitive; several labels are stored sorted, so ``nodule|effusion`` and
  ``effusion|nodule`` are the same class, ``effusion|nodule``. A label may not contain
  ``/`` (it separates pathology and modality in class names such as ``nodule/CT``).
* ``modality``: a DICOM modality code (``CT``, ``MR``, ``CR``...), upper-cased.
* ``split``: optional; when the column is present every row needs a value, and
  ``Catalog.split`` uses it as given.
* ``subject``: optional; scans of one subject (patient) always land in the same split.
  An empty cell makes the scan its own subject.
* ``mask``: optional; a lesion mask of the scan, relative like ``path``: a label map on the
  scan's grid (NIfTI, DICOM SEG, or for 2D a PNG), nonzero where the lesion is (see
  ``medsynth.io.masks``). An empty cell means no mask. ``Catalog.load_mask`` reads it.

``from_csv`` checks everything it can without reading pixels, and names the CSV line of
each problem: columns, empty cells, missing or duplicate paths, a subject spread over two
splits, 2D/3D mixing (from file headers, see ``medsynth.io.peek_spatial_dims``), and for
masks a missing file or a shape other than the scan's (``medsynth.io.masks.check_mask_header``).
Whether a mask lies on its scan's grid, and is empty exactly when the scan is normal, needs
the pixels: ``load_mask`` checks it.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from medsynth.conditions import NORMAL, group_key
from medsynth.conditions import pathology_label as pathology_label  # re-exported: part of the catalog API
from medsynth.data.dataset_csv import OPTIONAL_COLUMNS as OPTIONAL_COLUMNS  # re-exported with Record
from medsynth.data.dataset_csv import REQUIRED_COLUMNS, Record, check_dims, read_dataset_csv
from medsynth.digest import sha256_lines
from medsynth.errors import InputError
from medsynth.io import read_scan
from medsynth.io.atomic import atomic_write_text
from medsynth.io.masks import read_mask
from medsynth.io.scan import Scan
from medsynth.seeding import numpy_rng

# The pathology of a scan without a lesion: its mask, if it has one, must be empty.
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


class Catalog:
    """A list of ``Record`` s with a root folder; see the module docstring for the CSV.

    Args:
        records: the scans.
        root: the folder relative paths are written against (the CSV's folder).
        spatial_dims: 2 or 3 when already known; else found from file headers on demand.

    Example:
        >>> cat = Catalog.from_csv("data/labels.csv")  # doctest: +SKIP
        >>> parts = cat.split({"train": 0.8, "holdout": 0.2}, seed=1)  # doctest: +SKIP
        >>> scan = parts["train"].load(0)  # doctest: +SKIP
    """

    def __init__(self, records: Sequence[Record], root: str | os.PathLike[str], *, spatial_dims: int | None = None):
        self.records: list[Record] = list(records)
        self.root = Path(os.path.abspath(root))
        self._spatial_dims = spatial_dims

    # --- reading -------------------------------------------------------------------------

    @classmethod
    def from_csv(cls, csv_path: str | os.PathLike[str]) -> Catalog:
        """Read and validate a dataset CSV (see the module docstring).

        Raises:
            InputError: naming the CSV, the line and the problem.
        """
        csv_path = Path(csv_path)
        records, dims = read_dataset_csv(csv_path)
        return cls(records, csv_path.parent, spatial_dims=dims)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the catalog as a dataset CSV (atomic). Paths under the CSV's folder are
        written relative to it, others absolute, so ``from_csv`` reads it back unchanged."""
        path = Path(path)
        folder = Path(os.path.abspath(path.parent))
        columns = list(REQUIRED_COLUMNS)
        if any(r.split is not None for r in self.records):
            columns.append("split")
        if any(r.subject is not None for r in self.records):
            columns.append("subject")
        if self.has_masks:
            columns.append("mask")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)

        def cell(path: Path | None) -> str:
            if path is None:
                return ""
            try:
                return path.relative_to(folder).as_posix()
            except ValueError:
                return str(path)

        for r in self.records:
            values = {
                "path": cell(r.path),
                "pathology": r.pathology,
                "modality": r.modality,
                "split": r.split or "",
                "subject": r.subject or "",
                "mask": cell(r.mask),
            }
            writer.writerow([values[c] for c in columns])
        atomic_write_text(path, buffer.getvalue())
        return path

    # --- the collection ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def __repr__(self) -> str:
        return f"Catalog({len(self)} scans, pathologies={self.pathologies}, modalities={self.modalities})"

    @property
    def pathologies(self) -> list[str]:
        """The sorted vocabulary of single pathology labels."""
        return sorted({p for r in self.records for p in r.pathologies})

    @property
    def has_masks(self) -> bool:
        """True when at least one scan has a lesion mask (a non-empty ``mask`` cell)."""
        return any(r.mask is not None for r in self.records)

    @property
    def modalities(self) -> list[str]:
        """The sorted modality codes."""
        return sorted({r.modality for r in self.records})

    def class_counts(self) -> dict[tuple[str, str], int]:
        """Scans per class ``(pathology label, modality)``, in sorted order.

        A scan with several pathologies counts once, under its joined label
        (``("effusion|nodule", "CT")``).
        """
        counts = Counter((r.pathology, r.modality) for r in self.records)
        return dict(sorted(counts.items()))

    def subset(self, indices: Iterable[int]) -> Catalog:
        """A catalog of the records at ``indices`` (same root)."""
        return Catalog([self.records[i] for i in indices], self.root, spatial_dims=self._spatial_dims)

    def load(self, i: int) -> Scan:
        """Read scan ``i`` with ``read_scan``; modality from the CSV, pathology in the metadata.

        Raises:
            InputError: the file cannot be read, its DICOM Modality contradicts the CSV, or
                its dimensionality differs from the rest of the dataset.
        """
        record = self.records[i]
        scan = read_scan(record.path, modality=record.modality)
        # NIfTI/PNG store no modality ("OT"); a DICOM file's own Modality must agree with the CSV.
        if scan.modality not in ("OT", record.modality):
            raise InputError(
                f"{record.path}: the file's Modality is {scan.modality} but the dataset CSV says "
                f"{record.modality}; correct the CSV's modality cell"
            )
        dims = self.spatial_dims()
        if scan.spatial_dims != dims:
            raise InputError(
                f"{record.path}: read as a {scan.spatial_dims}D scan, but this dataset is {dims}D; "
                "a dataset must be all 2D or all 3D"
            )
        scan.modality = record.modality
        scan.metadata.update(pathology=record.pathology, pathologies=list(record.pathologies))
        return scan

    def load_mask(self, i: int, scan: Scan | None = None) -> np.ndarray | None:
        """The lesion mask of scan ``i`` on the scan's grid: bool ``(1, *scan.shape)``, or None without one.

        Args:
            i: the record.
            scan: scan ``i`` when already loaded (``load(i)``); else it is read here, since
                the mask's grid is checked against the scan's.

        Raises:
            InputError: the mask cannot be read, lies on another grid (``read_mask``), is
                empty on a scan with a lesion pathology, or marks voxels on a normal scan.

        Example:
            >>> scan = cat.load(0); mask = cat.load_mask(0, scan)  # doctest: +SKIP
        """
        record = self.records[i]
        if record.mask is None:
            return None
        mask = read_mask(record.mask, scan if scan is not None else self.load(i))
        marked = int(mask.sum())
        lesion = any(p != NORMAL for p in record.pathologies)
        if lesion and marked == 0:
            raise InputError(
                f"{record.mask}: the mask of {record.path} is empty, but its pathology is "
                f"{record.pathology!r}; mark the lesion (nonzero voxels) in the mask, or empty "
                "the scan's mask cell"
            )
        if not lesion and marked:
            raise InputError(
                f"{record.mask}: the mask of {record.path} marks {marked} voxel(s), but the scan is "
                f"{NORMAL!r}, which has no lesion; empty its mask cell or correct its pathology"
            )
        return mask

    def spatial_dims(self) -> int:
        """2 or 3: the dimensionality every scan shares (from headers; cached).

        Raises:
            InputError: the catalog is empty or mixes 2D and 3D scans.
        """
        if self._spatial_dims is None:
            if not self.records:
                raise InputError(f"catalog under {self.root} is empty: it has no dimensionality")
            self._spatial_dims = check_dims(self.records, None, self.root)
        return self._spatial_dims

    def fingerprint(self) -> dict:
        """Counts per ``"pathology/modality"`` and a SHA-256 of the sorted relative paths.

        Only paths relative to ``root`` enter the hash (nothing else about the files), and
        only counts are listed, so no identifier leaves with it. With masks, ``masks`` (how
        many scans have one) and ``mask_list_sha256`` (of the sorted scan/mask path pairs)
        are added; a catalog without masks has exactly the two keys it always had.
        """

        def rel(path: Path) -> str:
            return Path(os.path.relpath(path, self.root)).as_posix()

        digest = sha256_lines(sorted(rel(r.path) for r in self.records))
        counts = {group_key(p, m): n for (p, m), n in self.class_counts().items()}
        out: dict = {"counts": counts, "file_list_sha256": digest}
        if self.has_masks:
            pairs = sorted(f"{rel(r.path)}\t{rel(r.mask)}" for r in self.records if r.mask is not None)
            out["masks"] = len(pairs)
            out["mask_list_sha256"] = sha256_lines(pairs)
        return out

    # --- splits --------------------------------------------------------------------------

    def split(self, fractions: dict[str, float] | None = None, seed: int = 0) -> dict[str, Catalog]:
        """Split into named parts, never separating one subject's scans.

        With a ``split`` column, the column decides and ``fractions``/``seed`` are not
        used. Otherwise subjects (records without one are each their own subject) are
        dealt to the parts in proportion to ``fractions``: the number of subjects per part
        is exact (largest remainder, at least one each). Subjects are dealt stratum by
        stratum (a subject's stratum is its rarest class, rarest strata first): each stratum
        gives one subject to every part before the rest follow in proportion, so a class
        with at least as many subjects as there are parts appears in every part.
        Deterministic in ``seed`` and the record order.

        Args:
            fractions: part name -> fraction of subjects, positive, summing to 1;
                default ``{"train": 0.8, "val": 0.1, "test": 0.1}``.
            seed: seed of the shuffle within strata.

        Raises:
            InputError: bad fractions, or fewer subjects than parts.
        """
        if any(r.split is not None for r in self.records):
            return self._split_by_column()
        fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
        _check_fractions(fractions)
        subjects = self._subjects()
        if len(subjects) < len(fractions):
            raise InputError(
                f"cannot split {len(subjects)} subject(s) into {len(fractions)} parts "
                f"({', '.join(fractions)}): every part needs at least one subject"
            )
        quotas = _quotas(len(subjects), fractions)
        order = self._stratified_order(subjects, seed)
        assigned: dict[str, list[tuple]] = {name: [] for name in fractions}
        in_stratum: dict[tuple, Counter] = defaultdict(Counter)
        for t, (key, stratum) in enumerate(order):
            got, m = in_stratum[stratum], sum(in_stratum[stratum].values())
            # Among parts with room: first a part that has none of this stratum yet, then the
            # part furthest behind its share of the stratum, then of all subjects so far.
            name = max(
                (n for n in fractions if len(assigned[n]) < quotas[n]),
                key=lambda n: (
                    got[n] == 0,
                    fractions[n] * (m + 1) - got[n],
                    quotas[n] * (t + 1) / len(order) - len(assigned[n]),
                ),
            )
            assigned[name].append(key)
            got[name] += 1
        return {name: self.subset(sorted(i for key in keys for i in subjects[key])) for name, keys in assigned.items()}

    def _split_by_column(self) -> dict[str, Catalog]:
        parts: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            if r.split is None:
                raise InputError(
                    f"{r.path}: has no split value while other scans have one; give every scan a split or none"
                )
            parts.setdefault(r.split, []).append(i)
        return {name: self.subset(idx) for name, idx in parts.items()}

    def _subjects(self) -> dict[tuple, list[int]]:
        """Subject key -> record indices; a record without subject is its own key."""
        subjects: dict[tuple, list[int]] = {}
        for i, r in enumerate(self.records):
            key = (0, r.subject) if r.subject is not None else (1, str(i))
            subjects.setdefault(key, []).append(i)
        return subjects

    def _stratified_order(self, subjects: dict[tuple, list[int]], seed: int) -> list[tuple[tuple, tuple]]:
        """(subject, stratum) pairs grouped by stratum (rarest class first), shuffled within."""
        class_subjects: dict[tuple[str, str], set] = defaultdict(set)
        for key, idx in subjects.items():
            for i in idx:
                r = self.records[i]
                class_subjects[(r.pathology, r.modality)].add(key)

        def stratum(key: tuple) -> tuple[int, tuple[str, str]]:
            classes = {(self.records[i].pathology, self.records[i].modality) for i in subjects[key]}
            return min((len(class_subjects[c]), c) for c in classes)

        strata: dict[tuple, list[tuple]] = defaultdict(list)
        for key in sorted(subjects):
            strata[stratum(key)].append(key)
        rng = numpy_rng("catalog-split", seed)
        order: list[tuple[tuple, tuple]] = []
        for s in sorted(strata):
            members = strata[s]
            order.extend((members[j], s) for j in rng.permutation(len(members)))
        return order


# --- split helpers ---------------------------------------------------------------------


def _check_fractions(fractions: dict[str, float]) -> None:
    if not fractions:
        raise InputError("split fractions are empty; give e.g. {'train': 0.8, 'val': 0.2}")
    for name, f in fractions.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"split name {name!r} must be a non-empty string")
        if not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
            raise InputError(f"split fraction {name}={f!r} must be a positive number (leave the part out instead of 0)")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise InputError(f"split fractions {fractions} sum to {total:g}; they must sum to 1")


def _quotas(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Exact subject counts per part: largest remainder, then at least one per part."""
    raw = {k: n * f for k, f in fractions.items()}
    quotas = {k: math.floor(v) for k, v in raw.items()}
    by_remainder = sorted(fractions, key=lambda k: raw[k] - quotas[k], reverse=True)
    for k in by_remainder[: n - sum(quotas.values())]:
        quotas[k] += 1
    for k in fractions:
        if quotas[k] == 0:
            donor = max(fractions, key=lambda d: quotas[d])
            quotas[donor] -= 1
            quotas[k] = 1
    return quotas
