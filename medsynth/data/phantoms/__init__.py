"""Built-in chest phantoms: procedural CT and MR scans of a thorax, with five pathology classes.

They are the embedded default dataset of the demo, the tests and the benchmarks, so they are
built to look like medicine: a body outline with subcutaneous fat and a muscular chest wall,
ribs, sternum, two lungs with pulmonary vessels, a mediastinum holding the heart, the aorta, the
pulmonary trunk, the trachea and the oesophagus, the spine with discs and a spinal canal, and
below the diaphragm the liver and upper abdomen.

How a phantom is made (TorchIO style: random parameters first, then a deterministic render),
one module a step:

1. ``anatomy``: ``Subject`` draws a subject's anatomy from the subject seed (sizes, positions,
   a few degrees of rotation, lung shape, vessel tree). It does not depend on modality, size or
   pathology, so the same subject seed gives the same body in CT and MR, at 64 or 256, normal
   or diseased.
2. ``lesions``: each pathology draws its lesion from ``(seed, pathology, dim)`` alone, so adding
   a second pathology does not move the first one.
3. ``shapes`` and ``canvas``: every structure is a signed-distance function of patient
   coordinates in millimetres; the renderer evaluates them on the voxel grid (or on a few
   candidate points, when a lesion is placed) and paints tissues back to front with a soft edge
   one voxel wide, which gives partial-volume edges at any resolution.
4. ``render``: modality-specific intensities (CT in HU; MR in scanner units) and then
   ``scanners``: what the scanner adds (A, the default: correlated Gaussian CT noise, T2-weighted
   MR with Rician noise and a mild bias field; B: a sharp CT kernel with high-frequency noise,
   T1-weighted MR with a strong coil bias field). The noise depends on the seed, not on the
   pathology, so a diseased phantom minus its normal twin is exactly the lesion.

The classes are ``PATHOLOGIES``: normal, nodule, mass, effusion (pleural fluid) and pneumothorax
(pleural air). The shipped models know the first four (``BASE_PATHOLOGIES``), not pneumothorax.

``dataset`` writes many phantoms, one subject each, with a labels.csv (``phantom_dataset``),
and on request each one's lesion mask (``phantom_lesion_mask``) with a mask column.

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

from medsynth.data.phantoms.canvas import TISSUE_NAMES, TISSUES
from medsynth.data.phantoms.dataset import LABEL_COLUMNS, phantom_dataset
from medsynth.data.phantoms.render import (
    BASE_PATHOLOGIES,
    FOV_MM,
    LESION_TISSUES,
    MAX_SIZE,
    MIN_SIZE,
    MODALITIES,
    PATHOLOGIES,
    Z_CENTRE_MM,
    make_phantom,
    parse_pathologies,
    phantom_labels,
    phantom_lesion_mask,
)
from medsynth.data.phantoms.scanners import SCANNERS

__all__ = [
    "BASE_PATHOLOGIES",
    "FOV_MM",
    "LABEL_COLUMNS",
    "LESION_TISSUES",
    "MAX_SIZE",
    "MIN_SIZE",
    "MODALITIES",
    "PATHOLOGIES",
    "SCANNERS",
    "TISSUES",
    "TISSUE_NAMES",
    "Z_CENTRE_MM",
    "make_phantom",
    "parse_pathologies",
    "phantom_dataset",
    "phantom_labels",
    "phantom_lesion_mask",
]
