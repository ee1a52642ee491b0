"""Lesion mask proposals: a training lesion reshaped, or a lobulated ellipsoid, at a requested size.

TorchIO style: ``draw_mask_params`` draws every random number (which bank mask, the rotation,
the generator's shape, the elastic control points) into a frozen ``MaskParams`` that a
manifest can record; ``render_mask`` applies it deterministically on the target spacing.
``propose_mask`` does both.

How a mask is rendered: the source (a bank mask, as a signed distance field, or the
generator's implicit function) gives a continuous "inside-ness" over its own coordinates; each
target voxel centre is mapped back through the elastic displacement, the rotation and the
scale into the source and sampled; the voxels of highest inside-ness are kept, exactly as many
as a sphere (3D) or circle (2D) of the requested diameter holds, so the size is right even a
few voxels across; the largest component is kept and cropped with a 1-voxel border.

Example:
    >>> rng = np.random.default_rng(0)
    >>> mask = propose_mask(rng, spacing=(1.0, 1.0), diameter_mm=12.0, spatial_dims=2)
    >>> round(diameter_of(mask, (1.0, 1.0)))
    12
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from medsynth.errors import InputError
from medsynth.lesions.morphology import (
    equivalent_count,
    equivalent_diameter,
    label_components,
    largest_component,
    tight_crop,
)

ELASTIC_GRID = 5  # control points per axis over the crop: a few bumps per lesion, no folds
ELASTIC_STD = 0.04  # control-point displacement, as a fraction of the diameter: mild
ELASTIC_CLIP = 2.5  # standard deviations; a rare large draw would tear a small lesion apart
AXIS_RATIO = (0.6, 1.0)  # generator: each semi-axis relative to the first
LOBE_ORDERS = (2, 3, 4)  # generator: low-frequency radial lobulation, cos(k * angle)
LOBE_AMPLITUDE = 0.18  # the order-k lobe's amplitude is uniform in [0, LOBE_AMPLITUDE / (k - 1)]


def diameter_of(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Equivalent-sphere (3D) or equivalent-circle (2D) diameter of ``mask`` in mm.

    Example:
        >>> diameter_of(np.ones((2, 2), bool), (1.0, 1.0))  # 4 mm^2 -> 2.26 mm
        2.256758334191025
    """
    return equivalent_diameter(int(np.count_nonzero(mask)), tuple(float(s) for s in spacing))


def _spacing(spacing: Sequence[float], spatial_dims: int, what: str) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != spatial_dims or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"{what}: spacing {spacing!r} must be {spatial_dims} positive numbers (mm per voxel)")
    return sp


@dataclass(frozen=True, eq=False)
class MaskBank:
    """Binary lesion masks from training data, each a tight crop around one connected lesion.

    Args:
        masks: boolean crops, each one face-connected component with a 1-voxel border.
        spacings: the voxel size in mm of each crop, in array axis order.

    Example:
        >>> label_map = np.zeros((20, 20), np.uint8); label_map[2:5, 2:6] = 1; label_map[10:15, 12:14] = 1
        >>> bank = MaskBank.from_masks([label_map], [(0.7, 0.7)])
        >>> len(bank), bank.masks[0].shape
        (2, (5, 6))
    """

    masks: tuple[np.ndarray, ...]
    spacings: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if not self.masks:
            raise InputError("MaskBank: no lesion masks; give at least one label map with a nonzero voxel")
        if len(self.masks) != len(self.spacings):
            raise InputError(f"MaskBank: {len(self.masks)} masks but {len(self.spacings)} spacings; give one each")
        dims = {m.ndim for m in self.masks}
        if len(dims) != 1 or not dims <= {2, 3}:
            raise InputError(f"MaskBank: masks must all be 2D or all 3D; got dimensions {sorted(dims)}")
        for i, (m, sp) in enumerate(zip(self.masks, self.spacings, strict=True)):
            _spacing(sp, m.ndim, f"MaskBank mask {i}")
            if not m.any():
                raise InputError(f"MaskBank: mask {i} is empty")

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.masks[0].ndim

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_masks(cls, masks: Iterable[np.ndarray], spacings: Iterable[Sequence[float]]) -> MaskBank:
        """Split label maps (nonzero = lesion) into one bank mask per connected lesion.

        Args:
            masks: label maps, spatial (``(H, W)``, ``(D, H, W)``) or with one leading channel.
            spacings: each map's voxel size in mm, one value per spatial axis.
        """
        crops: list[np.ndarray] = []
        crop_spacings: list[tuple[float, ...]] = []
        for i, (label_map, spacing) in enumerate(zip(masks, spacings, strict=True)):
            arr = np.asarray(label_map)
            sp = tuple(float(s) for s in spacing)
            if arr.ndim == len(sp) + 1 and arr.shape[0] == 1:
                arr = arr[0]
            sp = _spacing(sp, arr.ndim, f"MaskBank.from_masks mask {i}")
            labels, _, _ = label_components(arr != 0)
            for k, box in enumerate(ndi.find_objects(labels), start=1):
                crops.append(np.pad(labels[box] == k, 1))
                crop_spacings.append(sp)
        if not crops:
            raise InputError("MaskBank.from_masks: the masks hold no lesion (every voxel is 0)")
        return cls(tuple(crops), tuple(crop_spacings))


