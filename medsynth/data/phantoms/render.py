"""Rendering: a subject's anatomy and lesions on a voxel grid, as CT in HU or T2-weighted MR.

The renderer lays the voxel grid over the subject (field of view ``FOV_MM``, spacing
``FOV_MM / size`` on every axis), paints the tissues with a soft edge one voxel wide (partial
volume at any resolution), then adds what depends on the modality: a lung that is denser
posteriorly and textured, and noise (correlated Gaussian for CT; Rician with a smooth
multiplicative bias field for MR). The noise depends on the seed, not on the pathology, so a
diseased phantom minus its normal twin is exactly the lesion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medsynth.conditions import PATHOLOGY_SEPARATOR, pathology_label, split_pathologies
from medsynth.data.phantoms.anatomy import Subject, paint_anatomy, paint_lung_vessels
from medsynth.data.phantoms.canvas import TISSUE_NAMES, TISSUES, Canvas
from medsynth.data.phantoms.lesions import draw_lesion, paint_lesions
from medsynth.data.phantoms.shapes import F32, waves
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.seeding import numpy_rng

PATHOLOGIES: tuple[str, ...] = ("normal", "nodule", "mass", "effusion")
# The tissues each lesion paints (``lesions.paint_lesions``): a case's lesion mask is where they lie.
LESION_TISSUES: dict[str, tuple[str, ...]] = {
    "nodule": ("nodule",),
    "mass": ("mass", "necrosis"),
    "effusion": ("effusion",),
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


def _ct_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Slightly correlated Gaussian noise with a subject-specific level of 10-20 HU."""
    level = rng.uniform(10.0, 20.0)
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=F32), 0.6)
    return n * F32(level / max(float(n.std()), 1e-6))


def _mr_bias(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A smooth multiplicative bias field, about 0.8-1.2 (receive-coil sensitivity)."""
    u, v, w = x / 175.0, y / 175.0, z / 175.0
    c = rng.normal(scale=[0.08, 0.08, 0.05, 0.04, 0.04, 0.03])
    log_b = c[0] * u + c[1] * v + c[2] * w + c[3] * u * u + c[4] * v * v + c[5] * u * v
    return np.exp(np.clip(log_b, -0.2, 0.2)).astype(F32)


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
            raise InputError(f"pathology {n!r} is not a phantom pathology; expected one of {', '.join(PATHOLOGIES)}")
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
    dim: int, pathologies: tuple[str, ...], modality: str | None, seed: int, size: int, labels: bool
) -> tuple[Canvas, np.ndarray]:
    """The painted canvas of a phantom and its index->RAS affine; ``modality=None`` paints no image.

    Order matters: anatomy, then the lung's own value (graded and textured), then the vessels and
    lesions that replace part of that lung, then noise over everything.
    """
    subject = Subject.draw(seed)
    lesions = [draw_lesion(p, subject, seed, dim) for p in pathologies if p != "normal"]
    x, y, z, affine, sp = _grid(subject, dim, size)
    shape = (size,) * 3 if dim == 3 else (1, size, size)
    mi = None if modality is None else MODALITIES.index(modality)
    canvas = Canvas(shape, mi, labels=labels)
    paint_anatomy(canvas, subject, x, y, z, edge=sp)
    lung_space = canvas.lung.copy()
    lung_value: np.ndarray | float = 0.0
    if mi is not None:
        lung_value = TISSUES["lung"][mi]
        # denser (brighter) posteriorly, where blood and weight pool in a supine patient
        grad = np.clip(-y / subject.cavity[2], -1.0, 1.0)
        lung_value = (
            F32(lung_value)
            + F32(abs(lung_value) * 0.045 + 4.0) * F32(grad)
            + F32(abs(lung_value) * 0.012 + 2.0) * waves(x, y, z, *subject.lung_texture)
        )
        canvas.image += lung_space * (lung_value - F32(TISSUES["lung"][mi]))
    paint_lung_vessels(canvas, subject, x, y, z, sp, lung_space, lung_value)
    paint_lesions(canvas, subject, lesions, x, y, z, sp, lung_value)
    if mi is not None:
        nrng = numpy_rng("medsynth-phantom", "noise", seed, dim, size, modality)
        if modality == "CT":
            canvas.image += _ct_noise(nrng, shape)
            np.clip(canvas.image, -1024.0, 3071.0, out=canvas.image)
        else:
            sigma = nrng.uniform(12.0, 22.0)
            signal = canvas.image * _mr_bias(nrng, x, y, z)
            re = signal + sigma * nrng.standard_normal(shape, dtype=F32)
            im = sigma * nrng.standard_normal(shape, dtype=F32)
            canvas.image = np.hypot(re, im)  # magnitude image: Rician noise, never negative
    return canvas, affine


def make_phantom(
    *, dim: int = 2, pathologies: str | Sequence[str] = "normal", modality: str = "CT", seed: int = 0, size: int = 64
) -> Scan:
    """A chest phantom: an axial CT or MR slice (``dim=2``) or volume (``dim=3``).

    Args:
        dim: 2 for one axial slice ``(1, size, size)``, 3 for a volume ``(1, size, size, size)``.
        pathologies: "normal", or one or more of "nodule", "mass", "effusion" (a sequence, or a
            string joined with ``|``).
        modality: "CT" (Hounsfield units) or "MR" (T2-weighted, scanner units 0..~1000).
        seed: the subject; the same seed gives the same anatomy in every modality and size.
        size: voxels per axis, 32..256; the field of view is always 350 mm.

    Returns:
        A ``Scan`` with metadata ``source_format="phantom"``, ``pathology`` (names sorted and
        joined with ``|``: ``conditions.pathology_label``), ``seed`` and ``body_part="CHEST"``.

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
    canvas, affine = _render(dim, names, mod, int(seed), int(size), labels=False)
    assert canvas.image is not None
    image = canvas.image if dim == 2 else canvas.image[None]
    meta = {
        "source_format": "phantom",
        "pathology": pathology_label(names),
        "seed": int(seed),
        "body_part": "CHEST",
        "series_kind": "volume" if dim == 3 else "single-frame",
    }
    return Scan(image, affine, mod, meta)


def phantom_labels(
    *, dim: int = 2, pathologies: str | Sequence[str] = "normal", seed: int = 0, size: int = 64
) -> np.ndarray:
    """The tissue label map of a phantom: index into ``TISSUE_NAMES`` of the tissue filling >50% of each voxel.

    Same shape as ``make_phantom(...).array`` and independent of modality; useful as ground
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
    (``LESION_TISSUES``: the nodule; the mass with its necrotic core; the effusion's fluid);
    all False for ``"normal"``.

    Example:
        >>> bool(phantom_lesion_mask(dim=2, pathologies="nodule", seed=3, size=32).any())
        True
    """
    names = parse_pathologies(pathologies)
    labels = phantom_labels(dim=dim, pathologies=names, seed=seed, size=size)
    lesion_ids = [TISSUE_NAMES.index(t) for p in names for t in LESION_TISSUES.get(p, ())]
    return np.isin(labels, lesion_ids)
