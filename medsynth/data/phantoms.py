"""Built-in chest phantoms: procedural CT and MR scans of a thorax, with four pathology classes.

They are the embedded default dataset of the demo, the tests and the benchmarks, so they are
built to look like medicine: a body outline with subcutaneous fat and a muscular chest wall,
ribs, sternum, two lungs with pulmonary vessels, a mediastinum holding the heart, the aorta, the
pulmonary trunk, the trachea and the oesophagus, the spine with discs and a spinal canal, and
below the diaphragm the liver and upper abdomen.

How a phantom is made (TorchIO style: random parameters first, then a deterministic render):

1. ``_Subject`` draws a subject's anatomy from the subject seed (sizes, positions, a few degrees
   of rotation, lung shape, vessel tree). It does not depend on modality, size or pathology, so
   the same subject seed gives the same body in CT and MR, at 64 or 256, normal or diseased.
2. Each pathology draws its lesion from ``(seed, pathology, dim)`` alone, so adding a second
   pathology does not move the first one.
3. Every structure is a signed-distance function of patient coordinates in millimetres; the
   renderer evaluates them on the voxel grid (or on a few candidate points, when a lesion is
   placed) and paints tissues back to front with a soft edge one voxel wide, which gives
   partial-volume edges at any resolution.
4. Modality-specific intensities (CT in HU; MR T2-weighted, fluid bright, scanner units) and
   noise (correlated Gaussian for CT; Rician with a smooth multiplicative bias field for MR)
   come last; the noise depends on the seed, not on the pathology, so a diseased phantom minus
   its normal twin is exactly the lesion.

Geometry follows ``medsynth.io.scan``: the field of view is 350 mm, spacing ``350/size`` mm on
every axis; rows run posterior (-y), columns to the patient's left (-x) (radiological display);
3D axis 0 runs superior (+z). A 2D phantom is the axial slice of its subject at a
subject-specific level through the heart and lower lungs; every lesion of a 2D phantom is centred
within a third of its radius of that slice, so it is always visible.

Example:
    >>> scan = make_phantom(dim=2, pathologies="nodule", modality="CT", seed=3)
    >>> scan.shape, scan.orientation, scan.metadata["pathology"]
    ((64, 64), 'PL', 'nodule')
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.io.atomic import atomic_write_text
from medsynth.io.scan import Scan
from medsynth.seeding import derive_seed, numpy_rng

PATHOLOGIES: tuple[str, ...] = ("normal", "nodule", "mass", "effusion")
MODALITIES: tuple[str, ...] = ("CT", "MR")
FORMATS: tuple[str, ...] = ("nifti", "dicom", "png")

FOV_MM = 350.0
MIN_SIZE, MAX_SIZE = 32, 256
# Centre of the 3D field of view along z: the carina is z = 0, so the volume runs from the
# upper abdomen (-215 mm) to the lung apices (+135 mm).
Z_CENTRE_MM = -40.0

# Tissue -> (CT in HU, MR T2-weighted signal in scanner units). T2 with fast spin echo: fluid
# and fat bright, muscle dark, flowing blood a signal void, cortical bone and air black.
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 620.0),
    "muscle": (45.0, 190.0),
    "bone": (700.0, 150.0),  # ribs, sternum, posterior vertebral elements (cortex + marrow mix)
    "cortex": (1100.0, 30.0),  # vertebral body rim
    "marrow": (330.0, 420.0),  # cancellous vertebral body
    "disc": (85.0, 520.0),
    "csf": (8.0, 950.0),
    "lung": (-860.0, 35.0),
    "myocardium": (45.0, 240.0),
    "blood": (40.0, 50.0),
    "liver": (60.0, 260.0),
    "abdomen": (40.0, 380.0),
    "effusion": (15.0, 950.0),
    "nodule": (30.0, 430.0),
    "mass": (38.0, 520.0),
    "necrosis": (15.0, 820.0),
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)

_F = np.float32


# --------------------------------------------------------------------------- shapes (SDFs)
# Each returns an approximate signed distance in mm (negative inside). They broadcast, so an
# in-plane shape stays (1, H, W) while a 3D one becomes (D, H, W).


def _occ(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft occupancy in [0, 1] from a signed distance: a linear ramp one ``edge`` wide."""
    return np.clip(_F(0.5) - d * _F(1.0 / edge), _F(0.0), _F(1.0))


def _superellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, p: float = 2.0) -> np.ndarray:
    """Radial distance to the curve ``|x/a|^p + |y/b|^p = 1`` (an ellipse for p = 2)."""
    if p == 2.0:  # the common case; a fractional power costs ten times more
        rho = np.sqrt((x * _F(1.0 / a)) ** 2 + (y * _F(1.0 / b)) ** 2)
    else:
        rho = (np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p)
    r = np.hypot(x, y)
    return r * (1.0 - 1.0 / np.maximum(rho, 1e-6))


def _ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, c: np.ndarray, axes: np.ndarray, rot: np.ndarray
) -> np.ndarray:
    """Radial distance to an ellipsoid with centre ``c``, semi-axes ``axes``, rotation ``rot``."""
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    q = [rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz for i in range(3)]
    rho = np.sqrt((q[0] / axes[0]) ** 2 + (q[1] / axes[1]) ** 2 + (q[2] / axes[2]) ** 2)
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    return r * (1.0 - 1.0 / np.maximum(rho, 1e-6))


