"""The phantom dataset writer: one phantom per subject in a folder, and its labels.csv.

``phantom_dataset`` decides each case's class (balanced round robin, or exact per-class
counts), subject seed and split, renders it with ``make_phantom`` and writes it in one of the
``medsynth.io.formats`` formats, with its lesion mask beside it when asked (``masks=True``);
labels.csv, written last, is a dataset CSV that ``medsynth.data.catalog.Catalog.from_csv``
reads as it stands. The scanner (``scanner="A"`` or ``"B"``) is one for the whole folder and is
not a labels.csv column: the dataset CSV refuses unknown columns, so a column would break every
reader; it is in each scan's metadata (``manufacturer_model``) when the scans are made.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medsynth.conditions import pathology_label
from medsynth.data.phantoms.render import (
    MODALITIES,
    PATHOLOGIES,
    check_grid,
    check_modality,
    make_phantom,
    parse_pathologies,
    phantom_lesion_mask,
)
from medsynth.data.phantoms.scanners import check_scanner
from medsynth.errors import InputError
from medsynth.io import write_scan
from medsynth.io.atomic import atomic_write_text
from medsynth.io.formats import FORMATS, get_format
from medsynth.io.masks import write_mask_nifti, write_mask_png
from medsynth.io.scan import Scan
from medsynth.seeding import derive_seed, numpy_rng

LABEL_COLUMNS: tuple[str, ...] = ("path", "pathology", "modality", "split", "subject")
MASK_COLUMN = "mask"  # appended to LABEL_COLUMNS when masks are written
_SPLIT_FRACTIONS = (("test", 0.1), ("val", 0.1))  # the rest is train


def _dataset_classes(
    count: int,
    pathologies: Iterable[str],
    modalities: Iterable[str],
    class_counts: dict[tuple[str, str], int] | None,
) -> list[tuple[str, str]]:
    """The (pathology label, modality) of each case, in case order."""
    if class_counts is None:
        labels = list(dict.fromkeys(pathology_label(parse_pathologies(p)) for p in pathologies))
        mods = list(dict.fromkeys(check_modality(m) for m in modalities))
        if not labels or not mods:
            raise InputError("phantom_dataset: pathologies and modalities must each name at least one value")
        classes = [(p, m) for p in labels for m in mods]
        return [classes[i % len(classes)] for i in range(count)]  # balanced: round robin
    cases: list[tuple[str, str]] = []
    for key, n in class_counts.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise InputError(f"class_counts key {key!r}: expected a (pathology, modality) pair")
        label, mod = pathology_label(parse_pathologies(key[0])), check_modality(key[1])
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise InputError(f"class_counts[{key!r}] = {n!r}: expected a count >= 0")
        cases += [(label, mod)] * int(n)
    if len(cases) != count:
        raise InputError(
            f"count={count} but class_counts adds up to {len(cases)}; pass count={len(cases)} or fix class_counts"
        )
    return cases


# Not ``Catalog.split``: that one deals subjects to parts by a global largest-remainder quota
# (at least one subject per part) from its own shuffle, which assigns other cases, and puts
# val/test cases into a 40-case set that has none here. Every phantom dataset, and so every
# shipped model and the demo, was made with these splits.
def _splits(classes: Sequence[tuple[str, str]], seed: int) -> list[str]:
    """train/val/test about 80/10/10 within each class, so rare classes reach every split."""
    split = ["train"] * len(classes)
    for cls in dict.fromkeys(classes):
        idx = [i for i, c in enumerate(classes) if c == cls]
        order = numpy_rng("medsynth-phantom", "split", seed, *cls).permutation(len(idx))
        start = 0
        for name, frac in _SPLIT_FRACTIONS:
            n = round(frac * len(idx))
            for j in order[start : start + n]:
                split[idx[j]] = name
            start += n
    return split


def _write_mask(scan: Scan, out: Path, case: str, fmt: str, seed: int, size: int) -> str:
    """Write a lesion case's mask beside its scan; return its labels.csv cell (relative to ``out``).

    A PNG dataset gets PNG masks: a PNG scan has no geometry for a NIfTI mask to match. NIfTI
    and DICOM datasets get NIfTI label maps on the scan's affine.
    """
    dim = scan.spatial_dims
    mask = phantom_lesion_mask(dim=dim, pathologies=scan.metadata["pathology"], seed=seed, size=size)
    if not mask.any():
        # A lesion smaller than half a voxel everywhere: a lesion class without a lesion in
        # its mask is refused by Catalog.load_mask, so say so now, with the remedy.
        raise InputError(
            f"{case}: its {scan.metadata['pathology']} covers no voxel at size={size}; "
            "use a larger --size (64 or more) to write lesion masks"
        )
    if fmt == "png":
        written = write_mask_png(mask, scan, out / f"{case}-mask.png")
    else:
        written = write_mask_nifti(mask, scan, out / f"{case}-mask.nii.gz")
    return written.relative_to(out).as_posix()


def phantom_dataset(
    out_dir: str | Path,
    *,
    dim: int,
    count: int,
    fmt: str = "nifti",
    seed: int = 0,
    size: int = 64,
    pathologies: Sequence[str] | None = PATHOLOGIES,
    modalities: Sequence[str] = MODALITIES,
    class_counts: dict[tuple[str, str], int] | None = None,
    masks: bool = False,
    scanner: str = "A",
) -> Path:
    """Write a labelled phantom dataset: one scan per subject plus ``OUT/labels.csv``.

    Cases are balanced over the (pathology, modality) classes (round robin), or follow
    ``class_counts`` exactly, e.g. ``{("nodule", "CT"): 10, ("normal", "CT"): 300}`` for an
    imbalanced set (then ``count`` must equal the total). Each case is a different subject
    ``phantom-sSEED-NNNNN`` whose anatomy seed is ``derive_seed(seed, "phantom-subject", NNNNN)``,
    so two datasets with different ``seed`` share no subject (and say so in their subject
    column). Files are named ``case-NNNNN`` (a
    ``.nii.gz``, ``.png`` or DICOM folder) and are written atomically; labels.csv is written
    last and lists ``path`` (relative to OUT), ``pathology`` (``|``-joined when several),
    ``modality``, ``split`` (train/val/test ~80/10/10 within each class) and ``subject``.
    Files of an earlier run under the same names are replaced. With ``masks``, each lesion
    case's mask (``phantom_lesion_mask``) is written beside it as ``case-NNNNN-mask.nii.gz``
    (a uint8 label map on the scan's grid; ``-mask.png`` for PNG datasets) and labels.csv gets
    a last column ``mask`` naming it; normal cases have no mask and an empty cell. Without
    ``masks`` nothing differs from a dataset written before masks existed.

    The default ``pathologies`` are all of ``PATHOLOGIES``, pneumothorax included; a dataset
    made for (or compared with) the shipped models passes ``BASE_PATHOLOGIES``, the four they
    know, and is then the dataset it was before pneumothorax existed, case for case.

    Args:
        out_dir: the output folder (created if missing).
        dim: 2 or 3.
        count: number of scans (>= 1).
        fmt: a ``medsynth.io.formats`` name: "nifti", "dicom" or "png" (2D only).
        seed: dataset seed.
        size: voxels per axis, 32..256.
        pathologies: class labels to balance over; an entry may join several with ``|``
            (ignored when ``class_counts`` is given); None: ``PATHOLOGIES``.
        modalities: subset of ``MODALITIES``.
        class_counts: optional exact number of cases per (pathology, modality).
        masks: also write lesion masks and the ``mask`` column.
        scanner: "A" (the default look) or "B" (sharp CT kernel, T1-weighted MR with a coil
            bias field): ``phantoms.scanners``; the same seed gives the same subjects and labels.

    Returns:
        The path of labels.csv.

    Example:
        >>> phantom_dataset("data/phantoms", dim=2, count=80, seed=1)  # doctest: +SKIP
        PosixPath('data/phantoms/labels.csv')
    """
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        raise InputError(f"count={count!r}: expected a whole number of scans >= 1")
    check_grid(dim, size)
    scanner = check_scanner(scanner)
    fmt_entry = get_format(fmt)
    if dim == 3 and not fmt_entry.holds_3d:
        volumes = " or ".join(name for name, f in FORMATS.items() if f.holds_3d)
        raise InputError(f"format {fmt!r} holds 2D images only; use --format {volumes} for dim=3")
    classes = _dataset_classes(
        int(count), PATHOLOGIES if pathologies is None else pathologies, modalities, class_counts
    )
    splits = _splits(classes, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(count - 1)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS + ((MASK_COLUMN,) if masks else ()))
    for i, ((label, mod), split) in enumerate(zip(classes, splits, strict=True)):
        case = f"case-{i:0{width}d}"
        subject_seed = derive_seed(seed, "phantom-subject", i)
        scan = make_phantom(dim=dim, pathologies=label, modality=mod, seed=subject_seed, size=size, scanner=scanner)
        written = write_scan(scan, out / case, fmt, case_id=case)
        row = [written.relative_to(out).as_posix(), label, mod, split, f"phantom-s{seed}-{i:0{width}d}"]
        if masks:
            row.append("" if label == "normal" else _write_mask(scan, out, case, fmt, subject_seed, size))
        writer.writerow(row)
    csv_path = out / "labels.csv"
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path
