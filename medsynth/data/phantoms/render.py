"""Rendering: a subject's anatomy and lesions on a voxel grid, as CT in HU or MR.

The renderer lays the voxel grid over the subject (field of view ``FOV_MM``, spacing
``FOV_MM / size`` on every axis), paints the tissues with a soft edge one voxel wide (partial
volume at any resolution), then adds what depends on the modality: a lung that is denser
posteriorly and textured, and what the scanner adds (``scanners``: scanner A, the default,
correlated Gaussian noise for CT and T2-weighted MR with Rician noise and a mild bias field;
scanner B a sharp CT kernel and T1-weighted MR with a strong coil bias field). The noise depends
on the seed, not on the pathology, so a diseased phantom minus its normal twin is exactly the
lesion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medsynth.conditions import PATHOLOGY_SEPARATOR, UnknownLabel, pathology_label, split_pathologies
from medsynth.data.phantoms.anatomy import Subject, paint_anatomy, paint_lung_vessels
from medsynth.data.phantoms.canvas import TISSUE_NAMES, Canvas
from medsynth.data.phantoms.lesions import collapse_lung, draw_lesion, paint_lesions, paint_pleural_air
from medsynth.data.phantoms.scanners import acquire, check_scanner, tissue_values
from medsynth.data.phantoms.shapes import F32, waves
from medsynth.errors import InputError
from medsynth.io.scan import Scan

PATHOLOGIES: tuple[str, ...] = ("normal", "nodule", "mass", "effusion", "pneumothorax")
# The classes the shipped models (builtin:phantom-2d, builtin:phantom-3d) were trained on. Their
# configs, and every test and benchmark whose expectations were set on those classes, name these
# explicitly: pneumothorax came later, for teaching a model a pathology it does not know.
BASE_PATHOLOGIES: tuple[str, ...] = ("normal", "nodule", "mass", "effusion")
# The tissues each lesion paints (``lesions.paint_lesions``): a case's lesion mask is where they lie.
# The pneumothorax's is its air; the pleural line and the denser collapsed lung are not in it.
LESION_TISSUES: dict[str, tuple[str, ...]] = {
    "nodule": ("nodule",),
    "mass": ("mass", "necrosis"),
    "effusion": ("effusion",),
    "pneumothorax": ("pneumothorax",),
}
MODALITIES: tuple[str, ...] = ("CT", "MR")

FOV_MM = 350.0
MIN_SIZE, MAX_SIZE = 32, 256
# Centre of the 3D field of view along z: the carina is z = 0, so the volume runs from the
# upper abdomen (-215 mm) to the lung apices (+135 mm).
Z_CENTRE_MM = -40.0


def _grid(subject: Subject, dim: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Anatomy-frame coordinates of the voxel grid, the index->RAS affine and the spacing."""
    sp = FOV_MM / size
    half = (size - 1) / 2.0
    x0, y0 = half * sp, half * sp  # column 0 is the patient's right (+x), row 0 anterior (+y)
    idx = np.arange(size, dtype=np.float64)
    xp = (x0 - idx * sp)[None, None, :]
    yp = (y0 - idx * sp)[None, :, None]
    if dim == 3:
        z0 = Z_CENTRE_MM - half * sp
        z = (z0 + idx * sp)[:, None, None]
        affine = np.array([[0, 0, -sp, x0], [0, -sp, 0, y0], [sp, 0, 0, z0], [0, 0, 0, 1]], np.float64)
    else:
        z = np.full((1, 1, 1), subject.slice_z)
        affine = np.array([[0, -sp, 0, x0], [-sp, 0, 0, y0], [0, 0, sp, subject.slice_z], [0, 0, 0, 1]], np.float64)
    # patient frame -> anatomy frame: undo the subject's position and rotation on the table
    c, s_ = math.cos(subject.rotation), math.sin(subject.rotation)
    dx, dy = xp - subject.shift[0], yp - subject.shift[1]
    x = (c * dx + s_ * dy).astype(F32)
    y = (-s_ * dx + c * dy).astype(F32)
    return x, y, z.astype(F32), affine, sp


