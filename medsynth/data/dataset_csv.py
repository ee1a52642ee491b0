"""Reading a dataset CSV into ``Record`` s: the columns, the cells and every check that needs no pixels.

The CSV format itself is described in ``medsynth.data.catalog`` (its module docstring);
``Catalog.from_csv`` is ``read_dataset_csv`` plus the catalog around the records. Every
problem is an ``InputError`` that names the CSV, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medsynth.conditions import GROUP_SEPARATOR, PATHOLOGY_SEPARATOR, Condition
from medsynth.errors import InputError, MedsynthError
from medsynth.io import peek_spatial_dims
from medsynth.io.masks import check_mask_header

REQUIRED_COLUMNS = ("path", "pathology", "modality")
OPTIONAL_COLUMNS = ("split", "subject", "mask")

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
        mask: absolute path of the scan's lesion mask, or None (no mask).
    """

    path: Path
    pathologies: tuple[str, ...]
    modality: str
    split: str | None = None
    subject: str | None = None
    mask: Path | None = None

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


def read_dataset_csv(csv_path: Path) -> tuple[list[Record], int]:
    """The records of a dataset CSV and their one dimensionality (2 or 3), all checked.

    Raises:
        InputError: naming the CSV, the line and the problem.
    """
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: dataset CSV " + ("is a folder" if csv_path.is_dir() else "does not exist"))
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
    dims = check_dims(records, lines, csv_path)
    _check_mask_headers(records, lines, csv_path)
    return records, dims


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with stripped cells; checks the header."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the CSV as UTF-8"
        ) from exc
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
    path = _resolve(row["path"], root)
    if not path.exists():
        raise InputError(
            f"{where}: path {row['path']!r} does not exist (looked for {path}); paths are relative to "
            "the CSV's folder or absolute"
        )
    mask = _resolve(row["mask"], root) if row.get("mask") else None
    if mask is not None and not mask.is_file():
        raise InputError(
            f"{where}: mask {row['mask']!r} "
            + ("is a folder" if mask.is_dir() else f"does not exist (looked for {mask})")
            + "; a mask is one file (NIfTI, DICOM SEG or PNG) relative to the CSV's folder or absolute, "
            "or an empty cell for no mask"
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
        raise InputError(
            f"{where}: pathology label {bad[0]!r} contains '/', which names classes (pathology/modality); rename it"
        )
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
        mask=mask,
    )


def _resolve(cell: str, root: Path) -> Path:
    """A CSV path cell as an absolute, normalised path: relative cells are under ``root``."""
    given = Path(cell).expanduser()
    return Path(os.path.normpath(given if given.is_absolute() else root / given))


def _check_subjects_within_one_split(records: list[Record], lines: list[int], csv_path: Path) -> None:
    """A subject in two splits leaks between training and evaluation data."""
    first: dict[str, tuple[str | None, int]] = {}
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


def check_dims(records: list[Record], lines: list[int] | None, where: Path) -> int:
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


def _check_mask_headers(records: list[Record], lines: list[int], csv_path: Path) -> None:
    """Each mask's shape from its header equals its scan's (``check_mask_header``)."""
    for r, line in zip(records, lines):
        if r.mask is None:
            continue
        try:
            check_mask_header(r.mask, r.path)
        except MedsynthError as exc:
            raise InputError(f"{csv_path}: line {line}: {exc}") from exc