@dataclass(frozen=True)
class MaskParams:
    """Every random choice of one mask proposal; ``render_mask`` turns it into a mask.

    Args:
        spatial_dims: 2 or 3.
        rotation: the ``spatial_dims x spatial_dims`` rotation matrix, source frame -> lesion frame.
        bank_index: which ``MaskBank`` mask is the source; None for the generator.
        axes: generator only: the ellipsoid's semi-axes relative to the first.
        lobes: generator only: ``(amplitude, phase)`` of each order in ``LOBE_ORDERS``.
        elastic: control-point displacements as fractions of the diameter, shape
            ``(spatial_dims,) + (ELASTIC_GRID,) * spatial_dims`` flattened; empty: no deformation.
    """

    spatial_dims: int
    rotation: tuple[tuple[float, ...], ...]
    bank_index: int | None = None
    axes: tuple[float, ...] = ()
    lobes: tuple[tuple[float, float], ...] = ()
    elastic: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the draw."""
        return dataclasses.asdict(self)


def _random_rotation(rng: np.random.Generator, spatial_dims: int) -> np.ndarray:
    if spatial_dims == 2:
        a = rng.uniform(0.0, 2.0 * np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    # A normalised 4D Gaussian is a uniform unit quaternion, hence a uniform rotation; drawn here
    # because Rotation.random's generator argument changed name across the scipy versions we support.
    return Rotation.from_quat(rng.standard_normal(4)).as_matrix()


def draw_mask_params(
    rng: np.random.Generator, *, spatial_dims: int, bank: MaskBank | None = None, elastic: bool = True
) -> MaskParams:
    """Draw one proposal's random parameters from ``rng`` (and nothing else), in a fixed order."""
    if spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims={spatial_dims!r}: lesion masks are 2D or 3D")
    if bank is not None and bank.spatial_dims != spatial_dims:
        raise InputError(f"the mask bank is {bank.spatial_dims}D but a {spatial_dims}D lesion was asked for")
    index = None if bank is None else int(rng.integers(len(bank)))
    rotation = _random_rotation(rng, spatial_dims)
    axes: tuple[float, ...] = ()
    lobes: tuple[tuple[float, float], ...] = ()
    if bank is None:
        axes = (1.0, *(float(v) for v in rng.uniform(*AXIS_RATIO, size=spatial_dims - 1)))
        lobes = tuple(
            (float(rng.uniform(0.0, LOBE_AMPLITUDE / (k - 1))), float(rng.uniform(0.0, 2.0 * np.pi)))
            for k in LOBE_ORDERS
        )
    displacement: tuple[float, ...] = ()
    if elastic:
        grid = rng.standard_normal((spatial_dims,) + (ELASTIC_GRID,) * spatial_dims)
        displacement = tuple(float(v) for v in (np.clip(grid, -ELASTIC_CLIP, ELASTIC_CLIP) * ELASTIC_STD).ravel())
    return MaskParams(
        spatial_dims=spatial_dims,
        rotation=tuple(tuple(float(v) for v in row) for row in rotation),
        bank_index=index,
        axes=axes,
        lobes=lobes,
        elastic=displacement,
    )