def _segment_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray
) -> np.ndarray:
    """Distance to the union of tapered tubes from ``a[i]`` (radius ``ra[i]``) to ``b[i]`` (``rb[i]``).

    The segments are evaluated together as an (S, N) array, much faster than a Python loop.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    p = np.stack([np.broadcast_to(v, shape).ravel() for v in (x, y, z)]).astype(_F)  # (3, N)
    a, b = a.astype(_F), b.astype(_F)
    ab = b - a  # (S, 3)
    denom = np.maximum((ab**2).sum(1), 1e-6)[:, None]
    t = np.clip((ab @ p - (ab * a).sum(1)[:, None]) / denom, 0.0, 1.0)  # (S, N)
    d2 = np.zeros_like(t)
    for k in range(3):  # a loop over 3 coordinates, not over segments
        d2 += (p[k][None, :] - (a[:, k : k + 1] + t * ab[:, k : k + 1])) ** 2
    r = ra.astype(_F)[:, None] + t * (rb - ra).astype(_F)[:, None]
    return (np.sqrt(d2) - r).min(0).reshape(shape)


_BLOCK = (8, 32, 32)


def _tubes(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    tubes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    reach: float,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """``_segment_distance`` clamped at ``reach``, evaluated only where a tube can be that close.

    The grid is cut into blocks and each block is tested only against the segments whose
    bounding boxes (grown by ``reach``) meet it: a vessel tree touches few blocks, so a 64^3
    volume costs a fraction of the dense evaluation. ``where`` limits it to selected voxels.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    out = np.full(shape, reach, _F)
    a, b, ra, rb = tubes
    grow = (np.maximum(ra, rb) + reach)[:, None]
    lo, hi = np.minimum(a, b) - grow, np.maximum(a, b) + grow
    xs, ys, zs = (np.broadcast_to(v, shape) for v in (x, y, z))
    # Blocks only pay off in a volume; a 2D slice (one z) or loose points are one block, and the
    # bounding-box test then drops every segment that does not cross the slice.
    steps = _BLOCK if len(shape) == 3 and shape[0] > 1 else shape
    ranges = [range(0, n, st) for n, st in zip(shape, steps)]
    for starts in np.ndindex(*[len(r) for r in ranges]):
        block = tuple(slice(r[i], r[i] + st) for r, i, st in zip(ranges, starts, steps))
        sel = where[block] if where is not None else None
        if sel is not None and not sel.any():
            continue
        bx, by, bz = (v[block] if sel is None else v[block][sel] for v in (xs, ys, zs))
        blo = np.array([bx.min(), by.min(), bz.min()])
        bhi = np.array([bx.max(), by.max(), bz.max()])
        keep = np.all((lo <= bhi) & (hi >= blo), axis=1)
        if not keep.any():
            continue
        d = np.minimum(_segment_distance(bx, by, bz, a[keep], b[keep], ra[keep], rb[keep]), _F(reach))
        if sel is None:
            out[block] = d
        else:
            out[block][sel] = d  # basic slicing gives a view, so this writes into out
    return out


