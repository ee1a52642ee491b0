"""Where a lesion may go, found from the scan itself: the body, the lungs, an intensity range.

Every mask here is boolean on the scan's spatial grid (no channel axis). The first channel of
``scan.array`` is the image that is thresholded.

A region is named by the user in one of three forms (``resolve_region``):

* ``"lungs"`` (or ``"body"``): found from the scan (``lung_mask``, ``body_mask``);
* ``{"mask": array}``: nonzero voxels of a label map on the scan's grid;
* ``{"intensity": [lo, hi]}``: voxels with ``lo <= value <= hi`` inside the body.

Example:
    >>> from medsynth.data.phantoms import make_phantom
    >>> scan = make_phantom(dim=2, modality="CT", seed=1)
    >>> region = resolve_region(scan, "lungs")
    >>> region.name, bool(region.mask.any()), bool((region.mask <= region.body).all())
    ('lungs', True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lesions.morphology import label_components, largest_component

RegionSpec = str | Mapping[str, Any]

CT_BODY_HU = -500.0  # soft tissue, fat and bone are above; air and lung parenchyma below
CT_AIR_HU = -400.0  # about the 50% partial-volume level between lung (-860) and soft tissue
# A lung candidate must be at least this fraction of the largest candidate, so that noise
# specks and gas bubbles never win the "furthest lateral" test below.
MIN_LUNG_FRACTION = 0.1


@dataclass(frozen=True, eq=False)
class Region:
    """A resolved placement region: where the lesion may lie, and the body it must stay inside.

    Args:
        name: how the user named it, for messages (``"lungs"``, ``"mask"``, ``"intensity [lo, hi]"``).
        mask: boolean, the scan's spatial shape; the lesion must lie inside it.
        body: boolean, same shape; the lesion's blend margin must lie inside it.
        spacing: voxel size in mm, for messages in mm; None when unknown.
    """

    name: str
    mask: np.ndarray
    body: np.ndarray
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mask.shape != self.body.shape:
            raise ValueError(f"Region {self.name!r}: mask shape {self.mask.shape} != body shape {self.body.shape}")
        object.__setattr__(self, "mask", np.asarray(self.mask, bool))
        object.__setattr__(self, "body", np.asarray(self.body, bool))


def _image(scan: Scan) -> np.ndarray:
    return scan.array[0]


def _axial_axis(scan: Scan) -> int:
    """The spatial array axis closest to the patient's superior direction (RAS z): the slice axis of an axial scan."""
    return int(np.argmax(np.abs(scan.affine[2, : scan.spatial_dims])))


def _fill_holes(mask: np.ndarray, axial_axis: int) -> np.ndarray:
    """Holes filled in 3D and, for a volume, in every axial slice as well.

    The 3D fill alone leaves the lungs open where the trachea or a lung apex reaches the edge of
    the volume (a hole that touches the border is background to ``binary_fill_holes``); in an
    axial slice the chest wall encloses them.
    """
    filled = ndi.binary_fill_holes(mask)
    if mask.ndim == 3:
        moved = np.moveaxis(filled, axial_axis, 0)  # a view: filling it fills ``filled``
        for k in range(moved.shape[0]):
            moved[k] = ndi.binary_fill_holes(moved[k])
    return filled


def _soft_tissue_threshold(image: np.ndarray) -> float:
    """The intensity above which a non-CT voxel is tissue rather than air.

    Why multi-Otsu (three classes) and not Otsu: a T2-weighted image has three groups, air with
    lung and flow voids, muscle, and fat with fluid; a two-class Otsu splits muscle from fat and
    cuts the chest wall out of the body. The lowest of the three-class thresholds separates air
    from all tissue. Images with too few distinct values for three classes fall back to Otsu.
    """
    try:
        return float(threshold_multiotsu(image, classes=3)[0])
    except ValueError:
        return float(threshold_otsu(image))


def _body_threshold(scan: Scan) -> float:
    return CT_BODY_HU if scan.modality == "CT" else _soft_tissue_threshold(_image(scan))


def body_mask(scan: Scan) -> np.ndarray:
    """The patient's body: tissue above a threshold, its largest component, holes filled.

    The threshold is -500 HU for CT and, for MR and other modalities, the lowest three-class
    Otsu threshold of the image (see ``_soft_tissue_threshold``). The lungs and other air
    inside the body are holes and so are part of the body.
    """
    tissue = _image(scan) > _body_threshold(scan)
    return _fill_holes(largest_component(tissue), _axial_axis(scan))


def _lateral_reach(
    labels: np.ndarray, label: int, box: tuple[slice, ...], x_of: np.ndarray, x0: float
) -> tuple[float, float]:
    """How far component ``label`` reaches to the patient's right and left of ``x0`` (mm)."""
    idx = np.argwhere(labels[box] == label) + [s.start for s in box]
    x = idx @ x_of - x0
    return float(x.max()), float(-x.min())