def parse_pathologies(pathologies: str | Sequence[str]) -> tuple[str, ...]:
    """Validate phantom pathology names; return them sorted, as in ``conditions.pathology_label``.

    The names are split as ``conditions.split_pathologies`` splits them (a string, or any
    entry of a sequence, may join several with ``|``). "normal" cannot be combined with a
    pathology.

    Example:
        >>> parse_pathologies("nodule|effusion")
        ('effusion', 'nodule')
    """
    names = split_pathologies(pathologies)
    for n in names:
        if n not in PATHOLOGIES:
            hint = UnknownLabel("pathology", n, PATHOLOGIES).hint
            raise InputError(
                f"pathology {n!r} is not a phantom pathology; expected one of {', '.join(PATHOLOGIES)}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
    if not names:
        raise InputError("pathologies is empty; give at least one of " + ", ".join(PATHOLOGIES))
    # The names as given (not sorted): the message quotes the caller's own spelling.
    given = PATHOLOGY_SEPARATOR.join(names)
    if len(set(names)) != len(names):
        raise InputError(f"pathologies {given!r} repeats a name; give each pathology once")
    if "normal" in names and len(names) > 1:
        raise InputError(f"pathologies {given!r} combines 'normal' with a pathology; drop 'normal'")
    return tuple(sorted(names))


def check_grid(dim: int, size: int) -> None:
    """Raise ``InputError`` unless ``dim`` is 2 or 3 and ``size`` an integer in ``MIN_SIZE..MAX_SIZE``."""
    if dim not in (2, 3):
        raise InputError(f"dim={dim!r}: phantoms are 2 or 3 dimensional")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"size={size!r}: expected an integer from {MIN_SIZE} to {MAX_SIZE}")


def check_modality(modality: str) -> str:
    """The phantom modality ``modality`` upper-cased, or ``InputError`` when it is not one of ``MODALITIES``."""
    mod = str(modality).upper()
    if mod not in MODALITIES:
        raise InputError(f"modality {modality!r} is not a phantom modality; expected one of {', '.join(MODALITIES)}")
    return mod


def _render(
    dim: int,
    pathologies: tuple[str, ...],
    modality: str | None,
    seed: int,
    size: int,
    labels: bool,
    scanner: str = "A",
) -> tuple[Canvas, np.ndarray]:
    """The painted canvas of a phantom and its index->RAS affine; ``modality=None`` paints no image.

    Order matters: anatomy, then the lung's own value (graded and textured), then a pneumothorax's
    air (before the vessels, which then stop at its pleural line), the vessels and the lesions that
    replace part of that lung, then what the scanner adds over everything.
    """
    subject = Subject.draw(seed)
    lesions = [draw_lesion(p, subject, seed, dim) for p in pathologies if p != "normal"]
    x, y, z, affine, sp = _grid(subject, dim, size)
    shape = (size,) * 3 if dim == 3 else (1, size, size)
    mi = None if modality is None else MODALITIES.index(modality)
    values = None if modality is None else tissue_values(modality, scanner)
    canvas = Canvas(shape, mi, labels=labels, values=values)
    paint_anatomy(canvas, subject, x, y, z, edge=sp)
    lung_space = canvas.lung.copy()
    lung_value: np.ndarray | float = 0.0
    if mi is not None:
        lung_value = canvas.value("lung")
        # denser (brighter) posteriorly, where blood and weight pool in a supine patient
        grad = np.clip(-y / subject.cavity[2], -1.0, 1.0)
        lung_value = (
            F32(lung_value)
            + F32(abs(lung_value) * 0.045 + 4.0) * F32(grad)
            + F32(abs(lung_value) * 0.012 + 2.0) * waves(x, y, z, *subject.lung_texture)
        )
        canvas.image += lung_space * (lung_value - F32(canvas.value("lung")))
    for lesion in (les for les in lesions if les.kind == "pneumothorax"):
        lung_value = collapse_lung(canvas, lesion, x, sp, lung_space, lung_value)
        paint_pleural_air(canvas, subject, lesion, x, y, z, sp, lung_value)
    paint_lung_vessels(canvas, subject, x, y, z, sp, lung_space, lung_value)
    paint_lesions(canvas, subject, [les for les in lesions if les.kind != "pneumothorax"], x, y, z, sp, lung_value)
    if modality is not None:
        assert canvas.image is not None
        canvas.image = acquire(
            canvas.image, modality=modality, scanner=scanner, seed=seed, dim=dim, size=size, x=x, y=y, z=z
        )
    return canvas, affine