class _Source(Protocol):
    """A shape in its own coordinates (``units``: mm for a bank mask, semi-axes for the generator)."""

    diameter: float  # equivalent diameter, in source units

    def field(self, q: np.ndarray) -> np.ndarray:
        """Inside-ness at points ``q`` of shape ``(n, dims)``: larger is deeper inside."""
        ...

    def extent(self, rotation: np.ndarray) -> np.ndarray:
        """Half-extent of the shape along each axis of the lesion frame, after ``rotation``."""
        ...


class _BankSource:
    """A bank mask as a signed distance field (mm), centred on its centroid.

    A distance field rather than the binary mask: its level sets are the mask grown or shrunk,
    so keeping the top voxels gives a faithful shape at any scale.
    """

    def __init__(self, mask: np.ndarray, spacing: tuple[float, ...]) -> None:
        padded = np.pad(mask, 2)
        self.spacing = np.asarray(spacing)
        self.sdf = ndi.distance_transform_edt(padded, sampling=spacing) - ndi.distance_transform_edt(
            ~padded, sampling=spacing
        )
        self.centre = np.asarray(ndi.center_of_mass(padded))
        self.points = (np.argwhere(padded) - self.centre) * self.spacing
        self.diameter = diameter_of(mask, spacing)

    def extent(self, rotation: np.ndarray) -> np.ndarray:
        # voxel centres, plus half a voxel's diagonal for the voxels' own extent
        return np.abs(self.points @ rotation.T).max(axis=0) + float(np.linalg.norm(self.spacing)) / 2.0

    def field(self, q: np.ndarray) -> np.ndarray:
        coords = np.ascontiguousarray((self.centre + q / self.spacing).T)
        return ndi.map_coordinates(self.sdf, coords, order=1, mode="constant", cval=float(self.sdf.min()))


class _LobulatedSource:
    """An ellipse/ellipsoid with semi-axes ``axes`` and a low-frequency radial lobulation.

    The lobe of order k is ``a_k * Re(exp(-i k phi_k) (u_0 + i u_1)^k)`` for the unit direction u:
    in 2D that is ``a_k cos(k (angle - phi_k))``; in 3D it fades towards the poles of axis 2,
    so it stays smooth there (and the random rotation hides which axis that is).
    """

    def __init__(self, axes: tuple[float, ...], lobes: tuple[tuple[float, float], ...]) -> None:
        self.axes = np.asarray(axes)
        self.lobes = lobes
        self.reach = 1.0 + sum(a for a, _ in lobes)  # the largest radial factor
        self.diameter = 2.0 * float(np.prod(self.axes) ** (1.0 / len(axes)))

    def extent(self, rotation: np.ndarray) -> np.ndarray:
        # the support function of the rotated ellipsoid, grown by the largest lobe
        return self.reach * np.sqrt(((rotation * self.axes) ** 2).sum(axis=1))

    def field(self, q: np.ndarray) -> np.ndarray:
        e = q / self.axes
        rho = np.linalg.norm(e, axis=1)
        u = e / np.maximum(rho, 1e-12)[:, None]
        planar = u[:, 0] + 1j * u[:, 1]
        lobes = zip(self.lobes, LOBE_ORDERS, strict=True)
        radial = 1.0 + sum(a * np.real(np.exp(-1j * k * phi) * planar**k) for (a, phi), k in lobes)
        return radial - rho


def _displacement(params: MaskParams, shape: tuple[int, ...], diameter_mm: float) -> np.ndarray:
    """Elastic displacement (mm) at every voxel of the crop, ``(n_voxels, dims)``.

    A cubic spline through a few control points spread over the crop, as TorchIO's
    RandomElasticDeformation, rather than filtered per-voxel noise: the whole field is the few
    numbers recorded in ``params``. A tensor-product spline is separable, so it is evaluated as
    one small matrix per axis (each control point's 1D spline, sampled at the voxels) instead of
    ``map_coordinates`` over every voxel, which costs 4**dims times more.
    """
    dims = params.spatial_dims
    field = np.asarray(params.elastic).reshape((dims,) + (ELASTIC_GRID,) * dims) * diameter_mm
    unit = np.eye(ELASTIC_GRID)
    for axis, n in enumerate(shape):
        at = np.linspace(0.0, ELASTIC_GRID - 1.0, n)[None]
        basis = np.stack([ndi.map_coordinates(u, at, order=3, mode="nearest") for u in unit], axis=1)  # (n, grid)
        field = np.moveaxis(np.tensordot(field, basis, axes=([axis + 1], [1])), -1, axis + 1)
    return field.reshape(dims, -1).T


