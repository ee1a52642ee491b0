"""Lesions: nodule, mass, effusion and pneumothorax, each drawn for a subject and painted over its anatomy.

Each lesion is drawn from ``(seed, pathology, dim)`` alone, so adding a second pathology does
not move the first one (and adding a pathology to the package moved none of the others).
Nodules and masses are placed by rejection sampling against the subject's lung (a few candidate
points are rendered, not the whole grid); in 2D every lesion is centred within a third of its
radius of the subject's slice, so it is always visible. The effusion is dependent fluid; the
pneumothorax is non-dependent pleural air along the chest wall (``paint_pleural_air``, painted
before the lung vessels so that the air holds no lung markings).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from medsynth.data.phantoms.anatomy import Subject, lung_space
from medsynth.data.phantoms.canvas import Canvas
from medsynth.data.phantoms.shapes import F32, occupancy, random_waves, waves
from medsynth.seeding import numpy_rng


@dataclass(frozen=True)
class Lesion:
    """A lesion, painted after the anatomy. ``kind`` is a pathology name."""

    kind: str
    centres: np.ndarray  # (n, 3) lobe centres (one for a nodule)
    radii: np.ndarray  # (n,)
    waves: tuple[np.ndarray, np.ndarray]  # texture / boundary irregularity
    necrotic: float = 0.0  # radius fraction of the necrotic core (mass)
    sides: tuple[float, ...] = ()  # effusion: +1 right, -1 left
    level: tuple[float, float, float] = (0.0, 0.0, 0.0)  # effusion: z_ref, depth at z_ref, slope
    depth: float = 0.0  # pneumothorax: mm of air between the anterior chest wall and the lung edge

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance of a nodule or mass: union of lobes with a wavy (lobulated) surface."""
        lobes = (
            np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
            for c, r in zip(self.centres, self.radii, strict=True)
        )
        d = functools.reduce(np.minimum, lobes)  # one lobe at a time: a 3D grid each
        wobble = 0.08 if self.kind == "nodule" else 0.12
        return d + F32(wobble * float(self.radii[0])) * waves(x, y, z, *self.waves)

    def fluid_occupancy(self, subject: Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float) -> np.ndarray:
        """Fraction of a voxel below the dependent fluid level (effusion), on the affected sides."""
        z_ref, depth_ref, slope = self.level
        depth = np.maximum(depth_ref + slope * (z_ref - z), 0.0)
        ca = subject.cavity[0]
        # the fluid climbs the lateral chest wall a little (meniscus)
        meniscus = 12.0 * np.clip((np.abs(x) - 0.5 * ca) / (0.5 * ca), 0.0, 1.0) ** 2
        y_level = subject.posterior_lung_y(x, z) + depth + meniscus
        occ = occupancy(y - y_level, edge)
        return occ * self.side_weight(x, edge)

    def side_weight(self, x: np.ndarray, edge: float) -> np.ndarray:
        """1 in the affected hemithoraces (``sides``), 0 in the other, a one-edge ramp at x = 0."""
        side = np.zeros_like(np.asarray(x, dtype=F32))
        for s in self.sides:
            side = np.maximum(side, np.clip(0.5 + s * x / edge, 0.0, 1.0))
        return side

    def air_distance(self, subject: Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) of a pneumothorax's air: the rim of the thoracic
        cavity less than ``depth * w`` from the chest wall.

        ``w`` is 1 at the anterior wall, about 0.6 at the lateral wall and 0 from 60% of the
        way to the posterior wall on: in a supine patient the air rises to the non-dependent
        (anterior and lateral) pleural space, so the crescent thins out posteriorly, where the
        collapsed lung still touches the chest wall.
        """
        _, cb_ant, cb_post = subject.cavity
        w = np.clip((y + F32(0.6 * cb_post)) / F32(cb_ant + 0.6 * cb_post), 0.0, 1.0) ** F32(0.5)
        from_wall = -subject.cavity_distance(x, y, z)  # mm inwards from the inner chest wall
        return from_wall - F32(self.depth) * w

    @property
    def collapse(self) -> float:
        """Fraction of the affected lung's volume lost to the air: its density rises by ``1/(1-collapse)``."""
        return self.depth / (self.depth + 70.0)


