"""Privacy features: a small, body-standardised, pose-normalised map of each scan.

The memorization check compares scans in a space that sees through trivial edits. Every
scan, whatever its size, spacing, orientation or intensity scale, becomes a feature map of
``grid`` pixels per axis (32x32 in 2D, 16x16x16 in 3D) in four steps:

1. **Common orientation and spacing.** The array is permuted/flipped (nibabel
   ``io_orientation``) to a fixed display orientation: 3D ``SPL`` (slice superior, rows
   posterior, columns patient left, the radiological axial view); 2D axial ``PL``, coronal
   ``IL``, sagittal ``IP`` (chosen from the slice normal). It is then resampled to an
   isotropic working grid whose longest physical side has ``work`` pixels (box filter when
   shrinking, linear when growing) and centred in a ``work``-sided square/cube; the padding is
   marked invalid. Oblique tilts are not undone: the rotation envelope of the search covers them.
2. **Body mask.** A threshold 15% of the way from the background (1st percentile) to bright
   tissue (99th percentile) of the lightly smoothed image, noise specks dropped, then every pixel
   with body on both sides along some axis (an axis-wise hull: a lung reaching the outline is
   inside), holes filled.
3. **Intensity standardisation within the body.** ``z = (x - mean_body) / std_body``, clipped to
   ``[-clip, clip]``, and 0 (the body mean) outside the body. Scale and offset edits vanish, and
   the maps are zero-mean, so a cosine of two maps is their NCC.
4. **Pose normalisation.** The map is resampled so that the body's centroid sits at the grid
   centre, its RMS radius is ``body_radius * grid`` pixels and, when the body is clearly
   elongated, its long in-plane axis lies along the nearer grid axis (turns up to 20 degrees).
   Shifts, zooms and small rotations mostly vanish before the search; the search's transform
   envelope (flips, zooms, rotations, shifts) handles what is left, e.g. a crop that cuts the
   body and so moves its centroid. The map is band-limited by a Gaussian of ``smooth`` pixels:
   a sharp map loses several percent of correlation to every resampling.

Alongside each map comes its field of view (1 where the scan's pixels cover the map), so that a
query cropped through the body is compared only where it has data.

A scan with no body (a constant image, an empty slice, a body with uniform intensity) gets an
all-zero map and ``empty=True``; it cannot match anything (its score is 0) and is reported.

Example:
    >>> cfg = FeatureConfig.default(2)
    >>> feats = scan_features([scan], cfg)          # doctest: +SKIP
    >>> feats.maps.shape, feats.fov.shape           # doctest: +SKIP
    ((1, 32, 32), (1, 32, 32))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import axcodes2ornt, io_orientation
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.io.scan import Scan

# Display orientation of the two in-plane axes of a 2D slice, by the world axis of its normal
# (0 = R/L sagittal, 1 = A/P coronal, 2 = S/I axial).
_PLANE_CODES_2D = {0: ("I", "P"), 1: ("I", "L"), 2: ("P", "L")}
_CODES_3D = ("S", "P", "L")
MIN_SIDE = 4  # pixels: below this a scan carries too little to compare
# Body threshold, as a fraction of the way from background to bright tissue: above air and lung
# (CT: about -750 HU for an air-to-bone range), below fat and soft tissue in CT and MR.
BODY_LEVEL = 0.15
ANISOTROPY = 1.2  # second-moment ratio above which a body has a long axis worth aligning
MAX_TURN = 20.0  # degrees: the largest in-plane turn of pose normalisation
# With ``fov_edges``: a map pixel is in the field of view when at least this share of its blur
# lies inside it (about one blur width in from the edge).
FOV_EDGE_WEIGHT = 0.8


@dataclass(frozen=True)
class FeatureConfig:
    """How feature maps are made; stored with the index so queries use the same settings.

    Args:
        spatial_dims: 2 or 3.
        grid: feature map side in pixels (32 for 2D, 16 for 3D by default).
        work: working grid side used for the body mask (64 for 2D, 32 for 3D).
        clip: standardised intensities are clipped to ``[-clip, clip]``.
        body_radius: RMS radius of the body after pose normalisation, as a fraction of ``grid``.
        smooth: Gaussian width (feature pixels) that band-limits the maps.
        pose: ``"isotropic"`` (one scale for the body) or, in 3D, ``"axial"`` (the slice axis
            and the axial plane scaled apart; ``_pose_steps``).
        axial_scale: with ``pose="axial"``, how much larger the slice axis is drawn than an
            isotropic body's would be (a trunk cut by the field of view fills it along z).
        fov_edges: band-limit by normalised convolution inside the field of view and leave out
            of it the band (``FOV_EDGE_WEIGHT``) where the blur reaches past the field of view.
            Without it the blur mirrors the body at a field-of-view edge, so a copy shifted until
            the edge cuts its body differs from its source along the cut (the 3D default;
            ``False`` in indexes written before it, which ``from_dict`` keeps).
    """

    spatial_dims: int
    grid: int
    work: int
    clip: float = 5.0
    body_radius: float = 0.25
    smooth: float = 0.7
    pose: str = "isotropic"
    axial_scale: float = 1.0
    fov_edges: bool = False

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"privacy features: spatial_dims must be 2 or 3; got {self.spatial_dims}")
        if self.pose not in ("isotropic", "axial"):
            raise InputError(f"privacy features: pose must be 'isotropic' or 'axial'; got {self.pose!r}")
        if self.grid < 8 or self.work < self.grid:
            raise InputError(f"privacy features: need 8 <= grid <= work; got grid={self.grid}, work={self.work}")

    @classmethod
    def default(cls, spatial_dims: int) -> FeatureConfig:
        """32x32 maps from a 64-pixel working grid in 2D; 16^3 from 48^3, axial pose, in 3D."""
        if spatial_dims == 2:
            return cls(spatial_dims, 32, 64)
        # 3D: a 48-pixel working grid (a 48^3 scan is not shrunk first, so a 5-voxel shift stays
        # 5 voxels), the slice axis scaled apart from the axial plane, and a larger body in the
        # map: self-test recall 0.60 -> 0.99 on 48^3 phantoms (docs/privacy.md, Measured, 3D).
        # fov_edges: flip+shift+noise copies 0.75 -> see docs/privacy.md (Measured, 3D).
        return cls(spatial_dims, 16, 48, body_radius=0.38, pose="axial", axial_scale=1.5, fov_edges=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        return cls(**d)


def _canonical(scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """Channel-averaged array in the display orientation, and its spacing (mm) per axis."""
    arr = scan.array.mean(axis=0)
    spacing = np.asarray(scan.spacing, dtype=np.float64)
    src = io_orientation(scan.affine)  # per array axis (incl. the 2D normal): world axis, sign
    codes: tuple[str, ...]
    if scan.spatial_dims == 3:
        codes = _CODES_3D
    else:
        codes = _PLANE_CODES_2D[int(src[2, 0])]
        src = src[:2]
    target = axcodes2ornt(codes)  # per output axis: world axis, sign
    perm, flips = [], []
    for world_axis, sign in target:
        (a,) = np.nonzero(src[:, 0] == world_axis)[0]
        perm.append(int(a))
        flips.append(src[a, 1] != sign)
    arr = np.transpose(arr, perm)
    flip_axes = tuple(i for i, f in enumerate(flips) if f)
    if flip_axes:
        arr = np.flip(arr, axis=flip_axes)
    return np.ascontiguousarray(arr, dtype=np.float32), spacing[perm]


def _resize(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Box-filter shrink then linear growth, per axis as needed (torch, 2D and 3D)."""
    x = torch.from_numpy(arr)[None, None]
    shrink = tuple(min(s, n) for s, n in zip(arr.shape, shape))
    if shrink != arr.shape:
        x = F.interpolate(x, size=shrink, mode="area")
    if shrink != shape:
        mode = "bilinear" if arr.ndim == 2 else "trilinear"
        x = F.interpolate(x, size=shape, mode=mode, align_corners=False)
    return x[0, 0].numpy()