def render_mask(
    params: MaskParams, *, spacing: Sequence[float], diameter_mm: float, bank: MaskBank | None = None
) -> np.ndarray:
    """The mask that ``params`` describes, at ``diameter_mm`` on a grid of ``spacing`` mm.

    Returns:
        A boolean crop: one face-connected, non-empty component with a 1-voxel border.
    """
    dims = params.spatial_dims
    sp = np.asarray(_spacing(spacing, dims, "render_mask"))
    if not (math.isfinite(diameter_mm) and diameter_mm > 0):
        raise InputError(f"diameter_mm={diameter_mm!r}: expected a positive size in mm")
    source: _Source
    if params.bank_index is None:
        source = _LobulatedSource(params.axes, params.lobes)
    else:
        if bank is None or not 0 <= params.bank_index < len(bank):
            raise InputError(f"MaskParams.bank_index={params.bank_index}: render_mask needs the bank it was drawn from")
        source = _BankSource(bank.masks[params.bank_index], bank.spacings[params.bank_index])
    rotation = np.asarray(params.rotation)
    scale = diameter_mm / source.diameter  # mm per source unit
    max_shift = 1.5 * float(np.abs(params.elastic).max(initial=0.0)) * diameter_mm  # cubic splines overshoot a little
    half_mm = scale * source.extent(rotation) + max_shift + 2.0 * sp.max()
    shape = tuple(2 * math.ceil(h / s) + 1 for h, s in zip(half_mm, sp, strict=True))
    half = (np.asarray(shape) - 1) / 2.0 * sp
    points = np.indices(shape).reshape(dims, -1).T * sp - half  # voxel centres, mm from the crop's centre
    if params.elastic:
        points = points - _displacement(params, shape, diameter_mm)
    inside = source.field(points @ rotation / scale).reshape(shape)  # row vectors: R^T p
    keep = max(1, round(equivalent_count(diameter_mm, tuple(sp))))
    return tight_crop(_top_connected(inside, keep), border=1)


def _top_connected(inside: np.ndarray, keep: int) -> np.ndarray:
    """About ``keep`` voxels of highest ``inside``, as one face-connected component.

    The top ``keep`` voxels can fall apart where a shape is thinner than a voxel; then the
    largest piece grows, by its neighbours of highest inside-ness, back to ``keep`` voxels.
    """
    mask = np.zeros(inside.shape, bool)
    mask.flat[np.argsort(-inside, axis=None, kind="stable")[:keep]] = True
    mask = largest_component(mask)
    while (deficit := keep - int(mask.sum())) > 0:
        ring = ndi.binary_dilation(mask) & ~mask
        if not ring.any():
            break
        grow = np.argsort(-np.where(ring, inside, -np.inf), axis=None, kind="stable")[: min(deficit, int(ring.sum()))]
        mask.flat[grow] = True
    return mask


def propose_mask(
    rng: np.random.Generator,
    *,
    spacing: Sequence[float],
    diameter_mm: float,
    spatial_dims: int,
    bank: MaskBank | None = None,
    elastic: bool = True,
) -> np.ndarray:
    """A lesion mask of ``diameter_mm`` (equivalent diameter) on a grid of ``spacing`` mm.

    From a random ``bank`` mask (randomly rotated, scaled, elastically deformed), or without a
    bank from the lobulated-ellipsoid generator. To record what was drawn, call
    ``draw_mask_params`` and ``render_mask`` instead; this is exactly their composition.

    Args:
        rng: the only source of randomness.
        spacing: target voxel size in mm, one per spatial axis.
        diameter_mm: requested equivalent-sphere (3D) / equivalent-circle (2D) diameter.
        spatial_dims: 2 or 3.
        bank: training lesion masks; None uses the generator.
        elastic: apply a mild elastic deformation.

    Returns:
        A boolean crop holding one face-connected, non-empty component, with a 1-voxel border.
    """
    params = draw_mask_params(rng, spatial_dims=spatial_dims, bank=bank, elastic=elastic)
    return render_mask(params, spacing=spacing, diameter_mm=diameter_mm, bank=bank)