def _place(
    rng: np.random.Generator,
    subject: Subject,
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
        lung = lung_space(subject, allp[:, 0], allp[:, 1], allp[:, 2])
        start = 0
        for (c, r), p in zip(cands, pts, strict=True):
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


def draw_lesion(kind: str, subject: Subject, seed: int, dim: int) -> Lesion:
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
        return Lesion("nodule", centre[None], np.array([radius]), random_waves(rng, 5, 3.0 * radius))

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
            return np.array(
                [side * g.uniform(0.25, 0.8) * ca, g.uniform(-0.5 * cb_post, 0.7 * cb_ant), level(radius)]
            ), radius

        def probe_mass(c: np.ndarray, r: float, g: np.random.Generator) -> np.ndarray:
            return np.concatenate([c[None], c + offsets, c + 0.8 * r * _PROBE_DIRS])

        centre, radius = _place(rng, subject, propose_mass, probe_mass, min_lung=0.45 if hilar else 0.7)
        centres = np.concatenate([centre[None], centre + offsets])
        radii = np.concatenate([[radius], lobe_r])
        necrotic = rng.uniform(0.35, 0.55) if rng.uniform() < 0.6 else 0.0
        return Lesion("mass", centres, radii, random_waves(rng, 6, 1.5 * radius), necrotic=necrotic)

    if kind == "effusion":
        r = rng.uniform()
        sides = (1.0,) if r < 0.35 else (-1.0,) if r < 0.7 else (1.0, -1.0)
        if dim == 2:
            z_ref, depth = subject.slice_z, rng.uniform(22.0, 50.0)
        else:
            z_ref, depth = max(subject.dome) + rng.uniform(20, 40), rng.uniform(30.0, 60.0)
        no_waves = (np.zeros((0, 3), F32), np.zeros(0, F32))
        return Lesion(
            "effusion",
            np.zeros((0, 3)),
            np.zeros(0),
            no_waves,
            sides=sides,
            level=(z_ref, depth, rng.uniform(0.25, 0.5)),
        )

    if kind == "pneumothorax":
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        no_waves = (np.zeros((0, 3), F32), np.zeros(0, F32))
        return Lesion("pneumothorax", np.zeros((0, 3)), np.zeros(0), no_waves, sides=(side,), depth=rng.uniform(25, 60))

    raise AssertionError(kind)  # pathologies are validated before this point


PLEURA_MM = 2.0  # thickness of the visceral pleural line at a collapsed lung's edge


def collapse_lung(
    canvas: Canvas, lesion: Lesion, x: np.ndarray, edge: float, lung_space: np.ndarray, lung_value: np.ndarray | float
) -> np.ndarray | float:
    """Make the lung of a pneumothorax's side denser (it lost volume to the air); return the new lung value.

    The lung keeps its tissue and loses air: ``air + (lung - air) / (1 - collapse)``, so CT's
    -860 HU becomes about -810 to -740 HU and MR's lung signal rises by the same factor.
    """
    if canvas.image is None:
        return lung_value
    air = F32(canvas.value("pneumothorax"))
    gain = F32(1.0 / (1.0 - lesion.collapse) - 1.0)
    delta = (lung_value - air) * gain * lesion.side_weight(x, edge)
    canvas.image += lung_space * delta
    return lung_value + delta


def paint_pleural_air(
    canvas: Canvas,
    s: Subject,
    lesion: Lesion,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    edge: float,
    lung_value: np.ndarray | float,
) -> None:
    """Paint a pneumothorax: the air replaces the lung in its crescent, then a thin visceral pleural line.

    Only the lung part of each voxel is replaced (``Canvas.paint_in_lung``), so the chest wall and
    the mediastinum keep their values. Painted before the lung vessels, so no vessel crosses the
    air: the lung markings stop at the pleural line.
    """
    d = lesion.air_distance(s, x, y, z)
    side = lesion.side_weight(x, edge)
    air = occupancy(d, edge)
    canvas.paint_in_lung("pneumothorax", air * side, lung_value)
    # the two half-spaces' difference is a band PLEURA_MM thick, partial-volumed into the voxels
    line = np.clip(occupancy(d - F32(PLEURA_MM), edge) - air, 0.0, 1.0)
    canvas.paint_in_lung("pleura", line * side, lung_value)


def paint_lesions(
    canvas: Canvas,
    s: Subject,
    lesions: Sequence[Lesion],
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    edge: float,
    lung_value: np.ndarray | float,
) -> None:
    """Paint ``lesions`` over the anatomy; ``lung_value`` is the rendered lung that fluid replaces.

    A pneumothorax is not painted here: ``paint_pleural_air`` paints it before the lung vessels.
    """
    mi = canvas.modality
    for lesion in lesions:
        if lesion.kind == "effusion":
            canvas.paint_in_lung("effusion", lesion.fluid_occupancy(s, x, y, z, edge), lung_value)
        elif lesion.kind == "nodule":
            canvas.paint("nodule", occupancy(lesion.distance(x, y, z), edge))
        elif lesion.kind == "mass":  # heterogeneous solid tissue, often with a necrotic core
            occ = occupancy(lesion.distance(x, y, z), edge)
            texture = waves(x, y, z, lesion.waves[0] * 2.5, lesion.waves[1])
            value = None
            if mi is not None:
                solid = canvas.value("mass")
                value = F32(solid) + F32(0.12 * solid + 6.0) * texture
            canvas.paint("mass", occ, value)
            if lesion.necrotic > 0:
                c, r = lesion.centres[0], lesion.radii[0] * lesion.necrotic
                core = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r
                canvas.paint("necrosis", occupancy(core, 2 * edge) * occ)