def _waves(x: np.ndarray, y: np.ndarray, z: np.ndarray, k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Smooth procedural noise with unit variance: a sum of plane waves, resolution independent."""
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), _F)
    for (kx, ky, kz), ph in zip(k, phase):
        out += np.cos(kx * x + ky * y + kz * z + ph)
    return out * _F(math.sqrt(2.0 / len(k)))


def _random_waves(rng: np.random.Generator, n: int, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * math.pi / wavelength) * rng.uniform(0.7, 1.4, size=(n, 1))
    return k.astype(_F), rng.uniform(0, 2 * math.pi, n).astype(_F)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# --------------------------------------------------------------------------- the subject


@dataclass(frozen=True)
class _Subject:
    """One subject's anatomy, in mm, in an anatomy frame (x right, y anterior, z superior, carina at 0)."""

    rotation: float  # in-plane rotation of the subject on the table, radians
    shift: tuple[float, float]  # in-plane position of the subject, mm
    body: tuple[float, float, float]  # superellipse half-width, half-depth, exponent
    fat: float
    muscle: float
    cavity: tuple[float, float, float]  # half-width, anterior and posterior half-depth
    lung_harmonics: np.ndarray  # (2 sides, 3 harmonics, amplitude/phase)
    apex: float  # z of the lung apices
    apex_full: float  # z below which the thoracic cavity has full size
    dome: tuple[float, float]  # z of the right and left diaphragm domes
    med_half_width: tuple[float, float]  # mediastinum half-width posteriorly and anteriorly
    med_shift: float
    heart_centre: np.ndarray
    heart_axes: np.ndarray
    heart_rot: np.ndarray
    spine_y: float
    vertebra_r: float
    disc_phase: float
    rib_pitch: float
    rib_phase: float
    rib_slope: float
    great_vessels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # aorta, PA, SVC, IVC
    airways: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    oesophagus: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    lung_vessels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    lung_texture: tuple[np.ndarray, np.ndarray]
    slice_z: float  # level of the 2D phantom

    @staticmethod
    def draw(seed: int) -> "_Subject":
        rng = numpy_rng("medsynth-phantom", "anatomy", seed)
        u = rng.uniform
        a, b = u(135, 158), u(105, 125)
        fat, muscle = u(5, 20), u(5, 10)
        ca = a - fat - muscle - 9
        cb_ant = b - 0.8 * fat - muscle - 8
        cb_post = b - 0.8 * fat - muscle - 18
        apex = u(100, 125)
        dome_r = u(-150, -120)
        dome_l = dome_r - u(8, 25)
        spine_y = -cb_post + u(8, 14)
        vr = u(15, 19)
        med_shift = u(-6, 6)

        heart_axes = np.array([u(50, 60), u(36, 44), u(42, 50)])
        heart_centre = np.array([u(-28, -12), u(0.2, 0.35) * cb_ant, dome_l + heart_axes[2] * u(0.75, 0.95)])
        heart_rot = _rot_z(math.radians(u(-40, -25))) @ _rot_x(math.radians(u(-25, -10)))

        # Great vessels as polylines (points in mm) with a radius per point.
        asc_r, desc_r = u(14, 17), u(10, 13)
        ax = -u(18, 28)  # descending aorta lies left of the spine
        top = heart_centre[2] + heart_axes[2] * 0.6
        aorta = (
            np.array(
                [
                    [u(0, 10), u(10, 25), top],
                    [u(5, 12), u(10, 20), u(10, 30)],
                    [u(-5, 5), u(0, 10), u(50, 65)],
                    [ax, spine_y + vr + u(0, 6), u(35, 45)],
                    [ax, spine_y + vr * 0.8, -40.0],
                    [ax * 0.6, spine_y + vr * 0.9, -230.0],
                ]
            ),
            np.array([asc_r, asc_r, (asc_r + desc_r) / 2, desc_r, desc_r, desc_r * 0.9]),
        )
        pa_base = np.array([u(-25, -15), u(25, 40), top - u(0, 10)])
        bifurcation = np.array([u(-28, -20), u(10, 20), u(-15, -5)])
        pa = (  # trunk, then the left and the right (behind the aorta) pulmonary arteries
            np.stack([pa_base, bifurcation, bifurcation]),
            np.stack([bifurcation, [-u(45, 60), u(0, 10), u(-20, -10)], [u(35, 50), u(0, 10), u(-25, -15)]]),
            np.array([u(12, 15), u(9, 11), u(9, 11)]),
            np.array([u(11, 13), u(8, 10), u(8, 10)]),
        )
        svc_x = u(28, 40)
        svc = (np.array([[svc_x, u(5, 15), 140.0], [svc_x, u(5, 15), top]]), np.array([u(8, 10)] * 2))
        ivc = (
            np.array([[u(10, 25), u(-10, 5), heart_centre[2] - 20], [u(15, 30), u(-20, -5), -230.0]]),
            np.array([u(11, 14)] * 2),
        )

        def polyline(points: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, ...]:
            return points[:-1], points[1:], radii[:-1], radii[1:]

        def join(*parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            return tuple(np.concatenate(c) for c in zip(*parts))  # type: ignore[return-value]

        great = join(polyline(*aorta), pa, polyline(*svc), polyline(*ivc))

        ty = spine_y + vr + u(40, 50)
        carina = np.array([med_shift * 0.5, ty, 0.0])
        main_l = carina + [-u(35, 45), -u(5, 15), -u(25, 35)]
        main_r = carina + [u(30, 40), -u(5, 15), -u(20, 30)]
        airways = join(
            (np.array([[carina[0], ty, 160.0]]), carina[None], np.array([u(8, 10)]), np.array([u(8, 10)])),
            (np.stack([carina, carina]), np.stack([main_l, main_r]), np.array([6.5, 7.0]), np.array([5.0, 5.5])),
            (np.stack([main_l, main_r]), np.stack([main_l + [-20, -10, -30], main_r + [20, -10, -30]]),
             np.array([4.5, 5.0]), np.array([3.5, 3.5])),
        )
        oes = polyline(np.array([[u(-10, 0), spine_y + vr + u(15, 22), 160.0],
                                 [u(-15, -5), spine_y + vr + u(15, 22), -60.0],
                                 [u(-35, -20), spine_y + vr + u(25, 40), dome_l - 10]]), np.array([8.0, 8.0, 8.0]))

        # Pulmonary vessel tree: from each hilum, 9 branches, each with 2 children.
        parts = []
        for side in (1.0, -1.0):
            hilum = np.array([side * u(35, 50) + med_shift, u(-5, 15), u(-25, 0)])
            d = np.stack([side * u(0.5, 1.0, 9), u(-0.7, 0.7, 9), u(-0.9, 0.9, 9)], axis=1)
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            ends = hilum + d * u(45, 80, (9, 1))
            r0 = u(1.8, 2.8, 9)
            d2 = np.repeat(d, 2, axis=0) + rng.normal(scale=0.5, size=(18, 3))
            d2 /= np.linalg.norm(d2, axis=1, keepdims=True)
            starts2 = np.repeat(ends, 2, axis=0)
            parts.append((np.repeat(hilum[None], 9, axis=0), ends, r0, r0 * 0.6))
            parts.append((starts2, starts2 + d2 * u(30, 55, (18, 1)), np.repeat(r0, 2) * 0.55, np.full(18, 0.8)))
        lung_vessels = join(*parts)

        return _Subject(
            rotation=math.radians(u(-5, 5)),
            shift=(u(-8, 8), u(-6, 6)),
            body=(a, b, u(2.3, 2.9)),
            fat=fat,
            muscle=muscle,
            cavity=(ca, cb_ant, cb_post),
            lung_harmonics=np.stack([rng.uniform(0.0, 0.045, (2, 3)), rng.uniform(0, 2 * math.pi, (2, 3))], -1),
            apex=apex,
            apex_full=apex - u(60, 80),
            dome=(dome_r, dome_l),
            med_half_width=(u(18, 24), u(6, 10)),
            med_shift=med_shift,
            heart_centre=heart_centre,
            heart_axes=heart_axes,
            heart_rot=heart_rot,
            spine_y=spine_y,
            vertebra_r=vr,
            disc_phase=u(0, 28),
            rib_pitch=u(26, 32),
            rib_phase=u(0, 30),
            rib_slope=u(0.2, 0.35),
            great_vessels=great,
            airways=airways,
            oesophagus=oes,
            lung_vessels=lung_vessels,
            lung_texture=_random_waves(rng, 16, 12.0),
            slice_z=u(-110, -25),
        )

    # ---- shapes the renderer and the lesion placement share

    def cavity_distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance to the thoracic cavity; it narrows to a dome above ``apex_full``."""
        ca, cb_ant, cb_post = self.cavity
        r = np.hypot(x, y)
        # direction cosines of the polar angle, without arctan2/cos/sin (this runs on every voxel)
        cos_t = np.where(r > 0, x / np.maximum(r, 1e-6), 1.0)
        sin_t = y / np.maximum(r, 1e-6)
        cb = np.where(y > 0, cb_ant, cb_post)
        r0 = 1.0 / np.sqrt((cos_t / ca) ** 2 + (sin_t / cb) ** 2)
        # each lung gets its own shape: Fourier harmonics k = 2, 3, 4 of the boundary radius,
        # blended across x = 0; cos(k theta + phase) = Re(e^{i phase} (cos + i sin)^k)
        w_right = 1.0 / (1.0 + np.exp(-x / 15.0))
        unit = (cos_t + 1j * sin_t).astype(np.complex64)
        power = unit * unit
        pert = 0.0
        for (amp_r, ph_r), (amp_l, ph_l) in zip(self.lung_harmonics[0], self.lung_harmonics[1]):
            coef = w_right * (amp_r * np.exp(1j * ph_r)) + (1 - w_right) * (amp_l * np.exp(1j * ph_l))
            pert = pert + (coef * power).real
            power = power * unit
        t = np.clip((z - self.apex_full) / (self.apex - self.apex_full), 0.0, 1.0)
        scale = np.sqrt(np.maximum(1.0 - t**2, 0.0))
        return r - (r0 * (1.0 + pert)).astype(_F) * scale.astype(_F)

    def dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the diaphragm: a dome per side, lowest in the posterior costophrenic recesses."""
        ca, _, cb_post = self.cavity
        zd = np.where(x > 0, self.dome[0], self.dome[1])
        xs = np.abs(x) - 0.5 * ca
        return zd - 55.0 * (xs / (0.5 * ca)) ** 2 - 35.0 * np.clip(-y / cb_post, 0.0, 1.0) ** 2

    def posterior_lung_y(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The most dependent (posterior) y of the cavity at lateral position ``x`` and level ``z``."""
        ca, _, cb_post = self.cavity
        t = np.clip((z - self.apex_full) / (self.apex - self.apex_full), 0.0, 1.0)
        scale = np.sqrt(np.maximum(1.0 - t**2, 1e-6))
        return -cb_post * scale * np.sqrt(np.clip(1.0 - (x / (ca * scale)) ** 2, 0.0, 1.0))


# --------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _Lesion:
    """A lesion, painted after the anatomy. ``kind`` is a pathology name."""

    kind: str
    centres: np.ndarray  # (n, 3) lobe centres (one for a nodule)
    radii: np.ndarray  # (n,)
    waves: tuple[np.ndarray, np.ndarray]  # texture / boundary irregularity
    necrotic: float = 0.0  # radius fraction of the necrotic core (mass)
    sides: tuple[float, ...] = ()  # effusion: +1 right, -1 left
    level: tuple[float, float, float] = (0.0, 0.0, 0.0)  # effusion: z_ref, depth at z_ref, slope

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance of a nodule or mass: union of lobes with a wavy (lobulated) surface."""
        d = None
        for c, r in zip(self.centres, self.radii):
            di = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
            d = di if d is None else np.minimum(d, di)
        wobble = 0.08 if self.kind == "nodule" else 0.12
        return d + _F(wobble * float(self.radii[0])) * _waves(x, y, z, *self.waves)

    def fluid_occupancy(self, subject: _Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float) -> np.ndarray:
        """Fraction of a voxel below the dependent fluid level (effusion), on the affected sides."""
        z_ref, depth_ref, slope = self.level
        depth = np.maximum(depth_ref + slope * (z_ref - z), 0.0)
        ca = subject.cavity[0]
        # the fluid climbs the lateral chest wall a little (meniscus)
        meniscus = 12.0 * np.clip((np.abs(x) - 0.5 * ca) / (0.5 * ca), 0.0, 1.0) ** 2
        y_level = subject.posterior_lung_y(x, z) + depth + meniscus
        occ = _occ(y - y_level, edge)
        side = np.zeros_like(np.asarray(x, dtype=_F))
        for s in self.sides:
            side = np.maximum(side, np.clip(0.5 + s * x / edge, 0.0, 1.0))
        return occ * side


def _lung_space(subject: _Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lung fraction (before vessels) at arbitrary points; a fixed 2 mm edge keeps it size-independent."""
    canvas = _Canvas(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), modality=None)
    _paint_anatomy(canvas, subject, x, y, z, edge=2.0)
    return canvas.lung


def _place(
    rng: np.random.Generator,
    subject: _Subject,
    propose: Callable[[np.random.Generator], tuple[np.ndarray, float]],
    probe: Callable[[np.ndarray, float, np.random.Generator], np.ndarray],
    min_lung: float,
    tries: int = 8,
    batch: int = 24,
) -> tuple[np.ndarray, float]:
    """Rejection-sample a lesion centre and radius whose probe points are at least ``min_lung`` lung.

    Candidates are proposed in batches and tested together (one render of a few hundred points).
    If no candidate passes, the best one is used, so a lesion always exists.
    """
    best: tuple[float, np.ndarray, float] | None = None
    for _ in range(tries):
        cands = [propose(rng) for _ in range(batch)]
        pts = [probe(c, r, rng) for c, r in cands]
        allp = np.concatenate(pts)
        lung = _lung_space(subject, allp[:, 0], allp[:, 1], allp[:, 2])
        start = 0
        for (c, r), p in zip(cands, pts):
            frac = float(lung[start : start + len(p)].mean())
            start += len(p)
            if frac >= min_lung:
                return c, r
            if best is None or frac > best[0]:
                best = (frac, c, r)
    assert best is not None
    return best[1], best[2]


_PROBE_DIRS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
    + [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
    dtype=np.float64,
)
_PROBE_DIRS /= np.linalg.norm(_PROBE_DIRS, axis=1, keepdims=True)


def _sphere_probe(c: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """The centre and 14 points (axes and diagonals) 8 mm outside a sphere of radius r.

    A nodule that passes is surrounded by aerated lung: a solitary pulmonary nodule, not a
    bump on the heart border or the chest wall that even a radiologist could miss.
    """
    return np.concatenate([c[None], c + (r + 8.0) * _PROBE_DIRS])


def _draw_lesion(kind: str, subject: _Subject, seed: int, dim: int) -> _Lesion:
    """Draw one lesion of ``kind``; in 2D it is centred near the subject's slice level."""
    rng = numpy_rng("medsynth-phantom", "lesion", kind, seed, dim)
    ca, cb_ant, cb_post = subject.cavity

    def level(radius: float) -> float:
        if dim == 2:
            return subject.slice_z + rng.uniform(-0.3, 0.3) * radius
        return rng.uniform(max(subject.dome[0], subject.dome[1]) + 30, subject.apex - 35)

    if kind == "nodule":
        radius = rng.uniform(8.0, 14.0)

        def propose_nodule(g: np.random.Generator) -> tuple[np.ndarray, float]:
            return np.array([g.uniform(-ca, ca), g.uniform(-0.6 * cb_post, 0.8 * cb_ant), level(radius)]), radius

        centre, radius = _place(rng, subject, propose_nodule, _sphere_probe, min_lung=0.97)
        return _Lesion("nodule", centre[None], np.array([radius]), _random_waves(rng, 5, 3.0 * radius))

    if kind == "mass":
        radius = rng.uniform(17.0, 27.0)
        hilar = rng.uniform() < 0.5  # a hilar/mediastinal mass bulging into a lung, or a lung mass
        n_lobes = int(rng.integers(2, 5))
        offsets = rng.normal(size=(n_lobes, 3))
        offsets /= np.linalg.norm(offsets, axis=1, keepdims=True)
        offsets *= radius * rng.uniform(0.45, 0.75, (n_lobes, 1))
        if dim == 2:
            offsets[:, 2] *= 0.3  # keep the lobes near the slice so the 2D lesion shows its lobulation
        lobe_r = radius * rng.uniform(0.5, 0.75, n_lobes)

        def propose_mass(g: np.random.Generator) -> tuple[np.ndarray, float]:
            side = 1.0 if g.uniform() < 0.5 else -1.0
            if hilar:
                x = subject.med_shift + side * (subject.med_half_width[0] + g.uniform(5, 25) + radius * 0.5)
                return np.array([x, g.uniform(-30, 30), level(radius)]), radius
            return np.array([side * g.uniform(0.25, 0.8) * ca, g.uniform(-0.5 * cb_post, 0.7 * cb_ant), level(radius)]), radius

        def probe_mass(c: np.ndarray, r: float, g: np.random.Generator) -> np.ndarray:
            return np.concatenate([c[None], c + offsets, c + 0.8 * r * _PROBE_DIRS])

        centre, radius = _place(rng, subject, propose_mass, probe_mass, min_lung=0.45 if hilar else 0.7)
        centres = np.concatenate([centre[None], centre + offsets])
        radii = np.concatenate([[radius], lobe_r])
        necrotic = rng.uniform(0.35, 0.55) if rng.uniform() < 0.6 else 0.0
        return _Lesion("mass", centres, radii, _random_waves(rng, 6, 1.5 * radius), necrotic=necrotic)

    if kind == "effusion":
        r = rng.uniform()
        sides = (1.0,) if r < 0.35 else (-1.0,) if r < 0.7 else (1.0, -1.0)
        if dim == 2:
            z_ref, depth = subject.slice_z, rng.uniform(22.0, 50.0)
        else:
            z_ref, depth = max(subject.dome) + rng.uniform(20, 40), rng.uniform(30.0, 60.0)
        no_waves = (np.zeros((0, 3), _F), np.zeros(0, _F))
        return _Lesion("effusion", np.zeros((0, 3)), np.zeros(0), no_waves, sides=sides,
                       level=(z_ref, depth, rng.uniform(0.25, 0.5)))

    raise AssertionError(kind)  # pathologies are validated before this point


# --------------------------------------------------------------------------- rendering


class _Canvas:
    """Paints tissues back to front; tracks the lung fraction and, optionally, a label map."""

    def __init__(self, shape: tuple[int, ...], modality: int | None, labels: bool = False) -> None:
        self.modality = modality
        air = TISSUES["air"][modality] if modality is not None else 0.0
        self.image = np.full(shape, air, _F) if modality is not None else None
        self.lung = np.zeros(shape, _F)
        self.labels = np.zeros(shape, np.uint8) if labels else None

    def paint(self, tissue: str, occ: np.ndarray, value: np.ndarray | float | None = None) -> None:
        occ = occ.astype(_F, copy=False)
        if self.image is not None:
            v = TISSUES[tissue][self.modality] if value is None else value
            self.image += occ * (_F(v) - self.image) if np.isscalar(v) else occ * (v - self.image)
        if tissue == "lung":
            self.lung += occ * (1.0 - self.lung)
        else:
            self.lung *= 1.0 - occ
        if self.labels is not None:
            self.labels[np.broadcast_to(occ, self.labels.shape) > 0.5] = TISSUE_NAMES.index(tissue)

    def paint_in_lung(self, tissue: str, occ: np.ndarray, lung_value: np.ndarray | float) -> None:
        """Replace only the lung part of each voxel (fluid, vessels), so partial voxels at the
        chest wall keep their wall fraction instead of being blended into a dark rim."""
        m = occ.astype(_F, copy=False) * self.lung
        if self.image is not None:
            self.image += m * (_F(TISSUES[tissue][self.modality]) - lung_value)
        self.lung -= m
        if self.labels is not None:
            self.labels[m > 0.5] = TISSUE_NAMES.index(tissue)


def _paint_anatomy(
    canvas: _Canvas, s: _Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float
) -> None:
    """Paint the normal anatomy of subject ``s`` at anatomy-frame points (x, y, z), lung vessels excepted."""
    a, b, p = s.body
    body_d = _superellipse(x, y, a, b, p)
    canvas.paint("fat", _occ(body_d, edge))
    canvas.paint("muscle", _occ(_superellipse(x, y, a - s.fat, b - s.fat * 0.8, p), edge))

    cav = s.cavity_distance(x, y, z)
    below_apex = _occ(z - (s.apex + 25.0), edge)
    # Ribs: a band just outside the cavity, striped along z; the stripes descend anteriorly.
    phase = (z - s.rib_phase + s.rib_slope * y) / s.rib_pitch
    rib_z = (np.abs(phase - np.floor(phase) - 0.5) - 0.5) * s.rib_pitch + 5.5  # mm outside a 11 mm rib
    rib_ring = np.abs(cav - 6.0) - 3.5
    rib_d = np.maximum(np.maximum(rib_ring, -rib_z), 20.0 - np.abs(x))  # no ribs at the sternum
    in_chest = _occ(s.dome_z(x, y) - 70.0 - z, edge) * below_apex
    canvas.paint("bone", _occ(rib_d, edge) * in_chest)

    # Below the diaphragm the cavity holds the liver (right) and the upper abdomen (left).
    cav_occ = _occ(cav, edge)
    dome = s.dome_z(x, y)
    canvas.paint("abdomen", cav_occ)
    canvas.paint("liver", cav_occ * _occ(-x - 25.0 + 0.3 * y, 2 * edge) * _occ(z - dome - 5.0, edge))
    canvas.paint("lung", cav_occ * _occ(dome - z, edge))

    # Mediastinum: fat around the heart, the great vessels, the airways and the oesophagus.
    wp, wa = s.med_half_width
    w = wp + (wa - wp) * np.clip((y - s.spine_y) / (s.cavity[1] - s.spine_y), 0.0, 1.0)
    above_dome = _occ(s.dome[1] - 10.0 - z, edge)
    canvas.paint("fat", _occ(np.maximum(np.abs(x - s.med_shift) - w, cav), edge) * above_dome)
    heart_d = _ellipsoid(x, y, z, s.heart_centre, s.heart_axes, s.heart_rot)
    on_dome = _occ(dome - 6.0 - z, edge)
    canvas.paint("fat", _occ(heart_d - 7.0, edge) * on_dome)  # pericardial fat
    gv = _tubes(x, y, z, s.great_vessels, reach=6.0 + edge)
    canvas.paint("fat", _occ(gv - 6.0, edge) * below_apex)
    canvas.paint("myocardium", _occ(heart_d, edge) * on_dome)
    canvas.paint("blood", _occ(heart_d + 10.0, edge) * on_dome)
    canvas.paint("blood", _occ(gv, edge))
    aw = _tubes(x, y, z, s.airways, reach=2.0 + edge)
    canvas.paint("muscle", _occ(aw - 2.0, edge))  # airway wall
    canvas.paint("air", _occ(aw, edge))
    canvas.paint("muscle", _occ(_tubes(x, y, z, s.oesophagus, reach=edge), edge))

    # Sternum (anterior, chest levels only).
    st_d = _superellipse(x, y - (s.cavity[1] + 7.0), 16.0, 7.0, 2.0)
    canvas.paint("bone", _occ(st_d, edge) * _occ(z - 80.0, edge) * _occ(-110.0 - z, edge))

    # Spine: paraspinal muscles, vertebral body with discs, canal, posterior elements.
    vr, sy = s.vertebra_r, s.spine_y
    inside_fat = _occ(body_d + s.fat, edge)  # the back muscles stay under the subcutaneous fat
    for side in (-1.0, 1.0):
        back = _superellipse(x - side * 32.0, y - (sy - vr - 20.0), 26.0, 24.0, 2.0)
        canvas.paint("muscle", _occ(back, edge) * inside_fat)
    canvas.paint("bone", _occ(_superellipse(x, y - (sy - vr - 34.0), 5.0, 15.0), edge))  # spinous process
    canvas.paint("bone", _occ(_superellipse(x, y - (sy - vr - 9.0), 14.0, 12.0), edge))  # neural arch
    canvas.paint("csf", _occ(_superellipse(x, y - (sy - vr - 9.0), 8.0, 7.0), edge))
    vb = _superellipse(x, y - sy, vr, vr * 0.9, 2.0)
    canvas.paint("cortex", _occ(vb, edge))
    canvas.paint("marrow", _occ(vb + 3.0, edge))
    dz = (z - s.disc_phase) / 28.0
    disc_d = (np.abs(dz - np.round(dz)) * 28.0 - 3.5).astype(_F)
    canvas.paint("disc", _occ(np.maximum(vb, disc_d), edge))



def _paint_lesions(
    canvas: _Canvas, s: _Subject, lesions: Sequence[_Lesion], x: np.ndarray, y: np.ndarray, z: np.ndarray,
    edge: float, lung_value: np.ndarray | float,
) -> None:
    mi = canvas.modality
    for lesion in lesions:
        if lesion.kind == "effusion":
            canvas.paint_in_lung("effusion", lesion.fluid_occupancy(s, x, y, z, edge), lung_value)
        elif lesion.kind == "nodule":
            canvas.paint("nodule", _occ(lesion.distance(x, y, z), edge))
        else:  # mass: heterogeneous solid tissue, often with a necrotic core
            occ = _occ(lesion.distance(x, y, z), edge)
            solid, necrosis = TISSUES["mass"], TISSUES["necrosis"]
            texture = _waves(x, y, z, lesion.waves[0] * 2.5, lesion.waves[1])
            value = None if mi is None else _F(solid[mi]) + _F(0.12 * solid[mi] + 6.0) * texture
            canvas.paint("mass", occ, value)
            if lesion.necrotic > 0:
                c, r = lesion.centres[0], lesion.radii[0] * lesion.necrotic
                core = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
                canvas.paint("necrosis", _occ(core, 2 * edge) * occ, None if mi is None else necrosis[mi])


def _grid(subject: _Subject, dim: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
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
    x = (c * dx + s_ * dy).astype(_F)
    y = (-s_ * dx + c * dy).astype(_F)
    return x, y, z.astype(_F), affine, sp


def _ct_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Slightly correlated Gaussian noise with a subject-specific level of 10-20 HU."""
    level = rng.uniform(10.0, 20.0)
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=_F), 0.6)
    return n * _F(level / max(float(n.std()), 1e-6))


def _mr_bias(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A smooth multiplicative bias field, about 0.8-1.2 (receive-coil sensitivity)."""
    u, v, w = x / 175.0, y / 175.0, z / 175.0
    c = rng.normal(scale=[0.08, 0.08, 0.05, 0.04, 0.04, 0.03])
    log_b = c[0] * u + c[1] * v + c[2] * w + c[3] * u * u + c[4] * v * v + c[5] * u * v
    return np.exp(np.clip(log_b, -0.2, 0.2)).astype(_F)


# --------------------------------------------------------------------------- public API


def parse_pathologies(pathologies: str | Sequence[str]) -> tuple[str, ...]:
    """Validate pathology names; return them sorted, the order of ``catalog.pathology_label``.

    A string may hold several names separated by ``|`` (the labels.csv convention). "normal"
    cannot be combined with a pathology.

    Example:
        >>> parse_pathologies("nodule|effusion")
        ('effusion', 'nodule')
    """
    names = pathologies.split("|") if isinstance(pathologies, str) else list(pathologies)
    names = [str(n).strip() for n in names]
    for n in names:
        if n not in PATHOLOGIES:
            raise InputError(f"pathology {n!r} is not a phantom pathology; expected one of {', '.join(PATHOLOGIES)}")
    if not names:
        raise InputError("pathologies is empty; give at least one of " + ", ".join(PATHOLOGIES))
    if len(set(names)) != len(names):
        raise InputError(f"pathologies {'|'.join(names)!r} repeats a name; give each pathology once")
    if "normal" in names and len(names) > 1:
        raise InputError(f"pathologies {'|'.join(names)!r} combines 'normal' with a pathology; drop 'normal'")
    return tuple(sorted(names))


def _check_args(dim: int, modality: str, size: int) -> str:
    if dim not in (2, 3):
        raise InputError(f"dim={dim!r}: phantoms are 2 or 3 dimensional")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"size={size!r}: expected an integer from {MIN_SIZE} to {MAX_SIZE}")
    mod = str(modality).upper()
    if mod not in MODALITIES:
        raise InputError(f"modality {modality!r} is not a phantom modality; expected one of {', '.join(MODALITIES)}")
    return mod


def _render(
    dim: int, pathologies: tuple[str, ...], modality: str | None, seed: int, size: int, labels: bool
) -> tuple[_Canvas, np.ndarray]:
    subject = _Subject.draw(seed)
    lesions = [_draw_lesion(p, subject, seed, dim) for p in pathologies if p != "normal"]
    x, y, z, affine, sp = _grid(subject, dim, size)
    shape = (size,) * 3 if dim == 3 else (1, size, size)
    mi = None if modality is None else MODALITIES.index(modality)
    canvas = _Canvas(shape, mi, labels=labels)
    _paint_anatomy(canvas, subject, x, y, z, edge=sp)
    lung_space = canvas.lung.copy()
    lung_value: np.ndarray | float = 0.0
    if mi is not None:
        lung_value = TISSUES["lung"][mi]
        # denser (brighter) posteriorly, where blood and weight pool in a supine patient
        grad = np.clip(-y / subject.cavity[2], -1.0, 1.0)
        lung_value = _F(lung_value) + _F(abs(lung_value) * 0.045 + 4.0) * _F(grad) + _F(
            abs(lung_value) * 0.012 + 2.0
        ) * _waves(x, y, z, *subject.lung_texture)
        canvas.image += lung_space * (lung_value - _F(TISSUES["lung"][mi]))
    _paint_lung_vessels(canvas, subject, x, y, z, sp, lung_space, lung_value)
    _paint_lesions(canvas, subject, lesions, x, y, z, sp, lung_value)
    if mi is not None:
        nrng = numpy_rng("medsynth-phantom", "noise", seed, dim, size, modality)
        if modality == "CT":
            canvas.image += _ct_noise(nrng, shape)
            np.clip(canvas.image, -1024.0, 3071.0, out=canvas.image)
        else:
            sigma = nrng.uniform(12.0, 22.0)
            signal = canvas.image * _mr_bias(nrng, x, y, z)
            re = signal + sigma * nrng.standard_normal(shape, dtype=_F)
            im = sigma * nrng.standard_normal(shape, dtype=_F)
            canvas.image = np.hypot(re, im)  # magnitude image: Rician noise, never negative
    return canvas, affine


def _paint_lung_vessels(
    canvas: _Canvas, s: _Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float,
    space: np.ndarray, lung_value: np.ndarray | float,
) -> None:
    occ = _occ(_tubes(x, y, z, s.lung_vessels, reach=edge, where=space > 0), edge)
    canvas.paint_in_lung("blood", occ, lung_value)


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
        joined with ``|``, as ``catalog.pathology_label`` does), ``seed`` and ``body_part="CHEST"``.

    Example:
        >>> ct = make_phantom(dim=3, pathologies=["mass", "effusion"], seed=7, size=32)
        >>> ct.shape, ct.spacing, ct.metadata["pathology"]
        ((32, 32, 32), (10.9375, 10.9375, 10.9375), 'effusion|mass')
    """
    mod = _check_args(dim, modality, size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputError(f"seed={seed!r}: expected an integer")
    names = parse_pathologies(pathologies)
    canvas, affine = _render(dim, names, mod, int(seed), int(size), labels=False)
    image = canvas.image if dim == 2 else canvas.image[None]
    label = "|".join(names)
    meta = {"source_format": "phantom", "pathology": label, "seed": int(seed), "body_part": "CHEST",
            "series_kind": "volume" if dim == 3 else "single-frame"}
    return Scan(image, affine, mod, meta)


def phantom_labels(
    *, dim: int = 2, pathologies: str | Sequence[str] = "normal", seed: int = 0, size: int = 64
) -> np.ndarray:
    """The tissue label map of a phantom: index into ``TISSUE_NAMES`` of the tissue filling >50% of each voxel.

    Same shape as ``make_phantom(...).array`` and independent of modality; useful as ground
    truth (lesion masks, tissue regions) in tests and evaluation.
    """
    _check_args(dim, "CT", size)
    names = parse_pathologies(pathologies)
    canvas, _ = _render(dim, names, None, int(seed), int(size), labels=True)
    assert canvas.labels is not None
    return canvas.labels if dim == 2 else canvas.labels[None]


# --------------------------------------------------------------------------- datasets

LABEL_COLUMNS: tuple[str, ...] = ("path", "pathology", "modality", "split", "subject")
_SPLIT_FRACTIONS = (("test", 0.1), ("val", 0.1))  # the rest is train


def _dataset_classes(
    count: int,
    pathologies: Iterable[str],
    modalities: Iterable[str],
    class_counts: dict[tuple[str, str], int] | None,
) -> list[tuple[str, str]]:
    """The (pathology label, modality) of each case, in case order."""
    if class_counts is None:
        labels = list(dict.fromkeys("|".join(parse_pathologies(p)) for p in pathologies))
        mods = list(dict.fromkeys(_check_args(2, m, 64) for m in modalities))
        if not labels or not mods:
            raise InputError("phantom_dataset: pathologies and modalities must each name at least one value")
        classes = [(p, m) for p in labels for m in mods]
        return [classes[i % len(classes)] for i in range(count)]  # balanced: round robin
    cases: list[tuple[str, str]] = []
    for key, n in class_counts.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise InputError(f"class_counts key {key!r}: expected a (pathology, modality) pair")
        label, mod = "|".join(parse_pathologies(key[0])), _check_args(2, key[1], 64)
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise InputError(f"class_counts[{key!r}] = {n!r}: expected a count >= 0")
        cases += [(label, mod)] * int(n)
    if len(cases) != count:
        raise InputError(
            f"count={count} but class_counts adds up to {len(cases)}; pass count={len(cases)} or fix class_counts"
        )
    return cases


def _splits(classes: Sequence[tuple[str, str]], seed: int) -> list[str]:
    """train/val/test about 80/10/10 within each class, so rare classes reach every split."""
    split = ["train"] * len(classes)
    for cls in dict.fromkeys(classes):
        idx = [i for i, c in enumerate(classes) if c == cls]
        order = numpy_rng("medsynth-phantom", "split", seed, *cls).permutation(len(idx))
        start = 0
        for name, frac in _SPLIT_FRACTIONS:
            n = int(round(frac * len(idx)))
            for j in order[start : start + n]:
                split[idx[j]] = name
            start += n
    return split


def phantom_dataset(
    out_dir: str | Path,
    *,
    dim: int,
    count: int,
    fmt: str = "nifti",
    seed: int = 0,
    size: int = 64,
    pathologies: Sequence[str] = PATHOLOGIES,
    modalities: Sequence[str] = MODALITIES,
    class_counts: dict[tuple[str, str], int] | None = None,
) -> Path:
    """Write a labelled phantom dataset: one scan per subject plus ``OUT/labels.csv``.

    Cases are balanced over the (pathology, modality) classes (round robin), or follow
    ``class_counts`` exactly, e.g. ``{("nodule", "CT"): 10, ("normal", "CT"): 300}`` for an
    imbalanced set (then ``count`` must equal the total). Each case is a different subject
    ``phantom-sSEED-NNNNN`` whose anatomy seed is ``derive_seed(seed, "phantom-subject", NNNNN)``, so
    two datasets with different ``seed`` share no subject (and say so in their subject column). Files are named ``case-NNNNN`` (a
    ``.nii.gz``, ``.png`` or DICOM folder) and are written atomically; labels.csv is written
    last and lists ``path`` (relative to OUT), ``pathology`` (``|``-joined when several),
    ``modality``, ``split`` (train/val/test ~80/10/10 within each class) and ``subject``.
    Files of an earlier run under the same names are replaced.

    Args:
        out_dir: the output folder (created if missing).
        dim: 2 or 3.
        count: number of scans (>= 1).
        fmt: "nifti", "dicom" or "png" (2D only).
        seed: dataset seed.
        size: voxels per axis, 32..256.
        pathologies: class labels to balance over; an entry may join several with ``|``.
        modalities: subset of ``MODALITIES``.
        class_counts: optional exact number of cases per (pathology, modality).

    Returns:
        The path of labels.csv.

    Example:
        >>> phantom_dataset("data/phantoms", dim=2, count=80, seed=1)  # doctest: +SKIP
        PosixPath('data/phantoms/labels.csv')
    """
    from medsynth.io import write_scan

    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        raise InputError(f"count={count!r}: expected a whole number of scans >= 1")
    _check_args(dim, "CT", size)
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    if fmt == "png" and dim == 3:
        raise InputError("format 'png' holds 2D images only; use --format nifti or dicom for dim=3")
    classes = _dataset_classes(int(count), pathologies, modalities, class_counts)
    splits = _splits(classes, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(count - 1)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for i, ((label, mod), split) in enumerate(zip(classes, splits)):
        case = f"case-{i:0{width}d}"
        scan = make_phantom(
            dim=dim, pathologies=label, modality=mod, seed=derive_seed(seed, "phantom-subject", i), size=size
        )
        written = write_scan(scan, out / case, fmt, case_id=case)
        writer.writerow([written.relative_to(out).as_posix(), label, mod, split, f"phantom-s{seed}-{i:0{width}d}"])
    csv_path = out / "labels.csv"
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path
