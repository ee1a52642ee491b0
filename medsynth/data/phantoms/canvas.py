"""Tissues and the canvas they are painted on: each tissue's CT and MR value, the label map.

The anatomy and the lesions say where each tissue lies (as a soft occupancy); the canvas
turns that into an image of one modality, a lung fraction and, when asked, a label map. A
canvas without a modality tracks only the lung fraction and labels, which is what lesion
placement and ``phantom_labels`` need. ``TISSUES`` holds the values of scanner A; scanner B's
MR has its own contrast (``MR_T1``, see ``phantoms.scanners``) and is given to the canvas as
its column of values.
"""

from __future__ import annotations

import numpy as np

from medsynth.data.phantoms.shapes import F32

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
    # Added after the others so that the label indices of the tissues above stay as they were.
    "pneumothorax": (-1000.0, 0.0),  # pleural air: as black as the air outside the body
    "pleura": (30.0, 160.0),  # the visceral pleural line at the edge of a collapsed lung
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)

# Scanner B's MR contrast: T1-weighted (spoiled gradient echo) in scanner units. Fat and fatty
# marrow bright, fluid (CSF, effusion, necrosis) dark but not void, muscle intermediate, flowing
# blood bright from inflow, liver brighter than the rest of the upper abdomen; air still black.
MR_T1: dict[str, float] = {
    "air": 0.0,
    "fat": 900.0,
    "muscle": 330.0,
    "bone": 360.0,
    "cortex": 30.0,
    "marrow": 650.0,
    "disc": 280.0,
    "csf": 120.0,
    "lung": 25.0,
    "myocardium": 340.0,
    "blood": 420.0,
    "liver": 480.0,
    "abdomen": 360.0,
    "effusion": 160.0,
    "nodule": 340.0,
    "mass": 380.0,
    "necrosis": 140.0,
    "pneumothorax": 0.0,
    "pleura": 250.0,
}


class Canvas:
    """Paints tissues back to front; tracks the lung fraction and, optionally, a label map."""

    def __init__(
        self,
        shape: tuple[int, ...],
        modality: int | None,
        labels: bool = False,
        values: dict[str, float] | None = None,
    ) -> None:
        self.modality = modality  # the column of ``TISSUES``; None: no image, lung and labels only
        # ``values``: another column of tissue values (scanner B's MR); default ``TISSUES``' column
        self.values = values
        self.image = None if modality is None else np.full(shape, self.value("air"), F32)
        self.lung = np.zeros(shape, F32)
        self.labels = np.zeros(shape, np.uint8) if labels else None

    def value(self, tissue: str) -> float:
        """The tissue's intensity in this canvas's modality."""
        assert self.modality is not None, "a canvas without a modality has no intensities"
        return TISSUES[tissue][self.modality] if self.values is None else self.values[tissue]

    def paint(self, tissue: str, occ: np.ndarray, value: np.ndarray | float | None = None) -> None:
        occ = occ.astype(F32, copy=False)
        if self.image is not None:
            v = self.value(tissue) if value is None else value
            # a scalar enters as float32, so the blend is float32 arithmetic whatever its type
            self.image += occ * (v - self.image) if isinstance(v, np.ndarray) else occ * (F32(v) - self.image)
        if tissue == "lung":
            self.lung += occ * (1.0 - self.lung)
        else:
            self.lung *= 1.0 - occ
        if self.labels is not None:
            self.labels[np.broadcast_to(occ, self.labels.shape) > 0.5] = TISSUE_NAMES.index(tissue)

    def paint_in_lung(self, tissue: str, occ: np.ndarray, lung_value: np.ndarray | float) -> None:
        """Replace only the lung part of each voxel (fluid, vessels), so partial voxels at the
        chest wall keep their wall fraction instead of being blended into a dark rim."""
        m = occ.astype(F32, copy=False) * self.lung
        if self.image is not None:
            self.image += m * (F32(self.value(tissue)) - lung_value)
        self.lung -= m
        if self.labels is not None:
            self.labels[m > 0.5] = TISSUE_NAMES.index(tissue)