def make_phantom(
    *,
    dim: int = 2,
    pathologies: str | Sequence[str] = "normal",
    modality: str = "CT",
    seed: int = 0,
    size: int = 64,
    scanner: str = "A",
) -> Scan:
    """A chest phantom: an axial CT or MR slice (``dim=2``) or volume (``dim=3``).

    Args:
        dim: 2 for one axial slice ``(1, size, size)``, 3 for a volume ``(1, size, size, size)``.
        pathologies: "normal", or one or more of "nodule", "mass", "effusion", "pneumothorax"
            (a sequence, or a string joined with ``|``).
        modality: "CT" (Hounsfield units) or "MR" (scanner units 0..~1000).
        seed: the subject; the same seed gives the same anatomy in every modality, size and scanner.
        size: voxels per axis, 32..256; the field of view is always 350 mm.
        scanner: "A" (smooth CT kernel; T2-weighted MR) or "B" (sharp CT kernel; T1-weighted MR
            with a strong coil bias field): ``phantoms.scanners``.

    Returns:
        A ``Scan`` with metadata ``source_format="phantom"``, ``pathology`` (names sorted and
        joined with ``|``: ``conditions.pathology_label``), ``seed``, ``body_part="CHEST"`` and
        ``manufacturer_model`` ("medsynth phantom scanner A" or "... B").

    Example:
        >>> ct = make_phantom(dim=3, pathologies=["mass", "effusion"], seed=7, size=32)
        >>> ct.shape, ct.spacing, ct.metadata["pathology"]
        ((32, 32, 32), (10.9375, 10.9375, 10.9375), 'effusion|mass')
    """
    check_grid(dim, size)
    mod = check_modality(modality)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputError(f"seed={seed!r}: expected an integer")
    names = parse_pathologies(pathologies)
    scanner = check_scanner(scanner)
    canvas, affine = _render(dim, names, mod, int(seed), int(size), labels=False, scanner=scanner)
    assert canvas.image is not None
    image = canvas.image if dim == 2 else canvas.image[None]
    meta = {
        "source_format": "phantom",
        "pathology": pathology_label(names),
        "seed": int(seed),
        "body_part": "CHEST",
        "series_kind": "volume" if dim == 3 else "single-frame",
        "manufacturer_model": f"medsynth phantom scanner {scanner}",
    }
    return Scan(image, affine, mod, meta)


def phantom_labels(
    *, dim: int = 2, pathologies: str | Sequence[str] = "normal", seed: int = 0, size: int = 64
) -> np.ndarray:
    """The tissue label map of a phantom: index into ``TISSUE_NAMES`` of the tissue filling >50% of each voxel.

    Same shape as ``make_phantom(...).array`` and independent of modality and scanner; useful as ground
    truth (lesion masks, tissue regions) in tests and evaluation.
    """
    check_grid(dim, size)
    names = parse_pathologies(pathologies)
    canvas, _ = _render(dim, names, None, int(seed), int(size), labels=True)
    assert canvas.labels is not None
    return canvas.labels if dim == 2 else canvas.labels[None]


def phantom_lesion_mask(
    *, dim: int = 2, pathologies: str | Sequence[str] = "normal", seed: int = 0, size: int = 64
) -> np.ndarray:
    """Where a phantom's lesions lie: a bool array shaped like ``make_phantom(...).array``.

    True exactly where ``phantom_labels`` holds a tissue of the pathologies' lesions
    (``LESION_TISSUES``: the nodule; the mass with its necrotic core; the effusion's fluid; the
    pneumothorax's air);
    all False for ``"normal"``.

    Example:
        >>> bool(phantom_lesion_mask(dim=2, pathologies="nodule", seed=3, size=32).any())
        True
    """
    names = parse_pathologies(pathologies)
    labels = phantom_labels(dim=dim, pathologies=names, seed=seed, size=size)
    lesion_ids = [TISSUE_NAMES.index(t) for p in names for t in LESION_TISSUES.get(p, ())]
    return np.isin(labels, lesion_ids)
