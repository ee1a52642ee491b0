"""Training examples for the lesion model: a crop around each lesion, and its augmentations.

An example is cut once per connected lesion of a mask (``scipy.ndimage.label``, face
connectivity as everywhere in ``medsynth.lesions``), centred on the lesion's centre of mass, from
the scan in normalised units, and brought to the lesion model's spacing with
``composite.resample_to`` (the same function that brings an inpainted crop back to a
background's grid, so training and insertion see crops made alike). The stored crop is a
*context* larger than the model's crop (``context_size``): a rotation by a few degrees or a
zoom-out then still fills the model's crop with real anatomy instead of padding. Voxels outside
the scan are -1, the value ``Preprocessing.to_model`` gives them (air).

Augmentation, TorchIO style: ``draw_augment`` draws every random number into an
``AugmentParams`` (flips, quarter turns, a small rotation, a zoom of 0.8-1.25, an intensity
scale and shift), and ``augment`` applies it with MONAI's deterministic transforms (``Flip``,
``Rotate90``, one ``Affine`` resample for rotation, zoom and the centre crop together, then
``ScaleIntensity`` and ``ShiftIntensity``). Image and mask go through the same ``Affine`` call as
channels of one tensor, so they cannot drift apart. With ~10 lesions a class these draws are
what the model learns from, so every one is recorded-able (``AugmentParams.as_dict``).

Example:
    >>> image = np.full((1, 40, 40), -0.9, np.float32); mask = np.zeros((40, 40), bool)
    >>> mask[18:22, 18:22] = True; image[0][mask] = 0.0
    >>> [ex] = lesion_examples(image, mask, (1.0, 1.0), pathology="nodule", modality="CT",
    ...                        target_spacing=(1.0, 1.0), crop_size=(16, 16))
    >>> crop, m = augment(ex, draw_augment(np.random.default_rng(0), 2), (16, 16))
    >>> crop.shape, m.shape, bool(m[6:10, 6:10].any())
    ((1, 16, 16), (16, 16), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from monai.transforms import Affine, Flip, Rotate90, ScaleIntensity, ShiftIntensity
from scipy import ndimage as ndi

from medsynth.conditions import group_key, split_pathologies
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.lesions.composite import resample_to
from medsynth.lesions.morphology import label_components

# The context around the crop: a 15 degree rotation needs cos + sin = 1.22 times the crop, a
# zoom-out to 0.8 another 1.25; 1.6 covers both with a little to spare.
CONTEXT_FACTOR = 1.6
MAX_ANGLE_DEG = 15.0  # small rotations on top of the quarter turns
ZOOM_RANGE = (0.8, 1.25)  # drawn log-uniformly, so zooming in and out are equally likely
INTENSITY_SCALE = (0.92, 1.08)  # about 0 of the normalised range (0 HU for the CT window)
INTENSITY_SHIFT = 0.04  # normalised units: +-40 HU on the CT window
OUTSIDE = -1.0  # normalised value of voxels outside the scan (Preprocessing.to_model's air)


@dataclass(frozen=True, eq=False)
class LesionExample:
    """One training lesion: its context crop at the lesion model's spacing, with its labels.

    Args:
        image: ``(C, *context)`` float32 in normalised units, the lesion at the centre.
        mask: ``(*context)`` bool: this lesion only (another lesion nearby is surroundings).
        pathology: the lesion's pathology labels (usually one).
        modality: the scan's modality code.
    """

    image: np.ndarray
    mask: np.ndarray
    pathology: tuple[str, ...]
    modality: str

    @property
    def key(self) -> str:
        """The class name ``nodule/CT`` (for class-balanced batches)."""
        return group_key(self.pathology, self.modality)


def context_size(crop_size: Sequence[int]) -> tuple[int, ...]:
    """The stored context of an example: a cube (square) ``CONTEXT_FACTOR`` times the largest crop side.

    A cube because a quarter turn swaps two axes; even, so the crop's centre is a voxel corner
    of the context as it is of the crop.
    """
    side = 2 * math.ceil(max(int(s) for s in crop_size) * CONTEXT_FACTOR / 2)
    return (side,) * len(crop_size)


def cut_box(
    array: np.ndarray, centre: Sequence[float], shape: Sequence[int], fill: float
) -> tuple[np.ndarray, tuple[int, ...]]:
    """A box of ``shape`` around ``centre`` from a channel-first array, padded with ``fill`` off the image.

    The box's corner is ``round(centre) - shape // 2``, so for even sizes the centre voxel sits
    just past the middle, as MONAI's centre crops put it.

    Returns:
        ``(box, corner)``: ``(C, *shape)`` and the corner's index in ``array`` (may be negative).
    """
    spatial = array.shape[1:]
    corner = tuple(int(round(c)) - int(s) // 2 for c, s in zip(centre, shape, strict=True))
    lo = [max(c, 0) for c in corner]
    hi = [min(c + int(s), n) for c, s, n in zip(corner, shape, spatial)]
    if any(h <= a for a, h in zip(lo, hi)):
        return np.full((array.shape[0], *shape), fill, array.dtype), corner
    inner = array[(slice(None), *(slice(a, h) for a, h in zip(lo, hi)))]
    pad = [(0, 0)] + [(a - c, c + int(s) - h) for a, h, c, s in zip(lo, hi, corner, shape)]
    return np.pad(inner, pad, constant_values=fill), corner


def box_in_voxels(crop_size: Sequence[int], crop_spacing: Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """How many voxels of ``spacing`` span the extent of ``crop_size`` voxels of ``crop_spacing``."""
    return tuple(max(1, round(n * a / b)) for n, a, b in zip(crop_size, crop_spacing, spacing, strict=True))


def lesion_examples(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    pathology: str | Sequence[str],
    modality: str,
    target_spacing: Sequence[float],
    crop_size: Sequence[int],
    margin: int = 3,
    min_voxels: int = 1,
    too_large: Literal["error", "skip"] = "error",
) -> list[LesionExample]:
    """One example per connected lesion of ``mask``.

    Args:
        image: ``(C, *spatial)`` in normalised units (``Preprocessing.normalise``), on the scan's grid.
        mask: lesion label map on the same grid, spatial or ``(1, *spatial)``; nonzero = lesion.
        spacing: the scan's voxel size in mm (array axis order).
        pathology: the lesions' pathology label(s); modality: the scan's modality.
        target_spacing: the lesion model's voxel size in mm.
        crop_size: the lesion model's crop.
        margin: the model's hole margin in target voxels: the lesion and this margin must fit the crop.
        min_voxels: components with fewer voxels (on the scan's grid) are specks, not lesions: skipped.
        too_large: a lesion whose hole does not fit the crop: ``"error"`` or ``"skip"``.

    Raises:
        InputError: mismatched grids, or (with ``too_large="error"``) a lesion larger than the crop.
    """
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask) != 0
    if mask.ndim == image.ndim and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != image.shape[1:] or len(spacing) != mask.ndim:
        raise InputError(
            f"lesion mask of shape {mask.shape} does not fit the ({image.shape}) image with spacing {tuple(spacing)}"
        )
    labels = tuple(split_pathologies(pathology))
    ctx = context_size(crop_size)
    src_box = box_in_voxels(ctx, target_spacing, spacing)
    components, count, sizes = label_components(mask)
    examples: list[LesionExample] = []
    for k in range(1, count + 1):
        if sizes[k - 1] < min_voxels:
            continue
        own = components == k
        centre = ndi.center_of_mass(own)
        box, _ = cut_box(image, centre, src_box, OUTSIDE)
        mbox, _ = cut_box(own[None], centre, src_box, False)
        crop = resample_to(box, spacing, target_spacing, shape=ctx)
        crop_mask = resample_mask(mbox[0], spacing, target_spacing, ctx)
        if not fits_crop(crop_mask, crop_size, margin):
            if too_large == "skip":
                continue
            raise InputError(
                f"a {pathology!r} lesion of {int(sizes[k - 1])} voxels ({_extent(crop_mask, target_spacing)} mm) with a "
                f"{margin}-voxel margin does not fit the lesion crop {list(crop_size)} at {list(target_spacing)} mm: "
                "make crop_size larger, the spacing coarser, or pass too_large='skip'"
            )
        examples.append(LesionExample(crop.astype(np.float32), crop_mask, labels, str(modality).upper()))
    return examples


def resample_mask(
    mask: np.ndarray, from_spacing: Sequence[float], to_spacing: Sequence[float], shape: Sequence[int]
) -> np.ndarray:
    """A lesion mask on another grid (``resample_to``, linear, cut at 0.5) that never vanishes.

    A lesion narrower than about one voxel of the coarser grid falls below 0.5 everywhere; then
    the voxels of highest coverage are kept, and when the interpolation points miss it
    altogether, the voxel holding its centre of mass, so it becomes the smallest lesion that grid
    can show instead of none. Training crops and insertion crops both come through here.
    """
    cover = resample_to(mask.astype(np.float32), from_spacing, to_spacing, shape=shape)
    peak = float(cover.max())
    if peak > 0.0:
        return cover >= min(0.5, peak * (1.0 - 1e-6))
    out = np.zeros(cover.shape, bool)
    if mask.any():
        zoom = np.asarray(cover.shape) / np.asarray(mask.shape)
        centre = (np.asarray(ndi.center_of_mass(mask)) + 0.5) * zoom
        out[tuple(np.minimum(centre.astype(int), np.asarray(cover.shape) - 1))] = True
    return out


def _extent(mask: np.ndarray, spacing: Sequence[float]) -> str:
    box = ndi.find_objects(mask.astype(np.int8))[0]
    return "x".join(f"{(s.stop - s.start) * sp:.0f}" for s, sp in zip(box, spacing))


def fits_crop(mask: np.ndarray, crop_size: Sequence[int], margin: int) -> bool:
    """True when the bounding box of ``mask`` (centred) plus ``margin`` on each side fits in ``crop_size``."""
    box = ndi.find_objects(mask.astype(np.int8))[0]
    return all((s.stop - s.start) + 2 * margin + 2 <= n for s, n in zip(box, crop_size))


def examples_from_scan(
    scan: Scan,
    mask: np.ndarray,
    preprocessing: Preprocessing,
    *,
    target_spacing: Sequence[float],
    crop_size: Sequence[int],
    pathology: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> list[LesionExample]:
    """``lesion_examples`` of a ``Scan`` in modality units: normalised with ``preprocessing`` first.

    ``pathology`` defaults to the scan's ``metadata["pathology"]``; other keyword arguments go to
    ``lesion_examples``.
    """
    if pathology is None:
        pathology = scan.metadata.get("pathology")
        if not pathology:
            raise InputError("examples_from_scan: the scan has no metadata['pathology']; pass pathology=")
    image = preprocessing.normalise(torch.from_numpy(scan.array), scan.modality).numpy()
    return lesion_examples(
        image,
        mask,
        scan.spacing,
        pathology=pathology,
        modality=scan.modality,
        target_spacing=target_spacing,
        crop_size=crop_size,
        **kwargs,
    )


# -- augmentation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of one augmentation; ``augment`` applies it.

    Args:
        flips: spatial axes to flip (first).
        quarter_turns: rotations by 90 degrees (then), in the plane ``turn_axes``.
        turn_axes: the two spatial axes of the quarter turns.
        angles: the small rotation in radians (MONAI ``Affine.rotate_params``: one angle in 2D,
            three in 3D).
        zoom: > 1 enlarges the content (the lesion and its surroundings alike).
        scale, shift: intensity ``x * scale + shift`` in normalised units, image only.
    """

    flips: tuple[int, ...] = ()
    quarter_turns: int = 0
    turn_axes: tuple[int, int] = (0, 1)
    angles: tuple[float, ...] = ()
    zoom: float = 1.0
    scale: float = 1.0
    shift: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the draw."""
        return asdict(self)


def draw_augment(rng: np.random.Generator, spatial_dims: int) -> AugmentParams:
    """Draw one ``AugmentParams`` from ``rng`` (the only source of randomness)."""
    flips = tuple(int(a) for a in np.flatnonzero(rng.random(spatial_dims) < 0.5))
    turns = int(rng.integers(4))
    plane = [(0, 1), (0, 2), (1, 2)][int(rng.integers(3))] if spatial_dims == 3 else (0, 1)
    n_angles = 1 if spatial_dims == 2 else 3
    angles = tuple(float(a) for a in rng.uniform(-1.0, 1.0, n_angles) * math.radians(MAX_ANGLE_DEG))
    zoom = float(math.exp(rng.uniform(math.log(ZOOM_RANGE[0]), math.log(ZOOM_RANGE[1]))))
    scale = float(rng.uniform(*INTENSITY_SCALE))
    shift = float(rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT))
    return AugmentParams(flips, turns, plane, angles, zoom, scale, shift)


def augment(example: LesionExample, params: AugmentParams, crop_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``params`` to an example and centre-crop it to ``crop_size``.

    ``AugmentParams()`` (the identity) gives the plain centre crop.

    Returns:
        ``(image, mask)``: ``(C, *crop_size)`` float32 and ``(*crop_size)`` bool.
    """
    dims = example.mask.ndim
    c = example.image.shape[0]
    # Image and mask as channels of one tensor: every geometric step moves them together.
    x = torch.from_numpy(np.concatenate([example.image, example.mask[None].astype(np.float32)]))
    if params.flips:
        x = Flip(spatial_axis=list(params.flips))(x)
    if params.quarter_turns % 4:
        x = Rotate90(k=params.quarter_turns, spatial_axes=params.turn_axes)(x)
    angles: float | tuple[float, ...] = (params.angles[0] if dims == 2 else params.angles) if params.angles else 0.0
    # MONAI scales the sampling grid: a grid scale of 1/zoom shows the content zoom times larger.
    affine = Affine(
        rotate_params=angles,
        scale_params=(1.0 / params.zoom,) * dims,
        spatial_size=tuple(int(s) for s in crop_size),
        mode="bilinear",
        padding_mode="border",
        image_only=True,
    )
    out = torch.as_tensor(affine(x)).float()
    image = out[:c]
    if params.scale != 1.0:
        image = torch.as_tensor(ScaleIntensity(minv=None, maxv=None, factor=params.scale - 1.0)(image))
    if params.shift:
        image = torch.as_tensor(ShiftIntensity(offset=params.shift)(image))
    image_np = np.asarray(torch.as_tensor(image).numpy(), np.float32)
    return image_np, out[c].numpy() >= 0.5
