"""Whole-volume facts in one pass over slabs, so writers never copy a whole volume.

The DICOM and NIfTI writers encode a volume slice by slice, but the encoding depends on
the whole volume (its value range, whether every value is a whole number, whether every
value is finite). ``volume_stats`` gathers these in one pass over slabs of the first axis;
each slab's temporaries (``np.round``, ``np.isfinite``) are a few MB, never a volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Temporaries of a slab (a rounded float copy, a bool mask) stay around this many bytes:
# large enough that numpy's per-call overhead vanishes, small against any clinical volume.
SLAB_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class VolumeStats:
    """What the writers need to know about all the values of an array before encoding one slice.

    Attributes:
        finite: every value is finite (no NaN, no infinity).
        lo, hi: the least and greatest value (meaningless when not ``finite``).
        integral: every value is a whole number (False when not ``finite``).
    """

    finite: bool
    lo: float
    hi: float
    integral: bool


def slabs(n: int, item_bytes: int, budget: int | None = None) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` whose items (``item_bytes`` each) fill about ``budget`` bytes.

    ``budget`` defaults to ``SLAB_BYTES``, read at the call (tests shrink it to force many slabs).
    At least one item per slab, however large.
    """
    step = max(1, (SLAB_BYTES if budget is None else budget) // max(1, item_bytes))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def volume_stats(array: np.ndarray) -> VolumeStats:
    """Finite, min, max and integral of ``array`` in one pass over slabs of its first axis.

    Equal to ``np.all(np.isfinite(a))``, ``a.min()``, ``a.max()`` and
    ``np.all(a == np.round(a))`` on the whole array, without their whole-array temporaries.
    """
    if array.size == 0:
        return VolumeStats(True, 0.0, 0.0, True)
    if array.ndim == 0:
        array = array.reshape(1)
    finite, integral = True, True
    lo, hi = np.inf, -np.inf
    for part in slabs(array.shape[0], array[0].nbytes):
        slab = array[part]
        if not np.all(np.isfinite(slab)):
            return VolumeStats(False, float("nan"), float("nan"), False)
        lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
        # Once one value is fractional the answer is known; skip the rounding of the rest.
        integral = integral and bool(np.all(slab == np.round(slab)))
    return VolumeStats(finite, lo, hi, integral)