def lung_mask(scan: Scan, *, erode: int = 1, body: np.ndarray | None = None) -> np.ndarray:
    """The lungs of a chest CT or MR, found from the image.

    Dark voxels (CT: below -400 HU; MR: below the body's threshold) inside the body that are
    not connected to the air outside it; of those components (at least a tenth of the largest
    one), the lung on each side is the one that reaches furthest from the body's mid-sagittal
    plane. Why not simply the two largest: in a T2 slice through the heart the blood pool is a
    flow void as dark as lung and can be larger than one lung; the lungs, not the heart, lie
    against the lateral chest wall. One component reaching furthest on both sides (lungs joined
    by the trachea) is the whole answer.

    Args:
        scan: a chest CT (Hounsfield units) or MR.
        erode: voxels eroded from the result, so that a lesion inside it does not lie on the
            partial-volume voxels of the lung's wall. 0 gives the segmentation itself.
        body: ``body_mask(scan)`` when the caller has it already.

    Returns:
        Boolean mask on the scan's spatial grid; empty when no lung is found.
    """
    if scan.modality not in ("CT", "MR"):
        raise InputError(
            f"region 'lungs' is found only in CT and MR; this scan is {scan.modality}: "
            "give the region as {'mask': array} or {'intensity': [lo, hi]}"
        )
    body = body_mask(scan) if body is None else body
    dark = _image(scan) < (CT_AIR_HU if scan.modality == "CT" else _body_threshold(scan))
    labels, count, sizes = label_components(dark)
    outside = np.unique(labels[~body])  # components that touch the air around the patient
    sizes[outside[outside > 0] - 1] = 0
    if count == 0 or sizes.max() == 0:
        return np.zeros(body.shape, bool)
    candidates = np.flatnonzero(sizes >= MIN_LUNG_FRACTION * sizes.max()) + 1
    dims = scan.spatial_dims
    x_of = scan.affine[0, :dims]  # patient x (right-left) per index step
    if np.abs(x_of).max() < 1e-6:  # a sagittal slice: no left and right, keep the two largest
        chosen = set((candidates[np.argsort(-sizes[candidates - 1], kind="stable")][:2]).tolist())
    else:
        x0 = float(np.asarray(ndi.center_of_mass(body)) @ x_of)
        boxes = ndi.find_objects(labels)
        reach = np.array([_lateral_reach(labels, int(c), boxes[c - 1], x_of, x0) for c in candidates])
        chosen = {int(candidates[np.argmax(reach[:, 0])]), int(candidates[np.argmax(reach[:, 1])])}
    lungs = np.isin(labels, sorted(chosen))
    return ndi.binary_erosion(lungs, iterations=erode) if erode > 0 else lungs


def intensity_region(scan: Scan, lo: float, hi: float, *, body: np.ndarray | None = None) -> np.ndarray:
    """Voxels with ``lo <= value <= hi`` (modality units: HU for CT) inside the body (``body_mask`` unless given)."""
    image = _image(scan)
    return (image >= lo) & (image <= hi) & (body_mask(scan) if body is None else body)


# name -> (scan, body) -> mask; the body is found once per resolve_region
NAMED_REGIONS: dict[str, Callable[[Scan, np.ndarray], np.ndarray]] = {
    "lungs": lambda scan, body: lung_mask(scan, body=body),
    "body": lambda scan, body: body,
}


def _mask_spec(scan: Scan, value: Any, body: np.ndarray) -> tuple[str, np.ndarray]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "shape"):
        raise InputError(
            f"region {{'mask': {value!r}}}: expected an array on the scan's grid; "
            "read a mask file first (medsynth.io.read_scan) and pass its array"
        )
    mask = np.asarray(value)
    if mask.ndim == scan.spatial_dims + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != scan.shape:
        raise InputError(
            f"region {{'mask': array}}: the mask's shape {tuple(mask.shape)} is not the scan's grid {scan.shape}; "
            "resample the mask to the scan first"
        )
    return "mask", mask != 0


def _intensity_spec(scan: Scan, value: Any, body: np.ndarray) -> tuple[str, np.ndarray]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    try:
        lo, hi = (float(v) for v in value) if ok else (np.nan, np.nan)
    except (TypeError, ValueError):
        lo, hi = np.nan, np.nan
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise InputError(f"region {{'intensity': {value!r}}}: expected [lo, hi], two numbers with lo <= hi")
    return f"intensity [{lo:g}, {hi:g}]", intensity_region(scan, lo, hi, body=body)


# kind -> (scan, value, body) -> (name for messages, mask)
REGION_KINDS: dict[str, Callable[[Scan, Any, np.ndarray], tuple[str, np.ndarray]]] = {
    "mask": _mask_spec,
    "intensity": _intensity_spec,
}

_EXPECTED = (
    f"expected one of {', '.join(repr(n) for n in NAMED_REGIONS)}, {{'mask': array}} or {{'intensity': [lo, hi]}}"
)


def resolve_region(scan: Scan, spec: RegionSpec, *, what: str | None = None) -> Region:
    """The region named by ``spec`` in ``scan``, with the scan's body.

    Args:
        scan: the background the lesion goes into.
        spec: ``"lungs"``, ``"body"``, ``{"mask": array}`` or ``{"intensity": [lo, hi]}``.
        what: how to name the scan in messages (a file, a dataset row); ``repr(scan)`` by default.

    Raises:
        InputError: the spec is unknown or malformed, or the region is empty in this scan.
    """
    what = what or repr(scan)
    known_name = isinstance(spec, str) and spec in NAMED_REGIONS
    known_kind = isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in REGION_KINDS
    if not (known_name or known_kind):
        raise InputError(f"region {spec!r} is not known; {_EXPECTED}")
    body = body_mask(scan)
    if isinstance(spec, str):
        name, mask = spec, NAMED_REGIONS[spec](scan, body)
    else:
        kind, value = next(iter(spec.items()))
        name, mask = REGION_KINDS[kind](scan, value, body)
    if not mask.any():
        raise InputError(
            f"region {name!r} is empty in {what}: no voxel qualifies; check the scan's modality and units "
            "(CT in HU) or name the region with {'mask': array}"
        )
    return Region(name, mask, body, scan.spacing)
