"""Signed-distance shapes and procedural noise, in millimetres, shared by anatomy and lesions.

Each distance function returns an approximate signed distance in mm (negative inside). They
broadcast, so an in-plane shape stays ``(1, H, W)`` while a 3D one becomes ``(D, H, W)``.
"""

from __future__ import annotations

import math

import numpy as np

# Everything is rendered in float32: the grid, the distances and the image.
F32 = np.float32

# A set of tapered tubes (segments): start points (S, 3), end points (S, 3), start and end radii (S,).
Tubes = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def occupancy(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft occupancy in [0, 1] from a signed distance: a linear ramp one ``edge`` wide."""
    return np.clip(F32(0.5) - d * F32(1.0 / edge), F32(0.0), F32(1.0))


def superellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, p: float = 2.0) -> np.ndarray:
    """Radial distance to the curve ``|x/a|^p + |y/b|^p = 1`` (an ellipse for p = 2)."""
    if p == 2.0:  # the common case; a fractional power costs ten times more
        rho = np.sqrt((x * F32(1.0 / a)) ** 2 + (y * F32(1.0 / b)) ** 2)
    else:
        rho = (np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p)
    r = np.hypot(x, y)
    return r * (1.0 - 1.0 / np.maximum(rho, 1e-6))


def ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, c: np.ndarray, axes: np.ndarray, rot: np.ndarray
) -> np.ndarray:
    """Radial distance to an ellipsoid with centre ``c``, semi-axes ``axes``, rotation ``rot``."""
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    q = [rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz for i in range(3)]
    rho = np.sqrt((q[0] / axes[0]) ** 2 + (q[1] / axes[1]) ** 2 + (q[2] / axes[2]) ** 2)
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    return r * (1.0 - 1.0 / np.maximum(rho, 1e-6))


def segment_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray
) -> np.ndarray:
    """Distance to the union of tapered tubes from ``a[i]`` (radius ``ra[i]``) to ``b[i]`` (``rb[i]``).

    The segments are evaluated together as an (S, N) array, much faster than a Python loop.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    p = np.stack([np.broadcast_to(v, shape).ravel() for v in (x, y, z)]).astype(F32)  # (3, N)
    a, b = a.astype(F32), b.astype(F32)
    ab = b - a  # (S, 3)
    denom = np.maximum((ab**2).sum(1), 1e-6)[:, None]
    t = np.clip((ab @ p - (ab * a).sum(1)[:, None]) / denom, 0.0, 1.0)  # (S, N)
    d2 = np.zeros_like(t)
    for k in range(3):  # a loop over 3 coordinates, not over segments
        d2 += (p[k][None, :] - (a[:, k : k + 1] + t * ab[:, k : k + 1])) ** 2
    r = ra.astype(F32)[:, None] + t * (rb - ra).astype(F32)[:, None]
    return (np.sqrt(d2) - r).min(0).reshape(shape)


_BLOCK = (8, 32, 32)


def tube_distance(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    tubes: Tubes,
    reach: float,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """``segment_distance`` clamped at ``reach``, evaluated only where a tube can be that close.

    The grid is cut into blocks and each block is tested only against the segments whose
    bounding boxes (grown by ``reach``) meet it: a vessel tree touches few blocks, so a 64^3
    volume costs a fraction of the dense evaluation. ``where`` limits it to selected voxels.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    out = np.full(shape, reach, F32)
    a, b, ra, rb = tubes
    grow = (np.maximum(ra, rb) + reach)[:, None]
    lo, hi = np.minimum(a, b) - grow, np.maximum(a, b) + grow
    xs, ys, zs = (np.broadcast_to(v, shape) for v in (x, y, z))
    # Blocks only pay off in a volume; a 2D slice (one z) or loose points are one block, and the
    # bounding-box test then drops every segment that does not cross the slice.
    steps = _BLOCK if len(shape) == 3 and shape[0] > 1 else shape
    ranges = [range(0, n, st) for n, st in zip(shape, steps, strict=True)]
    for starts in np.ndindex(*[len(r) for r in ranges]):
        block = tuple(slice(r[i], r[i] + st) for r, i, st in zip(ranges, starts, steps, strict=True))
        sel = where[block] if where is not None else None
        if sel is not None and not sel.any():
            continue
        bx, by, bz = (v[block] if sel is None else v[block][sel] for v in (xs, ys, zs))
        blo = np.array([bx.min(), by.min(), bz.min()])
        bhi = np.array([bx.max(), by.max(), bz.max()])
        keep = np.all((lo <= bhi) & (hi >= blo), axis=1)
        if not keep.any():
            continue
        d = np.minimum(segment_distance(bx, by, bz, a[keep], b[keep], ra[keep], rb[keep]), F32(reach))
        if sel is None:
            out[block] = d
        else:
            out[block][sel] = d  # basic slicing gives a view, so this writes into out
    return out


def waves(x: np.ndarray, y: np.ndarray, z: np.ndarray, k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Smooth procedural noise with unit variance: a sum of plane waves, resolution independent."""
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), F32)
    for (kx, ky, kz), ph in zip(k, phase, strict=True):
        out += np.cos(kx * x + ky * y + kz * z + ph)
    return out * F32(math.sqrt(2.0 / len(k)))


def random_waves(rng: np.random.Generator, n: int, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * math.pi / wavelength) * rng.uniform(0.7, 1.4, size=(n, 1))
    return k.astype(F32), rng.uniform(0, 2 * math.pi, n).astype(F32)


def rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