def _work_image(scan: Scan, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """The scan on the isotropic working grid, and the mask of pixels inside its field of view."""
    arr, spacing = _canonical(scan)
    extent = np.asarray(arr.shape) * spacing
    step = extent.max() / cfg.work
    shape = tuple(int(max(1, min(cfg.work, round(e / step)))) for e in extent)
    img = _resize(arr, shape)
    out = np.zeros((cfg.work,) * cfg.spatial_dims, np.float32)
    valid = np.zeros(out.shape, bool)
    region = tuple(slice((cfg.work - n) // 2, (cfg.work - n) // 2 + n) for n in shape)
    out[region] = img
    valid[region] = True
    return out, valid


def body_mask(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Body mask over ``valid`` pixels: threshold, specks dropped, axis-wise hull, holes filled.

    Returns an all-False mask for a flat image.
    """
    vals = img[valid]
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
        return np.zeros(img.shape, bool)
    # Threshold a lightly smoothed image (normalised convolution, so the padding does not bleed
    # in; noise at a few percent of the range would otherwise break thin bright outlines) at
    # BODY_LEVEL of the way from the background (1st percentile) to the bright end (99th).
    # Otsu's threshold was tried first: with a third bright class (an MR effusion, contrast)
    # it jumps between "body vs air" and "bright vs the rest" under small edits.
    w = ndimage.gaussian_filter(valid.astype(np.float32), 1.0)
    smooth = ndimage.gaussian_filter(np.where(valid, img, 0.0), 1.0) / np.maximum(w, 1e-6)
    p1, p99 = np.percentile(smooth[valid], [1.0, 99.0])
    if p99 - p1 <= 1e-6 * max(1.0, abs(p1), abs(p99)):
        return np.zeros(img.shape, bool)
    mask = valid & (smooth > p1 + BODY_LEVEL * (p99 - p1))
    labels, n = ndimage.label(mask)
    if n > 1:  # drop specks (noise, not anatomy); keep every real part, even a broken outline
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.nonzero(sizes >= max(4, 0.02 * sizes.max()))[0] + 1
        mask = np.isin(labels, keep)
    # Dark organs that reach the outline at this resolution (a lung, the bowel) are inside the
    # body although they are not enclosed: take every pixel that has body on both sides along
    # some axis (an axis-wise hull, much cheaper than a convex hull and close to it for a trunk).
    hull = mask.copy()
    for axis in range(mask.ndim):
        before = np.logical_or.accumulate(mask, axis=axis)
        after = np.flip(np.logical_or.accumulate(np.flip(mask, axis), axis=axis), axis)
        hull |= before & after
    return ndimage.binary_fill_holes(hull) & valid


def _principal_rotation(offsets: np.ndarray) -> np.ndarray:
    """2x2 rotation turning the body's long in-plane axis to the nearer of the two grid axes.

    Only when the body is clearly elongated (second-moment ratio above ANISOTROPY) and the
    turn is at most MAX_TURN degrees: a round body has no stable axis, and a scan is rarely
    tilted by more; the search's rotation envelope covers what is left.
    """
    cov = np.cov(offsets.T)
    evals, evecs = np.linalg.eigh(cov)
    if evals[0] <= 0 or evals[1] / evals[0] < ANISOTROPY:
        return np.eye(2)
    major = evecs[:, 1]
    angle = np.degrees(np.arctan2(major[0], major[1]))  # from the column axis toward the row axis
    turn = (angle + 45.0) % 90.0 - 45.0  # to the nearer grid axis
    if abs(turn) > MAX_TURN:
        return np.eye(2)
    c, s = np.cos(np.radians(turn)), np.sin(np.radians(turn))
    # Feature offsets (row, col) are mapped onto the body's axes: (0, 1) -> (s, c) = major axis.
    return np.array([[c, s], [-s, c]])


def _pose_steps(offsets: np.ndarray, cfg: FeatureConfig) -> list[float]:
    """Working pixels per feature pixel on each axis, from the body's RMS extent.

    ``isotropic``: one scale from the RMS radius over all axes. ``axial`` (3D): the slice axis
    and the axial plane scaled apart, each to the share of the RMS radius an isotropic body
    has there (1/3 and 2/3 of its square), so that an in-plane crop resized back (an in-plane
    zoom) or a slice-thickness change vanishes like an isotropic zoom does.
    """
    target = cfg.body_radius * cfg.grid
    sq = offsets**2
    if cfg.pose == "axial" and cfg.spatial_dims == 3:
        axial = float(np.sqrt(sq[:, 0].mean() * 3.0))
        plane = float(np.sqrt(sq[:, 1:].sum(axis=1).mean() * 1.5))
        return [max(axial, 1.0) / (target * cfg.axial_scale), max(plane, 1.0) / target, max(plane, 1.0) / target]
    rms = float(np.sqrt(sq.sum(axis=1).mean()))
    return [max(rms, 1.0) / target] * cfg.spatial_dims


def _feature(scan: Scan, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """One scan's feature map and field-of-view map, or None when it has no body to compare."""
    img, valid = _work_image(scan, cfg)
    mask = body_mask(img, valid)
    # A few pixels of "body" are noise, not anatomy: need at least 1% of the field of view.
    if mask.sum() < max(8, 0.01 * valid.sum()):
        return None
    body = img[mask].astype(np.float64)
    mu, sd = body.mean(), body.std()
    if sd <= 1e-6 * max(1.0, abs(mu)):
        return None
    z = np.where(mask, np.clip((img - mu) / sd, -cfg.clip, cfg.clip), 0.0)
    coords = np.argwhere(mask).astype(np.float64)
    centre = coords.mean(axis=0)
    steps = _pose_steps(coords - centre, cfg)  # working pixels per feature pixel, per axis
    # Band-limit the map to ``smooth`` feature pixels (which also anti-aliases the shrink): a
    # sharp map loses several percent of its correlation to every later resampling (a rotated
    # copy, the search's own warps), which would bury copies among look-alike subjects.
    sigma = [max(cfg.smooth * s, (s - 1.0) / 2.0) for s in steps]
    inside = valid.astype(np.float64)
    if cfg.fov_edges:  # normalised convolution: what lies past the field of view is unknown, not mirrored
        inside = ndimage.gaussian_filter(inside, sigma=sigma, mode="constant")
        z = ndimage.gaussian_filter(z * valid, sigma=sigma, mode="constant") / np.maximum(inside, 1e-6)
        inside = inside >= FOV_EDGE_WEIGHT
    else:
        z = ndimage.gaussian_filter(z, sigma=sigma)
    offs = [(np.arange(cfg.grid, dtype=np.float64) - (cfg.grid - 1) / 2.0) * s for s in steps]
    mesh = np.stack(np.meshgrid(*offs, indexing="ij"))
    # In-plane rotation: the last two axes (2D: the slice; 3D SPL: the axial plane).
    rot = np.eye(cfg.spatial_dims)
    rot[-2:, -2:] = _principal_rotation(coords[:, -2:] - centre[-2:])
    points = np.einsum("ij,j...->i...", rot, mesh) + centre.reshape(-1, *([1] * cfg.spatial_dims))
    feat = ndimage.map_coordinates(z, points, order=1, mode="constant", cval=0.0)
    fov = ndimage.map_coordinates(inside.astype(np.float32), points, order=1, mode="constant", cval=0.0)
    return feat.astype(np.float32), (fov > 0.5).astype(np.float32)


def check_scan(scan: Scan, name: str, spatial_dims: int | None = None) -> None:
    """Raise InputError if ``scan`` cannot be featurised (wrong dims, too small, non-finite)."""
    if not isinstance(scan, Scan):
        raise InputError(f"{name}: expected a medsynth Scan; got {type(scan).__name__}")
    if spatial_dims is not None and scan.spatial_dims != spatial_dims:
        raise InputError(
            f"{name}: is {scan.spatial_dims}D but this privacy index is {spatial_dims}D; "
            "2D and 3D scans cannot be compared: use a matching index or data set"
        )
    if min(scan.shape) < MIN_SIDE:
        raise InputError(
            f"{name}: shape {scan.shape} is too small to compare; expected at least {MIN_SIDE} pixels per axis"
        )
    if not np.isfinite(scan.array).all():
        raise InputError(f"{name}: contains NaN or infinite values; expected finite intensities")


@dataclass
class Features:
    """Feature maps of a set of scans.

    Attributes:
        maps: float32 ``(N, grid, grid[, grid])`` body-standardised, pose-normalised maps.
        fov: float32 of the same shape, 1 where the scan's field of view covers the map. A
            search query is compared only over its field of view, so a copy cropped through the
            body still matches its source.
        empty: bool ``(N,)``, True for scans with no body (their map is all zero).
    """

    maps: np.ndarray
    fov: np.ndarray
    empty: np.ndarray

    def __len__(self) -> int:
        return int(self.maps.shape[0])


def scan_features(scans: Sequence[Scan], cfg: FeatureConfig, names: Sequence[str] | None = None) -> Features:
    """Feature maps of ``scans``.

    Args:
        scans: 2D or 3D scans, all of ``cfg.spatial_dims`` dimensions.
        cfg: feature settings.
        names: labels used in error messages (default ``scan[i]``).

    Raises:
        InputError: a scan of the wrong dimensionality, too small or with non-finite values.
    """
    n = len(scans)
    shape = (n,) + (cfg.grid,) * cfg.spatial_dims
    maps, fov, empty = np.zeros(shape, np.float32), np.ones(shape, np.float32), np.zeros(n, bool)
    for i, scan in enumerate(scans):
        check_scan(scan, names[i] if names is not None else f"scan[{i}]", cfg.spatial_dims)
        feat = _feature(scan, cfg)
        if feat is None:
            empty[i] = True
        else:
            maps[i], fov[i] = feat
    return Features(maps, fov, empty)


def display_image(feature: np.ndarray) -> np.ndarray:
    """A 2D view of a feature map for thumbnails: the map itself, or a 3D map's middle slice.

    Feature maps are already in the radiological display orientation (see the module docstring).
    """
    return feature if feature.ndim == 2 else feature[feature.shape[0] // 2]
