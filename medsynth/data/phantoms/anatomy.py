"""Anatomy: a subject's chest drawn from its seed, and where each of its tissues lies.

``Subject.draw(seed)`` draws every random parameter of one body (sizes, positions, a few
degrees of rotation, lung shape, vessel tree) first; ``paint_anatomy`` then places the tissues
deterministically as signed-distance functions of anatomy-frame points in mm (x right,
y anterior, z superior, carina at 0). The subject does not depend on modality, size or
pathology, so one subject seed gives one body in CT and MR, at 64 or 256, normal or diseased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medsynth.data.phantoms.canvas import Canvas
from medsynth.data.phantoms.shapes import (
    F32,
    Tubes,
    ellipsoid,
    occupancy,
    random_waves,
    rot_x,
    rot_z,
    superellipse,
    tube_distance,
)
from medsynth.seeding import numpy_rng


@dataclass(frozen=True)
class Subject:
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
    great_vessels: Tubes  # aorta, PA, SVC, IVC
    airways: Tubes
    oesophagus: Tubes
    lung_vessels: Tubes
    lung_texture: tuple[np.ndarray, np.ndarray]
    slice_z: float  # level of the 2D phantom

    @staticmethod
    def draw(seed: int) -> Subject:
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
        heart_rot = rot_z(math.radians(u(-40, -25))) @ rot_x(math.radians(u(-25, -10)))

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

        def polyline(points: np.ndarray, radii: np.ndarray) -> Tubes:
            return points[:-1], points[1:], radii[:-1], radii[1:]

        def join(*parts: Tubes) -> Tubes:
            a, b, ra, rb = (np.concatenate(c) for c in zip(*parts, strict=True))
            return a, b, ra, rb

        great = join(polyline(*aorta), pa, polyline(*svc), polyline(*ivc))

        ty = spine_y + vr + u(40, 50)
        carina = np.array([med_shift * 0.5, ty, 0.0])
        main_l = carina + np.array([-u(35, 45), -u(5, 15), -u(25, 35)])
        main_r = carina + np.array([u(30, 40), -u(5, 15), -u(20, 30)])
        airways = join(
            (np.array([[carina[0], ty, 160.0]]), carina[None], np.array([u(8, 10)]), np.array([u(8, 10)])),
            (np.stack([carina, carina]), np.stack([main_l, main_r]), np.array([6.5, 7.0]), np.array([5.0, 5.5])),
            (
                np.stack([main_l, main_r]),
                np.stack([main_l + np.array([-20, -10, -30]), main_r + np.array([20, -10, -30])]),
                np.array([4.5, 5.0]),
                np.array([3.5, 3.5]),
            ),
        )
        oes = polyline(
            np.array(
                [
                    [u(-10, 0), spine_y + vr + u(15, 22), 160.0],
                    [u(-15, -5), spine_y + vr + u(15, 22), -60.0],
                    [u(-35, -20), spine_y + vr + u(25, 40), dome_l - 10],
                ]
            ),
            np.array([8.0, 8.0, 8.0]),
        )

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

        return Subject(
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
            lung_texture=random_waves(rng, 16, 12.0),
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
        for (amp_r, ph_r), (amp_l, ph_l) in zip(self.lung_harmonics[0], self.lung_harmonics[1], strict=True):
            coef = w_right * (amp_r * np.exp(1j * ph_r)) + (1 - w_right) * (amp_l * np.exp(1j * ph_l))
            pert = pert + (coef * power).real
            power = power * unit
        t = np.clip((z - self.apex_full) / (self.apex - self.apex_full), 0.0, 1.0)
        scale = np.sqrt(np.maximum(1.0 - t**2, 0.0))
        return r - (r0 * (1.0 + pert)).astype(F32) * scale.astype(F32)

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


def paint_anatomy(canvas: Canvas, s: Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float) -> None:
    """Paint the normal anatomy of subject ``s`` at anatomy-frame points (x, y, z), lung vessels excepted."""
    a, b, p = s.body
    body_d = superellipse(x, y, a, b, p)
    canvas.paint("fat", occupancy(body_d, edge))
    canvas.paint("muscle", occupancy(superellipse(x, y, a - s.fat, b - s.fat * 0.8, p), edge))

    cav = s.cavity_distance(x, y, z)
    below_apex = occupancy(z - (s.apex + 25.0), edge)
    # Ribs: a band just outside the cavity, striped along z; the stripes descend anteriorly.
    phase = (z - s.rib_phase + s.rib_slope * y) / s.rib_pitch
    rib_z = (np.abs(phase - np.floor(phase) - 0.5) - 0.5) * s.rib_pitch + 5.5  # mm outside a 11 mm rib
    rib_ring = np.abs(cav - 6.0) - 3.5
    rib_d = np.maximum(np.maximum(rib_ring, -rib_z), 20.0 - np.abs(x))  # no ribs at the sternum
    in_chest = occupancy(s.dome_z(x, y) - 70.0 - z, edge) * below_apex
    canvas.paint("bone", occupancy(rib_d, edge) * in_chest)

    # Below the diaphragm the cavity holds the liver (right) and the upper abdomen (left).
    cav_occ = occupancy(cav, edge)
    dome = s.dome_z(x, y)
    canvas.paint("abdomen", cav_occ)
    canvas.paint("liver", cav_occ * occupancy(-x - 25.0 + 0.3 * y, 2 * edge) * occupancy(z - dome - 5.0, edge))
    canvas.paint("lung", cav_occ * occupancy(dome - z, edge))

    # Mediastinum: fat around the heart, the great vessels, the airways and the oesophagus.
    wp, wa = s.med_half_width
    w = wp + (wa - wp) * np.clip((y - s.spine_y) / (s.cavity[1] - s.spine_y), 0.0, 1.0)
    above_dome = occupancy(s.dome[1] - 10.0 - z, edge)
    canvas.paint("fat", occupancy(np.maximum(np.abs(x - s.med_shift) - w, cav), edge) * above_dome)
    heart_d = ellipsoid(x, y, z, s.heart_centre, s.heart_axes, s.heart_rot)
    on_dome = occupancy(dome - 6.0 - z, edge)
    canvas.paint("fat", occupancy(heart_d - 7.0, edge) * on_dome)  # pericardial fat
    gv = tube_distance(x, y, z, s.great_vessels, reach=6.0 + edge)
    canvas.paint("fat", occupancy(gv - 6.0, edge) * below_apex)
    canvas.paint("myocardium", occupancy(heart_d, edge) * on_dome)
    canvas.paint("blood", occupancy(heart_d + 10.0, edge) * on_dome)
    canvas.paint("blood", occupancy(gv, edge))
    aw = tube_distance(x, y, z, s.airways, reach=2.0 + edge)
    canvas.paint("muscle", occupancy(aw - 2.0, edge))  # airway wall
    canvas.paint("air", occupancy(aw, edge))
    canvas.paint("muscle", occupancy(tube_distance(x, y, z, s.oesophagus, reach=edge), edge))

    # Sternum (anterior, chest levels only).
    st_d = superellipse(x, y - (s.cavity[1] + 7.0), 16.0, 7.0, 2.0)
    canvas.paint("bone", occupancy(st_d, edge) * occupancy(z - 80.0, edge) * occupancy(-110.0 - z, edge))

    # Spine: paraspinal muscles, vertebral body with discs, canal, posterior elements.
    vr, sy = s.vertebra_r, s.spine_y
    inside_fat = occupancy(body_d + s.fat, edge)  # the back muscles stay under the subcutaneous fat
    for side in (-1.0, 1.0):
        back = superellipse(x - side * 32.0, y - (sy - vr - 20.0), 26.0, 24.0, 2.0)
        canvas.paint("muscle", occupancy(back, edge) * inside_fat)
    canvas.paint("bone", occupancy(superellipse(x, y - (sy - vr - 34.0), 5.0, 15.0), edge))  # spinous process
    canvas.paint("bone", occupancy(superellipse(x, y - (sy - vr - 9.0), 14.0, 12.0), edge))  # neural arch
    canvas.paint("csf", occupancy(superellipse(x, y - (sy - vr - 9.0), 8.0, 7.0), edge))
    vb = superellipse(x, y - sy, vr, vr * 0.9, 2.0)
    canvas.paint("cortex", occupancy(vb, edge))
    canvas.paint("marrow", occupancy(vb + 3.0, edge))
    dz = (z - s.disc_phase) / 28.0
    disc_d = (np.abs(dz - np.round(dz)) * 28.0 - 3.5).astype(F32)
    canvas.paint("disc", occupancy(np.maximum(vb, disc_d), edge))


def paint_lung_vessels(
    canvas: Canvas,
    s: Subject,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    edge: float,
    space: np.ndarray,
    lung_value: np.ndarray | float,
) -> None:
    """Paint the pulmonary vessels into ``space``, the lung fraction before vessels.

    Apart from ``paint_anatomy`` because a vessel replaces the lung's rendered value
    ``lung_value`` (graded and textured, see ``render``), which exists only after the anatomy.
    """
    occ = occupancy(tube_distance(x, y, z, s.lung_vessels, reach=edge, where=space > 0), edge)
    canvas.paint_in_lung("blood", occ, lung_value)


def lung_space(subject: Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lung fraction (before vessels) at arbitrary points; a fixed 2 mm edge keeps it size-independent."""
    canvas = Canvas(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), modality=None)
    paint_anatomy(canvas, subject, x, y, z, edge=2.0)
    return canvas.lung
