"""Datasets: a folder of scans described by a CSV, with its label vocabularies and splits.

The CSV has the columns ``path,pathology,modality`` and optionally ``split`` and
``subject`` (no others, so a misspelt column is caught):

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

``from_csv`` checks everything it can without reading pixels, and names the CSV line of
each problem: columns, empty cells, missing or duplicate paths, a subject spread over two
splits, and 2D/3D mixing (from file headers, see ``medsynth.io.peek_spatial_dims``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsynth.conditions import GROUP_SEPARATOR, PATHOLOGY_SEPARATOR, Condition, group_key
from medsynth.conditions import pathology_label as pathology_label  # re-exported: part of the catalog API
from medsynth.errors import InputError, MedsynthError
from medsynth.io import peek_spatial_dims, read_scan
from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.seeding import numpy_rng

REQUIRED_COLUMNS = ("path", "pathology", "modality")
OPTIONAL_COLUMNS = ("split", "subject")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}

# DICOM modality codes are upper-case letters, digits and underscores, at most 16 long (VR CS).
_MODALITY_RE = re.compile(r"^[A-Z0-9_]{1,16}$")


@dataclass(frozen=True)
class Record:
    """One scan of a dataset.

    Args:
        path: absolute path of the scan file or DICOM folder.
        pathologies: sorted, distinct labels.
        modality: DICOM modality code.
        split: the CSV's split value, if the CSV has a ``split`` column.
        subject: the CSV's subject value, or None (the scan is its own subject).
    """

    path: Path
    pathologies: tuple[str, ...]
    modality: str
    split: str | None = None
    subject: str | None = None

    @property
    def condition(self) -> Condition:
        return Condition.of(self.pathologies, self.modality)

    @property
    def pathology(self) -> str:
        """The class label, e.g. ``"effusion|nodule"``."""
        return self.condition.label

    @property
    def group(self) -> str:
        """The class name, e.g. ``"effusion|nodule/CT"``."""
        return self.condition.group


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
        if not csv_path.is_file():
            raise InputError(
                f"{csv_path}: dataset CSV " + ("is a folder" if csv_path.is_dir() else "does not exist")
            )
        root = Path(os.path.abspath(csv_path.parent))
        rows = _read_rows(csv_path)
        records, lines = [], []
        seen: dict[str, int] = {}
        for line, row in rows:
            record = _parse_row(row, line, csv_path, root)
            key = os.path.normcase(str(record.path))
            if key in seen:
                raise InputError(
                    f"{csv_path}: line {line}: path {row['path']!r} is already listed on line "
                    f"{seen[key]}; list each scan once"
                )
            seen[key] = line
            records.append(record)
            lines.append(line)
        if not records:
            raise InputError(f"{csv_path}: no rows after the header; a dataset needs at least one scan")
        if "split" in rows[0][1]:
            _check_subjects_within_one_split(records, lines, csv_path)
        dims = _check_dims(records, lines, csv_path)
        return cls(records, root, spatial_dims=dims)

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
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for r in self.records:
            try:
                cell = r.path.relative_to(folder).as_posix()
            except ValueError:
                cell = str(r.path)
            values = {"path": cell, "pathology": r.pathology, "modality": r.modality,
                      "split": r.split or "", "subject": r.subject or ""}
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

    def spatial_dims(self) -> int:
        """2 or 3: the dimensionality every scan shares (from headers; cached).

        Raises:
            InputError: the catalog is empty or mixes 2D and 3D scans.
        """
        if self._spatial_dims is None:
            if not self.records:
                raise InputError(f"catalog under {self.root} is empty: it has no dimensionality")
            self._spatial_dims = _check_dims(self.records, None, self.root)
        return self._spatial_dims

    def fingerprint(self) -> dict:
        """Counts per ``"pathology/modality"`` and a SHA-256 of the sorted relative paths.

        Only paths relative to ``root`` enter the hash (nothing else about the files), and
        only counts are listed, so no identifier leaves with it.
        """
        rel = sorted(Path(os.path.relpath(r.path, self.root)).as_posix() for r in self.records)
        digest = hashlib.sha256("\n".join(rel).encode("utf-8")).hexdigest()
        counts = {group_key(p, m): n for (p, m), n in self.class_counts().items()}
        return {"counts": counts, "file_list_sha256": digest}

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
        return {
            name: self.subset(sorted(i for key in keys for i in subjects[key]))
            for name, keys in assigned.items()
        }

    def _split_by_column(self) -> dict[str, Catalog]:
        parts: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            if r.split is None:
                raise InputError(
                    f"{r.path}: has no split value while other scans have one; give every "
                    "scan a split or none"
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


# --- CSV parsing helpers -----------------------------------------------------------------


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with stripped cells; checks the header."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the CSV as UTF-8") from exc
    except OSError as exc:
        raise InputError(f"{csv_path}: cannot read ({exc.strerror or exc})") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise InputError(
                f"{csv_path}: empty CSV; expected a header with columns {', '.join(REQUIRED_COLUMNS)}"
                f" (optional: {', '.join(OPTIONAL_COLUMNS)})"
            )
        header = [h.strip() for h in header]
        _check_header(header, csv_path)
        rows = []
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank lines (e.g. a trailing newline from a spreadsheet)
            if len(cells) != len(header):
                raise InputError(
                    f"{csv_path}: line {line}: {len(cells)} cells, but the header has {len(header)} "
                    f"columns ({', '.join(header)}); quote cells that contain commas"
                )
            rows.append((line, {h: c.strip() for h, c in zip(header, cells)}))
    except csv.Error as exc:
        raise InputError(f"{csv_path}: line {reader.line_num}: not valid CSV ({exc})") from exc
    if not rows:
        raise InputError(f"{csv_path}: no rows after the header; a dataset needs at least one scan")
    return rows


def _check_header(header: list[str], csv_path: Path) -> None:
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    duplicated = sorted({h for h in header if header.count(h) > 1})
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [h for h in header if h not in allowed]
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown column(s) {', '.join(repr(u) for u in unknown)}")
    if duplicated:
        problems.append(f"repeated column(s) {', '.join(duplicated)}")
    if problems:
        raise InputError(
            f"{csv_path}: header {'; '.join(problems)}; required: {', '.join(REQUIRED_COLUMNS)}; "
            f"optional: {', '.join(OPTIONAL_COLUMNS)} (lower case)"
        )


def _parse_row(row: dict[str, str], line: int, csv_path: Path, root: Path) -> Record:
    where = f"{csv_path}: line {line}"
    for column in REQUIRED_COLUMNS:
        if not row[column]:
            raise InputError(f"{where}: empty {column!r} cell; every scan needs a {column}")
    if "split" in row and not row["split"]:
        raise InputError(f"{where}: empty 'split' cell; with a split column every scan needs a split")
    cell = row["path"]
    given = Path(cell).expanduser()
    path = Path(os.path.normpath(given if given.is_absolute() else root / given))
    if not path.exists():
        raise InputError(
            f"{where}: path {cell!r} does not exist (looked for {path}); paths are relative to "
            "the CSV's folder or absolute"
        )
    labels = [p.strip() for p in row["pathology"].split(PATHOLOGY_SEPARATOR)]
    if any(not p for p in labels):
        raise InputError(
            f"{where}: pathology {row['pathology']!r} has an empty label; separate several labels "
            f"with a single {PATHOLOGY_SEPARATOR!r}, e.g. 'nodule|effusion'"
        )
    if len(set(labels)) != len(labels):
        raise InputError(f"{where}: pathology {row['pathology']!r} repeats a label; list each once")
    bad = [p for p in labels if GROUP_SEPARATOR in p]
    if bad:
        raise InputError(f"{where}: pathology label {bad[0]!r} contains '/', which names classes (pathology/modality); rename it")
    modality = row["modality"].upper()
    if not _MODALITY_RE.match(modality):
        raise InputError(
            f"{where}: modality {row['modality']!r} is not a DICOM modality code (letters, digits "
            "or _, at most 16, e.g. CT, MR, CR)"
        )
    return Record(
        path=path,
        pathologies=tuple(sorted(labels)),
        modality=modality,
        split=row.get("split") or None,
        subject=row.get("subject") or None,
    )


def _check_subjects_within_one_split(records: list[Record], lines: list[int], csv_path: Path) -> None:
    """A subject in two splits leaks between training and evaluation data."""
    first: dict[str, tuple[str, int]] = {}
    for r, line in zip(records, lines):
        if r.subject is None:
            continue
        split, line0 = first.setdefault(r.subject, (r.split, line))
        if split != r.split:
            # The subject value itself is not printed: it may be a patient identifier.
            raise InputError(
                f"{csv_path}: lines {line0} and {line} give the same subject the splits "
                f"{split!r} and {r.split!r}; one subject's scans must share a split"
            )


def _check_dims(records: list[Record], lines: list[int] | None, where: Path) -> int:
    """The one dimensionality of all records, from headers; InputError when they mix."""
    first: dict[int, str] = {}
    for k, r in enumerate(records):
        line = f"line {lines[k]}: " if lines else ""
        try:
            dims = peek_spatial_dims(r.path)
        except MedsynthError as exc:
            raise InputError(f"{where}: {line}{exc}") from exc
        label = f"{line}{r.path}"
        first.setdefault(dims, label)
        if len(first) > 1:
            raise InputError(
                f"{where}: mixes 2D and 3D scans ({first[2]} is 2D; {first[3]} is 3D); "
                "a dataset must be all 2D or all 3D: split it into two CSVs"
            )
    return next(iter(first))


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
